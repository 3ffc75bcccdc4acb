"""Learning per CPU-second: how fast each VAE recipe learns to keep the content of a clip.

Every candidate (a VAE geometry plus trainer settings) trains from scratch for the same budget of
training seconds on the same data; the held-out PSNR/SSIM curve is printed against *training
seconds* (evaluation time excluded), so a slower step has to earn its cost. At the end of each run
the scorer judges the held-out clips after a round trip through the VAE (colour, shape, count,
background, ...: how much of what a prompt asks for survives the latent), next to the same scorer
on the clips as they are.

    .venv/bin/python bench/bench_learning.py --list                         # the candidates
    .venv/bin/python bench/bench_learning.py --candidates demo,z64 --seconds 200
    .venv/bin/python bench/bench_learning.py --smoke                        # seconds: the suite runs it

The data are the `demo` preset's synthetic set (400 clips + 400 stills, 64x64x17, lossless),
generated once into --data (default ~/.cache/stepvideo/bench-data/demo). Each candidate runs at
--threads threads (default 1: two benches side by side on a 2-core box stay comparable); its
steps are sized from a short probe of its image- and video-step times so that the cosine schedule
ends at the budget. Results go to --work/<candidate>/result.json (a finished candidate is not
rerun) and a table is printed for the candidates asked for.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CACHE = Path.home() / ".cache" / "stepvideo"

# Trainer settings every candidate starts from (the `small` preset's VAE recipe before this bench).
BASE_TRAIN: dict[str, Any] = {"batch_size": 4, "lr": 1.0e-3, "lr_schedule": "cosine", "warmup_steps": 50,
                              "image_prob": 0.75, "kl_weight": 1.0e-6, "sample_posterior": False,
                              "crop_size": 64, "eval_size": 64, "eval_max_items": 16, "l1_weight": 1.0}
# 8x spatial / 8x temporal with the same block types: three levels, the dual path, z on an 8x8 grid
S8 = {"encoder_ch_mult": (1, 2, 4), "decoder_ch_mult": (1, 2, 4), "encoder_temporal_levels": (0, 1),
      "decoder_temporal_levels": (1, 2)}

# name -> (what it tests, VAEConfig overrides of VAEConfig.demo(), trainer overrides of BASE_TRAIN)
CANDIDATES: dict[str, tuple[str, dict, dict]] = {
    "demo": ("today's geometry and recipe: 8x16x16, z=16, widths 16-64", {}, {}),
    "z64": ("z=64 (the official latent width; patch width 128)", {"z_channels": 64, "patch_channels": 128}, {}),
    "s8": ("8x8x8 compression (z=16 on an 8x8 grid at 64x64)", S8, {}),
    "s8-z32": ("8x8x8, z=32", {**S8, "z_channels": 32, "patch_channels": 128}, {}),
    "lr3e-3": ("lr 3e-3 (warm-up 50)", {}, {"lr": 3.0e-3}),
    "batch8": ("batch 8 (half the steps per second)", {}, {"batch_size": 8}),
    "img95": ("95% image batches (images are ~5x cheaper per step)", {}, {"image_prob": 0.95}),
    "l2-edge": ("L1 + L2 + edge (gradient) loss", {}, {"l2_weight": 1.0, "edge_weight": 1.0}),
    "object4": ("object pixels weighted 1 + 4 (far from the frame's median colour)", {}, {"object_weight": 4.0}),
    "groups4": ("GroupNorm with 4 groups instead of per-frame layer norm", {"norm_groups": 4}, {}),
    "blocks2": ("two res blocks per level (deeper)", {"num_res_blocks": 2}, {}),
    "small": ("the recipe picked from the rows above (the `small` preset's VAE: VAEConfig.small)",
              {**S8, "norm_groups": 4}, {"image_prob": 0.9, "l2_weight": 1.0, "edge_weight": 1.0,
                                         "object_weight": 4.0, "warmup_steps": 100}),
    "stage1": ("the report's stage-1 form: 4x8x8, no dual path", {"patchify": False, "dual_path": False,
                                                               "latent_chunk": 5}, {}),
}

TABLE_CATEGORIES = ("color", "shape", "count", "background")


def _config(name: str, steps: int, extra: dict | None = None):
    from stepvideo.models.vae import VAEConfig
    from stepvideo.training.vae_trainer import VAETrainConfig

    _, model_over, train_over = CANDIDATES[name]
    model = {**VAEConfig.demo().to_dict(), **model_over}
    train = {**BASE_TRAIN, **train_over, **(extra or {})}
    return VAETrainConfig(model=VAEConfig.from_dict(model).to_dict(), steps=steps, **train)


def probe_step_seconds(cfg, train: list[np.ndarray], repeats: int) -> tuple[float, float]:
    """Seconds of one image step and one video step of this config (a throwaway model)."""
    import dataclasses

    from stepvideo.models.vae import VAEConfig, VideoVAE
    from stepvideo.training.vae_losses import pixel_loss
    from stepvideo.training.vae_trainer import _draw_batch

    model = VideoVAE(VAEConfig.from_dict(cfg.model)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(0)
    videos = [i for i, c in enumerate(train) if c.shape[0] >= 17]
    out = []
    for image_prob in (1.0, 0.0):
        c = dataclasses.replace(cfg, image_prob=image_prob)
        times = []
        for i in range(repeats + 1):
            x = _draw_batch(train, videos, c, rng)
            t0 = time.perf_counter()
            recon, _ = model(x, sample=False)
            loss = pixel_loss(recon, x, c)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t0)
        out.append(float(np.median(times)))
    return out[0], out[1]


class _Clock:
    """log_fn for train_vae: training seconds at each held-out evaluation, evaluation time excluded."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.eval_seconds = 0.0
        self.last_train_call = self.start
        self.curve: list[dict[str, float]] = []

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        if "heldout_psnr" in metrics:
            self.eval_seconds += now - self.last_train_call
            self.curve.append({"step": step, "seconds": round(now - self.start - self.eval_seconds, 1),
                               "psnr": metrics["heldout_psnr"], "ssim": metrics["heldout_ssim"]})
        else:
            self.last_train_call = now


def run_candidate(name: str, seconds: float, data: Path, work: Path, threads: int, points: int,
                  scorer_items: int, progress: bool, smoke: bool = False) -> dict:
    from stepvideo.data.manifest import read_manifest
    from stepvideo.evaluation.runner import score_manifest, summary_metrics, vae_roundtrip
    from stepvideo.models.vae import VideoVAE
    from stepvideo.training.vae_trainer import load_clips, train_vae

    done = work / name / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    torch.set_num_threads(threads)
    rows = [r for r in read_manifest(data / "manifest.jsonl") if r.get("degradation", "none") == "none"]
    train = load_clips(rows, data, split="train")
    heldout = load_clips(rows, data, split="heldout")
    extra = {"crop_size": 32, "eval_size": 32, "eval_max_items": 2} if smoke else None
    probe_cfg = _config(name, 1, extra)
    t_img, t_vid = probe_step_seconds(probe_cfg, train, repeats=1 if smoke else 3)
    per_step = probe_cfg.image_prob * t_img + (1 - probe_cfg.image_prob) * t_vid
    steps = max(4, int(seconds / per_step))
    cfg = _config(name, steps, extra)
    cfg.eval_every = max(1, steps // points)
    cfg.log_every = cfg.eval_every
    cfg.checkpoint_every = steps
    cfg.warmup_steps = min(cfg.warmup_steps, steps // 5)
    cfg.threads = threads
    clock = _Clock()
    result = train_vae(cfg, train, heldout, work / name / "run", log_fn=clock, progress=progress, resume=False)
    train_seconds = time.perf_counter() - clock.start - clock.eval_seconds
    vae = VideoVAE.from_pretrained(result["model_dir"]).eval()
    rt = score_manifest(data / "manifest.jsonl", split="heldout", max_items=scorer_items, transform=vae_roundtrip(vae),
                        progress=False)
    out = {"name": name, "what": CANDIDATES[name][0], "steps": steps, "train_seconds": round(train_seconds, 1),
           "image_step_s": round(t_img, 3), "video_step_s": round(t_vid, 3), "threads": threads,
           "params_m": round(sum(p.numel() for p in vae.parameters()) / 1e6, 2),
           "compression": f"{vae.config.temporal_factor}x{vae.config.spatial_factor}x{vae.config.spatial_factor}",
           "z": vae.config.z_channels, "curve": clock.curve,
           "scorer_vae": summary_metrics(rt["summary"], ""), "model_dir": result["model_dir"],
           "train_config": cfg.to_dict()}
    done.parent.mkdir(parents=True, exist_ok=True)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(done)
    return out


def ground_truth_scores(data: Path, work: Path, scorer_items: int) -> dict:
    """The scorer on the held-out clips as they are (the ceiling of every round trip)."""
    from stepvideo.evaluation.runner import score_manifest, summary_metrics

    f = work / "ground_truth.json"
    if f.is_file():
        return json.loads(f.read_text())
    gt = summary_metrics(score_manifest(data / "manifest.jsonl", split="heldout", max_items=scorer_items,
                                        progress=False)["summary"], "")
    work.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(gt, indent=2) + "\n")
    return gt


def table(results: list[dict], gt: dict) -> str:
    head = ("candidate", "geometry", "s/img step", "s/vid step", "steps", "train s", "PSNR curve (dB @ s)",
            "SSIM", *TABLE_CATEGORIES, "overall")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        curve = ", ".join(f"{p['psnr']:.1f}@{p['seconds']:.0f}" for p in r["curve"])
        s = r["scorer_vae"]
        cats = [f"{100 * s.get(c, float('nan')):.0f}%" for c in TABLE_CATEGORIES]
        lines.append(f"| {r['name']} | {r['compression']} z{r['z']} {r['params_m']}M | {r['image_step_s']:.2f} | "
                     f"{r['video_step_s']:.2f} | {r['steps']} | {r['train_seconds']:.0f} | {curve} | "
                     f"{r['curve'][-1]['ssim']:.3f} | " + " | ".join(cats) + f" | {100 * s.get('overall', 0):.0f}% |")
    cats = [f"{100 * gt.get(c, float('nan')):.0f}%" for c in TABLE_CATEGORIES]
    lines.append("| clips as they are | | | | | | | | " + " | ".join(cats) + f" | {100 * gt.get('overall', 0):.0f}% |")
    return "\n".join(lines)


def _smoke_data(root: Path) -> Path:
    from stepvideo.data.synth import SynthConfig, generate

    data = root / "data"
    if not (data / "manifest.jsonl").is_file():
        generate(SynthConfig(clips=6, images=6, seed=3, heldout_fraction=0.34, degraded_fraction=0.0), data,
                 progress=False)
    return data


def _demo_data(data: Path) -> Path:
    from stepvideo.config import preset
    from stepvideo.data.synth import SynthConfig, generate

    if not (data / "manifest.jsonl").is_file():
        d = preset("demo").data
        generate(SynthConfig(clips=d.clips, images=d.images, seed=d.seed, height=d.height, width=d.width,
                             frames=d.frames, fps=d.fps, heldout_fraction=d.heldout_fraction,
                             degraded_fraction=d.degraded_fraction, lossless=d.lossless), data)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", default="demo,z64,s8", help="comma-separated names (--list shows them)")
    ap.add_argument("--seconds", type=float, default=200.0, help="training seconds per candidate")
    ap.add_argument("--points", type=int, default=4, help="held-out evaluations per run")
    ap.add_argument("--scorer-items", type=int, default=64, help="held-out manifest rows the scorer judges")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", type=Path, default=CACHE / "bench-data" / "demo")
    ap.add_argument("--work", type=Path, default=CACHE / "bench-learning")
    ap.add_argument("--list", action="store_true", help="print the candidates and exit")
    ap.add_argument("--smoke", action="store_true", help="a 12-clip dataset, 32-px crops, a few seconds each")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        for name, (what, _, _) in CANDIDATES.items():
            print(f"{name:10s} {what}")
        return 0
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        ap.error(f"unknown candidates {unknown}; --list shows them")
    if args.smoke:
        args.seconds, args.points, args.scorer_items = min(args.seconds, 3.0), 2, 4
        data = _smoke_data(args.work)
    else:
        data = _demo_data(args.data)
    gt = ground_truth_scores(data, args.work, args.scorer_items)
    results = []
    for name in names:
        r = run_candidate(name, args.seconds, data, args.work, args.threads, args.points, args.scorer_items,
                          progress=not args.no_progress, smoke=args.smoke)
        results.append(r)
        print(f"{name}: {r['steps']} steps in {r['train_seconds']:.0f} s, held-out {r['curve'][-1]['psnr']:.2f} dB, "
              f"round-trip colour {100 * r['scorer_vae'].get('color', 0):.0f}%", flush=True)
    print(f"\nVAE learning per CPU-second ({args.seconds:.0f} training s each, {args.threads} thread(s); "
          f"scorer on {args.scorer_items} held-out rows after the round trip)")
    print(table(results, gt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
