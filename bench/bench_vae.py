"""Video-VAE throughput and peak memory vs clip length (streamed, chunk-by-chunk inference).

Each (mode, frames) measurement runs in a fresh subprocess so the RSS high-water mark
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that run alone. The worker builds the
model, makes the input, runs one 17-frame warm-up, then times one full encode or decode.

    .venv/bin/python bench/bench_vae.py                       # tiny config, 128x128, 17/34/102/204 frames
    .venv/bin/python bench/bench_vae.py --size 64 --frames 17 34

"peak" is the process RSS high-water (torch runtime included); "over base" subtracts the RSS measured
just before the timed call (model + input already allocated), i.e. what the call itself added.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(mode: str, frames: int, size: int, threads: int) -> dict:
    import torch

    from stepvideo.models.vae import VAEConfig, VideoVAE

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vae = VideoVAE(VAEConfig.tiny()).eval()
    f = vae.config.spatial_factor
    g = torch.Generator().manual_seed(0)
    if mode == "encode":
        x = torch.rand(1, frames, 3, size, size, generator=g) * 2 - 1
        vae.encode(x[:, :17])  # warm-up: one chunk
        fn = vae.encode
    else:
        x = torch.randn(1, vae.latent_frames(frames), vae.config.z_channels, size // f, size // f, generator=g)
        vae.decode(x[:, :3])
        fn = vae.decode
    base = _current_rss_mb()
    t0 = time.perf_counter()
    out = fn(x)
    dt = time.perf_counter() - t0
    del out
    peak = _rss_mb()
    return {"mode": mode, "frames": frames, "seconds": dt, "fps": frames / dt, "peak_mb": peak, "base_mb": base}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128, help="square frame side in pixels (multiple of 16)")
    p.add_argument("--frames", type=int, nargs="+", default=[17, 34, 102, 204])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", nargs=2, metavar=("MODE", "FRAMES"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.size, args.threads)))
        return 0

    rows = []
    for mode in ("encode", "decode"):
        for frames in args.frames:
            cmd = [sys.executable, __file__, "--size", str(args.size), "--threads", str(args.threads)]
            cmd += ["--worker", mode, str(frames)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                return res.returncode
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))

    print(f"VideoVAE tiny (VAEConfig.tiny(), 2.2M params), {args.size}x{args.size}, {args.threads} threads, fp32 CPU")
    print(f"{'mode':<7} {'frames':>6} {'seconds':>8} {'frames/s':>9} {'peak RSS MB':>12} {'over base MB':>13}")
    for r in rows:
        print(
            f"{r['mode']:<7} {r['frames']:>6} {r['seconds']:>8.2f} {r['fps']:>9.2f} "
            f"{r['peak_mb']:>12.1f} {r['peak_mb'] - r['base_mb']:>13.1f}"
        )
    for mode in ("encode", "decode"):
        by = {r["frames"]: r for r in rows if r["mode"] == mode}
        if 204 in by and 34 in by:
            ratio = by[204]["peak_mb"] / by[34]["peak_mb"]
            over = (by[204]["peak_mb"] - by[204]["base_mb"]) / max(by[34]["peak_mb"] - by[34]["base_mb"], 1e-9)
            print(f"{mode}: peak RSS 204/34 = {ratio:.3f} (target <= 1.25); over-base 204/34 = {over:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
