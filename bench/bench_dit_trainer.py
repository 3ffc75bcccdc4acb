"""The DiT trainer's overhead: its step throughput against a bare forward+backward+AdamW loop at the
same shapes, and against this machine's fp32 matmul rate, all measured in one run.

    python bench/bench_dit_trainer.py [--preset small] [--steps 30] [--batch 8] [--size 64] [--json PATH]

Builds a small latent cache (synthetic clips, a random tiny VAE, tiny text encoders) in a temporary
folder, then times

* ``train_dit`` (DeepSpeed engine, ZeRO-0, per-sample RNG, caption dropout, the latent cache's
  batches, NaN guard, LR schedule; checkpoints only at the end), from its own samples/s windows
  after the first (warm-up excluded);
* the bare loop: the same model and batch shapes, tensors prepared once, ``loss.backward()`` and
  ``torch.optim.AdamW`` with clipping: what any trainer must pay;
* a 1024^3 fp32 matmul.

and prints samples/s, achieved GFLOP/s (3 x the forward matmul FLOPs) and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stepvideo.data.latent_cache import LatentCache, build_latent_cache  # noqa: E402
from stepvideo.data.manifest import read_manifest  # noqa: E402
from stepvideo.data.synth import SynthConfig, generate  # noqa: E402
from stepvideo.diffusion.flow_matching import flow_matching_loss, training_pair  # noqa: E402
from stepvideo.models.dit import DiTConfig, StepVideoDiT  # noqa: E402
from stepvideo.models.dit_info import forward_flops  # noqa: E402
from stepvideo.models.text_encoders import TextEncoder  # noqa: E402
from stepvideo.models.tiny_text import build_tiny_text_encoders  # noqa: E402
from stepvideo.models.vae import VAEConfig, VideoVAE  # noqa: E402
from stepvideo.training.dit_trainer import DiTTrainConfig, train_dit  # noqa: E402


def matmul_gflops(n: int = 1024, iters: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def build_cache(root: Path, size: int, clips: int) -> Path:
    manifest = generate(SynthConfig(clips=clips, images=0, height=size, width=size, degraded_fraction=0.0),
                        root / "data", progress=False)
    rows = read_manifest(manifest)
    paths = build_tiny_text_encoders(sorted({r["caption"] for r in rows}), root / "enc", llm_dim=64, clip_dim=32,
                                     layers=1, heads=2, seed=0, vocab_size=512)
    enc = {k: TextEncoder.from_pretrained(str(paths[k]), kind=k) for k in ("llm", "clip")}
    torch.manual_seed(0)
    return build_latent_cache(rows, manifest.parent, VideoVAE(VAEConfig.tiny()), enc, root / "cache",
                              data_version="bench", vae_version="random", low_res=None, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", help="DiT preset (demo | small)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=64, help="clip height = width in pixels")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench-dit-trainer-") as tmp:
        cache_dir = build_cache(Path(tmp), args.size, args.clips)
        cache = LatentCache(cache_dir)
        z = int(cache.meta["z_channels"])
        model_cfg = DiTConfig.preset(args.preset, in_channels=z, out_channels=z, caption_channels=[64, 32])
        cfg = DiTTrainConfig(model=model_cfg.to_dict(), kinds=("video",), steps=args.steps, batch_size=args.batch,
                             lr=1e-4, log_every=5, checkpoint_every=10**6, caption_dropout=0.1)
        windows: list[float] = []
        train_dit(cfg, cache_dir, Path(tmp) / "run", progress=False,
                  log_fn=lambda step, m: windows.append(m["samples_per_s"]))
        trainer_sps = statistics.median(windows[1:]) if len(windows) > 1 else windows[0]

        # the bare loop on the same shapes
        idx = cache.select(kinds=("video",))[: args.batch]
        b = cache.batch(idx, "full")
        text = {k: b[k] for k in ("llm_emb", "llm_mask", "clip_emb", "clip_mask")}
        torch.manual_seed(0)
        model = StepVideoDiT(model_cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x1 = b["mean"]
        t = torch.rand(x1.shape[0])
        x_t, target, _ = training_pair(x1, t, torch.randn_like(x1))

        def bare_step() -> None:
            loss = flow_matching_loss(model(x_t, t, **text), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        for _ in range(3):
            bare_step()
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            bare_step()
            times.append(time.perf_counter() - t0)
        bare_sps = x1.shape[0] / statistics.median(times)

        f, _, h, w = x1.shape[1:]
        flops = 3 * forward_flops(model_cfg, f, h, w, llm_len=text["llm_emb"].shape[1],
                                  clip_len=text["clip_emb"].shape[1])["total"]
        mm = matmul_gflops()
    res = {
        "preset": args.preset, "batch": args.batch, "latent_shape": [int(f), int(h), int(w)], "threads": torch.get_num_threads(),
        "matmul_gflops": mm, "trainer_samples_per_s": trainer_sps, "bare_samples_per_s": bare_sps,
        "trainer_over_bare": trainer_sps / bare_sps,
        "trainer_gflops": trainer_sps * flops / 1e9, "bare_gflops": bare_sps * flops / 1e9,
    }
    res["trainer_fraction_of_matmul"] = res["trainer_gflops"] / mm
    res["bare_fraction_of_matmul"] = res["bare_gflops"] / mm
    print(f"DiT preset {args.preset}, batch {args.batch}, latent {f}x{h}x{w}, {res['threads']} threads (fp32, CPU)")
    print(f"  fp32 matmul 1024^3:           {mm:8.1f} GFLOP/s")
    print(f"  bare fwd+bwd+AdamW:           {bare_sps:8.1f} samples/s  {res['bare_gflops']:7.2f} GFLOP/s "
          f"({res['bare_fraction_of_matmul']:.1%} of matmul)")
    print(f"  train_dit (DeepSpeed ZeRO-0): {trainer_sps:8.1f} samples/s  {res['trainer_gflops']:7.2f} GFLOP/s "
          f"({res['trainer_fraction_of_matmul']:.1%} of matmul)")
    print(f"  trainer / bare:               {res['trainer_over_bare']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
