"""Where the benchmark evaluation's time goes: videos/s of `run_benchmark` (the evaluate stage's
own code path) and the share spent in the text encoders, the DiT, the VAE decode, the mp4 writer
and the scorer.

    python bench/bench_sampling.py [--model release/stepvideo-tiny] [--prompts 32] [--batch 8]
                                   [--steps 20] [--cfg 5] [--shift 3] [--compile] [--threads 2]

The parts are timed by wrapping the functions `run_benchmark` calls (the pipeline's text
encoding, ``dit.forward``, ``vae.decode``, ``save_video``, the scorer's ``analyse`` and
``score_frames``) for the length of
one run; nothing else changes. ``--compile``: the same run with the DiT's blocks compiled
(``StepVideoDiT.compile_blocks``) after an uncompiled run, both printed with their ratio; the
compile time (the compiled run's first batch) is in its DiT share and printed apart.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import stepvideo.evaluation.runner as runner  # noqa: E402
import stepvideo.pipelines.t2v as t2v  # noqa: E402
from stepvideo.evaluation.prompts import load_benchmark  # noqa: E402
from stepvideo.evaluation.runner import balanced_subset, run_benchmark  # noqa: E402
from stepvideo.pipelines.t2v import T2VPipeline  # noqa: E402

PARTS = ("text encoders", "DiT", "VAE decode", "mp4 write", "scorer")


@contextlib.contextmanager
def timed(pipe: T2VPipeline):
    """Wrap each part's function with a timer; yields {part: [seconds, calls]}; restores them after."""
    spent = {p: [0.0, 0] for p in PARTS}
    patches = [(pipe, "_encode", "text encoders"), (pipe.dit, "forward", "DiT"), (pipe.vae, "decode", "VAE decode"),
               (t2v, "save_video", "mp4 write"), (runner, "analyse", "scorer"), (runner, "score_frames", "scorer")]
    saved = []
    for owner, name, part in patches:
        fn = getattr(owner, name)
        saved.append((owner, name, vars(owner).get(name)))  # None: a method of the class, not the object

        def wrapper(*a, _fn=fn, _part=part, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                spent[_part][0] += time.perf_counter() - t0
                spent[_part][1] += 1

        setattr(owner, name, wrapper)
    try:
        yield spent
    finally:
        for owner, name, original in saved:
            if original is None:
                delattr(owner, name)  # back to the class's method
            else:
                setattr(owner, name, original)


def one_run(pipe, prompts, args, label: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-sampling-") as tmp, timed(pipe) as spent:
        t0 = time.perf_counter()
        results = run_benchmark(pipe, prompts, tmp, batch_size=args.batch, steps=args.steps, cfg=args.cfg,
                                shift=args.shift, progress=False)
        wall = time.perf_counter() - t0
    n = results["summary"]["videos"]
    print(f"{label}: {n} videos in {wall:.1f} s = {n / wall:.2f} videos/s "
          f"(benchmark overall {100 * results['summary']['overall']:.1f}%)")
    rest = wall - sum(s for s, _ in spent.values())
    for part in PARTS:
        s, calls = spent[part]
        print(f"  {part:<14} {s:8.2f} s  {s / wall:6.1%}  ({calls} calls)")  # scorer: analyse + score_frames
    print(f"  {'other':<14} {rest:8.2f} s  {rest / wall:6.1%}  (the loop, report, results.json)")
    return {"wall": wall, "videos": n, "parts": {p: spent[p][0] for p in PARTS}, "overall": results["summary"]["overall"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "release" / "stepvideo-tiny"))
    ap.add_argument("--prompts", type=int, default=32, help="balanced subset of the 128 benchmark prompts")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--shift", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also run with the DiT's blocks compiled")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = T2VPipeline.from_pretrained(args.model)
    prompts = balanced_subset(load_benchmark(), args.prompts)
    print(f"{args.model}: {len(prompts)} prompts, batch {args.batch}, {args.steps} steps, cfg {args.cfg}, "
          f"{torch.get_num_threads()} threads (fp32, CPU)")
    out = {"eager": one_run(pipe, prompts, args, "eager")}
    if args.compile:
        pipe.dit.compile_blocks(dynamic=False)
        t0 = time.perf_counter()
        pipe.generate(["a red circle"] * args.batch, steps=1, cfg_scale=args.cfg, seed=list(range(args.batch)))
        print(f"compile (one 1-step batch): {time.perf_counter() - t0:.1f} s")
        out["compiled"] = one_run(pipe, prompts, args, "compiled DiT blocks")
        print(f"compiled / eager: {out['eager']['wall'] / out['compiled']['wall']:.2f}x the videos/s; DiT "
              f"{out['eager']['parts']['DiT'] / out['compiled']['parts']['DiT']:.2f}x")
    return out


if __name__ == "__main__":
    main()
