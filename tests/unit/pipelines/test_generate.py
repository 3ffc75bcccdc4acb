"""Text-to-video pipeline on a random tiny bundle: round trip, shapes, bilingual prompts, seeds, mp4."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

from stepvideo.data.video_io import read_video
from stepvideo.pipelines.t2v import MODEL_INDEX, T2VPipeline, save_video
from stepvideo.models.dit import StepVideoDiT
from stepvideo.models.text_encoders import TextEncoder
from stepvideo.models.tiny_text import sample_captions
from stepvideo.models.vae import VideoVAE

EN = "A small red circle moves right on a blue background."
ZH = "蓝色背景上，一个小的红色圆形向右移动。"
FAST = dict(steps=2, cfg_scale=5.0, shift=13.0)  # 2 Euler steps with CFG: tiny and quick


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return T2VPipeline.random("demo", seed=0, texts=sample_captions(), workdir=tmp_path_factory.mktemp("random"))


@pytest.fixture(scope="module")
def clip17(pipe):
    """One 17-frame non-square clip (H != W catches axis mix-ups), reused by several tests."""
    return pipe(EN, num_frames=17, height=48, width=32, seed=3, **FAST)


def test_random_components_match(pipe):
    dc = pipe.dit.config
    assert dc.in_channels == dc.out_channels == pipe.vae.config.z_channels
    assert dc.caption_channels == [pipe.llm_encoder.dim, pipe.clip_encoder.dim]
    assert pipe.latent_shape(2, 34, 64, 48) == (2, 6, pipe.vae.config.z_channels, 4, 3)


def test_shapes_and_dtype_17_34_1(pipe, clip17):
    assert clip17.shape == (1, 17, 48, 32, 3) and clip17.dtype == np.uint8
    assert clip17.std() > 0  # not a constant image
    v34 = pipe([EN], num_frames=34, height=32, width=32, seed=0, **FAST)
    assert v34.shape == (1, 34, 32, 32, 3) and v34.dtype == np.uint8
    v1 = pipe(EN, num_frames=1, height=32, width=48, seed=0, **FAST)
    assert v1.shape == (1, 1, 32, 48, 3) and v1.dtype == np.uint8


def test_save_load_round_trip_identical(pipe, clip17, tmp_path):
    folder = pipe.save_pretrained(tmp_path / "bundle", lineage={"data_version": "abc123"})
    assert not [p for p in tmp_path.iterdir() if p.name != "bundle"]  # temp folder renamed away
    index = json.loads((folder / MODEL_INDEX).read_text())
    assert index["_class_name"] == "T2VPipeline"
    assert index["lineage"]["data_version"] == "abc123" and index["lineage"]["source"] == "random"
    assert {c["path"] for c in index["components"].values()} == {"dit", "vae", "text_encoders/llm", "text_encoders/clip"}

    loaded = T2VPipeline.from_pretrained(folder)
    assert loaded.lineage == pipe.lineage
    again = loaded(EN, num_frames=17, height=48, width=32, seed=3, **FAST)
    np.testing.assert_array_equal(again, clip17)

    # each component folder loads on its own, and the pipeline assembles from separate folders
    assert isinstance(StepVideoDiT.from_pretrained(folder / "dit"), StepVideoDiT)
    assert isinstance(VideoVAE.from_pretrained(folder / "vae"), VideoVAE)
    assert TextEncoder.from_pretrained(folder / "text_encoders" / "clip", kind="clip").dim == pipe.clip_encoder.dim
    parts = T2VPipeline.from_components(dit=folder / "dit", vae=folder / "vae", text_encoders=folder / "text_encoders")
    a = parts(ZH, num_frames=1, height=32, width=32, seed=1, output_type="latent", **FAST)
    b = pipe(ZH, num_frames=1, height=32, width=32, seed=1, output_type="latent", **FAST)
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    # saving over an existing bundle replaces it atomically
    loaded.save_pretrained(folder)
    assert T2VPipeline.from_pretrained(folder).lineage == pipe.lineage


def test_english_and_chinese_prompts(pipe):
    kw = dict(num_frames=1, height=32, width=32, **FAST)
    video = pipe([EN, ZH], negative_prompt="blurry, low quality", seed=5, **kw)
    assert video.shape == (2, 1, 32, 32, 3)
    assert not np.array_equal(video[0], video[1])
    # a batch equals the single-prompt runs (sample i uses seed + i; padding is masked out)
    lat = pipe([EN, ZH], negative_prompt="blurry, low quality", seed=5, output_type="latent", **kw)
    zh = pipe(ZH, negative_prompt="blurry, low quality", seed=6, output_type="latent", **kw)
    torch.testing.assert_close(lat[1:], zh, rtol=1e-4, atol=1e-4)
    # the prompt actually conditions the result (same noise, different text)
    en_same_noise = pipe(EN, negative_prompt="blurry, low quality", seed=6, output_type="latent", **kw)
    assert not torch.allclose(en_same_noise, zh)


def test_seeds_deterministic_and_distinct(pipe):
    kw = dict(num_frames=1, height=32, width=32, **FAST)
    a = pipe(EN, seed=11, **kw)
    b = pipe(EN, seed=11, **kw)
    c = pipe(EN, seed=12, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    state = torch.random.get_rng_state()
    pipe(EN, seed=11, **kw)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_progress_callback(pipe):
    calls = []
    pipe(EN, num_frames=1, height=16, width=16, seed=0, progress=lambda i, n: calls.append((i, n)), **FAST)
    assert calls == [(1, 2), (2, 2)]


def test_mp4_and_gif_decode_to_requested_shape(clip17, tmp_path):
    path = save_video(clip17, tmp_path / "out" / "clip.mp4", fps=8, gif=True)
    frames = read_video(path)
    assert frames.shape == (17, 48, 32, 3) and frames.dtype == np.uint8
    from PIL import Image

    with Image.open(tmp_path / "out" / "clip.gif") as im:
        assert im.n_frames == 17 and im.size == (32, 48)
    still = save_video(clip17[0, :1], tmp_path / "still.png")
    assert read_video(still).shape == (1, 48, 32, 3)
    with pytest.raises(ValueError):
        save_video(np.zeros((2, 17, 32, 32, 3), np.uint8), tmp_path / "batch.mp4")
    with pytest.raises(ValueError):
        save_video(np.zeros((17, 32, 32, 3), np.float32), tmp_path / "float.mp4")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_frames=0),
        dict(num_frames=16),
        dict(num_frames=18),
        dict(height=40),
        dict(width=0),
        dict(height=64.0),
        dict(steps=0),
        dict(steps=1.5),
        dict(shift=0.0),
        dict(cfg_scale=float("nan")),
        dict(seed="x"),
        dict(seed=[1, 2]),
        dict(prompt=[]),
        dict(prompt=None),
        dict(prompt=["a", 3]),
        dict(negative_prompt=["a", "b"]),
        dict(output_type="pil"),
    ],
)
def test_bad_inputs_raise_value_error(pipe, kwargs):
    kw = {"prompt": EN, "num_frames": 1, "height": 32, "width": 32, "steps": 1, **kwargs}
    with pytest.raises(ValueError):
        pipe(**kw)


def test_mismatched_components_and_bad_bundle(pipe, tmp_path):
    with pytest.raises(ValueError, match="caption_channels"):
        T2VPipeline(pipe.dit, pipe.vae, pipe.clip_encoder, pipe.llm_encoder)
    with pytest.raises(FileNotFoundError):
        T2VPipeline.from_pretrained(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MODEL_INDEX).write_text("{not json")
    with pytest.raises(ValueError):
        T2VPipeline.from_pretrained(tmp_path / "bad")


def test_precomputed_llm_embeddings_round_trip(pipe, tmp_path):
    """An LLM served elsewhere: its embeddings as a precomputed file, stored inside the bundle."""
    from stepvideo.models.text_encoders import PrecomputedTextEncoder, save_precomputed

    emb = save_precomputed(pipe.llm_encoder, [EN, ""], tmp_path / "llm.safetensors")
    mixed = T2VPipeline.from_components(pipe.dit, pipe.vae, llm=emb, clip=pipe.clip_encoder)
    kw = dict(num_frames=1, height=16, width=16, seed=2, output_type="latent", **FAST)
    ref = pipe(EN, **kw)
    torch.testing.assert_close(mixed(EN, **kw), ref, rtol=1e-4, atol=1e-4)
    loaded = T2VPipeline.from_pretrained(mixed.save_pretrained(tmp_path / "bundle"))
    assert isinstance(loaded.llm_encoder, PrecomputedTextEncoder)
    torch.testing.assert_close(loaded(EN, **kw), mixed(EN, **kw), rtol=0, atol=0)
    with pytest.raises(KeyError):  # a prompt without a precomputed embedding is named
        loaded("a prompt nobody encoded", **kw)


def test_tiled_vae_decode(pipe):
    """Exact tiling gives the untiled frames; blend is close; a bad mode is a clear error."""
    kw = dict(num_frames=17, height=64, width=96, steps=2, seed=3)
    ref = pipe.generate("a red circle", **kw).astype(int)
    exact = pipe.generate("a red circle", vae_tile_size=32, **kw).astype(int)
    assert exact.shape == ref.shape and np.abs(exact - ref).max() <= 1  # float rounding at .5 only
    blend = pipe.generate("a red circle", vae_tile_size=48, vae_tile_mode="blend", **kw)
    assert blend.shape == ref.shape
    with pytest.raises(ValueError, match="tile_mode"):
        pipe.generate("a red circle", vae_tile_size=32, vae_tile_mode="fast", **kw)
