"""DiT training-step throughput on this machine, against its own fp32 matmul rate.

    python bench/bench_dit.py [--preset small] [--frames 4 --height 16 --width 16] [--batch 1]

Prints: forward+backward time and tokens/s for one training step at the preset, the fp32 matmul
rate measured in the same run, the model's achieved GFLOP/s (3 x forward matmul FLOPs / time)
and its ratio to the matmul rate; then an attention backend comparison (SDPA vs math, flash when
CUDA and flash_attn are present). ``--json PATH`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stepvideo.models.attention import attention, flash_available  # noqa: E402
from stepvideo.models.dit import DiTConfig, StepVideoDiT  # noqa: E402
from stepvideo.models.dit_info import forward_flops  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, iters, device, warmup=1):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(n: int, iters: int, device, dtype=torch.float32) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    dt = _time(lambda: a @ b, iters, device, warmup=2)
    return 2 * n**3 / dt / 1e9


def bench_step(args, device):
    cfg = DiTConfig.preset(args.preset)
    torch.manual_seed(0)
    model = StepVideoDiT(cfg).to(device).train()
    b, f, h, w = args.batch, args.frames, args.height, args.width
    x = torch.randn(b, f, cfg.in_channels, h, w, device=device)
    t = torch.rand(b, device=device)
    llm = torch.randn(b, args.llm_len, cfg.llm_dim, device=device)
    llm_mask = torch.ones(b, args.llm_len, dtype=torch.bool, device=device)
    clip = torch.randn(b, args.clip_len, cfg.clip_dim, device=device)
    target = torch.randn_like(x)

    def step():
        model.zero_grad(set_to_none=True)
        loss = (model(x, t, llm, llm_mask, clip) - target).square().mean()
        loss.backward()

    dt = _time(step, args.iters, device)
    p = cfg.patch_size
    fl = forward_flops(cfg, f, h // p, w // p, args.llm_len, args.clip_len)
    step_flops = 3 * fl["total"] * b
    tokens = fl["tokens"] * b
    return {
        "preset": args.preset,
        "params": model.num_parameters(),
        "shape": [b, f, cfg.in_channels, h, w],
        "tokens_per_step": tokens,
        "step_s": dt,
        "tokens_per_s": tokens / dt,
        "model_gflop_per_step": step_flops / 1e9,
        "model_gflops": step_flops / dt / 1e9,
    }


def bench_attention(args, device):
    rows = []
    d = 64
    for n_q, n_k, masked, label in ((args.attn_tokens, args.attn_tokens, False, "self"), (args.attn_tokens, 96, True, "cross")):
        g = torch.Generator().manual_seed(0)
        q = torch.randn(1, n_q, 4, d, generator=g).to(device)
        k = torch.randn(1, n_k, 4, d, generator=g).to(device)
        v = torch.randn(1, n_k, 4, d, generator=g).to(device)
        mask = (torch.arange(n_k) < n_k - 17)[None].to(device) if masked else None
        flops = 4 * n_q * n_k * 4 * d
        backends = ["sdpa", "math"]
        tensors = {"sdpa": (q, k, v), "math": (q, k, v)}
        if device.type == "cuda" and flash_available():
            backends.append("flash")
            tensors = {k_: tuple(z.bfloat16() for z in (q, k, v)) if k_ == "flash" else (q, k, v) for k_ in backends}
        for be in backends:
            qq, kk, vv = tensors[be]
            dt = _time(lambda: attention(qq, kk, vv, mask, backend=be), max(10, args.iters), device, warmup=3)
            rows.append({"kind": label, "backend": be, "q": n_q, "k": n_k, "ms": dt * 1e3, "gflops": flops / dt / 1e9})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--frames", type=int, default=4, help="latent frames")
    ap.add_argument("--height", type=int, default=16, help="latent height")
    ap.add_argument("--width", type=int, default=16, help="latent width")
    ap.add_argument("--llm-len", type=int, default=64)
    ap.add_argument("--clip-len", type=int, default=16)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--matmul-n", type=int, default=1024)
    ap.add_argument("--attn-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load(1m) {load:.2f}")
    if device.type == "cpu" and load > 0.5:
        print("  note: other processes are using the CPU; OpenMP threads stall when a core is busy (try --threads 1)")

    mm = matmul_gflops(args.matmul_n, max(5, args.iters), device)
    step = bench_step(args, device)
    step["matmul_gflops_fp32"] = mm
    step["threads"] = torch.get_num_threads()
    step["load_1m"] = load
    step["ratio_to_matmul"] = step["model_gflops"] / mm
    print(
        f"DiT {step['preset']} ({step['params'] / 1e6:.2f}M params), latent {step['shape']}, "
        f"{step['tokens_per_step']} tokens/step"
    )
    print(f"  forward+backward     {step['step_s'] * 1e3:9.1f} ms/step   {step['tokens_per_s']:10.1f} tokens/s")
    print(f"  model matmul FLOPs   {step['model_gflop_per_step']:9.2f} GFLOP/step (3 x forward)")
    print(f"  achieved             {step['model_gflops']:9.2f} GFLOP/s")
    print(f"  fp32 matmul {args.matmul_n}^3  {mm:9.2f} GFLOP/s")
    print(f"  model / matmul       {step['ratio_to_matmul']:9.2%}")

    rows = bench_attention(args, device)
    print("attention backends (1 x heads 4 x dim 64):")
    for r in rows:
        print(f"  {r['kind']:5s} q={r['q']:5d} k={r['k']:5d} {r['backend']:5s} {r['ms']:8.2f} ms {r['gflops']:8.2f} GFLOP/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"step": step, "attention": rows}, indent=2))
    return {"step": step, "attention": rows}


if __name__ == "__main__":
    main()
