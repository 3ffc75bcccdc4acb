"""Video-DPO candidates: N videos per prompt from one model, with the noise seed of each.

A candidates folder holds `candidates.jsonl` (one row per video), `videos/<id>.mp4` and
`latents/<id>.safetensors` (the clean latent the sampler produced, which the DPO loss trains on:
no VAE encode, no codec loss). Row:

    {"id": "x003-zh-s1001", "prompt_id": "x003", "lang": "zh", "prompt": "...", "seed": 1001,
     "round": 0, "video": "videos/x003-zh-s1001.mp4", "latent": "latents/x003-zh-s1001.safetensors",
     "attributes": {...} | null, "score": {"passed_share", "flicker", "color_noise", "checks"} | null,
     "model": "models:/stepvideo-dit-sft/3" | "folder:<hash>"}

`score` is the evaluation scorer's verdict on the frames in memory (exactly what the benchmark
judges), so any reward weighting can be applied later without decoding the mp4 again.

The prompts: captions of the training clips (their ground-truth attributes make them judgeable) and
prompts in the benchmark's style that are not benchmark prompts (`prompts.style_prompts`); the
benchmark itself stays held out. Generation is batched, shows a progress bar and resumes: a row is
written (atomically, the whole manifest) after each batch, and rows already there are skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stepvideo.fileio import atomic_write_text, read_jsonl
from stepvideo.errors import InputError, MissingError

MANIFEST = "candidates.jsonl"


def train_prompts(clean_manifest: str | os.PathLike, n: int, seed: int = 0) -> list[dict]:
    """`n` caption rows of training clips with attributes, drawn with `seed`: [{"prompt_id",
    "lang", "prompt", "attributes"}]. Each caption is one language (the manifest has both)."""
    from stepvideo.data.manifest import read_manifest

    rows = [r for r in read_manifest(clean_manifest)
            if r.get("split") == "train" and r.get("kind") == "video" and r.get("attributes")
            and r.get("degradation", "none") == "none"]
    if n <= 0 or not rows:
        return []
    pick = np.random.default_rng(seed).permutation(len(rows))[:n]
    out = []
    for i in sorted(int(j) for j in pick):
        r = rows[i]
        attrs = r["attributes"]
        out.append({"prompt_id": f"t-{r.get('clip_id') or r['id']}", "lang": r["lang"], "prompt": r["caption"],
                    "attributes": json.loads(attrs) if isinstance(attrs, str) else attrs})
    return out


def style_prompt_rows(n: int, seed: int = 1) -> list[dict]:
    """`n` benchmark-style prompts (not benchmark prompts), each in English and in Chinese."""
    from stepvideo.evaluation.prompts import style_prompts

    return [{"prompt_id": p.id, "lang": lang, "prompt": getattr(p, lang), "attributes": p.attributes}
            for p in style_prompts(n, seed) for lang in ("en", "zh")]


def read_candidates(folder: str | os.PathLike) -> list[dict]:
    """The rows of `folder/candidates.jsonl` ([] when there is none); a bad line names file and line."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return []
    rows = []
    for where, row in read_jsonl(path):
        missing = [k for k in ("id", "prompt_id", "lang", "prompt", "seed", "video", "latent") if k not in row]
        if missing:
            raise InputError(f"{where}: missing {missing}")
        rows.append(row)
    return rows


def write_candidates(folder: str | os.PathLike, rows: Sequence[dict]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    return atomic_write_text(Path(folder) / MANIFEST, text)


def load_latent(folder: str | os.PathLike, row: dict):
    from safetensors.torch import load_file

    path = Path(folder) / row["latent"]
    if not path.is_file():
        raise MissingError(f"{path}: latent of candidate {row['id']} is missing")
    return load_file(str(path))["latent"]


def score_summary(frames: np.ndarray, attributes: dict | None) -> dict | None:
    """The scorer's verdict on one video, reduced to what a reward needs (None without attributes)."""
    from stepvideo.evaluation.scorer import score_frames

    if not attributes:
        return None
    s = score_frames(frames, attributes)
    checks = s["checks"]
    return {"passed_share": sum(c["pass"] for c in checks) / len(checks) if checks else 0.0,
            "flicker": s["flicker"], "color_noise": s["color_noise"],
            "checks": [[c["category"], bool(c["pass"])] for c in checks]}


def generate_candidates(pipe: Any, prompts: Sequence[dict], out: str | os.PathLike, *, per_prompt: int = 4,
                        seed: int = 0, round_index: int = 0, frames: int = 17, height: int = 64, width: int = 64,
                        steps: int = 20, cfg: float = 5.0, shift: float = 3.0, batch_size: int = 16, fps: int = 8,
                        model: str = "", progress: bool = True) -> list[dict]:
    """Generate `per_prompt` videos for every prompt row ({"prompt_id", "lang", "prompt",
    "attributes"}) with seeds seed + 1000 * round + j, into `out` (see the module doc); resumes.
    Returns all rows of the folder's manifest."""
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from stepvideo.pipelines.t2v import frames_to_uint8, save_video

    if per_prompt < 1 or batch_size < 1:
        raise InputError(f"per_prompt and batch_size must be >= 1, got {per_prompt} and {batch_size}")
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "latents").mkdir(parents=True, exist_ok=True)
    rows = read_candidates(out)
    done = {r["id"] for r in rows if (out / r["video"]).is_file() and (out / r["latent"]).is_file()}
    rows = [r for r in rows if r["id"] in done]
    jobs = []
    for p in prompts:
        for j in range(per_prompt):
            s = seed + 1000 * round_index + j
            cid = f"{p['prompt_id']}-{p['lang']}-s{s}"
            if cid not in done:
                jobs.append({**p, "id": cid, "seed": s})
    bar = tqdm(total=len(jobs) + len(done), initial=len(done), desc=f"dpo candidates (round {round_index})",
               unit="video", disable=not progress)
    for i in range(0, len(jobs), batch_size):
        batch = jobs[i:i + batch_size]
        latents = pipe.generate([j["prompt"] for j in batch], num_frames=frames, height=height, width=width,
                                steps=steps, cfg_scale=cfg, shift=shift, seed=[j["seed"] for j in batch],
                                output_type="latent")
        vae_p = next(pipe.vae.parameters())
        with torch.no_grad():
            clips = frames_to_uint8(pipe.vae.decode(latents.to(device=vae_p.device, dtype=vae_p.dtype)))
        for job, latent, clip in zip(batch, latents, clips):
            video, lat = f"videos/{job['id']}.mp4", f"latents/{job['id']}.safetensors"
            save_video(clip, out / video, fps=fps)
            tmp = out / f"{lat}.tmp"
            save_file({"latent": latent.float().cpu().contiguous()}, str(tmp))
            os.replace(tmp, out / lat)
            rows.append({"id": job["id"], "prompt_id": job["prompt_id"], "lang": job["lang"], "prompt": job["prompt"],
                         "seed": job["seed"], "round": round_index, "video": video, "latent": lat,
                         "attributes": job.get("attributes"), "score": score_summary(clip, job.get("attributes")),
                         "model": model})
        write_candidates(out, rows)
        bar.update(len(batch))
    bar.close()
    if not (out / MANIFEST).is_file():
        write_candidates(out, rows)
    return rows


__all__ = ["MANIFEST", "train_prompts", "style_prompt_rows", "read_candidates", "write_candidates", "load_latent",
           "score_summary", "generate_candidates"]
