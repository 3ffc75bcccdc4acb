"""MLflow, in one place: the store, a run per stage (nested under the flow's run), lineage tags.

The default store is a sqlite database and an artifact folder under `mlflow/` in the project;
`MLFLOW_TRACKING_URI` overrides it. Stages call `stage_run`; drivers (the Prefect flow) call
`flow_run` and pass its id down, so a stage records the same whichever driver ran it.

A tracking server that does not answer: MLflow's client retries each call with backoff
(MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7; MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, default 2;
MLFLOW_HTTP_REQUEST_TIMEOUT, default 120 s per request), then the call raises `RegistryUnavailable`
naming the URI; the run is left for the server to mark (it cannot be told), the stage's files stay.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

from stepvideo.errors import InputError, MissingError, UnavailableError

PARENT_ENV = "STEPVIDEO_PARENT_RUN_ID"
# the MLflow error codes of a lookup that found nothing (a missing model or version; a missing alias
# reads INVALID_PARAMETER_VALUE); any other error means the store could not be read
MISSING_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class RegistryUnavailable(UnavailableError):
    """The registry could not be read (an unreachable server, a broken store): not the same as an
    empty registry, so nothing decides on it as if no model were registered."""


def missing_or_raise(e: Exception, what: str) -> None:
    """Return when MLflow error `e` says `what` does not exist; raise RegistryUnavailable otherwise."""
    if getattr(e, "error_code", None) in MISSING_CODES:
        return
    raise RegistryUnavailable(f"the MLflow registry at {tracking_uri()} cannot be read ({what}): {e}") from e


def _unreachable(e: BaseException) -> bool:
    """Whether MLflow error `e` says the tracking server did not answer (refused, reset, timed out),
    which MLflow raises once its own retries with backoff are spent."""
    text = str(e)
    return getattr(e, "error_code", None) == "TEMPORARILY_UNAVAILABLE" or (
        text.startswith("API request to") and ("failed with exception" in text or "timeout exception" in text))


@contextlib.contextmanager
def _reachable(what: str) -> Iterator[None]:
    """Turn a tracking call's "the server did not answer" into RegistryUnavailable naming the URI."""
    import mlflow

    try:
        yield
    except mlflow.exceptions.MlflowException as e:
        if not _unreachable(e):
            raise
        raise RegistryUnavailable(
            f"the MLflow tracking server at {tracking_uri()} cannot be reached ({what}), after MLflow's retries with "
            f"backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR and "
            f"MLFLOW_HTTP_REQUEST_TIMEOUT set them); the stage's files written so far are kept, run it again "
            f"once the server is back: {e}") from e


def project_root() -> Path:
    """The project folder: STEPVIDEO_ROOT, else the nearest parent of the cwd holding params.yaml."""
    if os.environ.get("STEPVIDEO_ROOT"):
        return Path(os.environ["STEPVIDEO_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "params.yaml").is_file():
            return p
    return here


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    store = project_root() / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def artifact_root() -> str | None:
    """Where a new experiment keeps its artifacts: $STEPVIDEO_MLFLOW_ARTIFACTS, else the project's
    mlflow/artifacts beside the sqlite store; None against a tracking server (its own artifact root,
    e.g. `mlflow server --artifacts-destination s3://...`)."""
    if os.environ.get("STEPVIDEO_MLFLOW_ARTIFACTS"):
        return os.environ["STEPVIDEO_MLFLOW_ARTIFACTS"]
    if tracking_uri().startswith(("http://", "https://", "databricks")):
        return None
    return (project_root() / "mlflow" / "artifacts").as_uri()


def git_commit(root: Path | None = None) -> str:
    """HEAD's commit, with '-dirty' when tracked files differ; 'unknown' outside git."""
    root = root or project_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def code_version(*modules: str) -> str:
    """Hash of the source files of the given packages/modules: a cache key that moves with the code."""
    import importlib.util

    h = hashlib.sha256()
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise InputError(f"cannot locate module {name!r}")
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for f in files:
            h.update(str(f.relative_to(origin.parent.parent)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def file_hash(path: str | os.PathLike) -> str:
    """sha256 (16 hex) of a file's bytes, or of a folder's files (names + bytes) in sorted order."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def _experiment_id(name: str) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_root())
    except mlflow.exceptions.MlflowException:  # created meanwhile by another process
        return mlflow.get_experiment_by_name(name).experiment_id


@contextlib.contextmanager
def run(name: str, *, experiment: str = "stepvideo", params: dict | None = None, tags: dict | None = None,
        parent_run_id: str | None = None) -> Iterator[Any]:
    """A MLflow run (nested under `parent_run_id` or $STEPVIDEO_PARENT_RUN_ID when given)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    parent = parent_run_id or os.environ.get(PARENT_ENV) or None
    base_tags = {"git_commit": git_commit(), "stage": name}
    with _reachable(f"starting the run {name!r}"):
        exp_id = _experiment_id(experiment)
        active = mlflow.start_run(run_name=name, experiment_id=exp_id, parent_run_id=parent,
                                  nested=parent is not None, tags={**base_tags, **(tags or {})})
    try:
        if params:
            with _reachable(f"logging the params of {name!r}"):
                mlflow.log_params(_flatten(params))
        yield active
    except BaseException:
        try:
            mlflow.end_run("FAILED")
        except mlflow.exceptions.MlflowException:  # the store is out of reach too: the error that stopped
            pass                                   # the stage is the one to show, not this one
        raise
    with _reachable(f"ending the run {name!r}"):
        mlflow.end_run()


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    with _reachable("log metrics"):
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    with _reachable("log artifact"):
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def set_tags(tags: dict[str, Any]) -> None:
    import mlflow

    with _reachable("set tags"):
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


# ---------------------------------------------------------------- the model registry

def client() -> Any:
    """The one MlflowClient factory: a client of this project's tracking store (`tracking_uri`)."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient()


def register_folder(folder: str | os.PathLike, name: str, *, tags: dict | None = None,
                    aliases: tuple[str, ...] = ()) -> str:
    """Log a checkpoint folder (safetensors + config.json) as the active run's `model` artifact and
    register it as a new version of `name`; returns the version. No pickle, no torch.export: the
    version's files are the folder, loaded again by our `from_pretrained`."""
    import mlflow

    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("register_folder needs an active run (inside tracking.run)")
    mlflow.log_artifacts(str(folder), artifact_path="model")
    mlf = client()
    try:
        mlf.get_registered_model(name)
    except mlflow.exceptions.MlflowException as e:
        missing_or_raise(e, f"registered model {name}")
        mlf.create_registered_model(name, description=f"stepvideo {name}: a folder of safetensors + config.json")
    tags = {k: str(v) for k, v in (tags or {}).items()}
    mv = mlf.create_model_version(name, source=f"{active.info.artifact_uri}/model", run_id=active.info.run_id,
                                     tags=tags)
    for alias in aliases:
        mlf.set_registered_model_alias(name, alias, mv.version)
    mlflow.set_tags({f"registered.{name}": mv.version})
    return str(mv.version)


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


def resolve_model(uri: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """A local folder for `uri`: a path as is, or `models:/NAME@ALIAS` / `models:/NAME/VERSION` /
    `runs:/...` downloaded from the registry."""
    text = str(uri)
    if "://" not in text and not text.startswith(("models:/", "runs:/")):
        path = Path(text)
        if not path.exists():
            raise MissingError(f"{path}: model folder not found")
        return path
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=str(dst) if dst else None))
    except mlflow.exceptions.MlflowException as e:
        missing_or_raise(e, text)
        raise MissingError(f"{text}: cannot resolve in the MLflow registry ({e.message})") from e


def model_version(uri: str) -> Any:
    """The registry's ModelVersion behind `models:/NAME@ALIAS` or `models:/NAME/VERSION`."""
    import mlflow

    ref = str(uri).removeprefix("models:/")
    mlf = client()
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return mlf.get_model_version_by_alias(name, alias)
        name, _, version = ref.partition("/")
        return mlf.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as e:
        missing_or_raise(e, uri)
        raise MissingError(f"{uri}: not in the MLflow registry ({e.message})") from e


def tag_model_version(name: str, version: str, tags: dict[str, Any]) -> None:
    """Set tags on a registered model version (e.g. its evaluation scores)."""
    mlf = client()
    for k, v in tags.items():
        mlf.set_model_version_tag(name, version, k, str(v))


def stage_metric_histories(uri: str, metric: str) -> dict[str, list[list[float]]]:
    """{stage: [[step, value], ...]} of `metric` over the sibling stage runs of the run that
    registered `uri` (the stages of one flow run); {} when that run has no parent."""
    mv = model_version(uri)
    mlf = client()
    run = mlf.get_run(mv.run_id)
    parent = run.data.tags.get("mlflow.parentRunId")
    if not parent:
        return {}
    children = mlf.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                  order_by=["attributes.start_time ASC"])
    out: dict[str, list[list[float]]] = {}
    for child in children:
        history = mlf.get_metric_history(child.info.run_id, metric)
        if history:
            stage = child.data.tags.get("stage") or child.info.run_name
            out[stage] = [[float(m.step), float(m.value)] for m in sorted(history, key=lambda m: m.step)]
    return out


def registry_exists() -> bool:
    """Whether there is a registry to ask: $MLFLOW_TRACKING_URI, or the project's sqlite store
    (checked without creating it)."""
    return bool(os.environ.get("MLFLOW_TRACKING_URI")) or (project_root() / "mlflow" / "mlflow.db").is_file()


def alias_exists(name: str, alias: str) -> bool:
    """Whether registered model `name` has `alias` (False when the model or the store is missing)."""
    if not registry_exists():
        return False
    try:
        model_version(f"models:/{name}@{alias}")
    except FileNotFoundError:
        return False
    return True


def stage_durations(experiment: str = "stepvideo") -> dict[str, float]:
    """{stage: seconds} of the newest finished `cascade` run's stage runs (its children); {} when
    the store has none."""
    import mlflow

    if not registry_exists():
        return {}
    mlf = client()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    parents = mlf.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'cascade' and "
                                 "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        return {}
    children = mlf.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    out: dict[str, float] = {}
    for child in children:
        if child.info.end_time and child.info.start_time:
            stage = child.data.tags.get("stage") or child.info.run_name
            out[stage] = out.get(stage, 0.0) + (child.info.end_time - child.info.start_time) / 1000.0
    return out
