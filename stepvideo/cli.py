"""`stepvideo`: the command line. Every subcommand has --help; user mistakes print one clear line."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="stepvideo: train, evaluate and ship Step-Video-T2V-class text-to-video models.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Datasets: synth, ingest, validate, version.", no_args_is_help=True)
params_app = typer.Typer(help="params.yaml and the presets.", no_args_is_help=True)
flow_app = typer.Typer(help="The Prefect cascade flow.", no_args_is_help=True)
compat_app = typer.Typer(help="Official Step-Video-T2V compatibility.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(params_app, name="params")
app.add_typer(flow_app, name="flow")
app.add_typer(compat_app, name="compat")
model_app = typer.Typer(help="Model presets and facts.", no_args_is_help=True)
app.add_typer(model_app, name="model")
eval_app = typer.Typer(help="Evaluation: score clips, run the benchmark, write the report.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
release_app = typer.Typer(help="The embedded release (stepvideo-tiny).", no_args_is_help=True)
app.add_typer(release_app, name="release")
dpo_app = typer.Typer(help="Video-DPO: candidates to label (the dpo stage does the rest).", no_args_is_help=True)
app.add_typer(dpo_app, name="dpo")
from stepvideo.cli_label import label_app  # noqa: E402  (its commands import stepvideo.cli lazily)

app.add_typer(label_app, name="label")
from stepvideo.cli_registry import registry_app  # noqa: E402  (its commands import stepvideo.cli lazily)

app.add_typer(registry_app, name="registry")

PARAMS = typer.Option(Path("params.yaml"), "--params", help="params file")


def user_errors(fn):
    """Turn the project's user-facing errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from stepvideo.errors import USER_ERRORS

        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            if os.environ.get("STEPVIDEO_DEBUG"):
                raise
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _params(path: Path, preset: Optional[str] = None):
    from stepvideo.config import load_params

    return load_params(path, preset)


def _root() -> Path:
    from stepvideo.tracking import project_root

    return project_root()


# ------------------------------------------------------------------ data

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

    p = _params(params) if params.is_file() else None
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

    manifest = ingest(videos, captions, out, heldout_fraction=heldout_fraction)
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
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

    vp = _params(params).validate if params.is_file() else ValidateParams()
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

    root = _root()
    dvc_file = root / f"{target}.dvc"
    previous = data_version(dvc_file) if dvc_file.is_file() else None
    version = version_data(root, target, push=push)
    typer.echo(version)
    if notify is False:
        return
    from flows.events import DATA_VERSIONED, api_url, emit_data_versioned

    if notify is None and (version == previous or not api_url()):
        if api_url():
            typer.echo(f"data version unchanged: no {DATA_VERSIONED} event", err=True)
        return
    emit_data_versioned(root, target, version, previous)
    typer.echo(f"sent {DATA_VERSIONED} ({previous or 'none'} -> {version}) to {api_url()}", err=True)


# ------------------------------------------------------------------ params

@params_app.command("show")
@user_errors
def params_show(preset: Optional[str] = typer.Option(None, help="a preset instead of the params file"),
                params: Path = PARAMS):
    """Print the resolved parameters."""
    from stepvideo.config import dump_params

    typer.echo(dump_params(_params(params, preset)))


@params_app.command("write")
@user_errors
def params_write(preset: str = typer.Option(..., help="demo | small | step-video-t2v"),
                 out: Path = typer.Option(Path("params.yaml"), help="file to write")):
    """Write a preset in full as a params file."""
    from stepvideo.config import dump_params, preset as get_preset

    out.write_text(dump_params(get_preset(preset)))
    typer.echo(f"wrote {out}")


# ------------------------------------------------------------------ stages and flow

@app.command("stage")
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

    p = _params(params)
    quiet_library_logs()
    try:
        result = STAGES[name](p, _root())
    except ValidationFailed as e:
        typer.secho(f"validation failed: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(result.get("summary") or json.dumps({k: v for k, v in result.items()}, indent=2, default=str))


def quiet_library_logs() -> None:
    """INFO chatter of libraries that says nothing to a user of the pipeline (MLflow creating its sqlite
    tables, Great Expectations' temporary docs folder); their warnings and errors still show."""
    import logging

    for name in ("mlflow.store.db.utils", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
    root = _root()
    prefect_env(root)
    quiet_library_logs()
    from flows.cascade import cascade

    result = cascade(root=str(root), params_file=str(params), preset=preset, source=source,
                     videos=str(videos) if videos else None, captions=str(captions) if captions else None, push=push)
    typer.echo("stage              time  result")
    for line in result["report"]:
        typer.echo(line)
    typer.echo(f"flow done in {sum(result['seconds'].values()):.0f} s of stages; MLflow run {result['run_id']} "
               f"(make mlflow-ui); samples under outputs/dit/*/samples/")


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
    root = _root()
    prefect_env(root)
    quiet_library_logs()
    from flows.retrain import retrain

    state = retrain(root=str(root), params_file=str(params), source=source, push=push, force=force,
                    reason="manual", return_state=True)
    typer.echo(f"retrain: {state.message}")
    if not state.is_completed():
        raise typer.Exit(1)


# ------------------------------------------------------------------ compat

@compat_app.command("verify")
@user_errors
def compat_verify(reference: Path = typer.Argument(..., help="an official golden .safetensors (JSON beside it)")):
    """Load official weights into our module, run the reference inputs, compare outputs."""
    from stepvideo.compat.verify import verify

    kind, diffs = verify(reference)
    ok = True
    typer.echo(f"{reference.name} ({kind})")
    for name, (diff, tol) in diffs.items():
        passed = diff <= tol
        ok &= passed
        typer.echo(f"  {name:46s} max|diff| {diff:.3e}  tol {tol:.0e}  {'ok' if passed else 'FAIL'}")
    if not ok:
        typer.secho("parity FAILED", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo("parity ok")


# ------------------------------------------------------------------ generate

@app.command("generate")
@user_errors
def generate_cmd(
    prompt: str = typer.Argument(..., help="the text (English or Chinese)"),
    out: Path = typer.Option(Path("video.mp4"), help="output mp4"),
    model: Optional[str] = typer.Option(None, help="a pipeline folder or MLflow URI (models:/NAME@ALIAS); omitted: "
                                                   "the registry's champion, else the stepvideo-tiny release"),
    negative_prompt: str = typer.Option("", help="text for the unconditional branch of CFG"),
    seed: int = typer.Option(0, help="noise seed"),
    steps: Optional[int] = typer.Option(None, help="Euler steps [pipeline default: 50]"),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="classifier-free guidance scale [default: 9]"),
    shift: Optional[float] = typer.Option(None, help="time shift [default: 13]"),
    frames: int = typer.Option(17, help="1 or a multiple of 17"),
    height: int = typer.Option(64, help="multiple of 16"),
    width: int = typer.Option(64, help="multiple of 16"),
    fps: int = typer.Option(8, help="frames per second of the mp4"),
    gif: bool = typer.Option(False, help="also write a GIF beside the mp4"),
    vae_tile: Optional[int] = typer.Option(None, help="decode in spatial tiles of this many pixels (multiple of 16)"),
    vae_tile_mode: str = typer.Option("exact", help="exact (equals untiled; latents stay in host memory) | blend"),
):
    """Sample a video from text and write it as mp4 (and optionally GIF)."""
    from tqdm import tqdm

    from stepvideo.pipelines.t2v import T2VPipeline, save_video
    from stepvideo.tracking import resolve_model

    if model is None:
        from stepvideo.release import default_model

        model, why = default_model()
        typer.echo(f"no --model: using {why} ({model})", err=True)
    pipe = T2VPipeline.from_pretrained(resolve_model(model))
    bar = tqdm(desc="sampling", unit="step")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    video = pipe.generate(prompt, negative_prompt=negative_prompt, num_frames=frames, height=height, width=width,
                          steps=steps, cfg_scale=cfg, shift=shift, seed=seed, progress=progress,
                          vae_tile_size=vae_tile, vae_tile_mode=vae_tile_mode)
    bar.close()
    path = save_video(video[0], out, fps=fps, gif=gif)
    typer.echo(f"wrote {path}")


# ------------------------------------------------------------------ release

@release_app.command("build")
@user_errors
def release_build(
    out: Optional[Path] = typer.Option(None, help="release folder [default: release/stepvideo-tiny in the package]"),
    preset: Optional[str] = typer.Option(None, help="the preset the cascade ran (instead of the params file)"),
    params: Path = PARAMS,
    vae_items: int = typer.Option(100, help="held-out media for the VAE figures"),
):
    """Make the release folder from this project's cascade outputs (bundle, benchmark, VAE) in bf16."""
    from stepvideo.release import RELEASE_DIR, build_release

    info = build_release(_root(), _params(params, preset), out or RELEASE_DIR, vae_items=vae_items)
    b = info["benchmark"]
    typer.echo(f"wrote {out or RELEASE_DIR}: {info['bytes'] / 2**20:.1f} MiB; benchmark overall "
               f"{100 * (b.get('overall') or 0):.1f}%, VAE {info['vae']['psnr']:.2f} dB / SSIM {info['vae']['ssim']:.3f}")


# ------------------------------------------------------------------ dpo

@dpo_app.command("candidates")
@user_errors
def dpo_candidates(
    out: Path = typer.Option(Path("labels/candidates"), help="candidates folder (resumes when it exists)"),
    model: Optional[str] = typer.Option(None, help="a bundle folder or models:/ URI [default: the project's SFT "
                                                   "DiT with its VAE and text encoders]"),
    per_prompt: Optional[int] = typer.Option(None, help="videos per prompt [params: dpo.candidates_per_prompt]"),
    params: Path = PARAMS,
):
    """Generate N videos per prompt (training captions + benchmark-style prompts, never benchmark
    prompts) with their seeds and latents, for `stepvideo label serve` and the dpo stage."""
    from stepvideo.stages.dpo import make_candidates

    p = _params(params)
    if per_prompt is not None:
        p.dpo.candidates_per_prompt = per_prompt
    rows = make_candidates(p, _root(), out, model)
    typer.echo(f"{out}: {len(rows)} candidates for {len({(r['prompt_id'], r['lang']) for r in rows})} prompts; "
               f"label them with: stepvideo label serve --candidates {out}")


# ------------------------------------------------------------------ eval

def _print_accuracy(summary: dict) -> None:
    from stepvideo.evaluation.checks import CATEGORIES

    def pct(v):  # noqa: E306
        return "   n/a" if v is None else f"{100 * v:5.1f}%"
    chance = (summary.get("chance") or {}).get("categories") or {}
    for cat in CATEGORIES:
        n = summary.get("checks", {}).get(cat, 0)
        vs = f"  chance {pct(chance.get(cat))}" if chance else ""
        typer.echo(f"  {cat:<12} {pct(summary['categories'].get(cat))}  ({n} checks){vs}")
    langs = "  ".join(f"{k} {pct(v)}" for k, v in summary.get("languages", {}).items())
    typer.echo(f"  overall      {pct(summary.get('overall'))}   {langs}   consistency {pct(summary.get('consistency'))}")


@eval_app.command("score")
@user_errors
def eval_score(
    manifest: Path = typer.Argument(..., help="a manifest.jsonl whose rows carry ground-truth 'attributes'"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write {overall, categories, languages} here"),
    split: Optional[str] = typer.Option(None, help="only rows of this split (train | heldout)"),
    include_degraded: bool = typer.Option(False, help="also score rows marked degraded (their captions may not match)"),
    max_items: Optional[int] = typer.Option(None, help="score at most this many media files"),
    vae: Optional[str] = typer.Option(None, help="a VAE folder or MLflow URI: score the clips after a VAE round trip"),
):
    """Score existing clips against their manifest's ground-truth attributes (per-category accuracy)."""
    from stepvideo.evaluation.runner import score_manifest, vae_roundtrip, write_json

    transform = None
    if vae is not None:
        from stepvideo.models.vae import VideoVAE
        from stepvideo.tracking import resolve_model

        transform = vae_roundtrip(VideoVAE.from_pretrained(resolve_model(vae)).eval())
    result = score_manifest(manifest, split=split, include_degraded=include_degraded, max_items=max_items,
                            transform=transform)
    summary = result["summary"]
    typer.echo(f"{manifest}: {summary['videos']} rows scored ({result['skipped_degraded']} degraded rows skipped)")
    _print_accuracy(summary)
    if json_out is not None:
        write_json(json_out, {"overall": summary["overall"], "categories": summary["categories"],
                              "languages": summary["languages"], "consistency": summary["consistency"],
                              "checks": summary["checks"], "videos": summary["videos"], "manifest": str(manifest),
                              "vae": vae})
        typer.echo(f"wrote {json_out}")


@eval_app.command("run")
@user_errors
def eval_run(
    model: Optional[str] = typer.Option(None, help="a pipeline folder or MLflow URI (models:/stepvideo-t2v@candidate); "
                                                   "omitted: the registry's champion, else the stepvideo-tiny release"),
    prompts: Optional[Path] = typer.Option(None, help="benchmark .jsonl (default: the embedded benchmark) or an "
                                                      "official-format .txt (one prompt per line; needs --categories)"),
    categories: Optional[Path] = typer.Option(None, help="official format: JSON/YAML {category: [first, last]} lines"),
    seeds: int = typer.Option(1, help="seeds per prompt (0..N-1; the same seed in both languages)"),
    out: Path = typer.Option(Path("outputs/eval"), help="output folder: videos/, results.json, report.html"),
    baseline: Optional[str] = typer.Option(None, help="another model (folder/URI), or an earlier eval folder with "
                                                      "results.json, shown beside the candidate"),
    metric: Optional[list[str]] = typer.Option(None, help="a user metric 'module:function' or 'file.py:function' "
                                                          "(repeatable): fn(frames, prompt) -> {name: float}"),
    batch_size: int = typer.Option(8, help="prompts generated per batch"),
    frames: int = typer.Option(17, help="1 or a multiple of 17"),
    height: int = typer.Option(64, help="multiple of 16"),
    width: int = typer.Option(64, help="multiple of 16"),
    steps: Optional[int] = typer.Option(None, help="Euler steps [the pipeline's default]"),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="guidance scale [the pipeline's default]"),
    shift: Optional[float] = typer.Option(None, help="time shift [the pipeline's default]"),
    fps: int = typer.Option(8, help="frames per second of the written mp4s"),
    log: bool = typer.Option(True, help="record the evaluation as an MLflow run (and tag a models:/ version)"),
    max_prompts: int = typer.Option(0, help="0: all; else N prompts spread over the categories (evaluate.max_prompts)"),
):
    """Generate every prompt in both languages with fixed seeds, score them, write the videos, a
    JSON of all scores and the HTML report."""
    from stepvideo.evaluation.runner import balanced_subset, evaluate_model, load_prompts

    if model is None:
        from stepvideo.release import default_model

        model, why = default_model()
        typer.echo(f"no --model: using {why} ({model})", err=True)
    prompt_list = balanced_subset(load_prompts(prompts, categories), max_prompts)
    results = evaluate_model(model, prompt_list, out, seeds=seeds, baseline=baseline, metric_specs=metric or [],
                             batch_size=batch_size, frames=frames, height=height, width=width, steps=steps,
                             cfg=cfg, shift=shift, fps=fps)
    if not results["gallery"]:
        _print_accuracy(results["summary"])
    typer.echo(f"wrote {out / 'results.json'} and {out / 'report.html'} ({results['summary']['videos']} videos)")
    if log:
        _log_eval_run(model, results, out)


def _log_eval_run(model: str, results: dict, out: Path) -> None:
    """The evaluation as an MLflow run (metrics, results.json, report.html); a registry model's
    version is tagged with its scores."""
    from stepvideo import tracking
    from stepvideo.evaluation.runner import summary_metrics

    metrics = summary_metrics(results["summary"], "eval_")
    with tracking.run("eval_run", params={"evaluate": {**results["settings"], "model": model}},
                      tags={"evaluated": model}) as active:
        tracking.log_metrics({**metrics, "eval_videos": results["summary"]["videos"]})
        tracking.log_artifact(out / "report.html", "eval")
        tracking.log_artifact(out / "results.json", "eval")
    if model.startswith("models:/") and metrics:
        mv = tracking.model_version(model)
        tracking.tag_model_version(mv.name, mv.version, {k: f"{v:.4f}" for k, v in metrics.items()})
        typer.echo(f"tagged {mv.name}/{mv.version} with its scores")
    typer.echo(f"logged to MLflow run {active.info.run_id}")


# ------------------------------------------------------------------ model

@model_app.command("info")
@user_errors
def model_info_cmd(
    preset: str = typer.Option("step-video-t2v", help="DiT preset: step-video-t2v | small | demo"),
    frames: int = typer.Option(204, help="video frames (1 or a multiple of 17)"),
    height: int = typer.Option(544, help="video height"),
    width: int = typer.Option(992, help="video width"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
):
    """Parameter count (built on the meta device), FLOPs per training step, training memory."""
    from stepvideo.models.dit import DiTConfig, model_info

    info = model_info(DiTConfig.preset(preset), frames=frames, height=height, width=width)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    gib = info["memory_gib"]
    typer.echo(f"DiT preset {preset}: {info['num_parameters']:,} parameters ({info['num_parameters'] / 1e9:.2f} B), "
               f"hidden {info['hidden_size']}")
    typer.echo(f"video {frames}x{height}x{width} -> latent {info['latent_shape']} -> {info['tokens']:,} tokens "
               f"(+{info['text_tokens']} text)")
    typer.echo(f"FLOPs: forward {info['flops_forward']:.3e}; training step {info['flops_per_step']:.3e} "
               f"({info['flops_per_step_with_checkpointing']:.3e} with per-block checkpointing)")
    for k, v in info["flops_forward_breakdown"].items():
        typer.echo(f"  forward {k:24s} {v:.3e}")
    typer.echo("training memory (activations excluded): " + ", ".join(f"{k} {v:.1f} GiB" for k, v in gib.items()))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
