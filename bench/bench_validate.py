"""Validation-gate throughput: seconds per 1,000 manifest rows (probe + language ID + GE suite).

    .venv/bin/python bench/bench_validate.py [--clips 500] [--images 0]

Generates a synthetic dataset of the demo geometry (2 rows per clip), validates it, prints figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from stepvideo.config import ValidateParams
from stepvideo.data.synth import SynthConfig, generate
from stepvideo.data.validation import validate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=500)
    ap.add_argument("--images", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = generate(SynthConfig(clips=args.clips, images=args.images), Path(tmp) / "data", progress=False)
        t_synth = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (Path(tmp) / "data").rglob("*") if p.is_file())
        res = validate(manifest, ValidateParams(), Path(tmp) / "v", progress=False)
    print(f"synth: {args.clips} clips + {args.images} images in {t_synth:.1f} s, {size / 1e6:.2f} MB on disk")
    print(f"validate: {res.rows} rows in {res.seconds:.1f} s -> {res.seconds / res.rows * 1000:.1f} s per 1,000 rows "
          f"({res.bad_rows} bad)")


if __name__ == "__main__":
    main()
