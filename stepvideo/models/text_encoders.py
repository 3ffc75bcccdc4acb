"""Text encoders that condition the DiT: one interface for an LLM-style and a CLIP-style encoder.

Step-Video-T2V conditions its DiT on two bilingual (English + Chinese) text encoders:

* ``kind="llm"``  a causal decoder (official: Step-LLM, last hidden state, max 320 tokens, dim 6144);
* ``kind="clip"`` a bidirectional encoder (official: HunyuanCLIP, a ``BertModel``, last hidden state,
  max 77 tokens, dim 1024).

Everything here goes through one interface, ``encode(texts) -> (hidden (B, L, D), mask (B, L) bool)``:

``TextEncoder``
    A transformers model + tokenizer loaded with ``AutoTokenizer``/``AutoModel`` from a local folder
    (or a hub id the user has cached; nothing is downloaded when ``HF_HUB_OFFLINE=1``). The official
    HunyuanCLIP layout (``<dir>/tokenizer`` + ``<dir>/clip_text_encoder``) is recognised.
``PrecomputedTextEncoder``
    Embeddings computed elsewhere (the official Step-LLM is custom code served separately) and
    stored in a safetensors file, one tensor per text, keyed by :func:`text_key` (see its docstring
    for the layout). ``PrecomputedTextEncoder.write`` / ``save_precomputed`` produce such files.
``stepvideo.models.tiny_text``: ``train_bilingual_tokenizer`` / ``build_tiny_text_encoders``
    The embedded default: a byte-level BPE tokenizer trained on the captions and two tiny random,
    seeded models (a ``LlamaModel`` and a ``BertModel``) saved with ``save_pretrained`` so that they
    load through exactly the same ``TextEncoder.from_pretrained`` path as real encoders.

Conventions of ``encode``: right padding, truncation to ``max_length`` (default 320 for ``llm``,
77 for ``clip``, special tokens included), padding to the longest text in the batch (or to
``max_length`` with ``padding="max_length"``, as the official pipeline does), hidden states at
padded positions set to exactly zero, hidden states in the model's dtype (float32 unless ``dtype``
was given); hidden and mask on the encoder's device.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from stepvideo.models.io import open_safetensors, parse_dtype, read_json, shard_files
from stepvideo.errors import InputError, MissingError

__all__ = ["DEFAULT_MAX_LENGTH", "SPECIAL_TOKENS", "TextEncoder", "PrecomputedTextEncoder", "text_key", "save_precomputed"]

DEFAULT_MAX_LENGTH = {"llm": 320, "clip": 77}
KINDS = tuple(DEFAULT_MAX_LENGTH)

# Special tokens of the embedded tokenizer; their ids are 0..6 in this order.
SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}

# Files that define an encoder's outputs, hashed into ``TextEncoder.version``.
_VERSION_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".pt", ".pth", ".tiktoken")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    return parse_dtype(dtype, default=torch.float32)


def _transformers_major_minor() -> tuple[int, int]:
    import transformers

    parts = transformers.__version__.split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    # transformers >= 4.56 calls it ``dtype`` (5.x deprecates ``torch_dtype``).
    return {"dtype": dtype} if _transformers_major_minor() >= (4, 56) else {"torch_dtype": dtype}


def _hash_files(files: Iterable[Path], root: Path, h: "hashlib._Hash") -> None:
    for f in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")


def check_transformers_folder(folder: Path, what: str = "model") -> None:
    """Refuse a local transformers folder whose JSON files are not JSON objects or whose safetensors
    weights are not readable safetensors, with an InputError (MissingError: no config.json)
    naming the file, before transformers sees it (its errors are tracebacks or multi-line reports)."""
    if what == "model":
        if not (folder / "config.json").is_file():
            raise MissingError(f"{folder / 'config.json'}: no config.json; is {folder} a transformers model folder?")
        read_json(folder / "config.json", dict)
        if (folder / "model.safetensors.index.json").is_file():
            weights = shard_files(folder / "model.safetensors.index.json")
        else:
            weights = sorted(folder.glob("*.safetensors"))
        for f in weights:
            with open_safetensors(f) as fh:
                fh.keys()
    else:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (folder / name).is_file():
                read_json(folder / name, dict)


def _load_model(auto_cls: Any, src: str | os.PathLike, **kwargs: Any) -> Any:
    """``auto_cls.from_pretrained(src)`` where a checkpoint that lacks a tensor of the model or has
    one of the wrong shape (transformers would initialise it at random, or raise after a
    multi-line report) is an InputError naming the folder; tensors the model does not use warn."""
    import logging
    import warnings

    from stepvideo.models.io import _few

    kwargs.setdefault("ignore_mismatched_sizes", True)  # reported here, as one line
    def no_report(record: logging.LogRecord) -> bool:  # the load report: its content is checked below
        return "LOAD REPORT" not in str(record.msg)

    # (a filter, not a level: transformers logs other warnings when this logger's level is raised)
    log = logging.getLogger("transformers.modeling_utils")
    log.addFilter(no_report)
    try:
        model, info = auto_cls.from_pretrained(str(src), output_loading_info=True, **kwargs)
    finally:
        log.removeFilter(no_report)
    missing = sorted(info.get("missing_keys") or [])
    wrong = sorted(f"{k[0]} {tuple(k[1])} (model {tuple(k[2])})" if isinstance(k, tuple) else str(k)
                   for k in info.get("mismatched_keys") or [])
    problems = ([f"missing tensors {_few(missing)}"] if missing else []) + ([f"wrong shapes {_few(wrong)}"] if wrong else [])
    if problems:
        from stepvideo.models.io import weights_label

        where = weights_label(src) if Path(src).is_dir() else src
        raise InputError(f"{where}: the weights do not fit {type(model).__name__}: " + "; ".join(problems))
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        warnings.warn(f"{src}: tensors {type(model).__name__} does not use: {_few(unexpected)}", stacklevel=3)
    return model


def _resolve_local_dir(path_or_id: str | os.PathLike) -> Path | None:
    """Local folder for a path, or the cached snapshot of a hub id; None if neither is available."""
    p = Path(path_or_id)
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path_or_id), local_files_only=True))
    except (ImportError, OSError, ValueError):  # no hub library, not in the local cache, not a repo id
        return None


def text_key(text: str) -> str:
    """Key of ``text`` in a precomputed-embeddings file: sha256 of its UTF-8 bytes, hex (64 chars)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _pad_batch(
    items: Sequence[torch.Tensor], dim: int, pad_to: int | None, dtype: torch.dtype, device: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a list of (L_i, D) tensors to (B, L, D) with zeros + a (B, L) bool mask."""
    L = max((t.shape[0] for t in items), default=0)
    if pad_to is not None:
        if pad_to < L:
            raise InputError(f"pad_to={pad_to} is shorter than the longest sequence ({L})")
        L = pad_to
    hidden = torch.zeros(len(items), L, dim, dtype=dtype, device=device)
    mask = torch.zeros(len(items), L, dtype=torch.bool, device=device)
    for i, t in enumerate(items):
        n = t.shape[0]
        hidden[i, :n] = t.to(device=device, dtype=dtype)
        mask[i, :n] = True
    return hidden, mask


# --------------------------------------------------------------------------------------------------
# TextEncoder: a transformers model + tokenizer
# --------------------------------------------------------------------------------------------------


class TextEncoder:
    """A transformers text encoder (causal ``llm`` or bidirectional ``clip``) behind ``encode``.

    Build it with :meth:`from_pretrained`, or directly from an already loaded ``model`` (anything
    whose forward takes ``input_ids``/``attention_mask`` and returns ``last_hidden_state`` or a tuple
    whose first element is it) and ``tokenizer`` (a transformers tokenizer).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        kind: str,
        max_length: int | None = None,
        name: str | None = None,
        source_dirs: Sequence[str | os.PathLike] = (),
        version: str | None = None,
    ) -> None:
        self.kind = check_kind(kind)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length or DEFAULT_MAX_LENGTH[kind])
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        self._source_dirs = tuple(Path(d) for d in source_dirs)
        if version is not None:
            self.__dict__["version"] = version  # overrides the cached_property
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:  # many LLM tokenizers ship without one; mask covers it
            fallback = self.tokenizer.eos_token or self.tokenizer.unk_token
            if fallback is None:
                raise InputError(f"tokenizer of {self.name!r} has no pad, eos or unk token to pad with")
            self.tokenizer.pad_token = fallback

    # ---- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike,
        kind: str = "llm",
        max_length: int | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        *,
        tokenizer_path: str | os.PathLike | None = None,
        **model_kwargs: Any,
    ) -> "TextEncoder":
        """Load a tokenizer + model with ``AutoTokenizer``/``AutoModel``.

        ``path_or_hub_id``: a local folder (``config.json`` + weights + tokenizer files), or a hub id
        (works only when cached or online; set ``HF_HUB_OFFLINE=1`` to forbid downloads). A folder in
        the official HunyuanCLIP layout (``tokenizer/`` + ``clip_text_encoder/`` subfolders) is
        recognised. ``tokenizer_path`` loads the tokenizer from elsewhere. ``dtype`` defaults to
        float32. Extra keyword arguments go to ``AutoModel.from_pretrained`` (e.g.
        ``attn_implementation``, ``trust_remote_code``).
        """
        from transformers import AutoModel, AutoTokenizer

        kind = check_kind(kind)
        torch_dtype = _as_dtype(dtype)
        model_src: str | Path = path_or_hub_id
        tok_src: str | Path = tokenizer_path if tokenizer_path is not None else path_or_hub_id
        p = Path(path_or_hub_id)
        if tokenizer_path is None and p.is_dir() and not (p / "config.json").exists():
            if (p / "clip_text_encoder").is_dir() and (p / "tokenizer").is_dir():  # official HunyuanCLIP
                model_src, tok_src = p / "clip_text_encoder", p / "tokenizer"
        for src, what in ((model_src, "model"), (tok_src, "tokenizer")):
            if Path(src).is_dir():
                check_transformers_folder(Path(src), what)
        tokenizer = AutoTokenizer.from_pretrained(str(tok_src))
        model = _load_model(AutoModel, model_src, **_dtype_kwarg(torch_dtype), **model_kwargs)
        model = model.to(device=device, dtype=torch_dtype)
        if getattr(getattr(model, "config", None), "use_cache", False):
            model.config.use_cache = False  # one forward pass, no KV cache
        dirs = [d for d in (_resolve_local_dir(model_src), _resolve_local_dir(tok_src)) if d is not None]
        name = p.name if p.is_dir() else str(path_or_hub_id)
        return cls(model, tokenizer, kind=kind, max_length=max_length, name=name, source_dirs=dirs)

    # ---- properties ------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Width D of the hidden states."""
        cfg = getattr(self.model, "config", None)
        for attr in ("hidden_size", "d_model", "n_embd", "dim"):
            if cfg is not None and getattr(cfg, attr, None):
                return int(getattr(cfg, attr))
        return int(self.model.get_input_embeddings().embedding_dim)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @cached_property
    def version(self) -> str:
        """Identity of the outputs, for caching: 16 hex chars of a sha256 over the encoder's files
        (config, weights, tokenizer; every byte, so big encoders take a while, once), ``kind``,
        ``max_length`` and ``dtype``. For a model built in memory (no files), the state dict."""
        h = hashlib.sha256()
        h.update(json.dumps({"kind": self.kind, "max_length": self.max_length, "dtype": str(self.dtype)}).encode())
        dirs = sorted({d.resolve() for d in self._source_dirs})
        if dirs:
            for d in dirs:
                # The folder's own files (HF folders are flat; the HunyuanCLIP subfolders are two dirs).
                files = [f for f in d.iterdir() if f.is_file() and f.suffix in _VERSION_SUFFIXES]
                _hash_files(files, d, h)
        else:
            for k, v in sorted(self.model.state_dict().items()):
                h.update(k.encode() + b"\0")
                h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            h.update(json.dumps(self.tokenizer.get_vocab(), sort_keys=True).encode())
        return h.hexdigest()[:16]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None) -> "TextEncoder":
        """Move/cast the model in place (``version`` follows ``dtype``); returns ``self``."""
        if dtype is not None:
            self.model.to(dtype=_as_dtype(dtype))
            self.__dict__.pop("version", None)
        if device is not None:
            self.model.to(device=device)
        return self

    # ---- encoding --------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str], padding: str = "longest") -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("encode/tokenize take a list of texts, not a single string")
        return self.tokenizer(
            list(texts),
            padding=padding,
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=True,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode(self, texts: Sequence[str], padding: str = "longest") -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``texts`` -> ``(hidden (B, L, D), mask (B, L) bool)``; ``L`` is the longest
        tokenized text (``padding="longest"``) or ``max_length`` (``padding="max_length"``)."""
        if len(texts) == 0:
            return torch.zeros(0, 0, self.dim, dtype=self.dtype), torch.zeros(0, 0, dtype=torch.bool)
        batch = self.tokenize(texts, padding=padding)
        input_ids = batch["input_ids"].to(self.device)
        attn = batch["attention_mask"].to(self.device)
        out = self.model(input_ids=input_ids, attention_mask=attn)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        mask = attn.bool()
        hidden = hidden.masked_fill(~mask[..., None], 0.0)
        return hidden, mask

    __call__ = encode

    def __repr__(self) -> str:
        return f"TextEncoder(name={self.name!r}, kind={self.kind!r}, dim={self.dim}, max_length={self.max_length})"


# --------------------------------------------------------------------------------------------------
# PrecomputedTextEncoder: embeddings computed elsewhere
# --------------------------------------------------------------------------------------------------


class PrecomputedTextEncoder:
    """Serve embeddings computed elsewhere through the ``encode`` interface.

    File layout (one safetensors file, or several, e.g. shards; later files win on duplicates):

    * one tensor per text, named :func:`text_key` ``(text)`` (sha256 hex of the UTF-8 text), of
      shape ``(L_i, D)``: the hidden states of the text's valid (unpadded) tokens only, in order;
    * metadata (all optional, strings): ``name``, ``version``, ``kind``, ``max_length``, ``dim``.

    ``encode`` right-pads to the longest text of the batch (or ``max_length`` with
    ``padding="max_length"``) with zeros and returns the mask; a text with no entry raises a
    ``KeyError`` naming the text.
    """

    def __init__(
        self,
        path: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        name: str | None = None,
    ) -> None:
        paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
        if not paths:
            raise InputError("no precomputed embedding files given")
        self.paths = tuple(paths)
        self._where: dict[str, int] = {}
        self._handles: list[Any] | None = None
        self._pid: int | None = None
        meta: dict[str, str] = {}
        for i, p in enumerate(self.paths):
            if not p.is_file():
                raise MissingError(f"precomputed text embeddings not found: {p}")
            with open_safetensors(p) as f:
                meta.update(f.metadata() or {})
                for k in f.keys():
                    self._where[k] = i
        self.metadata = meta
        self.kind = meta.get("kind") or None
        self.max_length = int(meta["max_length"]) if meta.get("max_length") else None
        self.name = name or meta.get("name") or self.paths[0].stem
        self._device = torch.device(device)
        self._dtype = _as_dtype(dtype) if dtype is not None else None
        if meta.get("dim"):
            self._dim = int(meta["dim"])
        elif self._where:
            k = next(iter(self._where))
            self._dim = int(self._files()[self._where[k]].get_slice(k).get_shape()[-1])
        else:
            raise InputError(f"{self.paths[0]}: no embeddings and no 'dim' metadata")

    def _files(self) -> list[Any]:
        from safetensors import safe_open

        if self._handles is None or self._pid != os.getpid():  # (re-)open lazily, e.g. after a fork
            self._handles = [safe_open(str(p), framework="pt", device="cpu") for p in self.paths]
            self._pid = os.getpid()
        return self._handles

    def __getstate__(self) -> dict[str, Any]:  # picklable (DataLoader workers): handles re-open
        state = dict(self.__dict__)
        state["_handles"] = state["_pid"] = None
        return state

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self) -> torch.device:
        return self._device

    @cached_property
    def version(self) -> str:
        """The ``version`` metadata when the producer recorded one, else 16 hex chars of a sha256
        over the files' bytes."""
        if self.metadata.get("version"):
            return self.metadata["version"]
        h = hashlib.sha256()
        for p in self.paths:
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._where

    def get(self, text: str) -> torch.Tensor:
        """The (L, D) hidden states of one text."""
        k = text_key(text)
        if k not in self._where:
            short = text if len(text) <= 200 else text[:200] + "..."
            raise KeyError(
                f"no precomputed embedding for text {short!r} (key {k}) in {', '.join(map(str, self.paths))}"
            )
        return self._files()[self._where[k]].get_tensor(k)

    def encode(self, texts: Sequence[str], padding: str = "longest") -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not a single string")
        items = [self.get(t) for t in texts]
        dtype = self._dtype or (items[0].dtype if items else torch.float32)
        pad_to = None
        if padding == "max_length":
            if self.max_length is None:
                raise InputError("padding='max_length' needs 'max_length' in the file's metadata")
            pad_to = self.max_length
        elif padding != "longest":
            raise InputError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        return _pad_batch(items, self.dim, pad_to, dtype, self._device)

    __call__ = encode

    @staticmethod
    def write(
        path: str | os.PathLike,
        texts: Sequence[str],
        hidden: torch.Tensor | Sequence[torch.Tensor],
        mask: torch.Tensor | None = None,
        *,
        name: str = "",
        version: str = "",
        kind: str = "",
        max_length: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Path:
        """Write embeddings in the layout above, atomically. ``hidden`` is a padded (B, L, D) batch
        with its (B, L) ``mask`` (valid tokens must come first: right padding), or a list of (L_i, D)."""
        from safetensors.torch import save_file

        if mask is not None:
            rows = [hidden[i][mask[i].bool()] for i in range(len(texts))]
        else:
            rows = list(hidden)
        if len(rows) != len(texts):
            raise InputError(f"{len(texts)} texts but {len(rows)} embeddings")
        tensors: dict[str, torch.Tensor] = {}
        for t, r in zip(texts, rows):
            tensors[text_key(t)] = r.detach().to("cpu").contiguous().clone()
        dims = {r.shape[-1] for r in rows}
        if len(dims) > 1:
            raise InputError(f"embeddings of different widths {sorted(dims)}")
        meta = {"format": "pt", "name": name, "version": version, "kind": kind}
        if dims:
            meta["dim"] = str(dims.pop())
        if max_length:
            meta["max_length"] = str(int(max_length))
        meta.update(metadata or {})
        meta = {k: str(v) for k, v in meta.items() if v not in ("", None)}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    def __repr__(self) -> str:
        return f"PrecomputedTextEncoder(name={self.name!r}, texts={len(self)}, dim={self.dim})"


def save_precomputed(
    encoder: TextEncoder, texts: Sequence[str], path: str | os.PathLike, batch_size: int = 32
) -> Path:
    """Run ``encoder`` over the unique ``texts`` and write them as a precomputed-embeddings file
    (e.g. on the machine that serves Step-LLM), recording its name, version, kind and max_length."""
    uniq = list(dict.fromkeys(texts))
    rows: list[torch.Tensor] = []
    for i in range(0, len(uniq), batch_size):
        h, m = encoder.encode(uniq[i : i + batch_size])
        rows.extend(h[j][m[j]].cpu() for j in range(h.shape[0]))
    return PrecomputedTextEncoder.write(
        path, uniq, rows, name=encoder.name, version=encoder.version, kind=encoder.kind,
        max_length=encoder.max_length, metadata={"dim": str(encoder.dim)},
    )
