"""The committed `stepvideo-tiny` release: it loads, it generates, it is trained, and `stepvideo
generate` uses it (or the registry's champion) when no --model is given."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from stepvideo.cli import app
from stepvideo.pipelines.t2v import T2VPipeline
from stepvideo.release import RELEASE_DIR, default_model, vae_quality

runner = CliRunner()


@pytest.fixture(scope="module")
def release():
    return T2VPipeline.from_pretrained(RELEASE_DIR)


def test_release_folder_is_bf16_small_and_documented():
    files = [f for f in RELEASE_DIR.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 40 * 2**20
    for part in ("dit", "vae"):
        with safe_open(str(RELEASE_DIR / part / "model.safetensors"), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {"BF16"}, (part, dtypes)
    info = json.loads((RELEASE_DIR / "release.json").read_text())
    assert info["data_version"] and info["git_commit"] and info["preset"] == "small"
    assert 0 <= info["benchmark"]["overall"] <= 1 and info["vae"]["psnr"] > 0
    card = (RELEASE_DIR / "README.md").read_text()
    assert info["git_commit"] in card and "samples.png" in card and (RELEASE_DIR / "samples.png").is_file()
    assert (RELEASE_DIR / "params.yaml").is_file()


def test_release_loads_as_float32_on_the_cpu_and_generates_both_languages(release):
    assert next(release.dit.parameters()).dtype == torch.float32
    assert next(release.vae.parameters()).dtype == torch.float32
    video = release.generate(["A large red circle moves right quickly on a navy background.",
                              "深蓝色背景上，一个大的红色圆形快速地向右移动。"], num_frames=17, height=64, width=64, steps=4)
    assert video.shape == (2, 17, 64, 64, 3) and video.dtype == np.uint8
    assert video.std() > 1  # not a constant frame


def test_release_vae_is_trained_not_random(release):
    """A clean synth clip survives the release VAE far better than it survives random weights."""
    from stepvideo.data import synth
    from stepvideo.models.vae import VideoVAE

    clip = synth.clean_clip(synth.SynthConfig(clips=4, images=0, seed=7), 1)
    trained = vae_quality(release.vae.eval(), [clip])["psnr"]
    torch.manual_seed(0)
    random = vae_quality(VideoVAE(release.vae.config).eval(), [clip])["psnr"]
    assert trained > random + 5, (trained, random)


def test_generate_without_model_uses_the_release_then_the_champion(tmp_path, monkeypatch):
    from stepvideo import tracking
    from stepvideo.data.video_io import read_video

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert default_model() == (str(RELEASE_DIR), "the stepvideo-tiny release")
    out = tmp_path / "v.mp4"
    args = ["generate", "一个红色的圆形向右移动", "--out", str(out), "--steps", "1", "--frames", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "stepvideo-tiny release" in res.output and read_video(out).shape == (1, 64, 64, 3)

    bundle = T2VPipeline.random(preset="demo", seed=1, workdir=tmp_path / "work").save_pretrained(tmp_path / "bundle")
    with tracking.run("unit", experiment="unit-tests"):
        tracking.register_folder(bundle, "stepvideo-t2v", aliases=("champion",))
    assert default_model()[0] == "models:/stepvideo-t2v@champion"
    res = runner.invoke(app, args + ["--height", "32", "--width", "32"])
    assert res.exit_code == 0, res.output
    assert "champion" in res.output and read_video(out).shape == (1, 32, 32, 3)


def test_generate_out_an_existing_folder_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "videos"
    out.mkdir()
    res = runner.invoke(app, ["generate", "A red circle.", "--out", str(out), "--steps", "1", "--frames", "1"])
    assert res.exit_code == 2 and "is a folder" in res.output and "Traceback" not in res.output, res.output
    assert list(tmp_path.glob(".*tmp*")) == [] and list(out.iterdir()) == []


def test_no_release_and_no_champion_is_a_clear_error(tmp_path, monkeypatch):
    import stepvideo.release as rel

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(rel, "RELEASE_DIR", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="pass --model"):
        rel.default_model()


def test_release_vae_keeps_a_large_objects_colour(release):
    """One large circle per colour on a gray still survives the release VAE's round trip with its
    colour, as the scorer judges it (the colour check is what the benchmark's colour category asks)."""
    from stepvideo.data import synth
    from stepvideo.evaluation.scorer import score_frames

    rng = np.random.default_rng(12345)
    kept = []
    for color in synth.COLORS:
        attrs = {"background": "gray", "objects": [{"shape": "circle", "color": color, "size": "large"}]}
        frames = synth.render(attrs, 1, 64, 64, rng=rng)
        x = torch.from_numpy(frames).float().div(127.5).sub(1).permute(0, 3, 1, 2)[None]
        with torch.no_grad():
            y = release.vae.decode(release.vae.encode(x))
        out = ((y[0].permute(0, 2, 3, 1).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        checks = [c for c in score_frames(out, attrs)["checks"] if c["category"] == "color"]
        kept.append(all(c["pass"] for c in checks))
    assert sum(kept) >= 7, dict(zip(synth.COLORS, kept))
