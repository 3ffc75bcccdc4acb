from pathlib import Path

import pytest

from stepvideo.config import ParamsError, dump_params, load_params, preset

REPO = Path(__file__).resolve().parents[3]


def test_committed_params_are_the_demo_preset():
    assert load_params(REPO / "params.yaml") == preset("demo")


def test_presets_differ_and_round_trip(tmp_path):
    small, big = preset("small"), preset("step-video-t2v")
    assert (big.data.height, big.data.width, big.data.frames) == (544, 992, 204)
    assert small.data.clips > preset("demo").data.clips
    f = tmp_path / "p.yaml"
    f.write_text(dump_params(small))
    assert load_params(f) == small


@pytest.mark.parametrize("text, where", [
    ("preset: demo\ndata:\n  clipz: 3\n", "data.clipz"),
    ("preset: demo\ndata:\n  clips: many\n", "data.clips"),
    ("preset: nope\n", "nope"),
    ("preset: demo\nvalidate:\n  policy: [\n", "not valid YAML"),
])
def test_bad_params_name_the_key(tmp_path, text, where):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ParamsError, match=where.replace(".", r"\.")):
        load_params(f)
