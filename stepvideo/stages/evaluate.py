"""The evaluation stage (after Video-DPO): the benchmark on the cascade's final DiT beside its SFT
parent, with the DPO-vs-SFT win rate; and the VAE's content check (the scorer on held-out
ground-truth clips before and after a VAE round trip, run by train_vae).

Both use `stepvideo.evaluation`, the one scorer that also serves as the DPO reward and the
promotion input."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from stepvideo import registry, tracking
from stepvideo.config import Params
from stepvideo.stages.common import (OUTPUTS, default_device, load_encoders, model_hash, project_data_version,
                                     require_output, vae_folder)
from stepvideo.registry import registered_version
from stepvideo.stages.dit import DIT_PREVIOUS

EVALUATE_FROM = "dpo"  # the cascade's final DiT (the SFT weights when dpo.enabled is false); SFT is its baseline
# with `flow.pipeline: finetune`: the finetune stage's DiT (outputs/finetune/dit), judged beside its base

logger = logging.getLogger(__name__)


def _loss_curves(root: Path) -> dict[str, list[list[float]]]:
    curves = {}
    for name in (*DIT_PREVIOUS, "finetune"):
        f = root / OUTPUTS / ("finetune" if name == "finetune" else f"dit/{name}") / "metrics.json"
        if f.is_file():
            curve = json.loads(f.read_text()).get("loss_curve") or []
            curves[name] = [[i + 1, float(v)] for i, v in enumerate(curve)]
    return curves


def _dpo_ran(root: Path) -> bool:
    f = root / OUTPUTS / "dit" / "dpo" / "lineage.json"
    return f.is_file() and not json.loads(f.read_text()).get("skipped")


def judged_models(params: Params, root: Path) -> list[tuple[str, Path, str | None]]:
    """(name, DiT folder, registered model or None) of what `evaluate` judges: the baseline first when
    there is one, the candidate last. The cascade: SFT then DPO (SFT alone when DPO was off); the
    `finetune` pipeline: the base model then the fine-tuned one."""
    if params.flow.pipeline == "finetune":
        from stepvideo.stages.finetune import OUT, finetune_base

        tuned = require_output(root / OUTPUTS / OUT / "dit", "finetune")
        base = finetune_base(params, root)
        return [("base", base["dit"], None), ("finetune", tuned, registry.FINETUNE)]
    final = require_output(root / OUTPUTS / "dit" / EVALUATE_FROM, EVALUATE_FROM)
    if _dpo_ran(root):
        return [("sft", root / OUTPUTS / "dit" / "sft", registry.DIT_STAGES["sft"]), ("dpo", final, registry.DPO)]
    return [("sft", final, registry.DIT_STAGES["sft"])]


def preference_figures(params: Params, results: dict, baseline: dict, curves: dict | None = None) -> dict:
    """The candidate's videos against the baseline's (same ids: same prompt, language and seed) by
    the DPO reward: win rate with its 95% Wilson interval, the same over the videos whose share of
    passed checks differs (`win_rate_by_checks`: where content, not the artifact scores, decides),
    mean reward and artifact scores of each, and each artifact score's paired change (DPO - SFT: mean
    with its bootstrap interval, how many videos went up / down / stayed; flicker over the videos
    where both show a tracked object)."""
    from stepvideo.preference.pairs import RewardWeights, paired_difference, reward, win_rate

    dp = params.dpo
    weights = RewardWeights(dp.reward_checks, dp.reward_flicker, dp.reward_color_noise)

    def value(v: dict) -> float | None:
        checks = v.get("checks") or []
        if not checks:
            return None
        return reward({"passed_share": sum(c["pass"] for c in checks) / len(checks), "flicker": v["flicker"],
                       "color_noise": v["color_noise"]}, weights)

    def passed(v: dict) -> float:
        return sum(c["pass"] for c in v["checks"]) / len(v["checks"])

    base = {v["id"]: v for v in baseline["videos"]}
    a, b, ca, cb = [], [], [], []
    artifacts: dict[str, tuple[list, list]] = {"flicker": ([], []), "color_noise": ([], [])}
    for v in results["videos"]:
        if v["id"] in base and value(v) is not None and value(base[v["id"]]) is not None:
            a.append(value(v))
            b.append(value(base[v["id"]]))
            for k, (xs, ys) in artifacts.items():
                if v.get(k) is not None and base[v["id"]].get(k) is not None:  # flicker: both show an object
                    xs.append(v[k])
                    ys.append(base[v["id"]][k])
            if passed(v) != passed(base[v["id"]]):  # the checks decide, not the artifact scores
                ca.append(passed(v))
                cb.append(passed(base[v["id"]]))
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    s, bs = results["summary"], baseline["summary"]
    return {"win_rate": win_rate(a, b), "win_rate_by_checks": win_rate(ca, cb),
            "reward_candidate": mean(a), "reward_baseline": mean(b),
            "flicker_candidate": s.get("flicker"), "flicker_baseline": bs.get("flicker"),
            "flicker_videos_candidate": s.get("flicker_videos"), "flicker_videos_baseline": bs.get("flicker_videos"),
            "color_noise_candidate": s.get("color_noise"), "color_noise_baseline": bs.get("color_noise"),
            "flicker_change": paired_difference(*artifacts["flicker"]),
            "color_noise_change": paired_difference(*artifacts["color_noise"]),
            "weights": weights.to_dict(), "curves": curves or {}}


def stage_evaluate(params: Params, root: Path, parent_run_id: str | None = None, progress: bool = True) -> dict[str, Any]:
    """The benchmark on the cascade's final DiT (`outputs/dit/dpo`: Video-DPO's model, or the SFT
    weights when `dpo.enabled` is false) with the trained VAE and the text encoders: every prompt in
    English and Chinese with fixed seeds, scored from pixels. When DPO ran, the SFT model is judged
    the same way first (outputs/eval/sft) and shown beside it, with the DPO-vs-SFT win rate by the
    reward. With `flow.pipeline: finetune` the pair is the base model (outputs/eval/base, metrics
    `eval_base_*`) and the finetune stage's DiT (`eval_*`, `finetune_win_rate`), both with the
    latent cache's VAE (:func:`judged_models`). Writes outputs/eval/ (videos/, results.json,
    report.html), logs every metric and the report to a nested MLflow run, and tags each registered
    DiT version with its scores."""

    from stepvideo.evaluation.runner import balanced_subset, load_prompts, run_benchmark, summary_metrics
    from stepvideo.fileio import atomic_folder

    ep = params.evaluate
    judged = judged_models(params, root)
    final, candidate = judged[-1][1], judged[-1][0]
    with_baseline = len(judged) == 2  # a baseline to judge beside the candidate (SFT, or the finetune's base)
    baseline = judged[0][0] if with_baseline else None
    vae_dir = require_output(vae_folder(params, root), "train_vae")
    prompts = load_prompts(ep.prompts or None)
    prompts = balanced_subset(prompts, ep.max_prompts)
    height, width = ep.height or params.data.height, ep.width or params.data.width
    weights = {name: model_hash(folder) for name, folder, _ in judged}
    registered = {name: registered_version(reg, weights[name]) if reg else None for name, _, reg in judged}
    evaluated = {name: registered[name] or f"folder:{weights[name]}" for name in weights}
    if params.flow.pipeline == "finetune":  # the base as the finetune stage recorded it (a models:/ URI)
        from stepvideo.stages.finetune import finetune_base

        evaluated["base"] = finetune_base(params, root)["version"]
    lineage = {"evaluated": evaluated[candidate], "dit_weights": weights[candidate],
               "data_version": project_data_version(params, root), "params_hash": params.section_hash("evaluate"),
               "git_commit": tracking.git_commit(root)}
    if with_baseline:
        lineage["baseline"] = evaluated[baseline]
    out = root / OUTPUTS / "eval"
    encoders = load_encoders(params, root)
    settings = dict(seeds=ep.seeds, batch_size=ep.batch_size, frames=ep.frames, height=height, width=width,
                    steps=ep.steps, cfg=ep.cfg, shift=ep.shift, fps=params.data.fps, progress=progress,
                    git_commit=lineage["git_commit"])
    with tracking.run("evaluate", experiment=params.tracking.experiment, params={"evaluate": vars(ep)},
                      tags=lineage, parent_run_id=parent_run_id):
        with atomic_folder(out) as tmp:
            t0 = time.perf_counter()
            base = None
            if with_baseline:
                base_results = run_benchmark(_pipe(judged[0][1], vae_dir, encoders, ep), prompts, tmp / baseline,
                                            model=evaluated[baseline], loss_curves=_loss_curves(root), **settings)
                base = {k: base_results[k] for k in ("model", "summary", "videos", "settings")}
                base["videos"] = [{**v, "video": f"{baseline}/{v['video']}"} for v in base["videos"]]
            curves = _dpo_curves(final) if candidate == "dpo" else None
            extra = (lambda r: {"preference": preference_figures(params, r, base, curves)}) if with_baseline else None
            results = run_benchmark(_pipe(final, vae_dir, encoders, ep), prompts, tmp, model=lineage["evaluated"],
                                    baseline=base, loss_curves=_loss_curves(root), extra=extra, **settings)
            seconds = time.perf_counter() - t0
        metrics = {**summary_metrics(results["summary"], "eval_"), "eval_seconds": seconds,
                   "eval_videos": results["summary"]["videos"]}
        if with_baseline:  # metric names: eval_sft_* / dpo_* (the cascade), eval_base_* / finetune_* (finetune)
            metrics.update(summary_metrics(base["summary"], f"eval_{baseline}_"))
            pref = results["preference"]
            metrics.update({f"{candidate}_{k}": float(v) for k, v in pref["win_rate"].items()})
            metrics.update({f"{candidate}_checks_{k}": float(v) for k, v in pref["win_rate_by_checks"].items()})
            metrics.update({f"{candidate}_{k}": float(pref[k]) for k in ("reward_candidate", "reward_baseline")
                            if pref[k] is not None})
            for k in ("flicker", "color_noise"):  # candidate - baseline per video: mean, interval, up/down counts
                metrics.update({f"{candidate}_{k}_change_{m}": float(v) for m, v in pref[f"{k}_change"].items()})
        tracking.log_metrics(metrics)
        tracking.log_artifact(out / "report.html", "eval")
        tracking.log_artifact(out / "results.json", "eval")
        summaries = {candidate: results["summary"], **({baseline: base["summary"]} if with_baseline else {})}
        for name, summary in summaries.items():  # each registered DiT version gets its own scores
            if registered[name]:
                reg, version = registered[name].split("/")
                tracking.tag_model_version(reg, version, {k: f"{v:.4f}"
                                                          for k, v in summary_metrics(summary, "eval_").items()})
    overall = results["summary"]["overall"]
    line = (f"evaluate: {results['summary']['videos']} videos, overall accuracy "
            f"{'n/a' if overall is None else f'{overall:.3f}'}")
    if with_baseline:
        w = results["preference"]["win_rate"]
        line += (f"; {baseline} {base['summary']['overall']:.3f}; {candidate} beats {baseline} by the reward in "
                 f"{w['win_rate']:.1%} (95% CI {w['ci_low']:.1%}-{w['ci_high']:.1%})")
    logger.info(f"{line} ({seconds:.0f} s); report: {out / 'report.html'}")
    return {"out": str(out), "report": str(out / "report.html"), "metrics": metrics, "evaluated": lineage["evaluated"]}


def _pipe(dit_dir: Path, vae_dir: Path, encoders: dict, ep: Any) -> Any:
    from stepvideo.diffusion.sampler import SamplerConfig
    from stepvideo.pipelines.t2v import T2VPipeline

    device = default_device()
    return T2VPipeline.from_components(dit_dir, vae_dir, encoders, device=device,
                                       dtype="bfloat16" if device == "cuda" else None,
                                       sampler=SamplerConfig(num_steps=ep.steps, shift=ep.shift, cfg_scale=ep.cfg))


def _dpo_curves(folder: Path) -> dict[str, list[float]]:
    f = folder / "metrics.json"
    if not f.is_file():
        return {}
    rounds = json.loads(f.read_text()).get("rounds") or []
    names = {"loss": "loss", "implicit_acc": "implicit reward accuracy", "reward_margin": "reward margin",
             "kl_proxy": "KL proxy"}
    return {label: [x for r in rounds for x in (r.get("curves") or {}).get(k, [])] for k, label in names.items()}
