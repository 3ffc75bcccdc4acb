"""A causal 3-tap time convolution computed with Winograd's F(2, 3) along the time axis.

A causal 3x3x3 convolution gives output frame ``t`` as ``g0*x[t-2] + g1*x[t-1] + g2*x[t]``,
where each ``g_k`` is a 3x3 (spatial) kernel slice, each ``*`` a 2D convolution and frames
before 0 are zeros. Two neighbouring output frames ``y[2j], y[2j+1]`` read the four frames
``d0..d3 = x[2j-2 .. 2j+1]``; Winograd's minimal filtering F(2, 3) (Lavin & Gray, 2016) gets
both from four 2D convolutions instead of six:

    V0 = d0 - d2        U0 = g0                 y[2j]   = M0 + M1 + M2
    V1 = d1 + d2        U1 = (g0 + g1 + g2)/2   y[2j+1] = M1 - M2 - M3
    V2 = d2 - d1        U2 = (g0 - g1 + g2)/2
    V3 = d1 - d3        U3 = g2                 M_i = V_i * U_i

So a clip of T frames costs about 2T instead of 3T frame-sized 2D convolutions (T = 17: 315 frame
x tap slices against 432 with the zero frames skipped, 459 with them). The transforms are sums
of whole frames, which in the channels-last-3d layout are dense blocks of H*W*C values, so they
run at memory speed; that is why it is done along time and not along H or W (where the same
transforms are strided copies; ``README.md``, *Speed against the official modules*).

The result is the same linear map summed in a different order: fp32 round-off differs from the
direct convolution by a few ulps of the output (about 2x the direct form's own error). Used
without autograd only (``CausalConv3d``); ``bench/bench_vs_official.py`` measures it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kernels(weight: torch.Tensor) -> list[torch.Tensor]:
    """The four transformed 2D kernels ``U0..U3`` (channels-last) of a (Co, Ci, 3, kh, kw) weight."""
    if weight.ndim != 5 or weight.shape[2] != 3:
        raise ValueError(f"expected a (C_out, C_in, 3, kh, kw) weight, got {tuple(weight.shape)}")
    g0, g1, g2 = weight.unbind(2)
    outer = g0 + g2
    cl = torch.channels_last
    return [g0.contiguous(memory_format=cl), ((outer + g1) * 0.5).contiguous(memory_format=cl),
            ((outer - g1) * 0.5).contiguous(memory_format=cl), g2.contiguous(memory_format=cl)]


def causal_time_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       padding: tuple[int, int]) -> torch.Tensor:
    """``conv3d(pad_time_front(x, 2), weight, bias, padding=(0, *padding))`` for a (B, C, T, H, W)
    ``x`` (T >= 2) and a kernel of 3 frames, stride 1. Returns a channels-last-3d tensor."""
    b, cin, t, h, w = x.shape
    if t < 2:
        raise ValueError(f"needs at least 2 frames, got {t}")
    if weight.shape[1] != cin:
        raise ValueError(f"weight expects {weight.shape[1]} input channels, x has {cin}")
    u = kernels(weight)
    co = weight.shape[0]
    frames = x.permute(0, 2, 3, 4, 1)  # (B, T, H, W, C): a view when x is channels-last-3d
    even, odd = frames[:, 0::2], frames[:, 1::2]
    n, m = even.shape[1], odd.shape[1]  # pairs, and pairs whose second frame exists
    v = [torch.empty((b, k, h, w, cin), dtype=x.dtype, device=x.device) for k in (n, n, n, m)]
    # pair 0 reads the two zero frames: d0 = d1 = 0
    torch.neg(even[:, 0], out=v[0][:, 0])
    v[1][:, 0] = even[:, 0]
    v[2][:, 0] = even[:, 0]
    torch.neg(odd[:, 0], out=v[3][:, 0])
    if n > 1:
        torch.sub(even[:, :-1], even[:, 1:], out=v[0][:, 1:])
        torch.add(odd[:, :n - 1], even[:, 1:], out=v[1][:, 1:])
        torch.sub(even[:, 1:], odd[:, :n - 1], out=v[2][:, 1:])
    if m > 1:
        torch.sub(odd[:, :-1], odd[:, 1:], out=v[3][:, 1:])

    def conv(i: int, with_bias: bool) -> torch.Tensor:
        k = v[i].shape[1]
        y = F.conv2d(v[i].view(b * k, h, w, cin).permute(0, 3, 1, 2), u[i], bias if with_bias else None,
                     padding=padding)
        return y.permute(0, 2, 3, 1).reshape(b, k, *y.shape[2:], co)  # a view for a channels-last result

    m0, m1, m2, m3 = conv(0, False), conv(1, True), conv(2, False), conv(3, False)  # bias once, via M1
    out = torch.empty((b, t, *m0.shape[2:4], co), dtype=x.dtype, device=x.device)
    out_even, out_odd = out[:, 0::2], out[:, 1::2]
    torch.add(m0, m1, out=out_even).add_(m2)
    torch.sub(m1[:, :m], m2[:, :m], out=out_odd).sub_(m3)
    return out.permute(0, 4, 1, 2, 3)
