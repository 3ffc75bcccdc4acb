"""Training checkpoints: one format for every trainer in the project (no pickle anywhere).

    run_dir/checkpoints/latest.json          {"step": N, "folder": "step-0000NN"}: the newest complete one
    run_dir/checkpoints/step-000100/
        model/                               the model's from_pretrained folder (config.json + safetensors)
        <group>.safetensors                  tensor groups: "optimizer" (full AdamW moments), "ema", "rng", ...
        state.json                           plain data: step, counters, loss history, numpy/python RNG states,
                                             the data position, the trainer config; written last

A checkpoint folder is written under a temporary name and renamed into place, then ``latest.json``
is replaced atomically, then older folders beyond ``keep`` are removed: a process killed at any
moment leaves the previous checkpoint intact and findable. Weights are full (unsharded, fp32)
tensors under the model's own parameter names, so a checkpoint written at N ranks or ZeRO stage S
loads at any other rank count or stage.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import save_file

from stepvideo.fileio import atomic_write_text
from stepvideo.fileio import atomic_folder
from stepvideo.models.io import save_folder
from stepvideo.errors import InputError

CKPT_DIR = "checkpoints"
LATEST = "latest.json"
STATE = "state.json"
MODEL = "model"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    model_state: Mapping[str, torch.Tensor],
    model_config: Mapping[str, Any],
    tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    state: Mapping[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` of a run; returns its folder. ``keep`` newest folders survive."""
    from safetensors import SafetensorError

    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    for name in tensors or {}:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name) or name == MODEL:
            raise InputError(f"bad tensor group name {name!r}")
    try:
        with atomic_folder(final) as tmp:
            save_folder(tmp / MODEL, model_state, model_config)
            for name, group in (tensors or {}).items():
                save_file({k: v.detach().contiguous().cpu() for k, v in group.items()}, str(tmp / f"{name}.safetensors"))
            (tmp / STATE).write_text(json.dumps({"step": int(step), **dict(state or {})}, sort_keys=True) + "\n")
        atomic_write_text(root / LATEST, json.dumps({"step": int(step), "folder": final.name}) + "\n")
    except (OSError, SafetensorError) as e:  # a full disk, a file size limit, ...: name what failed
        raise _write_error(e, final, latest_checkpoint(run_dir)) from e
    for old in list_checkpoints(run_dir)[: -max(keep, 1)]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write_error(e: BaseException, final: Path, previous: Path | None) -> OSError:
    """An OSError (the cause's errno: ENOSPC, EFBIG, ...) naming the checkpoint that could not be
    written and the one that stays the latest. safetensors reports a failed write as a
    SafetensorError ("I/O error: ... (os error 28)") without errno or path: both are recovered here."""
    code = getattr(e, "errno", None)
    if code is None:
        m = re.search(r"os error (\d+)", str(e))
        code = int(m.group(1)) if m else None
    detail = getattr(e, "strerror", None) or (os.strerror(code) if code else str(e))
    keep = f"{previous} stays the latest" if previous is not None else "no earlier checkpoint"
    text = f"cannot write checkpoint {final}: {detail} ({keep})"
    err = OSError(code, text) if code else OSError(text)
    err.filename = str(final)
    return err


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of a run (those with ``state.json``), oldest first."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint: the one ``latest.json`` names, else the highest complete step folder."""
    pointer = Path(run_dir) / CKPT_DIR / LATEST
    try:
        folder = pointer.parent / json.loads(pointer.read_text())["folder"]
        if (folder / STATE).is_file():
            return folder
    except (OSError, ValueError, KeyError, TypeError):
        pass
    complete = list_checkpoints(run_dir)
    return complete[-1] if complete else None


def load_state(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / STATE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable checkpoint state ({e})") from e


def load_tensors(folder: str | os.PathLike, name: str) -> dict[str, torch.Tensor] | None:
    """A tensor group of a checkpoint, or None when the checkpoint has none of that name."""
    from stepvideo.models.io import load_safetensors_file

    path = Path(folder) / f"{name}.safetensors"
    return load_safetensors_file(path) if path.is_file() else None


def load_model_state(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint; an unreadable file is an InputError naming it."""
    from stepvideo.models.io import load_state_dict

    return load_state_dict(Path(folder) / MODEL)


def model_weights_file(folder: str | os.PathLike) -> Path:
    """The file to name in an error about a checkpoint's model weights."""
    from stepvideo.models.io import weights_label

    return weights_label(Path(folder) / MODEL)


# ---------------------------------------------------------------- RNG states (tensors + JSON, no pickle)


def seed_rng(seed: int) -> None:
    """Seed every global RNG (torch, numpy, python) at the start of a fresh run, so the states a
    checkpoint saves depend on the seed alone, not on what the process ran before."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every global RNG state: torch (CPU and CUDA) as tensors, numpy and python as JSON data."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    data = {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}
    return tensors, data


def restore_rng(tensors: Mapping[str, torch.Tensor], data: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    kind, keys, pos, has_gauss, cached = data["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = data["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------- optimizer state (tensors + JSON, no pickle)


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimizer's ``state_dict`` as flat tensors ``"<param index>.<key>"`` plus JSON data
    (``param_groups`` and any non-tensor per-parameter state); :func:`load_optimizer` inverts it exactly."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], data: Mapping[str, Any]) -> None:
    """Load what :func:`optimizer_tensors` produced (after a JSON round trip) into ``opt``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in data.get("state", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    groups = []
    for i, saved in enumerate(data["param_groups"]):
        current = opt.param_groups[i] if i < len(opt.param_groups) else {}
        # JSON turns tuples (AdamW's betas) into lists: give them back their original type
        groups.append({k: tuple(v) if isinstance(v, list) and isinstance(current.get(k), tuple) else v
                       for k, v in saved.items()})
    opt.load_state_dict({"state": state, "param_groups": groups})
