"""bench/bench_gpu.py in its CPU smoke mode (the smallest sizes), and its peak table."""

from __future__ import annotations

import torch

from conftest import load_bench


def test_cpu_smoke_prints_every_figure(capsys):
    bench = load_bench("bench_gpu")
    result = bench.main(["--device", "cpu", "--smoke", "--threads", "1"])
    out = capsys.readouterr().out
    assert "SCALED-DOWN" in out and "device: CPU" in out
    assert "block (width 256" in out and "MFU" in out
    assert "VAE decode (tiny geometry) 17 frames at 32x32, 16 px tiles" in out
    assert "training step (demo preset" in out and "samples/s" in out
    assert result["block"]["tokens"] == 256 and result["block"]["step_s"] > 0
    assert result["vae"]["frames"] == 17 and result["train"]["samples_per_s"] > 0
    assert result["dtype"] == str(torch.float32)


def test_known_peaks_and_the_30b_grid():
    bench = load_bench("bench_gpu")
    assert bench.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_bf16_tflops("NVIDIA H200") == 989.0
    assert bench.peak_bf16_tflops("Some GPU") is None
    assert bench._latent_grid(75_888) == (36, 34, 62)
    f, h, w = bench._latent_grid(16_384)
    assert f * h * w == 16_384
