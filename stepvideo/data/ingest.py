"""`stepvideo data ingest`: a user's own clips + captions file -> the project's manifest.

The captions file is CSV or JSONL with columns `path` (relative to the videos folder), `caption` and
optionally `id`. Every file is probed (decoded in full). A bad row never stops ingest: it is kept
with the reason in `probe_error` (or an undecodable caption kept visibly, with U+FFFD), so that the
validation gate can name it and quarantine it.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
from pathlib import Path

from tqdm import tqdm

from stepvideo.data.manifest import write_manifest
from stepvideo.data.video_io import VideoReadError, probe
from stepvideo.errors import InputError


class IngestError(InputError):
    """The captions file itself is unusable (missing, wrong columns, not CSV/JSONL)."""


def _fix_text(value: object) -> str:
    """Strings decoded with surrogateescape: undecodable bytes become U+FFFD (visible to validation).
    A lone surrogate from a JSON escape ("\\ud800", not UTF-8 bytes) becomes U+FFFD as well."""
    text = "" if value is None else str(value)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate surrogateescape did not make (U+D800-U+DC7F, U+DD00-U+DFFF)
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def read_captions(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: captions file not found")
    # a UTF-8 byte-order mark (what spreadsheet programs write) is not part of the first column's name
    text = path.read_bytes().removeprefix(codecs.BOM_UTF8).decode("utf-8", "surrogateescape")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            missing = {"path", "caption"} - set(reader.fieldnames or [])
            if missing:
                raise IngestError(f"{path}: missing column(s) {', '.join(sorted(missing))} (have {reader.fieldnames})")
            rows = [{k: _fix_text(v) for k, v in r.items() if k is not None} for r in reader]
        except csv.Error as e:  # e.g. a lone carriage return inside an unquoted field
            raise IngestError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        # lines end at "\n" only: U+2028, U+0085... inside a caption are text (str.splitlines breaks there)
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise IngestError(f"{path}:{n}: not valid JSON ({e.msg})") from e
            except RecursionError:
                raise IngestError(f"{path}:{n}: JSON nested too deeply to read") from None
            if not isinstance(obj, dict) or "path" not in obj or "caption" not in obj:
                raise IngestError(f"{path}:{n}: expected an object with 'path' and 'caption'")
            rows.append({k: _fix_text(v) for k, v in obj.items()})
    else:
        raise IngestError(f"{path}: captions must be .csv or .jsonl")
    if not rows:
        raise IngestError(f"{path}: no caption rows (a header alone, or an empty file)")
    return rows


def _split(row_id: str, heldout_fraction: float) -> str:
    h = int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < heldout_fraction else "train"


def ingest(videos: str | os.PathLike, captions: str | os.PathLike, out: str | os.PathLike,
           heldout_fraction: float = 0.1, progress: bool = True) -> Path:
    """Probe every captioned file and write `out/manifest.jsonl`; returns its path."""
    videos, out = Path(videos).resolve(), Path(out).resolve()
    if not videos.is_dir():
        raise IngestError(f"{videos}: videos folder not found")
    captions_rows = read_captions(captions)  # a bad captions file fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, cap in enumerate(tqdm(captions_rows, desc="ingest", unit="file", disable=not progress), 1):
        rel = cap.get("path", "")
        media = videos / rel
        row_id = cap.get("id") or Path(rel).stem or f"row{n}"
        row = {"id": row_id, "clip_id": row_id, "path": os.path.relpath(media, out), "caption": cap.get("caption", ""),
               "lang": None, "split": _split(row_id, heldout_fraction), "quality": None, "degradation": "none",
               "source": "ingest", "attributes": "", "probe_error": "", "kind": "video",
               "frames": 0, "fps": 0.0, "height": 0, "width": 0}
        try:
            if not media.resolve().is_relative_to(videos):  # ../ or an absolute path: quarantined by name
                raise VideoReadError(f"{rel}: the path leaves the videos folder {videos}")
            p = probe(media)
            row.update(kind=p.kind, frames=p.frames, fps=round(p.fps, 4), height=p.height, width=p.width)
        except VideoReadError as e:
            row["probe_error"] = str(e).replace(str(videos) + os.sep, "")
        rows.append(row)
    return write_manifest(out / "manifest.jsonl", rows)
