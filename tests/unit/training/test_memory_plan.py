"""The memory planner (issue 24, stepvideo.training.memory_plan): ZeRO stages divide what they
should, LoRA counts adapter parameters exactly as peft creates them, checkpointing and sequence
parallelism cut activations, the per-block keep matches autograd's saved tensors, the plan is within
the bench's tolerance of a measured peak (subprocess), and `stepvideo plan`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import load_bench
from stepvideo.cli import app
from stepvideo.errors import InputError
from stepvideo.models.dit import DiTConfig, StepVideoDiT
from stepvideo.training.lora import LoraSpec, apply_lora, lora_parameters
from stepvideo.training.memory_plan import GIB, LORA_TARGETS, block_keep_bytes, latent_tokens, plan_memory

runner = CliRunner()
BIG = dict(frames=204, height=544, width=992)


def _plan(**kw):
    return plan_memory("step-video-t2v", **{**BIG, **kw})


def test_latent_tokens_of_the_30b_geometry():
    assert latent_tokens(DiTConfig.preset("step-video-t2v"), 204, 544, 992) == (36, 34, 62)
    assert _plan().details["tokens"] == 36 * 34 * 62
    with pytest.raises(InputError, match="--frames"):
        _plan(frames=100)
    with pytest.raises(InputError, match="--height/--width"):
        _plan(height=500)


def test_zero_stages_divide_what_they_should():
    p = {z: _plan(gpus=8, zero=z).components for z in range(4)}
    one = _plan(gpus=1, zero=0).components
    assert p[0]["weights"] == p[1]["weights"] == p[2]["weights"] == one["weights"]
    assert p[0]["optimizer"] == one["optimizer"] and p[1]["optimizer"] == pytest.approx(one["optimizer"] / 8, abs=1)
    assert p[1]["gradients"] == one["gradients"] and p[2]["gradients"] == pytest.approx(one["gradients"] / 8, abs=1)
    assert p[3]["weights"] == pytest.approx(one["weights"] / 8, abs=1)
    assert p[3]["zero3 gather"] > 0 and p[2]["zero3 gather"] == 0
    assert all(p[z]["activations"] == one["activations"] for z in range(4))  # ZeRO never touches activations
    # full bf16 + AdamW: 2 B weights, 2 B grads, 4 + 4 + 4 B states per parameter
    n = _plan().details["params"]
    assert (one["weights"], one["gradients"], one["optimizer"]) == (2 * n, 2 * n, 12 * n)


@pytest.mark.parametrize("rank,targets", [(4, LORA_TARGETS), (3, ("attn1.wqkv", "ff.net.2"))])
def test_lora_counts_adapter_params_exactly_as_peft_creates_them(rank, targets):
    cfg = DiTConfig.preset("demo")
    model = apply_lora(StepVideoDiT(cfg), LoraSpec(rank=rank, alpha=float(rank), target_modules=targets))
    peft_count = sum(p.numel() for p in lora_parameters(model))
    plan = plan_memory(cfg, latent=(1, 4, 4), method="lora", rank=rank, targets=targets)
    assert plan.details["trainable"] == peft_count
    assert plan.details["params"] == sum(p.numel() for p in model.parameters())
    assert plan.components["gradients"] == 2 * peft_count


def test_checkpointing_sp_fp8_and_8bit_states_are_levers():
    off, on = _plan(checkpointing=False), _plan(checkpointing=True)
    assert on.components["activations"] < off.components["activations"] / 5
    sp1, sp8 = _plan(gpus=8, sp=1), _plan(gpus=8, sp=8)
    assert sp8.details["tokens_per_rank"] == -(-sp1.details["tokens"] // 8)
    assert sp8.components["activations"] < sp1.components["activations"] / 6
    bf, f8 = _plan(method="lora"), _plan(method="lora", weights="fp8")
    assert 0.5 < f8.components["weights"] / bf.components["weights"] < 0.55  # block Linears are ~all of it
    a, a8 = _plan(), _plan(optimizer="adamw8bit")
    n = a.details["trainable"]  # fp32 master 4 B + two 1-B states + an fp32 absmax per 2048 each
    assert a8.components["optimizer"] == pytest.approx(n * (4 + 2 + 8 / 2048), abs=1)
    assert a.components["optimizer"] == 12 * n
    with pytest.raises(InputError, match="fp8"):
        _plan(weights="fp8")  # full fine-tuning trains the base
    with pytest.raises(InputError, match="--sp"):
        _plan(gpus=8, sp=3)
    with pytest.raises(InputError, match="--gpus"):
        _plan(gpus=0)


@pytest.mark.parametrize("lora", [False, True])
def test_block_keep_matches_autograds_saved_tensors(lora):
    """Autograd's saved tensors, counted in a fresh interpreter: DeepSpeed (initialised by other
    tests in this process) patches torch functions globally and changes what autograd keeps."""
    import subprocess
    import sys
    from pathlib import Path

    bench = load_bench("bench_memory_plan")
    script = f"""
import sys, torch
sys.path.insert(0, {str(Path(bench.__file__).parent)!r})
import bench_memory_plan as bench
from stepvideo.models.dit import DiTConfig, StepVideoDiT
from stepvideo.training.lora import LoraSpec, apply_lora
torch.manual_seed(0)
model = StepVideoDiT(DiTConfig.preset("small")).train()
if {lora!r}:
    apply_lora(model, LoraSpec(rank=4, alpha=4.0))
x, t, llm, clip = bench._inputs(model.config, (2, 4, 4), 1)
print(bench.saved_block_bytes(model, x, t, llm, clip))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    saved = int(out.stdout.split()[-1])
    model = StepVideoDiT(DiTConfig.preset("small"))
    per_tok, per_text, per_pos = block_keep_bytes(model.config, 4, full=not lora, rank=4, backend="sdpa",
                                                  adapted=frozenset(LORA_TARGETS if lora else ()))
    planned = 32 * (per_tok + per_pos) + (bench.LLM_LEN + bench.CLIP_LEN) * per_text
    assert saved == pytest.approx(planned, rel=0.02)  # measured: +0.6% (full), +0.8% (LoRA)


@pytest.mark.parametrize("name", ["demo-full-ckpt", "small-lora"])
def test_plan_within_tolerance_of_measured_peak(name):
    bench = load_bench("bench_memory_plan")
    lo, hi = bench.TOLERANCE
    ratio = bench.measure(name) / bench.plan_for(name).total
    assert lo <= ratio <= hi, ratio


def test_plan_command_prints_the_table_and_verdict():
    r = runner.invoke(app, ["plan", "--preset", "step-video-t2v", "--gpus", "64", "--gpu-mem", "80", "--frames", "204",
                            "--height", "544", "--width", "992", "--zero", "3", "--checkpointing", "--sp", "8"])
    assert r.exit_code == 0, r.output
    assert "ZeRO-3, sp 8" in r.output and "checkpointing on" in r.output and "FITS" in r.output
    r = runner.invoke(app, ["plan", "--gpus", "1", "--method", "lora", "--rank", "16", "--weights", "fp8",
                            "--optimizer", "adamw8bit", "--batch", "2", "--overhead", "0"])
    assert r.exit_code == 0, r.output
    assert "lora r=16" in r.output and "batch 2" in r.output and "weights fp8, adamw8bit" in r.output
    assert "DOES NOT FIT" in r.output
    small = runner.invoke(app, ["plan", "--preset", "demo", "--frames", "17", "--height", "64", "--width", "64",
                                "--gpu-mem", "1", "--overhead", "0"])
    assert small.exit_code == 0 and "FITS" in small.output and f"of {1:.2f} GiB" in small.output
    assert GIB == 1024**3


@pytest.mark.parametrize("args,msg", [
    (["--gpus", "0"], "--gpus must be at least 1"),
    (["--preset", "nope"], "unknown DiT preset 'nope'"),
    (["--gpus", "8", "--sp", "3"], "--sp 3 must be a positive divisor"),
    (["--zero", "4"], "--zero must be 0..3"),
    (["--rank", "8"], "--rank 8 is for --method lora"),
    (["--gpu-mem", "0"], "--gpu-mem must be positive"),
    (["--frames", "20"], "--frames must be 1 or a multiple of 17"),
    (["--method", "qlora"], "--method must be one of"),
])
def test_bad_input_is_one_line(args, msg):
    r = runner.invoke(app, ["plan", *args])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], r.output


def test_plan_help_names_every_flag():
    r = runner.invoke(app, ["plan", "--help"], terminal_width=200)
    assert r.exit_code == 0 and "Usage" in r.output
    for flag in ("--preset", "--gpus", "--gpu-mem", "--frames", "--height", "--width", "--batch", "--method", "--rank",
                 "--zero", "--checkpointing", "--sp", "--weights", "--optimizer", "--overhead"):
        assert flag in r.output, flag


@pytest.mark.parametrize("extra", [
    ["--preset", "small", "--frames", "17", "--height", "64", "--width", "64"], ["--gpus", "8", "--zero", "1"],
    ["--gpu-mem", "40"], ["--frames", "102"], ["--height", "272"], ["--width", "496"], ["--batch", "2"],
    ["--method", "lora"], ["--method", "lora", "--rank", "8"], ["--zero", "1"], ["--checkpointing"],
    ["--gpus", "8", "--sp", "8"], ["--weights", "fp32"], ["--optimizer", "adamw8bit"], ["--overhead", "0"],
], ids=lambda e: " ".join(e))
def test_every_flag_changes_the_plan(extra):
    base = runner.invoke(app, ["plan"] + (["--gpus", "8"] if "--gpus" in extra else [])
                         + (["--method", "lora"] if "--rank" in extra else []))
    r = runner.invoke(app, ["plan", *extra])
    assert base.exit_code == 0 and r.exit_code == 0, r.output
    assert r.output != base.output
