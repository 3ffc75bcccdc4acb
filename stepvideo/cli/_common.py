"""What every command group shares: the one user-error wrapper, the params/project helpers, the
local Prefect defaults, and the seam to the Prefect flows.

The package never imports `flows/`: the flows this CLI runs are looked up by name in the
`stepvideo.flows` entry-point group (pyproject.toml), which the project's install registers
(`flows.cascade`, `flows.retrain`, `flows.events`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional

import typer

PARAMS = typer.Option(Path("params.yaml"), "--params", help="params file")
FLOWS_GROUP = "stepvideo.flows"


def user_errors(fn):
    """Turn the project's user-facing errors into one line on stderr and exit code 2; a warning (a
    partial last line in a labels file, ...) prints as one `warning: ...` line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from stepvideo.errors import USER_ERRORS

        def show(message, category, filename, lineno, file=None, line=None):
            typer.secho(f"warning: {message}", fg="yellow", err=True)

        try:
            with warnings.catch_warnings():
                warnings.showwarning = show
                return fn(*args, **kwargs)
        except USER_ERRORS as e:
            if os.environ.get("STEPVIDEO_DEBUG"):
                raise
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None

    return wrapper


def load_params_file(path: Path, preset: Optional[str] = None):
    from stepvideo.config import load_params

    return load_params(path, preset)


def project_root() -> Path:
    from stepvideo.tracking import project_root as root

    return root()


def flows(name: str) -> ModuleType:
    """The Prefect flow module registered as `name` in the `stepvideo.flows` entry points."""
    from importlib.metadata import entry_points

    found = entry_points(group=FLOWS_GROUP, name=name)
    if not found:
        raise RuntimeError(f"no `{name}` in the {FLOWS_GROUP!r} entry points: install the project with its flows "
                           "(make setup, or pip install -e .)")
    return next(iter(found)).load()


class _Stderr(logging.Handler):
    """Writes each record's message to the sys.stderr of the moment (a test's capture, a redirected CLI)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # the logging contract: a broken stream must not break the run
            self.handleError(record)


def setup_logging() -> None:
    """The stages' INFO lines (`stepvideo.*` loggers: a skipped stage, a DPO round, the evaluation
    line) on stderr as plain text, once; and the INFO chatter of libraries that says nothing to a
    user of the pipeline (MLflow creating its sqlite tables, Great Expectations' temporary docs
    folder) silenced; their warnings and errors still show."""
    for name in ("mlflow.store.db.utils", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    log = logging.getLogger("stepvideo")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        log.addHandler(_Stderr())
        log.setLevel(logging.INFO)
        log.propagate = False  # the lines are shown here, not again by a handler on the root logger


def prefect_env(root: Path) -> None:
    """Local Prefect defaults: a project-local PREFECT_HOME, patience for the temporary server, and no
    analytics. The server's analytics heartbeat phones home (one ERROR line offline) and, on a fresh
    PREFECT_HOME, writes its session row in a read-then-write sqlite transaction that races the server's
    other startup writes: SQLite answers SQLITE_BUSY_SNAPSHOT at once (no busy_timeout can wait that out)
    and pydocket logs the 'database is locked' traceback. Nothing else in the ephemeral server needs it."""
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # like GX_ANALYTICS_ENABLED, DVC core.analytics
