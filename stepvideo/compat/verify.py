"""`stepvideo compat verify FILE`: run our module on an official golden-reference file.

A reference is `NAME.safetensors` (official weights under their state_dict names, plus
`__input__.*` / `__output__.*` tensors) beside `NAME.json` (the official constructor kwargs and what
was run). Which model it is comes from the JSON's content, never from the file name or its shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

from stepvideo.errors import InputError


class ReferenceFileError(InputError):
    pass


def load_meta(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ReferenceFileError(f"{path}: reference file not found")
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise ReferenceFileError(f"{meta_path}: the reference's JSON description is missing")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ReferenceFileError(f"{meta_path}: not valid JSON ({e})") from e


def verify(path: str | Path) -> tuple[str, dict[str, tuple[float, float]]]:
    """Returns (model kind, {output: (max_abs_diff, tolerance)})."""
    from stepvideo.compat import dit, vae

    meta = load_meta(path)
    if vae._is_vae_reference(meta):
        return "vae", vae.verify_vae_reference(path, meta)
    if dit._is_dit_reference(meta):
        return "dit", dit.verify_dit_reference(path, meta)
    raise ReferenceFileError(f"{Path(path).with_suffix('.json')}: not a VAE or DiT reference this version knows")
