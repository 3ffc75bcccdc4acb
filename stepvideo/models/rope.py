"""3D rotary position embedding for video tokens.

The head dimension is cut into three chunks driven by the (frame, row, column) index of each
token; inside every chunk the NeoX "rotate half" convention is used (the first half of the chunk
pairs with the second half). Step-Video-T2V uses the split [64, 32, 32] at head dim 128.

Tokens are ordered frame-major, then row, then column: token ``n`` of a (F, H, W) grid sits at
``(n // (H*W), (n // W) % H, n % W)``.

Nothing here is cached per batch: the cos/sin tables have shape (tokens, head_dim) and broadcast
over batch and heads, so one table serves any batch size.
"""

from __future__ import annotations

from typing import Sequence

import torch

DEFAULT_THETA = 10000.0


def default_rope_split(head_dim: int) -> tuple[int, int, int]:
    """Split ``head_dim`` over (t, h, w) in the official 2:1:1 proportion, every chunk even.

    128 -> (64, 32, 32); 64 -> (32, 16, 16); 96 -> (48, 24, 24); 8 -> (4, 2, 2).
    """
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"RoPE needs a positive even head dim, got {head_dim}")
    t = 2 * round(head_dim / 4)
    h = 2 * ((head_dim - t) // 4)
    w = head_dim - t - h
    return (t, h, w)


def check_rope_split(split: Sequence[int], head_dim: int) -> tuple[int, int, int]:
    split = tuple(int(s) for s in split)
    if len(split) != 3:
        raise ValueError(f"rope split must have 3 entries (t, h, w), got {list(split)}")
    if any(s < 0 or s % 2 for s in split):
        raise ValueError(f"every rope split entry must be even and >= 0, got {list(split)}")
    if sum(split) != head_dim:
        raise ValueError(f"rope split {list(split)} sums to {sum(split)}, head dim is {head_dim}")
    return split  # type: ignore[return-value]


def grid_positions(frames: int, height: int, width: int, device=None) -> torch.Tensor:
    """Integer (t, h, w) position of every token of a frame-major grid: (F*H*W, 3) int64."""
    f = torch.arange(frames, device=device)
    h = torch.arange(height, device=device)
    w = torch.arange(width, device=device)
    grid = torch.stack(torch.meshgrid(f, h, w, indexing="ij"), dim=-1)
    return grid.reshape(-1, 3)


def rope_cos_sin(
    positions: torch.Tensor,
    split: Sequence[int],
    theta: float = DEFAULT_THETA,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (N, sum(split)) for integer ``positions`` (N, 3).

    Angles are formed in float32 (float64 when ``dtype`` is float64) and only the final cos/sin
    are cast to ``dtype``.
    """
    if positions.ndim != 2 or positions.shape[-1] != len(split):
        raise ValueError(f"positions must be (N, {len(split)}), got {tuple(positions.shape)}")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    angles = []
    for axis, dim in enumerate(split):
        if dim == 0:
            continue
        exponent = torch.arange(0, dim, 2, device=positions.device).to(work) / dim
        inv_freq = 1.0 / (theta**exponent)
        ang = positions[:, axis].to(work)[:, None] * inv_freq[None, :]
        angles.append(torch.cat([ang, ang], dim=-1))
    ang = torch.cat(angles, dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, split: Sequence[int]) -> torch.Tensor:
    """Rotate ``x`` (B, N, heads, head_dim) by tables (N, head_dim): ``x * cos + rotate_half(x) * sin``
    with rotate_half acting inside each (t, h, w) chunk (NeoX: [-second half, first half]).

    The rotated half is never materialised: ``x * cos`` is formed once and each half-chunk adds its
    partner's ``x * sin`` in place (one fused multiply-add per half-chunk), instead of negating,
    concatenating and multiplying a rotated copy of ``x`` (``bench/bench_vs_official.py``)."""
    if x.shape[-1] != cos.shape[-1] or x.shape[-3] != cos.shape[0]:
        raise ValueError(f"x {tuple(x.shape)} does not match rope table {tuple(cos.shape)} (want (B, N, heads, D))")
    c = cos[:, None, :].to(x.dtype)
    s = sin[:, None, :].to(x.dtype)
    out = x * c
    start = 0
    for dim in split:
        half, mid, end = dim // 2, start + dim // 2, start + dim
        if half:
            out[..., start:mid].addcmul_(x[..., mid:end], s[..., start:mid], value=-1)
            out[..., mid:end].addcmul_(x[..., start:mid], s[..., mid:end])
        start = end
    return out


class RoPE3D:
    """Tables for a (F, H, W) grid; holds no state besides its settings (any batch size works)."""

    def __init__(self, head_dim: int, split: Sequence[int] | None = None, theta: float = DEFAULT_THETA):
        self.head_dim = head_dim
        self.split = check_rope_split(split if split is not None else default_rope_split(head_dim), head_dim)
        self.theta = float(theta)

    def tables(self, frames: int, height: int, width: int, device=None, dtype=torch.float32):
        pos = grid_positions(frames, height, width, device=device)
        return rope_cos_sin(pos, self.split, self.theta, dtype)

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rope(x, cos, sin, self.split)
