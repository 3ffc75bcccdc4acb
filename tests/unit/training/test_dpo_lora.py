"""Video-DPO with `method: lora` (issue 24): a peft adapter on the policy DiT, the reference being the
same module with the adapter off (one DiT's weights in memory), only the adapter trains, step 0
equals the full method's, adapter-only checkpoints that resume exactly, a later round continuing
an adapter."""

from __future__ import annotations

import gc
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stepvideo.errors import InputError
from stepvideo.models.dit import StepVideoDiT
from stepvideo.models.io import load_state_dict
from stepvideo.training.dpo_trainer import DPOTrainConfig, train_dpo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "preference"))
from test_dpo import _dit, _pairs  # noqa: E402  the DPO tests' tiny DiT and synthetic pairs

LORA = {"rank": 4, "alpha": 4.0, "dropout": 0.0, "target_modules": ["attn1.wqkv", "attn1.wo", "attn2.wq",
                                                                      "attn2.wkv", "attn2.wo", "ff.net.0.proj",
                                                                      "ff.net.2"]}


def _cfg(sft: Path, **kw) -> DPOTrainConfig:
    base = dict(init_from=str(sft), beta=500.0, steps=6, batch_size=4, lr=1e-3, warmup_steps=0, checkpoint_every=2,
                seed=1)
    base.update(kw)
    return DPOTrainConfig(**base)


@pytest.fixture()
def sft(tmp_path) -> Path:
    return _dit(tmp_path / "sft")


def _spy_model(monkeypatch, grads: dict) -> list:
    """The module apply_lora injects into (the policy, and with lora also the reference); each
    parameter's gradient norms as backward computes them go to `grads[name]`."""
    import stepvideo.training.lora as lora

    seen, real = [], lora.apply_lora

    def spy(m, spec, adapter_name="default"):
        out = real(m, spec)
        for n, p in out.named_parameters():
            if p.requires_grad:
                p.register_hook(lambda g, n=n: grads.setdefault(n, []).append(float(g.norm())))
        seen.append(out)
        return out

    monkeypatch.setattr(lora, "apply_lora", spy)
    return seen


def _parameter_numel_in_memory() -> int:
    """Elements of every live nn.Parameter, each storage once (what the DiT weights take)."""
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.nn.Parameter):
            seen.setdefault(obj.untyped_storage().data_ptr(), obj.numel())
    return sum(seen.values())


def test_step0_loss_equals_the_full_methods_and_only_one_dit_is_loaded(sft, tmp_path, monkeypatch):
    pairs = _pairs(tmp_path / "p.safetensors", n=4)
    loads, real = [], StepVideoDiT.from_pretrained.__func__

    def counting(cls, *a, **kw):
        loads.append(a[0] if a else kw)
        return real(cls, *a, **kw)

    monkeypatch.setattr(StepVideoDiT, "from_pretrained", classmethod(counting))
    memory = {}
    gc.collect()
    before = _parameter_numel_in_memory()  # parameters other tests left alive in this process

    def measure(tag):
        def log(step, m):
            if step == 1:
                memory[tag] = _parameter_numel_in_memory() - before
        return log

    full = train_dpo(_cfg(sft, steps=1), pairs, tmp_path / "full", progress=False, log_fn=measure("full"))
    n_full = len(loads)
    gc.collect()
    lora = train_dpo(_cfg(sft, steps=1, lora=LORA), pairs, tmp_path / "lora", progress=False, log_fn=measure("lora"))
    assert n_full == 2 and len(loads) - n_full == 1  # full: policy + reference; lora: the one DiT
    for k in ("loss", "implicit_acc", "reward_margin", "kl_proxy"):
        assert lora["curves"][k][0] == full["curves"][k][0], k  # B = 0: policy == reference at step 0
    assert lora["curves"]["kl_proxy"][0] == 0.0
    # one DiT's weights (+ the adapter) live during lora training, two during full
    dit = sum(t.numel() for t in load_state_dict(sft).values())
    adapter = sum(t.numel() for t in load_file(str(Path(lora["adapter_dir"]) / "adapter_model.safetensors")).values())
    assert memory["lora"] - dit == adapter, memory
    assert memory["full"] >= 2 * dit, memory
    assert lora["trainable_parameters"] == adapter < dit // 5


def test_only_the_adapter_trains_and_the_reward_margin_rises(sft, tmp_path, monkeypatch):
    from stepvideo.models.lora import load_adapter, merge_lora
    from stepvideo.training.lora import base_state_dict

    grads: dict[str, list[float]] = {}
    norms: dict[int, float] = {}
    models = _spy_model(monkeypatch, grads)
    before = {k: v.clone() for k, v in load_state_dict(sft).items()}
    result = train_dpo(_cfg(sft, steps=12, lr=1e-2, lora=LORA), _pairs(tmp_path / "p.safetensors", n=4),
                       tmp_path / "run", progress=False,
                       log_fn=lambda s, m: norms.setdefault(s, m["grad_norm"]))
    (model,) = models
    curves = result["curves"]
    assert all(x == x for x in curves["loss"])
    assert curves["reward_margin"][-1] > curves["reward_margin"][0]
    assert result["implicit_acc_last"] > result["implicit_acc_first"] and result["implicit_acc_last"] >= 0.75
    assert result["loss_last"] < result["loss_first"] and result["kl_proxy_last"] > 0
    assert len(norms) == 12 and all(g > 0 for g in norms.values())  # a non-zero gradient every step
    assert grads and all(".lora_A." in n or ".lora_B." in n for n in grads)  # only the adapter gets any
    assert all(len(v) == 12 for v in grads.values())
    assert all(max(v) > 0 for n, v in grads.items() if ".lora_B." in n)
    # the frozen base is bitwise the SFT weights; no base parameter has a gradient
    base = base_state_dict(model)
    assert set(base) == set(before) and all(torch.equal(base[k], before[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)
    assert all(torch.equal(v, load_state_dict(sft)[k]) for k, v in before.items())  # the folder untouched
    # outputs: the adapter (B moved off 0) and the base with it merged
    adapter = load_adapter(result["adapter_dir"])
    assert any(adapter.weights[k].abs().sum() > 0 for k in adapter.weights if k.endswith(".lora_B.weight"))
    merged, final = merge_lora(before, adapter), load_state_dict(result["model_dir"])
    assert set(final) == set(before) and all(torch.allclose(final[k], merged[k], atol=1e-6) for k in final)
    assert any(not torch.equal(final[k], before[k]) for k in final)


def test_checkpoints_hold_only_the_adapter_and_resume_exactly(sft, tmp_path):
    pairs = _pairs(tmp_path / "p.safetensors", n=6)
    full = train_dpo(_cfg(sft, steps=6, lora=LORA), pairs, tmp_path / "full", progress=False)
    train_dpo(_cfg(sft, steps=4, lora=LORA), pairs, tmp_path / "part", progress=False)
    step4 = tmp_path / "part" / "checkpoints" / "step-000004"
    from stepvideo.training import checkpoint as ckpt

    weights = ckpt.load_model_state(step4)
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)
    moments = ckpt.load_tensors(step4, "optimizer")
    assert set(moments) - {"step"} and all(".lora_A." in k or ".lora_B." in k for k in set(moments) - {"step"})
    size = sum(f.stat().st_size for f in step4.rglob("*") if f.is_file())
    assert size < sum(f.stat().st_size for f in sft.rglob("*.safetensors"))  # less than the DiT alone
    # resume the 6-step run from the 4-step run's checkpoint (the fingerprint made to match)
    shutil.copytree(tmp_path / "part" / "checkpoints", tmp_path / "resumed" / "checkpoints")
    state = json.loads((step4 / "state.json").read_text())
    state["fingerprint"] = _cfg(sft, steps=6, lora=LORA).fingerprint("test-0-False")
    (tmp_path / "resumed" / "checkpoints" / "step-000004" / "state.json").write_text(json.dumps(state))
    resumed = train_dpo(_cfg(sft, steps=6, lora=LORA), pairs, tmp_path / "resumed", progress=False)
    assert resumed["curves"]["loss"] == full["curves"]["loss"]
    for sub, name in (("final", "model.safetensors"), ("adapter", "adapter_model.safetensors")):
        a = load_file(str(next((tmp_path / "full" / sub).glob("*.safetensors"))))
        b = load_file(str(next((tmp_path / "resumed" / sub).glob("*.safetensors"))))
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), sub


def test_a_later_round_continues_the_adapter_against_the_adapter_off_reference(sft, tmp_path):
    pairs = _pairs(tmp_path / "p.safetensors", n=4)
    r0 = train_dpo(_cfg(sft, steps=4, lr=1e-2, lora=LORA), pairs, tmp_path / "r0", progress=False)
    same = train_dpo(_cfg(sft, steps=0, lora=LORA, init_adapter=r0["adapter_dir"]), pairs, tmp_path / "r1-0",
                     progress=False)
    a, b = load_state_dict(r0["model_dir"]), load_state_dict(same["model_dir"])
    assert all(torch.equal(a[k], b[k]) for k in a)  # the adapter loads as it was trained
    r1 = train_dpo(_cfg(sft, steps=1, lora=LORA, init_adapter=r0["adapter_dir"], seed=2), pairs, tmp_path / "r1",
                   progress=False)
    assert r1["curves"]["kl_proxy"][0] > 0  # the policy starts where round 0 ended, the reference at the SFT model


def test_config_refusals_and_the_full_fingerprint(sft):
    with pytest.raises(InputError, match="reference"):
        _cfg(sft, lora=LORA, reference="elsewhere")
    with pytest.raises(InputError, match="init_adapter needs lora"):
        _cfg(sft, init_adapter="adapter")
    with pytest.raises(InputError, match="unknown lora fields"):
        _cfg(sft, lora={**LORA, "scale": 2})
    full = _cfg(sft)
    assert full.fingerprint("v") != _cfg(sft, lora=LORA).fingerprint("v")
    # a full run's fingerprint leaves out the lora fields: checkpoints made before `method` existed still resume
    import hashlib

    d = full.to_dict()
    for k in ("log_every", "checkpoint_every", "keep_checkpoints", "zero_stage", "deepspeed_config",
              "gradient_checkpointing", "max_bad_steps", "lora", "init_adapter"):
        d.pop(k)
    assert full.fingerprint("v") == hashlib.sha256(json.dumps([d, "v"], sort_keys=True).encode()).hexdigest()[:16]
