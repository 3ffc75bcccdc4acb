"""Video-VAE training: one readable loop (torchtitan style).

The trainer knows nothing about experiment tracking or orchestration: the caller passes
``log_fn(step, metrics)`` and gets a metrics dict back.

Data are clips as numpy ``uint8`` arrays ``(T, H, W, 3)`` (any indexable sequence of them, so a
lazy dataset works too). Every step draws one batch, either of 17-frame video crops or of 1-frame
images (a still, or one frame of a clip) with probability ``image_prob``: mixed image/video
training. Clips shorter than 17 frames only give images. The learning rate warms up linearly for
``warmup_steps`` and then stays constant or follows a cosine down to ``min_lr_ratio * lr``.

Losses: ``l1_weight * L1 + l2_weight * L2 + edge_weight * edge + kl_weight * KL`` (KL averaged over
latent elements; edge = L1 between the horizontal and vertical pixel differences). ``object_weight``
weighs the pixel losses by ``1 + object_weight * m``, ``m`` in [0, 1] the pixel's distance from its
frame's per-channel median colour (0 below 0.15, 1 above 0.3, in [-1, 1] units): small objects on a
plain or mildly textured background count as much as the background they stand on. Plus optionally

* a perceptual loss, only when ``perceptual_backbone_path`` names a local TorchScript feature
  extractor (``(N, 3, H, W)`` in [-1, 1] -> tensor or list of tensors); nothing is downloaded;
* a 3D patch discriminator with hinge loss, switched on at ``disc_start_step``.

The report's recipe (:func:`two_stage_recipe`, :func:`train_vae_recipe`): stage 1 trains the VAE
without the dual path at 4x8x8 (``VAEConfig.stage1()``: the latent on the feature grid), jointly on
images and videos; stage 2 grows it into the 8x16x16 dual-path model (``init_from`` a stage-1
folder copies every shared module) and unfreezes progressively with ``trainable_phases`` =
``((start_step, name_prefixes), ...)`` (``""`` matches all): first only the dual-path modules, then
the mid blocks, then everything. ``dual_path_start_step`` keeps the parameter-free shortcuts off
before that step.

Checkpoints: the project's one format (:mod:`stepvideo.training.checkpoint`, no pickle):
``out_dir/checkpoints/step-000100/`` = ``model/`` (a ``VideoVAE.from_pretrained`` folder), tensor
groups ``optimizer``, ``rng`` (torch global + noise generator states) and, with the GAN on, ``disc``
and ``disc_optimizer`` (safetensors), and ``state.json`` (step, optimizer param groups, the data
generator's PCG64 state, loss histories, the config); ``latest.json`` names the newest complete one.
With ``resume=True`` a run continues from it and reproduces an uninterrupted run exactly on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stepvideo.models.io import load_state_checked
from stepvideo.models.vae import VAEConfig, VideoVAE, frames_to_tensor
from stepvideo.training import checkpoint as ckpt
from stepvideo.training import schedule
from stepvideo.training.vae_losses import PatchDiscriminator3D, PerceptualLoss, object_mask, pixel_loss, psnr, ssim
from stepvideo.training.schedule import LR_SCHEDULES
from stepvideo.errors import InputError

CLIP_FRAMES = 17


@dataclass
class VAETrainConfig:
    """Everything that defines a VAE training run (plain data, JSON-serialisable via ``to_dict``)."""

    model: dict[str, Any] = field(default_factory=lambda: VAEConfig.tiny().to_dict())
    init_from: str | None = None  # a save_pretrained folder to start from (e.g. the stage-1 VAE)
    steps: int = 1000
    batch_size: int = 2
    crop_size: int = 64  # spatial crop (multiple of 16); clips smaller than this use their own size
    image_prob: float = 0.5
    lr: float = 1e-4
    lr_schedule: str = "constant"  # constant | cosine (decays to min_lr_ratio * lr at `steps`)
    warmup_steps: int = 0  # linear warm-up from lr / warmup_steps
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    edge_weight: float = 0.0  # L1 between the spatial gradients of reconstruction and target
    object_weight: float = 0.0  # extra weight on pixels far from their frame's dominant colour
    kl_weight: float = 1e-4
    sample_posterior: bool = True
    perceptual_weight: float = 0.0
    perceptual_backbone_path: str | None = None
    disc_weight: float = 0.0  # 0 disables the discriminator
    disc_start_step: int = 0
    disc_lr: float = 1e-4
    disc_channels: int = 32
    dual_path_start_step: int = 0
    trainable_phases: tuple[tuple[int, tuple[str, ...]], ...] = ()
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    eval_max_items: int = 8
    eval_every: int = 0  # also evaluate the held-out split every N steps (0: only at the end)
    eval_size: int = 64  # held-out clips are centre-cropped to at most this (multiple of 16)
    threads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, VAEConfig):
            self.model = self.model.to_dict()
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.trainable_phases = tuple((int(s), tuple(p)) for s, p in self.trainable_phases)
        errors = []
        if self.crop_size % 16 or self.crop_size < 16 or self.eval_size % 16 or self.eval_size < 16:
            errors.append("crop_size and eval_size must be positive multiples of 16")
        if not 0.0 <= self.image_prob <= 1.0:
            errors.append("image_prob must lie in [0, 1]")
        if self.lr_schedule not in LR_SCHEDULES:
            errors.append(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            errors.append("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")
        if self.steps < 0 or self.batch_size < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            errors.append("steps >= 0, batch_size >= 1, checkpoint_every >= 1 and log_every >= 1 are required")
        if self.eval_every < 0:
            errors.append("eval_every must be >= 0")
        if self.perceptual_weight > 0 and not self.perceptual_backbone_path:
            errors.append("perceptual_weight > 0 needs perceptual_backbone_path (a local TorchScript file)")
        if errors:
            raise InputError("invalid VAETrainConfig: " + "; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VAETrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown VAETrainConfig fields {unknown}")
        return cls(**dict(d))


DUAL_PATH_MODULES = (
    "encoder.conv_patchify",
    "encoder.conv_out",
    "decoder.conv_in",
    "decoder.conv_unpatchify",
)


def two_stage_recipe(
    model: VAEConfig, stage1_steps: int, adapt_steps: int, mid_steps: int, total_steps: int, **kw
) -> tuple[VAETrainConfig, VAETrainConfig]:
    """The report's recipe as two trainer configs (run them with :func:`train_vae_recipe`).

    1. ``stage1_steps`` of the 4x8x8 VAE without the dual path (``model.stage1()``), everything trains;
    2. the 8x16x16 dual-path model initialised from stage 1: for ``adapt_steps`` only the dual-path
       modules train, then the mid blocks (and the encoder's norm_out) too for ``mid_steps``, then
       everything until ``total_steps`` (stage-2 steps).

    ``kw`` are shared trainer fields (batch, lr, losses, ...).
    """
    s1 = VAETrainConfig(model=model.stage1().to_dict(), steps=stage1_steps, **kw)
    phases = (
        (0, DUAL_PATH_MODULES),
        (adapt_steps, DUAL_PATH_MODULES + ("encoder.mid", "decoder.mid", "encoder.norm_out")),
        (adapt_steps + mid_steps, ("",)),
    )
    s2 = VAETrainConfig(model=model.stage2().to_dict(), steps=total_steps, trainable_phases=phases, **kw)
    return s1, s2


def train_vae_recipe(
    stage1: VAETrainConfig,
    stage2: VAETrainConfig,
    train_items: Sequence[np.ndarray],
    heldout_items: Sequence[np.ndarray],
    out_dir: str | os.PathLike,
    **kw,
) -> dict[str, Any]:
    """Stage 1 into ``out_dir/stage1``, then stage 2 from its final weights into ``out_dir/stage2``;
    both resume from their checkpoints. Returns stage 2's result with ``stage1_*`` metrics added;
    ``log_fn`` gets stage 1's metrics with a ``stage1_`` prefix."""
    out = Path(out_dir)
    log_fn = kw.pop("log_fn", None)
    log1 = None if log_fn is None else (lambda step, m: log_fn(step, {f"stage1_{k}": v for k, v in m.items()}))
    first = train_vae(stage1, train_items, heldout_items, out / "stage1", log_fn=log1, **kw)
    second = dataclasses.replace(stage2, init_from=first["model_dir"])
    result = train_vae(second, train_items, heldout_items, out / "stage2", log_fn=log_fn, **kw)
    result.update({f"stage1_{k}": v for k, v in first.items() if isinstance(v, (int, float))})
    return result


def _initial_model(cfg: VAETrainConfig) -> VideoVAE:
    """``cfg.model`` from scratch; or ``cfg.init_from`` as saved (fine-tuning), except that a
    stage-1 folder (``patchify=False``) grows into ``cfg.model`` when that is the full model."""
    target = VAEConfig.from_dict(cfg.model)
    if not cfg.init_from:
        return VideoVAE(target)
    source = VideoVAE.from_pretrained(cfg.init_from)
    if source.config.patchify or not target.patchify:
        return source
    model = VideoVAE(target)
    model.load_stage1_weights(source)
    return model


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


def load_clips(
    manifest_rows: Sequence[Mapping[str, Any]],
    data_root: str | os.PathLike,
    max_items: int | None = None,
    split: str | None = None,
) -> list[np.ndarray]:
    """Decode the media of manifest rows (one per ``clip_id``, first row wins) to uint8 (T, H, W, 3).

    ``split`` keeps only rows of that split ('train' or 'heldout'); ``max_items`` caps the count.
    """
    from stepvideo.data.video_io import read_video

    root = Path(data_root)
    seen: set[str] = set()
    clips: list[np.ndarray] = []
    for row in manifest_rows:
        if split is not None and row.get("split") != split:
            continue
        key = str(row.get("clip_id") if row.get("clip_id") is not None else row["path"])
        if key in seen:
            continue
        seen.add(key)
        clips.append(read_video(root / row["path"]))
        if max_items is not None and len(clips) >= max_items:
            break
    return clips


def _floor16(n: int) -> int:
    return n // 16 * 16


def _check_items(items: Sequence[np.ndarray], what: str) -> None:
    if len(items) == 0:
        raise InputError(f"{what}: no clips")


def _draw_batch(
    items: Sequence[np.ndarray], videos: Sequence[int], cfg: VAETrainConfig, rng: np.random.Generator
) -> torch.Tensor:
    """One (B, T, 3, s, s) batch: a video batch (T = 17) with probability ``1 - image_prob``, else
    an image batch (T = 1: a still, or one frame of a clip). Video batches draw only from
    ``videos`` (indices of clips of at least 17 frames); with none, every batch is an image batch."""
    video = bool(videos) and rng.random() >= cfg.image_prob
    pool = videos if video else range(len(items))
    clips = [items[int(pool[int(j)])] for j in rng.integers(0, len(pool), size=cfg.batch_size)]
    size = min([cfg.crop_size] + [_floor16(min(c.shape[1], c.shape[2])) for c in clips])
    if size < 16:
        raise InputError("every clip must be at least 16x16 pixels")
    t = CLIP_FRAMES if video else 1
    out = []
    for c in clips:
        t0 = int(rng.integers(0, c.shape[0] - t + 1))
        y0 = int(rng.integers(0, c.shape[1] - size + 1))
        x0 = int(rng.integers(0, c.shape[2] - size + 1))
        out.append(frames_to_tensor(c[t0 : t0 + t, y0 : y0 + size, x0 : x0 + size]))
    return torch.stack(out)


def lr_factor(cfg: VAETrainConfig, step: int) -> float:
    """Multiplier of ``cfg.lr`` at ``step`` (0-based): :func:`stepvideo.training.schedule.lr_factor`."""
    return schedule.lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.lr_schedule, cfg.min_lr_ratio)


# ------------------------------------------------------------------------------------------------
# Held-out evaluation (losses and metrics: stepvideo.training.vae_losses)
# ------------------------------------------------------------------------------------------------


def _eval_clip(clip: np.ndarray, size: int) -> torch.Tensor:
    """Centre crop of a held-out clip: 17*k frames (or 1), square side <= size, as (1, T, 3, s, s)."""
    t = clip.shape[0] // CLIP_FRAMES * CLIP_FRAMES or 1
    s = min(size, _floor16(min(clip.shape[1], clip.shape[2])))
    y0, x0 = (clip.shape[1] - s) // 2, (clip.shape[2] - s) // 2
    return frames_to_tensor(clip[:t, y0 : y0 + s, x0 : x0 + s])[None]


@torch.no_grad()
def evaluate(model: VideoVAE, items: Sequence[np.ndarray], cfg: VAETrainConfig) -> tuple[dict[str, float], Any]:
    """Held-out PSNR/SSIM/L1 on posterior-mean reconstructions; also returns the first pair."""
    was_training = model.training
    model.eval()
    totals = {"psnr": 0.0, "ssim": 0.0, "l1": 0.0}
    first = None
    n = min(len(items), cfg.eval_max_items)
    for i in range(n):
        clip = items[i]
        x = _eval_clip(clip, cfg.eval_size)
        rec = model.decode(model.encode(x)).clamp(-1, 1)
        a, b = (x[0] + 1) / 2, (rec[0] + 1) / 2
        totals["psnr"] += psnr(a, b)
        totals["ssim"] += ssim(a, b)
        totals["l1"] += float((x - rec).abs().mean())
        if first is None:
            first = (x[0], rec[0])
    model.train(was_training)
    return {f"heldout_{k}": v / max(n, 1) for k, v in totals.items()}, first


def _save_sample(pair: tuple[torch.Tensor, torch.Tensor], out_dir: Path) -> Path:
    """Side-by-side (original | reconstruction): an mp4 for a clip, a png for a still."""
    from stepvideo.data.video_io import write_image, write_video

    x, rec = pair
    frames = torch.cat([x, rec], dim=-1)  # (T, 3, H, 2W)
    arr = ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if arr.shape[0] > 1:
        return write_video(out_dir / "reconstruction.mp4", arr, fps=8)
    return write_image(out_dir / "reconstruction.png", arr[0])


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------


def _save_checkpoint(out: Path, step: int, cfg: VAETrainConfig, model: VideoVAE, opt: torch.optim.Optimizer,
                     disc: nn.Module | None, opt_d: torch.optim.Optimizer | None, data_rng: np.random.Generator,
                     noise_gen: torch.Generator, history: list, history_eval: list) -> Path:
    rng_tensors, rng_data = ckpt.capture_rng()
    opt_tensors, opt_data = ckpt.optimizer_tensors(opt)
    groups = {"optimizer": opt_tensors, "rng": {**rng_tensors, "noise": noise_gen.get_state()}}
    state = {"optimizer": opt_data, "rng": rng_data, "data_rng": data_rng.bit_generator.state,
             "history": history, "history_eval": history_eval, "train_config": cfg.to_dict()}
    if disc is not None and opt_d is not None:
        groups["disc"] = disc.state_dict()
        groups["disc_optimizer"], state["disc_optimizer"] = ckpt.optimizer_tensors(opt_d)
    return ckpt.save_checkpoint(out, step, model_state=model.state_dict(), model_config=model.config.to_dict(),
                                tensors=groups, state=state, keep=cfg.keep_checkpoints)


def _refuse_legacy_checkpoints(out: Path) -> None:
    """A run written before the one checkpoint format would otherwise silently restart (and overwrite it)."""
    legacy = sorted((out / ckpt.CKPT_DIR).glob("step-*/training_state.pt"))
    if legacy:
        raise InputError(f"{legacy[-1].parent}: an old-format VAE checkpoint (pickled training_state.pt), which is "
                         f"no longer loaded; delete {out / ckpt.CKPT_DIR} to start afresh, or use a new out_dir")


def _set_trainable(model: nn.Module, cfg: VAETrainConfig, step: int) -> None:
    prefixes: tuple[str, ...] = ("",)
    for start, pre in cfg.trainable_phases:
        if step >= start:
            prefixes = pre
    for name, p in model.named_parameters():
        p.requires_grad_(any(name.startswith(pre) for pre in prefixes))


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def train_vae(
    cfg: VAETrainConfig,
    train_items: Sequence[np.ndarray],
    heldout_items: Sequence[np.ndarray],
    out_dir: str | os.PathLike,
    *,
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    resume: bool = True,
) -> dict[str, Any]:
    """Train a VideoVAE; returns final metrics (held-out PSNR/SSIM, losses, paths)."""
    from tqdm.auto import tqdm

    _check_items(train_items, "train_items")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt.atomic_write_text(out / "train_config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")

    # -- build everything from the seed ------------------------------------------------------
    ckpt.seed_rng(cfg.seed)
    model = _initial_model(cfg)
    model.train()
    disc = PatchDiscriminator3D(model.config.out_channels, cfg.disc_channels) if cfg.disc_weight > 0 else None
    perceptual = PerceptualLoss(cfg.perceptual_backbone_path) if cfg.perceptual_weight > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    opt_d = (
        torch.optim.AdamW(disc.parameters(), lr=cfg.disc_lr, betas=cfg.betas, weight_decay=0.0) if disc else None
    )
    data_rng = np.random.Generator(np.random.PCG64(cfg.seed))
    videos = [i for i in range(len(train_items)) if train_items[i].shape[0] >= CLIP_FRAMES]
    noise_gen = torch.Generator().manual_seed(cfg.seed + 1)
    step = 0
    history: list[float] = []
    history_eval: list[dict[str, float]] = []

    last = ckpt.latest_checkpoint(out) if resume else None
    if resume and last is None:
        _refuse_legacy_checkpoints(out)
    if last is not None:
        state = ckpt.load_state(last)
        load_state_checked(model, ckpt.load_model_state(last), ckpt.model_weights_file(last))
        ckpt.load_optimizer(opt, ckpt.load_tensors(last, "optimizer") or {}, state["optimizer"])
        disc_state = ckpt.load_tensors(last, "disc")
        if disc is not None and opt_d is not None and disc_state is not None:
            load_state_checked(disc, disc_state, last / "disc.safetensors")
            ckpt.load_optimizer(opt_d, ckpt.load_tensors(last, "disc_optimizer") or {}, state["disc_optimizer"])
        rng = ckpt.load_tensors(last, "rng")
        ckpt.restore_rng(rng, state["rng"])
        noise_gen.set_state(rng["noise"])
        data_rng.bit_generator.state = state["data_rng"]
        step = int(state["step"])
        history = list(state.get("history", []))
        history_eval = list(state.get("history_eval", []))

    # -- loop ---------------------------------------------------------------------------------
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="vae", dynamic_ncols=True)
    last_ckpt: Path | None = last
    while step < cfg.steps:
        model.set_dual_path(model.config.patchify and step >= cfg.dual_path_start_step)
        _set_trainable(model, cfg, step)
        x = _draw_batch(train_items, videos, cfg, data_rng)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, step)

        recon, post = model(x, sample=cfg.sample_posterior, generator=noise_gen)
        l1 = (recon - x).abs().mean()
        kl = (0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar)).mean()
        loss = pixel_loss(recon, x, cfg) + cfg.kl_weight * kl
        metrics = {"loss_l1": l1.item(), "loss_kl": kl.item()}
        if perceptual is not None:
            p_loss = perceptual(recon, x)
            loss = loss + cfg.perceptual_weight * p_loss
            metrics["loss_perceptual"] = p_loss.item()
        gan_on = disc is not None and step >= cfg.disc_start_step
        if gan_on:
            for p in disc.parameters():
                p.requires_grad_(False)
            g_loss = -disc(recon).mean()
            loss = loss + cfg.disc_weight * g_loss
            metrics["loss_g"] = g_loss.item()

        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in model.parameters() if p.grad is not None]
        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)) if params else 0.0
        opt.step()

        if gan_on:
            for p in disc.parameters():
                p.requires_grad_(True)
            d_loss = F.relu(1.0 - disc(x)).mean() + F.relu(1.0 + disc(recon.detach())).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            metrics["loss_d"] = d_loss.item()

        metrics["loss"] = loss.item()
        history.append(l1.item())
        step += 1
        bar.update(1)
        bar.set_postfix(l1=f"{l1.item():.4f}")
        if log_fn is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            log_fn(step, {**metrics, "frames": float(x.shape[1]), "dual_path": float(model.dual_path),
                          "lr": opt.param_groups[0]["lr"]})
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps and len(heldout_items):
            curve = evaluate(model, heldout_items, cfg)[0]
            history_eval.append({"step": step, **curve})
            if log_fn is not None:
                log_fn(step, curve)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            last_ckpt = _save_checkpoint(out, step, cfg, model, opt, disc, opt_d, data_rng, noise_gen, history,
                                         history_eval)
    bar.close()

    # -- final model + held-out evaluation ------------------------------------------------------
    model.set_dual_path(model.config.patchify and step >= cfg.dual_path_start_step)
    final = Path(model.save_pretrained(out / "final"))
    result: dict[str, Any] = {
        "step": step,
        "train_l1_first": history[0] if history else float("nan"),
        "train_l1_last": float(np.mean(history[-5:])) if history else float("nan"),
        "model_dir": str(final),
        "checkpoint": str(last_ckpt) if last_ckpt else None,
    }
    if len(heldout_items):
        metrics, pair = evaluate(model, heldout_items, cfg)
        result.update(metrics)
        result["heldout_curve"] = history_eval + [{"step": step, **metrics}]
        result["sample_path"] = str(_save_sample(pair, out))
        if log_fn is not None:
            log_fn(step, metrics)
    ckpt.atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


__all__ = [
    "VAETrainConfig",
    "two_stage_recipe",
    "train_vae_recipe",
    "load_clips",
    "train_vae",
    "lr_factor",
    "evaluate",
    "psnr",
    "ssim",
    "pixel_loss",
    "object_mask",
    "PatchDiscriminator3D",
    "PerceptualLoss",
]
