"""Fuzzing the benchmark-prompt parser (issue 23): evaluation.prompts.parse_prompt on any text (and on
text made of the domain's own words), and load_benchmark on any bytes and on real rows with one value
replaced by an arbitrary JSON value.

Property: an attribute record or PromptParseError quoting the prompt; load_benchmark gives prompts or
an InputError naming file:line; never another exception type. The `@example`s raised a TypeError
(an unhashable value looked up in a vocabulary table) before the fix.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stepvideo.data import synth
from stepvideo.errors import InputError
from stepvideo.evaluation.prompts import BENCHMARK_FILE, EN_WORDS, PromptParseError, load_benchmark, parse_prompt

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

ROWS = [json.loads(line) for line in BENCHMARK_FILE.read_text(encoding="utf-8").splitlines()[:3]]
ZH_CHARS = "".join(sorted({ch for r in ROWS for ch in r["zh"]}))
words = st.lists(st.sampled_from(sorted(EN_WORDS) + [",", ".", "and", "then"]), max_size=14).map(" ".join)
zh_text = st.text(alphabet=ZH_CHARS, max_size=20)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=5)


def _parse(text, lang):
    try:
        attrs = parse_prompt(text, lang)
    except PromptParseError as e:
        assert repr(text)[:40] in str(e) or str(text)[:40] in str(e), f"the message does not quote the prompt: {e}"
        return None
    assert synth.check_attributes(attrs) == "", attrs
    return attrs


@FUZZ
@given(text=st.text(max_size=60) | words | zh_text | st.none() | st.integers(),
       lang=st.sampled_from([None, "en", "zh", "fr"]))
@example(text="A small red star stays still against a brown background.", lang=None)
@example(text="。", lang="zh")
def test_parse_prompt_any_text(text, lang):
    _parse(text, lang)


def test_parse_prompt_reads_the_benchmark_rows():
    for row in ROWS:
        for lang in ("en", "zh"):
            assert parse_prompt(row[lang], lang) == row["attributes"]


@FUZZ
@given(data=st.binary(max_size=200))
@example(data=b"\xff\n")  # was UnicodeDecodeError (fileio.read_jsonl)
def test_load_benchmark_any_bytes(tmp_path, data):
    path = tmp_path / "bench.jsonl"
    path.write_bytes(data)
    try:
        prompts = load_benchmark(path)
    except InputError as e:
        assert str(e).startswith(f"{path}")
        return
    assert prompts


def _set(row: dict, where: tuple, value) -> dict:
    row = json.loads(json.dumps(row))
    target = row
    for k in where[:-1]:
        target = target[k]
    target[where[-1]] = value
    return row


PLACES = [("id",), ("category",), ("en",), ("zh",), ("paraphrase",), ("attributes",), ("attributes", "background"),
          ("attributes", "camera"), ("attributes", "objects"), ("attributes", "objects", 0),
          ("attributes", "objects", 0, "shape"), ("attributes", "objects", 0, "color"),
          ("attributes", "objects", 0, "size"), ("attributes", "objects", 0, "action")]


@FUZZ
@given(line=st.integers(0, len(ROWS) - 1), where=st.sampled_from(PLACES), value=values)
@example(line=0, where=("attributes", "background"), value=["brown"])  # was TypeError: unhashable type: 'list'
@example(line=0, where=("attributes", "camera"), value={"a": 1})
@example(line=0, where=("attributes", "objects", 0, "shape"), value=[])
@example(line=0, where=("category",), value=["color"])
def test_load_benchmark_names_the_bad_row(tmp_path, line, where, value):
    rows = [_set(r, where, value) if i == line else r for i, r in enumerate(ROWS)]
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    try:
        prompts = load_benchmark(path)
    except InputError as e:
        assert str(e).startswith(f"{path}:{line + 1}: "), str(e)
        return
    assert [p.to_dict() for p in prompts] == rows  # a change the checks accept loses no row


def test_load_benchmark_keeps_every_row(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    assert [p.to_dict() for p in load_benchmark(path)] == ROWS
    with pytest.raises(InputError, match=r"bench.jsonl:2: duplicate id"):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in (ROWS[0], ROWS[0])), encoding="utf-8")
        load_benchmark(path)
