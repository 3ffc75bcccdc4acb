"""Files in and out. Writing so that saved work is never lost: a temporary name beside the target,
then an atomic rename (`atomic_write_text` for a file, `atomic_folder` for a folder). Reading the
project's JSON Lines files with errors that name the file and line (`read_jsonl`). The one home for
both (it depends on `errors` alone: every layer may import it)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from stepvideo.errors import InputError


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """("FILE:N", object) for each non-blank line of the UTF-8 JSON Lines file `path`; a line that is
    not a JSON object (or not UTF-8, or nested too deeply to read) raises InputError naming the file
    and the line. Lines end at "\n" only: U+2028, U+0085 and the like, which json.dumps(...,
    ensure_ascii=False) writes unescaped inside strings, are text, not line breaks. A UTF-8
    byte-order mark at the start is skipped."""
    data = Path(path).read_bytes().removeprefix(b"\xef\xbb\xbf")
    for n, raw in enumerate(data.split(b"\n"), 1):
        where = f"{path}:{n}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise InputError(f"{where}: JSON nested too deeply to read") from None
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, obj


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside `path` (same suffix: encoders pick the format by it) to write to; on
    success it replaces `path` atomically, on any failure it is removed and `path` is as it was. An
    existing folder at `path` is refused up front (a file cannot replace it)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file path (e.g. {path / ('out' + (path.suffix or '.mp4'))})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` (parents created) through a temporary file and os.replace; a
    failed write leaves the old file as it was and no temporary file behind."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
    return Path(path)


def temp_folder_for(folder: str | os.PathLike) -> Path:
    """An empty hidden folder beside `folder`, to write into and then `replace_folder` into place."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def replace_folder(tmp: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Move a fully written `tmp` folder to `folder`, replacing what was there only once `tmp` is complete."""
    tmp, folder = Path(tmp), Path(folder)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)
    return folder


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Write `folder` atomically: the block writes into the empty temporary folder it is given; when
    the block ends it replaces `folder` (an old one goes only once the new one is in place); when it
    raises (Ctrl-C included) the temporary folder is removed and `folder` is left as it was."""
    tmp = temp_folder_for(folder)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, folder)
