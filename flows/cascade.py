"""The cascade as a Prefect 3 flow: one task per pipeline stage, cached on the stage's real inputs.

Cache keys: `data` on its params section and the code version of `stepvideo.data`; `validate` on the
data version (DVC's hash), its params section and the code version. `version` always runs: `dvc add`
is incremental and is what tells the data version. `latent_cache` on the clean manifest, the VAE
folder, the encoder versions, its section and code; each DiT stage (t2i_pretrain -> t2v_lowres ->
t2v_highres -> sft) on the latent cache's key, the hash of the upstream model's weights, its
section and the code of the trainer/engine/model/diffusion; `dpo` on the SFT weights, the VAE, the
encoders, the clean data, the human labels and its section; `evaluate` on the judged DiTs' weights,
the VAE, the encoders, its section and the evaluation code; `bundle` on the shipped DiT's weights;
`promote` is never cached (the registry's champion may have moved).
With `flow.pipeline: finetune` (the `finetune-lora` preset) the flow runs data -> version ->
validate -> text encoders -> text cache -> latent cache (the base's VAE) -> `finetune` (cached on
the latent cache, the base's weights and its section) -> evaluate (base vs fine-tuned) -> bundle.
A cached task whose outputs were deleted runs again (the flow refreshes the cache entry when a
stage's outputs are missing).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from stepvideo import registry, stages, tracking
from stepvideo.config import Params, load_params
from stepvideo.stages.bundle import bundle_source, stage_bundle
from stepvideo.stages.common import OUTPUTS, latent_cache_key, local_path, model_hash, vae_folder
from stepvideo.stages.data import existing_data, stage_data, stage_ingest, stage_validate, stage_version
from stepvideo.stages.dit import DIT_PREVIOUS, stage_dit, stage_latent_cache
from stepvideo.stages.dpo import dpo_key, dpo_parent, stage_dpo
from stepvideo.stages.evaluate import judged_models, stage_evaluate
from stepvideo.stages.finetune import finetune_base, stage_finetune
from stepvideo.stages.promote import stage_promote
from stepvideo.stages.text import stage_text_cache, stage_text_encoders
from stepvideo.stages.vae import stage_vae
from stepvideo.errors import InputError


def _key(*parts: object) -> str:
    return "-".join(str(p) for p in parts)


def _data_key(ctx, args: dict) -> str:
    p: Params = args["params"]
    return _key("data", args["root"], p.section_hash("data"), stages.code_version("data"))


def _validate_key(ctx, args: dict) -> str:
    p: Params = args["params"]
    return _key("validate", args["root"], args["data_version"], p.section_hash("validate"),
                stages.code_version("validate"))


def _clean(args: dict) -> Path:
    return Path(args["root"]) / OUTPUTS / "validated" / "clean.jsonl"


def _text_encoders_key(ctx, args: dict) -> str:
    p: Params = args["params"]
    return _key("text_encoders", args["root"], tracking.file_hash(_clean(args)), p.section_hash("text_encoders"),
                stages.code_version("text_encoders"))


def _text_cache_key(ctx, args: dict) -> str:
    return _key("text_cache", args["root"], tracking.file_hash(_clean(args)), args["encoder_versions"],
                stages.code_version("text_cache"))


def _vae_key(ctx, args: dict) -> str:
    p: Params = args["params"]
    init = local_path(p.vae.init_from, Path(args["root"]))
    return _key("train_vae", args["root"], tracking.file_hash(_clean(args)), p.section_hash("vae"),
                _safe(model_hash, init) if init else "scratch",
                stages.code_version("train_vae"))


def _safe(fn, *args) -> str:
    """A key part that is 'missing' when its input is absent (the task then fails with a clear error)."""
    try:
        return str(fn(*args))
    except (OSError, ValueError):
        return "missing"


def _latent_cache_key(ctx, args: dict) -> str:
    p: Params = args["params"]
    return _key("latent_cache", args["root"], args["data_version"], _safe(tracking.file_hash, _clean(args)),
                _safe(_vae_hash, p, Path(args["root"])), args["encoder_versions"], p.section_hash("latent_cache"),
                stages.code_version("latent_cache"))


def _vae_hash(p: Params, root: Path) -> str:
    """The VAE the latent cache encodes with (train_vae's output, or `latent_cache.vae`)."""
    return tracking.file_hash(vae_folder(p, root))


def _upstream(root: Path, name: str, init_from: str) -> str:
    """The identity of the model a DiT stage starts from: its weights' hash (or the URI it names)."""
    init_from = local_path(init_from, root)
    if init_from:
        return init_from if init_from.startswith(("models:/", "runs:/")) else _safe(model_hash, init_from)
    prev = DIT_PREVIOUS[name]
    return "scratch" if prev is None else _safe(model_hash, root / OUTPUTS / "dit" / prev)


def _dit_key(ctx, args: dict) -> str:
    p: Params = args["params"]
    name, root = args["stage"], Path(args["root"])
    return _key(name, args["root"], latent_cache_key(root), _upstream(root, name, getattr(p, name).init_from),
                p.section_hash(name), p.tracking.register, stages.code_version(name))


def _bundle_key(ctx, args: dict) -> str:
    p: Params = args["params"]
    root = Path(args["root"])
    try:
        source = bundle_source(p, root)
        dit, sampler = model_hash(source["dit"]), p.section_hash(source["sampler_section"])
    except (OSError, ValueError):
        dit = sampler = "missing"
    return _key("bundle", args["root"], dit, _safe(_vae_hash, p, root), args["encoder_versions"], sampler,
                p.flow.pipeline, p.tracking.register, stages.code_version("bundle"))


@task(name="data", cache_key_fn=_data_key, persist_result=True, retries=1, retry_delay_seconds=2)
def data_task(params: Params, root: str, parent_run_id: str | None) -> dict[str, Any]:
    return stage_data(params, Path(root), parent_run_id=parent_run_id)


@task(name="ingest", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def ingest_task(params: Params, root: str, videos: str, captions: str, parent_run_id: str | None) -> dict[str, Any]:
    return stage_ingest(params, Path(root), Path(videos), Path(captions), parent_run_id=parent_run_id)


@task(name="version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def version_task(params: Params, root: str, push: bool, parent_run_id: str | None) -> dict[str, Any]:
    return stage_version(params, Path(root), push=push, parent_run_id=parent_run_id)


@task(name="validate", cache_key_fn=_validate_key, persist_result=True)
def validate_task(params: Params, root: str, data_version: str, parent_run_id: str | None) -> dict[str, Any]:
    return stage_validate(params, Path(root), parent_run_id=parent_run_id)


@task(name="text_encoders", cache_key_fn=_text_encoders_key, persist_result=True)
def text_encoders_task(params: Params, root: str, parent_run_id: str | None) -> dict[str, Any]:
    return stage_text_encoders(params, Path(root), parent_run_id=parent_run_id)


@task(name="text_cache", cache_key_fn=_text_cache_key, persist_result=True)
def text_cache_task(params: Params, root: str, encoder_versions: str, parent_run_id: str | None) -> dict[str, Any]:
    return stage_text_cache(params, Path(root), parent_run_id=parent_run_id)


@task(name="train_vae", cache_key_fn=_vae_key, persist_result=True, retries=1, retry_delay_seconds=5)
def vae_task(params: Params, root: str, parent_run_id: str | None) -> dict[str, Any]:
    return stage_vae(params, Path(root), parent_run_id=parent_run_id)


@task(name="latent_cache", cache_key_fn=_latent_cache_key, persist_result=True, retries=1, retry_delay_seconds=5)
def latent_cache_task(params: Params, root: str, data_version: str, encoder_versions: str,
                      parent_run_id: str | None) -> dict[str, Any]:
    return stage_latent_cache(params, Path(root), parent_run_id=parent_run_id)


@task(name="dit", task_run_name="{stage}", cache_key_fn=_dit_key, persist_result=True, retries=1,
      retry_delay_seconds=5)
def dit_task(stage: str, params: Params, root: str, parent_run_id: str | None) -> dict[str, Any]:
    """One DiT stage; a retry resumes from the stage's last checkpoint."""
    return stage_dit(stage, params, Path(root), parent_run_id=parent_run_id)


def _dpo_key(ctx, args: dict) -> str:
    """DPO on the SFT weights (or dpo.init_from), the VAE, the encoders, the data, the labels, its section."""
    p: Params = args["params"]
    root = Path(args["root"])
    try:
        key = dpo_key(p, root, dpo_parent(p, root)[0])
    except (OSError, ValueError):
        key = "missing"
    return _key("dpo", args["root"], key, p.tracking.register, stages.code_version("dpo"))


@task(name="dpo", cache_key_fn=_dpo_key, persist_result=True, retries=1, retry_delay_seconds=5)
def dpo_task(params: Params, root: str, parent_run_id: str | None) -> dict[str, Any]:
    """Video-DPO; a retry resumes from the candidates and checkpoints already written."""
    return stage_dpo(params, Path(root), parent_run_id=parent_run_id)


def _evaluate_key(ctx, args: dict) -> str:
    """evaluate on the judged DiTs' weights (SFT and DPO, or the finetune's base and result), the VAE,
    the encoders, its section (and dpo's: the reward) and the evaluation code."""
    p: Params = args["params"]
    root = Path(args["root"])
    try:
        judged = ",".join(f"{name}={model_hash(folder)}" for name, folder, _ in judged_models(p, root))
    except (OSError, ValueError):
        judged = "missing"
    return _key("evaluate", args["root"], judged, p.section_hash("dpo"), _safe(_vae_hash, p, root),
                args["encoder_versions"], p.section_hash("evaluate"), p.tracking.register,
                stages.code_version("evaluate"))


def _finetune_key(ctx, args: dict) -> str:
    """finetune on the latent cache, the base's weights (or its models:/ URI), its section."""
    p: Params = args["params"]
    root = Path(args["root"])
    base = p.finetune.base if p.finetune.base.startswith(("models:/", "runs:/")) else \
        _safe(lambda: finetune_base(p, root)["weights"])
    return _key("finetune", args["root"], latent_cache_key(root), base, p.section_hash("finetune"),
                p.section_hash("latent_cache"), p.text_encoders.llm, p.text_encoders.clip, p.tracking.register,
                stages.code_version("finetune"))


@task(name="finetune", cache_key_fn=_finetune_key, persist_result=True, retries=1, retry_delay_seconds=5)
def finetune_task(params: Params, root: str, parent_run_id: str | None) -> dict[str, Any]:
    """The finetune stage; a retry resumes from its last checkpoint (adapter + optimizer state for lora)."""
    return stage_finetune(params, Path(root), parent_run_id=parent_run_id)


@task(name="evaluate", cache_key_fn=_evaluate_key, persist_result=True)
def evaluate_task(params: Params, root: str, encoder_versions: str, parent_run_id: str | None) -> dict[str, Any]:
    return stage_evaluate(params, Path(root), parent_run_id=parent_run_id)


@task(name="bundle", cache_key_fn=_bundle_key, persist_result=True)
def bundle_task(params: Params, root: str, encoder_versions: str, parent_run_id: str | None) -> dict[str, Any]:
    return stage_bundle(params, Path(root), parent_run_id=parent_run_id)


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(params: Params, root: str, parent_run_id: str | None) -> dict[str, Any]:
    """Promotion by alias gates; never cached: the registry's champion may have moved since."""
    return stage_promote(params, Path(root), parent_run_id=parent_run_id)


def _run(task_fn, cached: dict, name: str, outputs: Path | None = None, **kwargs) -> dict[str, Any]:
    if outputs is not None and not outputs.exists():
        task_fn = task_fn.with_options(refresh_cache=True)  # a cached result whose files are gone
    t0 = time.perf_counter()
    state = task_fn(return_state=True, **kwargs)
    cached[name] = state.name == "Cached"
    _SECONDS[name] = time.perf_counter() - t0
    return state.result()  # raises the stage's exception when it failed


_SECONDS: dict[str, float] = {}  # wall time of each task in the current flow run (cache hits included)


def _report(name: str, cached: dict, summary: str = "") -> str:
    """One line of the flow's report: stage, wall time, cache hit, its headline figures."""
    state = "cached" if cached.get(name) else f"{_SECONDS.get(name, float('nan')):6.1f} s"
    line = f"  {name:<14}{state:>9}  {summary}".rstrip()
    print(line)  # to Prefect's log; the CLI prints the whole report
    return line


@flow(name="stepvideo-cascade", log_prints=True)
def cascade(root: str = ".", params_file: str = "params.yaml", preset: str | None = None, source: str = "synth",
            videos: str | None = None, captions: str | None = None, push: bool = True) -> dict[str, Any]:
    """synth (or ingest, or `source='data'`: the data folder as it is) -> DVC add/push -> validate -> text encoders -> text-embedding cache -> VAE
    -> latent cache -> t2i_pretrain -> t2v_lowres -> t2v_highres -> sft -> dpo -> evaluate -> bundle
    -> promote; with `flow.pipeline: finetune`: ... text-embedding cache -> latent cache (the base's
    VAE) -> finetune -> evaluate (base vs fine-tuned) -> bundle"""
    root_path = Path(root).resolve()
    params = load_params(root_path / params_file, preset)
    if source not in ("synth", "ingest", "data"):
        raise InputError(f"source must be 'synth', 'ingest' or 'data', got {source!r}")
    if source == "ingest" and not (videos and captions):
        raise InputError("source='ingest' needs videos= and captions=")
    cached: dict[str, bool] = {}
    report: list[str] = []
    _SECONDS.clear()
    with tracking.run("cascade", experiment=params.tracking.experiment, params=params.to_dict(),
                      tags={"preset": params.preset, "driver": "prefect", "source": source}) as parent:
        pid = parent.info.run_id
        if source == "synth":
            data = _run(data_task, cached, "data", root_path / params.data.out / "manifest.jsonl", params=params,
                        root=str(root_path), parent_run_id=pid)
        elif source == "ingest":
            data = _run(ingest_task, cached, "ingest", params=params, root=str(root_path), videos=videos,
                        captions=captions, parent_run_id=pid)
        else:  # the data folder as it is (synthesized or ingested before; what a retrain trains on)
            data, _SECONDS["data"] = existing_data(params, root_path), 0.0
        version = _run(version_task, cached, "version", params=params, root=str(root_path), push=push,
                       parent_run_id=pid)
        tracking.set_tags({"data_version": version["data_version"]})
        first = "ingest" if source == "ingest" else "data"
        report.append(_report(first, cached, ", ".join(f"{v} {k}" for k, v in data["metrics"].items())))
        report.append(_report("version", cached, f"data version {version['data_version']}"))
        validated = _run(validate_task, cached, "validate", root_path / OUTPUTS / "validated" / "report.json",
                         params=params, root=str(root_path),
                         data_version=version["data_version"], parent_run_id=pid)
        tracking.log_metrics({f"validate.{k}": v for k, v in validated["metrics"].items()})
        vm = validated["metrics"]
        report.append(_report("validate", cached, f"{vm['rows']} rows, {vm['bad_rows']} quarantined "
                                                  f"(clean {vm['clean_fraction']:.1%})"))
        out = root_path / OUTPUTS
        encoders = _run(text_encoders_task, cached, "text_encoders", out / "text_encoders", params=params,
                        root=str(root_path), parent_run_id=pid)
        versions = ",".join(f"{k}={v}" for k, v in sorted(encoders["versions"].items()))
        text_cache = _run(text_cache_task, cached, "text_cache", out / "text_cache" / "text_cache.safetensors",
                          params=params, root=str(root_path), encoder_versions=versions, parent_run_id=pid)
        report.append(_report("text_encoders", cached, versions))
        report.append(_report("text_cache", cached, f"{text_cache['captions']} captions"))
        common = {"run_id": pid, "report": report, "cached": cached, "data": data, "version": version,
                  "validate": validated, "text_encoders": encoders, "text_cache": text_cache}
        if params.flow.pipeline == "finetune":
            return {**common, **_finetune_pipeline(params, root_path, version["data_version"], versions, pid,
                                                   cached, report), "seconds": dict(_SECONDS)}
        vae = _run(vae_task, cached, "train_vae", out / "vae" / "config.json", params=params, root=str(root_path),
                   parent_run_id=pid)
        vam = vae["metrics"]
        kept = (f", scorer {vam['scorer_gt_overall']:.1%} on held-out clips -> {vam['scorer_vae_overall']:.1%} "
                f"after the VAE" if "scorer_vae_overall" in vam else "")
        report.append(_report("train_vae", cached, f"held-out PSNR {vam.get('heldout_psnr', float('nan')):.2f}"
                                                   f" dB, SSIM {vam.get('heldout_ssim', float('nan')):.4f}{kept}"))
        latents = _latent_cache(params, root_path, version["data_version"], versions, pid, cached, report)
        dits: dict[str, Any] = {}
        for name in DIT_PREVIOUS:  # t2i_pretrain -> t2v_lowres -> t2v_highres -> sft
            dits[name] = r = _run(dit_task, cached, name, out / "dit" / name / "config.json", stage=name,
                                  params=params, root=str(root_path), parent_run_id=pid)
            m = r["metrics"]
            extra = f", {m[name + '_excluded_low_quality']} low-quality rows left out" \
                if f"{name}_excluded_low_quality" in m else ""
            report.append(_report(name, cached, f"loss {m['loss_first']:.4f} -> {m['loss_last']:.4f} over "
                                                f"{m['step']} steps{extra}"))
        dpo = _run(dpo_task, cached, "dpo", out / "dit" / "dpo" / "config.json", params=params, root=str(root_path),
                   parent_run_id=pid)
        if dpo.get("skipped"):
            report.append(_report("dpo", cached, "skipped (dpo.enabled: false): the SFT model is final"))
        else:
            dm = dpo["metrics"]
            report.append(_report("dpo", cached, f"{dm['pairs']} pairs, implicit reward accuracy "
                                                 f"{dm['implicit_acc_first']:.2f} -> {dm['implicit_acc_last']:.2f}, "
                                                 f"margin {dm['reward_margin_first']:.3f} -> "
                                                 f"{dm['reward_margin_last']:.3f} ({registry.DPO})"))
        evaluation = _run(evaluate_task, cached, "evaluate", out / "eval" / "results.json", params=params,
                          root=str(root_path), encoder_versions=versions, parent_run_id=pid)
        em = evaluation["metrics"]
        vs_sft = (f"; SFT {em['eval_sft_overall']:.1%}, DPO wins {em['dpo_win_rate']:.1%} of pairs by the reward "
                  f"(95% CI {em['dpo_ci_low']:.1%}-{em['dpo_ci_high']:.1%}), per video colour noise "
                  f"{em.get('dpo_color_noise_change_mean', float('nan')):+.2f}, flicker "
                  f"{em.get('dpo_flicker_change_mean', float('nan')):+.3f} (over the "
                  f"{em.get('dpo_flicker_change_n', 0):.0f} videos with an object in both)"
                  if "dpo_win_rate" in em else "")
        report.append(_report("evaluate", cached, f"benchmark accuracy {em.get('eval_overall', float('nan')):.1%} "
                                                  f"(en {em.get('eval_lang_en', float('nan')):.1%}, zh "
                                                  f"{em.get('eval_lang_zh', float('nan')):.1%}) over "
                                                  f"{em['eval_videos']} videos{vs_sft}; {evaluation['report']}"))
        bundle = _run(bundle_task, cached, "bundle", out / "bundle" / "model_index.json", params=params,
                      root=str(root_path), encoder_versions=versions, parent_run_id=pid)
        report.append(_report("bundle", cached, f"{bundle['bundle']} (stepvideo-t2v@candidate)"))
        promoted = _run(promote_task, cached, "promote", params=params, root=str(root_path), parent_run_id=pid)
        report.append(_report("promote", cached, f"{promoted['summary']}; {promoted['report']}"
                              if promoted.get("summary") else f"skipped ({promoted.get('why')})"))
    return {**common, "seconds": dict(_SECONDS), "vae": vae, "latent_cache": latents, **dits, "dpo": dpo,
            "evaluate": evaluation, "bundle": bundle, "promote": promoted}


def _latent_cache(params: Params, root: Path, data_version: str, versions: str, pid: str, cached: dict,
                  report: list[str]) -> dict[str, Any]:
    latents = _run(latent_cache_task, cached, "latent_cache", root / OUTPUTS / "latent_cache" / "cache.json",
                   params=params, root=str(root), data_version=data_version, encoder_versions=versions,
                   parent_run_id=pid)
    lm = latents["metrics"]
    vae = f" (VAE {params.latent_cache.vae})" if params.latent_cache.vae else ""
    report.append(_report("latent_cache", cached, f"{lm['items']} items, {lm['media']} media, "
                                                  f"resolutions {latents['resolutions']}{vae}"))
    return latents


def _finetune_pipeline(params: Params, root: Path, data_version: str, versions: str, pid: str, cached: dict,
                       report: list[str]) -> dict[str, Any]:
    """flow.pipeline: finetune, after the text cache: latent cache (the base's VAE) -> finetune ->
    evaluate (base vs fine-tuned) -> bundle (`stepvideo-t2v@candidate`)."""
    out = root / OUTPUTS
    latents = _latent_cache(params, root, data_version, versions, pid, cached, report)
    tuned = _run(finetune_task, cached, "finetune", out / "finetune" / "dit" / "config.json", params=params,
                 root=str(root), parent_run_id=pid)
    m = tuned["metrics"]
    registered = f"{registry.LORA}/{tuned['adapter_version']}" if tuned.get("adapter_version") else "not registered"
    adapter = f", adapter {m['adapter_bytes'] / 2**20:.2f} MiB ({registered})" if "adapter_bytes" in m else ""
    report.append(_report("finetune", cached, f"{params.finetune.method}: loss {m['loss_first']:.4f} -> "
                                              f"{m['loss_last']:.4f} over {m['step']} steps, "
                                              f"{m['trainable_parameters']:.0f} trainable parameters{adapter}"))
    evaluation = _run(evaluate_task, cached, "evaluate", out / "eval" / "results.json", params=params,
                      root=str(root), encoder_versions=versions, parent_run_id=pid)
    em = evaluation["metrics"]
    report.append(_report("evaluate", cached, f"fine-tuned {em.get('eval_overall', float('nan')):.1%} vs base "
                                              f"{em.get('eval_base_overall', float('nan')):.1%} over "
                                              f"{em['eval_videos']} videos each; fine-tuned wins "
                                              f"{em.get('finetune_win_rate', float('nan')):.1%} by the reward; "
                                              f"{evaluation['report']}"))
    bundle = _run(bundle_task, cached, "bundle", out / "bundle" / "model_index.json", params=params,
                  root=str(root), encoder_versions=versions, parent_run_id=pid)
    version = bundle["registered_version"]
    report.append(_report("bundle", cached, f"{bundle['bundle']} ("
                                            f"{f'{registry.BUNDLE}/{version}@candidate' if version else 'not registered'})"))
    return {"latent_cache": latents, "finetune": tuned, "evaluate": evaluation, "bundle": bundle}
