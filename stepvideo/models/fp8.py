"""Frozen Linear weights stored as ``torch.float8_e4m3fn`` with an fp32 scale (a memory lever of
issue 24): 1 byte per weight element plus 4 bytes per output row (or one per tensor), about 1/4 of
fp32 storage and 1/2 of bf16. The forward upcasts the weight of one layer at a time to the input's
dtype (``w = w8 * scale``) and runs the matmul there; the upcast copy is transient.

    dit = apply_lora(StepVideoDiT.from_pretrained("dit"), LoraSpec(rank=16))   # first the adapters
    quantize_frozen_linears(dit.transformer_blocks)                           # then the frozen base

Order matters: quantize *after* ``apply_lora``. peft casts a new adapter to its base layer's
dtype, so adapters created on an fp8 base would be fp8 too; after injection the frozen
``base_layer`` of each peft layer (and every other frozen Linear) is swapped for an
:class:`FP8Linear`, the adapters keep their dtype and stay the only trainable tensors.

The backward does not keep the upcast weight (autograd's ``F.linear`` would, one full-precision
copy per layer until backward): :class:`_FP8LinearFn` saves the fp8 weight and its scale and
upcasts again for the input gradient. There is no weight gradient: these layers are frozen by
construction (weight and scale are buffers, not parameters).

Runs on the CPU (upcast + fp32/bf16 matmul); no fp8 matmul kernels are used.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
GRANULARITIES = ("row", "tensor")


def quantize_weight(w: torch.Tensor, granularity: str = "row") -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, fp32 scale) with ``w ~= w8.float() * scale`` (scale per output row, shape (out, 1),
    or one for the tensor, shape (1, 1)); the largest magnitude of each row / the tensor maps to 448."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    w = w.detach().float()
    amax = w.abs().amax(dim=1, keepdim=True) if granularity == "row" else w.abs().amax().reshape(1, 1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize_weight(w8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``w8 * scale`` in ``dtype``: one transient weight-sized tensor (scaled in place)."""
    return w8.to(dtype).mul_(scale.to(dtype))


class _FP8LinearFn(torch.autograd.Function):
    """y = x @ (w8 * scale).T + b, keeping only the fp8 weight and its scale for backward."""

    @staticmethod
    def forward(ctx, x, w8, scale, bias):
        ctx.save_for_backward(w8, scale)
        return F.linear(x, dequantize_weight(w8, scale, x.dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        w8, scale = ctx.saved_tensors
        grad_x = grad @ dequantize_weight(w8, scale, grad.dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None


class FP8Linear(nn.Module):
    """A frozen Linear with its weight in float8_e4m3fn and an fp32 scale (buffers: no gradients)."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False, granularity: str = "row",
                 device=None):
        super().__init__()
        self.in_features, self.out_features, self.granularity = in_features, out_features, granularity
        rows = out_features if granularity == "row" else 1
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=FP8, device=device))
        self.register_buffer("scale", torch.ones(rows, 1, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)

    @classmethod
    def from_linear(cls, lin: nn.Linear, granularity: str = "row") -> "FP8Linear":
        if lin.weight.requires_grad or (lin.bias is not None and lin.bias.requires_grad):
            raise ValueError("FP8Linear stores frozen weights: freeze the Linear (requires_grad_(False)) first")
        m = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, granularity=granularity,
                device=lin.weight.device)
        m.weight, m.scale = quantize_weight(lin.weight, granularity)
        if lin.bias is not None:
            m.bias = lin.bias.detach().clone()
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _FP8LinearFn.apply(x, self.weight, self.scale, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, float8_e4m3fn, scale per {self.granularity}")


def quantize_frozen_linears(module: nn.Module, granularity: str = "row") -> int:
    """Replace every frozen ``nn.Linear`` under ``module`` (all its parameters ``requires_grad=False``,
    e.g. peft's ``base_layer`` after ``apply_lora``) with an :class:`FP8Linear`, in place; trainable
    Linears (LoRA's lora_A / lora_B, anything left trainable) are kept. Returns how many were replaced."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    todo = [(name, m) for name, m in module.named_modules()
            if type(m) is nn.Linear and not any(p.requires_grad for p in m.parameters())]
    for name, lin in todo:
        parent_name, _, leaf = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        q = FP8Linear.from_linear(lin, granularity)
        if isinstance(parent, (nn.ModuleList, nn.Sequential)) and leaf.isdigit():
            parent[int(leaf)] = q
        else:
            setattr(parent, leaf, q)
    return len(todo)


def linear_weight_bytes(module: nn.Module) -> int:
    """Bytes stored for the weights (and fp8 scales) of the Linear / FP8Linear layers under ``module``."""
    total = 0
    for m in module.modules():
        if isinstance(m, FP8Linear):
            total += m.weight.nbytes + m.scale.nbytes
        elif type(m) is nn.Linear:
            total += m.weight.nbytes
    return total


__all__ = ["FP8", "FP8Linear", "quantize_weight", "dequantize_weight", "quantize_frozen_linears",
           "linear_weight_bytes"]
