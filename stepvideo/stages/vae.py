"""The Video-VAE stage and the trainer configs its `vae` params section builds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepvideo import registry, tracking
from stepvideo.config import Params, shared_fields
from stepvideo.stages.common import OUTPUTS, clean_rows, local_path, project_data_version, publish_model_folder
from stepvideo.evaluation.runner import vae_content_metrics
from stepvideo.errors import InputError

if TYPE_CHECKING:
    from stepvideo.training.vae_trainer import VAETrainConfig


def stage_vae(params: Params, root: Path, parent_run_id: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train (or fine-tune) the Video-VAE on the clean clips; held-out PSNR/SSIM and a side-by-side
    sample to MLflow; the folder registered as `stepvideo-vae` (alias `candidate`) with lineage tags.

    Checkpoints live in `.cache/vae/<run key>/` (outside DVC's outs, which it deletes before a run),
    so an interrupted run resumes from its last checkpoint whichever driver restarts it."""
    import shutil

    from stepvideo.fileio import atomic_folder
    from stepvideo.training.vae_trainer import load_clips, train_vae, train_vae_recipe

    vp = params.vae
    clean, rows = clean_rows(root)
    stage1, cfg = vae_train_config(params, root)
    captions_version = tracking.file_hash(clean)
    work = root / ".cache" / "vae" / f"{params.section_hash('vae')}-{captions_version}"
    out = root / OUTPUTS / "vae"
    version = project_data_version(params, root)
    lineage = {"data_version": version, "clean_manifest": captions_version, "params_hash": params.section_hash("vae"),
               "git_commit": tracking.git_commit(root)}
    with tracking.run("train_vae", experiment=params.tracking.experiment, params={"vae": dataclasses.asdict(vp)},
                      tags=lineage, parent_run_id=parent_run_id):
        train = load_clips(rows, clean.parent, split="train")
        heldout = load_clips(rows, clean.parent, split="heldout", max_items=vp.eval_max_items)
        log = lambda step, m: tracking.log_metrics(m, step=step)  # noqa: E731
        if stage1 is None:
            result = train_vae(cfg, train, heldout, work, log_fn=log, progress=progress)
        else:  # stage-1 metrics are logged with a `stage1_` prefix
            result = train_vae_recipe(stage1, cfg, train, heldout, work, log_fn=log, progress=progress)
        with atomic_folder(out) as tmp:
            shutil.copytree(result["model_dir"], tmp, dirs_exist_ok=True)
            (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
            (tmp / "metrics.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
        metrics = {k: v for k, v in result.items() if isinstance(v, (int, float))}
        # how much content the VAE keeps: the scorer on held-out clips before/after a round trip
        metrics.update(vae_content_metrics(out, clean, params.evaluate.vae_items, progress=progress))
        if result.get("sample_path"):
            tracking.log_artifact(result["sample_path"], "samples")
        registered = publish_model_folder(params, out, registry.VAE, lineage, metrics)
    return {"model_dir": str(out), "metrics": metrics, "registered_version": registered, "lineage": lineage}


# the VAETrainConfig fields the stage (or the two-stage recipe) sets; the rest come from `vae` by name
VAE_SET_BY_STAGE = ("model", "init_from", "steps", "dual_path_start_step", "trainable_phases",
                    "perceptual_backbone_path")


def vae_train_config(params: Params, root: Path = Path(".")) -> "tuple[VAETrainConfig | None, VAETrainConfig]":
    """The trainer configs for the `vae` section of `params`: (stage 1 or None, the main run);
    a relative `vae.init_from` is looked up in `root` (then beside the package: the release).

    Used by the stage and by bench/bench_vae_recon.py."""
    from stepvideo.models.vae import VAEConfig
    from stepvideo.training.vae_trainer import VAETrainConfig, two_stage_recipe

    vp = params.vae
    presets = {"demo": VAEConfig.demo, "small": VAEConfig.small, "tiny": VAEConfig.tiny,
               "official": VAEConfig.official}
    if vp.model not in presets:
        raise InputError(f"vae.model must be one of {sorted(presets)}, got {vp.model!r}")
    model = presets[vp.model]()
    common = shared_fields(VAETrainConfig, vp, VAE_SET_BY_STAGE)
    common["perceptual_backbone_path"] = vp.perceptual_backbone_path or None
    if vp.stage1_steps > 0:
        if vp.init_from:
            raise InputError("vae.stage1_steps > 0 trains from scratch: leave vae.init_from empty")
        return two_stage_recipe(model, vp.stage1_steps, vp.adapt_steps, vp.mid_steps, vp.steps, **common)
    return None, VAETrainConfig(model=model.to_dict(), init_from=local_path(vp.init_from, root) or None,
                                steps=vp.steps, dual_path_start_step=vp.dual_path_start_step, **common)
