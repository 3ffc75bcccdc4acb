"""LoRA adapters at inference: read one (any of the formats we write), merge it into DiT weights.

No training and no peft here (pipelines and the CLI's ``generate`` use it; the training side,
``stepvideo.training.lora``, injects peft layers and writes adapters).

Our naming of an adapter's tensors is peft's saved naming without a prefix, on the module paths of
the official Step-Video-T2V checkpoint::

    transformer_blocks.0.attn1.wqkv.lora_A.weight   (rank, in_features)
    transformer_blocks.0.attn1.wqkv.lora_B.weight   (out_features, rank)

and each module has its own ``alpha``. The merged weight is, explicitly,

    W' = W + scale * (alpha / rank) * B @ A

Files that :func:`load_adapter` reads:

- a peft adapter folder (``adapter_model.safetensors`` + ``adapter_config.json``: ``r``,
  ``lora_alpha``, ``alpha_pattern``), keys prefixed ``base_model.model.`` or not;
- a ComfyUI file: ``diffusion_model.<module>.lora_A.weight`` / ``.lora_B.weight`` + ``.alpha``;
- a diffusers file: ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight``, alpha in the
  safetensors metadata (``lora_adapter_metadata``: a peft config as JSON; or ``alpha``);
- a bare ``*.safetensors`` in our naming with an ``adapter_config.json`` beside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from stepvideo.errors import InputError, MissingError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
LINEAGE_NAME = "lineage.json"
METADATA_KEY = "lora_adapter_metadata"  # diffusers' safetensors metadata key for the peft config
PREFIXES = ("base_model.model.", "diffusion_model.", "transformer.")
_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass
class LoraAdapter:
    """LoRA tensors in our naming, one alpha per module, where they came from."""

    weights: dict[str, torch.Tensor]
    alphas: dict[str, float]
    source: str = ""
    lineage: dict[str, Any] = field(default_factory=dict)
    peft_config: dict[str, Any] | None = None  # the adapter_config.json it was read with, if any

    @property
    def modules(self) -> list[str]:
        return sorted(k[: -len(_A)] for k in self.weights if k.endswith(_A))

    def rank(self, module: str) -> int:
        return int(self.weights[module + _A].shape[0])

    def scaling(self, module: str) -> float:
        """alpha / rank of one module (what peft multiplies B @ A by at scale 1)."""
        return float(self.alphas[module]) / self.rank(module)

    def delta(self, module: str, scale: float = 1.0) -> torch.Tensor:
        """scale * (alpha / rank) * B @ A in float32: what merging adds to ``<module>.weight``."""
        a = self.weights[module + _A].float()
        b = self.weights[module + _B].float()
        return (scale * self.scaling(module)) * (b @ a)

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.weights.values())

    def check(self) -> "LoraAdapter":
        """Every module has an A (r, in) and a B (out, r) of one rank, and an alpha; else InputError."""
        where = self.source or "LoRA adapter"
        names = set(self.weights)
        stray = sorted(k for k in names if not (k.endswith(_A) or k.endswith(_B)))
        if stray:
            raise InputError(f"{where}: tensors that are not lora_A/lora_B weights: {stray[:3]}")
        mods = self.modules
        if not mods:
            raise InputError(f"{where}: holds no LoRA tensors (no *.lora_A.weight)")
        for m in mods:
            a, b = self.weights[m + _A], self.weights.get(m + _B)
            if b is None:
                raise InputError(f"{where}: {m} has lora_A but no lora_B")
            if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
                raise InputError(f"{where}: {m}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                                 "are not (rank, in) and (out, rank)")
            if m not in self.alphas:
                raise InputError(f"{where}: {m} has no alpha")
        orphans = sorted(k[: -len(_B)] for k in names if k.endswith(_B) and k[: -len(_B)] not in mods)
        if orphans:
            raise InputError(f"{where}: {orphans[0]} has lora_B but no lora_A")
        return self


# ----------------------------------------------------------------------------------------------
# reading


def parse_lora_arg(text: str) -> tuple[Path, float]:
    """``FILE_OR_FOLDER[:SCALE]`` -> (path, scale); scale 1 when not given."""
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            return Path(path), float(tail)
        except ValueError:
            pass  # a ':' that is part of the path
    return Path(text), 1.0


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _alphas_from_config(cfg: Mapping[str, Any], modules: list[str], where: Path) -> dict[str, float]:
    """Per-module alpha from a peft LoRA config (``lora_alpha`` + ``alpha_pattern``)."""
    if "lora_alpha" not in cfg:
        raise InputError(f"{where}: no lora_alpha in the adapter config")
    if cfg.get("use_rslora") or cfg.get("use_dora"):
        raise InputError(f"{where}: rsLoRA / DoRA adapters are not supported (plain LoRA only)")
    pattern = cfg.get("alpha_pattern") or {}
    out = {}
    for m in modules:
        hits = [k for k in pattern if m == k or m.endswith("." + k)]
        out[m] = float(pattern[max(hits, key=len)]) if hits else float(cfg["lora_alpha"])
    return out


def _strip(name: str) -> str:
    for p in PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


def load_adapter(path: str | os.PathLike) -> LoraAdapter:
    """A LoRA adapter from a folder or a ``.safetensors`` file in any format the module docstring
    lists; a missing path is a MissingError, a file that is not such an adapter an InputError, each
    naming the path."""
    from stepvideo.models.io import open_safetensors

    path = Path(path)
    if not path.exists():
        raise MissingError(f"{path}: no such LoRA file or folder")
    folder = path if path.is_dir() else path.parent
    file = path / ADAPTER_WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise MissingError(f"{path}: no {ADAPTER_WEIGHTS} in this folder")
    fh = open_safetensors(file)
    with fh:
        meta = fh.metadata() or {}
        raw = {k: fh.get_tensor(k) for k in fh.keys()}
    weights, alpha_tensors = {}, {}
    for k, t in raw.items():
        name = _strip(k)
        if name.endswith(".alpha"):
            if t.numel() != 1:
                raise InputError(f"{file}: {k} is not a scalar alpha")
            alpha_tensors[name[: -len(".alpha")]] = float(t.float().reshape(-1)[0])
        elif name.endswith(".lora_A.default.weight") or name.endswith(".lora_B.default.weight"):
            weights[name.replace(".default.weight", ".weight")] = t
        else:
            weights[name] = t
    modules = sorted(k[: -len(_A)] for k in weights if k.endswith(_A))
    config_file = folder / ADAPTER_CONFIG
    peft_config = None
    if alpha_tensors:
        alphas = dict(alpha_tensors)
    elif METADATA_KEY in meta:
        try:
            peft_config = json.loads(meta[METADATA_KEY])
        except json.JSONDecodeError as e:
            raise InputError(f"{file}: metadata {METADATA_KEY} is not JSON ({e})") from None
        alphas = _alphas_from_config(peft_config, modules, file)
    elif "alpha" in meta:
        try:
            alphas = {m: float(meta["alpha"]) for m in modules}
        except ValueError:
            raise InputError(f"{file}: metadata alpha {meta['alpha']!r} is not a number") from None
    elif config_file.is_file():
        peft_config = _read_json(config_file)
        alphas = _alphas_from_config(peft_config, modules, config_file)
    else:
        raise InputError(f"{file}: no alpha for the LoRA modules (no .alpha tensors, no alpha metadata, "
                         f"no {ADAPTER_CONFIG} beside it)")
    lineage_file = folder / LINEAGE_NAME
    lineage = _read_json(lineage_file) if path.is_dir() and lineage_file.is_file() else {}
    return LoraAdapter(weights, alphas, str(file), lineage, peft_config).check()


# ----------------------------------------------------------------------------------------------
# merging


def merge_lora(base_state: Mapping[str, torch.Tensor], adapter: LoraAdapter, scale: float = 1.0
               ) -> dict[str, torch.Tensor]:
    """A new state dict: ``W + scale * (alpha / rank) * B @ A`` (computed in float32, stored in W's
    dtype) for each adapted module's ``<module>.weight``; every other tensor as it is. Scale 0
    returns the base tensors unchanged. A module the base lacks, or of another shape, is an
    InputError naming the adapter's file."""
    adapter.check()
    out = dict(base_state)
    where = adapter.source or "LoRA adapter"
    for m in adapter.modules:
        key = m + ".weight"
        if key not in base_state:
            raise InputError(f"{where}: adapts {m}, which the model does not have (no {key})")
        w = base_state[key]
        a, b = adapter.weights[m + _A], adapter.weights[m + _B]
        if tuple(w.shape) != (b.shape[0], a.shape[1]):
            raise InputError(f"{where}: {m}: B @ A is {(b.shape[0], a.shape[1])}, the model's weight "
                             f"{tuple(w.shape)}")
        if scale == 0:
            continue
        delta = adapter.delta(m, scale).to(w.device)
        out[key] = (w.float() + delta).to(w.dtype)
    return out


@torch.no_grad()
def fuse_lora(dit: torch.nn.Module, adapter: LoraAdapter | str | os.PathLike, scale: float = 1.0) -> torch.nn.Module:
    """Merge ``adapter`` (or the file/folder it names) into ``dit``'s weights in place at ``scale``;
    returns ``dit``. Scale 0 leaves every weight (so every output) bitwise as it was."""
    if not isinstance(adapter, LoraAdapter):
        adapter = load_adapter(adapter)
    state = {k: v for k, v in dit.state_dict().items()}
    merged = merge_lora(state, adapter, scale)
    params = dict(dit.named_parameters())
    for m in adapter.modules:
        key = m + ".weight"
        if merged[key] is not state[key]:
            params[key].copy_(merged[key])
    return dit


__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "LINEAGE_NAME", "METADATA_KEY", "LoraAdapter", "fuse_lora",
           "load_adapter", "merge_lora", "parse_lora_arg"]
