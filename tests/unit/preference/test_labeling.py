"""Human preference labeling for Video-DPO: candidates, pairs, the labels file, import, agreement and
human pairs (the HTTP server and the page in Chromium: test_labeling_server.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import REPO
from labeling_helpers import PROMPTS, make_candidates, rows_of
from stepvideo.cli.dpo import label_app
from stepvideo.preference.labeling import (PartialLineWarning, agreement, annotator_order, append_labels, human_pairs,
                                           import_labels, label_pairs, load_candidates, make_label, read_labels)


@pytest.fixture(scope="module")
def _template(tmp_path_factory) -> Path:
    return make_candidates(tmp_path_factory.mktemp("candidates"))


@pytest.fixture
def cands(_template, tmp_path) -> Path:
    d = tmp_path / "cands"
    shutil.copytree(_template, d)
    return d


# ------------------------------------------------------------------ candidates and pairs

def test_load_candidates_and_pairs(cands):
    rows = load_candidates(cands)
    assert [r["id"] for r in rows][:2] == ["c0001-en-s0", "c0001-en-s1"]
    pairs = label_pairs(rows)
    assert len(pairs) == 6
    assert pairs[0] == {"pair_id": "c0001-en-s0|c0001-en-s1", "prompt": PROMPTS["c0001"], "prompt_id": "c0001",
                        "lang": "en", "a": "c0001-en-s0", "b": "c0001-en-s1"}
    assert label_pairs(list(reversed(rows))) == pairs  # deterministic
    assert all(p["prompt_id"] == p["a"][:5] == p["b"][:5] for p in pairs)


@pytest.mark.parametrize("line, problem", [
    ("{not json", "not valid JSON"),
    ('{"id": "x", "prompt_id": "c9", "lang": "en", "video": "videos/c0001-en-s0.mp4"}', "missing key prompt"),
    ('{"id": "x", "prompt_id": "c9", "lang": "en", "prompt": "p", "video": "videos/nope.mp4"}', "'videos/nope.mp4' not found"),
    ('{"id": "x", "prompt_id": "c9", "lang": "en", "prompt": "p", "video": "../../etc/passwd"}', "outside"),
    ('{"id": "c0001-en-s0", "prompt_id": "c9", "lang": "en", "prompt": "p", "video": "videos/c0001-en-s0.mp4"}', "duplicate id"),
    ('{"id": "x", "prompt_id": "c0001", "lang": "en", "prompt": "other", "video": "videos/c0001-en-s0.mp4"}', "prompt differs"),
])
def test_load_candidates_errors_name_file_and_line(cands, line, problem):
    path = cands / "candidates.jsonl"
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(ValueError) as e:
        load_candidates(cands)
    assert f"{path}:7" in str(e.value) and problem in str(e.value)


def test_load_candidates_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="candidates.jsonl"):
        load_candidates(tmp_path)


def test_annotator_order_differs_and_is_stable(cands):
    pairs = label_pairs(load_candidates(cands))
    alice, bob = annotator_order(pairs, "alice"), annotator_order(pairs, "bob")
    assert annotator_order(pairs, "alice") == alice  # stable (restarts: same hash)
    assert sorted(p["pair_id"] for p in alice) == sorted(p["pair_id"] for p in pairs)
    assert all({p["left"], p["right"]} == {p["a"], p["b"]} for p in alice)
    assert [(p["pair_id"], p["left"]) for p in alice] != [(p["pair_id"], p["left"]) for p in bob]
    sides = {n: [p["left"] == p["a"] for p in sorted(annotator_order(pairs, n), key=lambda p: p["pair_id"])]
             for n in ("alice", "bob", "carol", "dan")}
    assert len({tuple(v) for v in sides.values()}) > 1  # which candidate is on the left varies too
    assert any(not all(v) for v in sides.values())


# ------------------------------------------------------------------ the labels file

def _label(pair, winner, annotator, answer=None):
    """A label for `pair` with `winner` ("a", "b", "tie", "skip") from `annotator`."""
    if winner in ("tie", "skip"):
        return make_label(pair, pair["a"], pair["b"], winner, annotator)
    chosen, rejected = (pair["a"], pair["b"]) if winner == "a" else (pair["b"], pair["a"])
    return make_label(pair, rejected, chosen, "right", annotator)


def test_append_and_partial_last_line(cands):
    pairs = label_pairs(load_candidates(cands))
    path = cands / "labels.jsonl"
    append_labels(path, [_label(pairs[0], "a", "x"), _label(pairs[1], "tie", "x")])
    assert path.read_bytes().endswith(b"\n") and len(read_labels(path)) == 2
    with open(path, "ab") as fh:  # a write cut off by a crash
        fh.write(b'{"pair_id": "c0001-en-s0|c00')
    with pytest.warns(PartialLineWarning, match="partial last line"):
        assert [r["answer"] for r in read_labels(path)] == ["right", "tie"]
    with pytest.warns(PartialLineWarning, match="cut off"):
        append_labels(path, [_label(pairs[2], "skip", "x")])
    rows = rows_of(path)  # every line whole
    assert [r["answer"] for r in rows] == ["right", "tie", "skip"]
    # a complete last line without its newline is kept, and gets one before the next append
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert len(read_labels(path)) == 3
    append_labels(path, [_label(pairs[3], "b", "y")])
    assert len(rows_of(path)) == 4
    # a bad line that is not the last one is an error naming the line
    path.write_text("{oops\n" + path.read_text())
    with pytest.raises(ValueError, match=r"labels.jsonl:1: not valid JSON"):
        read_labels(path)


def test_append_is_atomic(cands, monkeypatch):
    pairs = label_pairs(load_candidates(cands))
    path = cands / "labels.jsonl"

    def worker(name):
        for i in range(40):
            append_labels(path, [_label(pairs[i % 6], "a", name)])

    threads = [threading.Thread(target=worker, args=(f"t{k}",)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(rows_of(path)) == 240
    # a process killed at a random moment while appending never leaves half a line
    code = ("import sys; from stepvideo.preference.labeling import *; ps = label_pairs(load_candidates(sys.argv[1]))\n"
            "row = make_label(ps[0], ps[0]['a'], ps[0]['b'], 'left', 'k' * 3000)\n"
            "while True: append_labels(sys.argv[2], [row])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(cands), str(path)], cwd=REPO)
    deadline = time.time() + 30
    while len(path.read_bytes().split(b"\n")) < 300 and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    data = path.read_bytes()
    assert data.endswith(b"\n") and all(json.loads(line) for line in data.splitlines())
    # a short write is undone: nothing is appended
    before = path.read_bytes()
    monkeypatch.setattr(os, "write", lambda fd, b: len(b) // 2)
    with pytest.raises(OSError, match="short write"):
        append_labels(path, [_label(pairs[0], "a", "z")])
    monkeypatch.undo()
    assert path.read_bytes() == before


# ------------------------------------------------------------------ import

def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"prompt": PROMPTS["c0001"], "chosen": "c0001-en-s2", "rejected": "videos/c0001-en-s0.mp4"}


@pytest.mark.parametrize("bad, problem", [
    ("{oops", "not valid JSON"),
    ({"prompt": PROMPTS["c0001"], "chosen": "c0001-en-s2"}, "missing or empty rejected"),
    ({**GOOD, "chosen": "videos/unknown.mp4"}, "neither a candidate id nor a candidate's video"),
    ({**GOOD, "chosen": "c0001-en-s0"}, "same candidate"),
    ({**GOOD, "rejected": "c0002-en-s0"}, "not in the same prompt group"),
    ({**GOOD, "prompt": "A green cat."}, "does not match the candidates' prompt"),
])
def test_import_validation_names_the_line_and_appends_nothing(cands, tmp_path, bad, problem):
    f = _write_jsonl(tmp_path / "ext.jsonl", [GOOD, bad])
    with pytest.raises(ValueError) as e:
        import_labels(f, cands)
    assert f"{f}:2" in str(e.value) and problem in str(e.value)
    assert not (cands / "labels.jsonl").exists()
    result = CliRunner().invoke(label_app, ["import", str(f), "--candidates", str(cands)])
    assert result.exit_code == 2 and "error:" in result.stderr and ":2: " in result.stderr
    assert not (cands / "labels.jsonl").exists()


def test_import_good(cands, tmp_path):
    absolute = str((cands / "videos" / "c0002-en-s1.mp4").resolve())
    f = _write_jsonl(tmp_path / "ext.jsonl", [GOOD, {"prompt": PROMPTS["c0002"] + " ", "chosen": absolute,
                                                     "rejected": "c0002-en-s0", "annotator": "eve"}])
    result = CliRunner().invoke(label_app, ["import", str(f), "--candidates", str(cands)])
    assert result.exit_code == 0, result.output
    assert "imported 2 labels" in result.stdout
    rows = rows_of(cands / "labels.jsonl")
    assert rows[0]["pair_id"] == "c0001-en-s0|c0001-en-s2" and rows[0]["answer"] == "left"
    assert (rows[0]["left"], rows[0]["right"], rows[0]["chosen"], rows[0]["rejected"]) == (
        "c0001-en-s2", "c0001-en-s0", "c0001-en-s2", "c0001-en-s0")
    assert rows[0]["annotator"] == "import:ext.jsonl" and rows[0]["time"].endswith("Z")
    assert (rows[1]["chosen"], rows[1]["rejected"], rows[1]["annotator"]) == ("c0002-en-s1", "c0002-en-s0", "eve")
    other = tmp_path / "other.jsonl"
    assert import_labels(f, cands, other) == 2 and len(rows_of(other)) == 2


# ------------------------------------------------------------------ agreement and human pairs

def test_agreement_and_human_pairs(cands):
    cand = load_candidates(cands)
    p = label_pairs(cand)
    labels = [
        _label(p[0], "a", "x"), _label(p[0], "a", "y"), _label(p[0], "b", "z"),
        _label(p[0], "skip", "x"),  # a later skip does not withdraw x's vote
        _label(p[1], "a", "x"), _label(p[1], "tie", "y"), _label(p[1], "tie", "x"),  # x's latest: tie
        _label(p[2], "skip", "x"), _label(p[2], "b", "y"),  # one voter only
        _label(p[3], "a", "x"), _label(p[3], "b", "y"),  # split
    ]
    # multi pairs: p0 (a, a, b): 1 agreeing annotator pair of 3; p1 (tie, tie): 1 of 1; p3 (a, b): 0 of 1
    # observed = 2/5; categories a 3, b 2, tie 2 of 7: chance = (9 + 4 + 4) / 49
    ag = agreement(labels)
    observed, chance = 2 / 5, 17 / 49
    assert ag["pairs_multi"] == 3
    assert ag["pairwise_agreement"] == pytest.approx(observed)
    assert ag["fleiss_kappa"] == pytest.approx((observed - chance) / (1 - chance))
    assert agreement(labels[:1]) == {"pairs_multi": 0, "pairwise_agreement": None, "fleiss_kappa": None}
    assert agreement([_label(p[0], "a", "x"), _label(p[0], "a", "y")])["fleiss_kappa"] is None  # chance = 1

    hp = human_pairs(labels, cand)
    assert hp == [
        {"prompt_id": "c0001", "lang": "en", "prompt": PROMPTS["c0001"], "chosen": p[0]["a"], "rejected": p[0]["b"],
         "source": "human", "margin": None, "round": 0, "votes": 2, "total": 3, "annotators": ["x", "y", "z"]},
        {"prompt_id": "c0001", "lang": "en", "prompt": PROMPTS["c0001"], "chosen": p[2]["b"], "rejected": p[2]["a"],
         "source": "human", "margin": None, "round": 0, "votes": 1, "total": 1, "annotators": ["y"]},
    ]  # p1 (tie wins) and p3 (split) dropped


def test_stats_cli(cands):
    p = label_pairs(load_candidates(cands))
    append_labels(cands / "labels.jsonl", [_label(p[0], "a", "x"), _label(p[0], "a", "y"), _label(p[1], "skip", "x")])
    result = CliRunner().invoke(label_app, ["stats", "--candidates", str(cands)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "6 candidates in 2 prompt groups: 6 pairs; 3 answer(s) from 2 annotator(s)" in out
    assert "pairwise agreement 1.000" in out and "human preference pairs" in out
    assert CliRunner().invoke(label_app, ["stats", "--candidates", str(cands / "nope")]).exit_code == 2
