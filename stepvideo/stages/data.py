"""The data stages: the embedded synthetic set (or a user's ingested clips), its DVC version, and
the Great Expectations gate that writes the validated manifest."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from stepvideo import tracking
from stepvideo.config import Params
from stepvideo.data.synth import SynthConfig, generate
from stepvideo.data.validation import ValidationFailed, format_report, validate
from stepvideo.data.versioning import version_data
from stepvideo.stages.common import OUTPUTS, project_data_version
from stepvideo.errors import MissingError


def stage_data(params: Params, root: Path, parent_run_id: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Generate the embedded bilingual dataset into `params.data.out`."""
    cfg = SynthConfig(**{f.name: getattr(params.data, f.name) for f in dataclasses.fields(SynthConfig)})
    with tracking.run("data", experiment=params.tracking.experiment, params={"data": dataclasses.asdict(params.data)},
                      tags={"params_hash": params.section_hash("data")}, parent_run_id=parent_run_id):
        manifest = generate(cfg, root / params.data.out, progress=progress)
        files = [p for p in (root / params.data.out).rglob("*") if p.is_file()]
        metrics = {"clips": cfg.clips, "images": cfg.images, "files": len(files),
                   "bytes": sum(p.stat().st_size for p in files)}
        tracking.log_metrics(metrics)
    return {"manifest": str(manifest), "data_dir": str(root / params.data.out), "metrics": metrics}


def stage_ingest(params: Params, root: Path, videos: Path, captions: Path, parent_run_id: str | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """A user's own clips instead of the embedded data: probe them into `params.data.out`/manifest.jsonl."""
    from stepvideo.data.ingest import ingest

    with tracking.run("data", experiment=params.tracking.experiment, tags={"source": "ingest"},
                      parent_run_id=parent_run_id):
        manifest = ingest(videos, captions, root / params.data.out, progress=progress)
        rows = manifest.read_text(encoding="utf-8").count("\n")
        tracking.log_metrics({"rows": rows})
    return {"manifest": str(manifest), "data_dir": str(root / params.data.out), "metrics": {"rows": rows}}


def existing_data(params: Params, root: Path) -> dict[str, Any]:
    """The data folder as it is (synthesized or ingested earlier): what a retrain trains on."""
    manifest = root / params.data.out / "manifest.jsonl"
    if not manifest.is_file():
        raise MissingError(f"{manifest}: no data to train on; write it first (stepvideo data synth, or "
                                f"stepvideo data ingest --out {params.data.out})")
    rows = sum(1 for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip())
    return {"manifest": str(manifest), "data_dir": str(root / params.data.out), "metrics": {"rows": rows}}


def stage_version(params: Params, root: Path, push: bool = True, parent_run_id: str | None = None) -> dict[str, Any]:
    """`dvc add` + `dvc push` the data folder; the data version is DVC's content hash."""
    with tracking.run("version", experiment=params.tracking.experiment, parent_run_id=parent_run_id) as r:
        version = version_data(root, params.data.out, push=push)
        tracking.set_tags({"data_version": version})
    return {"data_version": version, "dvc_file": str(root / f"{params.data.out}.dvc"), "run_id": r.info.run_id}


def stage_validate(params: Params, root: Path, manifest: Path | None = None, parent_run_id: str | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """The Great Expectations gate; writes outputs/validated/{clean,quarantine}.jsonl and report.json."""
    manifest = Path(manifest) if manifest else root / params.data.out / "manifest.jsonl"
    version = project_data_version(params, root)
    out = root / OUTPUTS / "validated"
    with tracking.run("validate", experiment=params.tracking.experiment,
                      params={"validate": dataclasses.asdict(params.validate)},
                      tags={"data_version": version, "params_hash": params.section_hash("validate")},
                      parent_run_id=parent_run_id):
        try:
            result = validate(manifest, params.validate, out, progress=progress)
        except ValidationFailed as e:
            report_path = out / "report.json"
            if report_path.is_file():
                tracking.log_artifact(report_path, "validation")
            tracking.log_metrics({"rows": e.report.get("rows", 0), "bad_rows": e.report.get("bad_rows", 0)})
            tracking.set_tags({"validation": "failed"})
            raise
        metrics = result.metrics()
        metrics["seconds_per_1000_rows"] = result.seconds / max(result.rows, 1) * 1000
        tracking.log_metrics(metrics)
        tracking.log_artifact(result.report_path, "validation")
        tracking.set_tags({"validation": "passed"})
    return {"clean_manifest": str(result.clean_manifest), "quarantine_manifest": str(result.quarantine_manifest),
            "report": str(result.report_path), "data_version": version, "metrics": metrics,
            "summary": format_report(json.loads(result.report_path.read_text()), limit=10)}
