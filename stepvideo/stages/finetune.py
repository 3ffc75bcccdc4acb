"""The `finetune` stage: a released DiT (`finetune.base`: a T2VPipeline bundle, a DiT folder, an
official Step-Video-T2V folder converted on load, or a `models:/` URI) fine-tuned on the project's
latent cache through the DiT trainer, with a LoRA adapter on the frozen base (`method: lora`,
:mod:`stepvideo.training.lora`) or in full (`method: full`, ZeRO through `zero_stage` /
`deepspeed_config`).

The latent cache must be encoded with the base's own VAE and text encoders (the `finetune-lora`
preset sets `latent_cache.vae` and `text_encoders.llm/clip` to the base bundle's): a cache of
another VAE, or encoders other than the bundle's, are refused, since the DiT would learn latents
and embeddings it was never trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepvideo import registry, tracking
from stepvideo.config import Params, shared_fields
from stepvideo.errors import InputError, MissingError
from stepvideo.stages.common import (OUTPUTS, bundle_component, check_lora_targets, local_path, model_hash,
                                     project_data_version, publish_model_folder, register_adapter, require_output,
                                     resolve_folder, vae_folder, write_adapter_lineage)

if TYPE_CHECKING:
    from stepvideo.training.dit_trainer import DiTTrainConfig

logger = logging.getLogger(__name__)

OUT = "finetune"  # outputs/finetune/: dit/ (merged or fully tuned), adapter/ (lora), samples/, lineage + metrics
# the DiTTrainConfig fields the stage computes; every other one comes from the `finetune` section by name
FINETUNE_SET_BY_STAGE = ("model", "init_from", "kinds", "min_quality", "split", "deepspeed_config", "lora")


def _official_dit(folder: Path, root: Path) -> Path:
    """An official Step-Video-T2V folder's transformer as our DiT folder, converted once
    (`stepvideo.compat.dit`) into `.cache/finetune/base/official-<hash>/` (keyed by its files)."""
    from stepvideo.compat.dit import _official_weight_files, _transformer_dir, load_official_transformer

    tdir = _transformer_dir(folder)
    h = hashlib.sha256(tracking.file_hash(tdir / "config.json").encode())
    for f in _official_weight_files(tdir):
        h.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    out = root / ".cache" / OUT / "base" / f"official-{h.hexdigest()[:16]}"
    if not (out / "config.json").is_file():
        logger.info(f"finetune.base: converting the official transformer {tdir} to {out}")
        load_official_transformer(folder).save_pretrained(out)
    return out


def finetune_base(params: Params, root: Path) -> dict[str, Any]:
    """The base model of `finetune.base`: {"dit": its DiT folder, "bundle": the bundle folder or None,
    "version": its lineage id (the `models:/` URI, else `folder:<weights hash>`), "weights"}."""
    from stepvideo.pipelines.components import MODEL_INDEX

    value = params.finetune.base
    if not value:
        raise InputError("finetune.base: empty; name a pipeline bundle, a DiT folder or models:/NAME@ALIAS")
    folder = resolve_folder(value, root, "finetune.base")
    if (folder / MODEL_INDEX).is_file():
        bundle, dit = folder, bundle_component(folder, "dit")
    elif (folder / "config.json").is_file() and "model_type" in json.loads((folder / "config.json").read_text()):
        bundle, dit = None, folder  # our DiT folder (config.json with model_type)
    elif (folder / "transformer" / "config.json").is_file() or (folder / "config.json").is_file():
        bundle, dit = None, _official_dit(folder, root)
    else:
        raise MissingError(f"finetune.base: {folder} is neither a pipeline bundle ({MODEL_INDEX}), a DiT folder "
                           "(config.json) nor an official release (transformer/config.json)")
    weights = model_hash(dit)
    uri = local_path(value, root).startswith(("models:/", "runs:/"))
    return {"dit": dit, "bundle": bundle, "version": value if uri else f"folder:{weights}", "weights": weights}


def check_inputs_fit_base(params: Params, root: Path, cache: Any, base: dict[str, Any], cache_dir: Path) -> None:
    """A bundle base's VAE must be the one the latent cache was encoded with, and its text encoders
    the ones `text_encoders.llm` / `.clip` name (the cache's embeddings and the samples use those)."""
    if base["bundle"] is None:
        return
    fix = (f"set latent_cache.vae: {params.finetune.base} and text_encoders.llm / clip to its "
           "text_encoders/llm and text_encoders/clip, then rebuild the caches (stepvideo stage latent_cache)")
    vae = bundle_component(base["bundle"], "vae")
    if tracking.file_hash(vae) != cache.meta["vae_version"]:
        raise InputError(f"{cache_dir}: the latent cache was encoded with another VAE than the base's {vae}: {fix}")
    for name in ("llm", "clip"):
        given = local_path(getattr(params.text_encoders, name), root)
        want = bundle_component(base["bundle"], name)
        if not given or Path(given).resolve() != want.resolve():
            raise InputError(f"text_encoders.{name}: {given or '(built by the text_encoders stage)'} is not the "
                             f"base's encoder {want}: {fix}")


def finetune_train_config(params: Params, cache: Any, dit_dir: Path) -> "DiTTrainConfig":
    """The trainer config of the `finetune` section: the base's own geometry, the adapter's spec."""
    from stepvideo.models.dit import DiTConfig
    from stepvideo.models.io import read_json
    from stepvideo.training.dit_trainer import DiTTrainConfig

    fp = params.finetune
    if fp.resolution not in cache.resolutions:
        raise InputError(f"finetune.resolution: must be one of {sorted(cache.resolutions)}, got {fp.resolution!r}")
    kinds = tuple(fp.kinds)
    candidates = cache.select("train", kinds)
    if not candidates:
        raise InputError(f"finetune.kinds: the latent cache has no train items of kinds {list(kinds)}")
    if (fp.still_share or 0) > 0 and not any(cache.items[i]["kind"] == "image" for i in candidates):
        raise InputError(f"finetune.still_share: {fp.still_share} but the data has no stills in the train split")
    min_quality = fp.min_quality or None
    if min_quality and all(cache.items[i]["quality"] != cache.items[i]["quality"] for i in candidates):
        min_quality = None  # no row has a quality score (ingested data)
    model = DiTConfig.from_dict(read_json(dit_dir / "config.json", dict))
    model.gradient_checkpointing = fp.gradient_checkpointing
    lora = None
    if fp.method == "lora":
        check_lora_targets(fp.lora_target_modules, dit_dir, "finetune.lora_target_modules")
        lora = fp.lora_dict()
    derived = {"model": model.to_dict(), "init_from": str(dit_dir), "kinds": kinds, "min_quality": min_quality,
               "split": "train", "deepspeed_config": fp.deepspeed_config or None, "lora": lora}
    return DiTTrainConfig(**shared_fields(DiTTrainConfig, fp, FINETUNE_SET_BY_STAGE), **derived)


def finetune_key(cache_key: str, base_weights: str, cfg: "DiTTrainConfig") -> str:
    """The run's work folder key: (latent cache, base weights, the trainer config's fingerprint)."""
    return hashlib.sha256(json.dumps([cache_key, base_weights, cfg.fingerprint()]).encode()).hexdigest()[:16]


def _skipped(params: Params, root: Path) -> dict[str, Any]:
    """outputs/finetune/ holding only lineage.json that says why (the dvc.yaml stage's output)."""
    from stepvideo.fileio import atomic_folder

    why = f"flow.pipeline is {params.flow.pipeline!r}: set flow.pipeline: finetune (or --preset finetune-lora)"
    with atomic_folder(root / OUTPUTS / OUT) as tmp:
        (tmp / "lineage.json").write_text(json.dumps({"stage": OUT, "skipped": why}, indent=2) + "\n")
    logger.info(f"finetune: skipped ({why})")
    return {"model_dir": None, "adapter_dir": None, "metrics": {}, "registered_version": None,
            "adapter_version": None, "lineage": {"skipped": why}, "skipped": True}


def stage_finetune(params: Params, root: Path, parent_run_id: str | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Fine-tune `finetune.base` on the latent cache; writes outputs/finetune/ (dit/: the base with the
    adapter merged, or the fully tuned DiT; adapter/: the peft adapter folder for method lora;
    samples/; lineage.json; metrics.json), records a nested MLflow run and registers dit/ as
    `stepvideo-dit-finetune` and adapter/ as `stepvideo-lora` (alias candidate each).

    Checkpoints live in `.cache/finetune/<key>/` (for lora: the adapter and its optimizer moments
    only), key = (latent cache key, base weights, trainer fingerprint): a killed run resumes.
    Outside the finetune pipeline (`flow.pipeline` other than finetune: `dvc repro` of the cascade)
    it writes only outputs/finetune/lineage.json saying it was skipped."""
    import shutil
    import time

    from stepvideo.data.latent_cache import LatentCache
    from stepvideo.fileio import atomic_folder
    from stepvideo.stages.dit import finish_model_folder, render_samples, sample_fps
    from stepvideo.training.dit_trainer import train_dit

    fp = params.finetune
    if params.flow.pipeline != "finetune":  # `dvc repro` of the cascade reaches this stage too
        return _skipped(params, root)
    cache_dir = require_output(root / OUTPUTS / "latent_cache", "latent_cache", marker="cache.json")
    cache = LatentCache(cache_dir)
    base = finetune_base(params, root)
    check_inputs_fit_base(params, root, cache, base, cache_dir)
    cfg = finetune_train_config(params, cache, base["dit"])
    key = finetune_key(cache.key, base["weights"], cfg)
    work = root / ".cache" / OUT / key
    out = root / OUTPUTS / OUT
    lineage = {"stage": OUT, "method": fp.method, "base": fp.base, "base_model_version": base["version"],
               "base_weights": base["weights"], "data_version": project_data_version(params, root),
               "clean_manifest": cache.meta["data_version"], "vae_version": cache.meta["vae_version"],
               **{f"{k}_version": v for k, v in cache.meta["encoder_versions"].items()},
               "params_hash": params.section_hash(OUT), "latent_cache_key": cache.key, "train_key": key,
               "git_commit": tracking.git_commit(root)}
    if cfg.lora is not None:
        lineage["lora_spec"] = json.dumps(cfg.lora, sort_keys=True)
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # another rank of a torchrun/deepspeed launch: it trains; rank 0 records and registers
        result = train_dit(cfg, cache_dir, work, progress=False, name=OUT)
        return {"model_dir": str(out / "dit"), "rank": rank, "metrics": {"loss_last": result["loss_last"]}}
    with tracking.run(OUT, experiment=params.tracking.experiment,
                      params={OUT: dataclasses.asdict(fp), "dit": cfg.model}, tags=lineage,
                      parent_run_id=parent_run_id) as active:
        log = lambda step, m: tracking.log_metrics(m, step=step)  # noqa: E731
        t0 = time.perf_counter()
        result = train_dit(cfg, cache_dir, work, log_fn=log, progress=progress, name=OUT)
        seconds = time.perf_counter() - t0
        size, fps, lora = cache.resolutions[fp.resolution], sample_fps(root), "adapter_dir" in result
        with atomic_folder(out) as tmp:
            shutil.copytree(result["model_dir"], tmp / "dit")
            if lora:
                shutil.copytree(result["adapter_dir"], tmp / "adapter")
                adapter_bytes = (tmp / "adapter" / "adapter_model.safetensors").stat().st_size
            render = lambda: render_samples(tmp / "dit", params, root, fp, size, tmp / "samples",  # noqa: E731
                                            fps=fps, vae=vae_folder(params, root))
            metrics, samples = finish_model_folder(tmp / "dit", result, lineage, seconds, render,
                                                   {"adapter_bytes": adapter_bytes} if lora else None, also=(tmp,))
            if lora:
                adapter_tags = write_adapter_lineage(tmp / "adapter", lineage)
        tracking.set_tags({"weights_hash": lineage["weights_hash"], "weights_kept": result["weights"]})
        for f in samples:
            tracking.log_artifact(out / "samples" / f.name, "samples")
        registered = publish_model_folder(params, out / "dit", registry.FINETUNE, lineage, metrics,
                                          step=result["step"])
        adapter = register_adapter(params, out / "adapter", adapter_tags, OUT, active.info.run_id) if lora else None
    logger.info(f"finetune ({fp.method}): loss {metrics['loss_first']:.4f} -> {metrics['loss_last']:.4f} over "
                f"{metrics['step']} steps, {metrics['trainable_parameters']} trainable parameters")
    return {"model_dir": str(out / "dit"), "adapter_dir": str(out / "adapter") if lora else None,
            "metrics": metrics, "registered_version": registered, "adapter_version": adapter, "lineage": lineage,
            "samples": [str(out / "samples" / f.name) for f in samples], "work_dir": str(work)}
