"""The stage functions, in cascade order. Both drivers (the Prefect flow and `dvc repro` through
`stepvideo stage NAME`) call these; each takes its params section and input paths, writes its
outputs under the project, records itself in MLflow, and returns paths and metrics.

    data (synth | ingest) -> version (DVC) -> validate -> text_encoders -> text_cache -> train_vae
      -> latent_cache -> t2i_pretrain -> t2v_lowres -> t2v_highres -> sft -> dpo -> evaluate -> bundle
      -> promote

The data, text and VAE stages live here; the DiT cascade in `stepvideo.stages_dit`, Video-DPO in
`stepvideo.stages_dpo`, the evaluation stage in `stepvideo.stages_eval`, promotion in `stepvideo.stages_promote`, the helpers they share in `stepvideo.stage_utils`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from stepvideo import tracking
from stepvideo.config import Params
from stepvideo.data.synth import SynthConfig, generate
from stepvideo.data.validation import ValidationFailed, format_report, validate
from stepvideo.data.versioning import version_data
from stepvideo.fileio import atomic_write_text
from stepvideo.stage_utils import (OUTPUTS, _clean_rows, local_path, _data_version, _device, _load_encoders,  # noqa: F401
                                   _require, latent_cache_key, model_hash)
from stepvideo.stages_dpo import DPO_REGISTERED, stage_dpo  # noqa: F401
from stepvideo.stages_promote import stage_promote  # noqa: F401
from stepvideo.stages_eval import EVALUATE_FROM, stage_evaluate, vae_content_metrics  # noqa: F401
from stepvideo.stages_dit import (BUNDLE_FROM, BUNDLE_REGISTERED, DIT_PREVIOUS, DIT_REGISTERED,  # noqa: F401
                                  SAMPLE_PROMPTS, SAMPLE_PROMPTS_STILL, dit_train_config, render_samples,
                                  stage_bundle, stage_dit, stage_latent_cache, stage_sft, stage_t2i_pretrain,
                                  stage_t2v_highres, stage_t2v_lowres)

def stage_data(params: Params, root: Path, parent_run_id: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Generate the embedded bilingual dataset into `params.data.out`."""
    cfg = SynthConfig(**{f.name: getattr(params.data, f.name) for f in dataclasses.fields(SynthConfig)})
    with tracking.run("data", experiment=params.tracking.experiment, params={"data": dataclasses.asdict(params.data)},
                      tags={"params_hash": params.section_hash("data")}, parent_run_id=parent_run_id):
        manifest = generate(cfg, root / params.data.out, progress=progress)
        files = [p for p in (root / params.data.out).rglob("*") if p.is_file()]
        metrics = {"clips": cfg.clips, "images": cfg.images, "files": len(files),
                   "bytes": sum(p.stat().st_size for p in files)}
        tracking.log_metrics(metrics)
    return {"manifest": str(manifest), "data_dir": str(root / params.data.out), "metrics": metrics}


def stage_ingest(params: Params, root: Path, videos: Path, captions: Path, parent_run_id: str | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """A user's own clips instead of the embedded data: probe them into `params.data.out`/manifest.jsonl."""
    from stepvideo.data.ingest import ingest

    with tracking.run("data", experiment=params.tracking.experiment, tags={"source": "ingest"},
                      parent_run_id=parent_run_id):
        manifest = ingest(videos, captions, root / params.data.out, progress=progress)
        rows = manifest.read_text(encoding="utf-8").count("\n")
        tracking.log_metrics({"rows": rows})
    return {"manifest": str(manifest), "data_dir": str(root / params.data.out), "metrics": {"rows": rows}}


def existing_data(params: Params, root: Path) -> dict[str, Any]:
    """The data folder as it is (synthesized or ingested earlier): what a retrain trains on."""
    manifest = root / params.data.out / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no data to train on; write it first (stepvideo data synth, or "
                                f"stepvideo data ingest --out {params.data.out})")
    rows = sum(1 for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip())
    return {"manifest": str(manifest), "data_dir": str(root / params.data.out), "metrics": {"rows": rows}}


def stage_version(params: Params, root: Path, push: bool = True, parent_run_id: str | None = None) -> dict[str, Any]:
    """`dvc add` + `dvc push` the data folder; the data version is DVC's content hash."""
    with tracking.run("version", experiment=params.tracking.experiment, parent_run_id=parent_run_id) as r:
        version = version_data(root, params.data.out, push=push)
        tracking.set_tags({"data_version": version})
    return {"data_version": version, "dvc_file": str(root / f"{params.data.out}.dvc"), "run_id": r.info.run_id}


def stage_validate(params: Params, root: Path, manifest: Path | None = None, parent_run_id: str | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """The Great Expectations gate; writes outputs/validated/{clean,quarantine}.jsonl and report.json."""
    manifest = Path(manifest) if manifest else root / params.data.out / "manifest.jsonl"
    version = _data_version(params, root)
    out = root / OUTPUTS / "validated"
    with tracking.run("validate", experiment=params.tracking.experiment,
                      params={"validate": dataclasses.asdict(params.validate)},
                      tags={"data_version": version, "params_hash": params.section_hash("validate")},
                      parent_run_id=parent_run_id):
        try:
            result = validate(manifest, params.validate, out, progress=progress)
        except ValidationFailed as e:
            report_path = out / "report.json"
            if report_path.is_file():
                tracking.log_artifact(report_path, "validation")
            tracking.log_metrics({"rows": e.report.get("rows", 0), "bad_rows": e.report.get("bad_rows", 0)})
            tracking.set_tags({"validation": "failed"})
            raise
        metrics = result.metrics()
        metrics["seconds_per_1000_rows"] = result.seconds / max(result.rows, 1) * 1000
        tracking.log_metrics(metrics)
        tracking.log_artifact(result.report_path, "validation")
        tracking.set_tags({"validation": "passed"})
    return {"clean_manifest": str(result.clean_manifest), "quarantine_manifest": str(result.quarantine_manifest),
            "report": str(result.report_path), "data_version": version, "metrics": metrics,
            "summary": format_report(json.loads(result.report_path.read_text()), limit=10)}


def _clean_captions(root: Path) -> dict[str, str]:
    return {r["id"]: r["caption"] for r in _clean_rows(root)[1]}


def stage_text_encoders(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Build the tiny bilingual tokenizer + encoders from the clean captions (or take the user's),
    and record their versions; registers the built folder as `stepvideo-text-encoders`."""
    from stepvideo.models.text_encoders import build_tiny_text_encoders

    te = params.text_encoders
    out = root / OUTPUTS / "text_encoders"
    with tracking.run("text_encoders", experiment=params.tracking.experiment,
                      params={"text_encoders": dataclasses.asdict(te)},
                      tags={"params_hash": params.section_hash("text_encoders")}, parent_run_id=parent_run_id):
        if not (te.llm and te.clip):
            texts = sorted(set(_clean_captions(root).values()))
            build_tiny_text_encoders(texts, out, llm_dim=te.llm_dim, clip_dim=te.clip_dim, layers=te.layers,
                                     heads=te.heads, seed=te.seed, vocab_size=te.vocab_size,
                                     llm_max_length=te.llm_max_length, clip_max_length=te.clip_max_length)
        encoders = _load_encoders(params, root)
        versions = {k: e.version for k, e in encoders.items()}
        # what the later stages use, built here or given (the folder is the stage's DVC output either way)
        record = {k: {"version": e.version, "dim": e.dim,
                      "source": "built" if not (te.llm and te.clip) else getattr(te, k)} for k, e in encoders.items()}
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "encoders.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
        tracking.set_tags({f"{k}_version": v for k, v in versions.items()})
        tracking.log_metrics({f"{k}_dim": e.dim for k, e in encoders.items()})
        if params.tracking.register and not (te.llm and te.clip):  # built here: register them
            tracking.register_folder(out, "stepvideo-text-encoders", tags=versions)
    return {"folder": str(out), "versions": versions}


def stage_text_cache(params: Params, root: Path, parent_run_id: str | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Encode every clean caption once per (data version, encoder versions) into one safetensors file."""
    from stepvideo.data.text_cache import build_text_cache, texts_version

    texts = _clean_captions(root)
    out = root / OUTPUTS / "text_cache" / "text_cache.safetensors"
    with tracking.run("text_cache", experiment=params.tracking.experiment, parent_run_id=parent_run_id):
        encoders = _load_encoders(params, root)
        version = texts_version(texts)
        path = build_text_cache(texts, encoders, out, progress=progress, data_version=version)
        tracking.set_tags({"captions_version": version, **{f"{k}_version": e.version for k, e in encoders.items()}})
        tracking.log_metrics({"captions": len(texts), "bytes": path.stat().st_size})
    return {"cache": str(path), "captions": len(texts)}


def stage_vae(params: Params, root: Path, parent_run_id: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train (or fine-tune) the Video-VAE on the clean clips; held-out PSNR/SSIM and a side-by-side
    sample to MLflow; the folder registered as `stepvideo-vae` (alias `candidate`) with lineage tags.

    Checkpoints live in `.cache/vae/<run key>/` (outside DVC's outs, which it deletes before a run),
    so an interrupted run resumes from its last checkpoint whichever driver restarts it."""
    import shutil

    from stepvideo.models.io import replace_folder
    from stepvideo.training.vae_trainer import load_clips, train_vae, train_vae_recipe

    vp = params.vae
    clean, rows = _clean_rows(root)
    stage1, cfg = vae_train_config(params, root)
    captions_version = tracking.file_hash(clean)
    work = root / ".cache" / "vae" / f"{params.section_hash('vae')}-{captions_version}"
    out = root / OUTPUTS / "vae"
    version = _data_version(params, root)
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
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(result["model_dir"], tmp)
        (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
        replace_folder(tmp, out)
        metrics = {k: v for k, v in result.items() if isinstance(v, (int, float))}
        # how much content the VAE keeps: the scorer on held-out clips before/after a round trip
        metrics.update(vae_content_metrics(out, clean, params.evaluate.vae_items, progress=progress))
        tracking.log_metrics(metrics)
        if result.get("sample_path"):
            tracking.log_artifact(result["sample_path"], "samples")
        registered = None
        if params.tracking.register:
            registered = tracking.register_folder(out, "stepvideo-vae", tags=lineage, aliases=("candidate",))
    return {"model_dir": str(out), "metrics": metrics, "registered_version": registered, "lineage": lineage}


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
        raise ValueError(f"vae.model must be one of {sorted(presets)}, got {vp.model!r}")
    model = presets[vp.model]()
    common = dict(batch_size=vp.batch_size, crop_size=vp.crop_size, image_prob=vp.image_prob, lr=vp.lr,
                  lr_schedule=vp.lr_schedule, warmup_steps=vp.warmup_steps, kl_weight=vp.kl_weight,
                  l2_weight=vp.l2_weight, edge_weight=vp.edge_weight, object_weight=vp.object_weight,
                  sample_posterior=vp.sample_posterior, disc_weight=vp.disc_weight,
                  disc_start_step=vp.disc_start_step, perceptual_weight=vp.perceptual_weight,
                  perceptual_backbone_path=vp.perceptual_backbone_path or None, seed=vp.seed,
                  checkpoint_every=vp.checkpoint_every, eval_max_items=vp.eval_max_items,
                  eval_every=vp.eval_every, eval_size=vp.eval_size)
    if vp.stage1_steps > 0:
        if vp.init_from:
            raise ValueError("vae.stage1_steps > 0 trains from scratch: leave vae.init_from empty")
        return two_stage_recipe(model, vp.stage1_steps, vp.adapt_steps, vp.mid_steps, vp.steps, **common)
    return None, VAETrainConfig(model=model.to_dict(), init_from=local_path(vp.init_from, root) or None,
                                steps=vp.steps,
                                dual_path_start_step=vp.dual_path_start_step, **common)


STAGES = {"data": stage_data, "version": stage_version, "validate": stage_validate,
          "text_encoders": stage_text_encoders, "text_cache": stage_text_cache, "train_vae": stage_vae,
          "latent_cache": stage_latent_cache, "t2i_pretrain": stage_t2i_pretrain, "t2v_lowres": stage_t2v_lowres,
          "t2v_highres": stage_t2v_highres, "sft": stage_sft, "dpo": stage_dpo,
          "evaluate": stage_evaluate, "bundle": stage_bundle, "promote": stage_promote}
