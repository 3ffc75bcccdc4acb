"""`make demo`'s output is read first: no hints that do not apply, no tracebacks from services we do not use."""

from __future__ import annotations

import logging
import subprocess

import pytest

from stepvideo.data.synth import SynthConfig, generate


@pytest.fixture
def dvc_logging():
    """DVC binds its log handler to the sys.stderr it first sees (here: capfd's, closed after the test):
    put the 'dvc' logger back as it was, so later in-process DVC calls do not write to a closed file."""
    logger = logging.getLogger("dvc")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def _git(root, *args):
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True,
                   capture_output=True)


def test_version_data_hints_git_add_only_when_the_dvc_file_is_not_committed(project, dvc_logging, capfd, caplog):
    from stepvideo.data.versioning import version_data

    caplog.set_level(logging.INFO)
    generate(SynthConfig(clips=2, images=1, degraded_fraction=0), project / "data", progress=False)

    first = version_data(project, "data", push=False)  # data.dvc is new: one line says to commit it
    out = capfd.readouterr()
    said = out.out + out.err + caplog.text
    assert said.count("git add data.dvc") == 1 and "core.autostage" not in said

    _git(project, "add", "data.dvc", ".gitignore")
    _git(project, "commit", "-q", "-m", "data")
    caplog.clear()
    again = version_data(project, "data", push=False)  # what `make demo` does on a committed data.dvc
    out = capfd.readouterr()
    said = out.out + out.err + caplog.text
    assert again == first
    assert "git add" not in said and "autostage" not in said, said


def test_prefect_env_turns_off_the_servers_analytics(tmp_path, monkeypatch):
    """The analytics heartbeat raced the temporary server's startup writes ('database is locked' traceback)
    and phones home; prefect_env turns it off unless the user chose otherwise."""
    from prefect.settings import Settings

    from stepvideo.cli._common import prefect_env

    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "unset")  # restored to absent afterwards
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED")
    prefect_env(tmp_path)
    assert Settings().server.analytics_enabled is False

    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")
    prefect_env(tmp_path)
    assert Settings().server.analytics_enabled is True
