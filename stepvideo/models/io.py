"""Folder checkpoints: config.json + safetensors (sharded when large), written atomically.

One format for every model of the project (VAE, DiT, ...), diffusers-style:

    folder/config.json                      plain data (the model's config dataclass as a dict)
    folder/model.safetensors                one shard, or
    folder/model-00001-of-00003.safetensors + model.safetensors.index.json   for large models

A folder is written to ``folder.tmp-<pid>`` and renamed into place, so a crash never leaves a
half-written checkpoint where a good one was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from stepvideo.fileio import atomic_folder
from stepvideo.errors import InputError, MissingError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def _shards(state: Mapping[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().contiguous().cpu()
        size += nbytes
    return shards


def save_folder(
    folder: str | os.PathLike,
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    *,
    max_shard_bytes: int = 5 * 1024**3,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write ``state`` and ``config`` to ``folder`` atomically; returns the folder path."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        shards = _shards(state, max_shard_bytes)
        if len(shards) == 1:
            save_file(shards[0], str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                weight_map.update({k: name for k in shard})
            total = sum(t.numel() * t.element_size() for t in state.values())
            (tmp / INDEX_NAME).write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True)
            )
        (tmp / CONFIG_NAME).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return folder


_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def parse_dtype(dtype: torch.dtype | str | None, default: torch.dtype | None = None) -> torch.dtype | None:
    """`torch.bfloat16`, "bf16", "torch.float16", ... -> a torch dtype; None -> `default`."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    out = getattr(torch, _DTYPE_ALIASES.get(name, name), None)
    if not isinstance(out, torch.dtype):
        raise InputError(f"unknown dtype {dtype!r}")
    return out


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise MissingError(f"{path}: no config.json; is {folder} a stepvideo model folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e


def shard_files(index_path: str | os.PathLike) -> list[Path]:
    """The shards a safetensors index names (`weight_map` values), in order. Each must be a file
    beside the index: a name with a folder part, `..` or an absolute path is refused, so an index
    can never make a loader read outside the model's folder."""
    index_path = Path(index_path)
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8")).get("weight_map")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise InputError(f"{index_path}: not a safetensors index (a JSON object with a weight_map): {e}") from None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{index_path}: weight_map must map tensor names to shard file names")
    folder = index_path.parent
    files = []
    for name in sorted(set(weight_map.values())):
        # a bare file name (a hub snapshot's shards are symlinks in the folder: those are fine)
        if Path(name).name != name or name in ("", ".", "..") or "\\" in name:
            raise InputError(f"{index_path}: shard {name!r} is not a file name in {folder}: refused")
        path = folder / name
        if not path.is_file():
            raise MissingError(f"{index_path} lists a missing shard: {path}")
        files.append(path)
    return files


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a folder, in shard order."""
    folder = Path(folder)
    if (folder / INDEX_NAME).is_file():
        return shard_files(folder / INDEX_NAME)
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise MissingError(f"{folder}: no .safetensors weights found")
    return files


def iter_tensors(folder: str | os.PathLike, device: str = "cpu"):
    """Yield (name, tensor) over every shard, one tensor at a time (never the whole model twice)."""
    for f in weight_files(folder):
        with safe_open(str(f), framework="pt", device=device) as fh:
            for k in fh.keys():
                yield k, fh.get_tensor(k)


def load_state_dict(folder: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    return dict(iter_tensors(folder, device))
