"""The shippable bundle: the cascade's final DiT + the VAE + the text encoders as one T2VPipeline folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stepvideo import registry, tracking
from stepvideo.config import Params
from stepvideo.registry import registered_version
from stepvideo.stages.common import (OUTPUTS, load_encoders, model_hash, publish_model_folder, require_output,
                                     vae_folder)

# the DiT the shipped bundle takes its weights from: Video-DPO's output (the SFT weights when dpo is off)
BUNDLE_FROM = "dpo"


def bundle_source(params: Params, root: Path) -> dict[str, Any]:
    """What the bundle ships: {"dit": the DiT folder, "stage": its stage, "registered_as": the registered
    model it was published as, "sampler_section": the params section whose sample settings become the
    bundle's sampler, "lineage": the lineage its DiT stage(s) recorded}. The cascade: DPO's output (SFT's
    weights when DPO was off); `flow.pipeline: finetune`: the finetune stage's DiT."""
    read = lambda f: json.loads(f.read_text()) if f.is_file() else {}  # noqa: E731
    if params.flow.pipeline == "finetune":
        dit_dir = require_output(root / OUTPUTS / "finetune" / "dit", "finetune")
        return {"dit": dit_dir, "stage": "finetune", "registered_as": registry.FINETUNE,
                "sampler_section": "finetune", "lineage": read(dit_dir / "lineage.json"),
                "stage_lineage": read(dit_dir / "lineage.json")}
    dit_dir = require_output(root / OUTPUTS / "dit" / BUNDLE_FROM, BUNDLE_FROM)
    dit_lineage = read(dit_dir / "lineage.json")
    skipped = bool(dit_lineage.get("skipped"))
    return {"dit": dit_dir, "stage": "sft" if skipped else "dpo",
            "registered_as": registry.DIT_STAGES["sft"] if skipped else registry.DPO, "sampler_section": "sft",
            "lineage": {**read(root / OUTPUTS / "dit" / "sft" / "lineage.json"), **dit_lineage},
            "stage_lineage": dit_lineage}


def stage_bundle(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """The shippable text-to-video pipeline: the final DiT (:func:`bundle_source`: the cascade's
    Video-DPO output, or the SFT weights when DPO is off; the finetune stage's with `flow.pipeline:
    finetune`) + the VAE + the text encoders as one `T2VPipeline.save_pretrained` folder
    (outputs/bundle), registered as `stepvideo-t2v` (alias candidate), so `stepvideo generate
    --model models:/stepvideo-t2v@candidate` works. Its default sampler is that stage's sample
    settings (SFT's for the cascade)."""
    from stepvideo.diffusion.sampler import SamplerConfig
    from stepvideo.pipelines.t2v import T2VPipeline

    source = bundle_source(params, root)
    dit_dir, cascade = source["dit"], source["lineage"]
    vae_dir = require_output(vae_folder(params, root), "train_vae")
    sp = getattr(params, source["sampler_section"])  # the sampler that stage rendered its samples with
    weights = model_hash(dit_dir)
    parent = registered_version(source["registered_as"], weights) or f"folder:{weights}"
    keep = ("data_version", "clean_manifest", "vae_version", "llm_version", "clip_version", "latent_cache_key",
            "pairs_version", "method", "base_model_version", "base_weights", "lora_spec")
    lineage = {**{k: cascade[k] for k in keep if k in cascade}, "dit_stage": source["stage"],
               "parent_model_version": parent, "dit_weights": weights,
               "params_hash": params.section_hash(source["sampler_section"]),
               "cascade_params": params.training_hash(), "git_commit": tracking.git_commit(root)}
    dit_lineage = source["stage_lineage"]
    out = root / OUTPUTS / "bundle"
    with tracking.run("bundle", experiment=params.tracking.experiment, tags=lineage, parent_run_id=parent_run_id):
        sampler = SamplerConfig(num_steps=sp.sample_steps, shift=sp.sample_shift, cfg_scale=sp.sample_cfg)
        pipe = T2VPipeline.from_components(dit_dir, vae_dir, load_encoders(params, root), sampler=sampler,
                                           lineage={"cascade": dit_lineage})
        pipe.save_pretrained(out, lineage=lineage)
        metrics = {"dit_parameters": pipe.dit.num_parameters(), "vae_parameters": pipe.vae.num_parameters(),
                   "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}
        registered = publish_model_folder(params, out, registry.BUNDLE, lineage, metrics)
    return {"bundle": str(out), "metrics": metrics, "registered_version": registered, "lineage": lineage}
