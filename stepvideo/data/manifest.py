"""The manifest: one JSON object per line, one row per (media file, caption).

Columns (every row has all of them; `null` where unknown):
  id           unique row id                     clip_id   media id (rows of one clip share it)
  path         media path, relative to the manifest's folder
  kind         video | image                     split     train | heldout
  caption      the text                          lang      declared language (not trusted: validation detects it)
  frames, fps, height, width                     as probed (ingest) or rendered (synth)
  quality      0..1 score (synthetic clips: lower when degraded)   degradation  none | noise | blur | jitter | mismatch
  source       synth | ingest                    attributes  JSON ground truth (synthetic rows), else ""
  probe_error  why the file could not be read at ingest ("" when fine)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from stepvideo.errors import InputError

COLUMNS = ("id", "clip_id", "path", "kind", "split", "caption", "lang", "frames", "fps", "height", "width",
           "quality", "degradation", "source", "attributes", "probe_error")


class ManifestError(InputError):
    """A manifest that cannot be read; the message names the file and line."""


def write_manifest(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write rows as JSONL (fixed column order, UTF-8), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            full = {c: row.get(c) for c in COLUMNS}
            full["probe_error"] = full["probe_error"] or ""
            extra = {k: v for k, v in row.items() if k not in full}
            fh.write(json.dumps({**full, **extra}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL manifest. Undecodable bytes in a line are kept as U+FFFD so validation can name the row;
    a line that is not a JSON object raises ManifestError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    rows = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if n == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (an editor's) is no JSON
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{n}: not valid JSON ({e.msg})") from e
            except RecursionError:
                raise ManifestError(f"{path}:{n}: JSON nested too deeply to read") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{path}:{n}: expected a JSON object")
            rows.append(row)
    return rows


def media_path(manifest: str | os.PathLike, row: dict) -> Path:
    """Absolute path of a row's media file."""
    return (Path(manifest).resolve().parent / str(row.get("path") or "")).resolve()
