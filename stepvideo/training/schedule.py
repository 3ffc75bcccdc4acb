"""Learning-rate schedules shared by every trainer: linear warm-up, then constant or cosine decay."""

from __future__ import annotations

import math

from stepvideo.errors import InputError

LR_SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "constant",
              min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Warm-up rises linearly from ``1 / warmup_steps`` to 1 over ``warmup_steps`` steps; afterwards the
    factor stays 1 (``constant``) or follows a half cosine down to ``min_ratio`` at ``total_steps``.
    """
    if schedule not in LR_SCHEDULES:
        raise InputError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
