"""Human preference labels for Video-DPO: candidate pairs, the labels file, a local labeling page,
imports, inter-annotator agreement and the preference pairs the labels give.

Candidates: `DIR/candidates.jsonl`, one generated video a line (`video` relative to DIR). Every
unordered pair of candidates of one (prompt_id, lang) group is a pair to label, its id the two
candidate ids sorted and joined by "|".

Labels file (JSONL, default `DIR/labels.jsonl`), one line per answer:
    {"pair_id", "prompt_id", "lang", "prompt", "left": id, "right": id,
     "answer": "left"|"right"|"tie"|"skip", "chosen": id|null, "rejected": id|null,
     "annotator": name, "time": ISO-8601 UTC}
Each answer is appended at once, with ONE os.write on a file opened O_APPEND, then fsync: killing
the server at any moment loses nothing answered and never leaves half a line. A trailing partial
line (a crash, a full disk) is ignored on reading and cut off before the next append, each time
with a PartialLineWarning. An annotator's latest non-skip answer to a pair is their vote.

Server: the standard library's ThreadingHTTPServer, not FastAPI + uvicorn: four small endpoints,
starts in milliseconds, no version pins shared with Prefect's FastAPI, and full control of what
/media serves (only the candidates' videos, with byte ranges: the project's mp4s keep their index at
the end of the file, so the browser needs Range requests to play and seek them). Every request passes
the checks of `labeling_http` (Host, a per-server token, Origin, Content-Type), each connection has a
socket timeout, and answers from many threads are appended one at a time under a lock.

Order: each annotator gets their own random order of pairs and random side for each candidate,
both from sha256(annotator, pair_id): stable across restarts (and when candidates are added).

Agreement: Fleiss' kappa (any number of annotators per pair; Cohen's needs exactly two fixed
raters), on the categories "a wins", "b wins" (a, b: the pair's ids, sorted) and "tie". Observed
agreement: the share of annotator pairs, pooled over the pairs with two or more votes, that gave
the same answer (`pairwise_agreement`; with the same number of votes on every pair it equals
Fleiss' mean per-pair agreement); chance agreement: the sum of the squared category shares.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import sys
import threading
import urllib.parse
import warnings
from collections import Counter, defaultdict
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from stepvideo.errors import InputError, MissingError
from stepvideo.fileio import read_jsonl
from stepvideo.preference.labeling_http import REQUEST_TIMEOUT, TOKEN_PLACEHOLDER, Guard, LabelHTTPServer

CANDIDATES_FILE = "candidates.jsonl"
LABELS_FILE = "labels.jsonl"
MAX_BODY = 65536  # bytes of one POST to /api/label (an answer is a few hundred)
ANSWERS = ("left", "right", "tie", "skip")
CANDIDATE_KEYS = ("id", "prompt_id", "lang", "prompt", "video")
LABEL_KEYS = ("pair_id", "left", "right", "answer", "annotator")
MEDIA_TYPES = {".mp4": "video/mp4", ".webm": "video/webm", ".png": "image/png", ".jpg": "image/jpeg"}
PAGE = Path(__file__).parent / "label_page.html"


class PartialLineWarning(UserWarning):
    """The labels file ends in a partial line (an interrupted write); it is ignored or cut off."""


# ------------------------------------------------------------------ candidates and pairs

def load_candidates(dir: str | os.PathLike) -> list[dict]:
    """Read and check DIR/candidates.jsonl; a bad line raises ValueError naming file, line and problem."""
    root = Path(dir)
    path = root / CANDIDATES_FILE
    if not path.is_file():
        raise MissingError(f"{path}: no such file (a candidates folder holds {CANDIDATES_FILE})")
    resolved, out, ids, prompts = root.resolve(), [], set(), {}
    for where, row in read_jsonl(path):
        missing = [k for k in CANDIDATE_KEYS if k not in row]
        if missing:
            raise InputError(f"{where}: missing key{'s' * (len(missing) > 1)} {', '.join(missing)}")
        bad = [k for k in CANDIDATE_KEYS if not isinstance(row[k], str) or not row[k].strip()]
        if bad:
            raise InputError(f"{where}: {', '.join(bad)} must be non-empty text")
        if "|" in row["id"]:
            raise InputError(f"{where}: id {row['id']!r} contains '|' (it separates the ids of a pair)")
        if row["id"] in ids:
            raise InputError(f"{where}: duplicate id {row['id']!r}")
        video = (root / row["video"]).resolve()
        if not video.is_relative_to(resolved):
            raise InputError(f"{where}: video {row['video']!r} is outside the candidates folder {root}")
        if not video.is_file():
            raise InputError(f"{where}: video file {row['video']!r} not found ({video})")
        group = (row["prompt_id"], row["lang"])
        if prompts.setdefault(group, row["prompt"]) != row["prompt"]:
            raise InputError(f"{where}: prompt differs from the earlier candidates of {group[0]}/{group[1]}")
        ids.add(row["id"])
        out.append(row)
    if not out:
        raise InputError(f"{path}: no candidates")
    return out


def label_pairs(candidates: list[dict]) -> list[dict]:
    """Every unordered pair of candidates within a (prompt_id, lang) group, in a deterministic order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in candidates:
        groups[(c["prompt_id"], c["lang"])].append(c)
    pairs = []
    for (prompt_id, lang), members in sorted(groups.items()):
        for x, y in itertools.combinations(sorted(members, key=lambda c: c["id"]), 2):
            pairs.append({"pair_id": f"{x['id']}|{y['id']}", "prompt": x["prompt"], "prompt_id": prompt_id,
                          "lang": lang, "a": x["id"], "b": y["id"]})
    return pairs


def annotator_order(pairs: list[dict], annotator: str) -> list[dict]:
    """The pairs in this annotator's own order, each with its "left" and "right" candidate id."""
    keyed = []
    for p in pairs:
        digest = hashlib.sha256(f"{annotator}\x00{p['pair_id']}".encode()).digest()
        left, right = (p["b"], p["a"]) if digest[-1] & 1 else (p["a"], p["b"])
        keyed.append((digest, {**p, "left": left, "right": right}))
    return [p for _, p in sorted(keyed, key=lambda t: t[0])]


# ------------------------------------------------------------------ the labels file

def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_label(pair: dict, left: str, right: str, answer: str, annotator: str) -> dict:
    """One labels-file row: `answer` ("left"/"right"/"tie"/"skip") about `left` and `right` of `pair`."""
    chosen = {"left": left, "right": right}.get(answer)
    rejected = {"left": right, "right": left}.get(answer)
    return {"pair_id": pair["pair_id"], "prompt_id": pair["prompt_id"], "lang": pair["lang"], "prompt": pair["prompt"],
            "left": left, "right": right, "answer": answer, "chosen": chosen, "rejected": rejected,
            "annotator": annotator, "time": now_iso()}


def _parse_label(raw: bytes, where: str) -> dict:
    """One labels-file line as a row; InputError naming `where` (FILE:N) when it is not a label."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply to read") from None
    if not isinstance(row, dict) or any(k not in row for k in LABEL_KEYS):
        raise InputError(f"{where}: not a label (needs {', '.join(LABEL_KEYS)})")
    bad = [k for k in LABEL_KEYS if not isinstance(row[k], str) or not row[k]]
    if bad:  # votes, agreement and human pairs sort, hash and compare them as text
        got = ", ".join(f"{k} {type(row[k]).__name__}" if not isinstance(row[k], str) else f"{k} ''" for k in bad)
        raise InputError(f"{where}: {', '.join(bad)} must be non-empty text (got {got})")
    if row["answer"] not in ANSWERS:
        raise InputError(f"{where}: answer {row['answer'][:40]!r} is not one of {', '.join(ANSWERS)}")
    return row


def read_labels(path: str | os.PathLike) -> list[dict]:
    """The labels in file order ([] when the file does not exist). A trailing partial line is ignored
    with a PartialLineWarning; a bad line elsewhere raises ValueError naming file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    rows = [_parse_label(raw, f"{path}:{n}") for n, raw in enumerate(lines, 1) if raw.strip()]
    if tail.strip():
        try:
            rows.append(_parse_label(tail, f"{path}:{len(lines) + 1}"))
        except ValueError:
            warnings.warn(f"{path}: ignoring a partial last line ({len(tail)} bytes, an interrupted write): "
                          f"{tail[:120].decode('utf-8', 'replace')!r}", PartialLineWarning, stacklevel=2)
    return rows


_append_lock = threading.Lock()


def _repair_tail(fd: int, path: Path) -> None:
    """Make the file end with a newline: a complete last line gets its newline, a partial one is cut off."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    data = os.pread(fd, size, 0)
    start = data.rfind(b"\n") + 1
    try:
        _parse_label(data[start:], "")
        os.write(fd, b"\n")
    except ValueError:
        os.ftruncate(fd, start)
        warnings.warn(f"{path}: cut off a partial last line ({size - start} bytes, an interrupted write): "
                      f"{data[start:start + 120].decode('utf-8', 'replace')!r}", PartialLineWarning, stacklevel=3)


def append_labels(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append rows to the labels file with one os.write (O_APPEND) and fsync; all or nothing."""
    path = Path(path)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _append_lock:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _repair_tail(fd, path)
            before = os.fstat(fd).st_size
            try:
                if (written := os.write(fd, data)) != len(data):
                    raise OSError(f"{path}: short write ({written} of {len(data)} bytes); nothing appended")
            except OSError:
                os.ftruncate(fd, before)  # all or nothing
                raise
            os.fsync(fd)
        finally:
            os.close(fd)


def repair_labels(path: str | os.PathLike) -> None:
    """Cut a trailing partial line off the labels file (with a PartialLineWarning), if there is one."""
    path = Path(path)
    if path.is_file():
        append_labels(path, [])


# ------------------------------------------------------------------ import

def import_labels(file: str | os.PathLike, candidates_dir: str | os.PathLike,
                  labels_path: str | os.PathLike | None = None) -> int:
    """Append the preferences of a JSONL of {"prompt", "chosen", "rejected", "annotator"?} lines (chosen
    and rejected: a candidate id or its video path) to the labels file. Every line is checked first;
    a bad one raises ValueError naming file, line and problem, and nothing is appended."""
    file, root = Path(file), Path(candidates_dir)
    candidates = load_candidates(root)
    if not file.is_file():
        raise MissingError(f"{file}: no such file")
    by_id = {c["id"]: c for c in candidates}
    by_video = {(root / c["video"]).resolve(): c for c in candidates}
    pairs = {p["pair_id"]: p for p in label_pairs(candidates)}
    rows = []
    for where, obj in read_jsonl(file):
        missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(obj.get(k), str) or not obj[k]]
        if missing:
            raise InputError(f"{where}: missing or empty {', '.join(missing)}")
        annotator = obj.get("annotator") or f"import:{file.name}"
        if not isinstance(annotator, str):
            raise InputError(f"{where}: annotator must be text")

        def find(key: str) -> dict:
            ref = obj[key]
            if ref in by_id:
                return by_id[ref]
            try:
                hit = by_video.get((Path(ref) if Path(ref).is_absolute() else root / ref).resolve())
            except (OSError, ValueError):
                hit = None
            if hit is None:
                raise InputError(f"{where}: {key} {ref!r} is neither a candidate id nor a candidate's video in {root}")
            return hit

        chosen, rejected = find("chosen"), find("rejected")
        if chosen["id"] == rejected["id"]:
            raise InputError(f"{where}: chosen and rejected are the same candidate {chosen['id']!r}")
        if (chosen["prompt_id"], chosen["lang"]) != (rejected["prompt_id"], rejected["lang"]):
            raise InputError(f"{where}: chosen {chosen['id']!r} ({chosen['prompt_id']}/{chosen['lang']}) and rejected "
                             f"{rejected['id']!r} ({rejected['prompt_id']}/{rejected['lang']}) are not in the same "
                             "prompt group")
        if obj["prompt"].strip() != chosen["prompt"].strip():
            raise InputError(f"{where}: prompt {obj['prompt']!r} does not match the candidates' prompt "
                             f"{chosen['prompt']!r}")
        pair = pairs["|".join(sorted((chosen["id"], rejected["id"])))]
        rows.append(make_label(pair, chosen["id"], rejected["id"], "left", annotator))
    if not rows:
        raise InputError(f"{file}: no labels to import")
    append_labels(Path(labels_path) if labels_path else root / LABELS_FILE, rows)
    return len(rows)


# ------------------------------------------------------------------ votes, agreement, pairs

def _votes(labels: list[dict]) -> dict[str, dict[str, str]]:
    """pair_id -> annotator -> vote (the chosen id, or "tie") from their latest non-skip answer."""
    votes: dict[str, dict[str, str]] = defaultdict(dict)
    for row in labels:
        if row["answer"] != "skip":
            pair_id = "|".join(sorted((row["left"], row["right"])))
            votes[pair_id][row["annotator"]] = {"left": row["left"], "right": row["right"]}.get(row["answer"], "tie")
    return votes


def agreement(labels: list[dict]) -> dict:
    """Agreement on pairs labelled by two or more annotators (see the module docstring)."""
    same = total = multi = 0
    shares: Counter = Counter()
    for pair_id, by_annotator in _votes(labels).items():
        votes = list(by_annotator.values())
        if len(votes) < 2:
            continue
        multi += 1
        counts = Counter(votes)
        same += sum(k * (k - 1) // 2 for k in counts.values())
        total += len(votes) * (len(votes) - 1) // 2
        first = pair_id.split("|")[0]
        shares.update("tie" if v == "tie" else "a" if v == first else "b" for v in votes)
    if not multi:
        return {"pairs_multi": 0, "pairwise_agreement": None, "fleiss_kappa": None}
    observed = same / total
    n = sum(shares.values())
    chance = sum((k / n) ** 2 for k in shares.values())
    kappa = None if chance >= 1 else (observed - chance) / (1 - chance)
    return {"pairs_multi": multi, "pairwise_agreement": observed, "fleiss_kappa": kappa}


def human_pairs(labels: list[dict], candidates: list[dict]) -> list[dict]:
    """The preference pairs the labels give: per pair, the plurality of the annotators' latest non-skip
    votes; a tie winning, or two answers sharing the most votes, drops the pair. Rows as in
    `preference.pairs` (margin None; round: the chosen candidate's)."""
    votes, out, rounds = _votes(labels), [], {c["id"]: c.get("round", 0) for c in candidates}
    for p in label_pairs(candidates):
        by_annotator = votes.get(p["pair_id"])
        if not by_annotator:
            continue
        ranked = Counter(by_annotator.values()).most_common()
        winner, k = ranked[0]
        if winner == "tie" or (len(ranked) > 1 and ranked[1][1] == k):
            continue
        out.append({"prompt_id": p["prompt_id"], "lang": p["lang"], "prompt": p["prompt"], "chosen": winner,
                    "rejected": p["b"] if winner == p["a"] else p["a"], "source": "human", "margin": None,
                    "round": rounds[winner], "votes": k, "total": len(by_annotator), "annotators": sorted(by_annotator)})
    return out


# ------------------------------------------------------------------ the labeling server

class LabelState:
    """What the server knows: the candidates folder, its pairs and the labels file."""

    def __init__(self, candidates_dir: str | os.PathLike, labels_path: str | os.PathLike | None = None):
        self.root = Path(candidates_dir).resolve()
        self.candidates = load_candidates(self.root)
        self.pairs = label_pairs(self.candidates)
        self.by_pair = {p["pair_id"]: p for p in self.pairs}
        self.videos = {c["id"]: c["video"] for c in self.candidates}
        self.media = {(self.root / v).resolve() for v in self.videos.values()}  # what /media/ may serve
        self.labels_path = Path(labels_path) if labels_path else self.root / LABELS_FILE
        repair_labels(self.labels_path)
        read_labels(self.labels_path)  # a corrupt labels file fails now, not on the first request

    def next(self, annotator: str) -> dict:
        """This annotator's progress and next unanswered pair (None when all are done)."""
        with _append_lock:  # never half of an answer another thread is appending
            labels = read_labels(self.labels_path)
        done = {r["pair_id"] for r in labels if r["annotator"] == annotator}
        answered = sum(p["pair_id"] in done for p in self.pairs)
        pair = next((p for p in annotator_order(self.pairs, annotator) if p["pair_id"] not in done), None)
        if pair is not None:
            media = {side: "/media/" + urllib.parse.quote(Path(self.videos[pair[side]]).as_posix())
                     for side in ("left", "right")}
            pair = {k: pair[k] for k in ("pair_id", "prompt", "prompt_id", "lang", "left", "right")} | {
                "left_video": media["left"], "right_video": media["right"]}
        return {"annotator": annotator, "answered": answered, "total": len(self.pairs),
                "done": pair is None, "pair": pair}

    def label(self, body: object) -> dict:
        """Check one answer from the page and append it; ValueError says what is wrong."""
        if not isinstance(body, dict):
            raise InputError("expected a JSON object")
        annotator = _annotator(body.get("annotator"))
        pair_id, left, right, answer = (body.get(k) for k in ("pair_id", "left", "right", "answer"))
        if (pair := self.by_pair.get(pair_id) if isinstance(pair_id, str) else None) is None:
            raise InputError(f"unknown pair_id {pair_id!r}")
        if not isinstance(left, str) or not isinstance(right, str) or sorted((left, right)) != [pair["a"], pair["b"]]:
            raise InputError(f"left/right {left!r}/{right!r} are not the two candidates of pair {pair['pair_id']!r}")
        if answer not in ANSWERS:
            raise InputError(f"answer {answer!r} is not one of {', '.join(ANSWERS)}")
        row = make_label(pair, left, right, answer, annotator)
        append_labels(self.labels_path, [row])
        return row


def _annotator(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 100:
        raise InputError("annotator must be a name of 1 to 100 characters")
    return name.strip()


def _handler(state: LabelState, request_timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "stepvideo-label"
        timeout = request_timeout  # the socket timeout of each connection (StreamRequestHandler)

        def log_message(self, format, *args):  # quiet: the page polls and the videos fetch ranges
            pass

        def log_error(self, format, *args):  # a malformed request, a missing body, a failure: one line on stderr
            if format.startswith("Request timed out"):
                # http.server's own: an idle connection closed after the socket timeout (a browser keeps
                # one open between answers) or a video range the browser stopped reading: nothing wrong
                return
            sys.stderr.write(f"stepvideo label serve: {self.address_string()}: {format % args}\n")

        def _refused(self, url: urllib.parse.SplitResult) -> bool:
            """Answer 403/415 and close when the request fails the labeling_http checks."""
            refusal = self.server.guard.refusal(self.command, self.headers, url)
            if refusal is not None:
                self.close_connection = True  # a POST's unread body must not be taken for the next request
                self._json(refusal[0], {"error": refusal[1]})
            return refusal is not None

        def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
            self.send_response(status)
            for k, v in {"Content-Type": ctype, "Content-Length": str(len(body)), "Cache-Control": "no-store",
                         **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: dict) -> None:
            self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            if self._refused(url):
                return
            if url.path in ("/", "/index.html"):
                page = PAGE.read_bytes().replace(TOKEN_PLACEHOLDER, self.server.guard.token.encode())
                self._send(200, page, "text/html; charset=utf-8", {"Referrer-Policy": "no-referrer"})
            elif url.path == "/api/next":
                try:
                    name = _annotator(urllib.parse.parse_qs(url.query).get("annotator", [""])[0])
                except ValueError as e:
                    return self._json(400, {"error": str(e)})
                if (nxt := self._next(name)) is not None:
                    self._json(200, nxt)
            elif url.path.startswith("/media/"):
                self._media(urllib.parse.unquote(url.path[len("/media/"):]))
            else:
                self._json(404, {"error": f"not found: {url.path}"})

        def do_POST(self):
            url = urllib.parse.urlsplit(self.path)
            if self._refused(url):
                return
            if url.path != "/api/label":
                self.close_connection = True
                return self._json(404, {"error": "not found"})
            if self.headers.get("Transfer-Encoding") is not None:  # chunked: http.server reads no such body
                self.close_connection = True
                return self._json(411, {"error": "send the answer with a Content-Length, not a Transfer-Encoding"})
            given = ",".join(sorted({v.strip() for v in self.headers.get_all("Content-Length", ["0"])}))  # two: "1,2"
            if not re.fullmatch(r"[0-9]+", given):  # "-1" reads to EOF, unbounded; "abc", "\u00b2": no length
                self.close_connection = True
                return self._json(400, {"error": f"Content-Length must be a non-negative integer, got {given[:40]!r}"})
            digits = given.lstrip("0") or "0"  # int() refuses over 4300 digits
            length = int(digits) if len(digits) <= 9 else MAX_BODY + 1
            if length > MAX_BODY:
                self.close_connection = True
                return self._json(413, {"error": "request too large"})
            try:
                raw = self.rfile.read(length)
            except TimeoutError:  # the headers came, the body did not: answer and free the thread
                self.close_connection = True
                self.log_error("no request body within %s s; connection closed", self.timeout)
                return self._json(408, {"error": f"the request body did not arrive within {self.timeout} s"})
            try:
                body = json.loads(raw or b"null")
            except RecursionError:  # JSON nested thousands deep
                return self._json(400, {"error": "the answer is nested too deeply to be a label"})
            except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
                return self._json(400, {"error": f"not valid JSON ({e})"})
            try:
                row = state.label(body)  # InputError: the answer does not fit; OSError: it could not be stored
            except InputError as e:
                return self._json(400, {"error": str(e)})
            except OSError as e:
                return self._failed(e)
            if (nxt := self._next(row["annotator"])) is not None:
                self._json(200, {"ok": True, "label": row, "next": nxt})

        def _next(self, annotator: str) -> dict | None:
            """state.next(annotator); None after answering 500 when the labels file no longer reads (edited
            or corrupted while serving: the server's failure, not the request's), naming its file and line."""
            try:
                return state.next(annotator)
            except (InputError, OSError) as e:
                self._failed(e)
                return None

        def _failed(self, e: Exception) -> None:
            """500 with what failed, and the same line on stderr."""
            self.log_error("%s", e)
            self.close_connection = True
            self._json(500, {"error": f"the labeling server failed: {e}"})

        def _media(self, rel: str) -> None:
            try:
                target = (state.root / rel).resolve()
                # only the candidates' videos: not labels.jsonl (every annotator's answers) nor anything else
                ok = target in state.media and target.is_file()
            except (OSError, ValueError):
                ok = False
            if not ok:
                return self._json(404, {"error": "not found"})
            size = target.stat().st_size
            start, end, status, extra = 0, size - 1, 200, {"Accept-Ranges": "bytes"}
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", (self.headers.get("Range") or "").strip())
            if m and (m[1] or m[2]):  # one range (several, or a malformed header: the whole file)
                start = int(m[1]) if m[1] else max(0, size - int(m[2]))
                end = min(int(m[2]), size - 1) if m[1] and m[2] else size - 1
                if start > end:
                    return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{size}"})
                status, extra["Content-Range"] = 206, f"bytes {start}-{end}/{size}"
            self.send_response(status)
            ctype = MEDIA_TYPES.get(target.suffix.lower(), "application/octet-stream")
            for k, v in {"Content-Type": ctype, "Content-Length": str(end - start + 1), **extra}.items():
                self.send_header(k, v)
            self.end_headers()
            try:
                with open(target, "rb") as fh:
                    fh.seek(start)
                    left = end - start + 1
                    while left > 0 and (chunk := fh.read(min(left, 1 << 16))):
                        self.wfile.write(chunk)
                        left -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):  # the browser dropped a range it no longer needs
                self.close_connection = True

    return Handler


def make_server(candidates_dir: str | os.PathLike, labels_path: str | os.PathLike | None = None,
                host: str = "127.0.0.1", port: int = 8765, *, timeout: float = REQUEST_TIMEOUT,
                token: str | None = None) -> LabelHTTPServer:
    """The labeling server, bound (port 0: any free port) but not yet serving. `.state`: its LabelState;
    `.guard`: its checks, `.token` the token (random unless given), `.url` the page's address with it;
    `timeout`: seconds each read or write on a connection may wait."""
    if not timeout > 0:
        raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}")
    state = LabelState(candidates_dir, labels_path)
    try:
        server = LabelHTTPServer((host, port), _handler(state, timeout))
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    server.state = state
    server.guard = Guard(host, server.server_address[1], token)
    server.token, server.url = server.guard.token, server.guard.url()
    return server
