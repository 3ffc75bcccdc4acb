"""DVC: version a data folder (`dvc add`), push it to the configured remote, read its version."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import yaml

from stepvideo.errors import StepVideoError

log = logging.getLogger(__name__)


class VersioningError(StepVideoError, RuntimeError):
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
    dvc_file = f"{target}.dvc"
    with _repo(root) as repo:
        # DVC reminds to `git add` every .dvc file it writes, changed or not (it does not ask git), so an
        # unchanged, committed data.dvc got the hint on every run; git is asked below instead
        repo.scm_context.quiet = True
        repo.add(str(root / target))
        if push:
            if not repo.config.get("core", {}).get("remote"):
                raise VersioningError(f"{root}: no default DVC remote configured (dvc remote add -d NAME URL)")
            repo.push(targets=[str(root / dvc_file)])
        from dvc.scm import NoSCM

        in_git = not isinstance(repo.scm, NoSCM)
    version = data_version(root / dvc_file)
    if in_git and _uncommitted(root, dvc_file):
        log.warning("%s records data version %s, not yet in a git commit: `git add %s` and commit to keep it",
                    dvc_file, version, dvc_file)
    return version


def _uncommitted(root: Path, path: str) -> bool:
    """Whether git sees `path` as new or changed against HEAD (False when git cannot tell)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", path], cwd=root,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return False
    return bool(out.strip())
