"""Bad model files and folders (issue 23): a truncated, random, empty or mismatched safetensors
file, a config.json / model_index.json that is not JSON, has a wrong type, an unknown field or a
component path that is missing or points nowhere: every loader raises a StepVideoError naming the
file, and `stepvideo generate --model FOLDER` prints one `error:` line and exits 2 (no traceback).

Caches: the readers (LatentCache, TextCache) refuse a corrupt file with an error naming it; the
builders (build_latent_cache, build_text_cache) treat an unreadable cache as stale and rebuild it."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from stepvideo.cli import app
from stepvideo.errors import InputError, MissingError, StepVideoError
from stepvideo.models import io as model_io
from stepvideo.models.dit import StepVideoDiT
from stepvideo.models.text_encoders import TextEncoder
from stepvideo.models.vae import VideoVAE
from stepvideo.pipelines.t2v import T2VPipeline
from stepvideo.training import checkpoint as ckpt


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    pipe = T2VPipeline.random("demo", seed=0, workdir=tmp_path_factory.mktemp("random"))
    return pipe.save_pretrained(tmp_path_factory.mktemp("good") / "bundle")


@pytest.fixture
def copy(bundle, tmp_path):
    return shutil.copytree(bundle, tmp_path / "bundle")


# ---- the corruptions --------------------------------------------------------------------------


def truncate(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def random_bytes(p):
    p.write_bytes(os.urandom(4096))


def empty(p):
    p.write_bytes(b"")


def wrong_shape(p):
    state = load_file(str(p))
    state[sorted(state)[0]] = torch.zeros(3, 5)
    save_file(state, str(p))


def drop_tensor(p):
    state = load_file(str(p))
    del state[sorted(state)[0]]
    save_file(state, str(p))


def extra_tensor(p):
    state = load_file(str(p))
    state["bogus.weight"] = torch.zeros(2)
    save_file(state, str(p))


def not_json(p):
    p.write_text("{not json")


def json_list(p):
    p.write_text("[1, 2]")


def edit(fn):
    def apply(p):
        data = json.loads(p.read_text())
        fn(data)
        p.write_text(json.dumps(data))
    return apply


WEIGHTS = {"truncate": truncate, "random": random_bytes, "empty": empty, "wrong_shape": wrong_shape,
           "drop_tensor": drop_tensor}
CONFIGS = {"not_json": not_json, "empty": empty, "list": json_list}

CASES = [  # (id, file to corrupt, corruption, the file the error must name)
    *[(f"{comp}-weights-{name}", f"{comp}/model.safetensors", fn, f"{comp}/model.safetensors")
      for comp in ("dit", "vae", "text_encoders/llm") for name, fn in WEIGHTS.items()],
    *[(f"{comp}-weights-extra_tensor", f"{comp}/model.safetensors", extra_tensor, f"{comp}/model.safetensors")
      for comp in ("dit", "vae")],
    *[(f"{comp}-config-{name}", f"{comp}/config.json", fn, f"{comp}/config.json")
      for comp in ("dit", "vae", "text_encoders/llm") for name, fn in CONFIGS.items()],
    ("dit-config-int-as-str", "dit/config.json", edit(lambda d: d.update(num_layers="two")), "dit/config.json"),
    ("dit-config-float-head_dim", "dit/config.json", edit(lambda d: d.update(head_dim=32.5)), "dit/config.json"),
    ("dit-config-list-as-str", "dit/config.json", edit(lambda d: d.update(caption_channels="ab")), "dit/config.json"),
    ("dit-config-unknown", "dit/config.json", edit(lambda d: d.update(foo=1)), "dit/config.json"),
    ("dit-config-bad-value", "dit/config.json", edit(lambda d: d.update(head_dim=33)), "dit/config.json"),
    ("vae-config-int-as-str", "vae/config.json", edit(lambda d: d.update(z_channels="4")), "vae/config.json"),
    ("vae-config-bool-as-str", "vae/config.json", edit(lambda d: d.update(patchify="no")), "vae/config.json"),
    ("vae-config-unknown", "vae/config.json", edit(lambda d: d.update(foo=1)), "vae/config.json"),
    ("index-not_json", "model_index.json", not_json, "model_index.json"),
    ("index-empty", "model_index.json", empty, "model_index.json"),
    ("index-list", "model_index.json", json_list, "model_index.json"),
    ("index-sampler-unknown", "model_index.json", edit(lambda d: d["sampler"].update(foo=1)), "model_index.json"),
    ("index-sampler-wrong-type", "model_index.json", edit(lambda d: d["sampler"].update(num_steps="many")),
     "model_index.json"),
    ("index-sampler-bad-value", "model_index.json", edit(lambda d: d["sampler"].update(num_steps=0)),
     "model_index.json"),
    ("index-sampler-list", "model_index.json", edit(lambda d: d.update(sampler=[1])), "model_index.json"),
    ("index-dit-no-path", "model_index.json", edit(lambda d: d["components"]["dit"].pop("path")), "model_index.json"),
    ("index-clip-no-path", "model_index.json", edit(lambda d: d["components"]["clip"].pop("path")),
     "model_index.json"),
    ("index-dit-path-int", "model_index.json", edit(lambda d: d["components"]["dit"].update(path=3)),
     "model_index.json"),
    ("index-vae-path-nowhere", "model_index.json", edit(lambda d: d["components"]["vae"].update(path="nowhere")),
     "model_index.json"),
    ("index-llm-path-nowhere", "model_index.json", edit(lambda d: d["components"]["llm"].update(path="nowhere")),
     "model_index.json"),
    ("index-dit-path-outside", "model_index.json", edit(lambda d: d["components"]["dit"].update(path="../x")),
     "model_index.json"),
    ("index-components-list", "model_index.json", edit(lambda d: d.update(components=[])), "model_index.json"),
    ("index-component-str", "model_index.json", edit(lambda d: d["components"].update(dit="dit")),
     "model_index.json"),
    ("index-unknown-component", "model_index.json", edit(lambda d: d["components"].update(foo={"path": "dit"})),
     "model_index.json"),
    ("index-format-str", "model_index.json", edit(lambda d: d.update(format_version="x")), "model_index.json"),
    ("index-lineage-int", "model_index.json", edit(lambda d: d.update(lineage=5)), "model_index.json"),
    ("index-max_length-str", "model_index.json", edit(lambda d: d["components"]["llm"].update(max_length="x")),
     "model_index.json"),
]


@pytest.mark.parametrize("rel,corrupt,named", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pipeline_loader_names_the_file(copy, rel, corrupt, named):
    corrupt(copy / rel)
    with pytest.raises(StepVideoError) as info:
        T2VPipeline.from_pretrained(copy)
    assert str(copy / named) in str(info.value)


@pytest.mark.parametrize("comp,cls", [("dit", StepVideoDiT), ("vae", VideoVAE)])
@pytest.mark.parametrize("corrupt", [*WEIGHTS.values(), extra_tensor], ids=[*WEIGHTS, "extra_tensor"])
def test_model_loaders_name_the_weights(copy, comp, cls, corrupt):
    corrupt(copy / comp / "model.safetensors")
    with pytest.raises(InputError, match="model.safetensors") as info:
        cls.from_pretrained(copy / comp)
    assert str(copy / comp / "model.safetensors") in str(info.value)


@pytest.mark.parametrize("corrupt", [*WEIGHTS.values()], ids=[*WEIGHTS])
def test_text_encoder_loader_names_the_weights(copy, corrupt):
    folder = copy / "text_encoders" / "llm"
    corrupt(folder / "model.safetensors")
    with pytest.raises(InputError) as info:
        TextEncoder.from_pretrained(folder, kind="llm")
    assert str(folder / "model.safetensors") in str(info.value)


def test_text_encoder_extra_tensor_warns(copy):
    folder = copy / "text_encoders" / "llm"
    extra_tensor(folder / "model.safetensors")
    with pytest.warns(UserWarning, match="bogus.weight"):
        TextEncoder.from_pretrained(folder, kind="llm")


def test_a_good_bundle_still_loads(bundle):
    pipe = T2VPipeline.from_pretrained(bundle)
    assert pipe.sampler.num_steps >= 1 and pipe.clip_encoder is not None


def test_sharded_dit_names_the_bad_shard(tmp_path):
    from stepvideo.models.dit import DiTConfig

    folder = StepVideoDiT(DiTConfig.preset("demo")).save_pretrained(tmp_path / "dit", max_shard_bytes=200_000)
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    random_bytes(shards[1])
    with pytest.raises(InputError, match=shards[1].name):
        StepVideoDiT.from_pretrained(folder)


# ---- the CLI ---------------------------------------------------------------------------------------

CLI_CASES = ["dit-weights-truncate", "vae-weights-wrong_shape", "vae-weights-empty", "dit-config-unknown",
             "index-sampler-unknown", "index-vae-path-nowhere", "index-not_json", "text_encoders/llm-weights-random"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_generate_one_error_line_exit_2(copy, tmp_path, case):
    _, rel, corrupt, named = next(c for c in CASES if c[0] == case)
    corrupt(copy / rel)
    result = CliRunner().invoke(app, ["generate", "a red circle", "--model", str(copy), "--steps", "1",
                                      "--out", str(tmp_path / "v.mp4")])
    assert result.exit_code == 2, result.output
    err = result.stderr if hasattr(result, "stderr") else result.output
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1, err
    assert str(copy / named) in next(ln for ln in lines if ln.startswith("error:"))
    assert "Traceback" not in result.output and "Traceback" not in err
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "v.mp4").exists()


# ---- the shared helpers ----------------------------------------------------------------------------


def test_read_json_and_safetensors_helpers(tmp_path):
    p = tmp_path / "x.json"
    with pytest.raises(MissingError, match="x.json"):
        model_io.read_json(p)
    p.write_bytes(b"\xff\xfe{")
    with pytest.raises(InputError, match="x.json: not a JSON file"):
        model_io.read_json(p)
    p.write_text('"a string"')
    with pytest.raises(InputError, match="x.json: expected a JSON object, got str"):
        model_io.read_json(p)
    f = tmp_path / "w.safetensors"
    with pytest.raises(MissingError, match="w.safetensors"):
        model_io.load_safetensors_file(f)
    f.write_bytes(b"garbage")
    with pytest.raises(InputError, match="w.safetensors: not a readable safetensors file"):
        model_io.load_safetensors_file(f)
    with pytest.raises(InputError, match="w.safetensors"):
        model_io.open_safetensors(f)


def test_load_state_checked_lists_the_first_keys():
    module = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(5)])
    state = {k: v for k, v in module.state_dict().items() if not k.endswith("bias")}
    with pytest.raises(InputError, match=r"f.safetensors: does not fit Sequential: missing tensors 0.bias, 1.bias, "
                                         r"2.bias \(\+2 more\)"):
        model_io.load_state_checked(module, state, "f.safetensors")
    state = dict(module.state_dict(), **{"0.weight": torch.zeros(3, 3)})
    with pytest.raises(InputError, match=r"wrong shapes 0.weight \(3, 3\) \(model \(2, 2\)\)"):
        model_io.load_state_checked(module, state, "f.safetensors")


# ---- checkpoints on resume -------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path):
    model = torch.nn.Linear(3, 2)
    ckpt.save_checkpoint(tmp_path, 1, model_state=model.state_dict(), model_config={"kind": "linear"},
                         tensors={"optimizer": {"x": torch.zeros(2)}}, state={})
    return tmp_path


@pytest.mark.parametrize("corrupt", [truncate, random_bytes, empty], ids=["truncate", "random", "empty"])
def test_checkpoint_tensors_name_the_file(run_dir, corrupt):
    last = ckpt.latest_checkpoint(run_dir)
    weights = ckpt.model_weights_file(last)
    corrupt(weights)
    with pytest.raises(InputError, match="model.safetensors: not a readable safetensors file"):
        ckpt.load_model_state(last)
    corrupt(last / "optimizer.safetensors")
    with pytest.raises(InputError, match="optimizer.safetensors"):
        ckpt.load_tensors(last, "optimizer")


def test_checkpoint_weights_that_do_not_fit(run_dir):
    last = ckpt.latest_checkpoint(run_dir)
    with pytest.raises(InputError, match="model.safetensors: does not fit Linear: wrong shapes weight"):
        model_io.load_state_checked(torch.nn.Linear(4, 2), ckpt.load_model_state(last), ckpt.model_weights_file(last))


# ---- the caches ------------------------------------------------------------------------------------


@pytest.mark.parametrize("corrupt", [truncate, random_bytes, empty], ids=["truncate", "random", "empty"])
def test_text_cache_reader_names_the_file(tmp_path, corrupt):
    from stepvideo.data.text_cache import TextCache

    path = tmp_path / "text_cache-x.safetensors"
    save_file({"a": torch.zeros(4)}, str(path))
    with pytest.raises(InputError, match="is not a text cache"):
        TextCache(path)
    corrupt(path)
    with pytest.raises(InputError, match="text_cache-x.safetensors"):
        TextCache(path)


def test_text_cache_bad_metadata_names_the_file(tmp_path):
    from stepvideo.data.text_cache import FORMAT, META_KEY, TextCache

    path = tmp_path / "t.safetensors"
    save_file({"row": torch.zeros(1)}, str(path), metadata={META_KEY: json.dumps({"format": FORMAT})})
    with pytest.raises(InputError, match="t.safetensors: not a readable text cache"):
        TextCache(path)


def test_latent_cache_reader_names_the_file(tmp_path):
    from stepvideo.data.latent_cache import FORMAT, META_NAME, LatentCache

    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / META_NAME).write_text("{not json")
    with pytest.raises(InputError, match=META_NAME):
        LatentCache(folder)
    (folder / META_NAME).write_text(json.dumps({"format": FORMAT, "files": {}}))
    with pytest.raises(InputError, match=f"{META_NAME}: not a latent cache's metadata"):
        LatentCache(folder)
    shard = folder / "latents-00000.safetensors"
    shard.write_bytes(os.urandom(64))
    (folder / META_NAME).write_text(json.dumps({"format": FORMAT, "files": {shard.name: 64}}))
    with pytest.raises(InputError, match=shard.name):  # the same size as recorded, but not safetensors
        cache = LatentCache.__new__(LatentCache)
        cache.folder, cache._handles, cache._pid = folder, {}, None
        cache._file(shard.name)
