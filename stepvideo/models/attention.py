"""Multi-head attention kernels with optional key padding masks.

Layout everywhere: q (B, Nq, heads, D), k/v (B, Nk, heads, D) -> (B, Nq, heads, D).
``key_mask`` (B, Nk) bool, True = the key may be attended. A query whose keys are all masked
gets a zero output (instead of the NaN a plain softmax would give).

Backends:
- ``"flash"``: flash-attn (varlen when masked). Needs the ``flash_attn`` package, CUDA tensors and
  fp16/bf16.
- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``.
- ``"math"``: explicit softmax(q k^T / sqrt(D)) v with float32 softmax; the reference.
- ``"auto"``: flash when it can run on these tensors, SDPA otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "flash", "sdpa", "math")

_flash = None  # (flash_attn_func, flash_attn_varlen_func) once imported; False when unavailable


def _flash_fns():
    global _flash
    if _flash is None:
        try:
            from flash_attn import flash_attn_func, flash_attn_varlen_func  # type: ignore

            _flash = (flash_attn_func, flash_attn_varlen_func)
        except Exception:  # ImportError, or a broken CUDA build
            _flash = False
    return _flash or None


def flash_available() -> bool:
    return torch.cuda.is_available() and _flash_fns() is not None


def _flash_usable(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256 and _flash_fns() is not None


def _check(q, k, v, key_mask):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q/k/v must be (B, N, heads, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"incompatible q/k/v shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if key_mask is not None and tuple(key_mask.shape) != (k.shape[0], k.shape[1]):
        raise ValueError(f"key_mask must be (B, Nk) = {(k.shape[0], k.shape[1])}, got {tuple(key_mask.shape)}")


def attention_math(q, k, v, key_mask=None, scale=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if key_mask is not None:
        probs = torch.nan_to_num(probs, nan=0.0)  # rows with no valid key
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v.float())
    return out.to(q.dtype)


def attention_sdpa(q, k, v, key_mask=None, scale=None):
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if key_mask is None:
        out = F.scaled_dot_product_attention(qt, kt, vt, scale=scale)
        return out.transpose(1, 2)
    empty = ~key_mask.any(dim=1)  # no host sync: always patch, it is cheap
    mask = key_mask | empty[:, None]
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask[:, None, None, :], scale=scale)
    return out.transpose(1, 2).masked_fill(empty[:, None, None, None], 0.0)


def attention_flash(q, k, v, key_mask=None, scale=None):
    fns = _flash_fns()
    if fns is None:
        raise RuntimeError("backend='flash' requested but flash_attn could not be imported")
    if not _flash_usable(q):
        raise ValueError(f"flash attention needs CUDA fp16/bf16 tensors with head dim <= 256; got {q.device} {q.dtype}")
    flash_func, varlen_func = fns
    if key_mask is None:
        return flash_func(q, k, v, softmax_scale=scale)
    b, nq, h, d = q.shape
    nk = k.shape[1]
    lens_k = key_mask.sum(dim=1, dtype=torch.int32)
    max_k = int(lens_k.max())
    if max_k == 0:
        return torch.zeros_like(q)
    cu_k = F.pad(torch.cumsum(lens_k, 0, dtype=torch.int32), (1, 0))
    cu_q = torch.arange(0, (b + 1) * nq, nq, dtype=torch.int32, device=q.device)
    idx = key_mask.reshape(-1).nonzero(as_tuple=True)[0]
    k_flat = k.reshape(b * nk, h, d).index_select(0, idx)
    v_flat = v.reshape(b * nk, h, d).index_select(0, idx)
    out = varlen_func(
        q.reshape(b * nq, h, d), k_flat, v_flat, cu_q, cu_k, nq, max_k, softmax_scale=scale
    )
    out = out.reshape(b, nq, h, d)
    empty = lens_k == 0
    if bool(empty.any()):
        out = out.masked_fill(empty[:, None, None, None], 0.0)
    return out


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention; see the module docstring for layout and backends."""
    _check(q, k, v, key_mask)
    if key_mask is not None and key_mask.dtype != torch.bool:
        raise ValueError(f"key_mask must be bool (True = attend), got {key_mask.dtype}")
    if backend == "auto":
        backend = "flash" if _flash_usable(q) else "sdpa"
    if backend == "flash":
        return attention_flash(q, k, v, key_mask, scale)
    if backend == "sdpa":
        return attention_sdpa(q, k, v, key_mask, scale)
    if backend == "math":
        return attention_math(q, k, v, key_mask, scale)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
