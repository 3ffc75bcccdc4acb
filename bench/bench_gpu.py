"""GPU figures: one 30B-geometry DiT block fwd+bwd (MFU), tiled VAE decode of 204 frames at 544x992,
the `small` preset's training step. On a CPU it runs a scaled-down form, labelled as such.

    python bench/bench_gpu.py                 # CUDA: bf16, flash-attn when installed, else SDPA
    python bench/bench_gpu.py --quick         # CUDA: the block at 16k tokens instead of 75,888
    python bench/bench_gpu.py --vae-tile 256  # the VAE decode's spatial tile (pixels; 0 = untiled)
    python bench/bench_gpu.py --smoke         # CPU: the smallest sizes (seconds; the unit test)

CUDA (the figures of the issue):

* block: our ``StepVideoBlock`` at width 6144 (48 heads x 128, FFN 4x), 75,888 video tokens
  (204 frames at 544x992 -> 36 x 34 x 62 latent) and 397 text tokens, forward + backward in bf16;
  MFU = 3 x the block's forward matmul FLOPs (``dit_info.forward_flops``: one layer's share) /
  time / the device's dense bf16 peak from ``PEAK_BF16`` (by device name; unknown names print
  no MFU unless ``--peak-tflops`` is given). Peak memory: ``torch.cuda.max_memory_allocated``.
* VAE: the released geometry (z=64), bf16, decode of the 36-frame latent of 204 frames at 544x992
  with ``tile_size=--vae-tile`` (``--vae-tile-mode``, default blend with 64 px overlap): seconds,
  frames/s, peak memory.
* training step: the ``small`` DiT preset, fwd + bwd + AdamW under bf16 autocast (fp32 master
  weights), batch ``--train-batch`` at a 4 x 16 x 16 latent: samples/s. This is the bare step;
  ``bench_dit_trainer.py`` measures ``train_dit``'s own overhead over it.

CPU (no CUDA): fp32, the block at width 512 (4 heads x 128) and 4,096 tokens (``--smoke``: 2 heads,
256 tokens), MFU against the fp32 ``torch.mm`` 2048^2 rate measured in the run; the VAE at
``VAEConfig.tiny()`` decoding 17 frames at 128x128 with 64 px tiles (``--smoke``: 32x32, 16 px);
the training step as on CUDA in fp32 (``--smoke``: the ``demo`` preset). Peak memory on the CPU is
the process's RSS high-water mark (everything before it included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stepvideo.models.attention import flash_available  # noqa: E402
from stepvideo.models.dit import DiTConfig, StepVideoBlock, StepVideoDiT  # noqa: E402
from stepvideo.models.dit_info import forward_flops  # noqa: E402
from stepvideo.models.rope import RoPE3D  # noqa: E402
from stepvideo.models.vae import VAEConfig, VideoVAE  # noqa: E402

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched as substrings of the device name
PEAK_BF16 = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM / NVL per GPU
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
]


def peak_bf16_tflops(name: str) -> float | None:
    for key, tflops in PEAK_BF16:
        if key in name:
            return tflops
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, iters: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 2048, iters: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    dt = _median_time(lambda: torch.mm(a, b), iters, device, warmup=2)
    return 2 * n**3 / dt / 1e12


def _latent_grid(tokens: int) -> tuple[int, int, int]:
    """(frames, h, w) of a token count: 75,888 -> 36 x 34 x 62 (204 frames at 544x992)."""
    if tokens == 75_888:
        return 36, 34, 62
    for f in (36, 16, 8, 4, 2, 1):
        rest = tokens // f
        h = int(rest**0.5)
        while h > 1 and rest % h:
            h -= 1
        if f * h * (rest // h) == tokens and h > 1:
            return f, h, rest // h
    return 1, 1, tokens


def bench_block(args, device, dtype) -> dict:
    heads, tokens = args.block_heads, args.block_tokens
    cfg = DiTConfig(num_layers=1, num_heads=heads, head_dim=128, caption_channels=[6144, 1024])
    f, h, w = _latent_grid(tokens)
    text = args.text_tokens
    torch.manual_seed(0)
    block = StepVideoBlock(cfg).to(device=device, dtype=dtype)
    d = cfg.hidden_size
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(1, tokens, d, generator=g).to(device, dtype).requires_grad_(True)
    ctx = torch.randn(1, text, d, generator=g).to(device, dtype)
    ctx_mask = torch.ones(1, text, dtype=torch.bool, device=device)
    mod = (0.1 * torch.randn(1, 6 * d, generator=g)).to(device, dtype)
    cos, sin = RoPE3D(cfg.head_dim, cfg.resolved_rope_split, cfg.rope_theta).tables(f, h, w, device=device)
    grad = torch.randn(1, tokens, d, generator=g).to(device, dtype)

    def step():
        block.zero_grad(set_to_none=True)
        x.grad = None
        out = block(x, ctx, ctx_mask, mod, cos, sin, cfg.attention_backend)
        out.backward(grad)

    _reset_peak(device)
    dt = _median_time(step, args.iters, device)
    # one block's forward FLOPs: the difference of a 2-layer and a 1-layer model's counts
    one = forward_flops(cfg, f, h, w, llm_len=text, clip_len=0)
    two = forward_flops(_with_layers(cfg, 2), f, h, w, llm_len=text, clip_len=0)
    fwd_flops = two["total"] - one["total"]
    return {
        "width": d, "heads": heads, "tokens": tokens, "grid": [f, h, w], "text_tokens": text,
        "step_s": dt, "tflops": 3 * fwd_flops / dt / 1e12, "fwd_tflop": fwd_flops / 1e12,
        "peak_mem_gib": _peak_gib(device),
    }


def _with_layers(cfg: DiTConfig, layers: int) -> DiTConfig:
    import dataclasses

    return dataclasses.replace(cfg, num_layers=layers)


def bench_vae(args, device, dtype) -> dict:
    cfg = VAEConfig.official() if args.vae_config == "official" else VAEConfig.tiny()
    torch.manual_seed(0)
    vae = VideoVAE(cfg).to(device=device, dtype=dtype).eval()
    f = cfg.spatial_factor
    lat_t = vae.latent_frames(args.vae_frames)
    g = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(1, lat_t, cfg.z_channels, args.vae_height // f, args.vae_width // f, generator=g).to(device, dtype)
    tile = args.vae_tile or None
    overlap = 0 if (tile is None or args.vae_tile_mode == "exact") else args.vae_tile_overlap
    kw = dict(tile_size=tile, tile_overlap=overlap, tile_mode=args.vae_tile_mode)
    vae.decode(z[:, : cfg.latent_chunk], **kw)  # warm-up: one chunk
    _reset_peak(device)
    _sync(device)
    t0 = time.perf_counter()
    out = vae.decode(z, **kw)
    _sync(device)
    dt = time.perf_counter() - t0
    return {
        "config": args.vae_config, "frames": out.shape[1], "height": out.shape[3], "width": out.shape[4],
        "tile": tile, "tile_overlap": overlap, "tile_mode": args.vae_tile_mode,
        "seconds": dt, "fps": out.shape[1] / dt, "peak_mem_gib": _peak_gib(device),
    }


def bench_train(args, device, dtype) -> dict:
    cfg = DiTConfig.preset(args.train_preset)
    torch.manual_seed(0)
    model = StepVideoDiT(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = args.train_batch
    fr, hh, ww = args.train_latent
    g = torch.Generator(device="cpu").manual_seed(0)
    x0 = torch.randn(b, fr, cfg.in_channels, hh, ww, generator=g).to(device)
    noise = torch.randn(b, fr, cfg.in_channels, hh, ww, generator=g).to(device)
    llm = torch.randn(b, 64, cfg.llm_dim, generator=g).to(device)
    clip = torch.randn(b, 16, cfg.clip_dim, generator=g).to(device) if cfg.clip_dim else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()

    def step():
        t = torch.rand(b, device=device)
        xt = (1 - t.view(-1, 1, 1, 1, 1)) * noise + t.view(-1, 1, 1, 1, 1) * x0
        with autocast:
            v = model(xt, t, llm, None, clip)
        loss = (v.float() - (x0 - noise)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    dt = _median_time(step, args.iters, device)
    return {"preset": args.train_preset, "batch": b, "latent": list(args.train_latent), "step_s": dt,
            "samples_per_s": b / dt}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="CUDA: the block at 16k tokens")
    ap.add_argument("--smoke", action="store_true", help="CPU: the smallest sizes (seconds)")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    ap.add_argument("--vae-tile", type=int, default=None, help="decode tile size in pixels (0 = untiled)")
    ap.add_argument("--vae-tile-overlap", type=int, default=None)
    ap.add_argument("--vae-tile-mode", default="blend", choices=["blend", "exact"])
    ap.add_argument("--train-batch", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the bf16 peak used for MFU")
    ap.add_argument("--skip", default="", help="comma list of block,vae,train to skip")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    if not cuda:
        torch.set_num_threads(args.threads)
    # sizes
    if cuda:
        args.block_heads, args.block_tokens = 48, (16_384 if args.quick else 75_888)
        args.text_tokens = 397  # 320 Step-LLM + 77 CLIP
        args.vae_config, args.vae_frames, args.vae_height, args.vae_width = "official", 204, 544, 992
        tile_default, overlap_default = 256, 64
        args.train_preset, args.train_latent = "small", (4, 16, 16)
        args.train_batch = args.train_batch or 8
        args.iters = args.iters or 5
    elif args.smoke:
        args.block_heads, args.block_tokens, args.text_tokens = 2, 256, 32
        args.vae_config, args.vae_frames, args.vae_height, args.vae_width = "tiny", 17, 32, 32
        tile_default, overlap_default = 16, 0
        args.train_preset, args.train_latent = "demo", (2, 8, 8)
        args.train_batch = args.train_batch or 2
        args.iters = args.iters or 1
    else:
        args.block_heads, args.block_tokens, args.text_tokens = 4, 4096, 96
        args.vae_config, args.vae_frames, args.vae_height, args.vae_width = "tiny", 17, 128, 128
        tile_default, overlap_default = 64, 16
        args.train_preset, args.train_latent = "small", (4, 16, 16)
        args.train_batch = args.train_batch or 4
        args.iters = args.iters or 2
    args.vae_tile = tile_default if args.vae_tile is None else args.vae_tile
    args.vae_tile_overlap = overlap_default if args.vae_tile_overlap is None else args.vae_tile_overlap
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    mode = "CUDA, bf16" if cuda else "CPU, fp32, SCALED-DOWN sizes (not the 30B geometry)"
    backend = ("flash-attn" if flash_available() else "SDPA") if cuda else "SDPA"
    print(f"device: {name} ({mode}); attention: {backend}; torch {torch.__version__}"
          + ("" if cuda else f", threads {torch.get_num_threads()}, cpus {os.cpu_count()}"))
    if cuda:
        peak = args.peak_tflops or peak_bf16_tflops(name)
        peak_label = f"dense bf16 peak {peak:.0f} TFLOP/s" if peak else "no bf16 peak known for this device"
    else:
        peak = args.peak_tflops or matmul_tflops(device, dtype)
        peak_label = f"measured fp32 torch.mm 2048^2 rate {peak * 1e3:.1f} GFLOP/s"
    print(f"MFU against: {peak_label}")
    result: dict = {"device": name, "cuda": cuda, "dtype": str(dtype), "attention": backend, "peak_tflops": peak}

    if "block" not in skip:
        r = bench_block(args, device, dtype)
        r["mfu"] = r["tflops"] / peak if peak else None
        result["block"] = r
        print(f"block (width {r['width']}, {r['heads']} heads x 128) fwd+bwd at {r['tokens']:,} tokens "
              f"({'x'.join(map(str, r['grid']))}) + {r['text_tokens']} text: {r['step_s'] * 1e3:.1f} ms, "
              f"{r['tflops']:.3f} TFLOP/s"
              + (f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else "")
              + f", peak mem {r['peak_mem_gib']:.2f} GiB" + ("" if cuda else " (process RSS)"), flush=True)
    if "vae" not in skip:
        r = bench_vae(args, device, dtype)
        result["vae"] = r
        tiled = f"{r['tile']} px tiles ({r['tile_mode']}, overlap {r['tile_overlap']})" if r["tile"] else "untiled"
        print(f"VAE decode ({r['config']} geometry) {r['frames']} frames at {r['height']}x{r['width']}, {tiled}: "
              f"{r['seconds']:.2f} s, {r['fps']:.2f} frames/s, peak mem {r['peak_mem_gib']:.2f} GiB"
              + ("" if cuda else " (process RSS)"), flush=True)
    if "train" not in skip:
        r = bench_train(args, device, dtype)
        result["train"] = r
        print(f"training step ({r['preset']} preset, batch {r['batch']}, latent {'x'.join(map(str, r['latent']))}, "
              f"{'bf16 autocast' if cuda else 'fp32'}, bare fwd+bwd+AdamW): {r['step_s'] * 1e3:.1f} ms, "
              f"{r['samples_per_s']:.2f} samples/s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
