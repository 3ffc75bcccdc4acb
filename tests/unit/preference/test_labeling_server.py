"""The labeling server (`stepvideo label serve`) over real HTTP on 127.0.0.1, port 0, in a thread (or
the CLI in a subprocess): the endpoints, bad requests, cross-site and DNS-rebinding requests, the
token, 50 parallel answers, a stalled client, --host and --port; and the page in a real headless
Chromium."""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO
from labeling_helpers import make_candidates, rows_of
from stepvideo.preference.labeling import ANSWERS, label_pairs, load_candidates, make_server

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def _template(tmp_path_factory) -> Path:
    return make_candidates(tmp_path_factory.mktemp("candidates"))


@pytest.fixture
def cands(_template, tmp_path) -> Path:
    d = tmp_path / "cands"
    shutil.copytree(_template, d)
    return d


# ------------------------------------------------------------------ the HTTP server

def _serve(srv):
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}", srv


@pytest.fixture
def server(cands):
    base, srv = _serve(make_server(cands, port=0))
    yield base, srv
    srv.shutdown()
    srv.server_close()


def _http(url, body=None, headers=None, token=None):
    """GET (POST with a body: JSON, as the page sends it); `token`: sent as the page's script sends it."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    headers = dict(headers or {})
    if token is not None:
        headers.setdefault("X-Stepvideo-Token", token)
    if data is not None:
        headers.setdefault("Content-Type", "application/json")  # urllib's default is a form's
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_server_endpoints(server, cands):
    base, srv = server
    tok = srv.token
    status, headers, page = _http(srv.url)
    assert srv.url == f"{base}/?token={tok}"
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"Left better" in page
    assert b"http://" not in page and b"https://" not in page  # nothing from the web
    assert f'<meta name="stepvideo-token" content="{tok}">'.encode() in page  # for the page's script
    status, _, body = _http(base + "/api/next?annotator=alice", token=tok)
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
        status, headers, body = _http(base + "/api/label", bad, token=tok)
        assert status == 400 and msg in json.loads(body)["error"], body
    assert _http(base + "/api/label", b"[1, 2", token=tok)[0] == 400  # not JSON
    assert _http(base + "/api/label", "a string", token=tok)[0] == 400
    assert _http(base + "/api/next?annotator=", token=tok)[0] == 400
    assert not (cands / "labels.jsonl").exists()
    status, _, body = _http(base + "/api/label", {**answer, "answer": "right"}, token=tok)
    res = json.loads(body)
    assert status == 200 and res["label"]["chosen"] == pair["right"] and res["next"]["answered"] == 1
    assert res["next"]["pair"]["pair_id"] != pair["pair_id"]
    assert json.loads(_http(base + "/api/next?annotator=bob", token=tok)[2])["answered"] == 0  # per annotator

    video = (cands / "videos" / "c0001-en-s0.mp4").read_bytes()
    media = f"{base}/media/videos/c0001-en-s0.mp4?token={tok}"
    status, headers, body = _http(base + pair["left_video"].replace(pair["left"], "c0001-en-s0") + f"?token={tok}")
    assert status == 200 and headers["Content-Type"] == "video/mp4" and body == video
    assert headers["Accept-Ranges"] == "bytes"
    status, headers, body = _http(media, headers={"Range": "bytes=100-199"})
    assert status == 206 and body == video[100:200] and headers["Content-Range"] == f"bytes 100-199/{len(video)}"
    status, _, body = _http(media, headers={"Range": "bytes=-50"})
    assert status == 206 and body == video[-50:]
    assert _http(media, headers={"Range": f"bytes={len(video)}-"})[0] == 416
    (cands.parent / "secret.txt").write_text("no")
    for path in ("/media/../secret.txt", "/media/%2e%2e/secret.txt", "/media/videos/%2e%2e/%2e%2e/secret.txt",
                 "/media//etc/passwd", "/media/videos/none.mp4"):
        assert _http(f"{base}{path}?token={tok}")[0] == 404, path
    assert _http(base + "/nothing")[0] == 404


def _raw_post(srv, headers: list[tuple[str, str]], body: bytes, close_write: bool = True) -> int:
    """POST /api/label with exactly these headers (Host and the token added), whatever Content-Length
    says; the body goes out from a thread while the answer is read (the server may answer and close
    before the whole body is sent), then the sending side is shut (EOF: what `read(-1)` waited for)."""
    port = srv.server_address[1]
    head = [("Host", f"127.0.0.1:{port}"), ("X-Stepvideo-Token", srv.token), ("Content-Type", "application/json"),
            *headers]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /api/label HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head).encode("latin-1")
                 + b"\r\n")

    def send():
        try:
            sock.sendall(body)
            if close_write:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before the whole body went out
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        response.read()
        return response.status
    finally:
        sender.join(10)
        sock.close()


def test_bad_lengths_and_deep_json_get_an_answer_and_store_nothing(server, cands, capfd):
    """Content-Length -1 read to EOF past the 64 KiB limit and stored the label; a length that is no
    number or a JSON nested 60,000 deep left a traceback on stderr and no response."""
    base, srv = server
    p = label_pairs(load_candidates(cands))[0]
    answer = json.dumps({"annotator": "a", "pair_id": p["pair_id"], "left": p["a"], "right": p["b"],
                         "answer": "left"}).encode()  # a good answer: only its length is wrong
    length = [("Content-Length", str(len(answer)))]
    not_lengths = ("-1", "abc", "\u00b2", "1e3", "0x10", "+5", "1_0", " ")  # "\u00b2".isdigit(); int() refuses it
    for given, expected in [*((g, 400) for g in not_lengths), (str(10**20), 413), ("0" * 5000 + "9" * 5000, 413)]:
        status = _raw_post(srv, [("Content-Length", given)], answer + b" " * (5_000_000 if given == "-1" else 0))
        assert status == expected, given
    assert _raw_post(srv, [("Content-Length", "0" * 5000 + str(len(answer)))], answer) == 200  # a length still
    assert _raw_post(srv, length * 2, answer) == 200  # twice the same length: one answer
    assert _raw_post(srv, [*length, ("Content-Length", "5")], answer) == 400  # two lengths: which one?
    assert _raw_post(srv, [("Transfer-Encoding", "chunked")], b"%x\r\n%s\r\n0\r\n\r\n" % (len(answer), answer)) == 411
    assert _raw_post(srv, [("Content-Length", "70000")], b"x" * 70_000) == 413
    deep = b"[" * 60_000 + b"]" * 60_000
    assert _raw_post(srv, [("Content-Length", "-1")], deep) == 400
    assert _raw_post(srv, [("Content-Length", str(len(deep)))], deep) == 413
    deep = b"[" * 30_000 + b"]" * 30_000  # under 64 KiB: read, and too deep to be a label
    assert _raw_post(srv, [("Content-Length", str(len(deep)))], deep) == 400
    assert _raw_post(srv, [("Content-Length", "5")], b"\xff\xfe{}}") == 400  # not UTF-8 or JSON
    assert len(rows_of(cands / "labels.jsonl")) == 2  # the two good requests only
    assert _http(base + "/api/next?annotator=a", token=srv.token)[0] == 200  # the server still answers
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err


def test_a_labels_file_broken_while_serving_is_a_500_naming_it(server, cands, capfd):
    """Someone edits labels.jsonl while the server runs: a clear 500 naming FILE:LINE (on stderr too),
    not a traceback and a dropped connection; the answer is not stored past the broken line."""
    base, srv = server
    p = label_pairs(load_candidates(cands))[0]
    answer = {"annotator": "a", "pair_id": p["pair_id"], "left": p["a"], "right": p["b"], "answer": "tie"}
    assert _http(base + "/api/label", answer, token=srv.token)[0] == 200
    labels = cands / "labels.jsonl"
    labels.write_text("not json\n" + labels.read_text())
    status, _, body = _http(base + "/api/next?annotator=a", token=srv.token)
    assert status == 500 and f"{labels}:1: not valid JSON" in json.loads(body)["error"], body
    err = capfd.readouterr().err
    assert f"{labels}:1: not valid JSON" in err and "Traceback" not in err, err


def test_media_serves_the_candidates_videos_only(server, cands):
    """Anyone who reaches the port must not read every annotator's answers or the candidates file."""
    base, srv = server
    labels = cands / "labels.jsonl"
    if not labels.exists():
        labels.write_text("")
    assert (cands / "candidates.jsonl").is_file()
    for path in ("/media/labels.jsonl", "/media/candidates.jsonl", "/media/videos/"):
        assert _http(f"{base}{path}?token={srv.token}")[0] == 404, path
    assert _http(f"{base}/media/videos/c0001-en-s0.mp4?token={srv.token}")[0] == 200


def _request(srv, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             timeout: float = 10) -> tuple[int, bytes]:
    """One request on its own connection, every header as given (Host included)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=timeout)
    conn.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
    for k, v in {**({"Content-Length": str(len(body))} if body is not None else {}), **(headers or {})}.items():
        conn.putheader(k, v)
    conn.endheaders(body)
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


def _stored(cands: Path) -> int:
    path = cands / "labels.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_cross_site_and_dns_rebinding_requests_are_refused(server, cands):
    """The old server answered all of these 200, and stored the answers: any web page open in the
    annotator's browser could post labels (a form or fetch() to 127.0.0.1) and, by DNS rebinding,
    read the page, the pairs and the videos."""
    base, srv = server
    port, tok = srv.server_address[1], srv.token
    pair = json.loads(_http(base + "/api/next?annotator=eve", token=tok)[2])["pair"]
    answer = json.dumps({"annotator": "eve", "pair_id": pair["pair_id"], "left": pair["left"],
                         "right": pair["right"], "answer": "left"}).encode()
    ok = {"Host": f"127.0.0.1:{port}", "X-Stepvideo-Token": tok, "Content-Type": "application/json"}
    media = f"/media/videos/{pair['left']}.mp4"
    # DNS rebinding: evil.example resolves to 127.0.0.1, so its page's requests say Host: evil.example:PORT
    for method, path, body in [("GET", f"/?token={tok}", None), ("GET", "/api/next?annotator=eve", None),
                               ("GET", f"{media}?token={tok}", None), ("POST", "/api/label", answer)]:
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", f"127.0.0.1.evil.example:{port}"):
            status, body_ = _request(srv, method, path, body, {**ok, "Host": host})
            assert status == 403 and b"Host" in body_, (method, path, host, status)
    # the classic cross-site POST: a form or a "simple" fetch: text/plain, an Origin of its own, no token
    status, _ = _request(srv, "POST", "/api/label", answer,
                         {"Host": f"127.0.0.1:{port}", "Origin": "http://evil.example", "Content-Type": "text/plain"})
    assert status == 403
    # one thing wrong at a time
    assert _request(srv, "POST", "/api/label", answer, {**ok, "Origin": "http://evil.example"})[0] == 403
    assert _request(srv, "POST", "/api/label", answer, {**ok, "Origin": "null"})[0] == 403
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        assert _request(srv, "POST", "/api/label", answer, {**ok, "Content-Type": ctype})[0] == 415, ctype
    no_type = {k: v for k, v in ok.items() if k != "Content-Type"}
    assert _request(srv, "POST", "/api/label", answer, no_type)[0] == 415
    for bad in ({k: v for k, v in ok.items() if k != "X-Stepvideo-Token"}, {**ok, "X-Stepvideo-Token": tok[:-1]},
                {**ok, "X-Stepvideo-Token": "\u00e9" * 10}):
        assert _request(srv, "POST", "/api/label", answer, bad)[0] == 403
        assert _request(srv, "GET", "/api/next?annotator=eve", None, bad)[0] == 403
    for path in ("/", "/index.html", f"/?token={tok[:-1]}", media, f"{media}?token=", f"{media}?token={tok}x"):
        status, body_ = _request(srv, "GET", path, None, {"Host": f"127.0.0.1:{port}"})
        assert status == 403 and b"token" in body_, path
    assert _request(srv, "GET", f"/api/next?annotator=eve&token={tok}", None, {"Host": f"127.0.0.1:{port}"})[0] == 403
    assert _stored(cands) == 0
    # what the real page sends is served: its Origin, a charset, localhost
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        headers = {**ok, "Host": host, "Origin": f"http://{host.lower()}",
                   "Content-Type": "application/json; charset=utf-8"}
        assert _request(srv, "POST", "/api/label", answer, headers)[0] == 200, host
        assert _request(srv, "GET", f"{media}?token={tok}", None, {"Host": host})[0] == 200
        assert _request(srv, "GET", f"/?token={tok}", None, {"Host": host})[0] == 200
    assert _stored(cands) == 3
    # another server has another token
    other = make_server(cands, port=0)
    try:
        assert other.token != tok and len(tok) >= 32
    finally:
        other.server_close()


def test_fifty_parallel_answers_are_all_stored_whole(cands):
    """50 annotators' browsers connecting at once: the old server's listen backlog of 5 left most
    of them waiting for a SYN retry (here: their connect timed out); now all 50 are queued at once,
    answered 200, and stored as 50 whole lines."""
    srv, serving = make_server(cands, port=0), None
    try:
        assert srv.daemon_threads and srv.request_queue_size >= 128
        port, tok = srv.server_address[1], srv.token
        pairs = label_pairs(load_candidates(cands))
        # connect all 50 before the server accepts any: they wait in the listen queue
        socks = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(50)]
        serving = threading.Thread(target=srv.serve_forever, daemon=True)
        serving.start()
        statuses, start = [None] * 50, threading.Barrier(50)

        def post(i):
            p = pairs[i % len(pairs)]
            body = json.dumps({"annotator": f"a{i:02d}", "pair_id": p["pair_id"], "left": p["a"], "right": p["b"],
                               "answer": ANSWERS[i % 4]}).encode()
            start.wait()
            s = socks[i]
            s.settimeout(30)
            s.sendall(f"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Stepvideo-Token: {tok}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
                      f"Origin: http://127.0.0.1:{port}\r\n\r\n".encode() + body)
            response = http.client.HTTPResponse(s)
            response.begin()
            response.read()
            statuses[i] = response.status
            response.close()
            s.close()

        threads = [threading.Thread(target=post, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert statuses == [200] * 50
        rows = rows_of(cands / "labels.jsonl")  # every line whole JSON
        assert len(rows) == 50 and sorted(r["annotator"] for r in rows) == [f"a{i:02d}" for i in range(50)]
    finally:
        if serving is not None:  # shutdown() waits for a serve_forever() that must have started
            srv.shutdown()
        srv.server_close()


def test_a_client_that_sends_no_body_is_dropped_after_the_timeout(cands, capfd):
    """Headers with Content-Length: 100 and then nothing: the old server's thread waited forever
    (no socket timeout). Now the connection gets a 408 and is closed after the timeout, and other
    requests are served meanwhile. stderr: one line for the missing body; an idle connection (what a
    browser keeps open between answers) is closed quietly."""
    srv = make_server(cands, port=0, timeout=2.0)
    base, _ = _serve(srv)
    try:
        port, tok = srv.server_address[1], srv.token
        stalled = socket.create_connection(("127.0.0.1", port), timeout=20)
        stalled.sendall(f"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Stepvideo-Token: {tok}\r\n"
                        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n".encode())
        idle = socket.create_connection(("127.0.0.1", port), timeout=20)  # connects, sends nothing at all
        t0 = time.monotonic()
        assert _http(base + "/api/next?annotator=a", token=tok)[0] == 200  # served while the two hang
        assert select.select([stalled, idle], [], [], 0)[0] == []  # ... and still open, not yet answered
        for sock in (stalled, idle):
            data = b""
            while chunk := sock.recv(4096):  # until the server closes it; socket.timeout: still held after 20 s
                data += chunk
            sock.close()
            assert time.monotonic() - t0 < 10
            if sock is stalled:
                assert data.startswith(b"HTTP/1.1 408 "), data
        assert time.monotonic() - t0 >= 1.5  # after the timeout, not at once
        assert _stored(cands) == 0
        assert _http(base + "/api/next?annotator=a", token=tok)[0] == 200
        err = capfd.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].endswith("no request body within 2.0 s; connection closed"), err
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(ValueError, match="timeout"):
        make_server(cands, port=0, timeout=0)


def test_serving_to_the_network_warns_and_prints_the_url_with_its_token(cands, tmp_path):
    """--host 0.0.0.0: a one-line warning on stderr that the token is the only guard, and the URL
    with the token; on 127.0.0.1 no warning. The old server printed http://0.0.0.0:PORT/ and no warning."""
    server = None
    try:
        server, url = _start_server(cands, 0, tmp_path / "out.log", "--host", "0.0.0.0", err=tmp_path / "err.log")
        err, out = (tmp_path / "err.log").read_text(), (tmp_path / "out.log").read_text()
        warning = [line for line in err.splitlines() if line.startswith("warning:")]
        assert len(warning) == 1 and "reachable from the network" in warning[0] and "only guard" in warning[0], err
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["token"][0]
        assert url.startswith("http://127.0.0.1:") and len(token) >= 32
        assert f"from other machines: http://{socket.gethostname()}:" in out and f"?token={token}" in out
        status, _, page = _http(url)
        assert status == 200 and token.encode() in page
        assert _http(url.split("?")[0])[0] == 403  # the page itself needs the token: anyone may reach the port
        port = urllib.parse.urlsplit(url).port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # by an IP address, as from elsewhere
        conn.request("GET", "/api/next?annotator=a", headers={"Host": f"10.1.2.3:{port}", "X-Stepvideo-Token": token})
        assert conn.getresponse().status == 200
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # by a rebinding name: refused still
        conn.request("GET", "/api/next?annotator=a", headers={"Host": f"evil.example:{port}", "X-Stepvideo-Token": token})
        assert conn.getresponse().status == 403
        conn.close()
    finally:
        if server is not None:
            server.kill()
            server.wait()
    server = None
    try:
        server, url = _start_server(cands, 0, tmp_path / "out2.log", err=tmp_path / "err2.log")
        assert "warning" not in (tmp_path / "err2.log").read_text()
        assert url.startswith("http://127.0.0.1:") and "?token=" in url
    finally:
        if server is not None:
            server.kill()
            server.wait()


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


def _start_server(cands: Path, port: int, log: Path, *args: str,
                  err: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`stepvideo label serve` in a subprocess; the URL it prints (stderr: into `log` too, unless `err`)."""
    out, errs = open(log, "w"), open(err, "w") if err else None
    proc = subprocess.Popen([sys.executable, "-m", "stepvideo.cli", "label", "serve", "--candidates", str(cands),
                             "--port", str(port), *args], cwd=REPO, stdout=out, stderr=errs or subprocess.STDOUT)
    out.close()
    if errs:
        errs.close()
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
        port = urllib.parse.urlsplit(url).port
        base, token = url.split("?token=")
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
            assert src == f"{base}media/videos/{shown[side]}.mp4?token={token}"  # a <video> sends no headers
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
        rows = rows_of(labels)
        assert len(rows) == 3
        for row, (seen, answer) in zip(rows, answered):
            assert (row["pair_id"], row["left"], row["right"], row["answer"], row["annotator"]) == (
                seen["pair"], seen["left"], seen["right"], answer, "alice")
            chosen = {"left": seen["left"], "right": seen["right"]}.get(answer)
            rejected = {"left": seen["right"], "right": seen["left"]}.get(answer)
            assert (row["chosen"], row["rejected"]) == (chosen, rejected)

        # restart: the page remembers the name and continues; answered pairs are not shown again
        server, url2 = _start_server(cands, port, tmp_path / "server2.log")
        assert url2.split("?token=")[1] != token  # a new token at each start: the old page gets 403s
        cdp.js("next()")  # the page still open from before the restart: its token is refused, and it says so
        cdp.wait("document.getElementById('error').textContent.includes('token')")
        cdp.call("Page.navigate", url=url2)
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
        rows = rows_of(labels)
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
