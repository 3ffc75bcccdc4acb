"""DiT training by rectified flow matching: one loop for every stage of the cascade.

torchtitan-style: this file is the loop; the components live beside it (``engine``: DeepSpeed
with ZeRO 0-3; ``checkpoint``: the one checkpoint format; ``loop``: engine set-up, resume and save,
the rank split, the non-finite guard, shared with the DPO loop; ``schedule``; ``ema``). The loop knows
nothing of MLflow, Prefect or DVC: the caller passes ``log_fn(step, metrics)``.

Each optimizer step ``s``:

1. the global batch is ``BucketSampler.batch_indices(s)``: items of one (latent frames, h, w)
   bucket of the latent cache, a pure function of (seed, s);
2. rank ``r`` of ``W`` takes items ``r::W`` of it and splits them into ``grad_accum`` micro-batches
   (with ``sp_degree`` S, ``r`` and ``W`` are the data-parallel ones, ``rank // S`` and ``world / S``:
   the S ranks of a sequence-parallel group take the same items and split their tokens);
3. each sample's randomness (caption dropout, posterior sample, timestep, noise) comes from a
   generator seeded by (seed, s, position in the global batch), so the same global batch gives the
   same samples at any rank count, and a resumed run needs nothing but the step;
4. loss = MSE(DiT(x_t, t, text), x1 - x0) (``stepvideo.diffusion.flow_matching``), backward per
   micro-batch, then one AdamW step with warm-up + cosine/constant LR and gradient clipping;
5. a non-finite loss or grad norm (on any rank) skips the update and is counted; ``max_bad_steps``
   in a row stop the run with :class:`NonFiniteLossError`; the last checkpoint stays intact.

Checkpoints (``out_dir/checkpoints/step-N``, see :mod:`stepvideo.training.checkpoint`) hold full
weights, full optimizer moments, EMA, RNG states and the step; a re-run resumes from the newest
and ends bitwise-identical to an uninterrupted run on the CPU. The result is ``out_dir/final``, a
``StepVideoDiT.from_pretrained`` folder: the EMA weights when ``ema_decay > 0``, the mean of the
last ``average_last`` checkpoints when that is set (the report's SFT recipe), else the last weights.

``lora`` (a :class:`stepvideo.training.lora.LoraSpec` as a dict) fine-tunes ``init_from`` with a
LoRA adapter: peft layers injected, every base weight frozen, the optimizer over the adapter only.
Its checkpoints hold the adapter's tensors (and their moments) only; the frozen base is
``init_from`` again on resume. The result adds ``out_dir/adapter`` (a peft adapter folder) and
``out_dir/final`` is the base with the adapter merged (``W + alpha / rank * B @ A``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from stepvideo.diffusion.flow_matching import SAMPLERS, TimestepSampler, flow_matching_loss, training_pair
from stepvideo.models.dit import DiTConfig, StepVideoDiT
from stepvideo.training import checkpoint as ckpt
from stepvideo.training.ema import EMA, average_weights
from stepvideo.training.loop import (NonFiniteLossError, RunCheckpoints, build_engine, check_batch_split,
                                     rank_micro_batches)
from stepvideo.training.schedule import LR_SCHEDULES, lr_factor
from stepvideo.errors import InputError

LogFn = Callable[[int, dict[str, float]], None]
FINAL = "final"
ADAPTER = "adapter"


@dataclass
class DiTTrainConfig:
    """Everything that defines one DiT training run (plain data; ``to_dict``/``from_dict``)."""

    model: dict[str, Any] = field(default_factory=lambda: DiTConfig.preset("demo").to_dict())
    init_from: str | None = None  # a StepVideoDiT folder to start from (the previous stage's output)
    # data: which latent-cache items and at which resolution
    resolution: str = "full"  # a latent-cache resolution: full | low
    kinds: tuple[str, ...] = ("video", "image")
    still_share: float | None = None  # share of steps drawing stills (None: in proportion to the items)
    min_quality: float | None = None  # keep rows whose quality >= this (SFT's high-quality subset)
    split: str = "train"
    batch_size: int = 8  # global batch per optimizer step (all ranks x micro-batches)
    bucket_batch_sizes: dict[str, int] = field(default_factory=dict)  # "FxHxW" (latent) -> global batch
    grad_accum: int = 1
    # optimisation
    steps: int = 100
    lr: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # flow matching
    timestep_sampling: str = "logit_normal"  # uniform | logit_normal | shifted
    timestep_shift: float = 1.0  # shifted
    logit_mean: float = 0.0
    logit_std: float = 1.0
    caption_dropout: float = 0.1  # share of samples whose text is the empty prompt's (for CFG)
    sample_posterior: bool = True  # draw latents from the VAE posterior (else its mean)
    # weights kept
    ema_decay: float = 0.0  # 0: no EMA
    average_last: int = 0  # >0: final weights = mean of the last N checkpoints
    # engine
    gradient_checkpointing: bool = False
    zero_stage: int = 0
    sp_degree: int = 1  # sequence parallel: ranks per group sharing each sample's tokens (data-parallel = world / sp)
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    deepspeed_config: str | None = None
    # bookkeeping
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_bad_steps: int = 3
    threads: int | None = None
    # a LoRA adapter on the frozen init_from ({rank, alpha, dropout, target_modules}); None: every weight trains
    lora: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, DiTConfig):
            self.model = self.model.to_dict()
        self.kinds = tuple(self.kinds)
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.bucket_batch_sizes = {str(k): int(v) for k, v in dict(self.bucket_batch_sizes).items()}
        errors = []
        if self.steps < 0 or self.batch_size < 1 or self.grad_accum < 1:
            errors.append("steps >= 0, batch_size >= 1 and grad_accum >= 1 are required")
        if any(v < 1 for v in self.bucket_batch_sizes.values()):
            errors.append("bucket_batch_sizes must be >= 1")
        if self.lr_schedule not in LR_SCHEDULES:
            errors.append(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.timestep_sampling not in SAMPLERS:
            errors.append(f"timestep_sampling must be one of {SAMPLERS}, got {self.timestep_sampling!r}")
        if not 0.0 <= self.caption_dropout < 1.0:
            errors.append("caption_dropout must lie in [0, 1)")
        if self.still_share is not None and not 0.0 <= self.still_share <= 1.0:
            errors.append("still_share must lie in [0, 1]")
        if not set(self.kinds) <= {"video", "image"} or not self.kinds:
            errors.append(f"kinds must be a non-empty subset of ('video', 'image'), got {self.kinds}")
        if not 0.0 <= self.ema_decay < 1.0 or self.average_last < 0:
            errors.append("ema_decay must lie in [0, 1) and average_last >= 0")
        if self.ema_decay > 0 and self.average_last > 0:
            errors.append("use either ema_decay or average_last, not both")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.keep_checkpoints < 1 or self.max_bad_steps < 1:
            errors.append("checkpoint_every, log_every, keep_checkpoints and max_bad_steps must be >= 1")
        if self.zero_stage not in (0, 1, 2, 3):
            errors.append(f"zero_stage must be 0..3, got {self.zero_stage}")
        if self.lora is not None:
            self.lora = dict(self.lora)
            if not self.init_from:
                errors.append("lora needs init_from (the base model the adapter trains on)")
            unknown = sorted(set(self.lora) - {"rank", "alpha", "dropout", "target_modules"})
            if unknown:
                errors.append(f"unknown lora fields {unknown}")
        if self.sp_degree < 1:
            errors.append(f"sp_degree must be >= 1, got {self.sp_degree}")
        if errors:
            raise InputError("invalid DiTTrainConfig: " + "; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DiTTrainConfig":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InputError(f"unknown DiTTrainConfig fields {unknown}")
        return cls(**dict(d))

    def fingerprint(self) -> str:
        """A hash of the fields that change the trained weights; not logging or checkpoint cadence, nor
        how the work is spread (ZeRO stage, sequence parallel, gradient checkpointing): a checkpoint resumes
        under any of those."""
        d = self.to_dict()
        for k in ("log_every", "checkpoint_every", "keep_checkpoints", "threads", "zero_stage", "deepspeed_config",
                  "gradient_checkpointing", "max_bad_steps", "sp_degree"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# per-sample randomness: a pure function of (seed, step, position in the global batch)


def _sample_generator(seed: int, step: int, position: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{step}/{position}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def make_micro_batch(cache: Any, cfg: DiTTrainConfig, sampler: TimestepSampler, indices: list[int],
                     positions: list[int], step: int) -> dict[str, Any]:
    """Model inputs and targets of one micro-batch: text (with caption dropout), x_t, t, velocity target."""
    gens = [_sample_generator(cfg.seed, step, p) for p in positions]
    drop = [bool(torch.rand((), generator=g) < cfg.caption_dropout) for g in gens]
    b = cache.batch(indices, cfg.resolution, drop_text=drop)
    mean, logvar = b["mean"], b["logvar"]
    shape = mean.shape[1:]
    if cfg.sample_posterior:
        eps = torch.stack([torch.randn(shape, generator=g) for g in gens])
        x1 = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps
    else:
        x1 = mean
    t = torch.cat([sampler.sample(1, generator=g) for g in gens])
    noise = torch.stack([torch.randn(shape, generator=g) for g in gens])
    x_t, target, _ = training_pair(x1, t, noise)
    text = {k: b[k] for k in ("llm_emb", "llm_mask", "clip_emb", "clip_mask") if k in b}
    return {"x_t": x_t, "t": t, "target": target, "text": text, "dropped": sum(drop)}


# ------------------------------------------------------------------------------------------------
# model


def initial_model(cfg: DiTTrainConfig) -> StepVideoDiT:
    """``cfg.model`` from scratch (seeded), or ``cfg.init_from`` (a folder), checked against ``cfg.model``."""
    ckpt.seed_rng(cfg.seed)
    target = DiTConfig.from_dict(cfg.model)
    if not cfg.init_from:
        return StepVideoDiT(target)
    model = StepVideoDiT.from_pretrained(cfg.init_from, dtype=torch.float32)  # fp32 master weights (bf16 release)
    got = model.config
    for name in ("in_channels", "out_channels", "caption_channels", "hidden_size", "num_layers", "patch_size"):
        if getattr(got, name) != getattr(target, name):
            raise InputError(f"init_from {cfg.init_from}: {name} = {getattr(got, name)} but the stage's model has "
                             f"{getattr(target, name)}")
    model.config.gradient_checkpointing = target.gradient_checkpointing
    model.attention_backend = model.config.attention_backend = target.attention_backend
    return model


def _check_cache(model: StepVideoDiT, cache: Any) -> None:
    mc = model.config
    z = int(cache.meta["z_channels"])
    if mc.in_channels != z or mc.out_channels != z:
        raise InputError(f"DiT in/out_channels ({mc.in_channels}, {mc.out_channels}) do not match the latent cache's "
                         f"{z} VAE channels ({cache.folder})")
    dims = [int(cache.text.encoders[n]["dim"]) for n in ("llm", "clip") if n in cache.text.encoders]
    if dims != list(mc.caption_channels):
        raise InputError(f"DiT caption_channels {list(mc.caption_channels)} do not match the cache's text encoders {dims}")


def lora_spec(cfg: DiTTrainConfig) -> Any:
    """The config's LoraSpec (None without `lora`); a bad rank/alpha/dropout is an InputError."""
    from stepvideo.training.lora import LoraSpec

    if cfg.lora is None:
        return None
    d = dict(cfg.lora)
    if "target_modules" in d:
        d["target_modules"] = tuple(d["target_modules"])
    return LoraSpec(**d)


def split_lora_state(weights: Mapping[str, torch.Tensor], spec: Any, adapter_name: str = "default"
                     ) -> tuple[dict[str, torch.Tensor], Any]:
    """A LoRA-injected model's full state (peft names) -> (the base state dict under its plain names,
    the adapter as a LoraAdapter in our naming, one alpha for every module)."""
    from stepvideo.models.lora import LoraAdapter

    base, tensors = {}, {}
    for k, v in weights.items():
        for part in ("lora_A", "lora_B"):
            tag = f".{part}.{adapter_name}."
            if tag in k:
                tensors[k.replace(tag, f".{part}.")] = v
                break
        else:
            base[k.replace(".base_layer.", ".")] = v
    modules = sorted(k[: -len(".lora_A.weight")] for k in tensors if k.endswith(".lora_A.weight"))
    adapter = LoraAdapter(tensors, {m: float(spec.alpha) for m in modules}, "", {"lora_spec": spec.to_dict()})
    return base, adapter.check()


def write_lora_result(out: Path, weights: Mapping[str, torch.Tensor], spec: Any, model_config: dict) -> None:
    """A LoRA run's outputs from its gathered fp32 state (a live module may hold bf16 or ZeRO-3
    shards): ``out/adapter`` (a peft adapter folder) and ``out/final`` (the base with it merged)."""
    from stepvideo.models.io import save_folder
    from stepvideo.models.lora import merge_lora
    from stepvideo.training.lora import write_peft_folder

    base, adapter = split_lora_state(weights, spec)
    write_peft_folder(out / ADAPTER, adapter)
    save_folder(out / FINAL, merge_lora(base, adapter), model_config)


# ------------------------------------------------------------------------------------------------
# the loop


def train_dit(
    cfg: DiTTrainConfig,
    cache_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    log_fn: LogFn | None = None,
    progress: bool = True,
    resume: bool = True,
    name: str = "dit",
) -> dict[str, Any]:
    """Train (or continue) a DiT on the latent cache at ``cache_dir``; returns metrics and ``model_dir``.

    Runs in every rank of a ``torchrun`` launch; rank 0 writes the checkpoints and the final folder.
    """
    from tqdm.auto import tqdm

    from stepvideo.data.latent_cache import BucketSampler, LatentCache
    from stepvideo.parallel import init_sequence_parallel, sp_layout
    from stepvideo.training.engine import init_distributed

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world = init_distributed()
    if world % cfg.sp_degree:
        raise InputError(f"{name}: sp_degree {cfg.sp_degree} does not divide the {world} ranks")
    # sequence parallel: the ranks of an SP group share each sample (its tokens split over them); the data is
    # split over the world / sp_degree data-parallel positions
    layout = sp_layout(rank, world, cfg.sp_degree)
    dp_rank, dp_world = layout["dp_rank"], layout["dp_world"]
    out = Path(out_dir)
    cache = LatentCache(cache_dir)
    indices = cache.select(split=cfg.split, kinds=cfg.kinds, min_quality=cfg.min_quality)
    if not indices:
        raise InputError(f"{name}: no items in {cache_dir} for split={cfg.split!r}, kinds={cfg.kinds}, "
                         f"min_quality={cfg.min_quality}")
    batches = BucketSampler(cache, indices, cfg.resolution, cfg.batch_size, cfg.bucket_batch_sizes,
                            cfg.still_share, cfg.seed)
    check_batch_split(name, {cfg.batch_size, *cfg.bucket_batch_sizes.values()}, dp_world, cfg.grad_accum)
    timesteps = TimestepSampler(cfg.timestep_sampling, mean=cfg.logit_mean, std=cfg.logit_std,
                                shift=cfg.timestep_shift)

    model = initial_model(cfg)
    _check_cache(model, cache)
    spec = lora_spec(cfg)
    adapter_names = None
    if spec is not None:  # peft layers in place; only their A/B parameters train
        from stepvideo.training.lora import apply_lora

        apply_lora(model, spec)
        adapter_names = {n for n, p in model.named_parameters() if p.requires_grad}
    model.enable_gradient_checkpointing(cfg.gradient_checkpointing)
    # SP ranks compute the same loss and the engine averages gradients over all ranks: see stepvideo.parallel
    model.set_sequence_parallel(init_sequence_parallel(cfg.sp_degree))
    model.train()
    engine = build_engine(model, cfg, dp_world)
    # what the checkpoints, the EMA and the average hold: every weight, or the adapter's alone
    trained = (lambda w: w) if adapter_names is None else (lambda w: {k: w[k] for k in adapter_names})  # noqa: E731
    ema = EMA(trained(engine.full_state_dict()), cfg.ema_decay) if cfg.ema_decay > 0 else None

    # -- resume ---------------------------------------------------------------------------------
    checkpoints = RunCheckpoints(out, engine, model.config.to_dict(), cfg.fingerprint(), rank, world,
                                 keep=max(cfg.keep_checkpoints, cfg.average_last), only=adapter_names)
    last, state, counter = checkpoints.resume(resume, cfg.to_dict(), "written by a different training config")
    history: list[float] = list(state.get("loss_history", []))
    if last is not None and ema is not None:
        ema.load_state_dict(ckpt.load_tensors(last, "ema"))

    def save(at_step: int) -> Path | None:
        return checkpoints.save(at_step, counter, groups={"ema": ema.state_dict()} if ema is not None else None,
                                state={"loss_history": history, "zero_stage": cfg.zero_stage,
                                       "data_position": {"step": at_step, "sampler_seed": cfg.seed}})

    # -- loop -----------------------------------------------------------------------------------
    bar = tqdm(total=cfg.steps, initial=counter.step, disable=not progress or rank != 0, desc=name,
               dynamic_ncols=True)
    window = {"samples": 0, "tokens": 0, "time": time.perf_counter()}
    while counter.step < cfg.steps:
        step = counter.step
        lr = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.lr_schedule, cfg.min_lr_ratio)
        global_idx = batches.batch_indices(step)
        loss_sum, finite = 0.0, True
        for pos in rank_micro_batches(len(global_idx), dp_rank, dp_world, cfg.grad_accum):
            mb = make_micro_batch(cache, cfg, timesteps, [global_idx[p] for p in pos], pos, step)
            dev = engine.device
            pred = engine(mb["x_t"].to(dev), mb["t"].to(dev), **{k: v.to(dev) for k, v in mb["text"].items()})
            loss = flow_matching_loss(pred, mb["target"].to(dev))
            if not engine.all_finite(loss.detach()):
                finite = False
                engine.discard()
                break
            engine.backward(loss)
            loss_sum += float(loss.detach())
            window["tokens"] += mb["x_t"][0, :, 0].numel() // model.config.patch_size**2 * len(pos)
        grad_norm = float("nan")
        if finite:
            result = engine.step(lr)
            grad_norm, finite = result["grad_norm"], not result["skipped"]
        if finite:
            history.append(engine.all_reduce_mean(loss_sum / cfg.grad_accum))
            if ema is not None:
                ema.update(trained(engine.full_state_dict()))
        else:
            history.append(float("nan"))
        counter.count(finite, cfg.max_bad_steps, name, "lower the learning rate or check the data", out,
                      on_stop=bar.close)
        step = counter.step
        window["samples"] += len(global_idx)
        bar.update(1)
        if finite:
            bar.set_postfix(loss=f"{history[-1]:.4f}")
        if log_fn is not None and rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
            dt = max(time.perf_counter() - window["time"], 1e-9)
            log_fn(step, {"loss": history[-1], "lr": lr, "grad_norm": grad_norm,
                          "skipped_steps": float(counter.skipped), "samples_per_s": window["samples"] / dt,
                          "tokens_per_s": window["tokens"] * dp_world / dt})
            window = {"samples": 0, "tokens": 0, "time": time.perf_counter()}
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save(step)
    bar.close()

    # -- the stage's output -----------------------------------------------------------------------
    weights = engine.full_state_dict()
    kept = "last"
    if cfg.average_last > 0:
        folders = ckpt.list_checkpoints(out)[-cfg.average_last:]
        weights = {**weights, **average_weights([ckpt.load_model_state(f) for f in folders])}
        kept = f"mean of {len(folders)} checkpoints ({', '.join(f.name for f in folders)})"
    elif ema is not None:
        weights, kept = {**weights, **ema.state_dict()}, f"EMA (decay {cfg.ema_decay})"
    finite_losses = [x for x in history if x == x]
    result: dict[str, Any] = {
        "step": counter.step, "skipped_steps": counter.skipped, "weights": kept, "items": len(indices),
        # means of the first and last 10 finite step losses (one step's loss is one noisy batch)
        "loss_first": sum(finite_losses[:10]) / len(finite_losses[:10]) if finite_losses else float("nan"),
        "loss_last": sum(finite_losses[-10:]) / len(finite_losses[-10:]) if finite_losses else float("nan"),
        "loss_curve": history, "model_dir": str(out / FINAL), "world_size": world, "sp_degree": cfg.sp_degree,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if spec is not None:
        result["adapter_dir"] = str(out / ADAPTER)
    if rank == 0:
        from stepvideo.models.io import save_folder

        if spec is None:
            save_folder(out / FINAL, weights, model.config.to_dict())
        else:
            write_lora_result(out, weights, spec, model.config.to_dict())
        ckpt.atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    engine.barrier()
    return result


__all__ = ["ADAPTER", "DiTTrainConfig", "NonFiniteLossError", "train_dit", "initial_model", "lora_spec",
           "make_micro_batch", "split_lora_state", "write_lora_result"]
