"""The VAE's causal 3D convolution, and which kernel computes each call.

:class:`CausalConv3d` is causal in time (``kernel_t - 1`` zero frames are prepended) and 'same' in
H and W. A call takes the cheapest of these forms of the same sum (``bench/bench_vs_official.py``
measures them against the official modules, ``README.md`` *Speed against the official modules*
has the figures):

* one frame (an image): a 2D conv with the kernel's last temporal slice, the only one that
  meets data (also under autograd);

and, without autograd only (under it their backward costs more than they save):

* 3-frame kernels at stride 1, widths >= 128, >= 1,024 output cells, on the CPU: Winograd
  F(2, 3) along time (:mod:`stepvideo.models.winograd`), ~2/3 of the multiply-adds;
* narrower ones, when the output is no larger than the padded input: the two zero frames are
  skipped (:meth:`CausalConv3d._trimmed`);
* otherwise the padded ``conv3d``.

Every ``conv3d`` goes through :func:`conv3d`, which on the CPU asks for oneDNN's kernel directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stepvideo.models.winograd import causal_time_conv3d

CL3D = torch.channels_last_3d

# Winograd along time pays from 128 channels in and out: at 128 -> 128, 17x128x128, 1.10x over the
# zero-frame skip; 1.25x at 256 and 1.40x at 512 channels (9x32x32); at 64 -> 64 or 32 -> 128 its
# frame-sized transforms cost more than the multiply-adds they save (0.87-0.93x). And from 1,024
# output cells (T*H*W): below, transforming the weights costs more than the convs save (512 -> 512
# at 3x8x8: 0.59x the padded conv; the decoder's 2048 -> 4096 at 3x8x8: 0.60x; at 5x16x16: 1.28x)
WINOGRAD_MIN_WIDTH = 128
WINOGRAD_MIN_CELLS = 1024


def inplace_ok(*tensors: torch.Tensor) -> bool:
    """In-place updates of fresh intermediates are safe when nothing records gradients."""
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


def silu_(x: torch.Tensor) -> torch.Tensor:
    """SiLU of a fresh intermediate, in place when no gradient is recorded."""
    return F.silu(x, inplace=inplace_ok(x))


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           stride: tuple[int, int, int], padding: tuple[int, int, int]) -> torch.Tensor:
    """``F.conv3d`` (dilation 1, one group); on the CPU in fp32 without autograd, oneDNN's kernel.

    Torch picks its reference kernel for a 3D input whose N*C*T*H is at most 20,480 (a rule that
    ignores W): 2-5x slower than oneDNN's on the VAE's small levels (64 channels at 9x32x32:
    25.6 ms against 4.5 ms), and its output comes back NCTHW instead of channels-last-3d.
    """
    if (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and inplace_ok(x, weight, *([] if bias is None else [bias]))):
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(padding), list(stride), [1, 1, 1], 1)
    return F.conv3d(x, weight, bias, stride=stride, padding=padding)


def pad_time_front(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Prepend ``frames`` zero frames to a (B, C, T, H, W) tensor."""
    if frames == 0:
        return x
    if torch.is_grad_enabled() and x.requires_grad:
        return F.pad(x, (0, 0, 0, 0, frames, 0))
    # without autograd: zero only the new frames (F.pad fills the whole output first), in x's layout
    b, c, t, h, w = x.shape
    fmt = CL3D if x.is_contiguous(memory_format=CL3D) else torch.contiguous_format
    out = torch.empty((b, c, t + frames, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    out[:, :, :frames].zero_()
    out[:, :, frames:].copy_(x)
    return out


def to_channels_last(conv: nn.Module) -> nn.Module:
    """Store a conv's weight channels-last (3d for Conv3d). With channels-last activations the
    CPU (oneDNN) and cuDNN kernels then keep that layout from layer to layer instead of
    reordering every input and output. Values, names and ``state_dict`` keys are unchanged
    (savers write ``.contiguous()`` copies); ``load_state_dict`` copies into this layout."""
    w = conv.weight
    fmt = CL3D if w.dim() == 5 else torch.channels_last
    conv.weight.data = w.data.contiguous(memory_format=fmt)
    return conv


class CausalConv3d(nn.Module):
    """3D convolution that is causal in time: ``kernel_t - 1`` zero frames are prepended.

    Spatially it is a 'same' convolution (zero padding ``kernel // 2``). With ``stride`` 2 the
    output has ``(T - 1) // 2 + 1`` frames, so frame 0 always maps to frame 0.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.time_pad = kernel_size - 1
        space_pad = kernel_size // 2
        self.conv = nn.Conv3d(
            in_channels, out_channels, kernel_size, stride=stride, padding=(0, space_pad, space_pad)
        )
        to_channels_last(self.conv)

    def forward(self, x: torch.Tensor, space_padding: int | None = None) -> torch.Tensor:
        """The causal conv of (B, C, T, H, W) ``x``. ``space_padding`` replaces the spatial zero
        padding (the exact-tiled decoder passes 0: its windows already hold the halo)."""
        c = self.conv
        pad = tuple(c.padding[1:]) if space_padding is None else (space_padding, space_padding)
        if x.shape[2] == 1 and self.time_pad:
            # One frame (an image): the prepended frames are zeros, so only the kernel's last
            # temporal slice meets data. The same sum as the 3D conv, ~3x cheaper on the CPU
            # (bench/bench_learning.py; image batches are most of the VAE's training steps).
            return F.conv2d(x[:, :, 0], c.weight[:, :, -1], c.bias, stride=c.stride[1:],
                            padding=pad).unsqueeze(2)
        if self._winograd(x):
            return causal_time_conv3d(x, c.weight, c.bias, pad)
        if self._trims(x):
            return self._trimmed(x, pad)
        return conv3d(pad_time_front(x, self.time_pad), c.weight, c.bias, c.stride, (0, *pad))

    def _stride1_3frames(self, x: torch.Tensor) -> bool:
        """A 3-frame kernel at stride 1 on a clip, without autograd (the forms below are for
        inference only: under autograd their backward cost more than they save; a VAE training
        step on 17-frame clips took 2.6 s with the zero-frame skip, 1.9 s without)."""
        c = self.conv
        return self.time_pad == 2 and c.stride == (1, 1, 1) and x.shape[2] > 2 and inplace_ok(x, c.weight)

    def _winograd(self, x: torch.Tensor) -> bool:
        """Whether Winograd F(2, 3) along time pays (:data:`WINOGRAD_MIN_WIDTH`,
        :data:`WINOGRAD_MIN_CELLS`; measured on CPUs only)."""
        c = self.conv
        return (x.device.type == "cpu" and self._stride1_3frames(x)
                and min(c.in_channels, c.out_channels) >= WINOGRAD_MIN_WIDTH
                and x.shape[2] * x.shape[3] * x.shape[4] >= WINOGRAD_MIN_CELLS)

    def _trims(self, x: torch.Tensor) -> bool:
        """Whether to skip the zero frames (:meth:`_trimmed`): enough frames for the saving to beat
        the extra calls, and an output no larger than the padded input (its copy replaces the
        padding's)."""
        c = self.conv
        t = x.shape[2]
        return self._stride1_3frames(x) and t > 4 and c.out_channels * t <= c.in_channels * (t + 2)

    def _trimmed(self, x: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
        """The causal conv without multiplying the two prepended zero frames: frames 2.. meet the
        whole kernel with no time padding, frame 0 only the kernel's last temporal slice and frame 1
        its last two. The same sums for 1/T fewer multiply-adds and no padded copy of x."""
        c = self.conv
        b, cin, t, h, w = x.shape
        body = conv3d(x, c.weight, c.bias, (1, 1, 1), (0, *pad))
        out = torch.empty((b, c.out_channels, t, *body.shape[3:]), dtype=x.dtype, device=x.device,
                          memory_format=CL3D)
        out[:, :, 2:] = body
        # frames 0 and 1 as 2D convs (a 2-frame conv3d takes torch's slow reference kernel when the
        # input is small); dense weight slices, as a strided one would be copied on each call
        last = c.weight[:, :, 2].contiguous(memory_format=torch.channels_last)
        mid = c.weight[:, :, 1].contiguous(memory_format=torch.channels_last)
        frames = x[:, :, :2].transpose(1, 2).reshape(b * 2, cin, h, w)  # a view when x is channels-last-3d
        y = F.conv2d(frames, last, c.bias, padding=pad)
        y = y.view(b, 2, *y.shape[1:])
        out[:, :, 0] = y[:, 0]
        out[:, :, 1] = y[:, 1] + F.conv2d(x[:, :, 0], mid, None, padding=pad)
        return out

    def silu_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(silu(x))``. Without autograd, on a clip, SiLU writes straight into the
        time-padded buffer the convolution reads (one pass over x instead of SiLU, then a copy)."""
        # channels-last-3d only: there each sample's new frames are one dense block, which SiLU's
        # vectorised kernel fills as it does in place (elsewhere it would take a strided loop)
        if not self.time_pad or x.shape[2] == 1 or not inplace_ok(x) or not x.is_contiguous(memory_format=CL3D):
            return self(silu_(x))
        if self._winograd(x) or self._trims(x):  # no padded buffer to fill
            return self(F.silu(x, inplace=True))
        c = self.conv
        b, ch, t, h, w = x.shape
        padded = torch.empty((b, ch, t + self.time_pad, h, w), dtype=x.dtype, device=x.device, memory_format=CL3D)
        padded[:, :, :self.time_pad].zero_()
        torch.ops.aten.silu.out(x, out=padded[:, :, self.time_pad:])
        return conv3d(padded, c.weight, c.bias, c.stride, c.padding)
