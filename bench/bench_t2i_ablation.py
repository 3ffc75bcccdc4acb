"""The report's first insight as an ablation: does text-to-image pre-training help text-to-video?

    python bench/bench_t2i_ablation.py [--cache outputs/latent_cache] [--t2i-steps 300] [--t2v-steps 300]

Two runs of the `t2v_lowres` recipe (low-res clips + 25% stills) with the same seed and the same
batches: (A) initialised from a `t2i_pretrain` run on the stills, (B) from scratch. Prints both
training-loss curves (mean per window of steps) and a held-out flow-matching loss (held-out clips
at low resolution, t in {0.1, 0.3, 0.5, 0.7, 0.9}, fixed noise) at the end of each run.

`--cache` defaults to the demo's `outputs/latent_cache` (run `make demo` first: latents of the
trained demo VAE); without it a cache of synthetic clips encoded by a random tiny VAE is built in
a temporary folder (the figures then say little about real latents).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stepvideo.data.latent_cache import LatentCache  # noqa: E402
from stepvideo.diffusion.flow_matching import flow_matching_loss, training_pair  # noqa: E402
from stepvideo.models.dit import DiTConfig, StepVideoDiT  # noqa: E402
from stepvideo.training.dit_trainer import DiTTrainConfig, train_dit  # noqa: E402

T_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def heldout_loss(model_dir: str, cache: LatentCache, resolution: str, max_items: int = 32) -> float:
    model = StepVideoDiT.from_pretrained(model_dir).eval()
    idx = cache.select(split="heldout", kinds=("video",))[:max_items]
    if not idx:
        return float("nan")
    total, n = 0.0, 0
    for _, members in cache.buckets(idx, resolution).items():
        b = cache.batch(members, resolution)
        text = {k: b[k] for k in ("llm_emb", "llm_mask", "clip_emb", "clip_mask") if k in b}
        g = torch.Generator().manual_seed(1234)
        for t_val in T_GRID:
            noise = torch.randn(b["mean"].shape, generator=g)
            t = torch.full((len(members),), t_val)
            x_t, target, _ = training_pair(b["mean"], t, noise)
            total += float(flow_matching_loss(model(x_t, t, **text), target)) * len(members)
            n += len(members)
    return total / n


def curve(losses: list[float], window: int) -> list[float]:
    out = []
    for i in range(0, len(losses), window):
        chunk = [x for x in losses[i:i + window] if x == x]
        out.append(sum(chunk) / max(len(chunk), 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("outputs/latent_cache"))
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--t2i-steps", type=int, default=300)
    ap.add_argument("--t2v-steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=25)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-t2i-ablation-") as tmp:
        tmp = Path(tmp)
        if args.cache.is_dir():
            cache_dir, source = args.cache, str(args.cache)
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from bench_dit_trainer import build_cache

            cache_dir, source = build_cache(tmp, 64, 48), "synthetic clips, random tiny VAE (no --cache found)"
        cache = LatentCache(cache_dir)
        z = int(cache.meta["z_channels"])
        dims = [int(cache.text.encoders[k]["dim"]) for k in ("llm", "clip") if k in cache.text.encoders]
        model = DiTConfig.preset(args.preset, in_channels=z, out_channels=z, caption_channels=dims).to_dict()
        common = dict(model=model, batch_size=args.batch, seed=args.seed, log_every=10**6, checkpoint_every=10**6,
                      warmup_steps=20, lr_schedule="cosine")
        t2v_res = "low" if "low" in cache.resolutions else "full"
        t2i = train_dit(DiTTrainConfig(kinds=("image",), resolution="full", steps=args.t2i_steps, lr=1e-3, **common),
                        cache_dir, tmp / "t2i", progress=True, name="t2i")
        runs = {}
        for label, init in (("with_t2i", t2i["model_dir"]), ("scratch", None)):
            cfg = DiTTrainConfig(init_from=init, kinds=("video", "image"), still_share=0.25, resolution=t2v_res,
                                 steps=args.t2v_steps, lr=5e-4, **common)
            r = train_dit(cfg, cache_dir, tmp / label, progress=True, name=f"t2v_lowres ({label})")
            runs[label] = {"curve": curve(r["loss_curve"], args.window), "loss_first": r["loss_first"],
                           "loss_last": r["loss_last"], "heldout_loss": heldout_loss(r["model_dir"], cache, t2v_res)}
    print(f"latent cache: {source}; DiT preset {args.preset}; batch {args.batch}; seed {args.seed}")
    print(f"t2i_pretrain: {args.t2i_steps} steps on stills, loss {t2i['loss_first']:.4f} -> {t2i['loss_last']:.4f}")
    print(f"t2v_lowres ({t2v_res}), {args.t2v_steps} steps, training loss per {args.window} steps:")
    print("  step      " + "  ".join(f"{(i + 1) * args.window:>6d}" for i in range(len(runs['scratch']['curve']))))
    for label, r in runs.items():
        print(f"  {label:<9}" + "  ".join(f"{x:6.4f}" for x in r["curve"]))
    for label, r in runs.items():
        print(f"  {label:<9} last-10 train loss {r['loss_last']:.4f}   held-out loss {r['heldout_loss']:.4f}")
    gain = runs["scratch"]["heldout_loss"] - runs["with_t2i"]["heldout_loss"]
    print(f"  held-out loss, scratch - with_t2i: {gain:+.4f} (positive: T2I pre-training helped)")
    if args.json:
        args.json.write_text(json.dumps({"t2i": {k: t2i[k] for k in ("loss_first", "loss_last")}, "runs": runs},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
