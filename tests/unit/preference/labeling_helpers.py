"""What the labeling tests share (test_labeling.py, test_labeling_server.py): a candidates folder of
real H.264 clips (each test module makes one and copies it for each test) and the rows of a labels file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PROMPTS = {"c0001": "A red circle moves right.", "c0002": "A blue square grows."}


def make_candidates(d: Path) -> Path:
    """2 prompt groups x 3 seeds of real 17x64x64 H.264 clips: 6 pairs."""
    from stepvideo.data.video_io import write_video

    rows = []
    for g, (pid, prompt) in enumerate(PROMPTS.items()):
        for s in range(3):
            cid = f"{pid}-en-s{s}"
            frames = np.zeros((17, 64, 64, 3), np.uint8)
            frames[..., g * 2] = 50 + 60 * s
            for t in range(17):
                frames[t, 24:40, 3 * t:3 * t + 14] = 255
            write_video(d / "videos" / f"{cid}.mp4", frames)
            rows.append({"id": cid, "prompt_id": pid, "lang": "en", "prompt": prompt, "seed": s, "round": 0,
                         "video": f"videos/{cid}.mp4", "latent": f"latents/{cid}.safetensors", "attributes": None,
                         "model": "test"})
    (d / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
