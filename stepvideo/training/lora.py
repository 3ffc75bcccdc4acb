"""LoRA fine-tuning of the DiT with peft, and the adapter files it writes.

    spec = LoraSpec(rank=16, alpha=16)
    dit = apply_lora(StepVideoDiT.from_pretrained("dit"), spec)   # peft layers injected in place
    ...train: only the lora_A / lora_B parameters have requires_grad...
    save_adapter("adapter", dit, spec, lineage={"data_version": ...})
    export_lora("adapter", "comfyui", "style.safetensors")

``apply_lora`` uses ``peft.inject_adapter_in_model``: the module paths stay the official ones
(``transformer_blocks.3.attn1.wqkv``; no ``base_model.model.`` prefix), each adapted Linear
becoming a peft ``lora.Linear`` holding the original as ``base_layer``. Adapter tensors, in our
naming, are peft's saved names without prefix (``transformer_blocks.3.attn1.wqkv.lora_A.weight``).

An adapter folder is a peft adapter: ``adapter_model.safetensors`` (keys ``base_model.model.<our
name>``) + ``adapter_config.json`` (peft's ``LoraConfig``), so ``PeftModel.from_pretrained(dit,
folder)`` loads it; ``lineage.json`` beside them records the spec and where the adapter came from.

The inference side (reading any of the formats, merging ``W + scale * alpha / rank * B @ A``)
lives in :mod:`stepvideo.models.lora`, which pipelines may import.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors.torch import save_file

from stepvideo.errors import InputError
from stepvideo.fileio import atomic_folder, atomic_path, atomic_write_text
from stepvideo.models.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, LINEAGE_NAME, METADATA_KEY, LoraAdapter,
                                   fuse_lora, load_adapter, merge_lora)

PEFT_PREFIX = "base_model.model."
COMFYUI_PREFIX = "diffusion_model."
DIFFUSERS_PREFIX = "transformer."
FORMATS = ("comfyui", "diffusers", "peft")
# every attention projection and both feed-forward projections of each block (official module names)
DEFAULT_TARGETS = ("attn1.wqkv", "attn1.wo", "attn2.wq", "attn2.wkv", "attn2.wo", "ff.net.0.proj", "ff.net.2")


@dataclass(frozen=True)
class LoraSpec:
    """Rank, alpha (the update is scaled by alpha / rank), dropout on the adapter's input, and the
    module-name patterns to adapt (peft matching: a module path equal to or ending in ``.pattern``)."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise InputError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or self.alpha <= 0:
            raise InputError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise InputError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        targets = (self.target_modules,) if isinstance(self.target_modules, str) else tuple(self.target_modules)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise InputError(f"LoRA target_modules must be non-empty module-name patterns, got {self.target_modules!r}")
        object.__setattr__(self, "target_modules", targets)

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


# ----------------------------------------------------------------------------------------------
# training side


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def target_module_names(model: torch.nn.Module, spec: LoraSpec) -> list[str]:
    """The Linear modules of ``model`` that ``spec`` adapts; a pattern that matches none is an InputError."""
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for p in spec.target_modules:
        if not any(_matches(n, p) for n in linears):
            raise InputError(f"LoRA target {p!r} matches no Linear module of {type(model).__name__} "
                             f"(e.g. {linears[:3]})")
    return [n for n in linears if any(_matches(n, p) for p in spec.target_modules)]


def apply_lora(dit: torch.nn.Module, spec: LoraSpec, adapter_name: str = "default") -> torch.nn.Module:
    """Inject LoRA layers into ``dit`` in place (module paths unchanged) and freeze every base
    parameter: afterwards only the ``lora_A`` / ``lora_B`` parameters have ``requires_grad``.
    B starts at zero, so the model's outputs are the base model's until it trains."""
    from peft import inject_adapter_in_model

    target_module_names(dit, spec)
    model = inject_adapter_in_model(spec.peft_config(), dit, adapter_name=adapter_name)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_A." in name or ".lora_B." in name)
    return model


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable adapter parameters (what the optimizer gets)."""
    return [p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def adapter_state_dict(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """Only the LoRA tensors, in our naming (``<module>.lora_A.weight`` / ``.lora_B.weight``), detached copies."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return {(k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k): v.detach().clone() for k, v in state.items()}


def base_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict under its plain names (``.base_layer`` dropped, no LoRA tensors)."""
    out = {}
    for k, v in model.state_dict().items():
        if ".lora_A." in k or ".lora_B." in k or ".lora_dropout." in k:
            continue
        out[k.replace(".base_layer.", ".")] = v
    return out


def set_scale(model: torch.nn.Module, scale: float, adapter_name: str = "default") -> torch.nn.Module:
    """Scale the adapter's update to ``scale * alpha / rank`` in every LoRA layer (1 = as trained).
    At scale 0 the adapter is switched off in each layer, so outputs are bitwise the base model's."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not layers:
        raise InputError(f"{type(model).__name__} has no LoRA layers (apply_lora first)")
    trainable = {id(p): p.requires_grad for p in model.parameters()}
    for m in layers:
        m.set_scale(adapter_name, float(scale))
        m.enable_adapters(scale != 0)  # peft's switch also flips requires_grad: put it back below
    for p in model.parameters():
        p.requires_grad_(trainable[id(p)])
    return model


@contextmanager
def adapter_off(model: torch.nn.Module, adapter_name: str = "default") -> Iterator[torch.nn.Module]:
    """``model`` with its adapter switched off inside the block (``set_scale`` 0: outputs bitwise the
    base model's; no second copy of any weight), back at scale 1 (as trained) after it. Video-DPO's
    reference under ``dpo.method: lora`` is the policy inside this block."""
    set_scale(model, 0.0, adapter_name)
    try:
        yield model
    finally:
        set_scale(model, 1.0, adapter_name)


def load_adapter_weights(model: torch.nn.Module, adapter: LoraAdapter | str | os.PathLike,
                         adapter_name: str = "default") -> torch.nn.Module:
    """Copy an adapter's A / B tensors (a folder or file :func:`load_adapter` reads) into the LoRA
    layers of ``model`` (``apply_lora`` with the same spec first): training continues from it. A
    tensor the model lacks, a model tensor the adapter lacks, or a shape that differs is an InputError."""
    if not isinstance(adapter, LoraAdapter):
        adapter = load_adapter(adapter)
    params = dict(model.named_parameters())
    tag = {part: f".{part}.{adapter_name}." for part in ("lora_A", "lora_B")}
    ours = {n: p for n, p in params.items() if tag["lora_A"] in n or tag["lora_B"] in n}
    named = {n.replace(tag["lora_A"], ".lora_A.").replace(tag["lora_B"], ".lora_B."): p for n, p in ours.items()}
    missing, extra = sorted(set(named) - set(adapter.weights)), sorted(set(adapter.weights) - set(named))
    wrong = sorted(k for k in set(named) & set(adapter.weights) if named[k].shape != adapter.weights[k].shape)
    if missing or extra or wrong:
        raise InputError(f"{adapter.source or 'LoRA adapter'}: does not fit the model's LoRA layers (missing "
                         f"{missing[:3]}, unexpected {extra[:3]}, other shape {wrong[:3]})")
    with torch.no_grad():
        for k, p in named.items():
            p.copy_(adapter.weights[k].to(p.dtype))
    return model


def adapter_of(model: torch.nn.Module, spec: LoraSpec, lineage: Mapping[str, Any] | None = None,
               adapter_name: str = "default") -> LoraAdapter:
    """The trained adapter of ``model`` as a :class:`LoraAdapter` (one alpha for every module)."""
    weights = adapter_state_dict(model, adapter_name)
    mods = sorted(k[: -len(".lora_A.weight")] for k in weights if k.endswith(".lora_A.weight"))
    return LoraAdapter(weights, {m: float(spec.alpha) for m in mods}, "", dict(lineage or {}),
                       _json_config(spec.peft_config())).check()


# ----------------------------------------------------------------------------------------------
# files


def _json_config(config) -> dict[str, Any]:
    """A peft config as the JSON object its ``save_pretrained`` writes."""
    d = config.to_dict()
    return json.loads(json.dumps({k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}))


def config_for(adapter: LoraAdapter) -> dict[str, Any]:
    """A peft LoraConfig (JSON) that fits ``adapter``: its own when it has one, else rank and alpha
    of the most common (rank, alpha) and per-module ``rank_pattern`` / ``alpha_pattern`` for the rest."""
    from peft import LoraConfig

    if adapter.peft_config is not None:
        return dict(adapter.peft_config)
    mods = adapter.modules
    (r, a), _ = Counter((adapter.rank(m), adapter.alphas[m]) for m in mods).most_common(1)[0]
    rank_pattern = {m: adapter.rank(m) for m in mods if adapter.rank(m) != r}
    alpha_pattern = {m: adapter.alphas[m] for m in mods if adapter.alphas[m] != a}
    return _json_config(LoraConfig(r=r, lora_alpha=a, target_modules=mods, rank_pattern=rank_pattern,
                                   alpha_pattern=alpha_pattern, bias="none"))


def _contiguous(weights: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().cpu().contiguous() for k, v in sorted(weights.items())}


def write_peft_folder(folder: str | os.PathLike, adapter: LoraAdapter) -> Path:
    """``adapter`` as a peft adapter folder (atomically): what ``PeftModel.from_pretrained`` loads."""
    config = config_for(adapter)
    with atomic_folder(folder) as tmp:
        save_file(_contiguous(adapter.weights, PEFT_PREFIX), str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if adapter.lineage:
            (tmp / LINEAGE_NAME).write_text(json.dumps(adapter.lineage, indent=2, sort_keys=True, default=str) + "\n",
                                            encoding="utf-8")
    return Path(folder)


def save_adapter(folder: str | os.PathLike, model: torch.nn.Module, spec: LoraSpec,
                 lineage: Mapping[str, Any] | None = None) -> Path:
    """The adapter of ``model`` (trained with ``spec``) as a peft-compatible folder, atomically:
    ``adapter_model.safetensors`` + ``adapter_config.json`` + ``lineage.json`` (``lineage`` and the spec)."""
    info = {**dict(lineage or {}), "lora_spec": spec.to_dict()}
    return write_peft_folder(folder, adapter_of(model, spec, info))


def _metadata(adapter: LoraAdapter) -> dict[str, str]:
    meta = {"format": "pt", METADATA_KEY: json.dumps(config_for(adapter), sort_keys=True)}
    ranks = {adapter.rank(m) for m in adapter.modules}
    alphas = {adapter.alphas[m] for m in adapter.modules}
    if len(ranks) == 1 and len(alphas) == 1:
        meta["rank"], meta["alpha"] = str(ranks.pop()), str(alphas.pop())
    if adapter.lineage:
        meta["stepvideo_lineage"] = json.dumps(adapter.lineage, sort_keys=True, default=str)
    return meta


def export_lora(adapter: LoraAdapter | str | os.PathLike, format: str, out: str | os.PathLike) -> Path:
    """Write ``adapter`` (or the adapter file/folder it names) for another tool, atomically:

    - ``comfyui``: one safetensors file, ``diffusion_model.<module>.lora_A.weight`` / ``.lora_B.weight``
      and a scalar ``diffusion_model.<module>.alpha`` per module (ComfyUI reads no metadata);
    - ``diffusers``: one safetensors file, ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight``,
      the peft config in the ``lora_adapter_metadata`` metadata (plus ``rank`` / ``alpha``);
    - ``peft``: an adapter folder that ``PeftModel.from_pretrained(dit, out)`` loads.
    """
    if format not in FORMATS:
        raise InputError(f"unknown LoRA export format {format!r}; choose one of {', '.join(FORMATS)}")
    if not isinstance(adapter, LoraAdapter):
        adapter = load_adapter(adapter)
    adapter.check()
    out = Path(out)
    if format == "peft":
        if out.is_file():
            raise InputError(f"{out}: is a file; the peft format is a folder")
        return write_peft_folder(out, adapter)
    if out.suffix != ".safetensors":
        raise InputError(f"{out}: give a .safetensors file path for the {format} format")
    if format == "comfyui":
        tensors = _contiguous(adapter.weights, COMFYUI_PREFIX)
        for m in adapter.modules:
            tensors[f"{COMFYUI_PREFIX}{m}.alpha"] = torch.tensor(float(adapter.alphas[m]), dtype=torch.float32)
        metadata = {"format": "pt"}
    else:
        tensors, metadata = _contiguous(adapter.weights, DIFFUSERS_PREFIX), _metadata(adapter)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out


def merge_into_folder(base: str | os.PathLike, adapters: list[tuple[str | os.PathLike, float]],
                      out: str | os.PathLike) -> Path:
    """Load the DiT folder ``base`` (or a pipeline bundle's ``dit/``), merge each (adapter, scale)
    in turn, write the full DiT folder ``out`` with ``save_pretrained`` (atomically)."""
    from stepvideo.models.dit import StepVideoDiT
    from stepvideo.pipelines.components import COMPONENT_PATHS, MODEL_INDEX

    base = Path(base)
    if (base / MODEL_INDEX).is_file():
        base = base / COMPONENT_PATHS["dit"]
    dit = StepVideoDiT.from_pretrained(base)
    for path, scale in adapters:
        fuse_lora(dit, path, scale)
    dit.save_pretrained(out)
    sources = [{"lora": str(p), "scale": s} for p, s in adapters]
    atomic_write_text(Path(out) / LINEAGE_NAME, json.dumps({"base": str(base), "merged": sources}, indent=2) + "\n")
    return Path(out)


__all__ = ["DEFAULT_TARGETS", "FORMATS", "LoraAdapter", "LoraSpec", "adapter_of", "adapter_off", "adapter_state_dict", "apply_lora",
           "base_state_dict", "config_for", "export_lora", "fuse_lora", "load_adapter", "load_adapter_weights", "lora_parameters",
           "merge_into_folder", "merge_lora", "save_adapter", "set_scale", "target_module_names",
           "write_peft_folder"]
