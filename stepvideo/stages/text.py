"""The text stages: the tiny bilingual tokenizer + encoders (or the user's), and the text cache."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from stepvideo import registry, tracking
from stepvideo.config import Params
from stepvideo.fileio import atomic_write_text
from stepvideo.stages.common import OUTPUTS, clean_rows, load_encoders


def clean_captions(root: Path) -> dict[str, str]:
    return {r["id"]: r["caption"] for r in clean_rows(root)[1]}


def stage_text_encoders(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Build the tiny bilingual tokenizer + encoders from the clean captions (or take the user's),
    and record their versions; registers the built folder as `stepvideo-text-encoders`."""
    from stepvideo.models.tiny_text import build_tiny_text_encoders

    te = params.text_encoders
    out = root / OUTPUTS / "text_encoders"
    with tracking.run("text_encoders", experiment=params.tracking.experiment,
                      params={"text_encoders": dataclasses.asdict(te)},
                      tags={"params_hash": params.section_hash("text_encoders")}, parent_run_id=parent_run_id):
        if not (te.llm and te.clip):
            texts = sorted(set(clean_captions(root).values()))
            build_tiny_text_encoders(texts, out, llm_dim=te.llm_dim, clip_dim=te.clip_dim, layers=te.layers,
                                     heads=te.heads, seed=te.seed, vocab_size=te.vocab_size,
                                     llm_max_length=te.llm_max_length, clip_max_length=te.clip_max_length)
        encoders = load_encoders(params, root)
        versions = {k: e.version for k, e in encoders.items()}
        # what the later stages use, built here or given (the folder is the stage's DVC output either way)
        record = {k: {"version": e.version, "dim": e.dim,
                      "source": "built" if not (te.llm and te.clip) else getattr(te, k)} for k, e in encoders.items()}
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "encoders.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
        tracking.set_tags({f"{k}_version": v for k, v in versions.items()})
        tracking.log_metrics({f"{k}_dim": e.dim for k, e in encoders.items()})
        if params.tracking.register and not (te.llm and te.clip):  # built here: register them
            tracking.register_folder(out, registry.TEXT_ENCODERS, tags=versions)
    return {"folder": str(out), "versions": versions}


def stage_text_cache(params: Params, root: Path, parent_run_id: str | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Encode every clean caption once per (data version, encoder versions) into one safetensors file."""
    from stepvideo.data.text_cache import build_text_cache, texts_version

    texts = clean_captions(root)
    out = root / OUTPUTS / "text_cache" / "text_cache.safetensors"
    with tracking.run("text_cache", experiment=params.tracking.experiment, parent_run_id=parent_run_id):
        encoders = load_encoders(params, root)
        version = texts_version(texts)
        path = build_text_cache(texts, encoders, out, progress=progress, data_version=version)
        tracking.set_tags({"captions_version": version, **{f"{k}_version": e.version for k, e in encoders.items()}})
        tracking.log_metrics({"captions": len(texts), "bytes": path.stat().st_size})
    return {"cache": str(path), "captions": len(texts)}
