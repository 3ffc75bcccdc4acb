
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
                                           ("data:\n  heldout_fraction: -0.1\n", "data.heldout_fraction"),
                                           ("finetune:\n  method: dora\n", "finetune.method"),
                                           ("finetune:\n  lora_rank: 0\n", "finetune.lora_rank"),
                                           ("finetune:\n  lora_alpha: 0\n", "finetune.lora_alpha"),
                                           ("finetune:\n  lora_dropout: 1.0\n", "finetune.lora_dropout"),
                                           ("finetune:\n  lora_target_modules: []\n", "finetune.lora_target_modules"),
                                           ("finetune:\n  base: ''\n", "finetune.base"),
                                           ("finetune:\n  steps: -1\n", "finetune.steps"),
                                           ("flow:\n  pipeline: dpo\n", "flow.pipeline")])
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


@pytest.mark.parametrize("text, where", [("finetune:\n  lora_rank: 4.5\n", "finetune.lora_rank"),
                                         ("finetune:\n  lora_target_modules: attn1.wqkv\n",
                                          "finetune.lora_target_modules"),
                                         ("finetune:\n  lora_rnak: 4\n", "finetune.lora_rnak")])
def test_bad_finetune_params_name_the_key(tmp_path, text, where):
    f = tmp_path / "params.yaml"
    f.write_text("preset: demo\n" + text)
    with pytest.raises(ParamsError, match=where.replace(".", r"\.")):
        load_params(f)


def test_the_finetune_lora_preset_is_the_finetune_pipeline_on_the_release():
    p = preset("finetune-lora")
    assert p.flow.pipeline == "finetune" and p.finetune.method == "lora"
    assert p.finetune.base == p.latent_cache.vae == "release/stepvideo-tiny"
    assert p.text_encoders.llm == "release/stepvideo-tiny/text_encoders/llm"
    # the finetune pipeline's params hash covers its own sections, not the cascade's DiT stages
    other = preset("finetune-lora")
    other.sft.steps += 1
    assert other.training_hash() == p.training_hash()
    other.finetune.lora_rank += 1
    assert other.training_hash() != p.training_hash()


def test_the_default_lora_targets_are_the_trainers():
    from stepvideo.config import LORA_TARGETS
    from stepvideo.training.lora import DEFAULT_TARGETS

    assert LORA_TARGETS == DEFAULT_TARGETS
