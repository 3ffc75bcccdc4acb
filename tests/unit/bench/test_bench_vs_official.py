"""bench/bench_vs_official.py at its smallest size. Needs a Step-Video-T2V checkout: set
STEPVIDEO_OFFICIAL=PATH (the folder holding stepvideo/); skipped otherwise."""

from __future__ import annotations

import os

import pytest

from conftest import load_bench

OFFICIAL = os.environ.get("STEPVIDEO_OFFICIAL")
pytestmark = pytest.mark.skipif(not OFFICIAL, reason="set STEPVIDEO_OFFICIAL to a Step-Video-T2V checkout")


def test_tiny_run_matches_the_official_modules(capsys):
    import sys

    bench = load_bench("bench_vs_official")
    ours_before = sys.modules["stepvideo"].__file__
    result = bench.main(["--official", OFFICIAL, "--threads", "1", "--repeats", "1", "--dit-cases", "demo",
                         "--vae-cases", "17x16", "--vae-width-div", "4"])
    out = capsys.readouterr().out
    assert "fp32 matmul peak" in out and "official/ours" in out
    assert sys.modules["stepvideo"].__file__ == ours_before  # our package is back in place
    assert result["dit"][0]["max_diff"] < 1e-4
    assert {r["mode"] for r in result["vae"]} == {"encode", "decode"}
    assert all(r["max_diff"] < 5e-4 and r["ratio"] > 0 for r in result["vae"])
