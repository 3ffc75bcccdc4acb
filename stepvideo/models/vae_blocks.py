"""Building blocks of the Step-Video causal video VAE (official "version 2", dual path).

Every block works on tensors laid out (B, C, T, H, W). Module and parameter names follow the
official ``state_dict`` so released weights load with ``strict=True``.

Behaviour shared by all blocks:

* **Causal time.** 3x3x3 convolutions see the current and the two previous frames only: two
  zero frames are prepended in time, H and W get one zero pixel on each side.
* **Per-frame GroupNorm.** :class:`FrameGroupNorm` normalises every frame on its own (statistics
  over channel group x H x W). It is a property of the module, not a global switch.
* **Dual path.** Down/up sampling between the 16x-compressed latent and the feature maps has a
  learnt conv path plus a parameter-free shortcut (pixel-unshuffle + channel averaging in the
  encoder, channel duplication + pixel-shuffle in the decoder). ``use_shortcut=False`` drops the
  shortcut, which is the first stage of the training recipe; weights are identical either way.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stepvideo.models.causal_conv import CL3D, CausalConv3d, inplace_ok, pad_time_front, silu_, to_channels_last
from stepvideo.models.subpixel import add_nearest2x, nearest2x_causal_conv3d, nearest2x_conv2d


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over (channel group, H, W) of each frame separately; input (B, C, T, H, W).

    Same parameters (``weight``, ``bias``) as :class:`torch.nn.GroupNorm`. Because every frame is
    normalised on its own, a frame's output never depends on other frames.

    Computed by ``F.group_norm`` (torch's fused kernel, as in the official model) on the
    (B*T, C, H, W) batch of frames. A channels-last-3d input (B, T, H, W, C in memory) already is
    that batch in channels-last layout, so it goes in as a view and the result stays
    channels-last-3d; any other layout is copied into frames once.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # a view when x is channels-last-3d
        y = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        return y.view(b, t, c, h, w).transpose(1, 2)


class ResnetBlock3D(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1 conv when widths differ) skip."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = FrameGroupNorm(groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3)
        self.norm2 = FrameGroupNorm(groups, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3)
        if in_channels != out_channels:
            self.nin_shortcut = CausalConv3d(in_channels, out_channels, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.conv1.silu_forward(self.norm1(x))
        h = self.conv2.silu_forward(self.norm2(h))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h.add_(skip) if inplace_ok(h, skip) else h + skip


class CausalAttnBlock(nn.Module):
    """Single-head self-attention over all (t, h, w) tokens of a chunk, causal in raster order.

    Token order is frame-major then row then column; token i attends to tokens 0..i only, so a
    pixel cannot see later pixels of its own frame (the official behaviour).
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = FrameGroupNorm(groups, channels)
        self.q = CausalConv3d(channels, channels, 1)
        self.k = CausalConv3d(channels, channels, 1)
        self.v = CausalConv3d(channels, channels, 1)
        self.proj_out = CausalConv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        b, c, t, h, w = x.shape
        y = self.norm(x)

        def tokens(conv: nn.Module) -> torch.Tensor:
            return conv(y).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, THW, C)

        out = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v), is_causal=True)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, t, h, w)
        # channels-last-3d whichever kernel the 1x1 conv took (torch's reference one, for a small
        # input, returns NCTHW), so the next norm sees one layout with or without autograd
        y = self.proj_out(out).contiguous(memory_format=CL3D)
        return y.add_(x) if inplace_ok(y, x) else x + y


def _per_frame(x: torch.Tensor, fn) -> torch.Tensor:
    """Apply a 2D (N, C, H, W) function to every frame of a (B, C, T, H, W) tensor."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))  # a view when x is channels-last-3d
    y = y.reshape(b, t, y.shape[1], y.shape[2], y.shape[3]).transpose(1, 2)
    return y.contiguous(memory_format=CL3D)  # channels-last frames come back without a copy


class Downsample2D(nn.Module):
    """Per-frame 2x spatial downsampling: zero pad right/bottom by 1, 3x3 stride-2 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = to_channels_last(nn.Conv2d(channels, channels, 3, stride=2, padding=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return _per_frame(x, lambda f: self.conv(F.pad(f, (0, 1, 0, 1))))


class Downsample3D(nn.Module):
    """2x downsampling in T, H and W with a causal 3x3x3 stride-2 conv (T -> (T-1)//2 + 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.conv(x)


class Upsample2D(nn.Module):
    """Per-frame nearest 2x spatial upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = to_channels_last(nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        # without autograd: the same sum as conv(interpolate(frame)), on the coarse grid
        # (stepvideo/models/subpixel.py); training keeps the plain form, whose backward is cheaper
        if inplace_ok(x, self.conv.weight):
            return _per_frame(x, lambda f: nearest2x_conv2d(f, self.conv.weight, self.conv.bias))
        return _per_frame(x, lambda f: self.conv(F.interpolate(f, scale_factor=2.0, mode="nearest")))


class UpsampleResBlock3D(nn.Module):
    """Residual block used after 3D upsampling (official ``Res3DBlockUpsample``).

    conv -> norm -> SiLU -> conv -> norm, then ``SiLU(h + x) + x``: the input is added twice
    (once before and once after the activation), as in the official model.
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.conv1 = CausalConv3d(channels, channels, 3)
        self.norm1 = FrameGroupNorm(groups, channels)
        self.conv2 = CausalConv3d(channels, channels, 3)
        self.norm2 = FrameGroupNorm(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.norm2(self.conv2.silu_forward(self.norm1(self.conv1(x))))
        if inplace_ok(h, x):
            return F.silu(h.add_(x), inplace=True).add_(x)
        return F.silu(h + x) + x

    def forward_upsampled(self, coarse: torch.Tensor) -> torch.Tensor:
        """``forward(nearest_x2(coarse))`` without building the upsampled tensor: conv1 runs on the
        coarse grid (:func:`nearest2x_causal_conv3d`) and both residual adds broadcast."""
        c1 = self.conv1.conv
        h = self.norm2(self.conv2.silu_forward(self.norm1(nearest2x_causal_conv3d(coarse, c1.weight, c1.bias))))
        inplace = inplace_ok(h, coarse)
        h = F.silu(add_nearest2x(h, coarse, inplace), inplace=inplace)
        return add_nearest2x(h, coarse, inplace)


class Upsample3D(nn.Module):
    """Nearest 2x upsampling in T, H and W, then :class:`UpsampleResBlock3D`."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.conv3d = UpsampleResBlock3D(channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if inplace_ok(x, self.conv3d.conv1.conv.weight):  # inference: on the coarse grid
            return self.conv3d.forward_upsampled(x)
        return self.conv3d(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# --------------------------------------------------------------------------------------------
# Dual-path resampling between feature maps and the latent grid
# --------------------------------------------------------------------------------------------


def _last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> its (B, T, H, W, C) view (a copy only when x is not channels-last-3d)."""
    return x.permute(0, 2, 3, 4, 1)


def _first(x: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, C) -> the (B, C, T, H, W) view (channels-last-3d when x is contiguous)."""
    return x.permute(0, 4, 1, 2, 3)


def _unshuffle_last(x: torch.Tensor, f: int) -> torch.Tensor:
    """(B, C, T, H, W) with T, H, W divisible by f -> (B, T/f, H/f, W/f, C*f^3), channel index
    ``((c*f + dt)*f + dh)*f + dw``; one copy."""
    b, c, t, h, w = x.shape
    y = _last(x).reshape(b, t // f, f, h // f, f, w // f, f, c)
    return y.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, t // f, h // f, w // f, c * f**3)


def _shuffle_last(x: torch.Tensor, f: int) -> torch.Tensor:
    """(B, T, H, W, C*f^3) -> (B, C, T*f, H*f, W*f) channels-last-3d; inverse of _unshuffle_last."""
    b, t, h, w, cf = x.shape
    c = cf // f**3
    y = x.reshape(b, t, h, w, c, f, f, f).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return _first(y.reshape(b, t * f, h * f, w * f, c))


def pixel_unshuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C*f^3, ceil-ish T/f, H/f, W/f), causal in time.

    ``factor - 1`` zero frames are prepended first, so frame 0 lands alone in the first output
    frame. Output channel index is ``((c*f + dt)*f + dh)*f + dw``. The result is channels-last-3d.
    """
    if factor == 1:
        return x
    return _first(_unshuffle_last(pad_time_front(x, factor - 1), factor))


def pixel_shuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Inverse of :func:`pixel_unshuffle_3d`: (B, C*f^3, T, H, W) -> (B, C, T*f-(f-1), H*f, W*f)."""
    if factor == 1:
        return x
    return _shuffle_last(_last(x), factor)[:, :, factor - 1 :]


class PixelUnshuffleChannelAveraging3D(nn.Module):
    """Parameter-free encoder shortcut: pixel-unshuffle, then average groups of adjacent channels."""

    def __init__(self, in_channels: int, out_channels: int, factor: int):
        super().__init__()
        expanded = in_channels * factor**3
        if expanded % out_channels:
            raise ValueError(
                f"channel averaging needs in_channels*factor^3 ({expanded}) divisible by out_channels ({out_channels})"
            )
        self.out_channels = out_channels
        self.factor = factor
        self.group_size = expanded // out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.factor == 1:
            y = _last(x)
        else:
            y = _unshuffle_last(pad_time_front(x, self.factor - 1), self.factor)
        b, t, h, w, _ = y.shape
        return _first(y.reshape(b, t, h, w, self.out_channels, self.group_size).mean(dim=-1))


class ChannelDuplicatingPixelShuffle3D(nn.Module):
    """Parameter-free decoder shortcut: repeat every channel, then pixel-shuffle."""

    def __init__(self, in_channels: int, out_channels: int, factor: int):
        super().__init__()
        expanded = out_channels * factor**3
        if expanded % in_channels:
            raise ValueError(
                f"channel duplication needs out_channels*factor^3 ({expanded}) divisible by in_channels ({in_channels})"
            )
        self.factor = factor
        self.repeats = expanded // in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        b, c, t, h, w = x.shape
        r, f = self.repeats, self.factor
        y = _last(x).unsqueeze(-1).expand(b, t, h, w, c, r)  # repeat_interleave on channels, lazily
        if f == 1:
            return _first(y.reshape(b, t, h, w, c * r))
        return _shuffle_last(y.reshape(b, t, h, w, c * r), f)[:, :, f - 1 :]


class ConvPixelUnshuffle3D(nn.Module):
    """Learnt encoder path: causal conv to ``out_channels / f^3`` channels, then pixel-unshuffle."""

    def __init__(self, in_channels: int, out_channels: int, factor: int):
        super().__init__()
        if out_channels % factor**3:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by factor^3 ({factor**3})")
        self.factor = factor
        self.conv = CausalConv3d(in_channels, out_channels // factor**3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return pixel_unshuffle_3d(self.conv(x), self.factor)


class ConvPixelShuffle3D(nn.Module):
    """Learnt decoder path: causal conv to ``out_channels * f^3`` channels, then pixel-shuffle."""

    def __init__(self, in_channels: int, out_channels: int, factor: int):
        super().__init__()
        self.factor = factor
        self.conv = CausalConv3d(in_channels, out_channels * factor**3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return pixel_shuffle_3d(self.conv(x), self.factor)


# --------------------------------------------------------------------------------------------
# Encoder / decoder
# --------------------------------------------------------------------------------------------


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b, into ``a`` (a fresh conv output) when no gradient is recorded."""
    return a.add_(b) if inplace_ok(a, b) and a.is_contiguous(memory_format=CL3D) else a + b


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlock3D list) and an optional resampler.

    The official module also carries an always-empty ``attn`` list; it holds no parameters and
    is left out here.
    """

    def __init__(self, blocks: Sequence[nn.Module], resample_name: str | None, resample: nn.Module | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self._resample_name = resample_name
        if resample_name is not None:
            self.add_module(resample_name, resample)

    @property
    def resample(self) -> nn.Module | None:
        """The level's down/up sampler (registered as ``downsample`` or ``upsample``), or None."""
        return None if self._resample_name is None else getattr(self, self._resample_name)


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock3D(channels, channels, groups)
        self.attn_1 = CausalAttnBlock(channels, groups)
        self.block_2 = ResnetBlock3D(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.block_2(self.attn_1(self.block_1(x)))


class VideoEncoder(nn.Module):
    """(B, C_in, T, H, W) video chunk -> (B, 2*z, T_lat, H/16, W/16) posterior moments."""

    def __init__(
        self,
        *,
        in_channels: int,
        z_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        temporal_levels: Sequence[int],
        groups: int,
        patch_channels: int,
        patchify: bool = True,
    ):
        super().__init__()
        self.use_shortcut = True
        self.patchify = patchify
        self.conv_in = CausalConv3d(in_channels, ch, 3)
        widths = [ch] + [ch * m for m in ch_mult]
        self.down = nn.ModuleList()
        for i in range(len(ch_mult)):
            blocks = [
                ResnetBlock3D(widths[i] if j == 0 else widths[i + 1], widths[i + 1], groups)
                for j in range(num_res_blocks)
            ]
            if i == len(ch_mult) - 1:
                resample = None
            elif i in temporal_levels:
                resample = Downsample3D(widths[i + 1])
            else:
                resample = Downsample2D(widths[i + 1])
            self.down.append(_Level(blocks, None if resample is None else "downsample", resample))
        top = widths[-1]
        self.mid = _Mid(top, groups)
        self.norm_out = FrameGroupNorm(groups, top)
        if patchify:
            self.conv_patchify = ConvPixelUnshuffle3D(top, patch_channels, 2)
            self.shortcut_pathify = PixelUnshuffleChannelAveraging3D(top, patch_channels, 2)
            self.conv_out = CausalConv3d(patch_channels, 2 * z_channels, 3)
            self.shortcut_out = PixelUnshuffleChannelAveraging3D(patch_channels, 2 * z_channels, 1)
        else:  # the recipe's first-stage VAE: latent on the feature grid (4x8x8), no dual path
            self.stage1_out = CausalConv3d(top, 2 * z_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.conv_in(x.contiguous(memory_format=CL3D))  # channels-last-3d from here on
        for level in self.down:
            for block in level.block:
                h = block(h)
            if level.resample is not None:
                h = level.resample(h)
        h = silu_(self.norm_out(self.mid(h)))
        if not self.patchify:
            return self.stage1_out(h)
        p = self.conv_patchify(h)
        if self.use_shortcut:
            p = _add(p, self.shortcut_pathify(h))
        out = self.conv_out(p)
        if self.use_shortcut:
            out = _add(out, self.shortcut_out(p))
        return out


class VideoDecoder(nn.Module):
    """(B, z, T_lat, h, w) latent chunk -> (B, C_out, 4*T_lat - 3 + trim, 16h, 16w) before the trim.

    The caller drops the first ``trim`` frames (3 for the official geometry: 20 -> 17).
    """

    def __init__(
        self,
        *,
        out_channels: int,
        z_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        temporal_levels: Sequence[int],
        groups: int,
        patch_channels: int,
        patchify: bool = True,
    ):
        super().__init__()
        self.use_shortcut = True
        self.patchify = patchify
        widths = [ch * m for m in ch_mult]
        top = widths[-1]
        if patchify:
            self.conv_in = CausalConv3d(z_channels, patch_channels, 3)
            self.shortcut_in = ChannelDuplicatingPixelShuffle3D(z_channels, patch_channels, 1)
            self.conv_unpatchify = ConvPixelShuffle3D(patch_channels, top, 2)
            self.shortcut_unpathify = ChannelDuplicatingPixelShuffle3D(patch_channels, top, 2)
        else:  # the recipe's first-stage VAE: latent on the feature grid (4x8x8), no dual path
            self.stage1_in = CausalConv3d(z_channels, top, 3)
        self.mid = _Mid(top, groups)
        levels: list[nn.Module] = [None] * len(ch_mult)  # type: ignore[list-item]
        block_in = top
        for i in reversed(range(len(ch_mult))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock3D(block_in, widths[i], groups))
                block_in = widths[i]
            if i == 0:
                resample = None
            elif i in temporal_levels:
                resample = Upsample3D(block_in, groups)
            else:
                resample = Upsample2D(block_in)
            levels[i] = _Level(blocks, None if resample is None else "upsample", resample)
        self.up = nn.ModuleList(levels)
        self.norm_out = FrameGroupNorm(groups, block_in)
        self.conv_out = CausalConv3d(block_in, out_channels, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        z = z.contiguous(memory_format=CL3D)  # channels-last-3d from here on
        if self.patchify:
            h = self.conv_in(z)
            if self.use_shortcut:
                h = _add(h, self.shortcut_in(z))
            u = self.conv_unpatchify(h)
            if self.use_shortcut:
                u = _add(u, self.shortcut_unpathify(h))
        else:
            u = self.stage1_in(z)
        h = self.mid(u)
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if level.resample is not None:
                h = level.resample(h)
        return self.conv_out.silu_forward(self.norm_out(h))
