"""Whether a retrain has anything to do: the data version (DVC's hash of the data folder, after an
incremental `dvc add`) and the training params (`Params.training_hash`) against the lineage of
the bundle versions the registry has already judged (`champion`, then `challenger`).

A match means the cascade would train the same model again: the scheduled retrain skips it and
says which version already holds that data and those params. Anything else (new data, changed
params, no bundle judged yet, no data folder) retrains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stepvideo import tracking
from stepvideo.config import Params
from stepvideo.registry import JUDGED, missing_or_raise


@dataclass(frozen=True)
class RetrainCheck:
    changed: bool
    why: str  # one line, for the flow run's log and its final state
    data_version: str | None
    cascade_params: str
    model: str | None = None  # 'NAME/VERSION@ALIAS' trained on this data and params, when unchanged

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judged_versions(name: str) -> list[tuple[str, str, dict]]:
    """(alias, version, tags) of `name`'s champion and challenger; empty when `name` is not registered."""
    import mlflow

    client = tracking.client()
    try:
        model = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as e:
        missing_or_raise(e, f"registered model {name}")
        return []
    found = []
    for alias in JUDGED:
        version = (model.aliases or {}).get(alias)
        if version is not None:
            found.append((alias, str(version), dict(client.get_model_version(name, str(version)).tags or {})))
    return found


def current_data_version(params: Params, root: Path) -> str | None:
    """The data folder's version now (an incremental `dvc add`, no push), or None when it does not exist."""
    from stepvideo.data.versioning import version_data

    folder = root / params.data.out
    if not (folder / "manifest.jsonl").is_file():
        return None
    return version_data(root, params.data.out, push=False)


def check(params: Params, root: Path) -> RetrainCheck:
    """Compare the data version and the training params with the lineage of the judged bundles."""
    name = params.promote.registered
    data = current_data_version(params, root)
    cascade_params = params.training_hash()
    if data is None:
        return RetrainCheck(True, f"no data at {root / params.data.out} yet", None, cascade_params)
    judged = judged_versions(name)
    for alias, version, tags in judged:
        if tags.get("data_version") == data and tags.get("cascade_params") == cascade_params:
            return RetrainCheck(False, f"nothing changed: {name} version {version} (@{alias}) was trained on data "
                                       f"{data} with params {cascade_params}", data, cascade_params,
                                f"{name}/{version}@{alias}")
    if not judged:
        why = f"{name} has no champion or challenger yet"
    else:
        alias, version, tags = judged[0]
        what = [f"data {tags.get('data_version')} -> {data}" if tags.get("data_version") != data else "",
                f"params {tags.get('cascade_params')} -> {cascade_params}"
                if tags.get("cascade_params") != cascade_params else ""]
        why = f"changed since {name} version {version} (@{alias}): " + ", ".join(w for w in what if w)
    return RetrainCheck(True, why, data, cascade_params)
