"""LoRA through the DiT trainer (`DiTTrainConfig.lora`, the `finetune` stage's engine): checkpoints
hold the adapter and its optimizer moments only, the final folder is the base with the adapter
merged, a SIGKILLed run resumes to the same weights, 2 ranks (gloo, ZeRO-2) = 1 rank."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stepvideo.training import checkpoint as ckpt
from stepvideo.training.dit_trainer import DiTTrainConfig, train_dit
from test_dit_trainer import _config, _finish, _kill_after_checkpoint, _launch, _losses, _weights
from test_dit_trainer import cache_dir  # noqa: F401  (the module's latent cache fixture)

LORA = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["attn1.wqkv", "attn2.wo", "ff.net.2"]}


@pytest.fixture(scope="module")
def base_dir(cache_dir, tmp_path_factory) -> Path:  # noqa: F811
    """A 'released' DiT of the cache's geometry (random weights, seeded)."""
    from stepvideo.models.dit import DiTConfig, StepVideoDiT

    cfg = _config(cache_dir)
    torch.manual_seed(11)
    folder = tmp_path_factory.mktemp("lora-base") / "dit"
    StepVideoDiT(DiTConfig.from_dict(cfg.model)).save_pretrained(folder)
    return folder


def _lora_config(cache_dir: Path, base_dir: Path, **kw) -> DiTTrainConfig:  # noqa: F811
    base = dict(init_from=str(base_dir), lora=LORA, caption_dropout=0.0, lr=1e-2)
    base.update(kw)
    return _config(cache_dir, **base)


def test_lora_checkpoints_hold_only_the_adapter_and_its_optimizer_state(cache_dir, base_dir, tmp_path):  # noqa: F811
    from stepvideo.models.dit import StepVideoDiT
    from stepvideo.models.lora import load_adapter, merge_lora

    cfg = _lora_config(cache_dir, base_dir, steps=4, checkpoint_every=2, ema_decay=0.9)
    result = train_dit(cfg, cache_dir, tmp_path, progress=False)
    base = load_file(str(base_dir / "model.safetensors"))
    n_adapter = sum(1 for _ in (tmp_path / "adapter").glob("adapter_model.safetensors"))
    assert n_adapter == 1 and result["trainable_parameters"] < sum(v.numel() for v in base.values()) / 10

    last = ckpt.latest_checkpoint(tmp_path)
    weights = ckpt.load_model_state(last)
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights), sorted(weights)[:5]
    assert sum(v.numel() for v in weights.values()) == result["trainable_parameters"]
    moments = ckpt.load_tensors(last, "optimizer")
    assert set(moments) == {f"{m}/{k}" for k in weights for m in ("exp_avg", "exp_avg_sq")} | {"step"}
    assert set(ckpt.load_tensors(last, "ema")) == set(weights)  # the EMA of the adapter alone
    ckpt_bytes = sum(f.stat().st_size for f in last.rglob("*.safetensors"))
    assert ckpt_bytes < (base_dir / "model.safetensors").stat().st_size / 4

    # final/ is the base with the (EMA) adapter merged; adapter/ is the peft folder of that adapter
    adapter = load_adapter(tmp_path / "adapter")
    assert adapter.modules and all(m.endswith(("attn1.wqkv", "attn2.wo", "ff.net.2")) for m in adapter.modules)
    merged = _weights(tmp_path)
    expected = merge_lora(base, adapter)
    assert merged.keys() == base.keys()
    for k in merged:
        assert torch.allclose(merged[k], expected[k], atol=1e-6), k
    changed = {k for k in merged if not torch.equal(merged[k], base[k])}
    assert changed and all(k.rsplit(".", 1)[0] in adapter.modules for k in changed)
    StepVideoDiT.from_pretrained(tmp_path / "final")


@pytest.mark.slow
def test_lora_run_killed_with_sigkill_resumes_to_the_same_weights(cache_dir, base_dir, tmp_path):  # noqa: F811
    cfg = _lora_config(cache_dir, base_dir, steps=8, checkpoint_every=2, caption_dropout=0.25)
    ref = tmp_path / "uninterrupted"
    _finish(_launch(cfg, cache_dir, ref))
    run = tmp_path / "killed"
    first = _kill_after_checkpoint(_launch(cfg, cache_dir, run, pace=0.3), run, at_least=3)
    assert 3 <= first < 8
    print(f"LoRA run killed with SIGKILL after the checkpoint of step {first} of 8")
    _finish(_launch(cfg, cache_dir, run))
    for name in ("final/model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(str(ref / name)), load_file(str(run / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    state_a, state_b = ckpt.load_state(ckpt.latest_checkpoint(ref)), ckpt.load_state(ckpt.latest_checkpoint(run))
    assert state_a["loss_history"] == state_b["loss_history"] and state_b["step"] == 8


@pytest.mark.slow
def test_lora_two_ranks_zero2_match_one_rank(cache_dir, base_dir, tmp_path):  # noqa: F811
    """2 ranks (torchrun, gloo, ZeRO-2) vs 1 rank at the same global batch; the 2-rank checkpoint
    (adapter only) continues at 1 rank."""
    one = _losses(_finish(_launch(_lora_config(cache_dir, base_dir, steps=4, checkpoint_every=2), cache_dir,
                                  tmp_path / "one")))
    two_out = tmp_path / "two"
    two = _losses(_finish(_launch(_lora_config(cache_dir, base_dir, steps=4, checkpoint_every=2, zero_stage=2),
                                  cache_dir, two_out, nproc=2)))
    print(f"LoRA 2 ranks vs 1 rank: max relative loss difference "
          f"{max(abs(a - b) / abs(a) for a, b in zip(one, two)):.2e}")
    for a, b in zip(one, two):
        assert abs(a - b) <= 1e-4 * max(abs(a), 1e-3), (one, two)
    assert ckpt.load_state(ckpt.latest_checkpoint(two_out))["world_size"] == 2
    a, b = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors")), \
        load_file(str(two_out / "adapter" / "adapter_model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5), k
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(two_out / "checkpoints" / "step-000002", resumed / "checkpoints" / "step-000002")
    tail = _losses(_finish(_launch(_lora_config(cache_dir, base_dir, steps=4, checkpoint_every=2), cache_dir,
                                   resumed)))
    for a, b in zip(tail[2:], two[2:]):
        assert abs(a - b) <= 1e-4 * max(abs(a), 1e-3), (tail, two)


def test_a_lora_checkpoint_does_not_fit_another_spec(cache_dir, base_dir, tmp_path):  # noqa: F811
    from stepvideo.errors import InputError

    train_dit(_lora_config(cache_dir, base_dir, steps=2, checkpoint_every=1), cache_dir, tmp_path, progress=False)
    other = _lora_config(cache_dir, base_dir, steps=2, checkpoint_every=1, lora={**LORA, "rank": 2})
    with pytest.raises(InputError, match="different training config"):
        train_dit(other, cache_dir, tmp_path, progress=False)
    with pytest.raises(InputError, match="lora needs init_from"):
        _config(cache_dir, lora=LORA)


def test_a_nan_lora_step_is_skipped_and_the_adapter_stays_finite(cache_dir, base_dir, tmp_path, monkeypatch):  # noqa: F811
    from test_dit_trainer import _corrupt_loss

    _corrupt_loss(monkeypatch, lambda n, loss, pred: loss * float("nan") if n == 2 else loss)
    result = train_dit(_lora_config(cache_dir, base_dir, steps=3), cache_dir, tmp_path, progress=False)
    assert result["skipped_steps"] == 1 and result["step"] == 3
    adapter = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in adapter.values())
