"""The training engine: a thin wrapper that lets a trainer drive a DeepSpeed engine.

DeepSpeed owns the model, AdamW (``torch.optim.AdamW`` via ``torch_adam``, so nothing compiles) and ZeRO
stage 0-3; the model code knows nothing of it. A trainer runs each optimizer step as::

    for micro_batch in step_batches:           # grad_accum micro-batches
        loss = loss_fn(engine(*inputs))        # forward through DeepSpeed
        engine.backward(loss)                  # mean loss of this micro-batch
    stats = engine.step(lr)                    # {"grad_norm": ..., "skipped": ...}

What this module adds to DeepSpeed:

- the accumulation boundary is set explicitly on the last ``backward()`` of a step, so ``step()`` is
  called once per optimizer step (DeepSpeed itself expects ``step()`` after every micro-batch);
- ``step()`` reports the global pre-clip gradient norm and *skips* the update when it is not finite
  (DeepSpeed's ZeRO/bf16 optimizers already do; for plain fp32 stage 0 we check it ourselves);
- ``discard()`` drops a half-accumulated step (the clean-up DeepSpeed runs when it skips a step);
- full fp32 model and AdamW state by parameter name, whatever the world size and ZeRO stage:
  DeepSpeed's tensor-fragment API (``safe_get/set_full_*``) for ZeRO 1-3, the optimizer's own tensors
  for stage 0. A checkpoint written at any world size / stage loads at any other and resumes exactly.

DeepSpeed is imported lazily, so importing this module costs only torch. Configs: ``infra/deepspeed/
zero{0,1,2,3}.json`` (bf16), overridden by ``EngineConfig``; on the CPU we use gloo and fp32.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from stepvideo.errors import InputError, MissingError

__all__ = ["Engine", "EngineConfig", "deepspeed_config", "init_distributed"]

_CONFIG_DIR = Path(__file__).resolve().parents[2] / "infra" / "deepspeed"
_ADAM_KEYS = ("exp_avg", "exp_avg_sq")


@dataclass
class EngineConfig:
    zero_stage: int = 0  # 0..3
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU | fp32 | bf16
    micro_batch_size: int = 1  # per rank
    grad_accum: int = 1
    grad_clip: float = 1.0  # 0 = off
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    config_file: str | None = None  # a DeepSpeed JSON; default: infra/deepspeed/zero{stage}.json


# ----------------------------------------------------------------------------------------- config


def _builtin_config(stage: int) -> dict:
    """infra/deepspeed/zero{stage}.json, for a package installed without the repository around it."""
    zero: dict = {"stage": stage}
    if stage >= 2:
        zero.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size=5e8)
    if stage == 3:
        zero.update(stage3_prefetch_bucket_size=5e8, stage3_param_persistence_threshold=1e6,
                    stage3_gather_16bit_weights_on_model_save=True)
    return {
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
        "bf16": {"enabled": True}, "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.999], "weight_decay": 0.0,
                                                  "torch_adam": True}},
        "steps_per_print": 100, "wall_clock_breakdown": False,
    }


def _use_bf16(precision: str) -> bool:
    if precision == "auto":
        return torch.cuda.is_available()  # never bf16 by default on the CPU
    if precision not in ("bf16", "fp32"):
        raise InputError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    return precision == "bf16"


def deepspeed_config(cfg: EngineConfig) -> dict:
    """The DeepSpeed config dict: the JSON file (or its built-in twin), with every field of ``cfg`` applied."""
    if not 0 <= cfg.zero_stage <= 3:
        raise InputError(f"zero_stage must be 0..3, not {cfg.zero_stage}")
    path = Path(cfg.config_file) if cfg.config_file else _CONFIG_DIR / f"zero{cfg.zero_stage}.json"
    if path.is_file():
        conf = json.loads(path.read_text())
    elif cfg.config_file:
        raise MissingError(path)
    else:
        conf = _builtin_config(cfg.zero_stage)
    conf = copy.deepcopy(conf)
    conf.pop("train_batch_size", None)  # DeepSpeed derives it: micro batch x accumulation x world size
    conf.pop("fp16", None)
    conf.update(train_micro_batch_size_per_gpu=cfg.micro_batch_size, gradient_accumulation_steps=cfg.grad_accum,
                gradient_clipping=float(cfg.grad_clip))
    conf["bf16"] = {**conf.get("bf16", {}), "enabled": _use_bf16(cfg.precision)}
    conf.setdefault("zero_optimization", {})["stage"] = cfg.zero_stage
    optimizer = conf.setdefault("optimizer", {})
    optimizer["type"] = "AdamW"
    optimizer.setdefault("params", {}).update(lr=cfg.lr, betas=list(cfg.betas), weight_decay=cfg.weight_decay,
                                              torch_adam=True)  # torch.optim.AdamW: no extension to compile
    return conf


# ------------------------------------------------------------------------------------ distributed


def _import_deepspeed():
    """Import DeepSpeed quietly: name the CPU accelerator (no detection warning), logs at WARNING."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    # DeepSpeed still calls the collectives torch 2.13 deprecated; that warning is theirs, once per call site.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    return deepspeed


def init_distributed() -> tuple[int, int]:
    """Join (or create) the default process group; return ``(rank, world_size)``. Idempotent.

    Under torchrun / the deepspeed launcher (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set) DeepSpeed
    initialises the group from the environment. A lone process gets a 1-rank group on an in-process
    store (no port to pick, none to collide). gloo on the CPU, nccl on CUDA.
    """
    deepspeed = _import_deepspeed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    launched = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    os.environ.setdefault("LOCAL_RANK", "0")  # the launchers set it; DeepSpeed's engine reads it
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        if not launched:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            # A lone rank reduces nothing: skip compiling DeepSpeed's CPU shared-memory all-reduce op
            # (about a minute on a fresh machine). DeepSpeed reads this table to decide whether to build it.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # The first call JIT-builds DeepSpeed's shm-allreduce op (cached in TORCH_EXTENSIONS_DIR) and print()s.
    with contextlib.redirect_stdout(io.StringIO()):
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return dist.get_rank(), dist.get_world_size()


# ----------------------------------------------------------------------------------------- engine


def _inner_adamw(optimizer) -> torch.optim.AdamW:
    """The torch AdamW under DeepSpeed's wrappers (ZeRO, bf16); the optimizer itself at fp32 stage 0."""
    while not isinstance(optimizer, torch.optim.AdamW):
        optimizer = getattr(optimizer, "optimizer", None)
        if optimizer is None:
            raise TypeError("expected DeepSpeed to run a torch.optim.AdamW")
    return optimizer


def _zero_managed(p: nn.Parameter) -> bool:
    """True when DeepSpeed's tensor-fragment API owns p's fp32 copy (ZeRO 1-3, the bf16 optimizer)."""
    return hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")


class Engine:
    """A DeepSpeed engine driven as forward, ``backward()`` x grad_accum, ``step(lr)``; see the module doc."""

    def __init__(self, model: nn.Module, cfg: EngineConfig):
        deepspeed = _import_deepspeed()
        self.cfg = cfg
        self.rank, self.world_size = init_distributed()
        config = deepspeed_config(cfg)
        self.compute_dtype = torch.bfloat16 if config["bf16"]["enabled"] else torch.float32
        # fp32 stage 0: step() checks the norm first (DeepSpeed does not) and then clips with it, the same
        # formula as DeepSpeed's clip_grad_norm_, so DeepSpeed is told not to compute it a second time
        plain = cfg.zero_stage == 0 and not config["bf16"]["enabled"]
        if plain:
            config["gradient_clipping"] = 0.0
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.ds, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=config)
        self.module: nn.Module = self.ds.module  # under ZeRO-3 its parameters are partitioned: call the engine
        self.device = torch.device(self.ds.device)
        self._adam = _inner_adamw(self.ds.optimizer)
        self._plain = self.ds.optimizer is self._adam  # fp32 stage 0: DeepSpeed adds no wrapper
        if self._plain != plain:
            raise RuntimeError(f"expected DeepSpeed {'without' if plain else 'with'} an optimizer wrapper at "
                               f"ZeRO-{cfg.zero_stage}, bf16={config['bf16']['enabled']}")
        self._params = trainable
        # one plain rank has nothing to reduce: its backward skips DeepSpeed's gradient all-reduce
        self._solo = plain and self.world_size == 1
        # bf16 stage 0 (FP16_UnfusedOptimizer) keeps an fp32 master per parameter, and its constructor
        # runs one AdamW step on zero gradients; undo that so Adam's step count starts at 0 as elsewhere.
        self._masters: dict[nn.Parameter, torch.Tensor] = {}
        if hasattr(self.ds.optimizer, "fp32_groups") and hasattr(self.ds.optimizer, "fp16_groups"):
            for lps, hps in zip(self.ds.optimizer.fp16_groups, self.ds.optimizer.fp32_groups):
                for lp, hp in zip(lps, hps):
                    self._masters[lp] = hp
                    hp.data.copy_(lp.data)
            self._adam.state.clear()
        self._micro = 0  # backward() calls in the current step

    # ---- training

    def __call__(self, *args, **kwargs):
        """The module's forward through DeepSpeed (floating inputs are the caller's to cast to compute_dtype)."""
        return self.ds(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        if self._micro == self.cfg.grad_accum:
            raise RuntimeError(f"backward() called more than grad_accum={self.cfg.grad_accum} times before step()")
        self._micro += 1
        # The last micro-batch of a step reduces the gradients; DeepSpeed scales the loss by 1/grad_accum.
        self.ds.set_gradient_accumulation_boundary(self._micro == self.cfg.grad_accum)
        with self.ds.no_sync() if self._solo else contextlib.nullcontext():
            self.ds.backward(loss)

    def step(self, lr: float) -> dict:
        """Apply one AdamW step (after grad_accum backward() calls) unless the global grad norm is not finite."""
        if self._micro != self.cfg.grad_accum:
            raise RuntimeError(f"step() after {self._micro} backward() calls; grad_accum={self.cfg.grad_accum}")
        self._micro = 0
        for group in self._adam.param_groups:
            group["lr"] = lr
        if self._plain:  # DeepSpeed neither checks nor reports the norm here; grads are already all-reduced
            grads = [p.grad for p in self._params if p.grad is not None]
            # DeepSpeed's clip_grad_norm_: sqrt(sum of squared per-tensor norms), coef min(1, max / (norm + 1e-6))
            total = torch.stack(torch._foreach_norm(grads)).pow(2).sum().pow(0.5) if grads else torch.zeros(())
            norm = float(total)
            if not math.isfinite(norm):
                self.discard()
                return {"grad_norm": norm, "skipped": True}
            if self.cfg.grad_clip > 0 and grads:
                torch._foreach_mul_(grads, torch.clamp(self.cfg.grad_clip / (total + 1e-6), max=1.0))
            self.ds.step()  # AdamW (DeepSpeed's own clipping is off: see __init__)
            return {"grad_norm": norm, "skipped": False}
        self.ds.step()  # ZeRO / bf16: an all-reduced norm; inf or nan -> no update, gradients dropped
        norm = self.ds.get_global_grad_norm()
        return {"grad_norm": float(norm) if norm is not None else math.nan,
                "skipped": bool(getattr(self.ds.optimizer, "overflow", False))}

    def discard(self) -> None:
        """Drop the gradients accumulated in this step; the next backward() starts a fresh step."""
        self._micro = 0
        optimizer = self.ds.optimizer
        # What DeepSpeed itself does when it skips an overflowing step: zero_grad (ZeRO-3 also rewinds
        # its micro-step counter there), and ZeRO-1/2 drop the reduced partitions they accumulate across
        # micro-batches, so the next backward starts from nothing.
        if hasattr(optimizer, "_release_preflattened_grad_buffers"):
            optimizer._release_preflattened_grad_buffers()
        optimizer.zero_grad(set_to_none=True)
        for name in ("averaged_gradients", "all_grad_tensors"):
            accumulated = getattr(optimizer, name, None)
            for group in accumulated if isinstance(accumulated, dict) else ():
                accumulated[group] = None

    # ---- collectives

    def all_finite(self, x: torch.Tensor | float) -> bool:
        """True on every rank iff x is finite on every rank."""
        finite = bool(torch.isfinite(x).all()) if torch.is_tensor(x) else math.isfinite(x)
        flag = torch.tensor([1.0 if finite else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() == 1.0)

    def all_reduce_mean(self, x: float) -> float:
        t = torch.tensor([float(x)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world_size

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    # ---- full state (collective: every rank calls, every rank gets the same tensors)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Full fp32 CPU weights (the fp32 masters where DeepSpeed keeps them) under the module's names."""
        out, done = {}, {}
        for name, t in self.module.state_dict(keep_vars=True).items():
            if isinstance(t, nn.Parameter):
                if id(t) not in done:  # tied weights: gather once
                    done[id(t)] = self._get_full(t)
                out[name] = done[id(t)]
            else:
                out[name] = (t.float() if t.is_floating_point() else t).detach().cpu().clone()
        return out

    def full_optimizer_state(self) -> dict[str, torch.Tensor]:
        """AdamW's moments as full fp32 CPU tensors ("exp_avg/<name>", "exp_avg_sq/<name>") and "step"."""
        self._ensure_adam_state()
        out = {f"{key}/{name}": self._get_full(p, key) for name, p in self._trainable() for key in _ADAM_KEYS}
        steps = [int(s["step"]) for s in self._adam.state.values() if "step" in s]
        out["step"] = torch.tensor(max(steps, default=0), dtype=torch.int64)
        return out

    def load_full_state(self, model_state: Mapping[str, torch.Tensor],
                        optimizer_state: Mapping[str, torch.Tensor] | None) -> None:
        """Inverse of full_state_dict / full_optimizer_state, at any world size and ZeRO stage.

        ``optimizer_state=None`` loads the weights only and leaves AdamW's state as it is.
        """
        _check_names("model_state", model_state, self.module.state_dict(keep_vars=True).keys())
        trainable = self._trainable()
        if optimizer_state is not None:
            expected = [f"{key}/{name}" for name, _ in trainable for key in _ADAM_KEYS] + ["step"]
            _check_names("optimizer_state", optimizer_state, expected)
            self._ensure_adam_state()
        # 1. the fp32 masters and AdamW's moments (partitioned under ZeRO: each rank keeps its share)
        for name, p in trainable:
            self._set_full(p, model_state[name])
            if optimizer_state is not None:
                for key in _ADAM_KEYS:
                    self._set_full(p, optimizer_state[f"{key}/{name}"], key)
        # 2. the weights the module computes with (bf16 copies; under ZeRO-3, gathered then re-partitioned)
        deepspeed = _import_deepspeed()
        for name, t in self.module.state_dict(keep_vars=True).items():
            value = model_state[name].to(self.device)
            with deepspeed.zero.GatheredParameters([t], modifier_rank=0, enabled=hasattr(t, "ds_id")):
                t.data.copy_(value.reshape(t.data.shape))
        # 3. Adam's step count (its bias correction)
        if optimizer_state is not None:
            for state in self._adam.state.values():
                state["step"].fill_(int(optimizer_state["step"]))

    # ---- helpers

    def _trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]

    def _ensure_adam_state(self) -> None:
        """Create AdamW's (lazy) state before its first step, as torch would, so it can be read and set."""
        hps = [p for g in self._adam.param_groups for p in g["params"]]
        hps += list(getattr(self.ds.optimizer, "fp32_partitioned_groups_flat", []))  # ZeRO-3 steps these
        capturable = any(g.get("capturable") or g.get("fused") for g in self._adam.param_groups)
        scalar_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        for hp in hps:
            if not self._adam.state.get(hp):
                step = torch.zeros((), dtype=scalar_dtype, device=hp.device if capturable else "cpu")
                self._adam.state[hp] = {"step": step, **{key: torch.zeros_like(hp) for key in _ADAM_KEYS}}
        # ZeRO 1/2 and the bf16 optimizer link parameter fragments to the state after the first step.
        if hasattr(self.ds.optimizer, "_lazy_init_hp_params_optimizer_state"):
            self.ds.optimizer._lazy_init_hp_params_optimizer_state()

    def _get_full(self, p: nn.Parameter, key: str | None = None) -> torch.Tensor:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        if _zero_managed(p):
            t = safe_get_full_fp32_param(p) if key is None else safe_get_full_optimizer_state(p, key)
            if t is None:  # a frozen ZeRO-3 parameter: no fp32 copy, gather the weight itself
                with _import_deepspeed().zero.GatheredParameters([p]):
                    t = p.data.clone()
        else:
            hp = self._masters.get(p, p)
            t = hp if key is None else self._adam.state[hp][key]
        return t.detach().float().cpu().clone()

    def _set_full(self, p: nn.Parameter, value: torch.Tensor, key: str | None = None) -> None:
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        value = value.to(self.device, torch.float32)
        if _zero_managed(p):
            if key is None:
                safe_set_full_fp32_param(p, value)
            else:
                safe_set_full_optimizer_state(p, value, key)
        else:
            hp = self._masters.get(p, p)
            target = hp if key is None else self._adam.state[hp][key]
            target.data.copy_(value.reshape(target.shape))


def _check_names(what: str, given: Mapping, expected) -> None:
    expected, given = set(expected), set(given)
    if given != expected:
        missing, unexpected = sorted(expected - given), sorted(given - expected)
        raise KeyError(f"{what} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
