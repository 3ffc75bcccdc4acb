"""Example user metric: CLIP score, the mean cosine similarity between the prompt and the frames.

Usage (see stepvideo/evaluation/metrics.py for the hook)::

    export STEPVIDEO_CLIP_DIR=/models/clip-vit-base-patch32   # a local transformers CLIP folder
    stepvideo eval run ... --metric examples/clip_score_metric.py:clip_score

The model is loaded from that folder only (``local_files_only=True``: nothing is downloaded), once,
on the first call; importing this file runs nothing. Up to ``STEPVIDEO_CLIP_FRAMES`` (default 8)
evenly spaced frames are scored. CLIP's text tower is English-only (and truncates at 77 tokens), so
its scores for Chinese prompts say little unless the folder holds a multilingual/Chinese CLIP.
"""

from __future__ import annotations

import functools
import os

import numpy as np


@functools.lru_cache(maxsize=1)
def _load(folder: str):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"STEPVIDEO_CLIP_DIR={folder!r} is not a folder")
    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), processor, device


def clip_score(frames: np.ndarray, prompt: str) -> dict[str, float]:
    """{"clip": mean over sampled frames of cos(image embedding, text embedding)}, in [-1, 1]."""
    import torch

    folder = os.environ.get("STEPVIDEO_CLIP_DIR")
    if not folder:
        raise RuntimeError("set STEPVIDEO_CLIP_DIR to a local transformers CLIP model folder")
    model, processor, device = _load(folder)
    n = max(1, int(os.environ.get("STEPVIDEO_CLIP_FRAMES", "8")))
    index = np.unique(np.linspace(0, len(frames) - 1, num=min(n, len(frames))).round().astype(int))
    images = [np.ascontiguousarray(frames[i]) for i in index]
    inputs = processor(text=[prompt], images=images, return_tensors="pt", padding=True, truncation=True)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    with torch.no_grad():  # the forward pass returns the projected embeddings in every transformers version
        out = model(**inputs)
    image = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
    text = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
    return {"clip": float((image @ text.T).mean())}
