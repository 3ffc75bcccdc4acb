"""Fuzzing the project's line readers (issue 23): fileio.read_jsonl, data.manifest.read_manifest and
data.ingest.read_captions (CSV and JSONL).

Property: any bytes give rows or the reader's user error (InputError / ManifestError / IngestError)
whose message names the file (and the line, for a bad line); never another exception type. Files
built of valid rows and bad lines: the first bad line is named (these readers stop at a bad line),
otherwise every valid row comes back, in order, equal to what was written (no lost or split row).
The `@example`s are inputs that raised a traceback or lost a row before the fix.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stepvideo.data.ingest import IngestError, read_captions
from stepvideo.data.manifest import ManifestError, read_manifest, write_manifest
from stepvideo.errors import InputError
from stepvideo.fileio import read_jsonl

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# JSON values; text may hold the characters str.splitlines() also breaks at (\x85, \u2028, \x1c...)
LINE_BREAKERS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
text = st.text(alphabet=st.characters(exclude_categories=("Cs",)) | st.sampled_from(LINE_BREAKERS), max_size=12)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3), max_leaves=6)
objects = st.dictionaries(text, values, max_size=4)
junk = st.binary(max_size=24).filter(lambda b: b"\n" not in b)
# a file: lines that are each a JSON object (as the project writes them) or junk bytes
lines = st.lists(st.one_of(objects.map(lambda o: ("row", o)), junk.map(lambda b: ("junk", b))), max_size=6)
DEEP = b"[" * 3000 + b"]" * 3000  # json.loads: RecursionError


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _encode(items) -> bytes:
    return b"".join((json.dumps(x, ensure_ascii=False).encode() if kind == "row" else x) + b"\n" for kind, x in items)


def _oracle(data: bytes, decode_errors: str = "strict"):
    """(rows, None) or (None, first bad line number): one JSON object a line, lines split at \\n only."""
    rows = []
    for n, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), 1):
        try:
            line = raw.decode("utf-8", decode_errors)
        except UnicodeDecodeError:
            return None, n
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return None, n
        if not isinstance(obj, dict):
            return None, n
        rows.append(obj)
    return rows, None


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# ---------------------------------------------------------------- fileio.read_jsonl

@FUZZ
@given(data=st.binary(max_size=200))
@example(data=b"\xff\xfe{}\n")  # was UnicodeDecodeError out of Path.read_text
@example(data=DEEP)  # was RecursionError out of json.loads
def test_read_jsonl_any_bytes(tmp_path, data):
    path = _write(tmp_path, "any.jsonl", data)
    try:
        rows = list(read_jsonl(path))
    except InputError as e:
        assert str(e).startswith(f"{path}:")
        return
    assert all(where.startswith(f"{path}:") and isinstance(obj, dict) for where, obj in rows)


@FUZZ
@given(items=lines)
@example(items=[("row", {"caption": "a\u2028b"}), ("row", {"x": 1})])  # was split in two: row lost, "not valid JSON"
@example(items=[("row", {"caption": "NEL\x85here"})])
@example(items=[("row", {"a": 1}), ("junk", b"\xc3"), ("row", {"b": 2})])  # bad UTF-8 on line 2: named, not a traceback
def test_read_jsonl_keeps_every_row_or_names_the_bad_line(tmp_path, items):
    data = _encode(items)
    path = _write(tmp_path, "rows.jsonl", data)
    want, bad = _oracle(data)
    if bad is not None:
        with pytest.raises(InputError) as e:
            list(read_jsonl(path))
        assert str(e.value).startswith(f"{path}:{bad}: ")
    else:
        got = list(read_jsonl(path))
        assert _same([obj for _, obj in got], want)
        assert len(got) == len(want)


# ---------------------------------------------------------------- data.manifest.read_manifest

@FUZZ
@given(data=st.binary(max_size=200))
@example(data=DEEP)  # was RecursionError
@example(data=b"\xef\xbb\xbf{}\n")  # was "not valid JSON (Unexpected UTF-8 BOM)"; read_jsonl skips the mark
@example(data=b"\xc2\x85\n{}\n")  # a line of Unicode whitespace is blank, as in read_jsonl
def test_read_manifest_any_bytes(tmp_path, data):
    path = _write(tmp_path, "manifest.jsonl", data)
    want, bad = _oracle(data, "replace")  # documented: undecodable bytes are kept as U+FFFD
    if bad is not None:
        with pytest.raises(ManifestError) as e:
            read_manifest(path)
        assert str(e.value).startswith(f"{path}:{bad}: ")
    else:
        assert _same(read_manifest(path), want)


@FUZZ
@given(rows=st.lists(objects, max_size=5))
@example(rows=[{"caption": "line\u2028separator"}, {"caption": "\x85"}])
def test_manifest_round_trip(tmp_path, rows):
    """What write_manifest writes, read_manifest and read_jsonl (`data summary`) read back whole."""
    rows = [{k: v for k, v in r.items() if k} for r in rows]
    path = write_manifest(tmp_path / "m.jsonl", rows)
    back = read_manifest(path)
    assert len(back) == len(rows)
    assert _same([obj for _, obj in read_jsonl(path)], back)
    for r, b in zip(rows, back):
        assert _same({k: b[k] for k in r}, r)


# ---------------------------------------------------------------- data.ingest.read_captions

@FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".csv", ".jsonl", ".json", ".txt"]))
@example(data=b'{"path": "a.mp4", "caption": "\\ud800"}\n', suffix=".jsonl")  # was UnicodeEncodeError in _fix_text
@example(data=DEEP, suffix=".jsonl")  # was RecursionError
@example(data=b"path,caption\na.mp4,\x00\n", suffix=".csv")
@example(data=b"path,caption\n,\r0\n", suffix=".csv")  # was _csv.Error (new-line character seen in unquoted field)
def test_read_captions_any_bytes(tmp_path, data, suffix):
    path = _write(tmp_path, "captions" + suffix, data)
    try:
        rows = read_captions(path)
    except IngestError as e:
        assert str(e).startswith(f"{path}")
        return
    assert rows and all(isinstance(r, dict) and isinstance(r.get("path"), str) and isinstance(r.get("caption"), str)
                        for r in rows)


captions_rows = st.lists(st.fixed_dictionaries({"path": text, "caption": text}), min_size=1, max_size=5)


@FUZZ
@given(rows=captions_rows, bad_at=st.none() | st.integers(0, 5),
       bad=st.sampled_from([b"{", b"[1]", b'{"path": "x"}', b"\xff", b'"text"']))
@example(rows=[{"path": "a.mp4", "caption": "one\u2028two"}], bad_at=None, bad=b"{")  # was "not valid JSON" on line 1
def test_read_captions_jsonl_keeps_every_row_or_names_the_bad_line(tmp_path, rows, bad_at, bad):
    encoded = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
    if bad_at is not None:
        encoded.insert(min(bad_at, len(encoded)), bad)
    path = _write(tmp_path, "captions.jsonl", b"\n".join(encoded) + b"\n")
    if bad_at is not None:
        with pytest.raises(IngestError) as e:
            read_captions(path)
        assert str(e.value).startswith(f"{path}:{min(bad_at, len(rows)) + 1}: ")
    else:
        assert read_captions(path) == rows


@FUZZ
@given(rows=captions_rows, bom=st.booleans(), crlf=st.booleans())
@example(rows=[{"path": "a\rb.mp4", "caption": '"quoted", and\nnew line'}], bom=True, crlf=True)
def test_read_captions_csv_keeps_every_row(tmp_path, rows, bom, crlf):
    """As a spreadsheet writes it: \r\n line ends (QUOTE_MINIMAL then quotes a lone \r) or \n and every
    field quoted (csv.writer leaves a lone \r unquoted with lineterminator \n: a file no reader can read back)."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, ["path", "caption"], lineterminator="\r\n" if crlf else "\n",
                            quoting=csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL)
    writer.writeheader()
    writer.writerows(rows)
    path = _write(tmp_path, "captions.csv", (b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode())
    assert read_captions(path) == rows
