"""The cascade as a Prefect 3 flow: one task per pipeline stage, cached on the stage's real inputs.

Cache keys: `data` on its params section and the code version of `stepvideo.data`; `validate` on the
data version (DVC's hash), its params section and the code version. `version` always runs: `dvc add`
is incremental and is what tells the data version. A cached task whose outputs were deleted runs
again (the flow refreshes the cache entry when a stage's outputs are missing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from stepvideo import pipeline, tracking
from stepvideo.config import Params, load_params


def _key(*parts: object) -> str:
    return "-".join(str(p) for p in parts)


def _data_key(ctx, args: dict) -> str:
    p: Params = args["params"]
    return _key("data", args["root"], p.section_hash("data"), tracking.code_version("stepvideo.data"))


def _validate_key(ctx, args: dict) -> str:
    p: Params = args["params"]
    return _key("validate", args["root"], args["data_version"], p.section_hash("validate"),
                tracking.code_version("stepvideo.data"))


def _clean(args: dict) -> Path:
    return Path(args["root"]) / pipeline.OUTPUTS / "validated" / "clean.jsonl"


def _text_encoders_key(ctx, args: dict) -> str:
    p: Params = args["params"]
    return _key("text_encoders", args["root"], tracking.file_hash(_clean(args)), p.section_hash("text_encoders"),
                tracking.code_version("stepvideo.models.text_encoders"))


def _text_cache_key(ctx, args: dict) -> str:
    return _key("text_cache", args["root"], tracking.file_hash(_clean(args)), args["encoder_versions"],
                tracking.code_version("stepvideo.data.text_cache"))


def _vae_key(ctx, args: dict) -> str:
    p: Params = args["params"]
    return _key("train_vae", args["root"], tracking.file_hash(_clean(args)), p.section_hash("vae"),
                tracking.code_version("stepvideo.models.vae", "stepvideo.models.vae_blocks",
                                      "stepvideo.training.vae_trainer"))


@task(name="data", cache_key_fn=_data_key, persist_result=True, retries=1, retry_delay_seconds=2)
def data_task(params: Params, root: str, parent_run_id: str | None) -> dict[str, Any]:
    return pipeline.stage_data(params, Path(root), parent_run_id=parent_run_id)


@task(name="ingest", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def ingest_task(params: Params, root: str, videos: str, captions: str, parent_run_id: str | None) -> dict[str, Any]:
    return pipeline.stage_ingest(params, Path(root), Path(videos), Path(captions), parent_run_id=parent_run_id)


@task(name="version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def version_task(params: Params, root: str, push: bool, parent_run_id: str | None) -> dict[str, Any]:
    return pipeline.stage_version(params, Path(root), push=push, parent_run_id=parent_run_id)


@task(name="validate", cache_key_fn=_validate_key, persist_result=True)
def validate_task(params: Params, root: str, data_version: str, parent_run_id: str | None) -> dict[str, Any]:
    return pipeline.stage_validate(params, Path(root), parent_run_id=parent_run_id)


@task(name="text_encoders", cache_key_fn=_text_encoders_key, persist_result=True)
def text_encoders_task(params: Params, root: str, parent_run_id: str | None) -> dict[str, Any]:
    return pipeline.stage_text_encoders(params, Path(root), parent_run_id=parent_run_id)


@task(name="text_cache", cache_key_fn=_text_cache_key, persist_result=True)
def text_cache_task(params: Params, root: str, encoder_versions: str, parent_run_id: str | None) -> dict[str, Any]:
    return pipeline.stage_text_cache(params, Path(root), parent_run_id=parent_run_id)


@task(name="train_vae", cache_key_fn=_vae_key, persist_result=True, retries=1, retry_delay_seconds=5)
def vae_task(params: Params, root: str, parent_run_id: str | None) -> dict[str, Any]:
    return pipeline.stage_vae(params, Path(root), parent_run_id=parent_run_id)


def _run(task_fn, cached: dict, name: str, outputs: Path | None = None, **kwargs) -> dict[str, Any]:
    if outputs is not None and not outputs.exists():
        task_fn = task_fn.with_options(refresh_cache=True)  # a cached result whose files are gone
    state = task_fn(return_state=True, **kwargs)
    cached[name] = state.name == "Cached"
    return state.result()  # raises the stage's exception when it failed


@flow(name="stepvideo-cascade", log_prints=True)
def cascade(root: str = ".", params_file: str = "params.yaml", preset: str | None = None, source: str = "synth",
            videos: str | None = None, captions: str | None = None, push: bool = True) -> dict[str, Any]:
    """synth (or ingest) -> DVC add/push -> validate -> text encoders -> text-embedding cache -> VAE -> ..."""
    root_path = Path(root).resolve()
    params = load_params(root_path / params_file, preset)
    if source not in ("synth", "ingest"):
        raise ValueError(f"source must be 'synth' or 'ingest', got {source!r}")
    if source == "ingest" and not (videos and captions):
        raise ValueError("source='ingest' needs videos= and captions=")
    cached: dict[str, bool] = {}
    with tracking.run("cascade", experiment=params.tracking.experiment, params=params.to_dict(),
                      tags={"preset": params.preset, "driver": "prefect", "source": source}) as parent:
        pid = parent.info.run_id
        if source == "synth":
            data = _run(data_task, cached, "data", root_path / params.data.out / "manifest.jsonl", params=params,
                        root=str(root_path), parent_run_id=pid)
        else:
            data = _run(ingest_task, cached, "ingest", params=params, root=str(root_path), videos=videos,
                        captions=captions, parent_run_id=pid)
        version = _run(version_task, cached, "version", params=params, root=str(root_path), push=push,
                       parent_run_id=pid)
        tracking.set_tags({"data_version": version["data_version"]})
        validated = _run(validate_task, cached, "validate", root_path / pipeline.OUTPUTS / "validated" / "report.json",
                         params=params, root=str(root_path),
                         data_version=version["data_version"], parent_run_id=pid)
        tracking.log_metrics({f"validate.{k}": v for k, v in validated["metrics"].items()})
        print(validated["summary"])
        out = root_path / pipeline.OUTPUTS
        encoders = _run(text_encoders_task, cached, "text_encoders", out / "text_encoders", params=params,
                        root=str(root_path), parent_run_id=pid)
        versions = ",".join(f"{k}={v}" for k, v in sorted(encoders["versions"].items()))
        text_cache = _run(text_cache_task, cached, "text_cache", out / "text_cache" / "text_cache.safetensors",
                          params=params, root=str(root_path), encoder_versions=versions, parent_run_id=pid)
        vae = _run(vae_task, cached, "train_vae", out / "vae" / "config.json", params=params, root=str(root_path),
                   parent_run_id=pid)
        print(f"VAE: held-out PSNR {vae['metrics'].get('heldout_psnr', float('nan')):.2f} dB, "
              f"SSIM {vae['metrics'].get('heldout_ssim', float('nan')):.4f}")
    return {"run_id": pid, "data": data, "version": version, "validate": validated, "text_encoders": encoders,
            "text_cache": text_cache, "vae": vae, "cached": cached}
