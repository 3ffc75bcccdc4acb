"""Video-DPO: the flow-matching DPO loss, the trainer (frozen reference, shared noise/timestep,
resume), reward pairs, the win rate, the reward model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stepvideo.diffusion.dpo import flow_dpo_loss
from stepvideo.models.dit import DiTConfig, StepVideoDiT
from stepvideo.training.dpo_trainer import (DPOTrainConfig, batch_indices, load_pair_tensors, train_dpo,
                                            write_pair_tensors)

Z, T, H, W = 16, 2, 4, 4  # latent channels, latent frames, latent height/width


def _dit(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = StepVideoDiT(DiTConfig.preset("demo", in_channels=Z, out_channels=Z, caption_channels=[64, 32]))
    model.save_pretrained(folder)
    return folder


def _text(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"llm_emb": torch.randn(n, 5, 64, generator=g), "llm_mask": torch.ones(n, 5, dtype=torch.bool),
            "clip_emb": torch.randn(n, 3, 32, generator=g), "clip_mask": torch.ones(n, 3, dtype=torch.bool)}


def _pairs(path: Path, n: int = 4, same: bool = False, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randn(n, T, Z, H, W, generator=g)
    rejected = chosen.clone() if same else torch.randn(n, T, Z, H, W, generator=g)
    return write_pair_tensors(path, chosen, rejected, _text(n, seed), {"version": f"test-{seed}-{same}"})


def _cfg(tmp: Path, **kw) -> DPOTrainConfig:
    base = dict(init_from=str(_dit(tmp / "sft")), beta=500.0, steps=6, batch_size=4, lr=1e-3, warmup_steps=0,
                checkpoint_every=2, seed=1)
    base.update(kw)
    return DPOTrainConfig(**base)


# ------------------------------------------------------------------ the loss


def test_loss_is_log2_at_the_reference_and_pushes_the_right_way():
    g = torch.Generator().manual_seed(0)
    tw, tl = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    ref_w, ref_l = tw + 0.5, tl + 0.5
    loss, stats = flow_dpo_loss(ref_w.clone(), ref_l.clone(), ref_w, ref_l, tw, tl, beta=10.0)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)  # policy == reference
    assert stats["implicit_acc"].item() == 0.5 and stats["kl_proxy"].item() == 0.0
    # a policy closer to the chosen target than the reference, further from the rejected one
    loss2, stats2 = flow_dpo_loss(tw + 0.1, tl + 0.9, ref_w, ref_l, tw, tl, beta=10.0)
    assert loss2 < loss and stats2["implicit_acc"].item() == 1.0 and stats2["reward_margin"] > 0
    with pytest.raises(ValueError, match="beta"):
        flow_dpo_loss(tw, tl, ref_w, ref_l, tw, tl, beta=0.0)


def test_zero_gradient_when_chosen_equals_rejected(tmp_path):
    from stepvideo.training.dpo_trainer import frozen_reference

    model = StepVideoDiT.from_pretrained(_dit(tmp_path / "m"), dtype=torch.float32)
    ref = frozen_reference(str(tmp_path / "m"), torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(0)
    chosen, other = torch.randn(2, T, Z, H, W, generator=g), torch.randn(2, T, Z, H, W, generator=g)
    noise, t = torch.randn(2, T, Z, H, W, generator=g), torch.tensor([0.3, 0.7])
    tb = t.view(-1, 1, 1, 1, 1)
    text = {k: torch.cat([v, v]) for k, v in _text(2).items()}

    def grad_norm(rejected: torch.Tensor) -> float:
        model.zero_grad()
        xw, xl = (1 - tb) * noise + tb * chosen, (1 - tb) * noise + tb * rejected
        x_t, tt = torch.cat([xw, xl]), torch.cat([t, t])
        pred = model(x_t, tt, **text)
        with torch.no_grad():
            r = ref(x_t, tt, **text) + 0.3  # a reference unlike the policy: the sigmoid is not at 1/2
        loss, _ = flow_dpo_loss(pred[:2], pred[2:], r[:2], r[2:], chosen - noise, rejected - noise, beta=500.0)
        loss.backward()
        return float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in model.parameters() if p.grad is not None)))

    real = grad_norm(other)
    same = grad_norm(chosen.clone())
    assert real > 1e-2
    assert same < 1e-4 * real  # zero up to float rounding (the two halves of the batch round alike)


# ------------------------------------------------------------------ the trainer


def test_training_raises_the_chosen_implicit_reward_and_keeps_the_reference_frozen(tmp_path):
    from stepvideo.models.io import load_state_dict

    cfg = _cfg(tmp_path, steps=12)
    before = {k: v.clone() for k, v in load_state_dict(cfg.init_from).items()}
    result = train_dpo(cfg, _pairs(tmp_path / "pairs.safetensors", n=4), tmp_path / "run", progress=False)
    curves = result["curves"]
    assert len(curves["loss"]) == 12 and all(x == x for x in curves["loss"])
    assert curves["reward_margin"][-1] > curves["reward_margin"][0]
    assert result["implicit_acc_last"] >= 0.75 and result["loss_last"] < result["loss_first"]
    assert result["kl_proxy_last"] > 0  # the policy moved away from the reference
    after = load_state_dict(cfg.init_from)  # the reference (= the SFT folder) is untouched
    assert all(torch.equal(before[k], after[k]) for k in before)
    trained = load_state_dict(tmp_path / "run" / "final")
    assert any(not torch.equal(before[k], trained[k]) for k in before)


def test_pairs_share_noise_and_timestep_and_the_reference_gets_no_grad(tmp_path, monkeypatch):
    import stepvideo.training.dpo_trainer as trainer

    seen = []
    real = trainer.flow_dpo_loss

    def spy(pw, pl, rw, rl, tw, tl, beta, sft_weight=0.0):
        seen.append((rw.requires_grad, rl.requires_grad))
        return real(pw, pl, rw, rl, tw, tl, beta, sft_weight)

    pairs_seen = []
    real_pair = trainer.training_pair

    def spy_pair(x1, t, noise=None, generator=None):
        pairs_seen.append((t.clone(), noise.clone()))
        return real_pair(x1, t, noise, generator)

    monkeypatch.setattr(trainer, "flow_dpo_loss", spy)
    monkeypatch.setattr(trainer, "training_pair", spy_pair)
    train_dpo(_cfg(tmp_path, steps=2), _pairs(tmp_path / "p.safetensors"), tmp_path / "run", progress=False)
    assert seen and not any(a or b for a, b in seen)
    assert len(pairs_seen) == 4  # chosen then rejected, per step
    for (tw, nw), (tl, nl) in zip(pairs_seen[::2], pairs_seen[1::2]):
        assert torch.equal(tw, tl) and torch.equal(nw, nl)
    assert not torch.equal(pairs_seen[0][1][0], pairs_seen[0][1][1])  # different pairs, different noise


def test_resume_ends_where_an_uninterrupted_run_does(tmp_path):
    from stepvideo.models.io import load_state_dict

    pairs = _pairs(tmp_path / "p.safetensors", n=6)
    full = train_dpo(_cfg(tmp_path, steps=6), pairs, tmp_path / "full", progress=False)
    train_dpo(_cfg(tmp_path, steps=4), pairs, tmp_path / "part", progress=False)
    # the same run asked for more steps: a changed config refuses the old checkpoints ...
    with pytest.raises(ValueError, match="different DPO config"):
        train_dpo(_cfg(tmp_path, steps=6), pairs, tmp_path / "part", progress=False)
    # ... so resume by re-running the 6-step config on a copy of its step-4 checkpoint
    import shutil

    shutil.copytree(tmp_path / "part" / "checkpoints", tmp_path / "resumed" / "checkpoints")
    state = json.loads((tmp_path / "part" / "checkpoints" / "step-000004" / "state.json").read_text())
    state["fingerprint"] = _cfg(tmp_path, steps=6).fingerprint("test-0-False")
    (tmp_path / "resumed" / "checkpoints" / "step-000004" / "state.json").write_text(json.dumps(state))
    resumed = train_dpo(_cfg(tmp_path, steps=6), pairs, tmp_path / "resumed", progress=False)
    assert resumed["curves"]["loss"][:4] == full["curves"]["loss"][:4]
    a, b = load_state_dict(tmp_path / "full" / "final"), load_state_dict(tmp_path / "resumed" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pair_file_and_batches(tmp_path):
    path = _pairs(tmp_path / "p.safetensors", n=5)
    data = load_pair_tensors(path)
    assert data["chosen"].shape == (5, T, Z, H, W) and data["llm_mask"].dtype == torch.bool
    assert data["_meta"]["version"] == "test-0-False"
    epoch = batch_indices(5, 5, 0, 0)
    assert sorted(epoch) == list(range(5)) and batch_indices(5, 5, 0, 0) == epoch
    assert len(batch_indices(5, 3, 0, 7)) == 3
    with pytest.raises(ValueError, match="one non-empty shape"):
        write_pair_tensors(tmp_path / "bad.safetensors", torch.zeros(2, 1), torch.zeros(3, 1), _text(2))
    with pytest.raises(FileNotFoundError, match="pair tensors not found"):
        load_pair_tensors(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="init_from"):
        DPOTrainConfig()


# ------------------------------------------------------------------ pairs, win rate, reward model


def _cand(cid: str, pid: str, passed: float, flicker: float = 0.0, noise: float = 0.0, lang: str = "en") -> dict:
    return {"id": cid, "prompt_id": pid, "lang": lang, "prompt": f"prompt {pid}", "seed": 0,
            "score": {"passed_share": passed, "flicker": flicker, "color_noise": noise, "checks": []}}


def test_reward_pairs_best_worst_and_margin():
    from stepvideo.preference.pairs import RewardWeights, reward, reward_pairs

    w = RewardWeights(checks=1.0, flicker=0.1, color_noise=0.01)
    rows = [_cand("a", "p1", 1.0), _cand("b", "p1", 0.5), _cand("c", "p1", 1.0, flicker=2.0),
            _cand("d", "p2", 0.5), _cand("e", "p2", 0.5), _cand("f", "p3", 0.2, lang="zh")]
    assert reward(rows[2]["score"], w) == pytest.approx(0.8)
    bw = reward_pairs(rows, w, "best_worst", 0.0)
    assert [(p["chosen"], p["rejected"]) for p in bw] == [("a", "b")]  # p2 ties, p3 has one candidate
    assert bw[0]["margin"] == pytest.approx(0.5)
    allp = reward_pairs(rows, w, "margin", 0.25)
    assert {(p["chosen"], p["rejected"]) for p in allp} == {("a", "b"), ("c", "b")}
    with pytest.raises(ValueError, match="best_worst"):
        reward_pairs(rows, w, "everything")
    # dominant: c beats b by the reward (0.8 vs 0.5) but flickers more, so it is no longer a pair
    dom = reward_pairs(rows + [_cand("g", "p1", 0.5, noise=5.0)], w, "dominant", 0.0)
    assert {(p["chosen"], p["rejected"]) for p in dom} == {("a", "b"), ("a", "c"), ("a", "g"), ("b", "g")}


def test_paired_difference_counts_and_interval():
    from stepvideo.preference.pairs import paired_difference

    d = paired_difference([0.0] * 90 + [1.0] * 10, [0.0] * 100)
    assert (d["up"], d["down"], d["equal"], d["n"]) == (10, 0, 90, 100) and d["mean"] == pytest.approx(0.1)
    assert 0.0 < d["ci_low"] < 0.1 < d["ci_high"] < 0.2
    assert paired_difference([1.0, 2.0], [1.0, 2.0])["ci_high"] == 0.0
    assert d == paired_difference([0.0] * 90 + [1.0] * 10, [0.0] * 100)  # seeded


def test_win_rate_and_interval():
    from stepvideo.preference.pairs import win_rate

    r = win_rate([1, 1, 1, 0, 0.5] * 20, [0, 0, 0, 1, 0.5] * 20)
    assert r["wins"] == 60 and r["losses"] == 20 and r["ties"] == 20
    assert r["win_rate"] == pytest.approx(0.7)
    assert r["ci_low"] < 0.7 < r["ci_high"] and r["ci_high"] - r["ci_low"] < 0.2
    with pytest.raises(ValueError, match="one length"):
        win_rate([1], [1, 2])


def test_reward_model_learns_a_separable_preference(tmp_path):
    from stepvideo.preference.reward_model import LatentRewardModel, score_latents, train_reward_model

    g = torch.Generator().manual_seed(0)
    n = 64
    chosen = torch.randn(n, T, Z, H, W, generator=g) + 1.0  # preferred latents are brighter
    rejected = torch.randn(n, T, Z, H, W, generator=g) - 1.0
    data = {"chosen": chosen, "rejected": rejected, **_text(n)}
    keys = [f"p{i % 16}" for i in range(n)]
    result = train_reward_model(data, keys, tmp_path / "rm", steps=60, heldout_fraction=0.25)
    assert result["heldout_pairs"] > 0 and result["heldout_accuracy"] >= 0.9
    model = LatentRewardModel.from_pretrained(tmp_path / "rm")
    s = score_latents(model, torch.cat([chosen[:2], rejected[:2]]), {k: torch.cat([v[:2], v[:2]]) for k, v in _text(n).items()})
    assert min(s[:2]) > max(s[2:])
    with pytest.raises(ValueError, match="not a reward model"):
        LatentRewardModel.from_pretrained(_dit(tmp_path / "dit"))


def test_non_finite_pairs_stop_the_run_and_keep_the_last_checkpoint(tmp_path):
    from stepvideo.training.dit_trainer import NonFiniteLossError

    g = torch.Generator().manual_seed(0)
    chosen = torch.randn(4, T, Z, H, W, generator=g)
    chosen[:] = float("nan")  # every pair is broken: every step is skipped
    bad = write_pair_tensors(tmp_path / "bad.safetensors", chosen, torch.randn(4, T, Z, H, W, generator=g), _text(4),
                             {"version": "nan"})
    with pytest.raises(NonFiniteLossError, match="3 non-finite steps in a row"):
        train_dpo(_cfg(tmp_path, steps=6, max_bad_steps=3), bad, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "final").exists()


def test_preference_figures_pair_flicker_only_where_both_show_an_object():
    from stepvideo.config import Params
    from stepvideo.evaluation.scorer import summarize
    from stepvideo.stages.evaluate import preference_figures

    def video(i, flicker, passed=True):
        return {"id": f"v{i}", "prompt_id": f"p{i}", "seed": 0, "lang": "en", "passed": passed,
                "flicker": flicker, "color_noise": 1.0, "checks": [{"category": "color", "pass": passed}]}

    sft = [video(0, None), video(1, 2.0), video(2, 1.0)]
    dpo = [video(0, 9.0), video(1, 1.0), video(2, None, passed=False)]
    pref = preference_figures(Params(), {"videos": dpo, "summary": summarize(dpo)},
                              {"videos": sft, "summary": summarize(sft)})
    ch = pref["flicker_change"]
    assert ch["n"] == 1 and ch["mean"] == pytest.approx(-1.0) and ch["down"] == 1
    assert pref["color_noise_change"]["n"] == 3
    assert pref["flicker_candidate"] == pytest.approx(5.0) and pref["flicker_videos_candidate"] == 2
    assert pref["win_rate"]["n"] == 3
