"""Losses and image metrics of VAE training (:mod:`stepvideo.training.vae_trainer`).

The pixel terms (:func:`pixel_loss`: L1, L2, edge, object weighting by :func:`object_mask`), the
optional 3D patch discriminator and perceptual loss, and held-out PSNR/SSIM.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator3D(nn.Module):
    """Small 3D PatchGAN: strided (1, 2, 2) causal-free convs; works on 1-frame and 17-frame clips."""

    def __init__(self, in_channels: int = 3, channels: int = 32, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = []
        c_in = in_channels
        for i in range(layers):
            c_out = channels * 2**i
            mods += [nn.Conv3d(c_in, c_out, (3, 4, 4), stride=(1, 2, 2), padding=(1, 1, 1))]
            if i > 0:
                mods += [nn.GroupNorm(min(8, c_out), c_out)]
            mods += [nn.LeakyReLU(0.2)]
            c_in = c_out
        mods += [nn.Conv3d(c_in, 1, 3, padding=1)]
        self.net = nn.Sequential(*mods)

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # (B, T, C, H, W) -> patch logits
        return self.net(video.permute(0, 2, 1, 3, 4))


class PerceptualLoss(nn.Module):
    """Feature distance under a user-supplied, local TorchScript backbone (never downloaded)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        if not Path(path).is_file():
            raise FileNotFoundError(f"perceptual backbone {path} not found (weights are never downloaded)")
        self.backbone = torch.jit.load(str(path), map_location="cpu").eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.backbone(x.flatten(0, 1)), self.backbone(y.flatten(0, 1))
        fx = fx if isinstance(fx, (list, tuple)) else [fx]
        fy = fy if isinstance(fy, (list, tuple)) else [fy]
        loss = x.new_zeros(())
        for a, b in zip(fx, fy):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-8)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-8)
            loss = loss + (a - b).pow(2).sum(1).mean()
        return loss


def object_mask(x: torch.Tensor) -> torch.Tensor:
    """(B, T, 1, H, W) in [0, 1]: how far each pixel of ``x`` (B, T, C, H, W) lies from its frame's
    per-channel median colour (0 below 0.15, 1 above 0.3: the mild texture of a background stays 0)."""
    med = x.flatten(3).median(dim=3).values[..., None, None]
    d = (x - med).abs().amax(dim=2, keepdim=True)
    return ((d - 0.15) / 0.15).clamp(0.0, 1.0)


def pixel_loss(recon: torch.Tensor, x: torch.Tensor, cfg: Any) -> torch.Tensor:
    """The reconstruction terms of the loss (module docstring), on (B, T, C, H, W) clips; `cfg` is a
    VAETrainConfig (its l1/l2/edge/object weights; not imported here: the trainer imports this module)."""
    w = 1.0 + cfg.object_weight * object_mask(x) if cfg.object_weight else None

    def mean(t: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        return t.mean() if weight is None else (t * weight).sum() / (weight.sum() * t.shape[2])

    err = recon - x
    loss = cfg.l1_weight * mean(err.abs(), w)
    if cfg.l2_weight:
        loss = loss + cfg.l2_weight * mean(err.pow(2), w)
    if cfg.edge_weight:
        dx, dy = err.diff(dim=-1).abs(), err.diff(dim=-2).abs()
        wx = None if w is None else torch.maximum(w[..., 1:], w[..., :-1])
        wy = None if w is None else torch.maximum(w[..., 1:, :], w[..., :-1, :])
        loss = loss + cfg.edge_weight * 0.5 * (mean(dx, wx) + mean(dy, wy))
    return loss


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1]."""
    mse = float((x - y).pow(2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of (N, C, H, W) images in [0, 1] (Gaussian window, Wang et al. 2004 constants)."""
    c = x.shape[1]
    g = torch.exp(-((torch.arange(window, dtype=x.dtype) - window // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()
    win = min(window, x.shape[-1], x.shape[-2])
    if win < window:  # tiny images: shrink the window so the valid region is not empty
        k = k[..., :win, :win] / k[..., :win, :win].sum(dim=(-1, -2), keepdim=True)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, k, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


__all__ = ["PatchDiscriminator3D", "PerceptualLoss", "object_mask", "pixel_loss", "psnr", "ssim"]
