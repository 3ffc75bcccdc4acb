"""Folder checkpoints: config.json + safetensors (sharded when large), written atomically.

One format for every model of the project (VAE, DiT, ...), diffusers-style:

    folder/config.json                      plain data (the model's config dataclass as a dict)
    folder/model.safetensors                one shard, or
    folder/model-00001-of-00003.safetensors + model.safetensors.index.json   for large models

A folder is written to ``folder.tmp-<pid>`` and renamed into place, so a crash never leaves a
half-written checkpoint where a good one was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
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


def read_json(path: str | os.PathLike, expected: type | tuple[type, ...] | None = dict, what: str = "") -> Any:
    """The JSON content of ``path``; a missing file is a MissingError, a file that is not UTF-8
    JSON (or whose top level is not ``expected``) an InputError, each naming the file."""
    path = Path(path)
    what = f" {what}" if what else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingError(f"{path}: no such{what} file") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a{what} JSON file (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read this{what} file ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if expected is not None and not isinstance(data, expected):
        want = "a JSON object" if expected is dict else f"JSON of type {expected}"
        raise InputError(f"{path}: expected {want}, got {type(data).__name__}")
    return data


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise MissingError(f"{path}: no config.json; is {folder} a stepvideo model folder?")
    return read_json(path, dict)


# -- typed config files ------------------------------------------------------------------------


def _type_error(hint: Any, value: Any) -> str | None:
    """Why ``value`` (parsed JSON) does not fit the annotation ``hint``; None when it fits or the
    annotation is not one this check knows (int, float, bool, str, list/tuple of those, X | None)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        reasons = [_type_error(a, value) for a in args]
        return None if any(r is None for r in reasons) else next(r for r in reasons if r)
    if hint is type(None):
        return None if value is None else "must be null"
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "must be a number"
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        item = args[0] if args else None
        for v in value:
            why = _type_error(item, v) if item is not None else None
            if why:
                return f"must be a list whose items {why.removeprefix('must ')}"
        return None
    return None


def check_fields(cls: type, data: Mapping[str, Any], where: str | os.PathLike) -> None:
    """InputError naming ``where`` and the key for a key of ``data`` that is not a field of the
    dataclass ``cls``, or a value of the wrong JSON type for its field."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise InputError(f"{where}: unknown {cls.__name__} field(s) {unknown}; known: {names}")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        why = _type_error(hints.get(key), value)
        if why:
            raise InputError(f"{where}: {cls.__name__} field {key!r} {why}, got {value!r}")


def load_config(cls: type, folder: str | os.PathLike, ignore: tuple[str, ...] = ()) -> Any:
    """``cls.from_dict`` of a folder's checked config.json (``ignore``: keys from_dict handles
    itself, e.g. ``model_type``): any key, type or value it refuses is an InputError naming the file."""
    path = Path(folder) / CONFIG_NAME
    data = read_config(folder)
    check_fields(cls, {k: v for k, v in data.items() if k not in ignore}, path)
    try:
        cfg = cls.from_dict(data)
        if hasattr(cfg, "validate"):
            cfg.validate()
    except (TypeError, ValueError) as e:  # the config's own checks (InputError is a ValueError)
        raise InputError(f"{path}: {e}") from None
    return cfg


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


def _few(names, n: int = 3) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def iter_safetensors(path: str | os.PathLike, device: str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of one safetensors file, one tensor at a time; a file that is missing,
    empty, truncated or not safetensors at all is a MissingError/InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"{path}: no such safetensors file")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            for k in fh.keys():
                yield k, fh.get_tensor(k)
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None


def open_safetensors(path: str | os.PathLike, device: str = "cpu") -> Any:
    """``safe_open`` of ``path`` (a lazy handle: keys, metadata, get_tensor), its errors turned
    into a MissingError/InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"{path}: no such safetensors file")
    try:
        return safe_open(str(path), framework="pt", device=str(device))
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None


def load_safetensors_file(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file (see :func:`iter_safetensors` for the errors)."""
    return dict(iter_safetensors(path, device))


def state_problems(expected: Mapping[str, Any], state: Mapping[str, torch.Tensor], *, missing_ok: bool = False,
                   unexpected_ok: bool = False) -> list[str]:
    """What keeps ``state`` from loading into a module whose ``state_dict()`` is ``expected``:
    missing and unexpected names, shapes that differ (the first few of each); [] when it fits."""
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (model {tuple(expected[k].shape)})" for k in expected
             if k in state and hasattr(expected[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing and not missing_ok:
        problems.append(f"missing tensors {_few(missing)}")
    if unexpected and not unexpected_ok:
        problems.append(f"unexpected tensors {_few(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_few(wrong)}")
    return problems


def load_state_checked(module: torch.nn.Module, state: Mapping[str, torch.Tensor], file: str | os.PathLike, *,
                       strict: bool = True, assign: bool = False):
    """``module.load_state_dict(state)`` where a missing or unexpected tensor (``strict``) or a
    tensor of the wrong shape is an InputError naming ``file`` and the first few offending names."""
    problems = state_problems(module.state_dict(), state, missing_ok=not strict, unexpected_ok=not strict)
    if problems:
        raise InputError(f"{file}: does not fit {type(module).__name__}: " + "; ".join(problems))
    return module.load_state_dict(state, strict=strict, assign=assign)


def iter_tensors(folder: str | os.PathLike, device: str = "cpu"):
    """Yield (name, tensor) over every shard, one tensor at a time (never the whole model twice)."""
    for f in weight_files(folder):
        yield from iter_safetensors(f, device)


def load_state_dict(folder: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    return dict(iter_tensors(folder, device))


def weights_label(folder: str | os.PathLike) -> Path:
    """The file to name for a folder's weights: its one safetensors file, else its index (or the folder)."""
    folder = Path(folder)
    for name in (WEIGHTS_NAME, INDEX_NAME):
        if (folder / name).is_file():
            return folder / name
    files = sorted(folder.glob("*.safetensors"))
    return files[0] if len(files) == 1 else folder


def load_sharded(
    cls,
    config: Any,
    files: Iterable[str | os.PathLike],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    rename=None,
    label: str | os.PathLike | None = None,
) -> Any:
    """``cls(config)`` built on meta, then its tensors assigned shard by shard (peak memory ~ model +
    one shard).

    A shard that is not safetensors, a tensor of the wrong shape, a missing or an unexpected
    tensor is an InputError naming the file (``label`` for the missing ones: the folder's weights)."""
    files = [Path(f) for f in files]
    with torch.device("meta"):
        model = cls(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    seen: set[str] = set()
    unexpected: list[str] = []
    for f in files:
        part: dict[str, torch.Tensor] = {}
        for k, t in iter_safetensors(f, device=str(device)):
            name = rename(k) if rename else k
            if name not in shapes:
                unexpected.append(k)
                continue
            if name in seen:
                raise InputError(f"{f}: {name} appears in more than one shard")
            if tuple(t.shape) != shapes[name]:
                raise InputError(f"{f}: does not fit {cls.__name__}: wrong shape for {k}: {tuple(t.shape)} "
                                 f"(model {shapes[name]})")
            part[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        if unexpected:
            raise InputError(f"{f}: does not fit {cls.__name__}: unexpected tensors {_few(unexpected)}")
        model.load_state_dict(part, strict=False, assign=True)
        seen.update(part)
        del part
    missing = sorted(set(shapes) - seen)
    if missing:
        where = label if label is not None else (files[0] if len(files) == 1 else ", ".join(map(str, files)))
        raise InputError(f"{where}: does not fit {cls.__name__}: missing tensors {_few(missing)} ({len(missing)} in all)")
    return model
