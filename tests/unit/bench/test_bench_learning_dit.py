"""The DiT learning-speed benchmark (bench/bench_learning_dit.py): its smoke mode end to end, and
the oracle's lossless latent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import load_bench


def _bench():
    return load_bench("bench_learning_dit")


def test_pixel_patchify_round_trip_is_exact_and_has_the_vae_layout():
    bench = _bench()
    oracle = bench.PixelPatchify()
    torch.manual_seed(0)
    clip = torch.rand(2, 34, 3, 32, 48) * 2 - 1
    post = oracle.posterior(clip)
    assert post.mean.shape == (2, 6, 3 * 8 * 8 * 8, 4, 6) and oracle.latent_frames(34) == 6
    torch.testing.assert_close(oracle.decode(post.mean), clip)
    still = clip[:, :1]
    assert oracle.posterior(still).mean.shape == (2, 1, 1536, 4, 6)
    torch.testing.assert_close(oracle.decode(oracle.encode(still)), still)
    # a patch holds one place: changing one pixel changes one latent cell only
    moved = clip.clone()
    moved[0, 5, 1, 9, 17] += 0.5
    diff = (oracle.encode(moved) - post.mean).abs().sum(dim=2)
    assert int((diff > 0).sum()) == 1 and float(diff[0, 1, 1, 2]) > 0
    with pytest.raises(ValueError, match="multiple of 17"):
        oracle.posterior(clip[:, :20])


def test_oracle_keeps_what_the_scorer_sees(tmp_path):
    from stepvideo.data.synth import SynthConfig, generate
    from stepvideo.evaluation.runner import score_manifest, summary_metrics, vae_roundtrip

    generate(SynthConfig(clips=4, images=2, seed=1, heldout_fraction=0.0, degraded_fraction=0.0), tmp_path,
             progress=False)
    plain = summary_metrics(score_manifest(tmp_path / "manifest.jsonl", progress=False)["summary"], "")
    after = summary_metrics(score_manifest(tmp_path / "manifest.jsonl", transform=vae_roundtrip(_bench().PixelPatchify()),
                                           progress=False)["summary"], "")
    assert after["overall"] == pytest.approx(plain["overall"])


def test_smoke_trains_draws_scores_and_keeps_results(tmp_path, capsys):
    bench = _bench()
    argv = ["--smoke", "--work", str(tmp_path), "--candidates", "oracle,base", "--no-progress"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "| oracle | oracle z1536" in out and "| base | vae z16" in out
    result = json.loads((tmp_path / "oracle-2s" / "result.json").read_text())
    assert result["steps"] >= 4 and result["train_seconds"] > 0 and np.isfinite(result["final_loss"])
    assert result["videos"] == 44 and 0.0 <= result["scores"]["overall"] <= 1.0 and "chance_overall" in result["scores"]
    assert result["train_config"]["model"]["in_channels"] == 1536 and result["train_config"]["model"]["patch_size"] == 2
    # a finished run is read back, not trained again
    (tmp_path / "oracle-2s" / "run").rename(tmp_path / "oracle-2s" / "gone")
    assert bench.main(argv[:-2] + ["oracle", "--no-progress"]) == 0
    assert not (tmp_path / "oracle-2s" / "run").exists()


def test_bad_arguments_are_refused(tmp_path):
    bench = _bench()
    for argv in (["--candidates", "nope"], ["--seconds", "x"], ["--seconds", "0"], ["--root", str(tmp_path)]):
        with pytest.raises(SystemExit):
            bench.main(["--work", str(tmp_path), *argv])
