"""The retrain decision (data version + training params against the judged bundle's lineage) and
the data event; the deployments themselves run in tests/e2e/test_deployments.py."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepvideo import tracking
from stepvideo.cli import app
from stepvideo.config import load_params
from stepvideo.registry.retrain import check


def write_data(root: Path, rows: int) -> None:
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "manifest.jsonl").write_text("".join(f'{{"id": "c{i}"}}\n' for i in range(rows)))


def judged(root: Path, name: str, alias: str, data_version: str, cascade_params: str) -> str:
    from mlflow import MlflowClient

    folder = root / "bundle"
    folder.mkdir(exist_ok=True)
    (folder / "model_index.json").write_text("{}\n")
    with tracking.run("unit", experiment="unit-tests"):
        version = tracking.register_folder(folder, name, tags={"data_version": data_version,
                                                               "cascade_params": cascade_params})
    MlflowClient(tracking.tracking_uri()).set_registered_model_alias(name, alias, version)
    return version


def test_retrain_skips_only_when_data_and_params_match_the_champion_or_challenger(project):
    params = load_params(project / "params.yaml")
    name = f"t2v-{uuid.uuid4().hex[:8]}"
    params = dataclasses.replace(params, promote=dataclasses.replace(params.promote, registered=name))

    first = check(params, project)
    assert first.changed and first.data_version is None and "no data" in first.why
    write_data(project, 3)
    unjudged = check(params, project)
    assert unjudged.changed and unjudged.data_version.endswith(".dir") and "no champion or challenger" in unjudged.why
    data_v1, hp = unjudged.data_version, params.training_hash()

    v1 = judged(project, name, "challenger", data_v1, hp)  # a rejected candidate already tried this
    same = check(params, project)
    assert not same.changed and same.model == f"{name}/{v1}@challenger"
    assert same.why == f"nothing changed: {name} version {v1} (@challenger) was trained on data {data_v1} with params {hp}"

    v2 = judged(project, name, "champion", data_v1, hp)
    assert check(params, project).model == f"{name}/{v2}@champion"  # the champion is asked first

    # a training section moves the hash; evaluate/promote/tracking do not
    assert dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, steps=3)).training_hash() == hp
    tuned = dataclasses.replace(params, sft=dataclasses.replace(params.sft, lr=params.sft.lr * 2))
    moved = check(tuned, project)
    assert moved.changed and moved.why == (f"changed since {name} version {v2} (@champion): "
                                           f"params {hp} -> {tuned.training_hash()}")

    write_data(project, 4)  # new data: `dvc add` gives a new version
    new = check(params, project)
    assert new.changed and new.data_version != data_v1
    assert new.why == f"changed since {name} version {v2} (@champion): data {data_v1} -> {new.data_version}"


def test_existing_data_source_needs_a_manifest(project):
    from stepvideo.stages.data import existing_data

    params = load_params(project / "params.yaml")
    with pytest.raises(FileNotFoundError, match=r"data/manifest.jsonl: no data to train on"):
        existing_data(params, project)
    write_data(project, 2)
    assert existing_data(params, project)["metrics"] == {"rows": 2}


def test_data_version_sends_the_event_only_to_a_configured_server(project, monkeypatch):
    from flows.events import DATA_RESOURCE, DATA_VERSIONED, data_versioned_event

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    write_data(project, 2)
    runner = CliRunner()
    quiet = runner.invoke(app, ["data", "version", "--no-push"])  # no server configured: no event, no error
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout.strip().endswith(".dir") and "sent" not in quiet.output
    forced = runner.invoke(app, ["data", "version", "--no-push", "--notify"])
    assert forced.exit_code == 2 and "no Prefect server to notify: set PREFECT_API_URL" in forced.output

    event = data_versioned_event(project, "data", "abc.dir", None)
    assert event.event == DATA_VERSIONED and event.resource.id == DATA_RESOURCE
    assert event.payload == {"data_version": "abc.dir", "previous": "", "root": str(project), "target": "data"}
