"""The DiT trainer: exact resume after SIGKILL, the NaN guard, checkpoints, 2 ranks = 1 rank."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from stepvideo.training import checkpoint as ckpt
from stepvideo.training.dit_trainer import DiTTrainConfig, NonFiniteLossError, make_micro_batch, train_dit

RUNNER = REPO / "tests" / "unit" / "training" / "_dit_train_run.py"


def _build_cache(root: Path, clips: int, images: int, size: int, low: int) -> Path:
    from stepvideo.data.latent_cache import build_latent_cache
    from stepvideo.data.manifest import read_manifest
    from stepvideo.data.synth import SynthConfig, generate
    from stepvideo.models.text_encoders import TextEncoder
    from stepvideo.models.tiny_text import build_tiny_text_encoders
    from stepvideo.models.vae import VAEConfig, VideoVAE

    manifest = generate(SynthConfig(clips=clips, images=images, height=size, width=size, frames=17,
                                    degraded_fraction=0.25), root / "data", progress=False)
    rows = read_manifest(manifest)
    paths = build_tiny_text_encoders(sorted({r["caption"] for r in rows}), root / "enc", llm_dim=64, clip_dim=32,
                                     layers=1, heads=2, seed=0, vocab_size=512)
    encoders = {"llm": TextEncoder.from_pretrained(str(paths["llm"]), kind="llm"),
                "clip": TextEncoder.from_pretrained(str(paths["clip"]), kind="clip")}
    torch.manual_seed(0)
    vae = VideoVAE(VAEConfig.tiny())
    return build_latent_cache(rows, manifest.parent, vae, encoders, root / "cache", data_version="test",
                              vae_version="tiny-0", low_res=(low, low), progress=False)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """A latent cache of 4 clips + 4 stills at 32x32 (low-res 16x16), tiny VAE and text encoders."""
    return _build_cache(tmp_path_factory.mktemp("dit-cache"), 4, 4, 32, 16)


def _config(cache_dir: Path, **kw) -> DiTTrainConfig:
    from stepvideo.data.latent_cache import LatentCache
    from stepvideo.models.dit import DiTConfig

    cache = LatentCache(cache_dir)
    z = int(cache.meta["z_channels"])
    model = DiTConfig.preset("demo", in_channels=z, out_channels=z, caption_channels=[64, 32]).to_dict()
    base = dict(model=model, steps=8, batch_size=4, lr=1e-3, warmup_steps=2, checkpoint_every=2, log_every=1,
                keep_checkpoints=2, caption_dropout=0.25, seed=3)
    base.update(kw)
    return DiTTrainConfig(**base)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


def _launch(cfg: DiTTrainConfig, cache_dir: Path, out: Path, pace: float = 0.0, nproc: int = 1) -> subprocess.Popen:
    cfg_path = out.parent / f"{out.name}-config.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [str(RUNNER), str(cfg_path), str(cache_dir), str(out), "--pace", str(pace)]
    if nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
               "--master_addr=127.0.0.1", *args]
    else:
        cmd = [sys.executable, *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def _losses(stdout: str) -> list[float]:
    line = next(x for x in stdout.splitlines() if x.startswith("LOSSES "))
    return json.loads(line[len("LOSSES "):])


def _kill_after_checkpoint(proc: subprocess.Popen, out: Path, at_least: int, timeout: float = 300) -> int:
    """SIGKILL the process group once a checkpoint of step >= at_least is complete; returns that step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        last = ckpt.latest_checkpoint(out)
        if last is not None and int(last.name.split("-")[1]) >= at_least:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return int(last.name.split("-")[1])
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before step {at_least}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("timed out waiting for a checkpoint")


@pytest.mark.slow
def test_sigkill_at_two_points_resumes_bitwise_exact(cache_dir, tmp_path):
    cfg = _config(cache_dir, steps=10, checkpoint_every=2, ema_decay=0.9)
    ref = tmp_path / "uninterrupted"
    _finish(_launch(cfg, cache_dir, ref))

    run = tmp_path / "killed"
    first = _kill_after_checkpoint(_launch(cfg, cache_dir, run, pace=0.3), run, at_least=3)
    second = _kill_after_checkpoint(_launch(cfg, cache_dir, run, pace=0.3), run, at_least=first + 3)
    assert 3 <= first < second < 10
    print(f"killed with SIGKILL after the checkpoints of steps {first} and {second} of 10")
    _finish(_launch(cfg, cache_dir, run))

    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    state_a, state_b = ckpt.load_state(ckpt.latest_checkpoint(ref)), ckpt.load_state(ckpt.latest_checkpoint(run))
    assert state_a["loss_history"] == state_b["loss_history"] and state_b["step"] == 10
    # no temporary folders are left behind, only the kept checkpoints
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest.json", "step-000008", "step-000010"]


def _corrupt_loss(monkeypatch, corrupt) -> None:
    """Make the trainer's n-th loss call (1-based) return ``corrupt(n, loss, pred)``."""
    import stepvideo.training.dit_trainer as trainer

    real, calls = trainer.flow_matching_loss, {"n": 0}

    def patched(pred, target):
        calls["n"] += 1
        return corrupt(calls["n"], real(pred, target), pred)

    monkeypatch.setattr(trainer, "flow_matching_loss", patched)


def test_nan_loss_is_skipped_and_counted(cache_dir, tmp_path, monkeypatch):
    _corrupt_loss(monkeypatch, lambda n, loss, pred: loss * float("nan") if n == 3 else loss)
    result = train_dit(_config(cache_dir, steps=5), cache_dir, tmp_path / "run", progress=False)
    assert result["skipped_steps"] == 1 and result["step"] == 5
    assert all(torch.isfinite(t).all() for t in _weights(tmp_path / "run").values())
    assert result["loss_curve"][2] != result["loss_curve"][2]  # nan recorded at the skipped step


def test_non_finite_grad_norm_skips_the_update(cache_dir, tmp_path, monkeypatch):
    # call 2: a finite value with a non-finite gradient (d sqrt(|x|)/dx at 0)
    _corrupt_loss(monkeypatch, lambda n, loss, pred:
                  loss + 0.0 * (pred - pred.detach()).abs().sqrt().sum() if n == 2 else loss)
    result = train_dit(_config(cache_dir, steps=3), cache_dir, tmp_path / "run", progress=False)
    assert result["skipped_steps"] == 1
    assert all(torch.isfinite(t).all() for t in _weights(tmp_path / "run").values())


def test_k_bad_steps_in_a_row_stop_with_the_last_good_checkpoint_intact(cache_dir, tmp_path, monkeypatch):
    _corrupt_loss(monkeypatch, lambda n, loss, pred: loss * float("inf") if n >= 4 else loss)
    out = tmp_path / "run"
    # steps 1-3 are good, 4-6 are skipped: the stop comes at step 6, before its checkpoint; step 4's
    # checkpoint holds step 3's weights (a skipped step changes nothing)
    with pytest.raises(NonFiniteLossError, match=r"3 non-finite steps in a row \(last at step 6.*step-000004"):
        train_dit(_config(cache_dir, steps=10, checkpoint_every=2, max_bad_steps=3), cache_dir, out, progress=False)
    last = ckpt.latest_checkpoint(out)
    assert last.name == "step-000004" and ckpt.load_state(last)["skipped_steps"] == 1
    weights = ckpt.load_model_state(last)
    assert all(torch.isfinite(t).all() for t in weights.values())
    from stepvideo.models.dit import StepVideoDiT

    StepVideoDiT.from_pretrained(last / "model")


def test_final_folder_loads_and_resume_refuses_another_config(cache_dir, tmp_path):
    from stepvideo.models.dit import StepVideoDiT

    out = tmp_path / "run"
    result = train_dit(_config(cache_dir, steps=3), cache_dir, out, progress=False)
    model = StepVideoDiT.from_pretrained(result["model_dir"])
    assert model.num_parameters() > 0 and result["loss_first"] == sum(result["loss_curve"]) / 3
    # re-running the same config resumes at the end: nothing more to do, same weights
    again = train_dit(_config(cache_dir, steps=3), cache_dir, out, progress=False)
    assert again["loss_curve"] == result["loss_curve"]
    with pytest.raises(ValueError, match="different training config"):
        train_dit(_config(cache_dir, steps=3, lr=5e-4), cache_dir, out, progress=False)


def test_average_last_checkpoints(cache_dir, tmp_path):
    out = tmp_path / "run"
    train_dit(_config(cache_dir, steps=6, checkpoint_every=2, average_last=3), cache_dir, out, progress=False)
    folders = ckpt.list_checkpoints(out)
    assert [f.name for f in folders] == ["step-000002", "step-000004", "step-000006"]
    states = [ckpt.load_model_state(f) for f in folders]
    final = _weights(out)
    for k in final:
        torch.testing.assert_close(final[k], (states[0][k] + states[1][k] + states[2][k]) / 3, rtol=1e-6, atol=1e-7)
    assert not torch.equal(final[k], states[-1][k])


def test_caption_dropout_uses_the_empty_prompt(cache_dir):
    from stepvideo.data.latent_cache import EMPTY_ID, LatentCache
    from stepvideo.diffusion.flow_matching import TimestepSampler

    cache = LatentCache(cache_dir)
    idx = cache.select(kinds=("image",))[:2]
    all_dropped = make_micro_batch(cache, _config(cache_dir, caption_dropout=0.999999), TimestepSampler(), idx, [0, 1], 0)
    empty = cache.text.get_one(EMPTY_ID, "llm")
    assert all_dropped["dropped"] == 2
    assert torch.equal(all_dropped["text"]["llm_emb"][0, : empty.shape[0]], empty)
    kept = make_micro_batch(cache, _config(cache_dir, caption_dropout=0.0), TimestepSampler(), idx, [0, 1], 0)
    assert kept["dropped"] == 0 and not torch.equal(kept["text"]["llm_emb"], all_dropped["text"]["llm_emb"])
    # the same (seed, step, position) draws the same sample whatever the micro-batch holds
    one = make_micro_batch(cache, _config(cache_dir), TimestepSampler(), idx[1:], [1], 0)
    two = make_micro_batch(cache, _config(cache_dir), TimestepSampler(), idx, [0, 1], 0)
    assert torch.equal(one["x_t"][0], two["x_t"][1]) and torch.equal(one["t"][0], two["t"][1])


@pytest.mark.slow
def test_two_ranks_zero2_match_one_rank_and_resume_at_one_rank(cache_dir, tmp_path):
    """2 ranks (torchrun, gloo, ZeRO-2) vs 1 rank at the same global batch: the per-step losses agree
    to float rounding (the gradient all-reduce sums in another order); tolerance 1e-4 relative."""
    cfg1 = _config(cache_dir, steps=6, checkpoint_every=3, caption_dropout=0.0, zero_stage=0)
    one = _losses(_finish(_launch(cfg1, cache_dir, tmp_path / "one")))
    cfg2 = _config(cache_dir, steps=6, checkpoint_every=3, caption_dropout=0.0, zero_stage=2)
    two_out = tmp_path / "two"
    two = _losses(_finish(_launch(cfg2, cache_dir, two_out, nproc=2)))
    assert len(one) == len(two) == 6
    print(f"2 ranks vs 1 rank: max relative loss difference {max(abs(a - b) / abs(a) for a, b in zip(one, two)):.2e}")
    for a, b in zip(one, two):
        assert abs(a - b) <= 1e-4 * max(abs(a), 1e-3), (one, two)
    assert ckpt.load_state(ckpt.latest_checkpoint(two_out))["world_size"] == 2
    # the 2-rank checkpoint of step 3 continues at 1 rank (ZeRO-0) for 3 more steps
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(two_out / "checkpoints" / "step-000003", resumed / "checkpoints" / "step-000003")
    state = ckpt.load_state(resumed / "checkpoints" / "step-000003")
    cfg_resume = _config(cache_dir, steps=6, checkpoint_every=3, caption_dropout=0.0, zero_stage=0)
    assert state["fingerprint"] == cfg_resume.fingerprint()
    out = _finish(_launch(cfg_resume, cache_dir, resumed))
    tail = _losses(out)
    for a, b in zip(tail[3:], two[3:]):
        assert abs(a - b) <= 1e-4 * max(abs(a), 1e-3), (tail, two)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_sequence_parallel_2_matches_one_rank_and_resumes_at_sp1(tmp_path, zero_stage):
    """`sp_degree: 2` on 2 ranks (torchrun, gloo, ZeRO-1/2/3: one data-parallel group whose two ranks share
    every sample's tokens) vs 1 rank: the per-step losses agree within 1e-5 relative, and the SP=2
    checkpoint of step 2 continues at 1 rank (SP=1, ZeRO-0) to the same losses. 48x48 frames: a clip is
    3x3x3 = 27 latent tokens and a still 9, so each split pads one token."""
    import shutil

    cache_dir = _build_cache(tmp_path / "cache48", 4, 4, 48, 16)
    kw = dict(steps=4, checkpoint_every=2, caption_dropout=0.0, still_share=0.5, seed=2)  # still, clip, clip, still
    one = _losses(_finish(_launch(_config(cache_dir, zero_stage=0, **kw), cache_dir, tmp_path / "one")))
    sp_out = tmp_path / "sp2"
    result = _finish(_launch(_config(cache_dir, zero_stage=zero_stage, sp_degree=2, **kw), cache_dir, sp_out, nproc=2))
    two = _losses(result)
    assert json.loads(next(x for x in result.splitlines() if x.startswith("{")))["sp_degree"] == 2
    assert len(one) == len(two) == 4
    print(f"SP=2 on 2 ranks (ZeRO-{zero_stage}) vs 1 rank: max relative loss difference "
          f"{max(abs(a - b) / abs(a) for a, b in zip(one, two)):.2e}")
    for a, b in zip(one, two):
        assert abs(a - b) <= 1e-5 * abs(a), (one, two)
    w1, w2 = _weights(tmp_path / "one"), _weights(sp_out)
    weight_diff = max(float((w1[k] - w2[k]).abs().max() / w1[k].abs().max().clamp_min(1e-12)) for k in w1)
    print(f"SP=2 vs 1 rank after 4 steps: max relative weight difference {weight_diff:.2e}")
    assert weight_diff <= 1e-4  # measured 2.8e-6: AdamW's first steps move by ~lr * sign(grad), rounding included
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(sp_out / "checkpoints" / "step-000002", resumed / "checkpoints" / "step-000002")
    tail = _losses(_finish(_launch(_config(cache_dir, zero_stage=0, **kw), cache_dir, resumed)))
    print(f"SP=2 checkpoint resumed at SP=1: max relative loss difference "
          f"{max(abs(a - b) / abs(a) for a, b in zip(tail[2:], two[2:])):.2e}")
    for a, b in zip(tail[2:], two[2:]):
        assert abs(a - b) <= 1e-5 * abs(a), (tail, two)


def test_a_bf16_init_folder_trains_from_float32_master_weights(tmp_path):
    """The release ships bf16 weights; fine-tuning from them must not train in bf16 on the CPU."""
    from stepvideo.models.dit import DiTConfig, StepVideoDiT
    from stepvideo.training.dit_trainer import initial_model

    cfg = DiTConfig.preset("demo")
    torch.manual_seed(0)
    StepVideoDiT(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = initial_model(DiTTrainConfig(model=cfg.to_dict(), init_from=str(tmp_path / "bf16")))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
