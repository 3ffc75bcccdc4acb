"""Helpers the stage modules share: where outputs live, the validated rows, the text encoders,
the data version and the identity of a model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stepvideo import tracking
from stepvideo.config import Params
from stepvideo.data.versioning import data_version
from stepvideo.errors import MissingError

OUTPUTS = "outputs"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the checkout: where release/ lives


def publish_model_folder(params: Params, folder: Path, model_name: str, lineage: dict[str, Any],
                         metrics: dict[str, float], step: int | None = None) -> str | None:
    """The end of every stage that makes a model: its metrics to the active MLflow run, then (with
    `tracking.register`) the folder registered as a new version of `model_name`, tagged with its
    lineage, alias `candidate`. Returns 'NAME/VERSION', or None when registration is off."""
    from stepvideo import registry

    tracking.log_metrics(metrics, step=step)
    if not params.tracking.register:
        return None
    return tracking.register_folder(folder, model_name, tags=lineage, aliases=(registry.CANDIDATE,))


def check_lora_targets(targets: list[str], dit_dir: Path, key: str) -> None:
    """Each LoRA target pattern (the params' `key`) must name a weight of the DiT folder `dit_dir` (a
    peft match: the module path or its tail), said before any training starts."""
    from safetensors import safe_open

    from stepvideo.errors import InputError
    from stepvideo.models.io import weight_files

    modules: set[str] = set()
    for f in weight_files(dit_dir):
        with safe_open(str(f), "pt") as handle:
            modules |= {k.removesuffix(".weight") for k in handle.keys() if k.endswith(".weight")}
    for t in targets:
        if not any(m == t or m.endswith("." + t) for m in modules):
            example = sorted(m for m in modules if m.startswith("transformer_blocks.0."))[:4]
            raise InputError(f"{key}: {t!r} matches no module of the base {dit_dir} (e.g. {', '.join(example)})")


def write_adapter_lineage(adapter_dir: Path, lineage: dict[str, Any]) -> dict[str, str]:
    """The adapter folder's own lineage.json: the run's `lineage` (with the merged DiT's
    `weights_hash`), the adapter's hash and the merged DiT's. Returns the registry tags for it."""
    adapter_hash = tracking.file_hash(adapter_dir / "adapter_model.safetensors")
    tags = {**lineage, "adapter_hash": adapter_hash, "merged_weights_hash": lineage["weights_hash"]}
    (adapter_dir / "lineage.json").write_text(json.dumps(tags, indent=2, sort_keys=True) + "\n")
    return {**tags, "weights_hash": adapter_hash}


def register_adapter(params: Params, adapter_dir: Path, tags: dict[str, str], stage: str,
                     parent_run_id: str) -> str | None:
    """Register a LoRA adapter folder as `stepvideo-lora` (alias candidate) in its own MLflow run
    (`<stage>.adapter`, nested under the stage's: one registered folder per run). None when
    registration is off."""
    from stepvideo import registry

    if not params.tracking.register:
        return None
    with tracking.run(f"{stage}.adapter", experiment=params.tracking.experiment, tags=tags,
                      parent_run_id=parent_run_id):
        return tracking.register_folder(adapter_dir, registry.LORA, tags=tags, aliases=(registry.CANDIDATE,))


def local_path(value: str, root: Path) -> str:
    """A folder named in params (`init_from`, `text_encoders.llm`, ...): a URI or absolute path as
    given; a relative one in the project `root`, else beside the package (the committed release,
    `release/stepvideo-tiny/...`, for a project folder outside the checkout)."""
    if not value or value.startswith(("models:/", "runs:/")) or "://" in value or Path(value).is_absolute():
        return value
    for base in (Path(root), PACKAGE_ROOT):
        if (base / value).exists():
            return str(base / value)
    return str(Path(root) / value)


def resolve_folder(value: str, root: Path, key: str) -> Path:
    """The model params `key` names, as a local folder: a path as :func:`local_path` finds it, or a
    `models:/NAME@ALIAS` / `runs:/` URI downloaded into `.cache/models/`; a MissingError names `key`."""
    import re

    value = local_path(value, root)
    uri = value.startswith(("models:/", "runs:/"))
    dst = Path(root) / ".cache" / "models" / re.sub(r"[^A-Za-z0-9._-]+", "_", value) if uri else None
    try:
        return tracking.resolve_model(value, dst)
    except MissingError as e:
        raise MissingError(f"{key}: {e}") from e


def vae_folder(params: Params, root: Path) -> Path:
    """The VAE the latent cache encodes with (and the DiTs trained on it decode with): `latent_cache.vae`
    (a VAE folder, a T2VPipeline bundle whose vae/ it takes, or a `models:/` URI of either) when set,
    else the train_vae stage's output."""
    if not params.latent_cache.vae:
        return root / OUTPUTS / "vae"
    folder = resolve_folder(params.latent_cache.vae, root, "latent_cache.vae")
    if (folder / "model_index.json").is_file():
        return bundle_component(folder, "vae")
    if not (folder / "config.json").is_file():
        raise MissingError(f"latent_cache.vae: {folder} is neither a VAE folder (config.json) nor a pipeline "
                           "bundle (model_index.json)")
    return folder


def bundle_component(bundle: Path, name: str) -> Path:
    """The folder of component `name` (dit, vae, llm, clip) of a T2VPipeline bundle, from its model_index.json."""
    from stepvideo.pipelines.components import read_model_index

    return Path(read_model_index(bundle, "T2VPipeline")["paths"][name])


def load_encoders(params: Params, root: Path) -> dict[str, Any]:
    from stepvideo.models.text_encoders import TextEncoder

    te = params.text_encoders
    built = root / OUTPUTS / "text_encoders"
    llm = local_path(te.llm, root) or built / "llm"
    clip = local_path(te.clip, root) or built / "clip"
    return {"llm": TextEncoder.from_pretrained(str(llm), kind="llm", max_length=te.llm_max_length),
            "clip": TextEncoder.from_pretrained(str(clip), kind="clip", max_length=te.clip_max_length)}


def project_data_version(params: Params, root: Path) -> str:
    dvc_file = root / f"{params.data.out}.dvc"
    return data_version(dvc_file) if dvc_file.is_file() else "untracked"


def clean_rows(root: Path) -> tuple[Path, list[dict]]:
    from stepvideo.data.manifest import read_manifest

    clean = root / OUTPUTS / "validated" / "clean.jsonl"
    rows = read_manifest(clean) if clean.is_file() else None
    if not rows:
        raise MissingError(f"{clean}: no validated clips; run the validate stage first")
    return clean, rows


def require_output(folder: Path, stage: str, marker: str = "config.json") -> Path:
    if not (folder / marker).is_file():
        raise MissingError(f"{folder}: no output of the `{stage}` stage; run it first (stepvideo stage {stage})")
    return folder


def model_hash(folder: str | Path) -> str:
    """Hash (16 hex) of a model folder's config.json and weights only: the identity of the weights,
    unmoved by the lineage/metrics/sample files beside them (which carry the git commit, timings)."""
    import hashlib

    from stepvideo.models.io import weight_files

    folder = Path(folder)
    h = hashlib.sha256()
    for f in [folder / "config.json", *weight_files(folder)]:
        h.update(f.name.encode())
        h.update(tracking.file_hash(f).encode())
    return h.hexdigest()[:16]


def latent_cache_key(root: Path) -> str:
    """The key of the project's latent cache ('missing' when there is none): cheap, for cache keys."""
    try:
        return str(json.loads((root / OUTPUTS / "latent_cache" / "cache.json").read_text(encoding="utf-8"))["key"])
    except (OSError, ValueError, KeyError):
        return "missing"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
