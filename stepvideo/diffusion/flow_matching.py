"""Rectified-flow (flow matching) training objective.

Convention (the same as the official sampler with ``reverse=False``): t = 0 is pure noise,
t = 1 is data.

    x_t = (1 - t) * x0 + t * x1        x0 ~ N(0, I) noise, x1 = data latent
    v*  = x1 - x0                      target velocity, loss = MSE(model(x_t, t), v*)

Timestep samplers (all return float32 (B,) in [0, 1], seeded by an optional torch.Generator):
- ``uniform``: t ~ U(0, 1)
- ``logit_normal``: t = sigmoid(mean + std * N(0, 1))
- ``shifted``: u ~ U(0, 1), then the inference time shift is applied, so that training sees the
  timestep density the sampler visits: noise level s = 1 - u -> shift*s / (1 + (shift-1)*s), t = 1 - that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from stepvideo.errors import InputError

SAMPLERS = ("uniform", "logit_normal", "shifted")


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=like.device)
    if t.ndim == 0:
        return t.to(like.dtype)
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must be a scalar or (B,) with B = {like.shape[0]}, got shape {tuple(t.shape)}")
    return t.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t x1 (t broadcast over the non-batch dims)."""
    if x0.shape != x1.shape:
        raise ValueError(f"noise {tuple(x0.shape)} and data {tuple(x1.shape)} shapes differ")
    tb = _bcast(t, x1)
    return (1 - tb) * x0 + tb * x1


def velocity_target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    return x1 - x0


def time_shift(s: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3-style shift of a noise level s in [0, 1] (shift > 1 moves mass towards noise)."""
    return (shift * s) / (1 + (shift - 1) * s)


@dataclass
class TimestepSampler:
    kind: str = "uniform"
    mean: float = 0.0  # logit_normal
    std: float = 1.0  # logit_normal
    shift: float = 1.0  # shifted
    t_min: float = 0.0
    t_max: float = 1.0

    def __post_init__(self):
        if self.kind not in SAMPLERS:
            raise InputError(f"timestep sampler must be one of {SAMPLERS}, got {self.kind!r}")
        if self.std <= 0:
            raise InputError(f"std must be > 0, got {self.std}")
        if self.shift <= 0:
            raise InputError(f"shift must be > 0, got {self.shift}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise InputError(f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")

    def sample(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        gen_device = generator.device if generator is not None else "cpu"
        if self.kind == "uniform":
            t = torch.rand(batch_size, generator=generator, device=gen_device)
        elif self.kind == "logit_normal":
            t = torch.sigmoid(self.mean + self.std * torch.randn(batch_size, generator=generator, device=gen_device))
        else:
            u = torch.rand(batch_size, generator=generator, device=gen_device)
            t = 1 - time_shift(1 - u, self.shift)
        t = self.t_min + (self.t_max - self.t_min) * t
        return t.to(device=device or gen_device, dtype=torch.float32)

    __call__ = sample


def training_pair(
    x1: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, target velocity, noise) for data ``x1`` at times ``t`` (B,)."""
    if noise is None:
        noise = torch.randn(x1.shape, generator=generator, device=generator.device if generator is not None else x1.device, dtype=x1.dtype)
        noise = noise.to(x1.device)
    elif noise.shape != x1.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must match data {tuple(x1.shape)}")
    return interpolate(noise, x1, t), velocity_target(noise, x1), noise


def flow_matching_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, reduction: str = "mean"):
    """MSE between predicted and target velocity, computed in float32.

    ``weight``: optional per-sample (B,) weights. ``reduction``: "mean" (scalar) or "none" (per-sample (B,)).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} shapes differ")
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if weight is not None:
        per_sample = per_sample * weight.float()
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def flow_matching_step_loss(
    denoise_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x1: torch.Tensor,
    sampler: TimestepSampler | None = None,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training loss: sample t (unless given) and noise, predict v with ``denoise_fn(x_t, t)``."""
    if t is None:
        t = (sampler or TimestepSampler()).sample(x1.shape[0], generator=generator, device=x1.device)
    x_t, target, noise = training_pair(x1, t, noise, generator)
    pred = denoise_fn(x_t, t)
    return flow_matching_loss(pred, target), {"t": t, "x_t": x_t, "target": target, "noise": noise}


__all__ = [
    "interpolate",
    "velocity_target",
    "time_shift",
    "TimestepSampler",
    "training_pair",
    "flow_matching_loss",
    "flow_matching_step_loss",
]
