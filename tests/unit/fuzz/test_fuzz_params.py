"""Fuzzing the params loader (issue 23): config.load_params on arbitrary bytes and on arbitrary
YAML-able structures shaped like params.yaml (real section and key names, any values).

Property: a Params whose every field has its declared type (so dump_params, the section hashes and
the stages can use it), or a ParamsError whose message names the file; never another exception.
The `@example`s raised a traceback, or loaded a value of the wrong type, before the fix.
"""

from __future__ import annotations

import dataclasses
import json

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stepvideo.config import Params, ParamsError, dump_params, load_params

FUZZ = settings(max_examples=80, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

SECTIONS = {f.name: f for f in dataclasses.fields(Params) if f.name != "preset"}
KEYS = sorted({k.name for f in SECTIONS.values() for k in dataclasses.fields(f.default_factory())})
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300, max_value=10**400)
           | st.floats() | st.text(max_size=8) | st.dates())
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4) | st.integers(),
                                                                                  c, max_size=3), max_leaves=5)
sections = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), values, max_size=4)
documents = st.dictionaries(st.sampled_from(sorted(SECTIONS)) | st.just("preset") | st.text(max_size=6),
                            sections | values, max_size=3)
DEEP = b"a: " + b"[" * 3000 + b"]" * 3000 + b"\n"


def _check_types(p: Params) -> None:
    """Every field holds its default's type (numbers: int for int, float for float; None where optional)."""
    for section, f in SECTIONS.items():
        value, default = getattr(p, section), f.default_factory()
        for k in dataclasses.fields(default):
            v, d = getattr(value, k.name), getattr(default, k.name)
            if v is None:
                assert "None" in str(k.type), f"{section}.{k.name} is None"
                continue
            want = float if "float" in str(k.type) and not isinstance(d, (list, dict)) else type(d)
            assert type(v) is want, f"{section}.{k.name}: {v!r} is not {want.__name__}"
            if isinstance(v, list) and d:
                assert all(type(x) is type(d[0]) for x in v), f"{section}.{k.name}: {v!r}"
            if isinstance(v, dict):
                assert all(isinstance(a, str) and type(b) is int for a, b in v.items()), f"{section}.{k.name}: {v!r}"
    json.dumps(p.to_dict())
    p.training_hash()
    yaml.safe_load(dump_params(p))


def _load(path):
    try:
        p = load_params(path)
    except ParamsError as e:
        assert str(path) in str(e), f"the message does not name the file: {e}"
        return None
    _check_types(p)
    return p


@FUZZ
@given(data=st.binary(max_size=120))
@example(data=DEEP)  # was RecursionError out of yaml's composer
@example(data=b"\xff\xfe")  # not UTF-8
@example(data=b"preset: nope\n")  # was "unknown preset 'nope'" without the file's name
def test_load_params_any_bytes(tmp_path, data):
    path = tmp_path / "params.yaml"
    path.write_bytes(data)
    _load(path)


@FUZZ
@given(doc=documents)
@example(doc={"vae": {"lr": 10**400}})  # was OverflowError (int too large to convert to float)
@example(doc={"vae": {"model": ["demo"]}})  # was loaded: a list in a text field
@example(doc={"validate": {"languages": "en"}})  # was loaded: text where a list of languages goes
@example(doc={"vae": {"betas": ["a", None]}})  # was loaded: betas that are not numbers
@example(doc={"sft": {"bucket_batch_sizes": {"1x2x2": "many"}}})  # was loaded: a batch size that is text
@example(doc={"tracking": {"experiment": 5}})  # was loaded: a number as the experiment's name
@example(doc={"data": {"out": "2001-01-01"}, "evaluate": {"prompts": None}})
@example(doc={"preset": ["demo"]})  # was "unknown preset \"['demo']\"" without the file's name
def test_load_params_any_structure(tmp_path, doc):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    _load(path)


def test_a_valid_override_still_loads(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("preset: demo\nvae:\n  lr: 2\n  betas: [0.5, 1]\n  model: small\nvalidate:\n  languages: [en]\n"
                    "sft:\n  bucket_batch_sizes: {1x8x8: 4}\n  still_share: null\n", encoding="utf-8")
    p = _load(path)
    assert p.vae.lr == 2.0 and type(p.vae.lr) is float and p.vae.betas == [0.5, 1.0] and p.vae.model == "small"
    assert p.validate.languages == ["en"] and p.sft.bucket_batch_sizes == {"1x8x8": 4} and p.sft.still_share is None
