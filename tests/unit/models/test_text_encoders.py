"""Text encoders (tokenizer, tiny LLM + CLIP encoders, precomputed embeddings) and the text cache."""

from __future__ import annotations

import os
import pickle
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from stepvideo.data.text_cache import TextCache, build_text_cache, cache_key, texts_version
from stepvideo.models.text_encoders import PrecomputedTextEncoder, TextEncoder, save_precomputed, text_key
from stepvideo.models.tiny_text import build_tiny_text_encoders, sample_captions, train_bilingual_tokenizer

CAPTIONS = sample_captions()  # 240 English + 240 Chinese captions of the synthetic shapes domain
EN = ["A red circle moves right", "A small red circle moves right on a blue background."]
ZH = ["一个红色的圆形向右移动", "蓝色背景上，一个小的红色圆形向右移动。"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_tiny_text_encoders(CAPTIONS, tmp_path_factory.mktemp("enc"), llm_dim=64, clip_dim=32, seed=0)


@pytest.fixture(scope="module")
def llm(built):
    return TextEncoder.from_pretrained(built["llm"], kind="llm")


@pytest.fixture(scope="module")
def clip(built):
    return TextEncoder.from_pretrained(built["clip"], kind="clip")


def _files(folder):
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder))}


# ---- tokenizer -------------------------------------------------------------------------------------


def test_tokenizer_round_trip_bilingual(tmp_path):
    from transformers import AutoTokenizer

    train_bilingual_tokenizer(CAPTIONS, tmp_path / "tok", vocab_size=1000)
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.unk_token_id is not None and tok.pad_token_id == 0
    for text in EN + ZH + CAPTIONS[:40]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        full = tok(text)["input_ids"]
        assert full[0] == tok.bos_token_id  # the llm template: <s> text
        assert tok.decode(full, skip_special_tokens=True) == text
    # No Chinese seen in training becomes <unk>; and merges were learnt (fewer tokens than bytes).
    zh_train = [c for c in CAPTIONS if not c.isascii()]
    assert len(zh_train) == 240
    for text in zh_train + ZH:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert len(ids) < len(text.encode("utf-8")) / 2
    # Deterministic: shuffled captions give the same files.
    shuffled = CAPTIONS[:]
    random.Random(1).shuffle(shuffled)
    train_bilingual_tokenizer(shuffled, tmp_path / "tok2", vocab_size=1000, seed=0)
    assert _files(tmp_path / "tok") == _files(tmp_path / "tok2")


def test_clip_tokenizer_template(clip):
    ids = clip.tokenizer(ZH[1])["input_ids"]
    assert ids[0] == clip.tokenizer.cls_token_id and ids[-1] == clip.tokenizer.sep_token_id
    assert clip.tokenizer.decode(ids, skip_special_tokens=True) == ZH[1]


# ---- builder + from_pretrained ---------------------------------------------------------------------


def test_builder_layout_and_dims(built, llm, clip):
    for kind in ("llm", "clip"):
        names = set(os.listdir(built[kind]))
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert type(llm.model).__name__ == "LlamaModel" and llm.dim == 64 and llm.max_length == 320
    assert type(clip.model).__name__ == "BertModel" and clip.dim == 32 and clip.max_length == 77
    assert llm.version != clip.version and len(llm.version) == 16


def test_builder_deterministic(built, tmp_path):
    shuffled = CAPTIONS[::-1]
    again = build_tiny_text_encoders(shuffled, tmp_path / "a", llm_dim=64, clip_dim=32, seed=0)
    other = build_tiny_text_encoders(CAPTIONS, tmp_path / "b", llm_dim=64, clip_dim=32, seed=1)
    for kind in ("llm", "clip"):
        assert _files(built[kind]) == _files(again[kind])  # byte for byte
        assert _files(built[kind])["model.safetensors"] != _files(other[kind])["model.safetensors"]
        assert _files(built[kind])["tokenizer.json"] == _files(other[kind])["tokenizer.json"]
    assert TextEncoder.from_pretrained(again["llm"]).version == TextEncoder.from_pretrained(built["llm"]).version
    assert TextEncoder.from_pretrained(other["llm"]).version != TextEncoder.from_pretrained(built["llm"]).version


def test_save_load_identical_outputs(llm, clip, tmp_path):
    texts = EN + ZH
    for enc in (llm, clip):
        folder = tmp_path / enc.kind
        enc.model.save_pretrained(folder)
        enc.tokenizer.save_pretrained(folder)
        again = TextEncoder.from_pretrained(folder, kind=enc.kind)
        h1, m1 = enc.encode(texts)
        h2, m2 = again.encode(texts)
        assert torch.equal(m1, m2) and torch.equal(h1, h2)
        assert h1.dtype == torch.float32 and h1.shape[:2] == m1.shape and h1.shape[2] == enc.dim
    # The official HunyuanCLIP layout: <dir>/tokenizer + <dir>/clip_text_encoder.
    hunyuan = tmp_path / "hunyuan_clip"
    clip.model.save_pretrained(hunyuan / "clip_text_encoder")
    clip.tokenizer.save_pretrained(hunyuan / "tokenizer")
    official = TextEncoder.from_pretrained(hunyuan, kind="clip", dtype="bfloat16")
    h, m = official.encode(ZH)
    h0, m0 = clip.encode(ZH)
    assert h.dtype == torch.bfloat16 and torch.equal(m, m0) and official.version != clip.version
    torch.testing.assert_close(h.float(), h0, atol=0.1, rtol=0.05)


def test_encode_padding_truncation(llm, clip):
    h, m = clip.encode(["A red circle", CAPTIONS[0] * 20])
    assert h.shape == (2, 77, 32) and m[1].all()  # truncated to max_length
    assert (h[0][~m[0]] == 0).all()  # padded positions are exactly zero
    h, m = llm.encode(["A red circle"], padding="max_length")
    assert h.shape == (1, 320, 64) and m.sum() == 4 and not m[0, 4:].any()  # <s> A red circle
    with pytest.raises(TypeError):
        llm.encode("a single string")


def test_clip_embedding_independent_of_batch(clip):
    short = ZH[0]
    alone, m_alone = clip.encode([short])
    n = int(m_alone.sum())
    for others in ([CAPTIONS[0]], [CAPTIONS[1] * 3, EN[0]], [EN[1], "x"]):
        h, m = clip.encode(others + [short])
        assert torch.equal(m[-1, :n], m_alone[0]) and not m[-1, n:].any()
        torch.testing.assert_close(h[-1, :n], alone[0], atol=ATOL, rtol=0)
        assert (h[-1, n:] == 0).all()


def test_llm_is_causal_clip_is_not(llm, clip):
    a, b = EN[1], "A small red circle moves right on a white background."
    for enc, causal in ((llm, True), (clip, False)):
        ia, ib = enc.tokenizer(a)["input_ids"], enc.tokenizer(b)["input_ids"]
        p = next(i for i, (x, y) in enumerate(zip(ia, ib)) if x != y)  # first differing token
        assert 2 < p < len(ia) - 1
        h, m = enc.encode([a, b])
        same = torch.allclose(h[0, :p], h[1, :p], atol=ATOL, rtol=0)
        assert same is causal
        assert not torch.allclose(h[0, p], h[1, p], atol=ATOL)
    # And the later tokens never feed back: encoding only the prefix gives the same states.
    prefix = "A small red circle moves right on a"
    hp, mp = llm.encode([prefix])
    ha, _ = llm.encode([a])
    n = int(mp.sum())
    torch.testing.assert_close(ha[0, :n], hp[0, :n], atol=ATOL, rtol=0)


# ---- precomputed ------------------------------------------------------------------------------------


def test_precomputed_round_trip_and_missing(llm, tmp_path):
    texts = EN + ZH + CAPTIONS[10:16]
    path = save_precomputed(llm, texts + texts[:2], tmp_path / "llm_emb.safetensors", batch_size=4)
    pre = PrecomputedTextEncoder(path)
    assert len(pre) == len(texts) and pre.dim == llm.dim
    assert pre.version == llm.version and pre.kind == "llm" and pre.max_length == 320
    assert ZH[0] in pre and text_key(ZH[0]) == text_key(ZH[0]) and len(text_key(ZH[0])) == 64
    h1, m1 = llm.encode(texts)
    h2, m2 = pickle.loads(pickle.dumps(pre)).encode(texts)
    assert torch.equal(m1, m2)
    torch.testing.assert_close(h2, h1, atol=ATOL, rtol=0)
    h3, m3 = pre.encode(texts[:2], padding="max_length")
    assert h3.shape == (2, 320, 64) and torch.equal(m3[:, : m1.shape[1]], m1[:2])
    with pytest.raises(KeyError, match="一个蓝色的星形向上移动"):
        pre.encode([EN[0], "一个蓝色的星形向上移动"])
    # A hand-written file (e.g. produced by the Step-LLM server) with the documented layout.
    rows = [torch.randn(3, 8), torch.randn(5, 8)]
    path2 = PrecomputedTextEncoder.write(tmp_path / "x.safetensors", ["a", "b"], rows, name="step_llm", version="v1")
    other = PrecomputedTextEncoder(path2)
    h, m = other.encode(["b", "a"])
    assert other.name == "step_llm" and other.version == "v1" and h.shape == (2, 5, 8)
    assert torch.equal(h[0], rows[1]) and torch.equal(h[1, :3], rows[0]) and m.sum(1).tolist() == [5, 3]


# ---- text cache -------------------------------------------------------------------------------------


def test_text_cache_build_read_reuse(llm, clip, tmp_path):
    texts = {f"vid{i:03d}": c for i, c in enumerate(CAPTIONS[:20])}
    texts["dup"] = CAPTIONS[3]  # identical captions share a row
    encoders = {"llm": llm, "clip": clip}
    path = build_text_cache(texts, encoders, tmp_path / "cache.safetensors", batch_size=8, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["cache.safetensors"]  # no temp files left
    cache = TextCache(path)
    assert len(cache) == 21 and cache.names == ["llm", "clip"] and "dup" in cache
    assert cache.encoder_versions == {"llm": llm.version, "clip": clip.version}
    assert cache.key == cache_key(texts_version(texts), cache.encoder_versions)
    assert cache.matches(texts_version(texts), {"clip": clip.version, "llm": llm.version})

    ids = ["vid005", "dup", "vid010", "vid003"]
    llm_emb, llm_mask, clip_emb, clip_mask = cache.get(ids)
    for enc, emb, mask in ((llm, llm_emb, llm_mask), (clip, clip_emb, clip_mask)):
        h, m = enc.encode([texts[i] for i in ids])
        assert torch.equal(mask, m)
        torch.testing.assert_close(emb, h, atol=ATOL, rtol=0)
    torch.testing.assert_close(llm_emb[1], llm_emb[3], atol=0, rtol=0)
    e, m, ce, cm = cache.get(ids[:1], pad_to={"llm": 320, "clip": 77})
    assert e.shape == (1, 320, 64) and ce.shape == (1, 77, 32) and m.sum() == llm_mask[0].sum()
    with pytest.raises(KeyError, match="nope"):
        cache.get(["nope"])
    e2 = pickle.loads(pickle.dumps(cache)).get(ids)[0]  # DataLoader workers
    assert torch.equal(e2, llm_emb)

    # Deterministic: the same captions (in any dict order) give a byte-identical file.
    other = build_text_cache(dict(reversed(list(texts.items()))), encoders, tmp_path / "c2", batch_size=8,
                             progress=False)
    assert other.read_bytes() == path.read_bytes()
    other.unlink()

    # Same data + encoders: reused without encoding anything.
    class Boom:
        def __init__(self, enc):
            self.enc, self.version, self.dim = enc, enc.version, enc.dim

        def encode(self, texts):
            raise AssertionError("should have reused the cache")

    stat = path.stat()
    again = build_text_cache(texts, {"llm": Boom(llm), "clip": Boom(clip)}, path, progress=False)
    assert again == path and path.stat().st_mtime_ns == stat.st_mtime_ns

    # New data (or a new encoder version) -> a new key, rebuilt; a precomputed encoder works too.
    texts2 = dict(texts, vid000="A large green star rotates slowly on a black background.")
    pre = PrecomputedTextEncoder(save_precomputed(llm, list(texts2.values()), tmp_path / "pre.safetensors"))
    build_text_cache(texts2, {"llm": pre, "clip": clip}, path, progress=False, dtype=torch.bfloat16)
    cache2 = TextCache(path)
    assert cache2.key != cache.key and cache2.data_version == texts_version(texts2)
    e, m, ce, cm = cache2.get(["vid000"])
    h, hm = llm.encode([texts2["vid000"]])
    assert e.dtype == torch.bfloat16 and torch.equal(m, hm)
    torch.testing.assert_close(e.float(), h, atol=2e-2 * h.abs().max().item(), rtol=2e-2)
