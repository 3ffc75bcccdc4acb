"""Euler sampling of the flow ODE with the Step-Video-T2V time schedule and classifier-free guidance.

Schedule (float32, identical to the official FlowMatchDiscreteScheduler.set_timesteps):

    s      = linspace(1, 0, N + 1)
    s      = shift * s / (1 + (shift - 1) * s)
    sigmas = 1 - s            (reverse=False, the default; reverse=True keeps s)
    timesteps = sigmas[:-1]   (values in [0, 1], passed to the DiT as is)

Update: x <- x + v * (sigmas[i+1] - sigmas[i]) in float32. With reverse=False t runs 0 (noise) -> 1
(data), matching ``stepvideo.diffusion.flow_matching``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from stepvideo.errors import InputError

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (step, num_steps, t, x)


@dataclass(frozen=True)
class SamplerConfig:
    num_steps: int = 50
    shift: float = 13.0
    cfg_scale: float = 9.0
    reverse: bool = False

    def __post_init__(self):
        if self.num_steps < 1:
            raise InputError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.shift <= 0:
            raise InputError(f"shift must be > 0, got {self.shift}")


SAMPLER_PRESETS: dict[str, SamplerConfig] = {
    "default": SamplerConfig(num_steps=50, shift=13.0, cfg_scale=9.0),
    # Step-Video-T2V-Turbo (distilled): 10-15 steps, shift 17, lower guidance
    "turbo": SamplerConfig(num_steps=10, shift=17.0, cfg_scale=5.0),
}


def sampler_preset(name: str, **overrides) -> SamplerConfig:
    if name not in SAMPLER_PRESETS:
        raise InputError(f"unknown sampler preset {name!r}; choose one of {sorted(SAMPLER_PRESETS)}")
    return dataclasses.replace(SAMPLER_PRESETS[name], **overrides)


def flow_schedule(num_steps: int, shift: float = 13.0, reverse: bool = False, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas (N+1,), timesteps (N,)) in float32."""
    if num_steps < 1:
        raise InputError(f"num_steps must be >= 1, got {num_steps}")
    s = torch.linspace(1, 0, num_steps + 1, dtype=torch.float32, device=device)
    s = (shift * s) / (1 + (shift - 1) * s)
    sigmas = s if reverse else 1 - s
    return sigmas, sigmas[:-1]


@torch.no_grad()
def euler_sample(
    denoise_fn: DenoiseFn,
    noise: torch.Tensor,
    num_steps: int = 50,
    shift: float = 13.0,
    reverse: bool = False,
    callback: ProgressFn | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = denoise_fn(x, t) along the schedule from ``noise``; returns float32.

    ``denoise_fn`` gets x (float32) and t of shape (B,) float32.
    """
    sigmas, timesteps = flow_schedule(num_steps, shift, reverse, device=noise.device)
    x = noise.float()
    b = x.shape[0]
    for i, t in enumerate(timesteps):
        v = denoise_fn(x, t.expand(b))
        if v.shape != x.shape:
            raise ValueError(f"denoise_fn returned shape {tuple(v.shape)}, expected {tuple(x.shape)}")
        x = x + v.float() * (sigmas[i + 1] - sigmas[i])
        if callback is not None:
            callback(i, num_steps, t, x)
    return x


def _pad_to(t: torch.Tensor, length: int) -> torch.Tensor:
    if t.shape[1] == length:
        return t
    pad = t.new_zeros((t.shape[0], length - t.shape[1], *t.shape[2:]))
    return torch.cat([t, pad], dim=1)


def _cat_text(cond: torch.Tensor | None, uncond: torch.Tensor | None, cm, um):
    """Concatenate cond/uncond text embeddings along batch, right-padding the shorter one (masked)."""
    if cond is None and uncond is None:
        return None, None
    if (cond is None) != (uncond is None):
        raise ValueError("cond and uncond must both provide (or both omit) each text embedding")
    if cm is None:
        cm = torch.ones(cond.shape[:2], dtype=torch.bool, device=cond.device)
    if um is None:
        um = torch.ones(uncond.shape[:2], dtype=torch.bool, device=uncond.device)
    length = max(cond.shape[1], uncond.shape[1])
    emb = torch.cat([_pad_to(cond, length), _pad_to(uncond.to(cond.dtype), length)], dim=0)
    mask = torch.cat([_pad_to(cm.bool(), length), _pad_to(um.bool(), length)], dim=0)
    return emb, mask


def _expand_batch(d: Mapping[str, Any], b: int) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == 1 and b > 1:
            v = v.expand(b, *v.shape[1:])
        out[k] = v
    return out


def guided_denoiser(
    model: Callable[..., torch.Tensor],
    cond: Mapping[str, torch.Tensor],
    uncond: Mapping[str, torch.Tensor] | None = None,
    cfg_scale: float = 9.0,
) -> DenoiseFn:
    """denoise_fn for a DiT called as ``model(x, t, llm_emb, llm_mask, clip_emb, clip_mask)``.

    ``cond``/``uncond``: dicts with ``llm_emb`` (required), optional ``llm_mask``, ``clip_emb``,
    ``clip_mask``. The negative/empty-prompt embeddings in ``uncond`` come from the caller; a batch
    of 1 is broadcast. With ``uncond`` and cfg_scale != 1, cond and uncond run as one doubled
    batch and v = v_uncond + cfg_scale * (v_cond - v_uncond).
    """
    keys = ("llm_emb", "llm_mask", "clip_emb", "clip_mask")
    for d in (cond,) if uncond is None else (cond, uncond):
        extra = set(d) - set(keys)
        if extra or "llm_emb" not in d:
            raise ValueError(f"text dicts need 'llm_emb' and may hold {keys[1:]}; got {sorted(d)}")
    param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    dtype = param.dtype if param is not None else None
    guided = uncond is not None and cfg_scale != 1.0

    def cast(x):
        return x.to(dtype) if dtype is not None and x.is_floating_point() else x

    if guided:
        b = cond["llm_emb"].shape[0]
        c, u = _expand_batch(cond, b), _expand_batch(uncond, b)
        llm, llm_mask = _cat_text(c["llm_emb"], u["llm_emb"], c.get("llm_mask"), u.get("llm_mask"))
        clip, clip_mask = _cat_text(c.get("clip_emb"), u.get("clip_emb"), c.get("clip_mask"), u.get("clip_mask"))
        text = (llm, llm_mask, clip, clip_mask)
    else:
        text = tuple(cond.get(k) for k in keys)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not guided:
            return model(cast(x), t, *text).float()
        xx = torch.cat([x, x], dim=0)
        tt = torch.cat([t, t], dim=0)
        v_cond, v_uncond = model(cast(xx), tt, *text).float().chunk(2, dim=0)
        return v_uncond + cfg_scale * (v_cond - v_uncond)

    return fn


def sample(
    model_or_fn: Callable[..., torch.Tensor],
    noise: torch.Tensor,
    cond: Mapping[str, torch.Tensor] | None = None,
    uncond: Mapping[str, torch.Tensor] | None = None,
    config: SamplerConfig | str = "default",
    callback: ProgressFn | None = None,
) -> torch.Tensor:
    """Generate latents from ``noise`` (B, F, C, H, W).

    Pass either a DiT with ``cond`` (and ``uncond`` for CFG) text embeddings, or a plain
    ``denoise_fn(x, t) -> v`` with ``cond=None``.
    """
    cfg = sampler_preset(config) if isinstance(config, str) else config
    if cond is None:
        if uncond is not None:
            raise ValueError("uncond given without cond")
        fn = model_or_fn
    else:
        fn = guided_denoiser(model_or_fn, cond, uncond, cfg.cfg_scale)
    return euler_sample(fn, noise, cfg.num_steps, cfg.shift, cfg.reverse, callback)


__all__ = [
    "SamplerConfig",
    "SAMPLER_PRESETS",
    "sampler_preset",
    "flow_schedule",
    "euler_sample",
    "guided_denoiser",
    "sample",
]
