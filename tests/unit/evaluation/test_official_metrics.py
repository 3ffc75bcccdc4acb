"""The official Step-Video-T2V-Eval prompt format and the user-metric hook."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from stepvideo.evaluation.metrics import MetricError, load_metric, load_metrics, run_metrics
from stepvideo.evaluation.official import OFFICIAL_CATEGORIES, detect_lang, load_official



# ---------------------------------------------------------------- official format

def _ranges(per: int = 2) -> dict:
    return {c: [i * per + 1, i * per + per] for i, c in enumerate(OFFICIAL_CATEGORIES)}


def _write(tmp_path, lines: list[str], ranges: dict, suffix: str = ".json", trailing: str = "\n") -> tuple[Path, Path]:
    prompts = tmp_path / "Step-Video-T2V-Eval"
    prompts.write_text("\n".join(lines) + trailing, encoding="utf-8")
    cats = tmp_path / f"categories{suffix}"
    if suffix == ".json":
        cats.write_text(json.dumps(ranges), encoding="utf-8")
    else:
        import yaml

        cats.write_text(yaml.safe_dump(ranges, allow_unicode=True), encoding="utf-8")
    return prompts, cats


def _lines(n: int = 22) -> list[str]:
    return [f"一只猫在草地上奔跑 {i}" if i % 2 else f"  A dog runs on the grass {i}  " for i in range(1, n + 1)]


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_load_official(tmp_path, suffix):
    prompts, cats = _write(tmp_path, _lines(), _ranges(), suffix, trailing="\n\n  \n")
    rows = load_official(prompts, cats)
    assert len(rows) == 22
    assert rows[0] == {"id": "o001", "category": "Sports", "prompt": "一只猫在草地上奔跑 1", "lang": "zh", "line": 1}
    assert rows[1] == {"id": "o002", "category": "Sports", "prompt": "A dog runs on the grass 2", "lang": "en", "line": 2}
    assert [r["category"] for r in rows[::2]] == list(OFFICIAL_CATEGORIES)
    assert rows[-1]["id"] == "o022" and rows[-1]["category"] == "Style"


def test_load_official_alias_and_no_trailing_newline(tmp_path):
    ranges = _ranges()
    ranges["Combination Concepts"] = ranges.pop("Combined Concepts")  # the upstream README's spelling
    prompts, cats = _write(tmp_path, _lines(), ranges, trailing="")
    assert {r["category"] for r in load_official(prompts, cats)} == set(OFFICIAL_CATEGORIES)


def test_detect_lang():
    assert detect_lang("一只猫") == "zh" and detect_lang("a cat, 3D") == "en" and detect_lang("猫 cat") == "zh"


def _error(tmp_path, lines=None, ranges=None, **kw) -> str:
    prompts, cats = _write(tmp_path, _lines() if lines is None else lines, _ranges() if ranges is None else ranges, **kw)
    with pytest.raises(ValueError) as e:
        load_official(prompts, cats)
    return str(e.value)


def test_official_errors(tmp_path):
    prompts = tmp_path / "Step-Video-T2V-Eval"
    # not UTF-8: names the file and the line
    _write(tmp_path, _lines(), _ranges())
    lines = _lines()
    lines[4] = "café au lait"
    prompts.write_bytes("\n".join(lines).encode("utf-8").replace("café".encode(), "café".encode("latin-1")))
    with pytest.raises(ValueError, match=r"Step-Video-T2V-Eval: line 5: not UTF-8"):
        load_official(prompts, tmp_path / "categories.json")

    lines = _lines()
    lines[6] = "   "
    msg = _error(tmp_path, lines)
    assert "line 7: empty line inside category 'Animals' [7, 8]" in msg and "Step-Video-T2V-Eval" in msg

    r = _ranges()
    r["Food"] = [2, 4]
    assert "'Sports' [1, 2] and 'Food' [2, 4] overlap" in _error(tmp_path, ranges=r)

    r = _ranges()
    r["Style"] = [21, 25]
    msg = _error(tmp_path, ranges=r)
    assert "categories.json" in msg and "'Style' [21, 25] is out of range" in msg and "22 prompt lines" in msg

    r = _ranges()
    r["Food"] = [3, 3]
    msg = _error(tmp_path, ranges=r)
    assert "1 line(s) not covered by any category" in msg and ": 4" in msg

    r = _ranges()
    r["Dance"] = [23, 24]
    assert "unknown category 'Dance'" in _error(tmp_path, ranges=r)

    r = _ranges()
    del r["People"], r["Style"]
    assert "missing categories: People, Style" in _error(tmp_path, ranges=r)

    for bad in ([3], [4, 3], [0, 2], ["1", "2"], [True, 2]):
        r = _ranges()
        r["Food"] = bad
        assert "category 'Food'" in _error(tmp_path, ranges=r), bad

    (tmp_path / "categories.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="categories.json: expected a mapping"):
        load_official(prompts, tmp_path / "categories.json")
    (tmp_path / "categories.json").write_text("{not json")
    with pytest.raises(ValueError, match="categories.json: not valid JSON"):
        load_official(prompts, tmp_path / "categories.json")
    with pytest.raises(ValueError, match="nope.json: categories file does not exist"):
        load_official(tmp_path / "Step-Video-T2V-Eval", tmp_path / "nope.json")
    with pytest.raises(ValueError, match="prompts file does not exist"):
        load_official(tmp_path / "missing", tmp_path / "categories.json")
    (tmp_path / "empty").write_text("\n\n")
    with pytest.raises(ValueError, match="empty: no prompts"):
        load_official(tmp_path / "empty", tmp_path / "categories.json")


# ---------------------------------------------------------------- metric hook

FRAMES = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)

METRIC_FILE = """
import numpy as np

def brightness(frames, prompt):
    return {"brightness": float(frames.mean() / 255), "prompt_chars": len(prompt)}

def np_scalar(frames, prompt):
    return {"np": np.float32(0.5), "zero_d": np.array(2.0)}

def mutate(frames, prompt):
    frames[0, 0, 0, 0] = 1
    return {}

def nan(frames, prompt):
    return {"score": float("nan")}

def text(frames, prompt):
    return {"score": "0.5"}

def as_list(frames, prompt):
    return [0.5]

def boolean(frames, prompt):
    return {"ok": True}

def boom(frames, prompt):
    raise RuntimeError("model folder missing")

NOT_CALLABLE = 3
"""


@pytest.fixture
def metric_file(tmp_path) -> Path:
    path = tmp_path / "my_metrics.py"
    path.write_text(METRIC_FILE)
    return path


def test_metric_from_module_and_file(metric_file, monkeypatch, tmp_path):
    fn = load_metric(f"{metric_file}:brightness")
    scores = run_metrics({"b": fn}, FRAMES, "a red square")
    assert scores == {"brightness": pytest.approx(FRAMES.mean() / 255), "prompt_chars": 12.0}
    assert all(type(v) is float for v in scores.values())
    # a module spec: importable from sys.path
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_metric("my_metrics:np_scalar")(FRAMES, "") is not None
    assert run_metrics([load_metric("my_metrics:np_scalar")], FRAMES, "") == {"np": 0.5, "zero_d": 2.0}
    # a list of specs names each metric by its spec; an installed module works too
    specs = [f"{metric_file}:brightness", "my_metrics:np_scalar"]
    assert list(load_metrics(specs)) == specs
    assert set(run_metrics(specs, FRAMES, "x")) == {"brightness", "prompt_chars", "np", "zero_d"}
    assert callable(load_metric("stepvideo.evaluation.official:detect_lang"))


def test_metric_load_errors(metric_file, tmp_path):
    cases = {
        "no_colon": "expected 'package.module:function'",
        f"{tmp_path}/missing.py:fn": "missing.py' does not exist",
        "no_such_pkg_xyz.mod:fn": "no module named 'no_such_pkg_xyz'",
        f"{metric_file}:absent": "has no attribute 'absent'",
        "stepvideo.evaluation.official:absent": "module 'stepvideo.evaluation.official' has no attribute 'absent'",
        f"{metric_file}:NOT_CALLABLE": "'NOT_CALLABLE' is a int, not a callable",
        f"{metric_file}:": "expected 'package.module:function'",
    }
    for spec, message in cases.items():
        with pytest.raises(MetricError) as e:
            load_metric(spec)
        assert message in str(e.value) and repr(spec) in str(e.value), (spec, str(e.value))
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('needs open_clip')\n")
    with pytest.raises(MetricError, match="importing .*broken.py' failed: ImportError: needs open_clip"):
        load_metric(f"{broken}:fn")


def test_metric_bad_returns(metric_file):
    cases = {"nan": "score 'score' is nan, expected a finite float",
             "text": "score 'score' is str '0.5', expected a float",
             "as_list": "returned list, expected a dict of name -> float",
             "boolean": "score 'ok' is bool",
             "boom": "raised RuntimeError: model folder missing",
             "mutate": "raised ValueError: assignment destination is read-only"}
    for name, message in cases.items():
        with pytest.raises(MetricError) as e:
            run_metrics({f"my:{name}": load_metric(f"{metric_file}:{name}")}, FRAMES, "p")
        assert f"metric 'my:{name}'" in str(e.value) and message in str(e.value), str(e.value)
    assert isinstance(e.value, ValueError)
    inf = lambda frames, prompt: {"x": math.inf}  # noqa: E731
    with pytest.raises(MetricError, match="metric 'inf': score 'x' is inf"):
        run_metrics({"inf": inf}, FRAMES, "p")
    with pytest.raises(MetricError, match="metric 'b' returned score 'brightness', already returned by metric 'a'"):
        fn = load_metric(f"{metric_file}:brightness")
        run_metrics({"a": fn, "b": fn}, FRAMES, "p")
    with pytest.raises(ValueError, match="frames must be uint8"):
        run_metrics([], FRAMES.astype(np.float32), "p")


def _tiny_clip(folder: Path) -> None:
    """A randomly initialised CLIP with a byte-level vocabulary, saved like a real model folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars = [chr(b) for b in bs] + [chr(256 + i) for i in range(256 - len(bs))]
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), max_position_embeddings=77, eos_token_id=eos,
                                         bos_token_id=bos, pad_token_id=eos, **tower),
                        vision_config=dict(image_size=32, patch_size=16, **tower), projection_dim=8)
    CLIPModel(config).save_pretrained(folder)


def test_example_clip_metric(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    spec = f"{REPO / 'examples' / 'clip_score_metric.py'}:clip_score"
    fn = load_metric(spec)  # importing runs nothing: no model folder is needed yet
    with pytest.raises(MetricError, match="STEPVIDEO_CLIP_DIR"):
        monkeypatch.delenv("STEPVIDEO_CLIP_DIR", raising=False)
        run_metrics({"clip": fn}, FRAMES, "a cat")
    _tiny_clip(tmp_path / "clip")
    monkeypatch.setenv("STEPVIDEO_CLIP_DIR", str(tmp_path / "clip"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scores = run_metrics({"clip": fn}, np.repeat(FRAMES, 4, axis=0), "a red square moving left")
    assert set(scores) == {"clip"} and -1.0 <= scores["clip"] <= 1.0
