"""The pipeline's components on disk and at random: the bundle folder (model_index.json + one
folder per component), loading each component from a folder or an object, and random components
of matching sizes for demos and tests.

Bundle layout (everything one ``T2VPipeline.from_pretrained`` needs; each subfolder loads on its
own with its class's ``from_pretrained``)::

    bundle/model_index.json        component names/classes/paths, default sampler, free-form lineage
    bundle/dit/                    StepVideoDiT.save_pretrained   (config.json + safetensors)
    bundle/vae/                    VideoVAE.save_pretrained
    bundle/text_encoders/llm/      transformers model + tokenizer (TextEncoder.from_pretrained, kind="llm")
    bundle/text_encoders/clip/     transformers model + tokenizer (kind="clip")

A text encoder given as a :class:`PrecomputedTextEncoder` is stored as its safetensors file(s)
instead (``model_index.json`` records the class).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from stepvideo.diffusion.sampler import SamplerConfig
from stepvideo.models.dit import DiTConfig, StepVideoDiT
from stepvideo.fileio import atomic_folder
from stepvideo.models.io import parse_dtype
from stepvideo.models.text_encoders import PrecomputedTextEncoder, TextEncoder
from stepvideo.models.tiny_text import build_tiny_text_encoders, sample_captions
from stepvideo.models.vae import VAEConfig, VideoVAE
from stepvideo.errors import InputError, MissingError

MODEL_INDEX = "model_index.json"
FORMAT_VERSION = 1
COMPONENT_PATHS = {"dit": "dit", "vae": "vae", "llm": "text_encoders/llm", "clip": "text_encoders/clip"}

# VAE geometry of random components for each DiT preset
_RANDOM_VAE = {"demo": VAEConfig.tiny, "small": VAEConfig.tiny, "step-video-t2v": VAEConfig.official}


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    return parse_dtype(dtype)


def is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def encoder_entry(enc: Any, kind: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": COMPONENT_PATHS[kind], "kind": kind, "dim": int(enc.dim)}
    if isinstance(enc, PrecomputedTextEncoder):
        entry.update(
            {
                "class": "PrecomputedTextEncoder",
                "module": "stepvideo.models.text_encoders",
                "files": [f"embeddings-{i:05d}.safetensors" for i in range(len(enc.paths))],
                "max_length": enc.max_length,
            }
        )
    else:
        entry.update(
            {
                "class": "TextEncoder",
                "module": "stepvideo.models.text_encoders",
                "model_class": type(enc.model).__name__,
                "max_length": int(enc.max_length),
                "name": enc.name,
            }
        )
    return entry


def save_text_encoder(enc: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(enc, PrecomputedTextEncoder):
        for i, p in enumerate(enc.paths):
            shutil.copyfile(p, folder / f"embeddings-{i:05d}.safetensors")
        return
    if not isinstance(enc, TextEncoder):
        raise TypeError(f"cannot save a text encoder of type {type(enc).__name__}")
    enc.model.save_pretrained(str(folder), safe_serialization=True)
    enc.tokenizer.save_pretrained(str(folder))
    # transformers 5 names the fast tokenizer class "TokenizersBackend", which 4.x cannot load
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if cfg.get("tokenizer_class") == "TokenizersBackend":
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def load_text_encoder(
    src: Any, kind: str, device, dtype, entry: Mapping[str, Any] | None = None
) -> TextEncoder | PrecomputedTextEncoder:
    """A text encoder from an object (returned as is), or a folder (transformers or precomputed)."""
    if src is None or not isinstance(src, (str, os.PathLike)):
        return src  # an encoder object (anything with ``encode`` and ``dim``)
    folder = Path(src)
    entry = dict(entry or {})
    if entry.get("class") == "PrecomputedTextEncoder" or (
        folder.is_dir() and not (folder / "config.json").exists() and list(folder.glob("embeddings-*.safetensors"))
    ):
        files = [folder / f for f in entry["files"]] if entry.get("files") else sorted(folder.glob("embeddings-*.safetensors"))
        return PrecomputedTextEncoder(files, device=device, dtype=dtype)
    if folder.is_file() and folder.suffix == ".safetensors":
        return PrecomputedTextEncoder(folder, device=device, dtype=dtype)
    if not folder.is_dir():
        raise MissingError(f"text encoder folder {folder} does not exist")
    return TextEncoder.from_pretrained(folder, kind=kind, max_length=entry.get("max_length"), device=device, dtype=dtype)


def load_dit(src: Any, device, dtype) -> StepVideoDiT:
    if isinstance(src, StepVideoDiT):
        return src
    return StepVideoDiT.from_pretrained(src, device=device, dtype=dtype)


def load_vae(src: Any, device, dtype) -> VideoVAE:
    if isinstance(src, VideoVAE):
        return src
    vae = VideoVAE.from_pretrained(src, device=str(device))
    return vae.to(dtype=dtype) if dtype is not None else vae


def load_components(dit: Any, vae: Any, text_encoders: Any, llm: Any, clip: Any, device: str | torch.device,
                    dtype: torch.dtype | None, entries: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> tuple[StepVideoDiT, VideoVAE, Any, Any]:
    """(dit, vae, llm, clip) from folders or objects, as ``T2VPipeline.from_components`` takes them."""
    entries = dict(entries or {})
    srcs: dict[str, Any] = {"llm": None, "clip": None}
    if isinstance(text_encoders, Mapping):
        unknown = set(text_encoders) - set(srcs)
        if unknown:
            raise InputError(f"text_encoders keys must be 'llm'/'clip', got {sorted(unknown)}")
        srcs.update(text_encoders)
    elif text_encoders is not None:
        root = Path(text_encoders)
        if not root.is_dir():
            raise MissingError(f"text encoder folder {root} does not exist")
        srcs["llm"] = root / "llm"
        srcs["clip"] = root / "clip" if (root / "clip").exists() else None
    if llm is not None:
        srcs["llm"] = llm
    if clip is not None:
        srcs["clip"] = clip
    if srcs["llm"] is None:
        raise InputError("an LLM text encoder is required (text_encoders=... or llm=...)")
    llm_enc = load_text_encoder(srcs["llm"], "llm", device, dtype, entries.get("llm"))
    clip_enc = load_text_encoder(srcs["clip"], "clip", device, dtype, entries.get("clip"))
    return load_dit(dit, device, dtype), load_vae(vae, device, dtype), llm_enc, clip_enc


def _component_path(folder: Path, index_path: Path, name: str, entry: Any) -> Path:
    """The checked folder (or file) of component ``name``: a relative path inside the bundle that exists."""
    if not isinstance(entry, dict):
        raise InputError(f"{index_path}: component {name!r} must be a JSON object, got {type(entry).__name__}")
    rel = entry.get("path")
    if not isinstance(rel, str) or not rel.strip():
        raise InputError(f"{index_path}: component {name!r} has no \"path\" (a folder inside the bundle)")
    path = folder / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts or "\\" in rel:
        raise InputError(f"{index_path}: component {name!r} path {rel!r} is not a folder inside {folder}: refused")
    if not path.exists():
        raise MissingError(f"{index_path}: component {name!r} path {rel!r} does not exist ({path})")
    return path


def read_model_index(folder: str | os.PathLike, class_name: str) -> dict[str, Any]:
    """The checked ``model_index.json`` of a bundle folder: {"components", "paths" (each component's
    checked folder), "entries" (the text encoders'), "sampler" (a SamplerConfig or "default"),
    "lineage"}. Anything malformed is an InputError (MissingError for a path that does not exist)
    naming the file and the key."""
    from stepvideo.models.io import check_fields, read_json

    folder = Path(folder)
    index_path = folder / MODEL_INDEX
    if not index_path.is_file():
        raise MissingError(f"{index_path}: no {MODEL_INDEX}; is {folder} a T2VPipeline bundle?")
    index = read_json(index_path, dict)
    if index.get("_class_name") != class_name:
        raise InputError(f"{index_path} describes a {index.get('_class_name')!r}, not a {class_name}")
    version = index.get("format_version", 1)
    if not is_int(version):
        raise InputError(f"{index_path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise InputError(f"{index_path}: format_version {version} is newer than this code ({FORMAT_VERSION})")
    comps = index.get("components", {})
    if not isinstance(comps, dict):
        raise InputError(f"{index_path}: components must be a JSON object, got {type(comps).__name__}")
    for name in ("dit", "vae", "llm"):
        if name not in comps:
            raise InputError(f"{index_path}: component {name!r} missing")
    unknown = sorted(set(comps) - set(COMPONENT_PATHS))
    if unknown:
        raise InputError(f"{index_path}: unknown component(s) {unknown}; known: {sorted(COMPONENT_PATHS)}")
    paths = {name: _component_path(folder, index_path, name, entry) for name, entry in comps.items()}
    entries = {k: comps[k] for k in ("llm", "clip") if k in comps}
    for k, e in entries.items():
        if e.get("max_length") is not None and not is_int(e["max_length"]):
            raise InputError(f"{index_path}: component {k!r} max_length must be an integer, got {e['max_length']!r}")
        files = e.get("files")
        if files is not None and (not isinstance(files, list) or not all(
                isinstance(f, str) and Path(f).name == f and f not in ("", ".", "..") for f in files)):
            raise InputError(f"{index_path}: component {k!r} files must be a list of file names in its folder")
    sampler: SamplerConfig | str = "default"
    raw = index.get("sampler")
    if raw:
        if not isinstance(raw, dict):
            raise InputError(f"{index_path}: sampler must be a JSON object, got {type(raw).__name__}")
        check_fields(SamplerConfig, raw, index_path)
        try:
            sampler = SamplerConfig(**raw)
        except (TypeError, ValueError) as e:
            raise InputError(f"{index_path}: sampler: {e}") from None
    lineage = index.get("lineage")
    if lineage is not None and not isinstance(lineage, dict):
        raise InputError(f"{index_path}: lineage must be a JSON object, got {type(lineage).__name__}")
    return {"components": comps, "paths": paths, "entries": entries, "sampler": sampler, "lineage": lineage}


def model_index(pipe: Any) -> dict[str, Any]:
    """The ``model_index.json`` content of a pipeline."""
    comps: dict[str, Any] = {
        "dit": {"class": "StepVideoDiT", "module": "stepvideo.models.dit", "path": COMPONENT_PATHS["dit"],
                "num_parameters": pipe.dit.num_parameters()},
        "vae": {"class": "VideoVAE", "module": "stepvideo.models.vae", "path": COMPONENT_PATHS["vae"],
                "num_parameters": pipe.vae.num_parameters()},
        "llm": encoder_entry(pipe.llm_encoder, "llm"),
    }
    if pipe.clip_encoder is not None:
        comps["clip"] = encoder_entry(pipe.clip_encoder, "clip")
    return {"_class_name": type(pipe).__name__, "format_version": FORMAT_VERSION, "components": comps,
            "sampler": dataclasses.asdict(pipe.sampler), "lineage": pipe.lineage}


def save_bundle(pipe: Any, folder: str | os.PathLike) -> Path:
    """Write ``pipe`` as a bundle folder atomically (a temp folder beside it, then renamed into
    place; an existing bundle is replaced only once the new one is complete)."""
    index = model_index(pipe)
    try:
        text = json.dumps(index, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    except TypeError as e:
        raise InputError(f"lineage must be JSON-serialisable ({e})") from e
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        pipe.dit.save_pretrained(tmp / COMPONENT_PATHS["dit"])
        pipe.vae.save_pretrained(tmp / COMPONENT_PATHS["vae"])
        save_text_encoder(pipe.llm_encoder, tmp / COMPONENT_PATHS["llm"])
        if pipe.clip_encoder is not None:
            save_text_encoder(pipe.clip_encoder, tmp / COMPONENT_PATHS["clip"])
        (tmp / MODEL_INDEX).write_text(text, encoding="utf-8")
    return Path(folder)


def random_components(preset: str, seed: int, texts: Sequence[str] | None, workdir: str | os.PathLike | None, *,
                      vae_config: VAEConfig | None, text_layers: int, text_heads: int, vocab_size: int,
                      device: str | torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    """Random-weight DiT, VAE and text encoders of matching sizes (see ``T2VPipeline.random``):
    {"dit", "vae", "llm", "clip", "tmp" (the TemporaryDirectory holding the encoders, or None)}."""
    if not is_int(seed):
        raise InputError(f"seed must be an int, got {seed!r}")
    vcfg = vae_config if vae_config is not None else _RANDOM_VAE.get(preset, VAEConfig.tiny)()
    dcfg = DiTConfig.preset(preset, in_channels=vcfg.z_channels, out_channels=vcfg.z_channels)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="stepvideo-t2v-random-")
        workdir = tmp.name
    with torch.random.fork_rng(devices=[]):
        paths = build_tiny_text_encoders(list(texts) if texts is not None else sample_captions(),
                                         Path(workdir) / "text_encoders", llm_dim=dcfg.llm_dim,
                                         clip_dim=dcfg.clip_dim or 32, layers=text_layers, heads=text_heads,
                                         seed=seed, vocab_size=vocab_size)
        torch.manual_seed(seed + 1000)
        dit = StepVideoDiT(dcfg)
        torch.manual_seed(seed + 2000)
        vae = VideoVAE(vcfg)
    llm = TextEncoder.from_pretrained(paths["llm"], kind="llm", device=device, dtype=dtype)
    clip = TextEncoder.from_pretrained(paths["clip"], kind="clip", device=device, dtype=dtype) if dcfg.clip_dim else None
    return {"dit": dit.to(device=device, dtype=dtype), "vae": vae.to(device=device, dtype=dtype), "llm": llm,
            "clip": clip, "tmp": tmp}
