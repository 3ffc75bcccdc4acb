"""Human preference labeling for Video-DPO: candidates, pairs, the labels file, import, agreement,
human pairs, the HTTP server, and the page in a real headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import REPO
from stepvideo.cli.dpo import label_app
from stepvideo.preference.labeling import (PartialLineWarning, agreement, annotator_order, append_labels, human_pairs,
                                           import_labels, label_pairs, load_candidates, make_label, make_server,
                                           read_labels)

CHROMIUM = Path("/usr/bin/chromium")
PROMPTS = {"c0001": "A red circle moves right.", "c0002": "A blue square grows."}


def _make_candidates(d: Path) -> Path:
    """2 prompt groups x 3 seeds of real 17x64x64 H.264 clips: 6 pairs."""
    from stepvideo.data.video_io import write_video

    rows = []
    for g, (pid, prompt) in enumerate(PROMPTS.items()):
        for s in range(3):
            cid = f"{pid}-en-s{s}"
            frames = np.zeros((17, 64, 64, 3), np.uint8)
            frames[..., g * 2] = 50 + 60 * s
            for t in range(17):
                frames[t, 24:40, 3 * t:3 * t + 14] = 255
            write_video(d / "videos" / f"{cid}.mp4", frames)
            rows.append({"id": cid, "prompt_id": pid, "lang": "en", "prompt": prompt, "seed": s, "round": 0,
                         "video": f"videos/{cid}.mp4", "latent": f"latents/{cid}.safetensors", "attributes": None,
                         "model": "test"})
    (d / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture(scope="module")
def _template(tmp_path_factory) -> Path:
    return _make_candidates(tmp_path_factory.mktemp("candidates"))


@pytest.fixture
def cands(_template, tmp_path) -> Path:
    d = tmp_path / "cands"
    shutil.copytree(_template, d)
    return d


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


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
    rows = _lines(path)  # every line whole
    assert [r["answer"] for r in rows] == ["right", "tie", "skip"]
    # a complete last line without its newline is kept, and gets one before the next append
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert len(read_labels(path)) == 3
    append_labels(path, [_label(pairs[3], "b", "y")])
    assert len(_lines(path)) == 4
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
    assert len(_lines(path)) == 240
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
    rows = _lines(cands / "labels.jsonl")
    assert rows[0]["pair_id"] == "c0001-en-s0|c0001-en-s2" and rows[0]["answer"] == "left"
    assert (rows[0]["left"], rows[0]["right"], rows[0]["chosen"], rows[0]["rejected"]) == (
        "c0001-en-s2", "c0001-en-s0", "c0001-en-s2", "c0001-en-s0")
    assert rows[0]["annotator"] == "import:ext.jsonl" and rows[0]["time"].endswith("Z")
    assert (rows[1]["chosen"], rows[1]["rejected"], rows[1]["annotator"]) == ("c0002-en-s1", "c0002-en-s0", "eve")
    other = tmp_path / "other.jsonl"
    assert import_labels(f, cands, other) == 2 and len(_lines(other)) == 2


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


# ------------------------------------------------------------------ the HTTP server

@pytest.fixture
def server(cands):
    srv = make_server(cands, port=0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", srv
    srv.shutdown()
    srv.server_close()


def _http(url, body=None, headers=None):
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_server_endpoints(server, cands):
    base, srv = server
    status, headers, page = _http(base + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"Left better" in page
    assert b"http://" not in page and b"https://" not in page  # nothing from the web
    status, _, body = _http(base + "/api/next?annotator=alice")
    nxt = json.loads(body)
    assert status == 200 and (nxt["answered"], nxt["total"], nxt["done"]) == (0, 6, False)
    pair = nxt["pair"]
    answer = {"annotator": "alice", "pair_id": pair["pair_id"], "left": pair["left"], "right": pair["right"]}
    for bad, msg in [({**answer, "pair_id": "x|y", "answer": "left"}, "unknown pair_id"),
                     ({**answer, "left": pair["right"], "right": pair["right"], "answer": "left"}, "left/right"),
                     ({**answer, "right": "c0002-en-s0", "answer": "left"}, "left/right"),
                     ({**answer, "pair_id": ["x"], "answer": "left"}, "unknown pair_id"),
                     ({**answer, "left": [pair["left"]], "answer": "left"}, "left/right"),
                     ({**answer, "answer": "both"}, "answer 'both'"),
                     ({**answer, "annotator": " ", "answer": "tie"}, "annotator")]:
        status, headers, body = _http(base + "/api/label", bad)
        assert status == 400 and msg in json.loads(body)["error"], body
    assert _http(base + "/api/label", b"[1, 2")[0] == 400  # not JSON
    assert _http(base + "/api/label", "a string")[0] == 400
    assert _http(base + "/api/next?annotator=")[0] == 400
    assert not (cands / "labels.jsonl").exists()
    status, _, body = _http(base + "/api/label", {**answer, "answer": "right"})
    res = json.loads(body)
    assert status == 200 and res["label"]["chosen"] == pair["right"] and res["next"]["answered"] == 1
    assert res["next"]["pair"]["pair_id"] != pair["pair_id"]
    assert json.loads(_http(base + "/api/next?annotator=bob")[2])["answered"] == 0  # progress is per annotator

    video = (cands / "videos" / "c0001-en-s0.mp4").read_bytes()
    status, headers, body = _http(base + pair["left_video"].replace(pair["left"], "c0001-en-s0"))
    assert status == 200 and headers["Content-Type"] == "video/mp4" and body == video
    assert headers["Accept-Ranges"] == "bytes"
    status, headers, body = _http(base + "/media/videos/c0001-en-s0.mp4", headers={"Range": "bytes=100-199"})
    assert status == 206 and body == video[100:200] and headers["Content-Range"] == f"bytes 100-199/{len(video)}"
    status, _, body = _http(base + "/media/videos/c0001-en-s0.mp4", headers={"Range": "bytes=-50"})
    assert status == 206 and body == video[-50:]
    assert _http(base + "/media/videos/c0001-en-s0.mp4", headers={"Range": f"bytes={len(video)}-"})[0] == 416
    (cands.parent / "secret.txt").write_text("no")
    for path in ("/media/../secret.txt", "/media/%2e%2e/secret.txt", "/media/videos/%2e%2e/%2e%2e/secret.txt",
                 "/media//etc/passwd", "/media/videos/none.mp4", "/nothing"):
        assert _http(base + path)[0] == 404, path


def _raw_post(base: str, length: str, body: bytes) -> int:
    """POST /api/label with a Content-Length header as given (urllib would compute a true one)."""
    import http.client

    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/api/label")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", length)
    conn.endheaders()
    try:
        conn.send(body)
    except OSError:  # the server answered and closed before the whole body went out
        pass
    status = conn.getresponse().status
    conn.close()
    return status


def test_bad_lengths_and_deep_json_get_an_answer_and_store_nothing(server, cands):
    """Content-Length -1 used to read to EOF past the size limit and store the label; a length that is
    no number or a JSON nested 60,000 deep left a traceback and no response."""
    base, _ = server
    labels = cands / "labels.jsonl"
    before = labels.read_bytes() if labels.exists() else b""
    answer = json.dumps({"pair_id": "x", "answer": "left", "annotator": "a"}).encode()
    assert _raw_post(base, "-1", answer + b" " * 5_000_000) == 400
    assert _raw_post(base, "abc", answer) == 400
    assert _raw_post(base, str(70_000), b"x" * 70_000) == 413
    deep = b"[" * 60_000 + b"]" * 60_000
    assert _raw_post(base, str(len(deep)), deep) in (400, 413)
    deep = b"[" * 30_000 + b"]" * 30_000
    assert _raw_post(base, str(len(deep)), deep) == 400
    assert (labels.read_bytes() if labels.exists() else b"") == before
    assert _http(base + "/api/next?annotator=a")[0] == 200  # the server still answers


def test_media_serves_the_candidates_videos_only(server, cands):
    """Anyone who reaches the port must not read every annotator's answers or the candidates file."""
    base, _ = server
    labels = cands / "labels.jsonl"
    if not labels.exists():
        labels.write_text("")
    assert (cands / "candidates.jsonl").is_file()
    for path in ("/media/labels.jsonl", "/media/candidates.jsonl", "/media/videos/"):
        assert _http(base + path)[0] == 404, path
    assert _http(base + "/media/videos/c0001-en-s0.mp4")[0] == 200


# ------------------------------------------------------------------ the page in a real browser

class _CDP:
    """A minimal Chrome DevTools Protocol client on one page target."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=20)
        self.n = 0

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expr: str, timeout: float = 20.0):
        deadline, last = time.time() + timeout, None
        while time.time() < deadline:
            try:
                if value := self.js(expr):
                    return value
            except RuntimeError as e:  # a reload destroys the context under us
                last = e
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expr} (last error {last})")

    def key(self, key: str, code: str, vk: int, text: str | None = None):
        extra = {"text": text} if text else {}
        self.call("Input.dispatchKeyEvent", type="keyDown", key=key, code=code, windowsVirtualKeyCode=vk,
                  nativeVirtualKeyCode=vk, **extra)
        self.call("Input.dispatchKeyEvent", type="keyUp", key=key, code=code, windowsVirtualKeyCode=vk,
                  nativeVirtualKeyCode=vk)

    def click(self, selector: str):
        box = self.js(f"(() => {{ const r = document.querySelector('{selector}').getBoundingClientRect();"
                      " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=box[0], y=box[1])
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)


SHOWN = ("({pair: document.getElementById('task').dataset.pairId, left: document.getElementById('left').dataset.id,"
         " right: document.getElementById('right').dataset.id})")
PROGRESS = "document.getElementById('progress').textContent"


def _start_server(cands: Path, port: int, log: Path) -> tuple[subprocess.Popen, str]:
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "stepvideo.cli", "label", "serve", "--candidates", str(cands),
                             "--port", str(port)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        text = log.read_text()
        if "open http://" in text:
            return proc, text.split("open ")[1].split()[0]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the server did not start:\n{log.read_text()}")


def _answer_and_wait(cdp: _CDP, action, n_done: int) -> dict:
    shown = cdp.js(SHOWN)
    action()
    cdp.wait(f"{PROGRESS}.startsWith('{n_done} of 6')")
    return shown


def test_labeling_page_in_chromium(cands, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed")
    labels = cands / "labels.jsonl"
    server = chrome = None
    try:
        server, url = _start_server(cands, 0, tmp_path / "server.log")
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        profile = tmp_path / "chrome"
        chrome = subprocess.Popen([str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu",
                                   "--remote-debugging-port=0", f"--user-data-dir={profile}", "--no-first-run",
                                   "--no-default-browser-check", "--autoplay-policy=no-user-gesture-required",
                                   "--window-size=1200,800", url],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        active, deadline = profile / "DevToolsActivePort", time.time() + 30
        while not (active.exists() and active.read_text().count("\n") >= 1) and time.time() < deadline:
            time.sleep(0.05)
        devtools = int(active.read_text().split()[0])
        deadline = time.time() + 20
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{devtools}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
            if pages or time.time() > deadline:
                break
            time.sleep(0.1)
        cdp = _CDP(pages[0]["webSocketDebuggerUrl"])

        # the annotator's name first
        cdp.wait("!document.getElementById('login').hidden")
        assert cdp.js("document.getElementById('task').hidden")
        cdp.js("document.getElementById('name').value = 'alice';"
               "document.getElementById('login-form').requestSubmit()")
        cdp.wait(f"{PROGRESS} === '0 of 6 done' && !document.getElementById('task').hidden")
        assert "T" in cdp.js("document.querySelector('.keys').textContent")  # the keys are documented

        answered = [  # (what was on screen, the answer)
            (_answer_and_wait(cdp, lambda: cdp.click("#btn-left"), 1), "left"),
            (_answer_and_wait(cdp, lambda: cdp.key("ArrowRight", "ArrowRight", 39), 2), "right"),
            (_answer_and_wait(cdp, lambda: cdp.key("t", "KeyT", 84, "t"), 3), "tie"),
        ]
        assert cdp.js(PROGRESS) == "3 of 6 done"
        assert len({s["pair"] for s, _ in answered}) == 3

        # both videos: the right files, playing (when this Chromium decodes H.264), in step
        shown = cdp.js(SHOWN)
        for side in ("left", "right"):
            src = cdp.js(f"document.getElementById('{side}').currentSrc")
            assert src == f"{url}media/videos/{shown[side]}.mp4"
            assert cdp.js(f"(v => v.muted && v.loop && v.playsInline)(document.getElementById('{side}'))")
        try:
            cdp.wait("[...document.querySelectorAll('video')].every(v => !v.paused && v.readyState >= 2 "
                     "&& v.currentTime > 0)", timeout=10)
            playing = True
        except AssertionError:
            playing = False
        print(f"videos playing in Chromium: {playing}")
        if playing:  # in step: the offset between the two clocks, modulo the loop (median of 5 looks)
            offsets = []
            for _ in range(5):
                time.sleep(0.2)
                offsets.append(cdp.js("(([l, r]) => { const d = Math.abs(l.currentTime - r.currentTime);"
                                      " return Math.min(d, l.duration - d); })"
                                      "([...document.querySelectorAll('video')])"))
            assert sorted(offsets)[2] < 0.3, offsets
        else:  # no H.264 in this build: the elements must say so, not be silently stuck
            assert cdp.js("document.getElementById('left').error?.code") == 4, "videos neither play nor fail"
        shot = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
        if os.environ.get("STEPVIDEO_SCREENSHOT"):
            Path(os.environ["STEPVIDEO_SCREENSHOT"]).write_bytes(shot)

        # kill the server: nothing answered is lost, each line is what was on screen
        server.kill()
        server.wait()
        rows = _lines(labels)
        assert len(rows) == 3
        for row, (seen, answer) in zip(rows, answered):
            assert (row["pair_id"], row["left"], row["right"], row["answer"], row["annotator"]) == (
                seen["pair"], seen["left"], seen["right"], answer, "alice")
            chosen = {"left": seen["left"], "right": seen["right"]}.get(answer)
            rejected = {"left": seen["right"], "right": seen["left"]}.get(answer)
            assert (row["chosen"], row["rejected"]) == (chosen, rejected)

        # restart: the page remembers the name and continues; answered pairs are not shown again
        server, _ = _start_server(cands, port, tmp_path / "server2.log")
        cdp.call("Page.reload", ignoreCache=True)
        cdp.wait(f"{PROGRESS} === '3 of 6 done' && !document.getElementById('task').hidden")
        assert cdp.js("document.getElementById('login').hidden")
        assert cdp.js(SHOWN)["pair"] not in {s["pair"] for s, _ in answered}
        answered += [
            (_answer_and_wait(cdp, lambda: cdp.key("1", "Digit1", 49, "1"), 4), "left"),
            (_answer_and_wait(cdp, lambda: cdp.js("document.getElementById('btn-right').click()"), 5), "right"),
            (_answer_and_wait(cdp, lambda: cdp.key(" ", "Space", 32, " "), 6), "skip"),
        ]
        cdp.wait("!document.getElementById('finished').hidden")
        assert "all 6 pairs" in cdp.js("document.getElementById('finished-text').textContent")
        rows = _lines(labels)
        assert [r["answer"] for r in rows] == [a for _, a in answered]
        assert sorted(r["pair_id"] for r in rows) == sorted(p["pair_id"] for p in label_pairs(load_candidates(cands)))
    finally:
        if chrome is not None:
            os.killpg(chrome.pid, signal.SIGKILL)
            chrome.wait()
        if server is not None:
            server.kill()
            server.wait()


def test_a_port_out_of_range_is_one_line_not_a_traceback(cands):
    from typer.testing import CliRunner

    from stepvideo.cli import app

    for port in ("70000", "-1"):
        res = CliRunner().invoke(app, ["label", "serve", "--candidates", str(cands), "--port", port])
        assert res.exit_code == 2 and "--port" in res.output and "Traceback" not in res.output, res.output
