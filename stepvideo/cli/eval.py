"""`stepvideo eval ...`: score clips, run the benchmark, write the report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stepvideo.cli._common import user_errors

eval_app = typer.Typer(help="Evaluation: score clips, run the benchmark, write the report.", no_args_is_help=True)


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
