"""The embedded benchmark's prompts: the file, the parser, and the held-out guarantee in synth."""

import copy
import json
import os
from collections import Counter

import numpy as np
import pytest

from stepvideo.config import preset
from stepvideo.data import synth
from stepvideo.data.manifest import read_manifest
from stepvideo.evaluation.checks import CATEGORIES, expected_checks
from stepvideo.evaluation.prompts import (BENCHMARK_FILE, PromptParseError, benchmark_jsonl, build_benchmark,
                                          load_benchmark, parse_prompt, write_benchmark)


@pytest.fixture(scope="module")
def bench():
    return load_benchmark()


def _demo_cfg() -> synth.SynthConfig:
    data = preset("demo").data
    return synth.SynthConfig(**{k: getattr(data, k) for k in synth.SynthConfig.__dataclass_fields__})


def _without_move2_speed(attrs: dict) -> dict:
    attrs = copy.deepcopy(attrs)
    for o in attrs["objects"]:
        if o.get("action") == "move2":
            del o["speed"]
    return attrs


# ---------------------------------------------------------------- the file

def test_128_prompts_in_the_11_categories_each_with_its_own_check(bench):
    assert [p.id for p in bench] == [f"b{i:03d}" for i in range(1, 129)]
    counts = Counter(p.category for p in bench)
    assert set(counts) == set(CATEGORIES) and min(counts.values()) >= 11 and sum(counts.values()) == 128
    for p in bench:
        assert synth.check_attributes(p.attributes) == "" and "camera" in p.attributes, p.id
        assert p.category in {c.category for c in expected_checks(p.attributes)}, p.id
        objects = p.attributes["objects"]
        assert len({o["color"] for o in objects}) == len(objects), p.id  # objects told apart by color
        assert len(objects) <= (3 if p.category == "count" else 2), p.id
        assert p.category == "camera" or p.attributes["camera"] == "static", p.id
    assert len({synth.scene_key(p.attributes) for p in bench}) == 128

    def values(category, get):
        return {get(p.attributes) for p in bench if p.category == category}

    assert values("count", lambda a: len(a["objects"])) == {1, 2, 3}
    assert values("camera", lambda a: a["camera"]) == set(synth.CAMERAS)
    assert values("background", lambda a: a["background"]) == set(synth.BACKGROUNDS)
    assert values("speed", lambda a: (a["objects"][0]["action"], a["objects"][0]["speed"])) == {
        ("move", "slow"), ("move", "fast")}
    assert values("sequence", lambda a: a["objects"][0]["action"]) == {"move2"}
    assert values("rotation", lambda a: a["objects"][0]["shape"]).isdisjoint({"circle"})
    assert values("size", lambda a: a["objects"][0]["action"]).isdisjoint({"grow", "shrink"})
    assert values("motion", lambda a: a["objects"][0]["path"][0] if "path" in a["objects"][0] else "still") == {
        "left", "right", "up", "down", "still"}


def test_the_file_is_versioned_and_reproducible(tmp_path):
    assert BENCHMARK_FILE.name == "embedded-v1.jsonl"
    assert synth.BENCHMARK_FILE == BENCHMARK_FILE.resolve()  # what synth holds out is this file
    text = BENCHMARK_FILE.read_text(encoding="utf-8")
    assert text == benchmark_jsonl(build_benchmark())
    for line in text.splitlines():
        row = json.loads(line)
        assert line == json.dumps(row, ensure_ascii=False, sort_keys=True)
    written = write_benchmark(tmp_path / "b.jsonl")
    assert written.read_text(encoding="utf-8") == text and os.listdir(tmp_path) == ["b.jsonl"]


def _write(tmp_path, rows) -> str:
    path = tmp_path / "bench.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def test_load_benchmark_names_file_line_and_problem(tmp_path):
    rows = [json.loads(line) for line in BENCHMARK_FILE.read_text(encoding="utf-8").splitlines()[:4]]
    assert len(load_benchmark(_write(tmp_path, rows))) == 4

    def fails(bad_rows, lineno, message):
        path = _write(tmp_path, bad_rows)
        with pytest.raises(ValueError, match=message) as e:
            load_benchmark(path)
        assert str(e.value).startswith(f"{path}:{lineno}:"), str(e.value)

    fails(rows[:2] + ["{not json"] + rows[3:], 3, "not valid JSON")
    fails(rows[:1] + [{**rows[1], "category": "style"}], 2, "unknown category 'style'")
    bad = copy.deepcopy(rows[0])
    bad["attributes"]["objects"][0]["color"] = "magenta"
    fails([bad], 1, "bad attributes: object 0: unknown color 'magenta'")
    fails(rows[:3] + [{**rows[3], "en": rows[2]["en"]}], 4, "the en prompt .* parses to .* not to the stored")
    fails([rows[0], {**rows[1], "zh": "一个大的粉色圆形保持静止，背景是灰色。"}], 2, "unknown color '粉色'")
    fails(rows[:2] + [{**rows[2], "id": rows[0]["id"]}], 3, "duplicate id 'b001' \\(first on line 1\\)")
    fails([{**rows[0], "paraphrase": "yes"}], 1, "paraphrase must be true or false")
    fails([{k: v for k, v in rows[0].items() if k != "zh"}], 1, "exactly the keys")
    size_row = next(json.loads(line) for line in BENCHMARK_FILE.read_text(encoding="utf-8").splitlines()
                    if json.loads(line)["category"] == "grow_shrink")
    fails([{**size_row, "category": "size"}], 1, "imply no 'size' check")
    with pytest.raises(ValueError, match="does not exist"):
        load_benchmark(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="no prompts"):
        load_benchmark(_write(tmp_path, []))


# ---------------------------------------------------------------- the parser

def test_parse_prompt_round_trips_synth_captions():
    rng = np.random.default_rng(123)
    seen = Counter()
    for i in range(400):
        video = i % 3 != 0
        attrs = synth.sample_attributes(rng, video)
        want = _without_move2_speed(attrs)
        for lang in ("en", "zh"):
            for template in range(6):  # every template of both kinds (3 video, 2 still)
                text = synth.caption(attrs, lang, template)
                assert parse_prompt(text) == want, text
                assert parse_prompt(text, lang) == want
        seen.update([("video" if video else "still", len(attrs["objects"]))])
        seen.update(o.get("action", "none") for o in attrs["objects"])
        seen.update([attrs.get("camera", "none")])
    assert all(seen[(kind, n)] for kind in ("video", "still") for n in (1, 2, 3))
    assert all(seen[a] for a in synth.ACTIONS) and all(seen[c] for c in synth.CAMERAS)


def test_paraphrase_phrasings_parse():
    big_red_circle = {"shape": "circle", "color": "red", "size": "large"}
    assert parse_prompt("There is a big red circle sliding to the left quickly, in front of a navy backdrop.") == {
        "background": "navy", "objects": [{**big_red_circle, "action": "move", "path": ["left"], "speed": "fast"}],
        "camera": "static"}
    assert parse_prompt("深蓝色的背景前，一个大大的红色圆形迅速地向左滑动。") == parse_prompt(
        "There is a big red circle sliding to the left quickly, in front of a navy backdrop.")
    assert parse_prompt("A tiny cyan star spins anti-clockwise and a big red circle gets bigger; the background is "
                        "dark blue. The camera pulls back.") == {
        "background": "navy", "camera": "zoom_out",
        "objects": [{"shape": "star", "color": "cyan", "size": "small", "action": "rotate_ccw"},
                    {**big_red_circle, "action": "grow"}]}
    assert parse_prompt("画面中，一个中号的白色菱形先往上漂移，接着向右漂移，背景为褐色。镜头缓缓向左摇。") == {
        "background": "brown", "camera": "pan_left",
        "objects": [{"shape": "diamond", "color": "white", "size": "medium", "action": "move2",
                     "path": ["up", "right"]}]}
    for word in ("counterclockwise", "counter-clockwise", "anticlockwise", "anti-clockwise"):
        attrs = parse_prompt(f"A little blue square turns {word} on a black background.")
        assert attrs["objects"][0]["action"] == "rotate_ccw" and attrs["camera"] == "static"
    # no action at all: a still (no camera, no action); a camera sentence alone makes it a clip
    assert parse_prompt("A big red circle on a gray background.") == {"background": "gray", "objects": [big_red_circle]}
    clip = parse_prompt("A big red circle on a gray background. The camera zooms in.")
    assert clip["camera"] == "zoom_in" and clip["objects"][0]["action"] == "still"


@pytest.mark.parametrize("text, problem", [
    ("A large magenta circle moves left slowly on a gray background.", "unknown color 'magenta'"),
    ("A large red hexagon moves left slowly on a gray background.", "unknown shape 'hexagon'"),
    ("A large red circle moves left slowly on a pink background.", "unknown background color 'pink'"),
    ("A large red circle dances on a gray background.", "unknown word 'dances'"),
    ("A large red circle moves left on a gray background.", "a move needs one speed word"),
    ("A large red circle grows larger.", "names no background"),
    ("On a gray background.", "found no object"),
    ("A large red circle grows on a gray background. The camera pans left. The camera zooms in.",
     "more than one camera movement"),
    ("A small red circle grows, a small blue circle grows, a small green circle grows, while a small white circle "
     "grows on a gray background.", "4 objects"),
    ("一个大的粉色圆形缓慢地向左移动，背景是灰色。", "unknown color '粉色'"),
    ("一个大的红色六边形缓慢地向左移动，背景是灰色。", "no known shape"),
    ("粉色背景上，一个大的红色圆形缓慢地向左移动。", "unknown background color '粉色'"),
    ("灰色背景上，一个大的红色圆形跳舞。", "did not understand what '一个大的红色圆形' does: '跳舞'"),
    ("灰色背景上，一个红色圆形保持静止。", "names no size"),
])
def test_parse_errors_quote_the_prompt_and_say_what_was_not_understood(text, problem):
    with pytest.raises(PromptParseError) as e:
        parse_prompt(text)
    assert isinstance(e.value, ValueError)
    assert repr(text) in str(e.value) and problem in str(e.value), str(e.value)


def test_parse_errors_on_empty_text_and_unknown_language():
    with pytest.raises(PromptParseError, match="empty"):
        parse_prompt("  ")
    with pytest.raises(PromptParseError, match="unknown language 'fr'"):
        parse_prompt("A big red circle on a gray background.", "fr")


def test_english_and_chinese_prompts_agree(bench):
    for p in bench:
        assert parse_prompt(p.en) == parse_prompt(p.zh) == p.attributes, p.id


def test_paraphrases_are_new_phrasings(bench):
    paraphrases = [p for p in bench if p.paraphrase]
    assert len(paraphrases) >= 0.25 * len(bench)
    assert {p.category for p in paraphrases} == set(CATEGORIES)
    for p in bench:
        for lang in ("en", "zh"):
            captions = {synth.caption(p.attributes, lang, t) for t in range(6)}
            assert (getattr(p, lang) in captions) != p.paraphrase, (p.id, lang, getattr(p, lang))


# ---------------------------------------------------------------- held out of the synthetic data

def test_scene_key_is_canonical_and_ignores_move2_speed():
    a = {"background": "gray", "camera": "static",
         "objects": [{"shape": "star", "color": "red", "size": "small", "action": "move2", "path": ["left", "up"],
                      "speed": "fast"}]}
    b = copy.deepcopy(a)
    b["objects"][0]["speed"] = "slow"
    assert synth.scene_key(a) == synth.scene_key(b) == synth.scene_key(_without_move2_speed(a))
    assert " " not in synth.scene_key(a) and synth.scene_key(a) == json.dumps(
        json.loads(synth.scene_key(a)), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    c = copy.deepcopy(a)
    c["objects"][0].update(action="move", path=["left"])
    d = copy.deepcopy(c)
    d["objects"][0]["speed"] = "slow"
    assert synth.scene_key(c) != synth.scene_key(d)  # a move's speed is stated, so it counts


def test_no_benchmark_prompt_is_a_demo_training_caption(bench):
    cfg = _demo_cfg()
    rows = synth.captions(cfg)
    assert len(rows) == 2 * (cfg.clips + cfg.images)
    texts = {r["caption"] for r in rows}
    assert not [p.id for p in bench if p.en in texts or p.zh in texts]
    keys = {synth.scene_key(p.attributes) for p in bench}
    assert keys == synth.benchmark_scene_keys()
    drawn = {synth.scene_key(a) for item in synth.plan(cfg) for a in (item.attrs, item.caption_attrs)}
    assert not drawn & keys
    # the demo data never met a benchmark scene, so holding them out changed none of its draws
    assert rows == synth.captions(cfg, exclude=frozenset())


def test_a_benchmark_scene_the_generator_would_draw_is_drawn_again(monkeypatch):
    cfg = synth.SynthConfig(clips=8, images=2, seed=11, degraded_fraction=0.5)
    raw = list(synth.plan(cfg, exclude=frozenset()))
    # a clip whose first draw was kept (a crowded first draw is drawn again for its layout)
    first = next(k for k in range(cfg.clips) if synth.sample_attributes(synth._rng(cfg.seed, 0, k), True) == raw[k].attrs)
    target = raw[first].attrs
    monkeypatch.setattr(synth, "benchmark_scene_keys", lambda: frozenset({synth.scene_key(target)}))
    held = list(synth.plan(cfg))
    assert held[first].attrs != target and synth.check_attributes(held[first].attrs) == ""
    assert [i.attrs for k, i in enumerate(held) if k != first] == [i.attrs for k, i in enumerate(raw) if k != first]
    # a mismatch clip's random caption attributes are held out too
    k = next(k for k, i in enumerate(raw) if i.degradation == "mismatch")
    monkeypatch.setattr(synth, "benchmark_scene_keys", lambda: frozenset({synth.scene_key(raw[k].caption_attrs)}))
    held = list(synth.plan(cfg))
    assert held[k].attrs == raw[k].attrs and held[k].caption_attrs != raw[k].caption_attrs
    assert held[k].caption("en") not in {i.caption("en") for i in raw[k:k + 1]}


def test_captions_lists_what_generate_writes(tmp_path):
    cfg = synth.SynthConfig(clips=6, images=3, seed=5, degraded_fraction=0.5)
    rows = read_manifest(synth.generate(cfg, tmp_path / "d", progress=False))
    listed = synth.captions(cfg)
    assert [(r["id"], r["split"], r["lang"], r["caption"]) for r in rows] == [
        (r["id"], r["split"], r["lang"], r["caption"]) for r in listed]
