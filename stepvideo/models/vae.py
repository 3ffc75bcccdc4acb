"""Step-Video causal video VAE: 16x16 spatial, 8x temporal compression, dual-path resampling.

Layouts (the DiT uses the same latent layout, and there is no latent scale or shift):

* video  ``(B, T, C, H, W)``, values in [-1, 1]; ``T`` is 1 (an image) or a multiple of 17
* latent ``(B, T_lat, z, H/16, W/16)``; every 17 frames become 3 latent frames, 1 frame -> 1

Inference is streamed: :meth:`VideoVAE.encode` takes 17 frames at a time, :meth:`VideoVAE.decode`
3 latent frames at a time, each chunk independently (causal padding restarts per chunk, as in the
official model), so peak memory depends on the chunk (and tile) size, not on the clip length.
Decoded chunks are joined with the official boundary ``mix``.

Single images. Every layer of the official model is causal in time and frame 0 only ever meets
zero padding, so a 1-frame input is valid for the official layers: it encodes to 1 latent frame
and that latent decodes back to 1 frame. This is what ``T == 1`` does here. The image latent
equals the first latent frame of any 17-frame clip that starts with that image (up to float
rounding), and decoding it equals the first frame of a decoded chunk.

Spatial tiling (``tile_size`` in pixels, a multiple of 16) for large frames, two modes
(``tile_mode``; measured figures: ``vae_tiling.TILING_NOTE``):

* ``"blend"`` (default): the whole network runs on overlapping tiles (``tile_overlap`` pixels, a
  multiple of 16) blended with linear ramps. Approximate: per-frame GroupNorm statistics and the
  frame-wide causal attention see only one tile, so tiled results differ from untiled ones.
* ``"exact"``: layer-streamed tiling (:mod:`stepvideo.models.vae_tiling`): the network runs layer by
  layer over the whole frame, every local op tile by tile with its halo, GroupNorm statistics
  accumulated over all tiles, the mid-block attention on the whole (8x-downsampled) tensor. Equal
  to untiled up to float rounding. Whole activations live on the input's device (e.g. host
  memory), tiles are computed on the parameters' device: that bounds accelerator memory, not host
  memory; with both on one device it saves nothing and is no faster. Tiles do not overlap
  (``tile_overlap`` must be 0).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from stepvideo.models import io as model_io
from stepvideo.models import vae_tiling
from stepvideo.models.vae_blocks import VideoDecoder, VideoEncoder
from stepvideo.errors import InputError

@dataclass
class VAEConfig:
    """Geometry of :class:`VideoVAE` (plain data; ``config.json`` of a saved model).

    ``encoder_temporal_levels`` are the encoder levels whose downsampler is 3D (stride 2 in T, H,
    W; the others are 2D); ``decoder_temporal_levels`` the decoder levels with a 3D upsampler.
    ``patch_channels`` is the width at the 16x grid (official ``4 * z * 8``). ``dual_path``
    switches the parameter-free shortcuts on (official) or off. ``patchify=False`` is the training
    recipe's first-stage VAE (:meth:`stage1`): the latent sits on the feature grid before the
    dual-path patchify (4x8x8 compression for the official levels), through ``encoder.stage1_out``
    / ``decoder.stage1_in`` convs, and the dual-path modules do not exist.
    """

    in_channels: int = 3
    out_channels: int = 3
    z_channels: int = 64
    num_res_blocks: int = 2
    encoder_ch: int = 32
    encoder_ch_mult: tuple[int, ...] = (4, 8, 16, 16)
    decoder_ch: int = 128
    decoder_ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    encoder_temporal_levels: tuple[int, ...] = (1, 2)
    decoder_temporal_levels: tuple[int, ...] = (2, 3)
    norm_groups: int = 32
    patch_channels: int | None = None
    latent_chunk: int = 3
    mix_keep: float = 0.6
    logvar_range: tuple[float, float] = (-30.0, 20.0)
    dual_path: bool = True
    patchify: bool = True

    def __post_init__(self) -> None:
        for name in ("encoder_ch_mult", "decoder_ch_mult", "encoder_temporal_levels", "decoder_temporal_levels"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        self.logvar_range = tuple(float(v) for v in self.logvar_range)  # type: ignore[assignment]
        if self.patch_channels is None:
            self.patch_channels = 32 * self.z_channels
        self.validate()

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def official(cls) -> "VAEConfig":
        """Released Step-Video-T2V geometry (z=64, ~500M parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> "VAEConfig":
        """CPU demo geometry (z=4, 2.2M parameters): the golden-reference file's geometry.

        Every channel count is the official one divided by 16 and all shortcut group/repeat
        ratios are kept.
        """
        return cls(
            z_channels=4,
            num_res_blocks=1,
            encoder_ch=32,
            encoder_ch_mult=(2, 1, 1, 1),
            decoder_ch=32,
            decoder_ch_mult=(1, 1, 1, 1),
        )

    @classmethod
    def demo(cls) -> "VAEConfig":
        """Small *trainable* CPU geometry (z=16, ~3.3M parameters) for from-scratch demo training.

        Same architecture and layer math as the official model, different sizes. Unlike
        :meth:`tiny` (which keeps ``norm_groups=32`` on 32-channel widths, i.e. one channel per
        group = per-frame *instance* norm), this uses ``norm_groups=1`` (per-frame layer norm):
        with one channel per group every GroupNorm - in particular the encoder's ``norm_out``
        right before the latent - removes each channel's per-frame mean and scale, which slows
        from-scratch training markedly (measured on the synthetic shapes data: removing the norm
        or using one group lowers the 100-200-step train L1 from ~0.42 to ~0.31-0.35). z=16
        (patch_channels=64) gives the latent 4x the capacity of ``tiny``. Still a 16x-spatial /
        8x-temporal VAE: a few hundred CPU steps reach only ~13-14 dB held-out PSNR on the demo
        data. Not loadable from the golden-reference file (different widths).
        """
        return cls(
            z_channels=16,
            num_res_blocks=1,
            encoder_ch=16,
            encoder_ch_mult=(1, 2, 2, 4),
            decoder_ch=16,
            decoder_ch_mult=(1, 2, 2, 4),
            norm_groups=1,
            patch_channels=64,
        )

    @classmethod
    def small(cls) -> "VAEConfig":
        """The ``stepvideo-tiny`` release's geometry: :meth:`demo`'s widths and blocks with three
        levels instead of four and GroupNorm with 4 groups (per-frame), so 8x8x8 compression (z=16 on an 8x8 grid at 64x64, the official
        latent-to-pixel ratio of 1:96 at 8x16x16 with z=64) instead of 8x16x16. Chosen by
        bench/bench_learning.py: at equal CPU seconds it learns faster than the 16x-spatial demo
        geometry, and a 64x64 frame gets 64 latent cells instead of 16 (README, "Learning per
        CPU-second")."""
        return dataclasses.replace(cls.demo(), encoder_ch_mult=(1, 2, 4), decoder_ch_mult=(1, 2, 4),
                                   encoder_temporal_levels=(0, 1), decoder_temporal_levels=(1, 2), norm_groups=4)

    def stage1(self) -> "VAEConfig":
        """The first-stage VAE of the report's recipe for this geometry: same widths, no dual-path
        patchify (latent 2x finer in T, H and W: 4x8x8 for the official levels), 5 latent frames
        per 17-frame chunk. Its weights initialise every shared module of the full model."""
        if not self.patchify:
            return dataclasses.replace(self)
        return dataclasses.replace(self, patchify=False, dual_path=False, latent_chunk=2 * self.latent_chunk - 1)

    def stage2(self) -> "VAEConfig":
        """The full (dual-path, 8x16x16) geometry a :meth:`stage1` config grows into."""
        if self.patchify:
            return dataclasses.replace(self)
        return dataclasses.replace(self, patchify=True, dual_path=True, latent_chunk=(self.latent_chunk + 1) // 2)

    # ---- derived geometry ----------------------------------------------------------------
    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1) * (2 if self.patchify else 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** (len(self.decoder_temporal_levels) + (1 if self.patchify else 0))

    @property
    def frame_chunk(self) -> int:
        """Frames per independently encoded chunk (17 for the official geometry)."""
        return self.temporal_factor * (self.latent_chunk - 1) + 1

    @property
    def decoder_trim(self) -> int:
        """Leading frames the decoder output drops (3 for the official geometry: 20 -> 17)."""
        return 2 ** len(self.decoder_temporal_levels) - 1

    def validate(self) -> None:
        """Raise ValueError for a geometry the model cannot be built with."""
        errors = []
        g = self.norm_groups
        widths = [self.encoder_ch] + [self.encoder_ch * m for m in self.encoder_ch_mult]
        widths += [self.decoder_ch * m for m in self.decoder_ch_mult]
        if min(widths) <= 0 or any(w % g for w in widths):
            errors.append(f"every channel width {sorted(set(widths))} must be a positive multiple of norm_groups={g}")
        if self.num_res_blocks < 1:
            errors.append("num_res_blocks must be >= 1")
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult) or len(self.encoder_ch_mult) < 2:
            errors.append("encoder_ch_mult and decoder_ch_mult need the same length (>= 2)")
        if not self.patchify and self.dual_path:
            errors.append("dual_path=True needs patchify=True (the stage-1 VAE has no dual-path modules)")
        if len(self.encoder_temporal_levels) != len(self.decoder_temporal_levels):
            errors.append("encoder and decoder need the same number of temporal levels")
        n = len(self.encoder_ch_mult)
        if any(not 0 <= i < n - 1 for i in self.encoder_temporal_levels):
            errors.append(f"encoder_temporal_levels must lie in [0, {n - 2}]")
        if any(not 1 <= i < n for i in self.decoder_temporal_levels):
            errors.append(f"decoder_temporal_levels must lie in [1, {n - 1}]")
        pc = self.patch_channels
        enc_top = self.encoder_ch * self.encoder_ch_mult[-1]
        dec_top = self.decoder_ch * self.decoder_ch_mult[-1]
        if pc % 8 or (enc_top * 8) % pc or pc % (2 * self.z_channels) or pc % self.z_channels or (dec_top * 8) % pc:
            errors.append(
                f"patch_channels={pc} must be divisible by 8 and 2*z, and divide 8x the top widths "
                f"(encoder {enc_top}, decoder {dec_top})"
            )
        if self.latent_chunk < 1:
            errors.append("latent_chunk must be >= 1")
        if not 0.0 <= self.mix_keep <= 1.0:
            errors.append("mix_keep must lie in [0, 1]")
        if errors:
            raise InputError("invalid VAEConfig: " + "; ".join(errors))

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VAEConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown VAEConfig fields {unknown}; known: {sorted(known)}")
        return cls(**dict(d))


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) from moments ``(..., 2z, h, w)`` (channels on dim -3).

    ``logvar`` is clamped to ``logvar_range`` (official: [-30, 20]).
    """

    def __init__(self, moments: torch.Tensor, logvar_range: tuple[float, float] = (-30.0, 20.0)):
        self.moments = moments
        self.mean, logvar = torch.chunk(moments, 2, dim=-3)
        self.logvar = logvar.clamp(*logvar_range)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """mean + std * noise; noise drawn with ``generator`` (global RNG when None) unless given."""
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        elif noise.shape != self.mean.shape:
            raise InputError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(self.mean.shape)}")
        return self.mean + self.std * noise

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per batch element, summed over all latent elements."""
        kl = 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar)
        return kl.flatten(1).sum(1)


def mix_chunk_boundaries(x: torch.Tensor, frame_chunk: int, keep: float = 0.6) -> torch.Tensor:
    """Official boundary blend of decoded chunks, out of place; x is (B, T, C, H, W).

    For each boundary (front = last frame of a chunk, back = first frame of the next):
    ``back' = keep*back + (1-keep)*front`` and then ``front' = keep*front + (1-keep)*back'``
    (the official update is sequential, so front uses the already-updated back frame).
    """
    t = x.shape[1]
    if t <= frame_chunk:
        return x
    front = torch.arange(frame_chunk - 1, t - 1, frame_chunk, device=x.device)
    back = front + 1
    xb, xf = x.index_select(1, back), x.index_select(1, front)
    new_back = keep * xb + (1.0 - keep) * xf
    new_front = keep * xf + (1.0 - keep) * new_back
    return x.index_copy(1, back, new_back).index_copy(1, front, new_front)


def frames_to_tensor(frames: Any) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) (a numpy array) -> the VAE's input range: float32 (T, 3, H, W) in [-1, 1]."""
    import numpy as np

    return torch.from_numpy(np.array(frames, dtype=np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0


class VideoVAE(nn.Module):
    """Causal 3D-conv video VAE with the official Step-Video (version 2) parameter names."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        # a private copy: set_dual_path() changes it and must not touch the caller's object
        self.config = config = dataclasses.replace(config) if config is not None else VAEConfig()
        common = dict(
            z_channels=config.z_channels,
            num_res_blocks=config.num_res_blocks,
            groups=config.norm_groups,
            patch_channels=config.patch_channels,
            patchify=config.patchify,
        )
        self.encoder = VideoEncoder(
            in_channels=config.in_channels,
            ch=config.encoder_ch,
            ch_mult=config.encoder_ch_mult,
            temporal_levels=config.encoder_temporal_levels,
            **common,
        )
        self.decoder = VideoDecoder(
            out_channels=config.out_channels,
            ch=config.decoder_ch,
            ch_mult=config.decoder_ch_mult,
            temporal_levels=config.decoder_temporal_levels,
            **common,
        )
        self.set_dual_path(config.dual_path)

    def load_stage1_weights(self, stage1: "VideoVAE") -> list[str]:
        """Initialise from a first-stage VAE (``config.stage1()`` of this geometry): every shared
        module is copied; returns the parameter names left at their initial values (the dual-path
        modules, to be trained next)."""
        mine, theirs = self.config.stage1().to_dict(), stage1.config.stage1().to_dict()
        diff = sorted(k for k in mine if mine[k] != theirs[k])
        if stage1.config.patchify or diff:
            raise InputError(
                "load_stage1_weights needs a patchify=False VAE of the same geometry"
                + (f"; config fields differ: {diff}" if diff else "; got a full (patchify=True) VAE")
            )
        shared = {k: v for k, v in stage1.state_dict().items() if ".stage1_" not in k}
        missing, unexpected = self.load_state_dict(shared, strict=False)
        if unexpected:
            raise InputError(f"stage-1 weights without a place in this model: {unexpected}")
        return list(missing)

    # ---- geometry --------------------------------------------------------------------------
    @property
    def dual_path(self) -> bool:
        return self.encoder.use_shortcut

    def set_dual_path(self, enabled: bool) -> None:
        """Switch the parameter-free shortcuts of both encoder and decoder on or off."""
        if enabled and not self.config.patchify:
            raise InputError("a stage-1 VAE (patchify=False) has no dual path to switch on")
        self.encoder.use_shortcut = self.decoder.use_shortcut = bool(enabled)
        self.config.dual_path = bool(enabled)

    @property
    def frame_chunk(self) -> int:
        return self.config.frame_chunk

    @property
    def latent_chunk(self) -> int:
        return self.config.latent_chunk

    def latent_frames(self, frames: int) -> int:
        """Latent frames for a valid frame count (1 -> 1, 17k -> 3k)."""
        return 1 if frames == 1 else frames // self.frame_chunk * self.latent_chunk

    def video_frames(self, latent_frames: int) -> int:
        """Frames decoded from a valid latent frame count (1 -> 1, 3k -> 17k)."""
        return 1 if latent_frames == 1 else latent_frames // self.latent_chunk * self.frame_chunk

    def _param(self) -> torch.Tensor:
        return next(self.parameters())

    # ---- input checks ------------------------------------------------------------------------
    def check_video(self, video: torch.Tensor) -> None:
        """Raise ValueError unless ``video`` is a finite float (B, T, C, H, W) the VAE can encode."""
        c = self.config
        if not isinstance(video, torch.Tensor):
            raise ValueError(f"video must be a torch.Tensor, got {type(video).__name__}")
        if video.ndim != 5:
            raise ValueError(f"video must be (B, T, C, H, W), got shape {tuple(video.shape)}")
        b, t, ch, h, w = video.shape
        if not video.is_floating_point():
            raise ValueError(f"video must be a float tensor in [-1, 1], got {video.dtype}")
        if ch != c.in_channels:
            raise ValueError(f"video has {ch} channels on dim 2, expected {c.in_channels} (layout B, T, C, H, W)")
        if b < 1 or not (t == 1 or (t > 0 and t % self.frame_chunk == 0)):
            raise ValueError(f"video frame count T={t} must be 1 (an image) or a multiple of {self.frame_chunk}")
        f = c.spatial_factor
        if h < f or w < f or h % f or w % f:
            raise ValueError(f"video height/width {h}x{w} must be positive multiples of {f}")
        if not bool(torch.isfinite(video).all()):
            raise ValueError("video contains NaN or Inf values")

    def check_latent(self, latent: torch.Tensor) -> None:
        """Raise ValueError unless ``latent`` is a finite float (B, T_lat, z, h, w) the VAE can decode."""
        if not isinstance(latent, torch.Tensor):
            raise ValueError(f"latent must be a torch.Tensor, got {type(latent).__name__}")
        if latent.ndim != 5:
            raise ValueError(f"latent must be (B, T_lat, z, h, w), got shape {tuple(latent.shape)}")
        b, t, ch, h, w = latent.shape
        if not latent.is_floating_point():
            raise ValueError(f"latent must be a float tensor, got {latent.dtype}")
        if ch != self.config.z_channels:
            raise ValueError(f"latent has {ch} channels on dim 2, expected z_channels={self.config.z_channels}")
        if b < 1 or h < 1 or w < 1 or not (t == 1 or (t > 0 and t % self.latent_chunk == 0)):
            raise ValueError(f"latent frame count {t} must be 1 or a multiple of {self.latent_chunk}")
        if not bool(torch.isfinite(latent).all()):
            raise ValueError("latent contains NaN or Inf values")

    @staticmethod
    def check_tiling(tile_size: int | None, tile_overlap: int, factor: int, tile_mode: str = "blend") -> None:
        """Raise ValueError for tiling arguments `encode`/`decode` cannot take (:func:`vae_tiling.check_tiling`)."""
        vae_tiling.check_tiling(tile_size, tile_overlap, factor, tile_mode)

    # ---- chunk-level paths (B, C, T, H, W) -----------------------------------------------------
    def _chunks(self, t: int, size: int) -> Iterator[slice]:
        if t == 1:
            yield slice(0, 1)
            return
        for s in range(0, t, size):
            yield slice(s, s + size)

    def _decode_chunk(self, z: torch.Tensor, exact_tile: int | None = None) -> torch.Tensor:
        """(B, z, t_lat, h, w) -> (B, C, frames, H, W) including the leading-frame trim.

        With ``exact_tile`` (pixels) the decoder runs layer-streamed (tile_mode='exact'); the
        result then stays on z's device.
        """
        x = self.decoder(z) if exact_tile is None else vae_tiling.decode_chunk(self.decoder, z, exact_tile)
        return x[:, :, self.config.decoder_trim :]

    # ---- public inference API ------------------------------------------------------------------
    @torch.no_grad()
    def encode_moments(
        self, video: torch.Tensor, *, tile_size: int | None = None, tile_overlap: int = 0, tile_mode: str = "blend"
    ) -> torch.Tensor:
        """Raw encoder output (B, T_lat, 2z, h, w), 17 frames at a time: [mean | logvar].

        ``tile_mode``: "blend" (approximate overlap blending) or "exact" (layer-streamed, equal to
        untiled up to float rounding; ``tile_overlap`` must be 0); see the module docstring.
        """
        self.check_video(video)
        f = self.config.spatial_factor
        self.check_tiling(tile_size, tile_overlap, f, tile_mode)
        p = self._param()
        b, t, _, h, w = video.shape
        moments = torch.empty(
            b, self.latent_frames(t), 2 * self.config.z_channels, h // f, w // f, dtype=p.dtype, device=video.device
        )
        untiled = tile_size is None or (h <= tile_size and w <= tile_size)
        exact = not untiled and tile_mode == "exact"
        device = video.device if exact else p.device  # exact: whole activations stay on the video's device
        for k, sl in enumerate(self._chunks(t, self.frame_chunk)):
            x = video[:, sl].to(device=device, dtype=p.dtype).permute(0, 2, 1, 3, 4).contiguous()
            if untiled:
                m = self.encoder(x)
            elif exact:
                m = vae_tiling.encode_chunk(self.encoder, x, tile_size)
            else:
                m = vae_tiling.blend_tiles(self.encoder, x, f, 1, tile_size, tile_overlap)
            n = m.shape[2]
            moments[:, k * n : (k + 1) * n] = m.permute(0, 2, 1, 3, 4).to(moments.device)
        return moments

    def posterior(
        self, video: torch.Tensor, *, tile_size: int | None = None, tile_overlap: int = 0, tile_mode: str = "blend"
    ) -> DiagonalGaussian:
        """The diagonal Gaussian posterior q(z | video) (no gradients)."""
        moments = self.encode_moments(video, tile_size=tile_size, tile_overlap=tile_overlap, tile_mode=tile_mode)
        return DiagonalGaussian(moments, self.config.logvar_range)

    def encode(
        self,
        video: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        *,
        tile_size: int | None = None,
        tile_overlap: int = 0,
        tile_mode: str = "blend",
    ) -> torch.Tensor:
        """Video (B, T, C, H, W) in [-1, 1] -> latent (B, T_lat, z, H/16, W/16).

        Returns the posterior mean, or with ``sample=True`` a sample drawn with ``generator``
        (the official ``encode`` always samples, from the global RNG). Tiling: see
        :meth:`encode_moments`.
        """
        post = self.posterior(video, tile_size=tile_size, tile_overlap=tile_overlap, tile_mode=tile_mode)
        return post.sample(generator) if sample else post.mode()

    @torch.no_grad()
    def decode(
        self,
        latent: torch.Tensor,
        *,
        mix: bool = True,
        tile_size: int | None = None,
        tile_overlap: int = 0,
        tile_mode: str = "blend",
    ) -> torch.Tensor:
        """Latent (B, T_lat, z, h, w) -> video (B, T, C, 16h, 16w), 3 latent frames at a time.

        ``mix`` applies the official chunk-boundary blend. ``tile_size``/``tile_overlap`` are in
        output pixels (multiples of 16); ``tile_mode`` as in :meth:`encode_moments`.
        """
        self.check_latent(latent)
        f = self.config.spatial_factor
        self.check_tiling(tile_size, tile_overlap, f, tile_mode)
        p = self._param()
        b, t, _, h, w = latent.shape
        fc = self.frame_chunk
        out = torch.empty(
            b, self.video_frames(t), self.config.out_channels, h * f, w * f, dtype=p.dtype, device=latent.device
        )
        keep = self.config.mix_keep
        untiled = tile_size is None or (h * f <= tile_size and w * f <= tile_size)
        exact = not untiled and tile_mode == "exact"
        device = latent.device if exact else p.device  # exact: whole activations stay on the latent's device
        for k, sl in enumerate(self._chunks(t, self.latent_chunk)):
            z = latent[:, sl].to(device=device, dtype=p.dtype).permute(0, 2, 1, 3, 4).contiguous()
            if untiled:
                x = self._decode_chunk(z)
            elif exact:
                x = self._decode_chunk(z, exact_tile=tile_size)
            else:
                x = vae_tiling.blend_tiles(self._decode_chunk, z, 1, f, tile_size // f, tile_overlap // f)
            n = x.shape[2]
            out[:, k * n : (k + 1) * n] = x.permute(0, 2, 1, 3, 4).to(out.device)
            if mix and k > 0:  # boundary between chunk k-1 (front) and chunk k (back)
                front, back = k * fc - 1, k * fc
                out[:, back] = keep * out[:, back] + (1.0 - keep) * out[:, front]
                out[:, front] = keep * out[:, front] + (1.0 - keep) * out[:, back]
        return out

    # ---- differentiable path for training ---------------------------------------------------
    def forward(
        self,
        video: torch.Tensor,
        *,
        sample: bool = True,
        generator: torch.Generator | None = None,
        mix: bool = True,
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruct ``video`` with gradients: returns (reconstruction, posterior).

        Chunks are processed as in :meth:`encode`/:meth:`decode` but kept in the autograd graph,
        so memory grows with the clip length; use :meth:`encode`/:meth:`decode` for inference.
        """
        self.check_video(video)
        x = video.permute(0, 2, 1, 3, 4)
        t = video.shape[1]
        moments = torch.cat([self.encoder(x[:, :, sl]) for sl in self._chunks(t, self.frame_chunk)], dim=2)
        post = DiagonalGaussian(moments.permute(0, 2, 1, 3, 4), self.config.logvar_range)
        z = (post.sample(generator) if sample else post.mode()).permute(0, 2, 1, 3, 4)
        chunks = [self._decode_chunk(z[:, :, sl]) for sl in self._chunks(z.shape[2], self.latent_chunk)]
        recon = torch.cat(chunks, dim=2).permute(0, 2, 1, 3, 4)
        if mix:
            recon = mix_chunk_boundaries(recon, self.frame_chunk, self.config.mix_keep)
        return recon, post

    # ---- weights --------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike) -> os.PathLike:
        """Write ``config.json`` + safetensors weights to ``folder`` (atomically)."""
        return model_io.save_folder(folder, self.state_dict(), self.config.to_dict())

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str = "cpu") -> "VideoVAE":
        """Load a folder written by :meth:`save_pretrained`."""
        model = cls(model_io.load_config(VAEConfig, folder))
        state = model_io.load_state_dict(folder, device=device)
        model_io.load_state_checked(model, state, model_io.weights_label(folder))
        return model.to(device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = [
    "VAEConfig",
    "DiagonalGaussian",
    "VideoVAE",
    "mix_chunk_boundaries",
]
