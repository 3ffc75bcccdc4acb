"""Exponential moving average of model weights (fp32, on the CPU, keyed by parameter name)."""

from __future__ import annotations

from typing import Mapping

import torch


class EMA:
    """``shadow = decay * shadow + (1 - decay) * weights`` after every optimizer step.

    The shadow weights are plain fp32 CPU tensors under the model's own names, so they are saved
    with the checkpoint (safetensors) and become a ``from_pretrained`` folder as they are.
    """

    def __init__(self, weights: Mapping[str, torch.Tensor], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {k: v.detach().float().cpu().clone() for k, v in weights.items()}

    @torch.no_grad()
    def update(self, weights: Mapping[str, torch.Tensor]) -> None:
        for k, v in weights.items():
            self.shadow[k].lerp_(v.detach().float().cpu(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise KeyError(f"EMA state lacks {missing[:5]}")
        self.shadow = {k: state[k].float().cpu().clone() for k in self.shadow}


def average_weights(states: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of several state dicts (the report's averaging of the last SFT checkpoints)."""
    if not states:
        raise ValueError("nothing to average")
    keys = list(states[0])
    for s in states[1:]:
        if list(s) != keys:
            raise ValueError("checkpoints to average have different parameter names")
    out = {}
    for k in keys:
        acc = states[0][k].double().clone()
        for s in states[1:]:
            acc += s[k].double()
        out[k] = (acc / len(states)).to(states[0][k].dtype)
    return out
