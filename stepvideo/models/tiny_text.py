"""The embedded default text encoders: a bilingual (EN + ZH) byte-level BPE tokenizer trained on
the captions, and two tiny seeded encoders (a causal LlamaModel as the LLM, a BertModel as the
CLIP) saved as transformers folders that `TextEncoder.from_pretrained` loads; plus deterministic
sample captions of the synthetic domain (tests, demos, the default tokenizer corpus)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from stepvideo.data.vocabulary import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, SIZES
from stepvideo.models.text_encoders import DEFAULT_MAX_LENGTH, SPECIAL_TOKENS, check_kind
from stepvideo.errors import InputError

def _train_bpe(texts: Sequence[str], vocab_size: int, min_frequency: int) -> Any:
    """Byte-level BPE (GPT-2 style): every UTF-8 byte is in the base alphabet, so no text, Chinese
    included, ever maps to <unk>, and decoding restores the exact input; merges learnt from the
    captions make frequent Chinese characters and words single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Sorted: the result must not depend on the order the captions came in.
    tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
    return tok


def _wrap_tokenizer(tok: Any, kind: str) -> Any:
    """Give a trained ``tokenizers.Tokenizer`` the special-token template of ``kind`` and wrap it in
    a ``PreTrainedTokenizerFast`` (``llm``: ``<s> text``; ``clip``: ``[CLS] text [SEP]``, BERT-like)."""
    import copy

    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = copy.deepcopy(tok)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS.values()}
    if kind == "llm":
        bos = SPECIAL_TOKENS["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, ids[bos])]
        )
    else:
        cls_, sep = SPECIAL_TOKENS["cls_token"], SPECIAL_TOKENS["sep_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls_} $A {sep}", pair=f"{cls_} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls_, ids[cls_]), (sep, ids[sep])],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=DEFAULT_MAX_LENGTH[kind],
        padding_side="right",
        truncation_side="right",
        clean_up_tokenization_spaces=False,
        **SPECIAL_TOKENS,
    )


def _save_tokenizer(tok: Any, folder: Path) -> None:
    """``save_pretrained`` + name the class ``PreTrainedTokenizerFast`` in ``tokenizer_config.json``
    (transformers 5 writes ``TokenizersBackend``, its new name, which transformers 4.x cannot load)."""
    tok.save_pretrained(str(folder))
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def train_bilingual_tokenizer(
    texts: Sequence[str],
    out_dir: str | os.PathLike,
    vocab_size: int = 4096,
    seed: int = 0,
    *,
    kind: str = "llm",
    min_frequency: int = 2,
) -> Any:
    """Train a bilingual byte-level BPE tokenizer on ``texts``; save it to ``out_dir`` so that
    ``AutoTokenizer.from_pretrained(out_dir)`` loads it; return the ``PreTrainedTokenizerFast``.

    Special tokens (ids 0..6): ``<pad> <unk> <s> </s> [CLS] [SEP] [MASK]``. ``kind`` picks the
    template: ``llm`` prepends ``<s>``, ``clip`` wraps in ``[CLS] ... [SEP]``. Byte-level: Chinese
    (and anything else) never becomes ``<unk>`` and ``decode(encode(x)) == x``. Deterministic: BPE
    training has no randomness (``seed`` is accepted for a uniform builder signature) and the
    captions are de-duplicated and sorted first. ``vocab_size`` is an upper bound: a small corpus
    stops earlier.
    """
    del seed  # BPE training is deterministic
    tok = _wrap_tokenizer(_train_bpe(texts, vocab_size, min_frequency), check_kind(kind))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_tokenizer(tok, out_dir)
    return tok


def build_tiny_text_encoders(
    texts: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    llm_dim: int = 64,
    clip_dim: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    vocab_size: int = 4096,
    llm_max_length: int = DEFAULT_MAX_LENGTH["llm"],
    clip_max_length: int = DEFAULT_MAX_LENGTH["clip"],
) -> dict[str, Path]:
    """Create two tiny random encoders with a tokenizer trained on ``texts``:

    * ``out_dir/llm/``:  a causal ``LlamaModel`` (``llm_dim`` wide, ``layers`` layers, ``heads`` heads);
    * ``out_dir/clip/``: a bidirectional ``BertModel`` (as HunyuanCLIP), ``clip_dim`` wide.

    Each folder holds ``config.json`` + ``model.safetensors`` (``save_pretrained``) + the tokenizer,
    and loads with ``TextEncoder.from_pretrained(path, kind=...)``. Weights come from ``seed``; the
    same texts and seed give byte-identical folders. Returns ``{"llm": path, "clip": path}``.
    """
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    if llm_dim % heads or clip_dim % heads:
        raise InputError(f"dims ({llm_dim}, {clip_dim}) must be divisible by heads={heads}")
    out_dir = Path(out_dir)
    bpe = _train_bpe(texts, vocab_size, min_frequency=2)
    vocab = bpe.get_vocab_size()
    pad_id = bpe.token_to_id(SPECIAL_TOKENS["pad_token"])
    paths: dict[str, Path] = {}

    def save(kind: str, model: torch.nn.Module) -> None:
        folder = out_dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(folder), safe_serialization=True)
        tok = _wrap_tokenizer(bpe, kind)
        tok.model_max_length = llm_max_length if kind == "llm" else clip_max_length
        _save_tokenizer(tok, folder)
        paths[kind] = folder

    llm_cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=llm_dim,
        intermediate_size=2 * llm_dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max(llm_max_length, 512),
        pad_token_id=pad_id,
        bos_token_id=bpe.token_to_id(SPECIAL_TOKENS["bos_token"]),
        eos_token_id=bpe.token_to_id(SPECIAL_TOKENS["eos_token"]),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    save("llm", LlamaModel(llm_cfg).eval())

    clip_cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=clip_dim,
        intermediate_size=2 * clip_dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max(clip_max_length, 128),
        type_vocab_size=2,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed + 1)
    save("clip", BertModel(clip_cfg).eval())
    return paths


# --------------------------------------------------------------------------------------------------
# Sample captions of the synthetic video domain (tests, demos, the default tokenizer corpus), in the
# words of data.vocabulary (a leaf module every layer may import)
# --------------------------------------------------------------------------------------------------

_ZH = {**{k: v[1] for k, v in COLORS.items()}, **{k: v[1] for k, v in BACKGROUNDS.items()}}
_SHAPES = [(s, SHAPES[s][1]) for s in ("circle", "square", "triangle", "star")]
_COLORS = [(c, COLORS[c][1]) for c in ("red", "green", "blue", "yellow", "white")]
_MOTIONS = [*((f"moves {d}", f"{DIRECTIONS[d][1]}移动") for d in ("right", "left", "up", "down")),
            ("rotates slowly", "缓慢旋转"), ("grows larger", "逐渐变大")]
_BACKGROUNDS = [(b, _ZH[b]) for b in ("blue", "black", "white", "gray")]
_SIZES = [(z, SIZES[z][1]) for z in ("small", "large")]


def sample_captions(n: int | None = None) -> list[str]:
    """Deterministic bilingual captions of the synthetic shapes domain, English and Chinese
    interleaved, e.g. "A small red circle moves right on a blue background." /
    "蓝色背景上，一个小的红色圆形向右移动。" (``n``: how many; all 240 pairs = 480 by default)."""
    out: list[str] = []
    i = 0
    for size in _SIZES:
        for color in _COLORS:
            for shape in _SHAPES:
                for motion in _MOTIONS:
                    bg = _BACKGROUNDS[i % len(_BACKGROUNDS)]
                    if bg[0] == color[0]:
                        bg = _BACKGROUNDS[(i + 1) % len(_BACKGROUNDS)]
                    i += 1
                    out.append(f"A {size[0]} {color[0]} {shape[0]} {motion[0]} on a {bg[0]} background.")
                    out.append(f"{bg[1]}背景上，一个{size[1]}{color[1]}{shape[1]}{motion[1]}。")
    return out[:n] if n is not None else out


__all__ = ["train_bilingual_tokenizer", "build_tiny_text_encoders", "sample_captions"]
