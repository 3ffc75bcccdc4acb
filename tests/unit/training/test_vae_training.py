"""VAE trainer: the loss goes down, resume reproduces an uninterrupted run, recipe flags, data loading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stepvideo.models.io import load_state_dict
from stepvideo.models.vae import VAEConfig, VideoVAE
from stepvideo.training import checkpoint as ckpt
from stepvideo.training.vae_trainer import (
    DUAL_PATH_MODULES,
    VAETrainConfig,
    train_vae_recipe,
    two_stage_recipe,
    _draw_batch,
    evaluate,
    load_clips,
    lr_factor,
    psnr,
    ssim,
    train_vae,
)

torch.set_num_threads(2)

MICRO = VAEConfig(
    z_channels=4,
    num_res_blocks=1,
    encoder_ch=16,
    encoder_ch_mult=(1, 1, 1, 1),
    decoder_ch=16,
    decoder_ch_mult=(1, 1, 1, 1),
    norm_groups=8,
    patch_channels=64,
).to_dict()


def _clip(frames: int, phase: float, size: int = 24) -> np.ndarray:
    """A smooth coloured pattern drifting over time, uint8 (T, H, W, 3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for t in range(frames):
        chans = [np.sin(xx / (4 + c) + 0.3 * t + phase) * np.cos(yy / (5 + c) - phase) for c in range(3)]
        out.append(np.stack(chans, -1))
    return (127.5 + 110 * np.stack(out)).astype(np.uint8)


TRAIN = [_clip(17, 0.0), _clip(20, 1.0), _clip(1, 2.0)]
HELDOUT = [_clip(17, 0.5)]


def _cfg(**kw) -> VAETrainConfig:
    base = dict(
        model=MICRO,
        steps=20,
        batch_size=1,
        crop_size=16,
        eval_size=16,
        image_prob=0.5,
        lr=3e-3,
        kl_weight=1e-4,
        checkpoint_every=10,
        log_every=1,
        seed=0,
    )
    base.update(kw)
    return VAETrainConfig(**base)


def test_training_lowers_reconstruction_loss(tmp_path):
    cfg = _cfg(eval_every=10, lr_schedule="cosine", warmup_steps=5)
    torch.manual_seed(cfg.seed)
    before, _ = evaluate(VideoVAE(VAEConfig.from_dict(MICRO)), HELDOUT, cfg)
    logged: list[tuple[int, dict]] = []
    result = train_vae(cfg, TRAIN, HELDOUT, tmp_path, log_fn=lambda s, m: logged.append((s, m)), progress=False)
    assert result["step"] == 20
    assert result["heldout_l1"] < 0.8 * before["heldout_l1"], (before, result)
    assert np.isfinite(result["heldout_psnr"]) and 0 < result["heldout_ssim"] <= 1
    assert Path(result["sample_path"]).is_file()
    assert [p["step"] for p in result["heldout_curve"]] == [10, 20]
    assert result["heldout_curve"][-1]["heldout_psnr"] == result["heldout_psnr"]
    assert [s for s, m in logged if "heldout_psnr" in m] == [10, 20]
    assert {1.0, 17.0} <= {m["frames"] for _, m in logged if "frames" in m}  # mixed image/video batches
    assert VideoVAE.from_pretrained(result["model_dir"]).config.z_channels == 4
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 20


# Two fresh runs of the same config in one process are not bitwise equal on every CPU: on an AVX-512
# host their weights after 4 steps differ by up to 1.1e-8 (on entries of ~0.1), at 1 thread and at 2,
# with oneDNN on or off (the same before the channels-last VAE code), and AdamW, which divides each
# gradient by its own running size, carries such round-off into near-zero weights at up to ~6e-7 after 6
# steps. So trained tensors are compared to 1e-5 (weights are ~0.1); what a checkpoint restores (step,
# RNG states, data position) exactly.
# The mid attention's key bias is the exception: softmax ignores a constant added to every key, so its
# gradient is zero but for round-off, which AdamW's normalisation turns into steps of up to ~lr (measured:
# 2.6e-5 apart after 4 steps at lr 3e-3).
_ROUND_OFF = dict(rtol=1e-5, atol=1e-5)


def _close(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    tol = dict(rtol=0.0, atol=1e-4) if name.endswith("attn_1.k.conv.bias") else _ROUND_OFF
    torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")


def test_resume_reproduces_uninterrupted_run(tmp_path):
    straight = train_vae(_cfg(steps=6, checkpoint_every=3), TRAIN, [], tmp_path / "a", progress=False)
    train_vae(_cfg(steps=3, checkpoint_every=3), TRAIN, [], tmp_path / "b", progress=False)
    resumed = train_vae(_cfg(steps=6, checkpoint_every=3), TRAIN, [], tmp_path / "b", progress=False)
    assert resumed["step"] == straight["step"] == 6
    a, b = load_state_dict(straight["model_dir"]), load_state_dict(resumed["model_dir"])
    assert a.keys() == b.keys()
    for k in a:
        _close(a[k], b[k], k)
    # a finished run resumes to a no-op
    again = train_vae(_cfg(steps=6, checkpoint_every=3), TRAIN, [], tmp_path / "b", progress=False)
    assert again["step"] == 6


def _train_in_own_interpreter(out: Path, **cfg) -> Path:
    """train_vae in a fresh interpreter (after drawing from numpy's and python's global RNGs: a run seeds
    every RNG it saves, so what the process did before must not matter); returns its last checkpoint.
    Its own process because the python RNG state a checkpoint saves is the process's global one, which
    threads other tests leave behind (a server's jittered loops) draw from at any time."""
    here = Path(__file__).resolve().parent
    code = (f"import sys; sys.path[:0] = {[str(here), str(here.parents[1])]!r}\n"
            "import random, numpy as np, test_vae_training as T\n"
            "np.random.random(), random.random()\n"
            f"r = T.train_vae(T._cfg(**{cfg!r}), T.TRAIN, [], {str(out)!r}, progress=False)\n"
            "print(r['checkpoint'])\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return Path(run.stdout.strip().splitlines()[-1])


def test_resume_with_gan_restores_everything_and_writes_no_pickle(tmp_path):
    """GAN on: the resumed run's last checkpoint equals the uninterrupted one's, tensor for tensor; every
    file of a run is JSON or safetensors, and the checkpoint's ``model/`` is a from_pretrained folder."""
    gan = dict(checkpoint_every=2, disc_weight=0.1, disc_start_step=1, image_prob=1.0)  # images: quick
    a = _train_in_own_interpreter(tmp_path / "a", steps=4, **gan)
    _train_in_own_interpreter(tmp_path / "b", steps=2, **gan)
    b = _train_in_own_interpreter(tmp_path / "b", steps=4, **gan)
    assert a.name == b.name == "step-000004" and ckpt.latest_checkpoint(tmp_path / "b") == b
    sa, sb = ckpt.load_state(a), ckpt.load_state(b)  # step, histories, optimizer groups, data/numpy RNG
    assert sa["history"] == pytest.approx(sb["history"], rel=1e-5)
    assert {k: v for k, v in sa.items() if k != "history"} == {k: v for k, v in sb.items() if k != "history"}
    for group in ("optimizer", "disc", "disc_optimizer", "rng"):
        ta, tb = ckpt.load_tensors(a, group), ckpt.load_tensors(b, group)
        assert ta and ta.keys() == tb.keys(), group
        for k in ta:
            if group == "rng":
                assert torch.equal(ta[k], tb[k]), k
            else:
                _close(ta[k], tb[k], f"{group}/{k}")
    wa, wb = ckpt.load_model_state(a), ckpt.load_model_state(b)
    for k in wa:
        _close(wa[k], wb[k], k)
    files = [f for f in (tmp_path / "b").rglob("*") if f.is_file()]
    assert files and all(f.suffix in (".json", ".safetensors") for f in files), files  # no .pt / .pkl
    assert sorted(f.name for f in b.iterdir()) == ["disc.safetensors", "disc_optimizer.safetensors", "model",
                                                   "optimizer.safetensors", "rng.safetensors", "state.json"]
    model = VideoVAE.from_pretrained(b / "model")
    assert all(torch.equal(v, wb[k]) for k, v in model.state_dict().items())


def test_optimizer_state_round_trips_exactly_through_json_and_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    def make(seed: int):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2), torch.nn.Linear(2, 1))
        opts = [torch.optim.AdamW([{"params": net[0].parameters()}, {"params": net[1].parameters(), "lr": 0.5}],
                                  lr=1e-2, betas=(0.8, 0.95)),
                torch.optim.SGD(net[2].parameters(), lr=0.1)]  # momentum 0: non-tensor state (None)
        return net, opts

    def step(net, opts, n: int):
        for i in range(n):
            net(torch.linspace(-1, 1, 6).reshape(2, 3) * (i + 1)).square().sum().backward()
            for o in opts:
                o.step()
                o.zero_grad()

    net, opts = make(0)
    step(net, opts, 3)
    net2, opts2 = make(1)
    net2.load_state_dict(net.state_dict())
    for i, (o, o2) in enumerate(zip(opts, opts2)):
        tensors, data = ckpt.optimizer_tensors(o)
        save_file(tensors, str(tmp_path / f"{i}.safetensors"))
        ckpt.load_optimizer(o2, load_file(str(tmp_path / f"{i}.safetensors")), json.loads(json.dumps(data)))
        sd, sd2 = o.state_dict(), o2.state_dict()
        assert sd["param_groups"] == sd2["param_groups"] and sd.keys() == sd2.keys()
        assert sd["state"].keys() == sd2["state"].keys()
        for k, entry in sd["state"].items():
            assert entry.keys() == sd2["state"][k].keys()
            for key, v in entry.items():
                w = sd2["state"][k][key]
                assert (torch.equal(v, w) and v.dtype == w.dtype) if isinstance(v, torch.Tensor) else v == w
    assert isinstance(opts2[0].param_groups[0]["betas"], tuple)
    step(net, opts, 2)
    step(net2, opts2, 2)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), net2.parameters()))


def test_old_pickle_checkpoints_are_refused_not_overwritten(tmp_path):
    old = tmp_path / "checkpoints" / "step-000003"
    old.mkdir(parents=True)
    (old / "training_state.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="old-format"):
        train_vae(_cfg(steps=1), TRAIN, [], tmp_path, progress=False)
    assert (old / "training_state.pt").is_file()


def test_two_stage_recipe_and_gan(tmp_path):
    """Stage 1 (4x8x8, no dual path), then the full model grown from it with progressive unfreezing."""
    shared = {k: v for k, v in _cfg().__dict__.items() if k not in ("model", "steps", "trainable_phases")}
    shared |= {"checkpoint_every": 2, "keep_checkpoints": 3, "disc_weight": 0.1, "disc_start_step": 1}
    s1, s2 = two_stage_recipe(VAEConfig.from_dict(MICRO), stage1_steps=2, adapt_steps=2, mid_steps=0,
                              total_steps=4, **shared)
    logged: list[tuple[int, dict]] = []
    result = train_vae_recipe(s1, s2, TRAIN, HELDOUT, tmp_path, log_fn=lambda s, m: logged.append((s, m)),
                              progress=False)
    stage1 = VideoVAE.from_pretrained(tmp_path / "stage1/final")
    assert not stage1.config.patchify and stage1.config.spatial_factor == 8
    assert VideoVAE.from_pretrained(result["model_dir"]).config.patchify
    assert "stage1_heldout_psnr" in result and np.isfinite(result["heldout_psnr"])
    stage1_logs = [m for _, m in logged if "stage1_loss" in m]
    stage2_logs = {s: m for s, m in logged if "loss" in m}
    assert len(stage1_logs) == 2 and "stage1_loss_d" in stage1_logs[1]  # GAN on from step 1
    assert "loss_d" not in stage2_logs[1] and "loss_d" in stage2_logs[2]
    # stage 2 starts from stage 1's shared weights; for adapt_steps only the dual-path modules move
    s1_final = load_state_dict(tmp_path / "stage1/final")
    s2_step2 = load_state_dict(tmp_path / "stage2/checkpoints/step-000002/model")
    s2_step4 = load_state_dict(tmp_path / "stage2/checkpoints/step-000004/model")
    for k, v in s2_step2.items():
        if k.startswith(DUAL_PATH_MODULES):
            assert k not in s1_final
        else:
            assert torch.equal(v, s1_final[k]), k
    assert all(not torch.equal(v, s2_step4[k]) for k, v in s2_step2.items())  # then everything trains


def test_params_select_the_two_stage_recipe():
    from stepvideo.config import preset
    from stepvideo.stages.vae import vae_train_config

    params = preset("small")  # from scratch (the demo fine-tunes the release)
    first, main = vae_train_config(params)
    assert first is None and main.steps == params.vae.steps and VAEConfig.from_dict(main.model).patchify
    params.vae.stage1_steps, params.vae.adapt_steps, params.vae.mid_steps = 30, 10, 5
    first, main = vae_train_config(params)
    assert first.steps == 30 and not VAEConfig.from_dict(first.model).patchify
    assert [s for s, _ in main.trainable_phases] == [0, 10, 15] and main.lr == first.lr == params.vae.lr
    params.vae.init_from = "some/folder"
    with pytest.raises(ValueError, match="init_from"):
        vae_train_config(params)


def test_lr_schedule():
    cfg = _cfg(steps=100, lr_schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    f = [lr_factor(cfg, s) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up
    assert f[10] == pytest.approx(1.0) and f[55] == pytest.approx(0.55) and f[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # then monotone decay
    assert [lr_factor(_cfg(steps=5), s) for s in range(5)] == [1.0] * 5
    with pytest.raises(ValueError, match="lr_schedule"):
        _cfg(lr_schedule="step")


def test_batches_follow_image_prob_with_stills_in_the_pool():
    """Half the items are stills; video batches must still come at rate 1 - image_prob."""
    items = [_clip(17, 0.0), _clip(1, 1.0), _clip(17, 2.0), _clip(1, 3.0)]
    cfg = _cfg(batch_size=4, image_prob=0.25)
    rng = np.random.default_rng(0)
    frames = [_draw_batch(items, [0, 2], cfg, rng).shape[1] for _ in range(400)]
    share = frames.count(17) / len(frames)
    assert 0.68 < share < 0.82, share
    assert {_draw_batch(items, [], cfg, rng).shape[1] for _ in range(20)} == {1}  # no clips: images only


def test_metrics():
    x = torch.rand(2, 3, 16, 16)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-5)
    assert ssim(x, torch.rand(2, 3, 16, 16)) < 0.5
    assert psnr(x, x + 0.1) == pytest.approx(20.0, abs=1e-3)


def test_config_errors():
    with pytest.raises(ValueError, match="perceptual_backbone_path"):
        VAETrainConfig(perceptual_weight=0.1)
    with pytest.raises(ValueError, match="multiples of 16"):
        VAETrainConfig(crop_size=20)


def test_load_clips_dedupes_and_filters(tmp_path):
    from stepvideo.data.video_io import write_image, write_video

    write_video(tmp_path / "a.mp4", _clip(17, 0.0, 32))
    write_image(tmp_path / "b.png", _clip(1, 1.0, 32)[0])
    rows = [
        {"path": "a.mp4", "kind": "video", "split": "train", "clip_id": "a"},
        {"path": "a.mp4", "kind": "video", "split": "train", "clip_id": "a"},  # second caption
        {"path": "b.png", "kind": "image", "split": "heldout", "clip_id": "b"},
    ]
    clips = load_clips(rows, tmp_path)
    assert [c.shape for c in clips] == [(17, 32, 32, 3), (1, 32, 32, 3)]
    assert [c.shape[0] for c in load_clips(rows, tmp_path, split="heldout")] == [1]
    assert len(load_clips(rows, tmp_path, max_items=1)) == 1


def test_perceptual_loss_uses_local_backbone_only(tmp_path):
    backbone = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()))
    path = tmp_path / "backbone.pt"
    backbone.save(str(path))
    logged: dict[int, dict] = {}
    cfg = _cfg(steps=2, image_prob=1.0, perceptual_weight=0.5, perceptual_backbone_path=str(path))
    train_vae(cfg, TRAIN, [], tmp_path / "run", log_fn=lambda s, m: logged.setdefault(s, m), progress=False)
    assert logged[2]["loss_perceptual"] > 0
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        train_vae(_cfg(steps=1, perceptual_weight=0.5, perceptual_backbone_path=str(tmp_path / "missing.pt")),
                  TRAIN, [], tmp_path / "run2", progress=False)


def test_demo_preset_is_a_trainable_small_geometry():
    """``VAEConfig.demo()``: official layer math, small widths, per-frame layer norm (norm_groups=1).

    The golden-reference ``tiny`` geometry has one channel per GroupNorm group (instance norm per
    frame), which strips per-frame channel means (colour/brightness) before the latent; from-scratch
    training of it stalls near the mean-colour prediction, so demos train ``demo`` instead.
    """
    cfg = VAEConfig.demo()
    assert cfg.norm_groups == 1 and cfg.z_channels == 16 and cfg.spatial_factor == 16
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg
    model = VideoVAE(cfg)
    assert model.num_parameters() < 4_000_000
    with torch.no_grad():
        for t in (1, 17):
            recon, post = model(torch.zeros(1, t, 3, 32, 32), sample=False)
            assert recon.shape == (1, t, 3, 32, 32)
            assert post.mean.shape == (1, model.latent_frames(t), 16, 2, 2)
    tcfg = VAETrainConfig(model=cfg)
    assert VAEConfig.from_dict(tcfg.model) == cfg
