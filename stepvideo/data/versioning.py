"""DVC: version a data folder (`dvc add`), push it to the configured remote, read its version."""

from __future__ import annotations

import os
from pathlib import Path

import yaml


class VersioningError(RuntimeError):
    pass


def _repo(root: Path):
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo(str(root))
    except NotDvcRepoError as e:
        raise VersioningError(f"{root}: not a DVC repository (run `dvc init` there)") from e


def data_version(dvc_file: str | os.PathLike) -> str:
    """The content hash DVC recorded for a tracked folder (`<md5>.dir`), from its .dvc file."""
    dvc_file = Path(dvc_file)
    if not dvc_file.is_file():
        raise VersioningError(f"{dvc_file}: no .dvc file; run `stepvideo data version` first")
    meta = yaml.safe_load(dvc_file.read_text()) or {}
    try:
        return str(meta["outs"][0]["md5"])
    except (KeyError, IndexError, TypeError) as e:
        raise VersioningError(f"{dvc_file}: no outs[0].md5 in it") from e


def version_data(root: str | os.PathLike, target: str = "data", push: bool = True) -> str:
    """`dvc add target` (incremental: unchanged files are not re-hashed) and optionally `dvc push`."""
    root = Path(root).resolve()
    with _repo(root) as repo:
        repo.add(str(root / target))
        if push:
            if not repo.config.get("core", {}).get("remote"):
                raise VersioningError(f"{root}: no default DVC remote configured (dvc remote add -d NAME URL)")
            repo.push(targets=[str(root / f"{target}.dvc")])
    return data_version(root / f"{target}.dvc")
