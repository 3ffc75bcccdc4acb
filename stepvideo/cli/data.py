"""`stepvideo data ...`: synthesize, ingest, validate and version datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from stepvideo.cli._common import PARAMS, flows, load_params_file, project_root, user_errors

data_app = typer.Typer(help="Datasets: synth, ingest, validate, version.", no_args_is_help=True)


@data_app.command("synth")
@user_errors
def data_synth(
    out: Optional[Path] = typer.Option(None, help="output folder [params: data.out]"),
    clips: Optional[int] = typer.Option(None, help="number of video clips [params: data.clips]"),
    images: Optional[int] = typer.Option(None, help="number of still images [params: data.images]"),
    seed: Optional[int] = typer.Option(None, help="random seed [params: data.seed]"),
    height: Optional[int] = typer.Option(None, help="frame height, multiple of 16"),
    width: Optional[int] = typer.Option(None, help="frame width, multiple of 16"),
    frames: Optional[int] = typer.Option(None, help="frames per clip, multiple of 17"),
    fps: Optional[int] = typer.Option(None, help="frames per second"),
    lossless: Optional[bool] = typer.Option(None, "--lossless/--lossy",
                                            help="lossless RGB H.264 or lossy yuv420p [params: data.lossless]"),
    params: Path = PARAMS,
):
    """Generate the embedded bilingual (English + Chinese) video-text dataset, deterministically."""
    import dataclasses

    from stepvideo.data.synth import SynthConfig, generate

    p = load_params_file(params) if params.is_file() else None
    base = {f.name: getattr(p.data, f.name) for f in dataclasses.fields(SynthConfig)} if p else {}
    given = {"clips": clips, "images": images, "seed": seed, "height": height, "width": width, "frames": frames, "fps": fps,
             "lossless": lossless}
    cfg = SynthConfig(**{**base, **{k: v for k, v in given.items() if v is not None}})
    manifest = generate(cfg, out or Path(p.data.out if p else "data"))
    typer.echo(f"wrote {manifest}")


@data_app.command("ingest")
@user_errors
def data_ingest(
    videos: Path = typer.Option(..., help="folder holding the clips"),
    captions: Path = typer.Option(..., help="CSV or JSONL with columns path, caption (and optional id)"),
    out: Path = typer.Option(..., help="output folder for manifest.jsonl"),
    heldout_fraction: float = typer.Option(0.1, help="share of rows for the held-out split (by id hash)"),
):
    """Probe a user's own clips into the project's manifest; bad rows are kept with their reason."""
    from stepvideo.data.ingest import ingest
    from stepvideo.fileio import read_jsonl

    manifest = ingest(videos, captions, out, heldout_fraction=heldout_fraction)
    rows = [row for _, row in read_jsonl(manifest)]
    bad = [r for r in rows if r["probe_error"]]
    typer.echo(f"wrote {manifest}: {len(rows)} rows, {len(bad)} unreadable")
    for r in bad:
        typer.echo(f"  {r['id']}: {r['probe_error']}")


@data_app.command("validate")
@user_errors
def data_validate(
    manifest: Path = typer.Argument(..., help="manifest.jsonl to check"),
    policy: Optional[str] = typer.Option(None, help="fail | quarantine [params: validate.policy]"),
    report: Optional[Path] = typer.Option(None, help="also copy the JSON report here"),
    out: Optional[Path] = typer.Option(None, help="folder for clean/quarantine manifests (default: beside the manifest)"),
    params: Path = PARAMS,
):
    """Run the Great Expectations gate; exit 1 when it fails, naming each bad row and expectation."""
    import dataclasses
    import shutil

    from stepvideo.config import ValidateParams
    from stepvideo.data.validation import ValidationFailed, format_report, validate

    vp = load_params_file(params).validate if params.is_file() else ValidateParams()
    if policy:
        vp = dataclasses.replace(vp, policy=policy)
    try:
        res = validate(manifest, vp, out)
        rep = json.loads(res.report_path.read_text())
        code = 0
    except ValidationFailed as e:
        rep, code = e.report, 1
        typer.secho(f"validation failed: {e}", fg="red", err=True)
    typer.echo(format_report(rep))
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        src = (out or manifest.parent / "validated") / "report.json"
        if src.is_file():
            shutil.copyfile(src, report)
        else:
            report.write_text(json.dumps(rep, indent=2, ensure_ascii=False))
    raise typer.Exit(code)


@data_app.command("version")
@user_errors
def data_version_cmd(
    target: str = typer.Option("data", help="folder to track"),
    push: bool = typer.Option(True, help="push to the default DVC remote"),
    notify: Optional[bool] = typer.Option(
        None, "--notify/--no-notify",
        help="send the Prefect event `stepvideo.data.versioned` (the on-new-data retrain waits for it) "
             "[default: when the version moved and a Prefect server is configured]"),
):
    """`dvc add` (and push) the data folder; prints the data version (DVC's hash)."""
    from stepvideo.data.versioning import data_version, version_data

    root = project_root()
    dvc_file = root / f"{target}.dvc"
    previous = data_version(dvc_file) if dvc_file.is_file() else None
    version = version_data(root, target, push=push)
    typer.echo(version)
    if notify is False:
        return
    events = flows("events")
    if notify is None and (version == previous or not events.api_url()):
        if events.api_url():
            typer.echo(f"data version unchanged: no {events.DATA_VERSIONED} event", err=True)
        return
    events.emit_data_versioned(root, target, version, previous)
    typer.echo(f"sent {events.DATA_VERSIONED} ({previous or 'none'} -> {version}) to {events.api_url()}", err=True)
