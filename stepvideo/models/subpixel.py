"""Nearest-neighbour x2 upsampling followed by a convolution, computed on the coarse grid.

``conv(nearest_x2(x))`` repeats every input cell 2x along each upsampled axis, so each output
cell of a given *phase* (its index mod 2 along each axis) meets the same input cells through a
smaller kernel whose taps are sums of the original taps. Along one axis a 3-tap 'same' kernel
``(w0, w1, w2)`` becomes, on the coarse grid,

* phase 0: ``w0`` at offset -1 and ``w1 + w2`` at offset 0,
* phase 1: ``w0 + w1`` at offset 0 and ``w2`` at offset +1,

and a causal 3-tap kernel in time (offsets -2, -1, 0 on the fine grid) becomes

* phase 0: ``w0 + w1`` at offset -1 and ``w2`` at offset 0,
* phase 1: ``w0`` at offset -1 and ``w1 + w2`` at offset 0.

Zero padding of the fine grid is zero padding of the coarse grid, so the result is the same sum
in a different order (fp32 round-off apart). A 3x3 conv costs 4 phases x 4 taps instead of
4 x 9 multiply-adds per coarse cell (2.25x fewer), a causal 3x3x3 one 8 x 8 instead of 8 x 27
(3.4x fewer), and the 4x / 8x upsampled input is never materialised. ``bench/bench_vs_official.py``
measures the decoder with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stepvideo.models.causal_conv import conv3d

# tap tables, indexed [phase, coarse tap, fine tap]; the coarse taps sit at offsets (-1, 0) for
# the causal time axis and at (-1, 0) / (0, +1) for phase 0 / 1 of a 'same' axis
_SAME = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))
_CAUSAL = ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)), ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0))


def _table(rows, w: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32, device=w.device)


def _check_kernel(weight: torch.Tensor, dims: int) -> None:
    if weight.ndim != dims + 2 or any(k != 3 for k in weight.shape[2:]):
        raise ValueError(f"expected a {'x'.join(['3'] * dims)} kernel, got weight {tuple(weight.shape)}")


# All phases run as one convolution with 2x2(x2) kernels and (phases x Co) output channels: with
# one cell of zero padding on each spatial side, phase 1 of an axis reads the same window as
# phase 0 one cell further on, so the (H + 1, W + 1) output holds every phase, shifted by its
# index. One pass then moves each phase's cells to their place on the fine grid.


def nearest2x_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)``.

    x (N, C, H, W), weight (Co, C, 3, 3) -> (N, Co, 2H, 2W) in channels-last memory.
    """
    _check_kernel(weight, 2)
    n, _, h, w = x.shape
    co = weight.shape[0]
    s = _table(_SAME, weight)
    k = torch.einsum("ayk,bxl,ockl->abocyx", s, s, weight.float()).reshape(4 * co, -1, 2, 2)
    k = k.to(weight.dtype).contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, k, None if bias is None else bias.repeat(4), padding=1)  # (N, 4 Co, H + 1, W + 1)
    y = y.permute(0, 2, 3, 1).view(n, h + 1, w + 1, 2, 2, co)
    out = torch.empty((n, co, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
    fine = out.permute(0, 2, 3, 1).view(n, h, 2, w, 2, co)
    for a in range(2):
        for b in range(2):
            fine[:, :, a, :, b, :] = y[:, a:a + h, b:b + w, a, b, :]
    return out


def nearest2x_causal_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The causal 3x3x3 conv (two zero frames in front, 'same' in H and W) of ``nearest_x2(x)``.

    x (B, C, T, H, W), weight (Co, C, 3, 3, 3) -> (B, Co, 2T, 2H, 2W) in channels-last-3d memory.
    """
    _check_kernel(weight, 3)
    bsz, _, t, h, w = x.shape
    co = weight.shape[0]
    s, c = _table(_SAME, weight), _table(_CAUSAL, weight)
    k = torch.einsum("atj,byk,cxl,oijkl->abcoityx", c, s, s, weight.float()).reshape(8 * co, -1, 2, 2, 2)
    k = k.to(weight.dtype).contiguous(memory_format=torch.channels_last_3d)
    xp = F.pad(x, (0, 0, 0, 0, 1, 0))  # one zero frame: the coarse offset -1 of frame 0
    y = conv3d(xp, k, None if bias is None else bias.repeat(8), (1, 1, 1), (0, 1, 1))  # (B, 8 Co, T, H + 1, W + 1)
    y = y.permute(0, 2, 3, 4, 1).view(bsz, t, h + 1, w + 1, 2, 2, 2, co)
    out = torch.empty((bsz, co, 2 * t, 2 * h, 2 * w), dtype=y.dtype, device=y.device,
                      memory_format=torch.channels_last_3d)
    fine = out.permute(0, 2, 3, 4, 1).view(bsz, t, 2, h, 2, w, 2, co)
    for b in range(2):
        for cc in range(2):  # every time phase of this (b, cc) at once: (B, T, 2, H, W, Co)
            fine[:, :, :, :, b, :, cc, :] = y[:, :, b:b + h, cc:cc + w, :, b, cc, :].permute(0, 1, 4, 2, 3, 5)
    return out


def add_nearest2x(fine: torch.Tensor, coarse: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``fine + nearest_x2(coarse)`` for (B, C, 2T, 2H, 2W) and (B, C, T, H, W), by broadcasting.

    In place into ``fine`` when ``inplace`` and ``fine`` is channels-last-3d; the result is
    channels-last-3d whenever ``fine`` is.
    """
    b, c, t, h, w = coarse.shape
    if tuple(fine.shape) != (b, c, 2 * t, 2 * h, 2 * w):
        raise ValueError(f"fine {tuple(fine.shape)} is not coarse {tuple(coarse.shape)} upsampled x2")
    if not fine.is_contiguous(memory_format=torch.channels_last_3d):
        return fine + F.interpolate(coarse, scale_factor=2.0, mode="nearest")
    fv = fine.permute(0, 2, 3, 4, 1).view(b, t, 2, h, 2, w, 2, c)
    cv = coarse.permute(0, 2, 3, 4, 1).reshape(b, t, 1, h, 1, w, 1, c)
    y = fv.add_(cv) if inplace else fv + cv
    return y.view(b, 2 * t, 2 * h, 2 * w, c).permute(0, 4, 1, 2, 3)
