"""The cascade's stages, one module per concern, and the one table of each stage's code.

    data (synth | ingest) -> version (DVC) -> validate -> text_encoders -> text_cache -> train_vae
      -> latent_cache -> t2i_pretrain -> t2v_lowres -> t2v_highres -> sft -> dpo -> evaluate -> bundle
      -> promote

    the `finetune` pipeline (flow.pipeline: finetune): data -> version -> validate -> text_encoders
      -> text_cache -> latent_cache (the base's VAE) -> finetune -> evaluate (base vs fine-tuned) -> bundle

Each stage is a plain function `(params, root, parent_run_id=None, ...) -> dict` that reads its
inputs from paths under the project, writes its outputs, records itself in MLflow and returns paths
and metrics. Both drivers call them: the Prefect flow (`flows/cascade.py`) and `dvc repro` through
`stepvideo stage NAME` (:data:`STAGES`). Modules: `data` (data, ingest, version, validate), `text`
(text encoders, text cache), `vae`, `dit` (latent cache and the four DiT stages), `dpo`, `finetune`
(a released DiT with a LoRA adapter or in full), `evaluate`, `bundle`, `promote`; `common` holds the helpers they share.

:data:`STAGE_CODE` is what a stage's cached result depends on. The Prefect flow's cache keys hash
these modules (:func:`code_version`) and `dvc.yaml`'s code `deps` are these paths (:func:`code_paths`;
tests/unit/stages/test_stage_code.py fails when the two drift). A module listed here that changes re-runs the
stage under either driver; a package name covers every file in it. Importing this package imports
no stage module: :data:`STAGES` resolves each function on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from stepvideo.errors import InputError

_COMMON = ("stepvideo.stages.common",)
_VAE_MODEL = ("stepvideo.models.vae", "stepvideo.models.vae_blocks", "stepvideo.models.causal_conv",
              "stepvideo.models.winograd", "stepvideo.models.subpixel", "stepvideo.models.vae_tiling",
              "stepvideo.models.io")
_SCORER = ("stepvideo.evaluation.scorer", "stepvideo.evaluation.segment", "stepvideo.data.synth",
           "stepvideo.data.vocabulary")  # the scorer and the words and shapes it judges by
_DIT = ("stepvideo.stages.dit", "stepvideo.stages.common", "stepvideo.training.dit_trainer", "stepvideo.training.engine",
        "stepvideo.training.checkpoint", "stepvideo.training.schedule", "stepvideo.training.ema",
        "stepvideo.training.loop", "stepvideo.models.dit", "stepvideo.models.attention", "stepvideo.models.rope",
        "stepvideo.models.io", "stepvideo.diffusion", "stepvideo.data.latent_cache", "stepvideo.pipelines",
        "stepvideo.parallel")

STAGE_CODE: dict[str, tuple[str, ...]] = {
    "data": _COMMON + ("stepvideo.stages.data", "stepvideo.data"),
    "validate": _COMMON + ("stepvideo.stages.data", "stepvideo.data"),
    "text_encoders": _COMMON + ("stepvideo.stages.text", "stepvideo.models.text_encoders",
                                "stepvideo.models.tiny_text", "stepvideo.models.io", "stepvideo.data.vocabulary"),
    "text_cache": _COMMON + ("stepvideo.stages.text", "stepvideo.data.text_cache", "stepvideo.models.text_encoders",
                   "stepvideo.models.io"),
    "train_vae": _COMMON + _VAE_MODEL + _SCORER + ("stepvideo.stages.vae", "stepvideo.evaluation.runner",
                                                   "stepvideo.training.vae_trainer", "stepvideo.training.vae_losses",
                                         "stepvideo.training.checkpoint", "stepvideo.training.schedule"),
    "latent_cache": ("stepvideo.stages.dit", "stepvideo.stages.common", "stepvideo.data.latent_cache",
                     "stepvideo.data.text_cache") + _VAE_MODEL,
    "t2i_pretrain": _DIT,
    "t2v_lowres": _DIT,
    "t2v_highres": _DIT,
    "sft": _DIT,
    "dpo": _DIT + _SCORER + ("stepvideo.stages.dpo", "stepvideo.preference", "stepvideo.training.dpo_trainer",
                             "stepvideo.evaluation.prompts", "stepvideo.training.lora", "stepvideo.models.lora"),
    "finetune": _DIT + ("stepvideo.stages.finetune", "stepvideo.training.lora", "stepvideo.models.lora",
                        "stepvideo.compat.dit"),
    "evaluate": ("stepvideo.stages.evaluate", "stepvideo.stages.common", "stepvideo.stages.dit", "stepvideo.stages.dpo",
                 "stepvideo.stages.finetune", "stepvideo.evaluation", "stepvideo.pipelines", "stepvideo.preference.pairs", "stepvideo.data.synth",
                 "stepvideo.data.vocabulary"),
    "bundle": ("stepvideo.stages.bundle", "stepvideo.stages.common", "stepvideo.stages.dit", "stepvideo.stages.dpo",
               "stepvideo.pipelines"),
    "promote": ("stepvideo.stages.promote", "stepvideo.stages.common", "stepvideo.registry.promotion",
                "stepvideo.evaluation", "stepvideo.data.synth", "stepvideo.data.vocabulary"),
}


# stage -> (module, function) in cascade order: what `stepvideo stage NAME` and the flow run
_STAGE_FUNCTIONS: dict[str, tuple[str, str]] = {
    "data": ("data", "stage_data"), "version": ("data", "stage_version"), "validate": ("data", "stage_validate"),
    "text_encoders": ("text", "stage_text_encoders"), "text_cache": ("text", "stage_text_cache"),
    "train_vae": ("vae", "stage_vae"), "latent_cache": ("dit", "stage_latent_cache"),
    "t2i_pretrain": ("dit", "stage_t2i_pretrain"), "t2v_lowres": ("dit", "stage_t2v_lowres"),
    "t2v_highres": ("dit", "stage_t2v_highres"), "sft": ("dit", "stage_sft"), "dpo": ("dpo", "stage_dpo"),
    "finetune": ("finetune", "stage_finetune"),
    "evaluate": ("evaluate", "stage_evaluate"), "bundle": ("bundle", "stage_bundle"),
    "promote": ("promote", "stage_promote"),
}


class _Stages(Mapping[str, Callable[..., dict]]):
    """name -> stage function, in cascade order; a stage's module is imported when first asked for."""

    def __getitem__(self, name: str) -> Callable[..., dict]:
        module, function = _STAGE_FUNCTIONS[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), function)

    def __iter__(self) -> Iterator[str]:
        return iter(_STAGE_FUNCTIONS)

    def __len__(self) -> int:
        return len(_STAGE_FUNCTIONS)

    def __repr__(self) -> str:
        return f"STAGES({', '.join(_STAGE_FUNCTIONS)})"


STAGES: Mapping[str, Callable[..., Any]] = _Stages()


def _origin(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise InputError(f"stage code table: cannot locate module {module!r}")
    return Path(spec.origin)


def code_paths(stage: str) -> list[str]:
    """The stage's code as repository-relative paths (a package as its folder), sorted: its
    `dvc.yaml` code deps."""
    root = Path(__file__).resolve().parents[2]
    paths = set()
    for module in STAGE_CODE[stage]:
        origin = _origin(module).resolve()
        path = origin.parent if origin.name == "__init__.py" else origin
        paths.add(path.relative_to(root).as_posix())
    # a module inside a listed package is already covered by the package
    return sorted(p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths))


def code_version(stage: str) -> str:
    """Hash of the stage's code (:func:`stepvideo.tracking.code_version` of its modules): the code
    part of its Prefect cache key."""
    from stepvideo import tracking

    return tracking.code_version(*sorted(set(STAGE_CODE[stage])))


__all__ = ["STAGES", "STAGE_CODE", "code_paths", "code_version"]
