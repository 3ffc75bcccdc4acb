"""Text-to-video inference: the Step-Video-T2V pipeline (prompts -> uint8 frames).

Diffusers-style: the pipeline holds the models (DiT, VAE, two text encoders) and borrows the
scheduler from :mod:`stepvideo.diffusion.sampler`; it never trains anything and imports no
tracking/orchestration code.

The bundle folder and random components: :mod:`stepvideo.pipelines.components`.

Generation::

    pipe = T2VPipeline.from_pretrained("bundle")                 # or T2VPipeline.random("demo")
    video = pipe("A red circle moves right", num_frames=17, height=64, width=64, steps=50)
    save_video(video[0], "out.mp4", fps=8, gif=True)

``generate`` encodes the prompts with both encoders (the negative prompt for the unconditional
CFG branch), draws float32 noise of the latent shape ``(B, T_lat, z, H/16, W/16)`` on the CPU from
``seed`` (sample i uses ``seed + i``, so a batch equals the single-prompt runs and results do not
depend on the device), integrates the flow ODE with Euler + time shift + CFG, decodes with the VAE
and maps [-1, 1] to uint8 ``(B, T, H, W, 3)``.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from stepvideo.data.video_io import IMAGE_SUFFIXES, write_image, write_video
from stepvideo.diffusion.sampler import SamplerConfig, sample, sampler_preset
from stepvideo.models.dit import StepVideoDiT
from stepvideo.models.text_encoders import PrecomputedTextEncoder, TextEncoder
from stepvideo.models.vae import VAEConfig, VideoVAE
from stepvideo.pipelines.components import (MODEL_INDEX, as_dtype, is_int, load_components, model_index,
                                            random_components, read_model_index, save_bundle)
from stepvideo.errors import InputError
from stepvideo.fileio import atomic_path

__all__ = ["MODEL_INDEX", "T2VPipeline", "save_video", "frames_to_uint8"]

ProgressCallback = Callable[[int, int], Any]  # (steps done, total steps)


# ----------------------------------------------------------------------------------------------
# helpers


def _texts(value: str | Sequence[str], name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise InputError(f"{name} must be a string or a non-empty list of strings, got {value!r:.200}")


def frames_to_uint8(video: torch.Tensor) -> np.ndarray:
    """VAE output (B, T, C, H, W) in [-1, 1] -> uint8 numpy (B, T, H, W, C) (clamped, rounded)."""
    x = ((video.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 1, 3, 4, 2).contiguous().cpu().numpy()


# ----------------------------------------------------------------------------------------------
# pipeline


class T2VPipeline:
    """Step-Video-T2V text-to-video inference: DiT + VAE + LLM and CLIP text encoders.

    Components must agree: ``dit.config.in_channels == out_channels == vae.config.z_channels`` and
    ``dit.config.caption_channels == [llm.dim, clip.dim]`` (``[llm.dim]`` with no CLIP encoder).
    ``sampler`` is the default :class:`SamplerConfig` of :meth:`generate`; ``lineage`` is free-form
    JSON-able metadata (data version, training run, ...) kept in ``model_index.json``.
    """

    def __init__(
        self,
        dit: StepVideoDiT,
        vae: VideoVAE,
        llm_encoder: TextEncoder | PrecomputedTextEncoder,
        clip_encoder: TextEncoder | PrecomputedTextEncoder | None = None,
        *,
        sampler: SamplerConfig | str = "default",
        lineage: Mapping[str, Any] | None = None,
    ) -> None:
        self.dit = dit.eval()
        self.vae = vae.eval()
        self.llm_encoder = llm_encoder
        self.clip_encoder = clip_encoder
        self.sampler = sampler_preset(sampler) if isinstance(sampler, str) else sampler
        if not isinstance(self.sampler, SamplerConfig):
            raise InputError(f"sampler must be a SamplerConfig or preset name, got {sampler!r}")
        self.lineage: dict[str, Any] = dict(lineage or {})
        self._workdir: tempfile.TemporaryDirectory | None = None  # random(): keeps the encoders' files alive
        self.check_components()

    # ---- consistency -----------------------------------------------------------------------------

    def check_components(self) -> None:
        """Raise ValueError when the components' sizes do not fit together."""
        dc, vc = self.dit.config, self.vae.config
        errors = []
        if dc.in_channels != vc.z_channels or dc.out_channels != vc.z_channels:
            errors.append(
                f"DiT in/out_channels ({dc.in_channels}, {dc.out_channels}) must equal VAE z_channels ({vc.z_channels})"
            )
        if self.llm_encoder is None:
            errors.append("an LLM text encoder is required")
        else:
            dims = [int(self.llm_encoder.dim)]
            if self.clip_encoder is not None:
                dims.append(int(self.clip_encoder.dim))
            if dims != list(dc.caption_channels):
                errors.append(
                    f"text encoder widths [llm, clip] = {dims} do not match DiT caption_channels {list(dc.caption_channels)}"
                )
        if errors:
            raise InputError("incompatible T2VPipeline components: " + "; ".join(errors))

    # ---- properties ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.dtype

    @property
    def spatial_factor(self) -> int:
        return self.vae.config.spatial_factor * self.dit.config.patch_size

    def latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        f = self.vae.config.spatial_factor
        return (batch, self.vae.latent_frames(num_frames), self.vae.config.z_channels, height // f, width // f)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None) -> "T2VPipeline":
        """Move/cast every component in place; returns ``self``."""
        dtype = as_dtype(dtype)
        for m in (self.dit, self.vae):
            m.to(device=device, dtype=dtype)
        for enc in (self.llm_encoder, self.clip_encoder):
            if isinstance(enc, TextEncoder):
                enc.to(device=device, dtype=dtype)
            elif isinstance(enc, PrecomputedTextEncoder):
                if device is not None:
                    enc._device = torch.device(device)
                if dtype is not None:
                    enc._dtype = dtype
        return self

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def from_components(
        cls,
        dit: str | os.PathLike | StepVideoDiT,
        vae: str | os.PathLike | VideoVAE,
        text_encoders: str | os.PathLike | Mapping[str, Any] | None = None,
        *,
        llm: Any = None,
        clip: Any = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        sampler: SamplerConfig | str = "default",
        lineage: Mapping[str, Any] | None = None,
        _entries: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> "T2VPipeline":
        """Assemble a pipeline from separate folders or already built objects.

        ``text_encoders``: a folder holding ``llm/`` and ``clip/`` (as written by
        ``build_tiny_text_encoders``), or a mapping ``{"llm": ..., "clip": ...}``; ``llm``/``clip``
        give (or override) each one on its own. Each may be a folder, a precomputed-embeddings
        ``.safetensors`` file, or an encoder object. Objects are used as they are (not moved/cast).
        """
        dit_m, vae_m, llm_enc, clip_enc = load_components(dit, vae, text_encoders, llm, clip, device, as_dtype(dtype),
                                                          _entries)
        return cls(dit_m, vae_m, llm_enc, clip_enc, sampler=sampler, lineage=lineage)

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
    ) -> "T2VPipeline":
        """Load a bundle written by :meth:`save_pretrained`. ``dtype`` applies to every component;
        default: float32 on the CPU (a bf16 bundle such as the release is upcast: bf16 matmuls are
        far slower there), elsewhere as stored (float32 for the text encoders)."""
        if dtype is None and torch.device(device).type == "cpu":
            dtype = torch.float32
        folder = Path(folder)
        index = read_model_index(folder, cls.__name__)
        paths, entries = index["paths"], index["entries"]
        return cls.from_components(
            paths["dit"],
            paths["vae"],
            {k: paths[k] for k in entries},
            device=device,
            dtype=dtype,
            sampler=index["sampler"],
            lineage=index["lineage"],
            _entries=entries,
        )

    def model_index(self) -> dict[str, Any]:
        """The ``model_index.json`` content of this pipeline."""
        return model_index(self)

    def save_pretrained(self, folder: str | os.PathLike, lineage: Mapping[str, Any] | None = None) -> Path:
        """Write the bundle to ``folder`` atomically (a temp folder beside it, then renamed into
        place; an existing bundle is replaced only once the new one is complete). ``lineage`` is
        merged into :attr:`lineage` first."""
        if lineage:
            self.lineage.update(lineage)
        return save_bundle(self, folder)

    @classmethod
    def random(
        cls,
        preset: str = "demo",
        seed: int = 0,
        texts: Sequence[str] | None = None,
        workdir: str | os.PathLike | None = None,
        *,
        vae_config: VAEConfig | None = None,
        text_layers: int = 2,
        text_heads: int = 2,
        vocab_size: int = 4096,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        sampler: SamplerConfig | str = "default",
    ) -> "T2VPipeline":
        """Random-weight components of matching sizes (demos and tests).

        DiT: ``DiTConfig.preset(preset)`` with in/out_channels = the VAE's z_channels; VAE:
        ``VAEConfig.tiny()`` for "demo"/"small", the official geometry for "step-video-t2v" (or
        ``vae_config``); text encoders: ``build_tiny_text_encoders`` (a bilingual byte-level BPE
        trained on ``texts``, default ``sample_captions()``) with widths = the DiT's
        caption_channels, written under ``workdir`` (a temporary folder that lives as long as the
        pipeline when None). The same arguments give identical weights; the global RNG is left as
        it was.
        """
        parts = random_components(preset, seed, texts, workdir, vae_config=vae_config, text_layers=text_layers,
                                  text_heads=text_heads, vocab_size=vocab_size, device=device, dtype=as_dtype(dtype))
        pipe = cls(parts["dit"], parts["vae"], parts["llm"], parts["clip"], sampler=sampler,
                   lineage={"source": "random", "preset": preset, "seed": int(seed)})
        pipe._workdir = parts["tmp"]
        return pipe

    # ---- generation ------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The DiT's text inputs for `texts`: llm_emb/llm_mask (and clip_emb/clip_mask), padded to
        the longest text, on the DiT's device."""
        return self._encode(list(texts))

    def _encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        device = self.device
        hidden, mask = self.llm_encoder.encode(texts)
        out = {"llm_emb": hidden.to(device), "llm_mask": mask.to(device)}
        if self.clip_encoder is not None:
            hidden, mask = self.clip_encoder.encode(texts)
            out.update({"clip_emb": hidden.to(device), "clip_mask": mask.to(device)})
        return out

    def check_inputs(self, num_frames: int, height: int, width: int, steps: int, cfg_scale: float, shift: float) -> None:
        """Raise ValueError for a request the models cannot serve."""
        chunk = self.vae.frame_chunk
        if not is_int(num_frames) or num_frames < 1 or not (num_frames == 1 or num_frames % chunk == 0):
            raise InputError(f"num_frames must be 1 (an image) or a positive multiple of {chunk}, got {num_frames!r}")
        f = self.spatial_factor
        for name, v in (("height", height), ("width", width)):
            if not is_int(v) or v < f or v % f:
                raise InputError(f"{name} must be a positive multiple of {f}, got {v!r}")
        if not is_int(steps) or steps < 1:
            raise InputError(f"steps must be an int >= 1, got {steps!r}")
        if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)) or not math.isfinite(cfg_scale):
            raise InputError(f"cfg_scale must be a finite number, got {cfg_scale!r}")
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not (math.isfinite(shift) and shift > 0):
            raise InputError(f"shift must be a finite number > 0, got {shift!r}")

    @torch.no_grad()
    def generate(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] = "",
        num_frames: int = 17,
        height: int = 64,
        width: int = 64,
        steps: int | None = None,
        cfg_scale: float | None = None,
        shift: float | None = None,
        seed: int | Sequence[int] = 0,
        progress: ProgressCallback | None = None,
        *,
        output_type: str = "np",
        vae_tile_size: int | None = None,
        vae_tile_mode: str = "exact",
    ) -> np.ndarray | torch.Tensor:
        """Prompts -> uint8 video ``(B, T, H, W, 3)`` (numpy), B = number of prompts.

        ``steps``/``cfg_scale``/``shift`` default to :attr:`sampler` (the "default" preset: 50, 9.0,
        13.0). ``seed``: an int (sample i uses ``seed + i``) or one int per prompt. ``negative_prompt``
        conditions the unconditional branch of CFG: one string for all, or one per prompt.
        ``progress(done, total)`` is called after each denoising step. ``output_type="latent"``
        returns the float32 latents ``(B, T_lat, z, H/16, W/16)`` instead of decoding them.
        ``vae_tile_size`` (output pixels, a multiple of 16) decodes in spatial tiles; with
        ``vae_tile_mode="exact"`` (the default here) the latents stay in host memory and only one
        tile at a time is on the VAE's device, with the untiled result; "blend" is the approximate
        overlap-blend mode (see ``stepvideo.models.vae_tiling.TILING_NOTE``).
        """
        prompts = _texts(prompt, "prompt")
        negatives = _texts(negative_prompt, "negative_prompt")
        b = len(prompts)
        if len(negatives) not in (1, b):
            raise InputError(f"negative_prompt must be one string or {b} strings (one per prompt), got {len(negatives)}")
        steps = self.sampler.num_steps if steps is None else steps
        cfg_scale = self.sampler.cfg_scale if cfg_scale is None else cfg_scale
        shift = self.sampler.shift if shift is None else shift
        self.check_inputs(num_frames, height, width, steps, cfg_scale, shift)
        if is_int(seed):
            seeds = [int(seed) + i for i in range(b)]
        elif isinstance(seed, (list, tuple)) and len(seed) == b and all(is_int(s) for s in seed):
            seeds = [int(s) for s in seed]
        else:
            raise InputError(f"seed must be an int or a list of {b} ints, got {seed!r}")
        if output_type not in ("np", "latent"):
            raise InputError(f"output_type must be 'np' or 'latent', got {output_type!r}")
        if progress is not None and not callable(progress):
            raise InputError("progress must be None or a callable (done, total)")
        f = self.vae.config.spatial_factor  # blend: one latent cell of overlap when the tile allows it
        overlap = f if vae_tile_mode == "blend" and vae_tile_size is not None and vae_tile_size > f else 0
        self.vae.check_tiling(vae_tile_size, overlap, f, vae_tile_mode)  # fail before sampling, not after

        cond = self._encode(prompts)
        uncond = self._encode(negatives) if cfg_scale != 1.0 else None
        shape = self.latent_shape(1, num_frames, height, width)[1:]
        noise = torch.stack(
            [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s), dtype=torch.float32) for s in seeds]
        ).to(self.device)
        config = SamplerConfig(num_steps=int(steps), shift=float(shift), cfg_scale=float(cfg_scale), reverse=self.sampler.reverse)
        callback = None
        if progress is not None:
            def callback(i, n, t, x):  # noqa: E306
                progress(i + 1, n)
        latents = sample(self.dit, noise, cond, uncond, config, callback=callback)
        if output_type == "latent":
            return latents
        vae_p = next(self.vae.parameters())
        if vae_tile_size is None:
            video = self.vae.decode(latents.to(device=vae_p.device, dtype=vae_p.dtype))
        else:  # exact tiling keeps whole activations where the latents are: host memory
            host = latents.to(device="cpu", dtype=vae_p.dtype) if vae_tile_mode == "exact" else latents.to(vae_p.device)
            video = self.vae.decode(host, tile_size=vae_tile_size, tile_overlap=overlap, tile_mode=vae_tile_mode)
        return frames_to_uint8(video)

    def __call__(self, prompt: str | Sequence[str], *args: Any, **kwargs: Any) -> np.ndarray | torch.Tensor:
        """Same as :meth:`generate`."""
        return self.generate(prompt, *args, **kwargs)

    def __repr__(self) -> str:
        return (
            f"T2VPipeline(dit={self.dit.num_parameters():,} params, vae z={self.vae.config.z_channels}, "
            f"llm={self.llm_encoder!r}, clip={self.clip_encoder!r}, sampler={self.sampler})"
        )


# ----------------------------------------------------------------------------------------------
# output


def save_video(frames: np.ndarray, path: str | os.PathLike, fps: int = 8, gif: bool = False) -> Path:
    """Write uint8 frames ``(T, H, W, 3)`` (or a batch of one, ``(1, T, H, W, 3)``) as H.264 mp4
    through :func:`stepvideo.data.video_io.write_video`; a single frame may go to an image path
    (``.png`` ...). With ``gif=True`` an animated GIF is written beside it (``path.with_suffix(".gif")``,
    looping, 1000/fps ms per frame). Returns the video path; both writes are atomic."""
    path = Path(path)
    arr = np.asarray(frames)
    if arr.ndim == 5:
        if arr.shape[0] != 1:
            raise InputError(f"save_video writes one clip; got a batch of {arr.shape[0]} (pass frames[i])")
        arr = arr[0]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise InputError(f"frames must be uint8 (T, H, W, 3), got {arr.dtype} {arr.shape}")
    if not is_int(fps) or fps < 1:
        raise InputError(f"fps must be a positive int, got {fps!r}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if arr.shape[0] != 1:
            raise InputError(f"{path}: an image path takes a single frame, got {arr.shape[0]}")
        write_image(path, arr[0])
    else:
        write_video(path, arr, fps=fps)
    if gif:
        from PIL import Image

        images = [Image.fromarray(f) for f in arr]
        with atomic_path(path.with_suffix(".gif")) as tmp:
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                           duration=max(1, round(1000 / fps)), loop=0)
    return path
