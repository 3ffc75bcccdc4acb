"""The learning-speed benchmark (bench/bench_learning.py) in its smoke mode, and the loss terms and
speed path it measures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F


from conftest import load_bench
from stepvideo.models.causal_conv import CausalConv3d
from stepvideo.training.vae_losses import object_mask, pixel_loss
from stepvideo.training.vae_trainer import VAETrainConfig


def _bench():
    return load_bench("bench_learning")


def test_smoke_prints_a_table_and_keeps_results(tmp_path, capsys):
    bench = _bench()
    assert bench.main(["--smoke", "--work", str(tmp_path), "--candidates", "demo", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| demo | 8x16x16 z16" in out and "clips as they are" in out
    result = json.loads((tmp_path / "demo" / "result.json").read_text())
    assert len(result["curve"]) >= 2 and all(p["seconds"] > 0 for p in result["curve"])
    assert result["curve"] == sorted(result["curve"], key=lambda p: p["seconds"])
    assert {"color", "shape", "background", "overall"} <= set(result["scorer_vae"])
    assert result["train_config"]["crop_size"] == 32  # smoke mode shrinks the crops
    # a finished candidate is read back, not trained again
    (tmp_path / "demo" / "run").rename(tmp_path / "demo" / "gone")
    assert bench.main(["--smoke", "--work", str(tmp_path), "--candidates", "demo", "--no-progress"]) == 0
    assert not (tmp_path / "demo" / "run").exists()


def test_unknown_candidate_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        _bench().main(["--work", str(tmp_path), "--candidates", "nope"])


def test_candidates_build_valid_configs():
    bench = _bench()
    for name in bench.CANDIDATES:
        cfg = bench._config(name, 10)
        assert cfg.steps == 10 and cfg.model["z_channels"] >= 16


def test_single_frame_conv_equals_the_causal_3d_conv():
    torch.manual_seed(0)
    for stride in (1, 2):
        conv = CausalConv3d(5, 7, 3, stride=stride)
        x = torch.randn(2, 5, 1, 12, 12)
        fast = conv(x)
        full = conv.conv(F.pad(x, (0, 0, 0, 0, 2, 0)))
        torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)


def _frame_with_object() -> torch.Tensor:
    x = torch.full((1, 1, 3, 32, 32), -0.2)
    x[..., ::2, :] += 0.05  # a mild texture stays background
    x[:, :, 0, 10:16, 10:16] = 0.9  # a red-ish square
    x[:, :, 1:, 10:16, 10:16] = -0.8
    return x


def test_object_mask_marks_the_object_only():
    m = object_mask(_frame_with_object())
    assert m.shape == (1, 1, 1, 32, 32)
    assert float(m[..., 10:16, 10:16].min()) == 1.0
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[10:16, 10:16] = False
    assert float(m[0, 0, 0][outside].max()) == 0.0


def test_object_weight_raises_the_cost_of_losing_the_object():
    x = _frame_with_object()
    lost = x.clone()
    lost[..., 10:16, 10:16] = -0.2  # the object painted over with background
    plain, weighted = VAETrainConfig(), VAETrainConfig(object_weight=4.0)
    ratio_plain = float(pixel_loss(lost, x, plain)) / float(pixel_loss(x + 0.01, x, plain))
    ratio_weighted = float(pixel_loss(lost, x, weighted)) / float(pixel_loss(x + 0.01, x, weighted))
    assert ratio_weighted > 2.0 * ratio_plain
    assert float(pixel_loss(x, x, VAETrainConfig(l2_weight=1.0, edge_weight=1.0, object_weight=2.0))) == 0.0
    # the edge term sees a shifted edge that the mean colour does not
    shifted = torch.roll(x, 1, dims=-1)
    edge = VAETrainConfig(l1_weight=0.0, edge_weight=1.0)
    assert float(pixel_loss(shifted, x, edge)) > 0.0
    assert np.isfinite(float(pixel_loss(lost, x, VAETrainConfig(l2_weight=1.0))))
