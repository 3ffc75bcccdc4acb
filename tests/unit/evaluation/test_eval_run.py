"""The scorer on real ground-truth clips, `stepvideo eval score` and `stepvideo eval run`."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from conftest import BIN, REPO
from stepvideo.config import load_params
from stepvideo.data import synth
from stepvideo.data.video_io import read_video, write_image, write_video
from stepvideo.evaluation.checks import CATEGORIES
from stepvideo.evaluation.runner import score_manifest, vae_roundtrip
from stepvideo.evaluation.scorer import score_frames, summarize


def _assert_every_category(summary: dict, at_least: float = 0.95) -> None:
    for cat in CATEGORIES:
        assert summary["checks"][cat] >= 5, f"too few {cat} checks to judge the scorer"
        assert summary["categories"][cat] >= at_least, (cat, summary["categories"][cat])


def test_scorer_reads_the_demo_datasets_heldout_clips(tmp_path):
    """>= 95% per category on the demo config's held-out clips and stills, through the mp4 codec."""
    params = load_params(REPO / "params.yaml")
    cfg = synth.SynthConfig(**{k: getattr(params.data, k) for k in synth.SynthConfig.__dataclass_fields__})
    videos = []
    for item in synth.plan(cfg):
        if item.split != "heldout" or item.degradation != "none":
            continue
        frames = synth.render(item.attrs, cfg.frames if item.kind == "video" else 1, cfg.height, cfg.width,
                              starts=item.starts)
        path = tmp_path / item.path
        write_video(path, frames, fps=cfg.fps) if item.kind == "video" else write_image(path, frames[0])
        videos.append({"lang": "en", **score_frames(read_video(path), item.attrs)})
    assert len(videos) >= 90
    _assert_every_category(summarize(videos))


def test_scorer_reads_a_fresh_set_at_another_seed_and_resolution(tmp_path):
    cfg = synth.SynthConfig(clips=90, images=20, seed=5, height=96, width=128, degraded_fraction=0.2)
    manifest = synth.generate(cfg, tmp_path / "data", progress=False)
    result = score_manifest(manifest, progress=False)
    assert result["skipped_degraded"] == 2 * 18  # degraded clips do not show their captions: left out
    _assert_every_category(result["summary"])
    assert result["summary"]["consistency"] == 1.0


def test_vae_roundtrip_keeps_shape_and_scores(tmp_path):
    import torch

    from stepvideo.models.vae import VAEConfig, VideoVAE

    torch.manual_seed(0)
    vae = VideoVAE(VAEConfig.tiny()).eval()
    cfg = synth.SynthConfig(clips=2, images=1, seed=3, heldout_fraction=0.0, degraded_fraction=0.0)
    manifest = synth.generate(cfg, tmp_path / "data", progress=False)
    frames = read_video(tmp_path / "data" / "videos" / "clip_00000.mp4")
    out = vae_roundtrip(vae)(frames)
    assert out.shape == frames.shape and out.dtype == np.uint8
    result = score_manifest(manifest, transform=vae_roundtrip(vae), progress=False)
    assert result["summary"]["videos"] == 6  # a random VAE keeps nothing: scores exist, accuracy is low
    assert result["summary"]["overall"] < 0.9


def _cli(*args, cwd=None):
    return subprocess.run([str(BIN / "stepvideo"), *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_eval_score_cli_writes_json_and_names_bad_rows(tmp_path):
    cfg = synth.SynthConfig(clips=4, images=2, seed=2, heldout_fraction=0.0, degraded_fraction=0.0)
    manifest = synth.generate(cfg, tmp_path / "data", progress=False)
    run = _cli("eval", "score", manifest, "--json", tmp_path / "score.json")
    assert run.returncode == 0, run.stderr
    assert "overall" in run.stdout and "color" in run.stdout
    data = json.loads((tmp_path / "score.json").read_text())
    assert set(data) >= {"overall", "categories", "languages"} and set(data["languages"]) == {"en", "zh"}
    assert set(data["categories"]) == set(CATEGORIES) and data["overall"] > 0.9
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[3]["attributes"] = json.dumps({"background": "pink", "objects": []})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = _cli("eval", "score", manifest)
    assert bad.returncode == 2 and "row 4" in bad.stderr and "pink" in bad.stderr


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from stepvideo.pipelines.t2v import T2VPipeline

    folder = tmp_path_factory.mktemp("bundle") / "pipe"
    T2VPipeline.random("demo", seed=0).save_pretrained(folder)
    return folder


def test_eval_run_benchmark_baseline_and_user_metric(tmp_path, bundle):
    from stepvideo.evaluation.prompts import load_benchmark

    prompts = tmp_path / "two.jsonl"
    prompts.write_text("".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in load_benchmark()[:2]),
                       encoding="utf-8")
    metric = tmp_path / "mine.py"
    metric.write_text("def brightness(frames, prompt):\n    return {'brightness': float(frames.mean()) / 255}\n")
    from mlflow import MlflowClient

    from stepvideo import tracking

    with tracking.run("register-for-test"):
        version = tracking.register_folder(bundle, "evaltest-t2v", aliases=("candidate",))
    first = _cli("eval", "run", "--model", "models:/evaltest-t2v@candidate", "--prompts", prompts, "--out",
                 tmp_path / "base", "--steps", "2", "--seeds", "2", "--batch-size", "3")
    assert first.returncode == 0, first.stderr[-2000:]
    # logged to MLflow, and the registry version tagged with its scores
    base = json.loads((tmp_path / "base" / "results.json").read_text())
    client = MlflowClient(tracking.tracking_uri())
    mv = client.get_model_version("evaltest-t2v", version)
    assert float(mv.tags["eval_overall"]) == pytest.approx(base["summary"]["overall"], abs=1e-4)
    runs = client.search_runs([r.experiment_id for r in client.search_experiments()],
                              filter_string="tags.evaluated = 'models:/evaltest-t2v@candidate'")
    assert runs and "eval_overall" in runs[0].data.metrics
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "eval")} == {"eval/report.html",
                                                                                   "eval/results.json"}
    run = _cli("eval", "run", "--model", bundle, "--prompts", prompts, "--out", tmp_path / "ev", "--steps", "2",
               "--seeds", "2", "--baseline", tmp_path / "base", "--metric", f"{metric}:brightness")
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert len(results["videos"]) == 2 * 2 * 2  # prompts x languages x seeds
    v = results["videos"][0]
    assert (tmp_path / "ev" / v["video"]).is_file() and v["checks"] and 0 <= v["user_metrics"]["brightness"] <= 1
    assert set(results["summary"]["languages"]) == {"en", "zh"} and "brightness" in results["summary"]["user_metrics"]
    assert results["baseline"]["summary"]["videos"] == 8
    # the same model, prompts and seeds: the baseline's verdicts are the candidate's
    assert [x["checks"] for x in results["baseline"]["videos"]] == [x["checks"] for x in results["videos"]]
    html = (tmp_path / "ev" / "report.html").read_text(encoding="utf-8")
    assert html.count("<video") == 16 and "brightness" in html


def test_eval_run_official_format_is_a_gallery(tmp_path, bundle):
    from stepvideo.evaluation.official import OFFICIAL_CATEGORIES

    prompts = tmp_path / "official.txt"
    lines = [f"一个关于{i}的视频" if i % 2 else f"A video about topic {i}" for i in range(len(OFFICIAL_CATEGORIES))]
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cats = tmp_path / "cats.json"
    cats.write_text(json.dumps({c: [i + 1, i + 1] for i, c in enumerate(OFFICIAL_CATEGORIES)}))
    run = _cli("eval", "run", "--model", bundle, "--prompts", prompts, "--categories", cats, "--out", tmp_path / "ev",
               "--steps", "2")
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["gallery"] and [v["category"] for v in results["videos"]] == list(OFFICIAL_CATEGORIES)
    assert all(v["checks"] == [] for v in results["videos"])
    assert [v["lang"] for v in results["videos"][:2]] == ["en", "zh"]
    missing = _cli("eval", "run", "--model", bundle, "--prompts", prompts, "--out", tmp_path / "x")
    assert missing.returncode == 2 and "--categories" in missing.stderr
