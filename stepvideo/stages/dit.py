"""The DiT cascade's stages: latent_cache -> t2i_pretrain -> t2v_lowres -> t2v_highres -> sft ->
bundle (`stepvideo.stages.STAGES` has the whole order)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from stepvideo import registry, tracking
from stepvideo.config import Params, shared_fields
from stepvideo.stages.common import (OUTPUTS, clean_rows, default_device, load_encoders, local_path, model_hash,
                                     project_data_version, publish_model_folder, require_output, vae_folder)
from stepvideo.registry import registered_version
from stepvideo.errors import InputError, MissingError

if TYPE_CHECKING:
    from stepvideo.training.dit_trainer import DiTTrainConfig

logger = logging.getLogger(__name__)


# The sample prompts every DiT stage renders at its end, in the embedded domain's caption style
# (stepvideo/data/synth.py): two English and two Chinese, for clips and for stills (1-frame samples).
SAMPLE_PROMPTS: tuple[tuple[str, str], ...] = (
    ("en", "A large red circle moves right quickly on a navy background."),
    ("en", "On a black background, a small yellow star rotates clockwise, while a medium blue square moves up slowly."),
    ("zh", "灰色背景上，一个大的绿色三角形缓慢地向左移动。"),
    ("zh", "在棕色的背景中，一个中等大小的紫色菱形逐渐变大。镜头拉近。"),
)
SAMPLE_PROMPTS_STILL: tuple[tuple[str, str], ...] = (
    ("en", "A large red circle on a navy background."),
    ("en", "An image of a small yellow star and a medium blue square against a black background."),
    ("zh", "灰色背景上有一个大的绿色三角形。"),
    ("zh", "一张图片：一个中等大小的紫色菱形，背景是棕色。"),
)

# stage -> the stage whose output it starts from (its `init_from` when that is ''); None: from scratch
DIT_PREVIOUS: dict[str, str | None] = {"t2i_pretrain": None, "t2v_lowres": "t2i_pretrain",
                                       "t2v_highres": "t2v_lowres", "sft": "t2v_highres"}


def stage_latent_cache(params: Params, root: Path, parent_run_id: str | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Encode every clean clip/still with the VAE (the train_vae stage's, or `latent_cache.vae`: the
    `finetune` pipeline's base bundle) at full and low resolution and every caption with the text
    encoders into outputs/latent_cache/, once per (clean manifest, VAE, encoders, low resolution):
    the DiT stages never run the VAE encoder or the text encoders."""
    import time

    from stepvideo.data.latent_cache import (LatentCache, build_latent_cache, cache_summary, low_resolution,
                                             most_common_size)
    from stepvideo.models.vae import VideoVAE

    lp = params.latent_cache
    clean, rows = clean_rows(root)
    vae_dir = require_output(vae_folder(params, root), "train_vae")
    out = root / OUTPUTS / "latent_cache"
    clean_version, vae_version = tracking.file_hash(clean), tracking.file_hash(vae_dir)
    full = most_common_size([(r["height"], r["width"]) for r in rows])
    low = low_resolution(*full, factor=lp.low_res_factor)
    tags = {"data_version": project_data_version(params, root), "clean_manifest": clean_version,
            "vae_version": vae_version, "params_hash": params.section_hash("latent_cache")}
    with tracking.run("latent_cache", experiment=params.tracking.experiment,
                      params={"latent_cache": dataclasses.asdict(lp)}, tags=tags, parent_run_id=parent_run_id):
        encoders = load_encoders(params, root)
        vae = VideoVAE.from_pretrained(vae_dir).to(default_device())
        t0 = time.perf_counter()
        build_latent_cache(rows, clean.parent, vae, encoders, out, data_version=clean_version,
                           vae_version=vae_version, low_res=low, batch_size=lp.batch_size, progress=progress,
                           text_cache=root / OUTPUTS / "text_cache" / "text_cache.safetensors")
        seconds = time.perf_counter() - t0
        cache = LatentCache(out)
        summary = cache_summary(cache)
        tags = {"latent_cache_key": cache.key, **{f"{k}_version": v for k, v in cache.meta["encoder_versions"].items()},
                "resolutions": json.dumps(cache.meta["resolutions"])}
        tracking.set_tags(tags)
        metrics = {"items": summary["items"], "media": summary["media"], "seconds": seconds,
                   "bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file()),
                   **{f"items_{k}": v for k, v in summary["items_per_kind"].items()},
                   **{f"items_{k}": v for k, v in summary["items_per_split"].items()},
                   **{f"buckets_{r}": len(b) for r, b in summary["buckets"].items()}}
        tracking.log_metrics(metrics)
    return {"cache": str(out), "key": cache.key, "metrics": metrics, "cache_summary": summary,
            "resolutions": cache.meta["resolutions"]}


def _dit_init(name: str, init_from: str, root: Path) -> tuple[Path | None, str]:
    """The folder a DiT stage starts from and its `parent_model_version` lineage tag."""
    init_from = local_path(init_from, root)
    if init_from:
        folder = tracking.resolve_model(init_from, root / ".cache" / "dit" / "init" / name
                                        if init_from.startswith(("models:/", "runs:/")) else None)
        if init_from.startswith(("models:/", "runs:/")):
            return folder, init_from
        return folder, f"folder:{model_hash(folder)}"
    prev = DIT_PREVIOUS[name]
    if prev is None:
        return None, "scratch"
    folder = root / OUTPUTS / "dit" / prev
    if not (folder / "config.json").is_file():
        raise MissingError(f"{name} starts from the `{prev}` stage's model, but {folder} does not exist: run "
                                f"`stepvideo stage {prev}` first (or set {name}.init_from in params.yaml)")
    weights = model_hash(folder)
    return folder, registered_version(registry.DIT_STAGES[prev], weights) or f"folder:{weights}"


def stage_patch_size(patch_size: int, init: Path | None) -> int:
    """The stage's DiT patch size: `patch_size` when set, else the starting model's (a fine-tune
    keeps its geometry: `make demo` on a release trained at patch 2), else 0 (the preset's)."""
    if patch_size:
        return int(patch_size)
    config = Path(init) / "config.json" if init else None
    if config is not None and config.is_file():
        try:
            return int(json.loads(config.read_text()).get("patch_size") or 0)
        except (ValueError, TypeError) as e:
            raise InputError(f"{config}: not a readable DiT config ({e})") from e
    return 0


# the DiTTrainConfig fields the stage computes; every other one comes from the params section by name
DIT_SET_BY_STAGE = ("model", "init_from", "kinds", "min_quality", "split", "deepspeed_config", "lora")


def dit_train_config(params: Params, name: str, cache: Any, init: Path | None) -> "DiTTrainConfig":
    """The trainer config of DiT stage `name`: its params section, the model geometry fitted to the
    latent cache (z channels of the VAE, widths of the text encoders)."""
    from stepvideo.models.dit import PRESETS, DiTConfig
    from stepvideo.training.dit_trainer import DiTTrainConfig

    sp = getattr(params, name)
    if sp.model not in PRESETS:
        raise InputError(f"{name}.model must be one of {sorted(PRESETS)}, got {sp.model!r}")
    if sp.resolution not in cache.resolutions:
        raise InputError(f"{name}.resolution must be one of {sorted(cache.resolutions)}, got {sp.resolution!r}")
    kinds = tuple(sp.kinds)
    candidates = cache.select("train", kinds)
    if not candidates:
        hint = " (text-to-image pre-training needs stills: add images to the dataset, or set t2i_pretrain.kinds: " \
               "[video])" if kinds == ("image",) else ""
        raise InputError(f"{name}: the latent cache has no train items of kinds {list(kinds)}{hint}")
    if (sp.still_share or 0) > 0 and not any(cache.items[i]["kind"] == "image" for i in candidates):
        raise InputError(f"{name}.still_share is {sp.still_share} but the data has no stills in the train split: "
                         f"set {name}.still_share: null (or add images to the dataset)")
    min_quality = sp.min_quality or None
    if min_quality and all(cache.items[i]["quality"] != cache.items[i]["quality"] for i in candidates):
        min_quality = None  # no row has a quality score (ingested data): the filter cannot apply
    z = int(cache.meta["z_channels"])
    dims = [int(cache.text.encoders[n]["dim"]) for n in ("llm", "clip") if n in cache.text.encoders]
    patch_size = stage_patch_size(sp.patch_size, init)
    patch = {"patch_size": patch_size} if patch_size else {}
    model = DiTConfig.preset(sp.model, in_channels=z, out_channels=z, caption_channels=dims,
                             gradient_checkpointing=sp.gradient_checkpointing, **patch)
    derived = {"model": model.to_dict(), "init_from": str(init) if init else None, "kinds": kinds,
               "min_quality": min_quality, "split": "train", "deepspeed_config": sp.deepspeed_config or None,
               "lora": None}
    return DiTTrainConfig(**shared_fields(DiTTrainConfig, sp, DIT_SET_BY_STAGE), **derived)


def render_samples(dit: Any, params: Params, root: Path, sp: Any, size: tuple[int, int], out: Path,
                   fps: int = 8, encoders: dict[str, Any] | None = None, vae: Path | None = None) -> list[Path]:
    """The stage's sample videos: `sp.sample_prompts` of the fixed prompts at `size`, as mp4 + GIF
    (a 1-frame sample: PNG + GIF) under `out`, with prompts.json naming each file's prompt. `vae`:
    the VAE folder to decode with (default: the latent cache's, :func:`common.vae_folder`)."""
    from stepvideo.pipelines.t2v import T2VPipeline, save_video

    prompts = (SAMPLE_PROMPTS_STILL if sp.sample_frames == 1 else SAMPLE_PROMPTS)[:max(sp.sample_prompts, 0)]
    if not prompts:
        return []
    device = default_device()
    pipe = T2VPipeline.from_components(dit, vae or vae_folder(params, root), encoders or load_encoders(params, root),
                                       device=device, dtype="bfloat16" if device == "cuda" else None)
    out.mkdir(parents=True, exist_ok=True)
    files, index = [], {}
    for i, (lang, text) in enumerate(prompts):
        video = pipe.generate(text, num_frames=sp.sample_frames, height=size[0], width=size[1],
                              steps=sp.sample_steps, cfg_scale=sp.sample_cfg, shift=sp.sample_shift, seed=i)
        path = out / f"{i}_{lang}{'.png' if sp.sample_frames == 1 else '.mp4'}"
        save_video(video[0], path, fps=fps, gif=True)
        files += [path, path.with_suffix(".gif")]
        index[path.name] = {"prompt": text, "lang": lang, "seed": i, "frames": sp.sample_frames,
                            "height": size[0], "width": size[1], "steps": sp.sample_steps, "cfg": sp.sample_cfg,
                            "shift": sp.sample_shift}
    (out / "prompts.json").write_text(json.dumps(index, indent=2, ensure_ascii=False, sort_keys=True) + "\n",
                                      encoding="utf-8")
    return [*files, out / "prompts.json"]


def sample_fps(root: Path) -> int:
    """The frame rate of the sample videos: the first clean clip's (8 without clips)."""
    return next((int(r.get("fps") or 0) for r in clean_rows(root)[1] if r.get("kind") == "video"), 0) or 8


def finish_model_folder(model_dir: Path, result: dict[str, Any], lineage: dict[str, Any], seconds: float,
                        render: Callable[[], list[Path]], extra: dict[str, float] | None = None,
                        also: tuple[Path, ...] = ()) -> tuple[dict[str, float], list[Path]]:
    """The end of a DiT training stage, inside its atomic output folder: `render()` the sample videos
    (timed: `sample_seconds`), the trainer's numeric results + `seconds` (+ `extra`) as the metrics,
    `lineage["weights_hash"]` set to `model_dir`'s weights, lineage.json and metrics.json (with the
    loss curve) written to `model_dir` and to each of `also`. Returns (metrics, sample files)."""
    import time

    t0 = time.perf_counter()
    samples = render()
    metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics.update(seconds=seconds, sample_seconds=time.perf_counter() - t0, **(extra or {}))
    lineage["weights_hash"] = model_hash(model_dir)
    summary = {**metrics, "weights": result["weights"], "loss_curve": result["loss_curve"]}
    for folder in (model_dir, *also):
        (folder / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
        (folder / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return metrics, samples


def stage_dit(name: str, params: Params, root: Path, parent_run_id: str | None = None,
              progress: bool = True) -> dict[str, Any]:
    """One DiT stage of the cascade (t2i_pretrain | t2v_lowres | t2v_highres | sft) on the latent
    cache, starting from the previous stage's model (or `init_from`); writes outputs/dit/<name>/
    (a StepVideoDiT folder + lineage.json, metrics.json, samples/), records a nested MLflow run (the
    loss curve per step, sample videos) and registers the folder (`registry.DIT_STAGES`, alias candidate).

    Checkpoints live in `.cache/dit/<name>/<key>/`, key = (latent cache key, init weights, the
    trainer config's fingerprint): an interrupted run resumes, a changed input starts afresh."""
    import hashlib
    import shutil
    import time

    from stepvideo.data.latent_cache import LatentCache
    from stepvideo.fileio import atomic_folder
    from stepvideo.training.dit_trainer import train_dit

    if name not in DIT_PREVIOUS:
        raise InputError(f"unknown DiT stage {name!r} (known: {', '.join(DIT_PREVIOUS)})")
    sp = getattr(params, name)
    cache_dir = require_output(root / OUTPUTS / "latent_cache", "latent_cache", marker="cache.json")
    cache = LatentCache(cache_dir)
    init, parent_version = _dit_init(name, sp.init_from, root)
    cfg = dit_train_config(params, name, cache, init)
    init_hash = model_hash(init) if init else "scratch"
    key = hashlib.sha256(json.dumps([cache.key, init_hash, cfg.fingerprint()]).encode()).hexdigest()[:16]
    work = root / ".cache" / "dit" / name / key
    out = root / OUTPUTS / "dit" / name
    encoder_versions = cache.meta["encoder_versions"]
    lineage = {"stage": name, "data_version": project_data_version(params, root), "clean_manifest": cache.meta["data_version"],
               "vae_version": cache.meta["vae_version"],
               **{f"{k}_version": v for k, v in encoder_versions.items()},
               "parent_model_version": parent_version, "init_weights": init_hash,
               "params_hash": params.section_hash(name), "latent_cache_key": cache.key, "train_key": key,
               "git_commit": tracking.git_commit(root)}
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # another rank of a torchrun/deepspeed launch: it trains; rank 0 records, samples, registers
        result = train_dit(cfg, cache_dir, work, progress=False, name=name)
        return {"model_dir": str(out), "rank": rank, "metrics": {"loss_last": result["loss_last"]}}
    excluded = None
    if cfg.min_quality is not None:  # train rows of the requested kinds the quality filter leaves out (SFT)
        excluded = len(cache.select("train", cfg.kinds)) - len(cache.select("train", cfg.kinds, cfg.min_quality))
    elif sp.min_quality > 0:
        lineage["quality_filter"] = "off: the data has no quality scores"
    with tracking.run(name, experiment=params.tracking.experiment,
                      params={name: dataclasses.asdict(sp), "dit": cfg.model}, tags=lineage,
                      parent_run_id=parent_run_id):
        if excluded is not None:
            tracking.log_metrics({f"{name}_excluded_low_quality": excluded})
            logger.info(f"{name}: min_quality {sp.min_quality} leaves out {excluded} low-quality train rows of "
                        f"{sp.kinds}")
        log = lambda step, m: tracking.log_metrics(m, step=step)  # noqa: E731
        t0 = time.perf_counter()
        result = train_dit(cfg, cache_dir, work, log_fn=log, progress=progress, name=name)
        seconds = time.perf_counter() - t0
        size = cache.resolutions[sp.resolution]
        fps = sample_fps(root)
        extra = {f"{name}_excluded_low_quality": excluded} if excluded is not None else {}
        with atomic_folder(out) as tmp:
            shutil.copytree(result["model_dir"], tmp, dirs_exist_ok=True)
            metrics, samples = finish_model_folder(
                tmp, result, lineage, seconds, lambda: render_samples(tmp, params, root, sp, size, tmp / "samples",
                                                                      fps=fps), extra)
        weights = lineage["weights_hash"]
        tracking.set_tags({"weights_hash": weights, "weights_kept": result["weights"]})
        for f in samples:
            tracking.log_artifact(out / "samples" / f.name, "samples")
        registered = publish_model_folder(params, out, registry.DIT_STAGES[name], lineage, metrics,
                                          step=result["step"])
    return {"model_dir": str(out), "metrics": metrics, "registered_version": registered, "lineage": lineage,
            "samples": [str(out / "samples" / f.name) for f in samples], "work_dir": str(work)}


def stage_t2i_pretrain(params: Params, root: Path, parent_run_id: str | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Text-to-image pre-training from scratch (stills, full resolution)."""
    return stage_dit("t2i_pretrain", params, root, parent_run_id, progress)


def stage_t2v_lowres(params: Params, root: Path, parent_run_id: str | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Text-to-video at low resolution (clips + a share of stills), from t2i_pretrain."""
    return stage_dit("t2v_lowres", params, root, parent_run_id, progress)


def stage_t2v_highres(params: Params, root: Path, parent_run_id: str | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Text-to-video at full resolution, from t2v_lowres."""
    return stage_dit("t2v_highres", params, root, parent_run_id, progress)


def stage_sft(params: Params, root: Path, parent_run_id: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Supervised fine-tuning on the high-quality clips (`sft.min_quality`), from t2v_highres; the
    output is the mean of the last `sft.average_last` checkpoints."""
    return stage_dit("sft", params, root, parent_run_id, progress)
