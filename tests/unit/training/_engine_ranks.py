"""Helper for tests/unit/training/test_engine.py: the same training run, at one rank or as each of N ranks under torchrun.

    python -m torch.distributed.run --nproc_per_node 2 tests/unit/training/_engine_ranks.py OUT_DIR [ZERO_STAGE=2]

A run (see `run`): STEPS_BEFORE steps, full state saved (rank 0 writes safetensors) and loaded into a
fresh engine that trains alongside (it must stay bitwise equal), STEPS_AFTER more, then a step whose
micro-batch is non-finite on the last rank only (must be skipped everywhere), then a half-accumulated
step that is discarded, then one more normal step. Every rank reads the same global
batch and trains on its own shard of each micro-batch, so N ranks see exactly what one rank sees.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

GLOBAL_MICRO_BATCH = 4  # samples per micro-batch, summed over ranks
GRAD_ACCUM = 2
STEPS_BEFORE, STEPS_AFTER = 3, 3
LR = 1e-2


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4))


def global_batches(steps: int, seed: int = 1) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """steps x GRAD_ACCUM micro-batches of (x, y), GLOBAL_MICRO_BATCH samples each."""
    g = torch.Generator().manual_seed(seed)
    return [[(torch.randn(GLOBAL_MICRO_BATCH, 8, generator=g), torch.randn(GLOBAL_MICRO_BATCH, 4, generator=g))
             for _ in range(GRAD_ACCUM)] for _ in range(steps)]


def shard(step_batches, rank: int, world_size: int):
    n = GLOBAL_MICRO_BATCH // world_size
    return [[(x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]) for x, y in step] for step in step_batches]


def train_step(engine, micro_batches, lr: float = LR) -> dict:
    """One optimizer step; the loss reported is the global mean over its micro-batches."""
    losses = []
    for x, y in micro_batches:
        loss = F.mse_loss(engine(x.to(engine.device, engine.compute_dtype)).float(), y.to(engine.device))
        engine.backward(loss)
        losses.append(loss.item())
    stats = engine.step(lr)
    return {**stats, "loss": engine.all_reduce_mean(sum(losses) / len(losses))}


def run(engine, out: Path | None = None, new_engine=None) -> dict:
    """The whole scenario (module doc); returns what it saw; rank 0 writes the full states under `out`.

    ``new_engine()`` builds the engine that resumes from the saved state (none: no resumed twin).
    """
    from safetensors.torch import save_file

    rank, world = engine.rank, engine.world_size
    batches = shard(global_batches(STEPS_BEFORE + STEPS_AFTER + 1), rank, world)
    log, resumed = {"steps": []}, None
    for i, step in enumerate(batches[:-1]):
        if i == STEPS_BEFORE:
            model_state, optim_state = engine.full_state_dict(), engine.full_optimizer_state()
            if out is not None and rank == 0:
                save_file(model_state, out / "model.safetensors")
                save_file(optim_state, out / "optim.safetensors")
            if new_engine is not None:
                resumed = new_engine()
                resumed.load_full_state(model_state, optim_state)
        log["steps"].append(train_step(engine, step))
        if resumed is not None:
            train_step(resumed, step)
    final = engine.full_state_dict()
    if resumed is not None:
        twin = resumed.full_state_dict(), resumed.full_optimizer_state()
        log["resumed_bitwise_equal"] = all(torch.equal(final[k], twin[0][k]) for k in final) and all(
            torch.equal(v, twin[1][k]) for k, v in engine.full_optimizer_state().items())
    # a micro-batch that is non-finite on the last rank only: every rank must agree, and skip the step
    (x, y), rest = batches[-1][0], batches[-1][1:]
    if rank == world - 1:
        x = x.clone()
        x[-1, 0] = float("inf")
    loss = F.mse_loss(engine(x.to(engine.device, engine.compute_dtype)).float(), y.to(engine.device))
    log["all_finite"] = engine.all_finite(loss)
    engine.backward(loss)
    for xr, yr in rest:
        engine.backward(F.mse_loss(engine(xr.to(engine.device, engine.compute_dtype)).float(), yr.to(engine.device)))
    log["bad_step"] = engine.step(LR)
    after_bad = engine.full_state_dict()
    log["bad_step_changed_weights"] = any(not torch.equal(final[k], after_bad[k]) for k in final)
    # half a step, discarded, then the last batch as a normal step
    engine.backward(F.mse_loss(engine(batches[0][0][0].to(engine.device, engine.compute_dtype)).float(),
                               batches[0][0][1].to(engine.device)))
    engine.discard()
    log["last_step"] = train_step(engine, batches[-1])
    last = engine.full_state_dict()
    log["checksum"] = sum(float(t.double().sum()) for t in last.values())
    if out is not None and rank == 0:
        save_file(final, out / "final.safetensors")
        save_file(last, out / "last.safetensors")
    return log


def main(out_dir: str, stage: int = 2) -> None:
    from stepvideo.training.engine import Engine, EngineConfig, init_distributed

    rank, world = init_distributed()
    cfg = EngineConfig(zero_stage=stage, micro_batch_size=GLOBAL_MICRO_BATCH // world, grad_accum=GRAD_ACCUM, lr=LR)
    engine = Engine(make_model(seed=rank), cfg)  # a different seed per rank: DeepSpeed broadcasts rank 0's
    out = Path(out_dir)
    log = run(engine, out, new_engine=lambda: Engine(make_model(seed=10 + rank), cfg))
    log.update(rank=rank, world_size=world, stage=cfg.zero_stage)
    (out / f"rank{rank}.json").write_text(json.dumps(log, indent=1))
    engine.barrier()


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
