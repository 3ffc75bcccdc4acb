"""The parts every DiT training loop shares (`dit_trainer.train_dit`, `dpo_trainer.train_dpo`), so
each loop stays readable top to bottom and says only what is its own:

- `build_engine`: the Engine (DeepSpeed ZeRO 0-3 or plain AdamW) from the trainer config's fields;
- `check_batch_split` / `rank_micro_batches`: the global batch split over ranks, then micro-batches;
- `RunCheckpoints`: resume from the newest checkpoint (refusing one written by another config) and
  save one: weights, optimizer moments, RNG states and the loop's own state;
- `StepCounter`: the step, the skipped steps and the non-finite guard (`max_bad_steps` in a row
  stop the run with `NonFiniteLossError`, naming the last good checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from stepvideo.errors import InputError
from stepvideo.models.io import state_problems
from stepvideo.training import checkpoint as ckpt


class NonFiniteLossError(RuntimeError):
    """Too many non-finite steps in a row; the message names the last good checkpoint."""


def build_engine(model: torch.nn.Module, cfg: Any, world: int) -> Any:
    """The Engine for `model` from a trainer config's engine fields (`zero_stage`, `precision`,
    `batch_size`, `grad_accum`, `grad_clip`, `lr`, `betas`, `weight_decay`, `deepspeed_config`)."""
    from stepvideo.training.engine import Engine, EngineConfig

    return Engine(model, EngineConfig(
        zero_stage=cfg.zero_stage, precision=cfg.precision,
        micro_batch_size=max(cfg.batch_size // (world * cfg.grad_accum), 1), grad_accum=cfg.grad_accum,
        grad_clip=cfg.grad_clip, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
        config_file=cfg.deepspeed_config))


def check_batch_split(name: str, sizes: set[int] | list[int], world: int, grad_accum: int) -> None:
    """Every global batch size must split evenly over ranks x micro-batches."""
    bad = sorted(s for s in set(sizes) if s % (world * grad_accum))
    if bad:
        what = f"batch sizes {bad} are" if len(set(sizes)) > 1 else f"batch_size {bad[0]} is"
        raise InputError(f"{name}: {what} not divisible by ranks x grad_accum = {world} x {grad_accum}")


def rank_micro_batches(batch_len: int, rank: int, world: int, grad_accum: int) -> list[list[int]]:
    """Positions in the global batch for each of this rank's micro-batches: rank r takes r::world,
    then `grad_accum` equal slices of those."""
    mine = list(range(rank, batch_len, world))
    per_micro = len(mine) // grad_accum
    return [mine[m * per_micro:(m + 1) * per_micro] for m in range(grad_accum)]


@dataclass
class StepCounter:
    """The loop's step, its skipped (non-finite) steps and how many came in a row."""

    step: int = 0
    skipped: int = 0
    bad_in_row: int = 0

    def count(self, finite: bool, max_bad_steps: int, name: str, hint: str, out: Path,
              on_stop: Callable[[], None] = lambda: None) -> None:
        """One optimizer step done; a non-finite one counts, and `max_bad_steps` in a row stop the
        run (`on_stop` first: closing a progress bar) with the last good checkpoint named."""
        self.step += 1
        if finite:
            self.bad_in_row = 0
            return
        self.skipped += 1
        self.bad_in_row += 1
        if self.bad_in_row >= max_bad_steps:
            on_stop()
            good = ckpt.latest_checkpoint(out)
            raise NonFiniteLossError(
                f"{name}: {self.bad_in_row} non-finite steps in a row (last at step {self.step}, {self.skipped} "
                f"skipped in all); stopped. The last good checkpoint is {good or 'none (no checkpoint yet)'}: "
                f"{hint}, then re-run to resume from it")

    def state(self) -> dict[str, int]:
        return {"skipped_steps": self.skipped, "bad_in_row": self.bad_in_row}


class RunCheckpoints:
    """Checkpoints of one run in `out` (rank 0 writes; every rank reads): the engine's full weights
    and optimizer moments, the RNG states, the config's `fingerprint`, the loop's own state.

    `only` (names of the module's state dict): the checkpoints hold just those weights (a LoRA
    adapter's tensors on a frozen base); on resume the rest keep the values the module starts with,
    which the caller guarantees are the same (the base folder is part of the run's key)."""

    def __init__(self, out: Path, engine: Any, model_config: dict, fingerprint: str, rank: int, world: int,
                 keep: int, only: set[str] | None = None) -> None:
        self.out, self.engine, self.model_config = out, engine, model_config
        self.fingerprint, self.rank, self.world, self.keep = fingerprint, rank, world, keep
        self.only = only

    def resume(self, resume: bool, config: dict, mismatch: str) -> tuple[Path | None, dict, StepCounter]:
        """Load the newest checkpoint into the engine and the RNGs: (its folder, its state, the
        counter at its step). None, {}, a fresh counter when there is none; then rank 0 writes
        `train_config.json`. A checkpoint of another fingerprint raises InputError(`mismatch`)."""
        last = ckpt.latest_checkpoint(self.out) if resume else None
        if last is None:
            if self.rank == 0:
                self.out.mkdir(parents=True, exist_ok=True)
                ckpt.atomic_write_text(self.out / "train_config.json",
                                       json.dumps(config, indent=2, sort_keys=True) + "\n")
            return None, {}, StepCounter()
        state = ckpt.load_state(last)
        if state.get("fingerprint") != self.fingerprint:
            raise InputError(f"{last}: {mismatch}; use a fresh out_dir or delete it")
        weights = ckpt.load_model_state(last)
        module = self.engine.module.state_dict(keep_vars=True)  # a ZeRO-3 partition (ds_id) has no full shape
        if self.only is not None:
            module = {k: v for k, v in module.items() if k in self.only}
        problems = state_problems({k: None if hasattr(v, "ds_id") else v for k, v in module.items()}, weights)
        if problems:
            raise InputError(f"{ckpt.model_weights_file(last)}: does not fit the model: " + "; ".join(problems))
        if self.only is not None:  # the frozen rest as the module holds it
            weights = {**self.engine.full_state_dict(), **weights}
        self.engine.load_full_state(weights, ckpt.load_tensors(last, "optimizer"))
        ckpt.restore_rng(ckpt.load_tensors(last, "rng"), state["rng"])
        counter = StepCounter(int(state["step"]), int(state["skipped_steps"]), int(state.get("bad_in_row", 0)))
        return last, state, counter

    def save(self, step: int, counter: StepCounter, state: dict[str, Any],
             groups: dict[str, dict[str, torch.Tensor]] | None = None) -> Path | None:
        """Checkpoint `step`: every rank gathers the full weights and moments, rank 0 writes them with
        the RNG states, `groups` (e.g. the EMA) and `state` (the loop's curves)."""
        weights, moments = self.engine.full_state_dict(), self.engine.full_optimizer_state()
        if self.only is not None:
            weights = {k: v for k, v in weights.items() if k in self.only}
        if self.rank != 0:
            return None
        rng_tensors, rng_data = ckpt.capture_rng()
        return ckpt.save_checkpoint(
            self.out, step, model_state=weights, model_config=self.model_config,
            tensors={"optimizer": moments, "rng": rng_tensors, **(groups or {})}, keep=self.keep,
            state={"fingerprint": self.fingerprint, **counter.state(), **state, "rng": rng_data,
                   "world_size": self.world})


__all__ = ["NonFiniteLossError", "RunCheckpoints", "StepCounter", "build_engine", "check_batch_split",
           "rank_micro_batches"]
