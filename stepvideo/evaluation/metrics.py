"""User metrics: your own per-video scores, computed beside the benchmark's checks.

A user metric is a plain function::

    def my_metric(frames: np.ndarray, prompt: str) -> dict[str, float]:
        ...

``frames`` is the decoded clip, uint8 of shape (T, H, W, 3), RGB, read-only (a metric must not
change what the next one sees); ``prompt`` is the text the video was generated from (English or
Chinese). It returns a mapping of score name -> finite float (ints and numpy scalars are fine; bools,
strings, NaN and inf are not). One metric may return several scores.

Naming: score names are kept as the metric returns them (``{"clip": 0.31}`` shows up as ``clip``
in the results and the report). They are not prefixed with the metric's name, so choose distinct
names: two metrics returning the same name for one video is an error.

A metric is named on the command line by a spec, ``package.module:function`` (importable from the
current environment) or ``path/to/file.py:function`` (imported from that file; its folder is not
added to ``sys.path``). :func:`load_metric` turns a spec into the function, :func:`run_metrics` runs
metrics on one video and validates what they return; anything wrong raises :class:`MetricError`
(a ValueError) that names the metric.

Example, a brightness score and a CLIP score from a local transformers model folder (no download)::

    # my_metrics.py
    import functools, os
    import numpy as np

    def brightness(frames, prompt):
        return {"brightness": float(frames.mean() / 255)}

    @functools.lru_cache(maxsize=1)          # load once, on first use: nothing runs at import
    def _clip():
        from transformers import CLIPModel, CLIPProcessor
        folder = os.environ["STEPVIDEO_CLIP_DIR"]
        return (CLIPModel.from_pretrained(folder, local_files_only=True).eval(),
                CLIPProcessor.from_pretrained(folder, local_files_only=True))

    def clip(frames, prompt):
        import torch
        model, processor = _clip()
        inputs = processor(text=[prompt], images=list(frames[:: max(1, len(frames) // 8)]),
                           return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            out = model(**inputs)
        img = torch.nn.functional.normalize(out.image_embeds, dim=-1)
        txt = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        return {"clip": float((img @ txt.T).mean())}

    # stepvideo eval run ... --metric my_metrics.py:brightness --metric my_metrics.py:clip

``examples/clip_score_metric.py`` is a complete version of the CLIP metric.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import numbers
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

Metric = Callable[[np.ndarray, str], Mapping[str, float]]


class MetricError(ValueError):
    """A metric that cannot be loaded, or that failed or returned something invalid; names the metric."""


def _is_file_spec(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import_file(spec: str, target: str):
    path = Path(target).expanduser()
    if not path.is_file():
        raise MetricError(f"metric {spec!r}: file {str(path)!r} does not exist")
    resolved = path.resolve()
    name = f"_stepvideo_metric_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise MetricError(f"metric {spec!r}: cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses, pickling and relative lookups need it registered
    try:
        module_spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[name]
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise MetricError(f"metric {spec!r}: importing {str(path)!r} failed: {type(e).__name__}: {e}") from e
    return module


def _import_module(spec: str, target: str):
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name and (target == e.name or target.startswith(e.name + ".")):
            raise MetricError(f"metric {spec!r}: no module named {e.name!r}") from e
        raise MetricError(f"metric {spec!r}: importing module {target!r} failed: {e}") from e
    except Exception as e:
        raise MetricError(f"metric {spec!r}: importing module {target!r} failed: {type(e).__name__}: {e}") from e


def load_metric(spec: str) -> Metric:
    """The function a spec names: ``package.module:function`` or ``path/to/file.py:function``
    (``function`` may be dotted, e.g. ``scorer.__call__``). Raises MetricError naming the spec for a
    malformed spec, a missing file or module, a failing import, a missing attribute or a non-callable."""
    if not isinstance(spec, str) or ":" not in spec:
        raise MetricError(f"metric {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'")
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise MetricError(f"metric {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'")
    module = _import_file(spec, target) if _is_file_spec(target) else _import_module(spec, target)
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = str(target) if _is_file_spec(target) else f"module {target!r}"
            raise MetricError(f"metric {spec!r}: {where} has no attribute {attr!r}") from None
    if not callable(obj):
        raise MetricError(f"metric {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj


def _named(metrics) -> dict[str, Callable]:
    """{name: fn} from a mapping, or from a list of callables and/or specs (a spec names itself,
    a callable its __name__)."""
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
    elif isinstance(metrics, Iterable) and not isinstance(metrics, (str, bytes)):
        items = []
        for m in metrics:
            if isinstance(m, str):
                items.append((m, load_metric(m)))
            else:
                items.append((getattr(m, "__name__", None) or repr(m), m))
    else:
        raise TypeError(f"metrics must be a mapping of name -> function or a list, got {type(metrics).__name__}")
    out: dict[str, Callable] = {}
    for name, fn in items:
        if not callable(fn):
            raise MetricError(f"metric {name!r}: {type(fn).__name__} is not callable")
        if name in out:
            raise MetricError(f"metric {name!r} given twice")
        out[str(name)] = fn
    return out


def load_metrics(specs: Iterable[str]) -> dict[str, Metric]:
    """{spec: function} for a list of specs (what `eval run --metric` collects)."""
    return _named(list(specs))


def validate_scores(name: str, value) -> dict[str, float]:
    """A metric's return value as {str: float}, or MetricError naming the metric and the problem."""
    if not isinstance(value, Mapping):
        raise MetricError(f"metric {name!r} returned {type(value).__name__}, expected a dict of name -> float")
    out: dict[str, float] = {}
    for key, v in value.items():
        if not isinstance(key, str) or not key:
            raise MetricError(f"metric {name!r} returned the key {key!r}; score names must be non-empty strings")
        if isinstance(v, np.ndarray) and v.ndim == 0:
            v = v[()]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise MetricError(f"metric {name!r}: score {key!r} is {type(v).__name__} {v!r:.60}, expected a float")
        f = float(v)
        if not math.isfinite(f):
            raise MetricError(f"metric {name!r}: score {key!r} is {f}, expected a finite float")
        out[key] = f
    return out


def run_metrics(metrics, frames: np.ndarray, prompt: str) -> dict[str, float]:
    """Run every metric on one clip and merge their scores (names kept as returned).

    ``metrics`` is {name: function} or a list of functions and/or specs. Each metric gets a read-only
    view of ``frames``. Raises MetricError naming the metric when it raises, returns something that
    is not a mapping of str -> finite float, or returns a score name another metric returned."""
    named = _named(metrics)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    scores: dict[str, float] = {}
    source: dict[str, str] = {}
    for name, fn in named.items():
        view = frames.view()
        view.flags.writeable = False
        try:
            value = fn(view, prompt)
        except Exception as e:
            raise MetricError(f"metric {name!r} raised {type(e).__name__}: {e}") from e
        for key, v in validate_scores(name, value).items():
            if key in scores:
                raise MetricError(f"metric {name!r} returned score {key!r}, already returned by metric "
                                  f"{source[key]!r}; score names must be distinct")
            scores[key], source[key] = v, name
    return scores
