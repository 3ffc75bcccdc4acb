
import pytest

from conftest import REPO
from stepvideo.config import ParamsError, dump_params, load_params, preset



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


@pytest.mark.parametrize("override, key", [("vae:\n  steps: -5\n", "vae.steps"),
                                           ("t2v_lowres:\n  batch_size: 0\n", "t2v_lowres.batch_size"),
                                           ("sft:\n  lr: .inf\n", "sft.lr"),
                                           ("dpo:\n  lr: 0\n", "dpo.lr"),
                                           ("validate:\n  policy: explode\n", "validate.policy"),
                                           ("t2i_pretrain:\n  caption_dropout: 1.5\n", "t2i_pretrain.caption_dropout"),
                                           ("vae:\n  lr_schedule: linear\n", "vae.lr_schedule"),
                                           ("data:\n  heldout_fraction: -0.1\n", "data.heldout_fraction")])
def test_out_of_range_params_fail_when_the_file_is_read(tmp_path, override, key):
    from stepvideo.config import ParamsError, load_params

    path = tmp_path / "params.yaml"
    path.write_text("preset: demo\n" + override)
    with pytest.raises(ParamsError, match=rf"{path}: {key}: must"):
        load_params(path)


def test_a_binary_params_file_names_the_file(tmp_path):
    from stepvideo.config import ParamsError, load_params

    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xff\xfe\x00binary\x00")
    with pytest.raises(ParamsError, match=str(path)):
        load_params(path)
