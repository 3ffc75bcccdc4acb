"""A small learned reward model for on-policy Video-DPO rounds.

Step-Video's report found DPO gains saturate on preference data from older policies, so it trained a
reward model on the human labels, refit it as labels came in, and let it rank fresh samples. This
is that component at the embedded scale: it scores a clean video latent (what the sampler produced,
before the VAE decoder) given the prompt's text embeddings, and is fitted to preference pairs with
the Bradley-Terry loss -log sigmoid(r(chosen) - r(rejected)).

    latent (T, C, h, w) -> Conv3d 3x3x3 -> SiLU -> Conv3d stride (1,2,2) -> SiLU -> mean over space-time -> f
    text: masked mean of llm_emb (and clip_emb), concatenated -> Linear -> t
    r = MLP([f, t, f * t]) -> scalar

Pairs are split by prompt (a prompt's pairs are all in training or all held out), and the held-out
pair accuracy is reported: a reward model is only worth using when it beats 50% there.
The folder format is the project's: `config.json` + `model.safetensors` (`save_pretrained` /
`from_pretrained`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stepvideo.errors import InputError


@dataclass
class RewardModelConfig:
    z_channels: int = 16
    text_dim: int = 96  # llm dim + clip dim
    width: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pooled_text(text: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, llm dim [+ clip dim]): the masked mean of each encoder's hidden states."""
    parts = []
    for emb, mask in (("llm_emb", "llm_mask"), ("clip_emb", "clip_mask")):
        if emb in text:
            m = text[mask].float().unsqueeze(-1)
            parts.append((text[emb].float() * m).sum(1) / m.sum(1).clamp(min=1.0))
    return torch.cat(parts, dim=-1)


class LatentRewardModel(nn.Module):
    def __init__(self, config: RewardModelConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.conv1 = nn.Conv3d(config.z_channels, w, 3, padding=1)
        self.conv2 = nn.Conv3d(w, w, 3, stride=(1, 2, 2), padding=1)
        self.text = nn.Linear(config.text_dim, w)
        self.head = nn.Sequential(nn.Linear(3 * w, w), nn.SiLU(), nn.Linear(w, 1))

    def forward(self, latent: torch.Tensor, text_vec: torch.Tensor) -> torch.Tensor:
        """latent (B, T, C, h, w), text_vec (B, text_dim) -> reward (B,)."""
        x = latent.float().permute(0, 2, 1, 3, 4)  # (B, C, T, h, w)
        x = F.silu(self.conv2(F.silu(self.conv1(x))))
        f = x.mean(dim=(2, 3, 4))
        t = self.text(text_vec.float())
        return self.head(torch.cat([f, t, f * t], dim=-1)).squeeze(-1)

    def save_pretrained(self, folder: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        from stepvideo.models.io import save_folder

        return save_folder(folder, self.state_dict(), {**self.config.to_dict(), "_class": "LatentRewardModel",
                                                         **(extra or {})})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "LatentRewardModel":
        from stepvideo.models.io import load_state_dict, read_config

        cfg = read_config(folder)
        if cfg.get("_class") != "LatentRewardModel":
            raise InputError(f"{folder}: not a reward model folder (config.json _class is {cfg.get('_class')!r})")
        fields = RewardModelConfig.__dataclass_fields__
        model = cls(RewardModelConfig(**{k: v for k, v in cfg.items() if k in fields}))
        model.load_state_dict(load_state_dict(folder))
        return model.eval()


def heldout_groups(keys: Sequence[str], fraction: float) -> set[str]:
    """The prompt keys held out: a stable hash of the key below `fraction` (at least one when possible)."""
    uniq = sorted(set(keys))
    held = {k for k in uniq if int(hashlib.sha256(k.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction}
    if not held and len(uniq) > 1 and fraction > 0:
        held = {uniq[0]}
    return held


def pair_accuracy(model: LatentRewardModel, chosen: torch.Tensor, rejected: torch.Tensor, text_vec: torch.Tensor) -> float:
    if len(chosen) == 0:
        return float("nan")
    with torch.no_grad():
        diff = model(chosen, text_vec) - model(rejected, text_vec)
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def train_reward_model(data: dict[str, torch.Tensor], keys: Sequence[str], out: str | os.PathLike, *,
                       steps: int = 200, lr: float = 1e-3, batch_size: int = 32, heldout_fraction: float = 0.25,
                       width: int = 32, seed: int = 0) -> dict[str, Any]:
    """Fit the reward model to pairs (`data`: a `load_pair_tensors` dict; `keys[i]`: pair i's prompt
    group) and save it to `out`; returns {"train_accuracy", "heldout_accuracy", "train_pairs",
    "heldout_pairs", "loss_first", "loss_last"}."""
    if len(keys) != data["chosen"].shape[0]:
        raise InputError(f"{len(keys)} prompt keys for {data['chosen'].shape[0]} pairs")
    torch.manual_seed(seed)
    text_vec = pooled_text(data)
    held = heldout_groups(keys, heldout_fraction)
    test = torch.tensor([k in held for k in keys])
    train = ~test
    if not bool(train.any()):
        raise InputError("no training pairs left after holding out prompts for the reward model")
    cw, rw, tv = data["chosen"][train], data["rejected"][train], text_vec[train]
    model = LatentRewardModel(RewardModelConfig(z_channels=int(cw.shape[2]), text_dim=int(tv.shape[1]), width=width))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(cw), (min(batch_size, len(cw)),), generator=g)
        loss = -F.logsigmoid(model(cw[idx], tv[idx]) - model(rw[idx], tv[idx])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    result = {"train_accuracy": pair_accuracy(model, cw, rw, tv),
              "heldout_accuracy": pair_accuracy(model, data["chosen"][test], data["rejected"][test], text_vec[test]),
              "train_pairs": int(train.sum()), "heldout_pairs": int(test.sum()),
              "loss_first": sum(losses[:10]) / max(len(losses[:10]), 1),
              "loss_last": sum(losses[-10:]) / max(len(losses[-10:]), 1)}
    model.save_pretrained(out, {"fit": result})
    (Path(out) / "metrics.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result


def score_latents(model: LatentRewardModel, latents: torch.Tensor, text: dict[str, torch.Tensor]) -> list[float]:
    """The reward of each latent (N, T, C, h, w) with its prompt's text embeddings (N rows)."""
    with torch.no_grad():
        return [float(x) for x in model(latents, pooled_text(text))]


__all__ = ["RewardModelConfig", "LatentRewardModel", "pooled_text", "train_reward_model", "score_latents",
           "pair_accuracy", "heldout_groups"]
