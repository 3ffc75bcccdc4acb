"""stepvideo.training.engine on the CPU: DeepSpeed ZeRO 0-3 at one rank (gloo, fp32), and 2 ranks under torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from _engine_ranks import GLOBAL_MICRO_BATCH, GRAD_ACCUM, LR, STEPS_BEFORE, global_batches, make_model, run, train_step
from conftest import REPO
from stepvideo.training.engine import Engine, EngineConfig, _builtin_config, deepspeed_config, init_distributed

STAGES = [0, 1, 2, 3]


def make_engine(stage: int, model: torch.nn.Module | None = None, **overrides) -> Engine:
    cfg = EngineConfig(zero_stage=stage, micro_batch_size=GLOBAL_MICRO_BATCH, grad_accum=GRAD_ACCUM, lr=LR)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return Engine(make_model() if model is None else model, cfg)


def train(engine: Engine, batches) -> list[dict]:
    return [train_step(engine, step) for step in batches]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def assert_equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"not bitwise equal: {unequal}, max diff {max_diff(a, b)}"


def snapshot(engine: Engine) -> tuple[dict, dict]:
    return engine.full_state_dict(), engine.full_optimizer_state()


@pytest.fixture
def partitioned_zero3(tmp_path) -> str:
    """zero3.json with every parameter partitioned (the default keeps small ones whole on each rank)."""
    conf = json.loads((REPO / "infra/deepspeed/zero3.json").read_text())
    conf["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = tmp_path / "zero3_partitioned.json"
    path.write_text(json.dumps(conf))
    return str(path)


# ------------------------------------------------------------------------------------- set-up


def test_import_is_cheap_and_quiet():
    code = "import sys, stepvideo.training.engine; assert 'deepspeed' not in sys.modules"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""


def test_init_distributed_is_idempotent():
    assert init_distributed() == (0, 1)
    assert init_distributed() == (0, 1)
    assert torch.distributed.get_backend() == "gloo"


def test_config_defaults_and_overrides(tmp_path):
    for stage in STAGES:  # the built-in fallback is the repo's file
        assert _builtin_config(stage) == json.loads((REPO / f"infra/deepspeed/zero{stage}.json").read_text())
    conf = deepspeed_config(EngineConfig(zero_stage=2, micro_batch_size=3, grad_accum=4, grad_clip=0.0, lr=0.5,
                                         betas=(0.8, 0.9), weight_decay=0.1))
    assert conf["zero_optimization"]["stage"] == 2 and conf["zero_optimization"]["overlap_comm"] is True
    assert conf["bf16"]["enabled"] is False  # auto: fp32 on the CPU
    assert (conf["train_micro_batch_size_per_gpu"], conf["gradient_accumulation_steps"], conf["gradient_clipping"]) \
        == (3, 4, 0.0)
    assert conf["optimizer"] == {"type": "AdamW", "params": {"lr": 0.5, "betas": [0.8, 0.9], "weight_decay": 0.1,
                                                             "torch_adam": True}}
    assert deepspeed_config(EngineConfig(precision="bf16"))["bf16"]["enabled"] is True
    custom = tmp_path / "ds.json"
    custom.write_text(json.dumps({"train_batch_size": 64, "zero_optimization": {"stage": 3, "reduce_bucket_size": 7}}))
    conf = deepspeed_config(EngineConfig(zero_stage=1, config_file=str(custom)))
    assert "train_batch_size" not in conf and conf["zero_optimization"] == {"stage": 1, "reduce_bucket_size": 7}
    with pytest.raises(ValueError):
        deepspeed_config(EngineConfig(precision="fp16"))
    with pytest.raises(FileNotFoundError):
        deepspeed_config(EngineConfig(config_file=str(tmp_path / "missing.json")))


# ------------------------------------------------------------------------------------ one rank


@pytest.mark.parametrize("stage", STAGES)
def test_training_decreases_loss_and_names_match(stage):
    engine = make_engine(stage)
    assert (engine.rank, engine.world_size, engine.device.type, engine.compute_dtype) == (0, 1, "cpu", torch.float32)
    batch = global_batches(1)[0]
    losses = [train_step(engine, batch)["loss"] for _ in range(15)]  # fit one batch
    assert losses[-1] < 0.5 * losses[0], losses
    state, optim = snapshot(engine)
    assert list(state) == list(make_model().state_dict())
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in state.values())
    names = [n for n, _ in make_model().named_parameters()]
    assert set(optim) == {f"{k}/{n}" for n in names for k in ("exp_avg", "exp_avg_sq")} | {"step"}
    assert optim["step"].dtype == torch.int64 and optim["step"].ndim == 0 and int(optim["step"]) == 15
    assert all(optim[f"exp_avg/{n}"].shape == state[n].shape for n in names)


@pytest.mark.parametrize("grad_clip", [0.0, 0.05, 100.0])
def test_stage0_clips_and_steps_like_a_torch_loop(grad_clip):
    """fp32 stage 0 clips in step() (DeepSpeed's own clipping is off there): the same updates as a torch
    loop with clip_grad_norm_ and AdamW, the pre-clip norm reported, clipping off at grad_clip 0."""
    engine = make_engine(0, grad_clip=grad_clip)
    ref = make_model()
    opt = torch.optim.AdamW(ref.parameters(), lr=LR, betas=(0.9, 0.999), weight_decay=0.0)
    clipped = []
    for step in global_batches(4):
        stats = train_step(engine, step)
        opt.zero_grad(set_to_none=True)
        for x, y in step:
            (F.mse_loss(ref(x), y) / GRAD_ACCUM).backward()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), grad_clip if grad_clip > 0 else float("inf"))
        opt.step()
        assert stats["grad_norm"] == pytest.approx(float(norm), rel=1e-5) and not stats["skipped"]
        clipped.append(float(norm) > grad_clip > 0)
    assert max_diff(engine.full_state_dict(), ref.state_dict()) < 1e-6
    assert all(clipped) == (grad_clip == 0.05) and any(clipped) == (grad_clip == 0.05)


@pytest.mark.parametrize("stage", [0, 1, 2, 3, "3-partitioned"])
def test_resume_is_bitwise_exact(stage, partitioned_zero3):
    """N steps == k steps, full states into a new engine and model, N-k steps: bitwise, weights and AdamW."""
    overrides = {"weight_decay": 0.1}
    if stage == "3-partitioned":
        stage, overrides["config_file"] = 3, partitioned_zero3
    batches = global_batches(5)
    straight = make_engine(stage, **overrides)
    train(straight, batches)

    first = make_engine(stage, **overrides)
    train(first, batches[:2])
    model_state, optim_state = snapshot(first)
    resumed = make_engine(stage, **overrides)
    resumed.load_full_state(model_state, optim_state)
    assert_equal_states(snapshot(resumed)[0], model_state)
    assert_equal_states(snapshot(resumed)[1], optim_state)
    train(resumed, batches[2:])
    for a, b in zip(snapshot(straight), snapshot(resumed)):
        assert_equal_states(a, b)


@pytest.mark.parametrize(("saved_at", "loaded_at"), [(2, 0), (0, 3), (3, 1)])
def test_checkpoint_moves_between_stages(saved_at, loaded_at):
    batches = global_batches(4)
    src = make_engine(saved_at)
    train(src, batches[:2])
    dst = make_engine(loaded_at)
    dst.load_full_state(*snapshot(src))
    assert_equal_states(snapshot(dst)[0], snapshot(src)[0])
    assert_equal_states(snapshot(dst)[1], snapshot(src)[1])
    train(src, batches[2:])
    train(dst, batches[2:])
    # stage 0 clips with DeepSpeed's clip_grad_norm_, ZeRO with its own fused scale: last-bit differences
    assert max_diff(snapshot(src)[0], snapshot(dst)[0]) < 1e-6


@pytest.mark.parametrize("stage", STAGES)
def test_non_finite_gradient_skips_the_step(stage):
    engine, reference = make_engine(stage), make_engine(stage)
    batches = global_batches(3)
    train(engine, batches[:1])
    train(reference, batches[:1])
    before = snapshot(engine)
    (x, y), rest = batches[1][0], batches[1][1:]
    x = x.clone()
    x[0, 0] = float("nan")
    loss = F.mse_loss(engine(x), y)
    assert not engine.all_finite(loss)
    engine.backward(loss)
    for xr, yr in rest:
        engine.backward(F.mse_loss(engine(xr), yr))
    stats = engine.step(LR)
    assert stats["skipped"] is True and not torch.isfinite(torch.tensor(stats["grad_norm"]))
    for a, b in zip(before, snapshot(engine)):
        assert_equal_states(a, b)  # neither the weights nor AdamW's state (nor its step count) moved
    train(engine, batches[2:])  # ... and the bad step left nothing behind
    train(reference, batches[2:])
    for a, b in zip(snapshot(engine), snapshot(reference)):
        assert_equal_states(a, b)


@pytest.mark.parametrize("stage", STAGES)
def test_discard_drops_the_accumulated_step(stage):
    engine, reference = make_engine(stage), make_engine(stage)
    batches = global_batches(3)
    stray = batches[2][0]
    engine.backward(F.mse_loss(engine(stray[0]), stray[1]))  # mid-step
    engine.discard()
    train(engine, batches[:1])
    for x, y in batches[2]:  # a full accumulation, discarded before step()
        engine.backward(F.mse_loss(engine(x), y))
    engine.discard()
    train(engine, batches[1:2])
    train(reference, batches[:2])
    for a, b in zip(snapshot(engine), snapshot(reference)):
        assert_equal_states(a, b)


def test_step_needs_a_full_accumulation():
    engine = make_engine(0)
    (x, y), _ = global_batches(1)[0]
    engine.backward(F.mse_loss(engine(x), y))
    with pytest.raises(RuntimeError, match="grad_accum"):
        engine.step(LR)
    engine.backward(F.mse_loss(engine(x), y))
    with pytest.raises(RuntimeError, match="grad_accum"):
        engine.backward(F.mse_loss(engine(x), y))
    assert engine.step(LR)["skipped"] is False


def test_collectives_and_strict_loading():
    engine = make_engine(0)
    assert engine.all_finite(1.0) and engine.all_finite(torch.ones(3))
    assert not engine.all_finite(float("inf")) and not engine.all_finite(torch.tensor([0.0, float("nan")]))
    assert engine.all_reduce_mean(2.5) == 2.5
    engine.barrier()
    state, optim = snapshot(engine)
    with pytest.raises(KeyError):
        engine.load_full_state({k: v for k, v in state.items() if k != "0.bias"}, None)
    with pytest.raises(KeyError):
        engine.load_full_state(state, {k: v for k, v in optim.items() if k != "step"})
    engine.load_full_state(state, None)  # weights only


@pytest.mark.parametrize("stage", [0, 2, "3-partitioned"])
def test_frozen_parameters_and_buffers_round_trip(stage, partitioned_zero3):
    def model():
        m = make_model()
        m[0].requires_grad_(False)
        m.register_buffer("scale", torch.tensor([2.0]))
        return m

    stage, extra = (3, {"config_file": partitioned_zero3}) if stage == "3-partitioned" else (stage, {})
    engine = make_engine(stage, model(), **extra)
    train(engine, global_batches(2))
    state, optim = snapshot(engine)
    assert list(state) == list(model().state_dict())
    assert torch.equal(state["0.weight"], model().state_dict()["0.weight"])  # frozen: not trained
    assert torch.equal(state["scale"], torch.tensor([2.0]))
    assert not any(k.endswith("/0.weight") or k.endswith("/0.bias") for k in optim)
    changed = {k: v + 1 if k in ("0.weight", "scale") else v for k, v in state.items()}
    resumed = make_engine(stage, model(), **extra)
    resumed.load_full_state(changed, optim)
    assert_equal_states(snapshot(resumed)[0], changed)


@pytest.mark.parametrize("stage", [0, 2])
def test_bf16_on_cpu_only_when_asked(stage):
    engine = make_engine(stage, precision="bf16")
    assert engine.compute_dtype == torch.bfloat16 and next(engine.module.parameters()).dtype == torch.bfloat16
    batches = global_batches(3)
    train(engine, batches[:1])
    resumed = make_engine(stage, precision="bf16")
    resumed.load_full_state(*snapshot(engine))
    assert int(snapshot(resumed)[1]["step"]) == 1  # bf16 stage 0's own warm-up step is undone
    train(engine, batches[1:])
    train(resumed, batches[1:])
    for a, b in zip(snapshot(engine), snapshot(resumed)):
        assert_equal_states(a, b)


# ----------------------------------------------------------------------------------- two ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_match_one_rank(tmp_path, stage):
    """2 ranks == 1 rank at the same global batch; their checkpoint resumes at 2 ranks and at 1 rank, ZeRO-0."""
    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(REPO / "tests" / "unit" / "training" / "_engine_ranks.py"),
           str(tmp_path), str(stage)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    one_rank = make_engine(2)
    one = run(one_rank)  # the same scenario at one rank, ZeRO-2
    for log in ranks:
        assert log["resumed_bitwise_equal"] is True  # loaded at 2 ranks: bitwise the uninterrupted run
        assert log["all_finite"] is False and log["bad_step"]["skipped"] is True
        assert log["bad_step_changed_weights"] is False and log["last_step"]["skipped"] is False
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # full states agree across ranks
    two = ranks[0]["steps"] + [ranks[0]["last_step"]]
    ref = one["steps"] + [one["last_step"]]
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(two, ref))
    norm_diff = max(abs(a["grad_norm"] - b["grad_norm"]) for a, b in zip(two, ref))
    final, last = load_file(tmp_path / "final.safetensors"), load_file(tmp_path / "last.safetensors")
    last_diff = max_diff(one_rank.full_state_dict(), last)

    # the 2-rank checkpoint taken after STEPS_BEFORE steps, continued at 1 rank, ZeRO-0
    resumed = make_engine(0)
    resumed.load_full_state(load_file(tmp_path / "model.safetensors"), load_file(tmp_path / "optim.safetensors"))
    assert int(resumed.full_optimizer_state()["step"]) == STEPS_BEFORE
    train(resumed, global_batches(len(two))[STEPS_BEFORE:len(two) - 1])
    resume_diff = max_diff(resumed.full_state_dict(), final)

    reference = make_engine(2)
    train(reference, global_batches(len(two))[:len(two) - 1])
    weight_diff = max_diff(reference.full_state_dict(), final)
    print(f"\n2 ranks (ZeRO-{stage}) vs 1 (ZeRO-2): max |loss| diff {loss_diff:.2e}, |grad norm| {norm_diff:.2e}, "
          f"weights {weight_diff:.2e}; 2-rank checkpoint resumed at 1 rank ZeRO-0: weights {resume_diff:.2e}; "
          f"after the skipped and the discarded step {last_diff:.2e}")
    assert loss_diff < 1e-5 and norm_diff < 1e-5
    assert max(weight_diff, resume_diff, last_diff) < 1e-5
