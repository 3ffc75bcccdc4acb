"""`stepvideo params ...`, `stepvideo stage NAME` and `stepvideo flow ...`: the params file, one stage
(what dvc.yaml calls), the Prefect cascade."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from stepvideo.cli._common import PARAMS, flows, load_params_file, prefect_env, project_root, setup_logging, user_errors

params_app = typer.Typer(help="params.yaml and the presets.", no_args_is_help=True)
flow_app = typer.Typer(help="The Prefect cascade flow.", no_args_is_help=True)


@params_app.command("show")
@user_errors
def params_show(preset: Optional[str] = typer.Option(None, help="a preset instead of the params file"),
                params: Path = PARAMS):
    """Print the resolved parameters."""
    from stepvideo.config import dump_params

    typer.echo(dump_params(load_params_file(params, preset)))


@params_app.command("write")
@user_errors
def params_write(preset: str = typer.Option(..., help="demo | small | step-video-t2v"),
                 out: Path = typer.Option(Path("params.yaml"), help="file to write")):
    """Write a preset in full as a params file."""
    from stepvideo.config import dump_params, preset as get_preset

    out.write_text(dump_params(get_preset(preset)))
    typer.echo(f"wrote {out}")

@user_errors
def stage(name: str = typer.Argument(..., help="data | version | validate | text_encoders | text_cache | train_vae | "
                                                 "latent_cache | t2i_pretrain | t2v_lowres | t2v_highres | sft | "
                                                 "dpo | evaluate | bundle | promote"),
          params: Path = PARAMS):
    """Run one pipeline stage (what dvc.yaml calls); records an MLflow run."""
    from stepvideo.stages import STAGES

    if name not in STAGES:
        raise typer.BadParameter(f"unknown stage {name!r} (known: {', '.join(STAGES)})")
    from stepvideo.data.validation import ValidationFailed

    p = load_params_file(params)
    setup_logging()
    try:
        result = STAGES[name](p, project_root())
    except ValidationFailed as e:
        typer.secho(f"validation failed: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(result.get("summary") or json.dumps({k: v for k, v in result.items()}, indent=2, default=str))


@flow_app.command("run")
@user_errors
def flow_run(
    preset: Optional[str] = typer.Option(None, help="run a preset instead of the params file"),
    params: Path = PARAMS,
    source: str = typer.Option("synth", help="synth (the embedded data) | ingest (your clips)"),
    videos: Optional[Path] = typer.Option(None, help="with --source ingest: the clips folder"),
    captions: Optional[Path] = typer.Option(None, help="with --source ingest: the captions file"),
    push: bool = typer.Option(True, help="push the data version to the DVC remote"),
):
    """Run the cascade flow locally (a temporary Prefect server starts when none is configured)."""
    root = project_root()
    prefect_env(root)
    setup_logging()
    cascade = flows("cascade").cascade
    result = cascade(root=str(root), params_file=str(params), preset=preset, source=source,
                     videos=str(videos) if videos else None, captions=str(captions) if captions else None, push=push)
    typer.echo("stage              time  result")
    for line in result["report"]:
        typer.echo(line)
    typer.echo(f"flow done in {sum(result['seconds'].values()):.0f} s of stages; MLflow run {result['run_id']} "
               f"(make mlflow-ui); samples under "
               f"{'outputs/finetune/samples/' if 'finetune' in result else 'outputs/dit/*/samples/'}")


@flow_app.command("retrain")
@user_errors
def flow_retrain(
    params: Path = PARAMS,
    source: str = typer.Option("data", help="data (the data folder as it is) | synth (regenerate it first)"),
    force: bool = typer.Option(False, help="retrain even when nothing changed"),
    push: bool = typer.Option(True, help="push the data version to the DVC remote"),
):
    """What the scheduled deployment runs: skip when the data version and training params match the
    judged bundle's lineage (champion, else challenger), else run the cascade and promote."""
    root = project_root()
    prefect_env(root)
    setup_logging()
    retrain = flows("retrain").retrain
    state = retrain(root=str(root), params_file=str(params), source=source, push=push, force=force,
                    reason="manual", return_state=True)
    typer.echo(f"retrain: {state.message}")
    if not state.is_completed():
        raise typer.Exit(1)
