"""The one table of each stage's code: what a stage's cached result depends on.

Both drivers read it: the Prefect flow's cache keys hash these modules (:func:`code_version`) and
`dvc.yaml`'s code `deps` are these paths (:func:`code_paths`; tests/test_stage_code.py fails when
the two drift). A module listed here that changes re-runs the stage under either driver. A package
name covers every file in it.

Each stage lists the module that defines it and the helpers it calls (`stepvideo.pipeline` holds
the data/encoder/VAE stages and their config builders, `stepvideo.stages_dit` the latent cache, the
DiT stages and the bundle, `stepvideo.stage_utils` the shared stage helpers).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_STAGE = ("stepvideo.pipeline", "stepvideo.stage_utils")
_VAE_MODEL = ("stepvideo.models.vae", "stepvideo.models.vae_blocks", "stepvideo.models.io")
_DIT = ("stepvideo.stages_dit", "stepvideo.stage_utils", "stepvideo.training.dit_trainer", "stepvideo.training.engine",
        "stepvideo.training.checkpoint", "stepvideo.training.schedule", "stepvideo.training.ema",
        "stepvideo.models.dit", "stepvideo.models.attention", "stepvideo.models.rope", "stepvideo.models.io",
        "stepvideo.diffusion", "stepvideo.data.latent_cache", "stepvideo.generation")

STAGE_CODE: dict[str, tuple[str, ...]] = {
    "data": _STAGE + ("stepvideo.data",),
    "validate": _STAGE + ("stepvideo.data",),
    "text_encoders": _STAGE + ("stepvideo.models.text_encoders",),
    "text_cache": _STAGE + ("stepvideo.data.text_cache", "stepvideo.models.text_encoders"),
    "train_vae": _STAGE + _VAE_MODEL + ("stepvideo.training.vae_trainer", "stepvideo.training.checkpoint",
                                        "stepvideo.training.schedule"),
    "latent_cache": ("stepvideo.stages_dit", "stepvideo.stage_utils", "stepvideo.data.latent_cache",
                     "stepvideo.data.text_cache") + _VAE_MODEL,
    "t2i_pretrain": _DIT,
    "t2v_lowres": _DIT,
    "t2v_highres": _DIT,
    "sft": _DIT,
    "dpo": _DIT + ("stepvideo.stages_dpo", "stepvideo.preference", "stepvideo.training.dpo_trainer",
                   "stepvideo.evaluation.scorer", "stepvideo.evaluation.segment", "stepvideo.evaluation.prompts"),
    "evaluate": ("stepvideo.stages_eval", "stepvideo.stage_utils", "stepvideo.evaluation", "stepvideo.generation",
                 "stepvideo.preference.pairs"),
    "bundle": ("stepvideo.stages_dit", "stepvideo.stage_utils", "stepvideo.generation"),
    "promote": ("stepvideo.stages_promote", "stepvideo.stage_utils", "stepvideo.tracking.promotion",
                "stepvideo.evaluation"),
}


def _origin(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"stage code table: cannot locate module {module!r}")
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


__all__ = ["STAGE_CODE", "code_paths", "code_version"]
