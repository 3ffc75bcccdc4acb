"""The scorer on real ground-truth clips: accuracy per category on the demo dataset's held-out split,
on a freshly generated set at another seed and resolution, and after a round trip through the
project's VAE (how much content the VAE keeps); plus the scorer's speed.

    python bench/bench_scorer.py [--manifest data/manifest.jsonl] [--vae outputs/vae] [--fresh-clips 120]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stepvideo.data.synth import SynthConfig, generate  # noqa: E402
from stepvideo.evaluation.checks import CATEGORIES  # noqa: E402
from stepvideo.evaluation.runner import score_manifest, vae_roundtrip  # noqa: E402


def _row(name: str, summary: dict) -> str:
    cells = " ".join(f"{100 * v:6.1f}" if v is not None else "   n/a" for v in
                     (summary["categories"][c] for c in CATEGORIES))
    return f"{name:<28} {cells} {100 * summary['overall']:7.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, default=ROOT / "data" / "manifest.jsonl")
    ap.add_argument("--vae", type=Path, default=ROOT / "outputs" / "vae")
    ap.add_argument("--fresh-clips", type=int, default=120)
    ap.add_argument("--vae-items", type=int, default=64)
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = args.manifest
        if not manifest.is_file():
            print(f"{manifest} not found: generating the demo dataset", file=sys.stderr)
            manifest = generate(SynthConfig(clips=400, images=400), Path(tmp) / "demo", progress=False)
        t0 = time.perf_counter()
        heldout = score_manifest(manifest, split="heldout", progress=False)
        seconds = time.perf_counter() - t0
        media = len({v["video"] for v in heldout["videos"]})
        rows.append(_row(f"demo held-out ({media} media)", heldout["summary"]))
        fresh_cfg = SynthConfig(clips=args.fresh_clips, images=args.fresh_clips // 3, seed=5, height=96, width=128,
                                heldout_fraction=0.0)
        fresh = score_manifest(generate(fresh_cfg, Path(tmp) / "fresh", progress=False), progress=False)
        rows.append(_row(f"seed 5, 96x128 ({len({v['video'] for v in fresh['videos']})} media)", fresh["summary"]))
        if (args.vae / "config.json").is_file():
            from stepvideo.models.vae import VideoVAE

            vae = VideoVAE.from_pretrained(args.vae).eval()
            rt = score_manifest(manifest, split="heldout", max_items=args.vae_items, transform=vae_roundtrip(vae),
                                progress=False)
            gt = score_manifest(manifest, split="heldout", max_items=args.vae_items, progress=False)
            rows.append(_row(f"same {args.vae_items}, as stored", gt["summary"]))
            rows.append(_row("  after the VAE round trip", rt["summary"]))
        else:
            print(f"no VAE at {args.vae}: the round-trip row is skipped", file=sys.stderr)
    print(f"{'scorer accuracy (%)':<28} " + " ".join(f"{c[:6]:>6}" for c in CATEGORIES) + "  overall")
    for r in rows:
        print(r)
    print(f"scorer speed: {media / seconds:.1f} media/s ({seconds:.1f} s for the held-out split, 64x64, 17 frames)")


if __name__ == "__main__":
    main()
