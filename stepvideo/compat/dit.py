"""Official Step-Video-T2V transformer checkpoints and golden references -> our StepVideoDiT.

- ``official_config_to_ours``: the official ``StepVideoModel`` constructor kwargs (as in the
  released ``transformer/config.json``) -> ``DiTConfig``.
- ``load_official_transformer``: load the released layout (``transformer/`` with safetensors
  shards + ``*.safetensors.index.json`` + ``config.json``) built on the meta device and filled
  shard by shard, so the weights are never held twice.
- ``verify_dit_reference``: run our DiT on a golden reference file (official weights, inputs and
  outputs in one safetensors) and report max abs differences.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from stepvideo.models.dit import DiTConfig, StepVideoDiT
from stepvideo.models.io import load_sharded, shard_files
from stepvideo.errors import InputError, MissingError

# official StepVideoModel kwargs we accept, with the only values our model implements
_SUPPORTED_FIXED = {
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "use_additional_conditions": False,
}
_IGNORED = {"dropout", "attention_type"}  # dropout is 0.0 in every release; attention_type = kernel choice
TOLERANCE = 1e-4


def official_config_to_ours(kwargs: Mapping[str, Any], **overrides) -> DiTConfig:
    """Map official constructor kwargs (``num_attention_heads``, ``attention_head_dim``, ...) to a DiTConfig.

    Missing kwargs take the official defaults. Keys starting with ``_`` (diffusers metadata) are ignored.
    """
    kw = {k: v for k, v in kwargs.items() if not k.startswith("_")}
    for k, want in _SUPPORTED_FIXED.items():
        if k in kw and kw[k] != want and not (want is False and kw[k] in (None, False)):
            raise InputError(f"official config has {k}={kw[k]!r}; only {want!r} is implemented")
    if float(kw.get("dropout", 0.0) or 0.0) != 0.0:
        raise InputError(f"official config has dropout={kw['dropout']}; only 0.0 is implemented")
    known = {
        "num_attention_heads",
        "attention_head_dim",
        "in_channels",
        "out_channels",
        "num_layers",
        "patch_size",
        "norm_eps",
        "caption_channels",
    } | set(_SUPPORTED_FIXED) | _IGNORED
    unknown = sorted(set(kw) - known)
    if unknown:
        raise InputError(f"unknown official StepVideoModel kwargs: {unknown}")
    in_ch = int(kw.get("in_channels", 64))
    out_ch = kw.get("out_channels", 64)
    caption = kw.get("caption_channels", [6144, 1024])
    cfg = dict(
        num_layers=int(kw.get("num_layers", 48)),
        num_heads=int(kw.get("num_attention_heads", 48)),
        head_dim=int(kw.get("attention_head_dim", 128)),
        in_channels=in_ch,
        out_channels=in_ch if out_ch is None else int(out_ch),
        patch_size=int(kw.get("patch_size", 1)),
        caption_channels=[int(caption)] if isinstance(caption, int) else [int(c) for c in caption],
        norm_eps=float(kw.get("norm_eps", 1e-6)),
    )
    cfg.update(overrides)
    return DiTConfig(**cfg)


def _transformer_dir(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if (folder / "transformer" / "config.json").is_file():
        return folder / "transformer"
    if (folder / "config.json").is_file():
        return folder
    raise MissingError(f"{folder}: neither {folder}/transformer/config.json nor {folder}/config.json exists")


def _official_weight_files(tdir: Path) -> list[Path]:
    indexes = sorted(tdir.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise InputError(f"{tdir}: more than one safetensors index: {[p.name for p in indexes]}")
    if indexes:
        return shard_files(indexes[0])
    files = sorted(tdir.glob("*.safetensors"))
    if not files:
        raise MissingError(f"{tdir}: no .safetensors weights (the .bin format is not supported)")
    return files


def load_official_transformer(
    folder: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> StepVideoDiT:
    """Load an official Step-Video-T2V transformer folder (the model root or its ``transformer/``)."""
    tdir = _transformer_dir(folder)
    cfg = official_config_to_ours(json.loads((tdir / "config.json").read_text()))
    return load_sharded(StepVideoDiT, cfg, _official_weight_files(tdir), device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# golden reference


def _is_dit_reference(meta: Mapping[str, Any]) -> bool:
    """True for a golden-reference JSON describing the official StepVideoModel DiT."""
    kw = meta.get("constructor_kwargs") if isinstance(meta, Mapping) else None
    if not isinstance(kw, Mapping):
        return False
    return {"num_attention_heads", "attention_head_dim", "num_layers"} <= set(kw)


def verify_dit_reference(
    safetensors_path: str | os.PathLike, meta: Mapping[str, Any], *, tolerance: float = TOLERANCE
) -> dict[str, tuple[float, float]]:
    """Build our DiT from the reference's official kwargs, load its weights strictly, run the
    official forward (official mask semantics) in float32 and compare.

    Returns ``{name: (max_abs_diff, tolerance)}`` for ``__output__.x`` and every
    ``__intermediate__.*`` tensor we can name (reported, same tolerance).
    """
    from safetensors.torch import load_file

    if not _is_dit_reference(meta):
        raise InputError("meta is not a StepVideoModel DiT reference (no constructor_kwargs with heads/layers)")
    tensors = load_file(str(safetensors_path))
    weights = {k: v for k, v in tensors.items() if not k.startswith("__")}
    inputs = {k[len("__input__.") :]: v for k, v in tensors.items() if k.startswith("__input__.")}
    needed = {"hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask"}
    if not needed <= set(inputs):
        raise InputError(f"{safetensors_path}: missing inputs {sorted(needed - set(inputs))}")
    if "__output__.x" not in tensors:
        raise InputError(f"{safetensors_path}: no __output__.x")

    cfg = official_config_to_ours(meta["constructor_kwargs"])
    model = StepVideoDiT(cfg).float().eval()
    model.load_state_dict(weights, strict=True)
    with torch.no_grad():
        out, rec = model.forward_official(
            inputs["hidden_states"].float(),
            inputs["timestep"].float(),
            inputs["encoder_hidden_states"].float(),
            inputs["encoder_attention_mask"],
            inputs["encoder_hidden_states_2"].float() if "encoder_hidden_states_2" in inputs else None,
            return_intermediates=True,
        )
    report: dict[str, tuple[float, float]] = {}
    ref = tensors["__output__.x"]
    if tuple(out.shape) != tuple(ref.shape):
        raise InputError(f"output shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    report["__output__.x"] = (float((out - ref).abs().max()), tolerance)
    for k, v in sorted(tensors.items()):
        if not k.startswith("__intermediate__."):
            continue
        ours = rec.get(k[len("__intermediate__.") :])
        if ours is None or ours.numel() != v.numel():
            continue
        report[k] = (float((ours.reshape(v.shape) - v).abs().max()), tolerance)
    return report


def official_config_from_ours(model: StepVideoDiT) -> dict[str, Any]:
    """The official ``StepVideoModel`` constructor kwargs describing ``model`` (an official-layout config.json)."""
    c = model.config
    return {
        "_class_name": "StepVideoModel",
        "num_attention_heads": c.num_heads,
        "attention_head_dim": c.head_dim,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "num_layers": c.num_layers,
        "dropout": 0.0,
        "patch_size": c.patch_size,
        "norm_type": "ada_norm_single",
        "norm_elementwise_affine": False,
        "norm_eps": c.norm_eps,
        "use_additional_conditions": False,
        "caption_channels": list(c.caption_channels),
        "attention_type": "parallel",
    }


__all__ = [
    "official_config_to_ours",
    "load_official_transformer",
    "verify_dit_reference",
    "_is_dit_reference",
    "official_config_from_ours",
]
