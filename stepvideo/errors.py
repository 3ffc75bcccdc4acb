"""The errors a user can cause: bad files, params, inputs, a registry out of reach.

Each derives from `StepVideoError`; the CLI prints one as a single `error: ...` line and exits 2
(`STEPVIDEO_DEBUG=1` shows its traceback). Anything else is a bug and keeps its traceback. The
subclasses also derive from the builtin they refine (`InputError` is a `ValueError`, `MissingError`
a `FileNotFoundError`), so callers that catch the builtin still catch them.

This module imports nothing from the package: every other module may raise these.
"""

from __future__ import annotations


class StepVideoError(Exception):
    """A user error: the message names the file, row or key and what is wrong with it."""


class InputError(StepVideoError, ValueError):
    """A value, file or row the user gave does not fit (a params key, a manifest row, a flag)."""


class MissingError(StepVideoError, FileNotFoundError):
    """A file, folder, model or registry entry the user named does not exist."""


class UnavailableError(StepVideoError, ConnectionError):
    """A service the command needs (the MLflow registry, a Prefect server) cannot be reached."""


USER_ERRORS: tuple[type[BaseException], ...] = (StepVideoError,)
