"""Video-DPO training: the policy (from the SFT model) against a frozen reference, on preference pairs.

The same shape as ``dit_trainer`` (one loop; components beside it: ``engine`` for DeepSpeed/ZeRO,
``checkpoint`` for exact resume, ``schedule``), with the pair loss of ``stepvideo.diffusion.dpo``.

The pairs come as one safetensors file (``write_pair_tensors``): ``chosen`` and ``rejected`` clean
latents (N, T, C, H, W) and the prompt's text embeddings (``llm_emb``/``llm_mask``/``clip_emb``/
``clip_mask``, N rows). Each optimizer step ``s``:

1. the global batch is a pure function of (seed, s): the pairs in a seeded permutation per epoch;
2. rank ``r`` of ``W`` takes items ``r::W`` and splits them into ``grad_accum`` micro-batches;
3. each pair draws ONE timestep and ONE noise from a generator seeded by (seed, s, position): the
   chosen and the rejected sample of a pair share both (the loss compares their errors);
4. the policy predicts the velocity of chosen and rejected in one forward; the reference (frozen,
   ``requires_grad`` off, eval mode, under ``no_grad``) does the same; loss, backward, AdamW step;
5. a non-finite loss or gradient skips the step; ``max_bad_steps`` in a row stop the run
   (``NonFiniteLossError``) and the last checkpoint stays intact.

Checkpoints (``out_dir/checkpoints/step-N``) hold the policy, the optimizer moments, the RNG and the
step: a re-run resumes and ends where an uninterrupted run would. The result is ``out_dir/final``
(a ``StepVideoDiT`` folder) and ``metrics.json`` with the per-step curves (loss, implicit reward
accuracy, reward margin, KL proxy). The caller logs through ``log_fn(step, metrics)``.

``lora`` (a :class:`stepvideo.training.lora.LoraSpec` as a dict; ``dpo.method: lora``): the policy is
a peft adapter on ``init_from`` (every base weight frozen, the optimizer over the adapter only,
``init_adapter`` its optional start), and the reference is **the same module with the adapter off**
(``adapter_off``): no second copy of the DiT's weights. B starts at 0, so policy == reference at
step 0 as with ``full``. Checkpoints hold the adapter and its moments only; the result adds
``out_dir/adapter`` (a peft folder) and ``out_dir/final`` is the base with the adapter merged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from stepvideo.diffusion.dpo import flow_dpo_loss
from stepvideo.diffusion.flow_matching import SAMPLERS, TimestepSampler, training_pair
from stepvideo.models.dit import StepVideoDiT
from stepvideo.training import checkpoint as ckpt
from stepvideo.training.dit_trainer import ADAPTER, _sample_generator, lora_spec, write_lora_result
from stepvideo.training.loop import RunCheckpoints, build_engine, check_batch_split, rank_micro_batches
from stepvideo.training.schedule import LR_SCHEDULES, lr_factor
from stepvideo.errors import InputError, MissingError

LogFn = Callable[[int, dict[str, float]], None]
TEXT_KEYS = ("llm_emb", "llm_mask", "clip_emb", "clip_mask")
CURVES = ("loss", "implicit_acc", "reward_margin", "kl_proxy")


@dataclass
class DPOTrainConfig:
    """One DPO run (plain data). ``init_from``: the policy's start; ``reference``: the frozen model
    (default: ``init_from``, i.e. the SFT model)."""

    init_from: str = ""
    reference: str = ""
    beta: float = 100.0
    sft_weight: float = 0.0
    batch_size: int = 8  # pairs per optimizer step (all ranks x micro-batches)
    grad_accum: int = 1
    steps: int = 50
    lr: float = 1e-4
    lr_schedule: str = "constant"
    warmup_steps: int = 5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    timestep_sampling: str = "logit_normal"
    timestep_shift: float = 1.0
    gradient_checkpointing: bool = False
    zero_stage: int = 0
    precision: str = "auto"
    deepspeed_config: str | None = None
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 25
    keep_checkpoints: int = 2
    max_bad_steps: int = 3
    # a LoRA adapter on init_from ({rank, alpha, dropout, target_modules}), the reference being init_from
    # (the adapter off); None: every weight trains against a frozen copy of `reference`
    lora: dict[str, Any] | None = None
    init_adapter: str = ""  # lora: the adapter folder the policy starts from ('' : B = 0, the policy is init_from)

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        errors = []
        if not self.init_from:
            errors.append("init_from (the SFT model folder) is required")
        if self.beta <= 0 or self.sft_weight < 0:
            errors.append("beta must be > 0 and sft_weight >= 0")
        if self.steps < 0 or self.batch_size < 1 or self.grad_accum < 1:
            errors.append("steps >= 0, batch_size >= 1 and grad_accum >= 1 are required")
        if self.lr_schedule not in LR_SCHEDULES:
            errors.append(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.timestep_sampling not in SAMPLERS:
            errors.append(f"timestep_sampling must be one of {SAMPLERS}, got {self.timestep_sampling!r}")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.keep_checkpoints < 1 or self.max_bad_steps < 1:
            errors.append("checkpoint_every, log_every, keep_checkpoints and max_bad_steps must be >= 1")
        if self.lora is not None:
            self.lora = dict(self.lora)
            unknown = sorted(set(self.lora) - {"rank", "alpha", "dropout", "target_modules"})
            if unknown:
                errors.append(f"unknown lora fields {unknown}")
            if self.reference and self.reference != self.init_from:
                errors.append("with lora the reference is init_from with the adapter off (reference must be "
                              f"'' or init_from, got {self.reference!r})")
        elif self.init_adapter:
            errors.append("init_adapter needs lora")
        if errors:
            raise InputError("invalid DPOTrainConfig: " + "; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def fingerprint(self, pairs_version: str = "") -> str:
        """What changes the trained weights (not cadence or how the work is spread), plus the pairs."""
        d = self.to_dict()
        for k in ("log_every", "checkpoint_every", "keep_checkpoints", "zero_stage", "deepspeed_config",
                  "gradient_checkpointing", "max_bad_steps"):
            d.pop(k)
        for k in ("lora", "init_adapter"):  # absent in a full run: its fingerprint is what it always was
            if not d[k]:
                d.pop(k)
        return hashlib.sha256(json.dumps([d, pairs_version], sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# the pair tensors


def write_pair_tensors(path: str | os.PathLike, chosen: torch.Tensor, rejected: torch.Tensor,
                       text: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> Path:
    """Write the DPO trainer's input (atomically): latents (N, T, C, H, W) + text rows (N, ...)."""
    from safetensors.torch import save_file

    n = chosen.shape[0]
    if chosen.shape != rejected.shape or n == 0:
        raise InputError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must be one non-empty shape")
    bad = [k for k, v in text.items() if v.shape[0] != n]
    if "llm_emb" not in text or bad:
        raise InputError(f"text embeddings need llm_emb and {n} rows each (wrong: {bad})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {"chosen": chosen.float().contiguous(), "rejected": rejected.float().contiguous(),
               **{k: (v.to(torch.uint8) if v.dtype == torch.bool else v.float()).contiguous() for k, v in text.items()}}
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(dict(meta or {}), sort_keys=True)})
    os.replace(tmp, path)
    return path


def load_pair_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MissingError(f"{path}: pair tensors not found (the dpo stage writes them from the pair dataset)")
    data = load_file(str(path))
    missing = [k for k in ("chosen", "rejected", "llm_emb", "llm_mask") if k not in data]
    if missing:
        raise InputError(f"{path}: not a DPO pair file (missing {missing})")
    for k in ("llm_mask", "clip_mask"):
        if k in data:
            data[k] = data[k].bool()
    with safe_open(str(path), "pt") as f:
        data["_meta"] = json.loads((f.metadata() or {}).get("meta", "{}"))  # type: ignore[assignment]
    return data


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The global batch of `step`: consecutive slices of a seeded permutation per epoch (a pure function)."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        take = min(batch_size - len(out), n - offset)
        out += perm[offset:offset + take]
        pos += take
    return out


def _load_dit(folder: str, gradient_checkpointing: bool) -> StepVideoDiT:
    model = StepVideoDiT.from_pretrained(folder, dtype=torch.float32)
    model.config.gradient_checkpointing = gradient_checkpointing
    return model


def frozen_reference(folder: str, device: torch.device, dtype: torch.dtype) -> StepVideoDiT:
    """The reference model: loaded once, eval mode, no parameter requires grad."""
    ref = StepVideoDiT.from_pretrained(folder, dtype=torch.float32).to(device=device, dtype=dtype).eval()
    ref.requires_grad_(False)
    return ref


# ------------------------------------------------------------------------------------------------
# the loop


def train_dpo(cfg: DPOTrainConfig, pairs_file: str | os.PathLike, out_dir: str | os.PathLike, *,
              log_fn: LogFn | None = None, progress: bool = True, resume: bool = True,
              name: str = "dpo") -> dict[str, Any]:
    """Train (or continue) the policy on the pairs in `pairs_file`; returns metrics and ``model_dir``."""
    from tqdm.auto import tqdm

    from stepvideo.models.io import save_folder
    from stepvideo.training.engine import init_distributed

    rank, world = init_distributed()
    out = Path(out_dir)
    data = load_pair_tensors(pairs_file)
    meta = data.pop("_meta")
    n = int(data["chosen"].shape[0])
    check_batch_split(name, [cfg.batch_size], world, cfg.grad_accum)
    timesteps = TimestepSampler(cfg.timestep_sampling, shift=cfg.timestep_shift)
    ckpt.seed_rng(cfg.seed)
    model = _load_dit(cfg.init_from, cfg.gradient_checkpointing)
    if model.config.in_channels != data["chosen"].shape[2]:
        raise InputError(f"{pairs_file}: latents have {data['chosen'].shape[2]} channels, the model "
                         f"{cfg.init_from} takes {model.config.in_channels}")
    spec = lora_spec(cfg)
    adapter_names = None
    if spec is not None:  # peft layers in place, only their A/B train; the reference is this module, adapter off
        from stepvideo.training.lora import adapter_off, apply_lora, load_adapter_weights

        apply_lora(model, spec)
        if cfg.init_adapter:
            load_adapter_weights(model, cfg.init_adapter)
        adapter_names = {n for n, p in model.named_parameters() if p.requires_grad}
    model.enable_gradient_checkpointing(cfg.gradient_checkpointing)
    model.train()
    engine = build_engine(model, cfg, world)
    if spec is None:
        reference = frozen_reference(cfg.reference or cfg.init_from, engine.device, engine.compute_dtype)
    else:
        def reference(*args, **kwargs):
            with adapter_off(model):
                return engine(*args, **kwargs)

    checkpoints = RunCheckpoints(out, engine, model.config.to_dict(), cfg.fingerprint(str(meta.get("version", ""))),
                                 rank, world, keep=cfg.keep_checkpoints, only=adapter_names)
    _, state, counter = checkpoints.resume(resume, cfg.to_dict(), "written by a different DPO config or pair set")
    curves: dict[str, list[float]] = {k: list(state.get("curves", {}).get(k, [])) for k in CURVES}

    dev, dtype = engine.device, engine.compute_dtype
    bar = tqdm(total=cfg.steps, initial=counter.step, disable=not progress or rank != 0, desc=name,
               dynamic_ncols=True)
    t_start = time.perf_counter()
    while counter.step < cfg.steps:
        step = counter.step
        lr = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.lr_schedule)
        global_idx = batch_indices(n, cfg.batch_size, cfg.seed, step)
        sums: dict[str, float] = {}
        finite = True
        for pos in rank_micro_batches(len(global_idx), rank, world, cfg.grad_accum):
            idx = [global_idx[p] for p in pos]
            gens = [_sample_generator(cfg.seed, step, p) for p in pos]
            shape = data["chosen"].shape[1:]
            t = torch.cat([timesteps.sample(1, generator=g) for g in gens])
            noise = torch.stack([torch.randn(shape, generator=g) for g in gens])
            xw, tw, _ = training_pair(data["chosen"][idx], t, noise)
            xl, tl, _ = training_pair(data["rejected"][idx], t, noise)
            x_t = torch.cat([xw, xl]).to(dev, dtype)
            tt = torch.cat([t, t]).to(dev)
            text = {k: torch.cat([data[k][idx]] * 2).to(dev) for k in TEXT_KEYS if k in data}
            text = {k: v if v.dtype == torch.bool else v.to(dtype) for k, v in text.items()}
            pred = engine(x_t, tt, **text)
            with torch.no_grad():
                ref = reference(x_t, tt, **text)
            b = len(idx)
            loss, stats = flow_dpo_loss(pred[:b], pred[b:], ref[:b], ref[b:], tw.to(dev), tl.to(dev), cfg.beta,
                                        cfg.sft_weight)
            if not engine.all_finite(loss.detach()):
                finite = False
                engine.discard()
                break
            engine.backward(loss)
            for k, v in {"loss": loss.detach(), **stats}.items():
                sums[k] = sums.get(k, 0.0) + float(v) / cfg.grad_accum
        grad_norm = float("nan")
        if finite:
            result = engine.step(lr)
            grad_norm, finite = result["grad_norm"], not result["skipped"]
        means = {k: engine.all_reduce_mean(v) for k, v in sums.items()} if finite else {}
        for k in CURVES:
            curves[k].append(means[k] if finite else float("nan"))
        counter.count(finite, cfg.max_bad_steps, name, "lower dpo.lr or dpo.beta", out, on_stop=bar.close)
        step = counter.step
        bar.update(1)
        if means:
            bar.set_postfix(loss=f"{means['loss']:.4f}", acc=f"{means['implicit_acc']:.2f}")
        if log_fn is not None and rank == 0 and means and (step % cfg.log_every == 0 or step == cfg.steps):
            log_fn(step, {**means, "lr": lr, "grad_norm": grad_norm, "skipped_steps": float(counter.skipped)})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoints.save(step, counter, state={"curves": curves})
    bar.close()

    def window(k: str, last: bool) -> float:
        vals = [x for x in curves[k] if x == x]
        vals = vals[-10:] if last else vals[:10]
        return sum(vals) / len(vals) if vals else float("nan")

    result_out: dict[str, Any] = {
        "step": counter.step, "skipped_steps": counter.skipped, "pairs": n, "seconds": time.perf_counter() - t_start,
        **{f"{k}_first": window(k, False) for k in CURVES}, **{f"{k}_last": window(k, True) for k in CURVES},
        "curves": curves, "model_dir": str(out / "final"), "world_size": world,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    if spec is not None:
        result_out["adapter_dir"] = str(out / ADAPTER)
    weights = engine.full_state_dict()
    if rank == 0:
        if spec is None:
            save_folder(out / "final", weights, model.config.to_dict())
        else:
            write_lora_result(out, weights, spec, model.config.to_dict())
        ckpt.atomic_write_text(out / "metrics.json", json.dumps(result_out, indent=2, sort_keys=True) + "\n")
    engine.barrier()
    return result_out


__all__ = ["DPOTrainConfig", "train_dpo", "write_pair_tensors", "load_pair_tensors", "batch_indices",
           "frozen_reference"]
