"""Held-out reconstruction of the Video-VAE after a preset's training budget (PSNR / SSIM).

Trains the `vae` section of a params preset (or params file) on that preset's synthetic dataset,
exactly as the `train_vae` stage does (same trainer config), and prints the held-out PSNR/SSIM
curve, the training time and, for reference, the fidelity of the dataset's own lossy mp4 encoding
(the held-out clips' stored frames against their clean renders: a VAE trained to reproduce the
stored frames cannot be expected to beat its own ground truth's distance to the clean signal).

    .venv/bin/python bench/bench_vae_recon.py                      # demo preset, embedded data/
    .venv/bin/python bench/bench_vae_recon.py --preset small       # generates the small dataset first
    .venv/bin/python bench/bench_vae_recon.py --steps 1000 --eval-every 100

Artifacts go to --work (default .cache/bench-vae-recon/<preset>/); the run resumes from its
checkpoints if interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _stored_vs_clean(cfg, rows: list[dict], root: Path) -> tuple[float, float, int]:
    from stepvideo.data.synth import clean_clip
    from stepvideo.data.video_io import read_video
    from stepvideo.training.vae_losses import psnr, ssim

    seen, p, s = set(), [], []
    for r in rows:
        if r["split"] != "heldout" or r["kind"] != "video" or r["clip_id"] in seen:
            continue
        seen.add(r["clip_id"])
        clean = torch.from_numpy(clean_clip(cfg, int(r["clip_id"].split("_")[1]))).permute(0, 3, 1, 2) / 255.0
        stored = torch.from_numpy(read_video(root / r["path"])).permute(0, 3, 1, 2) / 255.0
        p.append(psnr(clean, stored))
        s.append(ssim(clean, stored))
    return float(np.mean(p)), float(np.mean(s)), len(p)


def main(argv: list[str] | None = None) -> int:
    from stepvideo.config import load_params, preset
    from stepvideo.data.manifest import read_manifest
    from stepvideo.data.synth import SynthConfig, generate
    from stepvideo.stages.vae import vae_train_config
    from stepvideo.training.vae_trainer import load_clips, train_vae, train_vae_recipe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", help="params preset (demo | small | ...)")
    ap.add_argument("--params", help="a params.yaml instead of a preset")
    ap.add_argument("--steps", type=int, help="override vae.steps")
    ap.add_argument("--eval-every", type=int, help="override vae.eval_every")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, help="working folder (dataset, checkpoints)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    params = load_params(args.params) if args.params else preset(args.preset)
    if args.steps is not None:
        params.vae.steps = args.steps
    if args.eval_every is not None:
        params.vae.eval_every = args.eval_every
    name = Path(args.params).stem if args.params else args.preset
    work = args.work or Path(".cache/bench-vae-recon") / name
    d = params.data
    synth = SynthConfig(clips=d.clips, images=d.images, seed=d.seed, height=d.height, width=d.width,
                        frames=d.frames, fps=d.fps, heldout_fraction=d.heldout_fraction,
                        degraded_fraction=d.degraded_fraction)
    data = work / "data"
    if not (data / "manifest.jsonl").is_file():
        t0 = time.time()
        generate(synth, data)
        print(f"dataset: {d.clips} clips + {d.images} stills at {d.height}x{d.width}, {time.time() - t0:.0f} s")
    rows = read_manifest(data / "manifest.jsonl")
    stage1, cfg = vae_train_config(params)
    train = load_clips(rows, data, split="train")
    heldout = load_clips(rows, data, split="heldout", max_items=cfg.eval_max_items)
    t0 = time.time()
    if stage1 is None:
        result = train_vae(cfg, train, heldout, work / "run", progress=True)
    else:
        result = train_vae_recipe(stage1, cfg, train, heldout, work / "run", progress=True)
    wall = time.time() - t0
    floor_psnr, floor_ssim, n = _stored_vs_clean(synth, rows, data)

    recipe = f"{stage1.steps} stage-1 steps (4x8x8) + " if stage1 is not None else ""
    print(f"\npreset {name}: model {params.vae.model}, {recipe}{cfg.steps} steps, batch {cfg.batch_size}, crop "
          f"{cfg.crop_size}, lr {cfg.lr} ({cfg.lr_schedule}), {len(train)} train / {len(heldout)} held-out items")
    print(f"training wall time: {wall:.0f} s ({args.threads} threads; resumed runs count only this process)")
    if stage1 is not None:
        print(f"stage 1 (4x8x8, no dual path) after {stage1.steps} steps: {result['stage1_heldout_psnr']:.2f} dB, "
              f"SSIM {result['stage1_heldout_ssim']:.3f}; stage 2 (8x16x16) below")
    print("step   held-out PSNR (dB)   SSIM")
    for point in result["heldout_curve"]:
        print(f"{point['step']:>5}   {point['heldout_psnr']:>18.2f}   {point['heldout_ssim']:.3f}")
    print(f"dataset's own mp4 fidelity (stored vs clean render, {n} held-out clips): "
          f"{floor_psnr:.2f} dB PSNR, {floor_ssim:.3f} SSIM")
    summary = {"preset": name, "steps": cfg.steps, "wall_s": wall, "curve": result["heldout_curve"],
               "stored_vs_clean": {"psnr": floor_psnr, "ssim": floor_ssim, "clips": n},
               "vae": dataclasses.asdict(params.vae)}
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
