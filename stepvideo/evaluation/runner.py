"""Running the benchmark: generate every prompt in both languages with fixed seeds, score, report.

- `score_manifest` judges clips that already exist against their manifest's ground-truth attributes
  (the scorer's own accuracy on real clips; with `transform` a VAE round trip first);
- `run_benchmark` generates the embedded benchmark (or any list of prompts) with a pipeline, scores
  every video, writes `videos/`, `results.json` and `report.html` under `out`;
- official-format prompts (no attributes, so no judges) get a per-category gallery and the user
  metrics.

Every video of one prompt pair uses the same seed in English and in Chinese, so bilingual consistency
compares like with like.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from stepvideo.evaluation.scorer import score_frames, summarize
from stepvideo.evaluation.segment import analyse
from stepvideo.fileio import atomic_write_text
from stepvideo.errors import InputError

log = logging.getLogger(__name__)

Frames = np.ndarray
Transform = Callable[[Frames], Frames]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (temp name, then rename)."""
    return atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True, default=float) + "\n")


def summary_metrics(summary: dict, prefix: str) -> dict[str, float]:
    """Flat metrics of a scorer summary (for MLflow): {prefix}overall, {prefix}<category>,
    {prefix}lang_<lang>, {prefix}consistency, {prefix}flicker (+ {prefix}flicker_videos: over how
    many), {prefix}color_noise and, for a benchmark run, {prefix}chance_overall and
    {prefix}chance_<category>."""
    out = {f"{prefix}overall": summary.get("overall"), f"{prefix}consistency": summary.get("consistency"),
           f"{prefix}flicker": summary.get("flicker"), f"{prefix}flicker_videos": summary.get("flicker_videos"),
           f"{prefix}color_noise": summary.get("color_noise")}
    out.update({f"{prefix}{k}": v for k, v in (summary.get("categories") or {}).items()})
    out.update({f"{prefix}lang_{k}": v for k, v in (summary.get("languages") or {}).items()})
    out.update({f"{prefix}user_{k}": v for k, v in (summary.get("user_metrics") or {}).items()})
    chance = summary.get("chance") or {}
    out[f"{prefix}chance_overall"] = chance.get("overall")
    out.update({f"{prefix}chance_{k}": v for k, v in (chance.get("categories") or {}).items()})
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ------------------------------------------------------------------ ground-truth clips


def manifest_items(manifest: str | os.PathLike, split: str | None = None, include_degraded: bool = False,
                   max_items: int | None = None) -> tuple[list[dict], int]:
    """Rows of a manifest that carry ground-truth attributes: ([row, ...], rows skipped as degraded).
    Raises ValueError naming the row when an attribute record is not valid JSON or not a record of
    the embedded domain."""
    from stepvideo.data.manifest import read_manifest
    from stepvideo.data.synth import check_attributes

    rows, skipped = [], 0
    for n, row in enumerate(read_manifest(manifest), 1):
        if split and row.get("split") != split:
            continue
        if not include_degraded and row.get("degradation", "none") != "none":
            skipped += 1
            continue
        raw = row.get("attributes")
        if not raw:
            raise InputError(f"{manifest}: row {n} ({row.get('id')}) has no ground-truth 'attributes' to score against")
        try:
            attrs = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError as e:
            raise InputError(f"{manifest}: row {n} ({row.get('id')}): attributes are not valid JSON ({e.msg})") from e
        problem = check_attributes(attrs)
        if problem:
            raise InputError(f"{manifest}: row {n} ({row.get('id')}): {problem}")
        rows.append({**row, "attributes": attrs})
    if max_items is not None:  # keep whole clips: both language rows of the first max_items media
        keep = list(dict.fromkeys(r["path"] for r in rows))[:max_items]
        rows = [r for r in rows if r["path"] in set(keep)]
    return rows, skipped


def score_manifest(manifest: str | os.PathLike, *, split: str | None = None, include_degraded: bool = False,
                   max_items: int | None = None, transform: Transform | None = None,
                   progress: bool = True) -> dict:
    """Score a manifest's clips against their own attributes: {"summary", "videos", "skipped"}.
    Each media file is judged once (its language rows share the verdicts); `transform` (e.g. a VAE
    round trip) is applied to the frames first."""
    from stepvideo.data.manifest import media_path
    from stepvideo.data.video_io import read_video

    rows, skipped = manifest_items(manifest, split, include_degraded, max_items)
    cache: dict[str, dict] = {}
    videos = []
    for row in tqdm(rows, desc="score", unit="row", disable=not progress):
        key = row["path"]
        if key not in cache:
            frames = read_video(media_path(manifest, row))
            if transform is not None:
                frames = transform(frames)
            cache[key] = score_frames(frames, row["attributes"])
        videos.append({"id": row.get("id"), "prompt_id": row.get("clip_id") or key, "lang": row.get("lang"),
                       "prompt": row.get("caption"), "seed": 0, "video": key, "category": None, **cache[key]})
    return {"summary": summarize(videos), "videos": videos, "skipped_degraded": skipped,
            "manifest": str(manifest)}


def vae_roundtrip(vae: Any, device: str = "cpu") -> Transform:
    """frames -> VAE encode (posterior mean) -> decode -> frames, for `score_manifest(transform=)`."""
    import torch

    from stepvideo.pipelines.t2v import frames_to_uint8
    from stepvideo.models.vae import frames_to_tensor

    def run(frames: Frames) -> Frames:
        t = len(frames)
        chunk = vae.frame_chunk
        pad = (-t) % chunk if t > 1 else 0
        x = np.concatenate([frames, np.repeat(frames[-1:], pad, 0)]) if pad else frames
        with torch.no_grad():
            z = vae.encode(frames_to_tensor(x).unsqueeze(0).to(device), sample=False)
            out = frames_to_uint8(vae.decode(z).float().cpu())[0]
        return out[:t]

    return run


# ------------------------------------------------------------------ generating


def vae_content_metrics(vae_dir: str | os.PathLike, clean_manifest: str | os.PathLike, max_items: int, progress: bool = False) -> dict:
    """The scorer's accuracy on held-out ground-truth clips as they are (`scorer_gt_*`) and after a
    round trip through the VAE (`scorer_vae_*`): how much of the content the VAE keeps."""
    from stepvideo.data.manifest import read_manifest
    from stepvideo.models.vae import VideoVAE

    if max_items <= 0:
        return {}
    if not any(r.get("attributes") for r in read_manifest(clean_manifest) if r.get("split") == "heldout"):
        log.warning("%s has no held-out rows with ground-truth attributes (not the embedded dataset): the "
                    "scorer's content check of the VAE is skipped", clean_manifest)
        return {}
    vae = VideoVAE.from_pretrained(vae_dir).eval()
    gt = score_manifest(clean_manifest, split="heldout", max_items=max_items, progress=progress)
    rt = score_manifest(clean_manifest, split="heldout", max_items=max_items, transform=vae_roundtrip(vae),
                        progress=progress)
    return {**summary_metrics(gt["summary"], "scorer_gt_"), **summary_metrics(rt["summary"], "scorer_vae_")}


def _pipeline_settings(pipe: Any, frames: int, height: int, width: int, steps: int | None, cfg: float | None,
                       shift: float | None, seeds: int, fps: int) -> dict:
    return {"frames": frames, "height": height, "width": width, "seeds": seeds, "fps": fps,
            "device": pipe.device.type, "dtype": str(pipe.dtype).removeprefix("torch."),
            "steps": steps if steps is not None else pipe.sampler.num_steps,
            "cfg": cfg if cfg is not None else pipe.sampler.cfg_scale,
            "shift": shift if shift is not None else pipe.sampler.shift}


def generation_jobs(prompts: Sequence[Any], seeds: int) -> list[dict]:
    """One job per (prompt, language, seed). `prompts`: BenchmarkPrompt objects (both languages,
    judged) or official-format dicts {"id", "category", "prompt", "lang"} (gallery only)."""
    jobs = []
    for p in prompts:
        for seed in range(seeds):
            if isinstance(p, dict):
                jobs.append({"id": f"{p['id']}-s{seed}", "prompt_id": p["id"], "category": p["category"],
                             "lang": p.get("lang"), "prompt": p["prompt"], "seed": seed, "attributes": None})
                continue
            for lang in ("en", "zh"):
                jobs.append({"id": f"{p.id}-{lang}-s{seed}", "prompt_id": p.id, "category": p.category, "lang": lang,
                             "prompt": getattr(p, lang), "seed": seed, "attributes": p.attributes})
    return jobs


def chance_attributes(jobs: Sequence[dict]) -> dict[str, dict]:
    """The chance baseline's prompt for each judged job: the attributes of the next prompt of the
    same category (cyclically, in benchmark order) in the same language and seed. Judging every
    video against a prompt it was not made for gives the accuracy of a model that ignores the text
    (`summary["chance"]`); {job id: attributes}."""
    groups: dict[tuple, list[dict]] = {}
    for job in jobs:
        if job["attributes"] is not None:
            groups.setdefault((job["category"], job["lang"], job["seed"]), []).append(job)
    out = {}
    for group in groups.values():
        for i, job in enumerate(group):
            if len(group) > 1:
                out[job["id"]] = group[(i + 1) % len(group)]["attributes"]
    return out


def chance_summary(rows: list[dict]) -> dict:
    """`summarize` of the chance rows, reduced to overall and per category."""
    if not rows:
        return {"overall": None, "categories": {}}
    full = summarize(rows)
    return {"overall": full["overall"], "categories": full["categories"]}


def run_benchmark(pipe: Any, prompts: Sequence[Any], out: str | os.PathLike, *, model: str = "", seeds: int = 1,
                  batch_size: int = 8, frames: int = 17, height: int = 64, width: int = 64,
                  steps: int | None = None, cfg: float | None = None, shift: float | None = None, fps: int = 8,
                  metrics: dict[str, Callable] | None = None, baseline: dict | None = None,
                  loss_curves: dict | None = None, progress: bool = True, git_commit: str = "",
                  extra: Callable[[dict], dict] | None = None) -> dict:
    """Generate, score and report; returns the results dict (also `out/results.json`; the page is
    `out/report.html`). `baseline`: another run's results (shown beside this one in the report).
    `extra(results)`: more top-level entries computed from the results before they are written
    (e.g. the DPO-vs-SFT preference figures)."""
    from stepvideo.evaluation.metrics import run_metrics
    from stepvideo.evaluation.report import write_report
    from stepvideo.pipelines.t2v import save_video

    if seeds < 1 or batch_size < 1:
        raise InputError(f"seeds and batch_size must be >= 1, got {seeds} and {batch_size}")
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    settings = _pipeline_settings(pipe, frames, height, width, steps, cfg, shift, seeds, fps)
    jobs = generation_jobs(prompts, seeds)
    others = chance_attributes(jobs)
    videos, chance = [], []
    bar = tqdm(total=len(jobs), desc="evaluate", unit="video", disable=not progress)
    for i in range(0, len(jobs), batch_size):
        batch = jobs[i:i + batch_size]
        clips = pipe.generate([j["prompt"] for j in batch], num_frames=frames, height=height, width=width,
                              steps=steps, cfg_scale=cfg, shift=shift, seed=[j["seed"] for j in batch])
        for job, clip in zip(batch, clips):
            rel = f"videos/{job['id']}.mp4"
            save_video(clip, out / rel, fps=fps)
            entry = {k: v for k, v in job.items() if k != "attributes"}
            entry["video"] = rel
            if job["attributes"] is not None:
                scene = analyse(clip)  # segmented once: judged against its prompt and its chance record
                entry.update(score_frames(clip, job["attributes"], scene=scene))
                if job["id"] in others:
                    chance.append({**{k: job[k] for k in ("id", "prompt_id", "lang", "seed")},
                                   **score_frames(clip, others[job["id"]], scene=scene)})
            else:
                entry.update(checks=[], passed=None)
            if metrics:
                entry["user_metrics"] = run_metrics(metrics, clip, job["prompt"])
            videos.append(entry)
        bar.update(len(batch))
    bar.close()
    judged = [v for v in videos if v["checks"]]
    summary = summarize(judged) if judged else {"overall": None, "categories": {}, "languages": {}, "videos": len(videos)}
    summary["videos"] = len(videos)
    if judged:
        summary["chance"] = chance_summary(chance)
    if metrics:
        names = sorted({k for v in videos for k in v.get("user_metrics", {})})
        summary["user_metrics"] = {k: float(np.mean([v["user_metrics"][k] for v in videos if k in v["user_metrics"]]))
                                   for k in names}
    results = {"format": 1, "model": model, "created": _now(), "git_commit": git_commit, "settings": settings,
               "summary": summary, "videos": videos, "gallery": not judged}
    if baseline:
        results["baseline"] = baseline
    if loss_curves:
        results["loss_curves"] = loss_curves
    if extra is not None:
        results.update(extra(results))
    write_json(out / "results.json", results)
    write_report(results, out)
    return results


# ------------------------------------------------------------------ from the command line


def load_prompts(prompts: str | os.PathLike | None, categories: str | os.PathLike | None = None) -> list:
    """The embedded benchmark (None), a benchmark-format .jsonl, or an official-format text file
    (one prompt per line) with its categories config."""
    from stepvideo.evaluation.official import load_official
    from stepvideo.evaluation.prompts import load_benchmark

    if prompts is None:
        if categories is not None:
            raise InputError("--categories goes with an official-format --prompts file")
        return load_benchmark()
    path = Path(prompts)
    if path.suffix.lower() == ".jsonl":
        if categories is not None:
            raise InputError(f"{path}: a benchmark .jsonl carries its categories; drop --categories")
        return load_benchmark(path)
    if categories is None:
        raise InputError(f"{path}: an official-format prompt file needs --categories (a JSON/YAML file of line ranges)")
    return load_official(path, categories)


def balanced_subset(prompts: Sequence[Any], n: int) -> list:
    """`n` of `prompts` spread over their categories: the first prompts of each category in turn
    (file order within a category), so a quick run still judges every category; all when n <= 0."""
    if n <= 0 or n >= len(prompts):
        return list(prompts)
    by_cat: dict[str, list] = {}
    for p in prompts:
        by_cat.setdefault(p["category"] if isinstance(p, dict) else p.category, []).append(p)
    picked: list = []
    depth = 0
    while len(picked) < n:
        for group in by_cat.values():
            if depth < len(group) and len(picked) < n:
                picked.append(group[depth])
        depth += 1
    keep = {id(p) for p in picked}
    return [p for p in prompts if id(p) in keep]


def cascade_loss_curves(uri: str) -> dict[str, list[list[float]]]:
    """The DiT stages' loss curves of the cascade run that registered `uri` (a models:/ URI whose
    version was registered inside a flow run): {stage: [[step, loss], ...]}; {} when there are none."""
    if not str(uri).startswith("models:/"):
        return {}
    from stepvideo.tracking import stage_metric_histories

    return stage_metric_histories(uri, "loss")


def _copy_baseline_videos(videos: list, src: Path, dest: Path) -> list:
    """An earlier eval folder's videos copied under `dest` (OUT/baseline), each entry's path made
    relative to OUT: the report embeds only files inside the folder it reports on. A path that leaves
    the earlier folder is not copied; the report then shows it refused."""
    src, out = src.resolve(), dest.parent
    kept = []
    for v in videos:
        v = dict(v) if isinstance(v, dict) else {"video": None}
        try:
            path = (src / str(v.get("video") or "")).resolve()
        except (OSError, ValueError, RuntimeError):
            path = src
        if v.get("video") and path.is_relative_to(src) and path.is_file():
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            v["video"] = target.relative_to(out).as_posix()
        kept.append(v)
    return kept


def evaluate_model(model: str, prompts: Sequence[Any], out: str | os.PathLike, *, seeds: int = 1,
                   baseline: str | None = None, metric_specs: Sequence[str] = (), progress: bool = True,
                   **settings: Any) -> dict:
    """`run_benchmark` for a model folder or registry URI, with an optional baseline model (evaluated
    the same way under out/baseline, or read from an earlier eval folder's results.json)."""
    import torch

    from stepvideo.evaluation.metrics import load_metrics
    from stepvideo.pipelines.t2v import T2VPipeline
    from stepvideo.tracking import git_commit, resolve_model

    out = Path(out)
    metrics = load_metrics(metric_specs) if metric_specs else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else None

    def load(uri: str) -> Any:
        return T2VPipeline.from_pretrained(resolve_model(uri), device=device, dtype=dtype)

    base = None
    if baseline:
        earlier = Path(baseline) / "results.json"
        if earlier.is_file():
            try:
                base = json.loads(earlier.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InputError(f"{earlier}: not a results file ({e})") from None
            if not isinstance(base, dict) or not isinstance(base.get("videos"), list):
                raise InputError(f"{earlier}: not a results file (no list of videos)")
            base["videos"] = _copy_baseline_videos(base["videos"], Path(baseline), out / "baseline")
        else:
            base = run_benchmark(load(baseline), prompts, out / "baseline", model=baseline, seeds=seeds,
                                 metrics=metrics, progress=progress, git_commit=git_commit(), **settings)
            base["videos"] = [{**v, "video": f"baseline/{v['video']}"} for v in base["videos"]]
        base = {k: base[k] for k in ("model", "summary", "videos", "settings") if k in base}
    return run_benchmark(load(model), prompts, out, model=str(model), seeds=seeds, metrics=metrics, baseline=base,
                         loss_curves=cascade_loss_curves(model), progress=progress, git_commit=git_commit(),
                         **settings)
