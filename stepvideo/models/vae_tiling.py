"""Exact spatial tiling of the Step-Video VAE ("layer-streamed" tiling).

The blend tiling of :class:`~stepvideo.models.vae.VideoVAE` runs the whole network on each tile
and is approximate: per-frame GroupNorm statistics and the mid-block attention need the whole
frame. Here the network runs *layer by layer over the whole frame* instead:

* **Storage and compute.** Every activation between two ops is a full ``(B, C, T, H, W)`` tensor
  on the *storage device*, the device of the input chunk (e.g. host memory). Each tile of an op is
  computed on the *compute device*, the device of the module's parameters.
* **Local ops, tile by tile.** Causal 3x3x3 and 1x1x1 convs, the 2D/3D down- and upsamplers and
  the pixel (un)shuffles of the dual-path modules are computed per output tile: the input slice
  plus the halo the op needs is copied to the compute device, zero-padded only where it crosses
  the true frame border (the zero padding of the untiled op), the op runs without spatial padding
  and the tile is written back. Time is never tiled (every tile holds all frames of the chunk).
* **FrameGroupNorm.** While an op writes its tiles it accumulates per-(batch, group, frame) sum
  and sum of squares in float64. The normalisation (and the SiLU after it, where the block has
  one) is applied to each input slice inside the *next* op's tile computation, before the zero
  padding, just as the untiled model normalises and then pads.
* **Mid-block attention.** It is raster-causal over every token of the chunk and cannot be tiled:
  the module runs unchanged on the whole tensor, moved to the compute device. It sits on the
  coarsest feature grid (8x downsampled), so it is the smallest activation of the network.
* **Alignment.** ``tile_size`` (pixels) is a multiple of the spatial factor (16); a tensor at scale
  ``1/2^k`` is cut every ``tile_size/2^k`` cells, so tile edges coincide at every level and
  stride-2 / x2 ops always start on even cells.

The result equals the untiled chunk up to float rounding (per-tile conv kernels and the order of
the statistics sums differ); ``TILING_NOTE`` below gives measured numbers.

Memory: with storage on the host and compute on a GPU, GPU memory holds one tile (input with halo
and output) of one op, the mid-block attention on the 8x-downsampled tensor, and the weights;
host RAM holds up to four whole activations at once (a residual block's input, intermediate and
output; the upsampled input in :class:`UpsampleResBlock3D`), and every op's input and output
crosses host <-> GPU once per layer. On a CPU-only machine storage and compute are the same device
and nothing is saved: the mode is then only exact, and no faster than untiled (many small convs,
extra copies; measured 1.0x (encode) and 1.3x (decode) the untiled time, tiny model, 17x128x128, tile 32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stepvideo.models.subpixel import nearest2x_causal_conv3d, nearest2x_conv2d
from stepvideo.models.causal_conv import CausalConv3d
from stepvideo.models.vae_blocks import (
    Downsample2D,
    Downsample3D,
    FrameGroupNorm,
    ResnetBlock3D,
    Upsample2D,
    Upsample3D,
    VideoDecoder,
    VideoEncoder,
    _per_frame,
    pixel_shuffle_3d,
    pixel_unshuffle_3d,
)
from stepvideo.errors import InputError

TILE_MODES = ("blend", "exact")

TILING_NOTE = (
    "tile_mode='exact' (layer-streamed) equals untiled up to float rounding: float32 on CPU, max abs "
    "difference <= 3.6e-6 (<= 2.1e-6 of the output's max abs), relative RMS <= 1.7e-6 on latents and "
    "decoded frames (seeded random init: tiny 17x64x96 at tiles 32/48, a 1-frame image, 17x48x32 at "
    "tile 16, a 34-frame clip, demo, no dual path, other widths, 3 levels, the stage-1 VAE; "
    "tests/unit/models/test_vae_tiling.py asserts <= 1e-5 of the output's max abs); relative RMS 1.6e-7 with the "
    "trained demo VAE at 17x128x128, tile 32. "
    "tile_mode='blend' (the default) is approximate: per-frame GroupNorm statistics and the mid-block "
    "causal attention see one tile instead of the whole frame, so every pixel changes, not only the "
    "seams, by an amount that depends on the weights. Trained demo VAE (250 steps), 4 clean 17x128x128 "
    "clips: tile 64 px / overlap 16 or 32: decoded relative RMS 0.097 (30.1 dB PSNR against untiled), "
    "latent relative RMS 0.30-0.32; tile 96 / overlap 32: decoded 0.059 (34.5 dB), latent 0.15; the "
    "reconstruction PSNR against the input moves by < 0.4 dB. Random weights are far worse "
    "(relative RMS 0.47-0.77). Guaranteed (both modes): a tile covering the whole frame gives "
    "bitwise the untiled result; the blend weights are an exact partition of unity. 'exact' bounds "
    "memory only when the model is on an accelerator and the video in host memory; 'blend' bounds it "
    "everywhere."
)


def check_tiling(tile_size: int | None, tile_overlap: int, factor: int, tile_mode: str = "blend") -> None:
    """Raise ValueError for tiling arguments the VAE cannot take (``tile_size``/``tile_overlap`` in the
    grid units of ``factor``)."""
    if tile_mode not in TILE_MODES:
        raise InputError(f"tile_mode must be one of {', '.join(map(repr, TILE_MODES))}; got {tile_mode!r}")
    if tile_mode == "exact" and tile_overlap:
        raise InputError(
            f"tile_overlap must be 0 with tile_mode='exact' (its tiles do not overlap); got {tile_overlap}"
        )
    if tile_size is None:
        return
    if tile_size < factor or tile_size % factor or tile_overlap < 0 or tile_overlap % factor:
        raise InputError(f"tile_size and tile_overlap must be multiples of {factor} (tile_size >= {factor})")
    if tile_overlap >= tile_size:
        raise InputError(f"tile_overlap ({tile_overlap}) must be smaller than tile_size ({tile_size})")


Need = Callable[[int, int], "tuple[int, int]"]
"""Maps an output tile's [start, stop) along H or W to the input [start, stop) it reads."""


# --------------------------------------------------------------------------------------------
# Activations on the storage device, with a pending FrameGroupNorm (+ SiLU)
# --------------------------------------------------------------------------------------------


def _frame_sums(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(2, B, G, T) float64 sum and sum of squares of x (B, C, T, h, w) per (batch, group, frame)."""
    b, c, t, h, w = x.shape
    xg = x.reshape(b, groups, c // groups, t, h, w).to(torch.float64)
    return torch.stack([xg.sum(dim=(2, 4, 5)), xg.square().sum(dim=(2, 4, 5))])


@dataclass
class Act:
    """A full activation on the storage device; ``read`` returns slices on the compute device.

    ``sums`` are the frame statistics accumulated while it was written (None if not needed);
    ``norm`` / ``silu`` are applied to every slice that is read (see :meth:`normed`).
    """

    data: torch.Tensor
    sums: torch.Tensor | None = None
    norm: FrameGroupNorm | None = None
    silu: bool = False
    mean: torch.Tensor | None = None
    rstd: torch.Tensor | None = None

    @property
    def hw(self) -> tuple[int, int]:
        return self.data.shape[-2], self.data.shape[-1]

    def normed(self, norm: FrameGroupNorm, silu: bool) -> "Act":
        """This activation seen through ``norm`` (whole-frame statistics) and optionally SiLU."""
        if self.sums is None or self.sums.shape[2] != norm.num_groups:
            raise RuntimeError("frame statistics with the norm's group count were not accumulated")
        b, c, t, h, w = self.data.shape
        n = (c // norm.num_groups) * h * w
        mean = self.sums[0] / n
        var = (self.sums[1] / n - mean.square()).clamp_min(0.0)
        rstd = torch.rsqrt(var + norm.eps)
        shape = (b, norm.num_groups, 1, t, 1, 1)
        dtype = self.data.dtype
        return Act(self.data, self.sums, norm, silu, mean.to(dtype).view(shape), rstd.to(dtype).view(shape))

    def read(self, ys: tuple[int, int], xs: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Rows ``ys``, columns ``xs`` (may reach past the frame) on ``device``, normalised, zero-padded."""
        (y0, y1), (x0, x1) = ys, xs
        h, w = self.hw
        win = self.data[..., max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)].to(device)
        if self.norm is not None:
            win = self._normalise(win)
        if self.silu:
            win = F.silu(win)
        pad = (max(-x0, 0), max(x1 - w, 0), max(-y0, 0), max(y1 - h, 0))
        return F.pad(win, pad) if any(pad) else win

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Same op order as :class:`FrameGroupNorm`, with the whole-frame mean and 1/std."""
        b, c, t, h, w = x.shape
        g = self.norm.num_groups
        y = ((x.reshape(b, g, c // g, t, h, w) - self.mean) * self.rstd).reshape(b, c, t, h, w)
        if self.norm.affine:
            y = torch.addcmul(self.norm.bias.view(1, c, 1, 1, 1), y, self.norm.weight.view(1, c, 1, 1, 1))
        return y


# --------------------------------------------------------------------------------------------
# The tile loop
# --------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Compute device, norm group count and the tiling of one chunk (tile and frame on the root grid)."""

    device: torch.device
    groups: int
    tile: int
    root_h: int

    def tile_for(self, h: int) -> int:
        """Tile size on a grid of height ``h`` (same pixel edges at every level)."""
        return max(self.tile * h // self.root_h, 1)


def _local_op(
    run: _Run,
    fn: Callable[..., torch.Tensor],
    srcs: Sequence[tuple[Act, Need]],
    out_hw: tuple[int, int],
    stats: bool = True,
) -> Act:
    """Compute ``fn(*windows)`` for every output tile and write it to a new storage tensor.

    ``srcs`` pairs every input with the :data:`Need` of the op; ``fn`` gets one window per
    input and must return exactly the output tile. With ``stats`` the frame sums are accumulated.
    """
    storage = srcs[0][0].data.device
    H, W = out_hw
    step = run.tile_for(H)
    out = sums = None
    for y0 in range(0, H, step):
        ys = (y0, min(y0 + step, H))
        for x0 in range(0, W, step):
            xs = (x0, min(x0 + step, W))
            piece = fn(*(a.read(need(*ys), need(*xs), run.device) for a, need in srcs))
            if piece.shape[-2:] != (ys[1] - ys[0], xs[1] - xs[0]):
                raise RuntimeError(f"tile {ys}x{xs} came out {tuple(piece.shape[-2:])}: halo bug")
            if out is None:
                out = torch.empty(*piece.shape[:3], H, W, dtype=piece.dtype, device=storage)
            out[..., ys[0] : ys[1], xs[0] : xs[1]] = piece.to(storage)
            if stats:
                tile_sums = _frame_sums(piece, run.groups)
                sums = tile_sums if sums is None else sums + tile_sums
    return Act(out, sums)


def _whole(run: _Run, module: nn.Module, x: Act) -> Act:
    """Run ``module`` unchanged on the whole tensor on the compute device (the mid-block attention)."""
    if x.norm is not None:
        raise RuntimeError("_whole expects a raw activation")
    y = module(x.data.to(run.device))
    return Act(y.to(x.data.device), _frame_sums(y, run.groups))


# ---- the Need of each op (output tile -> input range) ----------------------------------------


def _same(o0: int, o1: int) -> tuple[int, int]:
    return o0, o1


def _coarse(f: int) -> Need:
    """The output grid is ``f`` x the input grid (upsampling, pixel shuffle): tile edges on the grid."""

    def need(o0: int, o1: int) -> tuple[int, int]:
        if o0 % f or o1 % f:
            raise InputError(f"tile edges on a {f}x-upsampled grid must be multiples of {f}, got [{o0}, {o1})")
        return o0 // f, o1 // f

    return need


def _fine(f: int) -> Need:
    """The output grid is ``1/f`` x the input grid (pixel unshuffle)."""
    return lambda o0, o1: (f * o0, f * o1)


def _then(first: Need, second: Need) -> Need:
    """Compose Needs: ``second`` maps the output range back one step, ``first`` the rest of the way."""
    return lambda o0, o1: first(*second(o0, o1))


def _conv_need(conv: nn.Conv2d | nn.Conv3d) -> Need:
    """Output cell o reads input cells [s*o - p, s*o - p + k) of a (k, stride s, padding p) conv."""
    k, s, p = conv.kernel_size[-1], conv.stride[-1], conv.padding[-1]
    return lambda o0, o1: (s * o0 - p, s * (o1 - 1) - p + k)


def _crop(x: torch.Tensor, n: int) -> torch.Tensor:
    """Drop ``n`` cells on every spatial side (the halo, for a shortcut that has none)."""
    return x[..., n:-n, n:-n] if n else x


def _conv3d(m: CausalConv3d, x: torch.Tensor) -> torch.Tensor:
    """:class:`CausalConv3d` without spatial padding (the window already holds the halo)."""
    return m(x, space_padding=0)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


def _conv(run: _Run, m: CausalConv3d, x: Act, stats: bool = True) -> Act:
    s = m.conv.stride[-1]
    h, w = x.hw
    return _local_op(run, lambda win: _conv3d(m, win), [(x, _conv_need(m.conv))], (h // s, w // s), stats)


def _resnet(run: _Run, block: ResnetBlock3D, x: Act) -> Act:
    """conv1(silu(norm1(x))), then conv2(silu(norm2(h))) + (x or nin_shortcut(x))."""
    h = _conv(run, block.conv1, x.normed(block.norm1, silu=True))

    def second(hw: torch.Tensor, xw: torch.Tensor) -> torch.Tensor:
        skip = xw if block.nin_shortcut is None else _conv3d(block.nin_shortcut, xw)
        return _conv3d(block.conv2, hw) + skip

    srcs = [(h.normed(block.norm2, silu=True), _conv_need(block.conv2.conv)), (x, _same)]
    return _local_op(run, second, srcs, x.hw)


def _downsample(run: _Run, m: nn.Module, x: Act) -> Act:
    h, w = x.hw
    if isinstance(m, Downsample3D):
        return _conv(run, m.conv, x)
    if isinstance(m, Downsample2D):  # pad right/bottom by 1 = zero halo past the frame
        need = lambda o0, o1: (2 * o0, 2 * o1 + 1)  # noqa: E731
        return _local_op(run, lambda win: _per_frame(win, m.conv), [(x, need)], (h // 2, w // 2))
    raise TypeError(f"unsupported downsampler {type(m).__name__}")


# a fine window of an x2 upsample + 3x3 conv reads its coarse cells and one coarse cell of halo
_UP_HALO = _then(lambda i0, i1: (i0 - 1, i1 + 1), _coarse(2))


def _upsample2d(run: _Run, m: Upsample2D, x: Act) -> Act:
    """Nearest x2 then a 3x3 conv: read one input cell of halo, upsample, keep one cell of halo."""
    conv = m.conv

    def fn(win: torch.Tensor) -> torch.Tensor:
        # the 'same' conv of the upsampled window, less the 2 fine cells of each side that the
        # window's halo (1 coarse cell) only feeds
        return _per_frame(win, lambda f: nearest2x_conv2d(f, conv.weight, conv.bias)[..., 2:-2, 2:-2])

    h, w = x.hw
    return _local_op(run, fn, [(x, _UP_HALO)], (2 * h, 2 * w))


def _upsample3d(run: _Run, m: Upsample3D, x: Act) -> Act:
    """Nearest x2 in T, H, W, then conv -> norm -> silu -> conv -> norm and silu(h + u) + u."""
    up = lambda win: F.interpolate(win, scale_factor=2.0, mode="nearest")  # noqa: E731
    u = _local_op(run, up, [(x, _coarse(2))], (2 * x.hw[0], 2 * x.hw[1]), stats=False)
    res = m.conv3d
    c1 = res.conv1.conv
    conv1 = lambda win: nearest2x_causal_conv3d(win, c1.weight, c1.bias)[..., 2:-2, 2:-2]  # noqa: E731
    h1 = _local_op(run, conv1, [(x, _UP_HALO)], u.hw)  # conv1 on the coarse grid (as in the module)
    h = _conv(run, res.conv2, h1.normed(res.norm1, silu=True))
    out = lambda hw, uw: F.silu(hw + uw) + uw  # noqa: E731
    return _local_op(run, out, [(h.normed(res.norm2, silu=False), _same), (u, _same)], u.hw)


def _upsample(run: _Run, m: nn.Module, x: Act) -> Act:
    if isinstance(m, Upsample3D):
        return _upsample3d(run, m, x)
    if isinstance(m, Upsample2D):
        return _upsample2d(run, m, x)
    raise TypeError(f"unsupported upsampler {type(m).__name__}")


def _mid(run: _Run, mid: nn.Module, x: Act) -> Act:
    h = _resnet(run, mid.block_1, x)
    h = _whole(run, mid.attn_1, h)
    return _resnet(run, mid.block_2, h)


# --------------------------------------------------------------------------------------------
# Encoder / decoder
# --------------------------------------------------------------------------------------------


def _make_run(module: nn.Module, x: torch.Tensor, tile_size: int, factor: int, root_scale: int) -> _Run:
    """Check the tiling and describe it; ``root_scale`` = pixels per cell of x's grid."""
    h, w = x.shape[-2] * root_scale, x.shape[-1] * root_scale
    if tile_size < factor or tile_size % factor or h % factor or w % factor:
        raise InputError(f"tile_size ({tile_size}) and frame size {h}x{w} must be multiples of {factor}")
    p = next(module.parameters())
    groups = next(m.num_groups for m in module.modules() if isinstance(m, FrameGroupNorm))
    return _Run(device=p.device, groups=groups, tile=tile_size // root_scale, root_h=x.shape[-2])


def _spatial_factor(levels: nn.ModuleList, patchify: bool) -> int:
    """Pixels per latent cell: 2 per resampling level, and 2 for the (un)patchify (if any)."""
    return 2 ** (sum(level.resample is not None for level in levels) + int(patchify))


@torch.no_grad()
def encode_chunk(encoder: VideoEncoder, x: torch.Tensor, tile_size: int) -> torch.Tensor:
    """Exact tiled ``encoder(x)``: x (B, C, T, H, W) on the storage device -> moments there.

    ``tile_size`` is in pixels, a multiple of the spatial factor (16).
    """
    x = x.to(dtype=next(encoder.parameters()).dtype)
    run = _make_run(encoder, x, tile_size, _spatial_factor(encoder.down, encoder.patchify), 1)
    h = _conv(run, encoder.conv_in, Act(x))
    for level in encoder.down:
        for block in level.block:
            h = _resnet(run, block, h)
        if level.resample is not None:
            h = _downsample(run, level.resample, h)
    h = _mid(run, encoder.mid, h).normed(encoder.norm_out, silu=True)
    if not encoder.patchify:  # stage-1 VAE: one conv to the moments
        return _conv(run, encoder.stage1_out, h, stats=False).data
    p = _patchify(run, encoder, h)
    return _conv_with_shortcut(run, encoder.conv_out, encoder.shortcut_out, encoder.use_shortcut, p).data


def _patchify(run: _Run, enc: VideoEncoder, h: Act) -> Act:
    """conv_patchify(h) (+ shortcut_pathify(h)): conv then 2x pixel-unshuffle to the latent grid."""
    conv = enc.conv_patchify
    pad = conv.conv.conv.padding[-1]

    def fn(win: torch.Tensor) -> torch.Tensor:
        p = pixel_unshuffle_3d(_conv3d(conv.conv, win), conv.factor)
        if enc.use_shortcut:
            p = p + enc.shortcut_pathify(_crop(win, pad))
        return p

    f = conv.factor
    hh, ww = h.hw
    return _local_op(run, fn, [(h, _then(_conv_need(conv.conv.conv), _fine(f)))], (hh // f, ww // f), stats=False)


def _conv_with_shortcut(run: _Run, conv: CausalConv3d, shortcut: nn.Module, use_shortcut: bool, x: Act) -> Act:
    """conv(x) (+ shortcut(x), a parameter-free same-grid shortcut): encoder conv_out, decoder conv_in."""
    pad = conv.conv.padding[-1]

    def fn(win: torch.Tensor) -> torch.Tensor:
        out = _conv3d(conv, win)
        return out + shortcut(_crop(win, pad)) if use_shortcut else out

    return _local_op(run, fn, [(x, _conv_need(conv.conv))], x.hw, stats=False)


@torch.no_grad()
def decode_chunk(decoder: VideoDecoder, z: torch.Tensor, tile_size: int) -> torch.Tensor:
    """Exact tiled ``decoder(z)`` (before the trim): z (B, z, t, h, w) on the storage device.

    ``tile_size`` is in output pixels, a multiple of the spatial factor (16).
    """
    z = z.to(dtype=next(decoder.parameters()).dtype)
    factor = _spatial_factor(decoder.up, decoder.patchify)
    run = _make_run(decoder, z, tile_size, factor, factor)
    if decoder.patchify:
        h = _conv_with_shortcut(run, decoder.conv_in, decoder.shortcut_in, decoder.use_shortcut, Act(z))
        h = _unpatchify(run, decoder, h)
    else:  # stage-1 VAE: one conv from the latent
        h = _conv(run, decoder.stage1_in, Act(z))
    h = _mid(run, decoder.mid, h)
    for level in reversed(decoder.up):
        for block in level.block:
            h = _resnet(run, block, h)
        if level.resample is not None:
            h = _upsample(run, level.resample, h)
    out = _conv(run, decoder.conv_out, h.normed(decoder.norm_out, silu=True), stats=False)
    return out.data


def _unpatchify(run: _Run, dec: VideoDecoder, h: Act) -> Act:
    """conv_unpatchify(h) (+ shortcut_unpathify(h)): conv then 2x pixel-shuffle."""
    conv = dec.conv_unpatchify
    pad = conv.conv.conv.padding[-1]

    def fn(win: torch.Tensor) -> torch.Tensor:
        u = pixel_shuffle_3d(_conv3d(conv.conv, win), conv.factor)
        return u + dec.shortcut_unpathify(_crop(win, pad)) if dec.use_shortcut else u

    f = conv.factor
    hh, ww = h.hw
    return _local_op(run, fn, [(h, _then(_conv_need(conv.conv.conv), _coarse(f)))], (f * hh, f * ww))




# ------------------------------------------------------------------ blend mode: overlapping tiles

def ramp(length: int, start: int, stop: int, overlap: int) -> torch.Tensor:
    """1-D blend weight of a tile covering [start, stop) of ``length``; ramps over ``overlap``."""
    w = torch.ones(stop - start)
    if overlap > 0:
        i = torch.arange(stop - start, dtype=torch.float32)
        if start > 0:
            w = torch.minimum(w, (i + 1) / (overlap + 1))
        if stop < length:
            w = torch.minimum(w, (stop - start - i) / (overlap + 1))
    return w


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    starts.append(length - tile)
    return sorted(set(starts))


def blend_tiles(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, factor_in: int, factor_out: int, tile: int, overlap: int) -> torch.Tensor:
    """Run ``fn`` on overlapping spatial tiles of ``x`` (B, C, T, H, W) and blend the outputs.

    ``tile`` and ``overlap`` are in units of x's grid; outputs are ``factor_out/factor_in``
    times larger spatially. Blend weights ramp linearly across each overlap.
    """
    _, _, _, h, w = x.shape
    scale_num, scale_den = factor_out, factor_in
    out = weight = None
    for y0 in tile_starts(h, tile, overlap):
        y1 = min(y0 + tile, h)
        for x0 in tile_starts(w, tile, overlap):
            x1 = min(x0 + tile, w)
            piece = fn(x[:, :, :, y0:y1, x0:x1])
            if out is None:
                b, c, t = piece.shape[:3]
                H, W = h * scale_num // scale_den, w * scale_num // scale_den
                out = piece.new_zeros(b, c, t, H, W)
                weight = piece.new_zeros(1, 1, 1, H, W)
            Y0, Y1 = y0 * scale_num // scale_den, y1 * scale_num // scale_den
            X0, X1 = x0 * scale_num // scale_den, x1 * scale_num // scale_den
            ov = overlap * scale_num // scale_den
            wy = ramp(H, Y0, Y1, ov).to(piece)
            wx = ramp(W, X0, X1, ov).to(piece)
            wt = (wy[:, None] * wx[None, :])[None, None, None]
            out[:, :, :, Y0:Y1, X0:X1] += piece * wt
            weight[:, :, :, Y0:Y1, X0:X1] += wt
    return out / weight


__all__ = ["TILE_MODES", "TILING_NOTE", "Act", "check_tiling", "decode_chunk", "encode_chunk", "blend_tiles", "ramp",
           "tile_starts"]
