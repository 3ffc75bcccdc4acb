"""How `params.yaml` is read into the dataclasses of `stepvideo.config`: each override checked against
its field's type (`apply_overrides`), then ranges and choices over every section (`check_params`),
so a bad value fails as the file is read, naming the file and the key."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

from stepvideo.errors import InputError


class ParamsError(InputError):
    """A params file or override that does not fit the schema; the message names file and key."""


def apply_overrides(obj: Any, overrides: dict[str, Any], where: str) -> None:
    """Set ``overrides`` (a params file's mapping) on the dataclass ``obj``, section by section, each value
    checked against the field's type; ``where`` (the file) names the key in every error."""
    if not isinstance(overrides, dict):
        raise ParamsError(f"{where}: expected a mapping, got {type(overrides).__name__}")
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in overrides.items():
        if key not in names:
            raise ParamsError(f"{where}.{key}: unknown parameter (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            apply_overrides(current, value, f"{where}.{key}")
            continue
        optional = "None" in str(names[key].type)  # `float | None`: null allowed, else a number
        if optional and value is None:
            setattr(obj, key, None)
            continue
        if optional and current is None and "float" in str(names[key].type):
            current = 0.0
        if isinstance(current, bool) and not isinstance(value, bool):
            raise ParamsError(f"{where}.{key}: expected true/false, got {value!r}")
        if isinstance(current, (int, float)) and not isinstance(current, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParamsError(f"{where}.{key}: expected a number, got {value!r}")
            value = _float(value, f"{where}.{key}") if isinstance(current, float) else value
            if isinstance(current, int) and not isinstance(value, int):
                raise ParamsError(f"{where}.{key}: expected an integer, got {value!r}")
        elif isinstance(current, str) and not isinstance(value, str):
            raise ParamsError(f"{where}.{key}: expected text, got {value!r}")
        elif isinstance(current, list):
            value = _list_of(value, str(names[key].type), f"{where}.{key}")
        elif isinstance(current, dict):
            value = _dict_of(value, f"{where}.{key}")
        setattr(obj, key, copy.deepcopy(value))


def _float(value: int | float, where: str) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer with hundreds of digits
        raise ParamsError(f"{where}: {str(value)[:20]}... is too large a number") from None


def _list_of(value: Any, annotation: str, where: str) -> list:
    """A `list[float]` / `list[str]` field's value, checked (integers in a list of floats become floats)."""
    if not isinstance(value, list):
        raise ParamsError(f"{where}: expected a list, got {value!r}")
    if "list[float]" in annotation:
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in value):
            raise ParamsError(f"{where}: expected a list of numbers, got {value!r}")
        return [_float(x, where) for x in value]
    if "list[str]" in annotation and not all(isinstance(x, str) for x in value):
        raise ParamsError(f"{where}: expected a list of text values, got {value!r}")
    return value


def _dict_of(value: Any, where: str) -> dict:
    """A `dict[str, int]` field's value (bucket_batch_sizes), checked."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                              for k, v in value.items()):
        raise ParamsError(f"{where}: expected a mapping of text keys to integers, got {value!r}")
    return value


_AT_LEAST_ONE = {"batch_size", "grad_accum", "checkpoint_every", "log_every", "keep_checkpoints", "max_bad_steps",
                 "generate_batch_size", "candidates_per_prompt", "rounds", "sample_steps", "seeds", "lora_rank"}
_UNIT_INTERVAL = {"caption_dropout", "still_share", "min_lr_ratio", "ema_decay", "low_res_factor",
                  "reward_model_heldout", "image_prob", "min_quality", "lora_dropout"}


def _choices(section: str, key: str) -> tuple[str, ...] | None:
    if (section, key) == ("validate", "policy"):
        return ("fail", "quarantine")
    if (section, key) == ("finetune", "method"):
        return ("lora", "full")
    if (section, key) == ("dpo", "method"):
        return ("full", "lora")
    if (section, key) == ("flow", "pipeline"):
        return ("cascade", "finetune")
    if key == "lr_schedule":
        from stepvideo.training.schedule import LR_SCHEDULES

        return LR_SCHEDULES
    if key == "timestep_sampling":
        from stepvideo.diffusion.flow_matching import SAMPLERS

        return SAMPLERS
    if key == "precision":
        return ("auto", "bf16", "fp32")
    return None


def check_params(p: Any, where: str) -> None:
    """Range and choice checks on every section as the file is read, so `vae.steps: -5`, `lr: .inf`
    or `validate.policy: explode` fail at once, naming the file and the key, instead of deep inside
    the stage that first reads them."""
    for section in dataclasses.fields(p):
        value = getattr(p, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        for f in dataclasses.fields(value):
            key, v, name = f.name, getattr(value, f.name), f"{where}: {section.name}.{f.name}"
            if isinstance(v, bool) or v is None:
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ParamsError(f"{name}: must be a finite number, got {v}")
            if isinstance(v, (int, float)):
                if key in _AT_LEAST_ONE and v < 1:
                    raise ParamsError(f"{name}: must be at least 1, got {v}")
                if (key == "steps" or key.endswith(("_steps", "_step", "_every", "_items"))) and v < 0:
                    raise ParamsError(f"{name}: must be >= 0, got {v}")
                if (key in ("lr", "lora_alpha") or key.endswith("_lr")) and v <= 0:
                    raise ParamsError(f"{name}: must be > 0, got {v}")
                if (key.endswith(("_weight", "_fraction")) or key in ("weight_decay", "grad_clip")) and v < 0:
                    raise ParamsError(f"{name}: must be >= 0, got {v}")
                if (key in _UNIT_INTERVAL or key.endswith("_fraction")) and not 0 <= v <= 1:
                    raise ParamsError(f"{name}: must lie in [0, 1], got {v}")
            choices = _choices(section.name, key) if isinstance(v, str) else None
            if choices and v not in choices:
                raise ParamsError(f"{name}: must be one of {', '.join(choices)}, got {v!r}")
    _check_lora(p.finetune, "finetune", where)
    _check_lora(p.dpo, "dpo", where)
    _check_finetune(p.finetune, where)


def _check_lora(lp: Any, section: str, where: str) -> None:
    """What the generic checks cannot say of a section's LoRA fields (`finetune`, `dpo`)."""
    if lp.lora_dropout >= 1:
        raise ParamsError(f"{where}: {section}.lora_dropout: must be below 1, got {lp.lora_dropout}")
    if lp.method == "lora" and (not lp.lora_target_modules or not all(t.strip() for t in lp.lora_target_modules)):
        raise ParamsError(f"{where}: {section}.lora_target_modules: must name at least one module pattern "
                          f"(e.g. {_default(lp, 'lora_target_modules')[0]}), got {lp.lora_target_modules!r}")


def _check_finetune(fp: Any, where: str) -> None:
    """What the generic checks above cannot say of the `finetune` section."""
    if not fp.base.strip():
        raise ParamsError(f"{where}: finetune.base: must name the model to fine-tune (a bundle or DiT folder, "
                          "or models:/NAME@ALIAS)")


def _default(section: Any, name: str) -> Any:
    """The dataclass default of a section's field (its value in a fresh section)."""
    f = next(f for f in dataclasses.fields(section) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
