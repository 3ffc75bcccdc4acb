"""The evaluation stage (after SFT): the benchmark on the SFT candidate, and the VAE's content check
(the scorer on held-out ground-truth clips before and after a VAE round trip, run by train_vae).

Both use `stepvideo.evaluation`, the one scorer that also serves as the DPO reward and the
promotion input."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from stepvideo import tracking
from stepvideo.config import Params
from stepvideo.stage_utils import (OUTPUTS, _data_version, _device, _load_encoders, _require, model_hash,
                                   registered_version)
from stepvideo.stages_dit import DIT_REGISTERED

EVALUATE_FROM = "sft"  # the DiT stage the benchmark judges (Video-DPO, a later stage, will follow it)


def vae_content_metrics(vae_dir: Path, clean_manifest: Path, max_items: int, progress: bool = False) -> dict:
    """The scorer's accuracy on held-out ground-truth clips as they are (`scorer_gt_*`) and after a
    round trip through the VAE (`scorer_vae_*`): how much of the content the VAE keeps."""
    from stepvideo.evaluation.runner import score_manifest, summary_metrics, vae_roundtrip
    from stepvideo.models.vae import VideoVAE

    from stepvideo.data.manifest import read_manifest

    if max_items <= 0:
        return {}
    if not any(r.get("attributes") for r in read_manifest(clean_manifest) if r.get("split") == "heldout"):
        print(f"train_vae: {clean_manifest} has no held-out rows with ground-truth attributes (not the embedded "
              "dataset): the scorer's content check is skipped", file=sys.stderr)
        return {}
    vae = VideoVAE.from_pretrained(vae_dir).eval()
    gt = score_manifest(clean_manifest, split="heldout", max_items=max_items, progress=progress)
    rt = score_manifest(clean_manifest, split="heldout", max_items=max_items, transform=vae_roundtrip(vae),
                        progress=progress)
    return {**summary_metrics(gt["summary"], "scorer_gt_"), **summary_metrics(rt["summary"], "scorer_vae_")}


def _loss_curves(root: Path) -> dict[str, list[list[float]]]:
    from stepvideo.stages_dit import DIT_PREVIOUS

    curves = {}
    for name in DIT_PREVIOUS:
        f = root / OUTPUTS / "dit" / name / "metrics.json"
        if f.is_file():
            curve = json.loads(f.read_text()).get("loss_curve") or []
            curves[name] = [[i + 1, float(v)] for i, v in enumerate(curve)]
    return curves


def stage_evaluate(params: Params, root: Path, parent_run_id: str | None = None, progress: bool = True) -> dict[str, Any]:
    """The benchmark on the `EVALUATE_FROM` DiT (with the trained VAE and the text encoders): every
    prompt in English and Chinese with fixed seeds, scored from pixels; writes outputs/eval/ (videos/,
    results.json, report.html), logs every metric and the report to a nested MLflow run, and tags the
    registered DiT version with its scores."""
    import shutil

    from stepvideo.diffusion.sampler import SamplerConfig
    from stepvideo.evaluation.runner import load_prompts, run_benchmark, summary_metrics
    from stepvideo.generation import T2VPipeline
    from stepvideo.models.io import replace_folder, temp_folder_for

    ep = params.evaluate
    dit_dir = _require(root / OUTPUTS / "dit" / EVALUATE_FROM, EVALUATE_FROM)
    vae_dir = _require(root / OUTPUTS / "vae", "train_vae")
    prompts = load_prompts(ep.prompts or None)
    if ep.max_prompts > 0:
        prompts = prompts[:ep.max_prompts]
    height, width = ep.height or params.data.height, ep.width or params.data.width
    weights = model_hash(dit_dir)
    registered = registered_version(DIT_REGISTERED[EVALUATE_FROM], weights)
    lineage = {"evaluated": registered or f"folder:{weights}", "dit_weights": weights,
               "data_version": _data_version(params, root), "params_hash": params.section_hash("evaluate"),
               "git_commit": tracking.git_commit(root)}
    out = root / OUTPUTS / "eval"
    device = _device()
    with tracking.run("evaluate", experiment=params.tracking.experiment, params={"evaluate": vars(ep)},
                      tags=lineage, parent_run_id=parent_run_id):
        pipe = T2VPipeline.from_components(dit_dir, vae_dir, _load_encoders(params, root), device=device,
                                           dtype="bfloat16" if device == "cuda" else None,
                                           sampler=SamplerConfig(num_steps=ep.steps, shift=ep.shift, cfg_scale=ep.cfg))
        tmp = temp_folder_for(out)
        try:
            t0 = time.perf_counter()
            results = run_benchmark(pipe, prompts, tmp, model=lineage["evaluated"], seeds=ep.seeds,
                                    batch_size=ep.batch_size, frames=ep.frames, height=height, width=width,
                                    steps=ep.steps, cfg=ep.cfg, shift=ep.shift, fps=params.data.fps,
                                    loss_curves=_loss_curves(root), progress=progress,
                                    git_commit=lineage["git_commit"])
            seconds = time.perf_counter() - t0
            replace_folder(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        metrics = {**summary_metrics(results["summary"], "eval_"), "eval_seconds": seconds,
                   "eval_videos": results["summary"]["videos"]}
        tracking.log_metrics(metrics)
        tracking.log_artifact(out / "report.html", "eval")
        tracking.log_artifact(out / "results.json", "eval")
        if registered:
            name, version = registered.split("/")
            tracking.tag_model_version(name, version, {k: f"{v:.4f}" for k, v in metrics.items()
                                                       if k.startswith("eval_") and k != "eval_seconds"})
    overall = results["summary"]["overall"]
    print(f"evaluate: {results['summary']['videos']} videos, overall accuracy "
          f"{'n/a' if overall is None else f'{overall:.3f}'} ({seconds:.0f} s); report: {out / 'report.html'}",
          file=sys.stderr)
    return {"out": str(out), "report": str(out / "report.html"), "metrics": metrics, "evaluated": lineage["evaluated"]}
