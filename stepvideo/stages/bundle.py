"""The shippable bundle: the cascade's final DiT + the VAE + the text encoders as one T2VPipeline folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stepvideo import registry, tracking
from stepvideo.config import Params
from stepvideo.registry import registered_version
from stepvideo.stages.common import OUTPUTS, load_encoders, model_hash, publish_model_folder, require_output

# the DiT the shipped bundle takes its weights from: Video-DPO's output (the SFT weights when dpo is off)
BUNDLE_FROM = "dpo"


def stage_bundle(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """The shippable text-to-video pipeline: the cascade's final DiT (`BUNDLE_FROM`: Video-DPO's, or
    the SFT weights when DPO is off) + the VAE + the text encoders as one `T2VPipeline.save_pretrained`
    folder (outputs/bundle), registered as `stepvideo-t2v` (alias candidate), so `stepvideo generate
    --model models:/stepvideo-t2v@candidate` works. Its default sampler is SFT's sample settings."""
    from stepvideo.diffusion.sampler import SamplerConfig
    from stepvideo.pipelines.t2v import T2VPipeline

    dit_dir = require_output(root / OUTPUTS / "dit" / BUNDLE_FROM, BUNDLE_FROM)
    vae_dir = require_output(root / OUTPUTS / "vae", "train_vae")
    sp = params.sft  # the sampler the SFT stage rendered its samples with
    read = lambda f: json.loads(f.read_text()) if f.is_file() else {}  # noqa: E731
    dit_lineage = read(dit_dir / "lineage.json")
    cascade = {**read(root / OUTPUTS / "dit" / "sft" / "lineage.json"), **dit_lineage}
    weights = model_hash(dit_dir)
    registered_as = registry.DIT_STAGES["sft"] if dit_lineage.get("skipped") else registry.DPO
    parent = registered_version(registered_as, weights) or f"folder:{weights}"
    keep = ("data_version", "clean_manifest", "vae_version", "llm_version", "clip_version", "latent_cache_key",
            "pairs_version")
    lineage = {**{k: cascade[k] for k in keep if k in cascade}, "dit_stage": "sft" if dit_lineage.get("skipped")
               else "dpo", "parent_model_version": parent, "dit_weights": weights,
               "params_hash": params.section_hash("sft"), "cascade_params": params.training_hash(),
               "git_commit": tracking.git_commit(root)}
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
