"""Text-embedding cache: captions encoded once per (data version, encoder versions).

Training the DiT never runs the text encoders: ``build_text_cache`` encodes every caption with
every encoder once and writes one safetensors file; ``TextCache`` serves padded batches from it.

File layout (``FORMAT = "stepvideo.text_cache/1"``), one safetensors file:

========================  ===================  ==================================================
tensor                    shape / dtype        meaning
========================  ===================  ==================================================
``ids``                   (n_bytes,) uint8     UTF-8 JSON list of the N caption ids, sorted
``row``                   (N,) int64           row of each id (identical captions share a row)
``<enc>.hidden``          (T, D) float         valid (unpadded) token states of all R rows,
                                               concatenated in row order
``<enc>.offsets``         (R + 1,) int64       row r is ``hidden[offsets[r]:offsets[r + 1]]``;
                                               its length is the mask length
========================  ===================  ==================================================

``<enc>`` is the name the encoder has in the ``encoders`` dict (``"llm"``, ``"clip"``). The safetensors
metadata has one entry, ``"stepvideo.text_cache"``: a JSON object (one key, so the file's bytes
do not depend on hash-map order) with ``format``, ``key`` (:func:`cache_key`), ``data_version``,
``encoders`` (per name, in the order given: version, dim, kind, max_length, class, name),
``num_ids``, ``num_rows``. Same captions and encoders give a byte-identical file.

A file is written under a temporary name and renamed into place. ``build_text_cache`` returns at
once, without encoding anything, when the file at ``out_path`` already has the same key. While
writing, the whole cache is held in memory: build one cache per data shard for big datasets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from stepvideo.errors import InputError

__all__ = ["FORMAT", "TextCache", "build_text_cache", "cache_key", "texts_version", "cache_path"]

FORMAT = "stepvideo.text_cache/1"
META_KEY = "stepvideo.text_cache"
log = logging.getLogger(__name__)


def texts_version(texts: Mapping[str, str]) -> str:
    """A data version for an ``id -> caption`` dict: 16 hex chars of a sha256 over its sorted items."""
    h = hashlib.sha256()
    for k in sorted(texts):
        h.update(k.encode("utf-8") + b"\0" + texts[k].encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def cache_key(data_version: str, encoder_versions: Mapping[str, str]) -> str:
    """Key of a cache: 16 hex chars of a sha256 over the format, the data version and the
    ``name -> version`` of every encoder (order-independent)."""
    payload = {"format": FORMAT, "data_version": str(data_version),
               "encoders": {k: str(v) for k, v in sorted(encoder_versions.items())}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cache_dir: str | os.PathLike, data_version: str, encoders: Mapping[str, Any]) -> Path:
    """A content-addressed location: ``cache_dir/text_cache-<key>.safetensors``."""
    key = cache_key(data_version, {n: e.version for n, e in encoders.items()})
    return Path(cache_dir) / f"text_cache-{key}.safetensors"


def _read_meta(f: Any) -> dict[str, Any] | None:
    raw = (f.metadata() or {}).get(META_KEY)
    if raw is None:
        return None
    meta = json.loads(raw)
    return meta if meta.get("format") == FORMAT else None


def _read_key(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = _read_meta(f)
    except Exception:  # unreadable / half-written by something else: rebuild
        return None
    return meta.get("key") if meta else None


def build_text_cache(
    texts: Mapping[str, str],
    encoders: Mapping[str, Any],
    out_path: str | os.PathLike,
    batch_size: int = 32,
    progress: bool = True,
    *,
    data_version: str | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Encode every caption of ``texts`` (``id -> caption``) with every encoder of ``encoders``
    (``name -> TextEncoder`` or ``PrecomputedTextEncoder``) and write the cache to ``out_path``.

    ``data_version`` defaults to :func:`texts_version` ``(texts)``. If ``out_path`` exists with the
    same :func:`cache_key` it is reused as is (unless ``overwrite``). Identical captions are encoded
    once. Captions are batched by length (less padding); results do not depend on the batching
    beyond float rounding. ``dtype`` casts the stored states (e.g. ``torch.bfloat16``; default:
    as the encoder returns them). Returns ``out_path``.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if not encoders:
        raise InputError("no encoders given")
    for name in encoders:
        if not name or "." in name or name in ("ids", "row"):
            raise InputError(f"bad encoder name {name!r} (non-empty, no '.', not 'ids'/'row')")
    out_path = Path(out_path)
    data_version = data_version or texts_version(texts)
    key = cache_key(data_version, {n: e.version for n, e in encoders.items()})
    if out_path.exists() and not overwrite and _read_key(out_path) == key:
        log.info("text cache %s is up to date (key %s), reusing it", out_path, key)
        return out_path

    ids = sorted(texts)
    # Unique captions, shortest first (length-sorted batches pad less), ties by text: deterministic.
    uniq = sorted(set(texts[i] for i in ids), key=lambda t: (len(t), t))
    row_of = {t: r for r, t in enumerate(uniq)}
    tensors: dict[str, torch.Tensor] = {
        "ids": torch.frombuffer(bytearray(json.dumps(ids, ensure_ascii=False).encode("utf-8")), dtype=torch.uint8),
        "row": torch.tensor([row_of[texts[i]] for i in ids], dtype=torch.int64),
    }
    n_batches = -(-len(uniq) // batch_size) if uniq else 0
    enc_meta: dict[str, dict[str, Any]] = {}
    with tqdm(total=n_batches * len(encoders), desc="text cache", unit="batch", disable=not progress) as bar:
        for name, enc in encoders.items():
            chunks: list[torch.Tensor] = []
            lengths: list[int] = []
            for b in range(0, len(uniq), batch_size):
                hidden, mask = enc.encode(uniq[b : b + batch_size])
                hidden, mask = hidden.detach().cpu(), mask.cpu().bool()
                for j in range(hidden.shape[0]):
                    valid = hidden[j][mask[j]]
                    chunks.append(valid if dtype is None else valid.to(dtype))
                    lengths.append(int(valid.shape[0]))
                bar.set_postfix_str(name)
                bar.update(1)
            dim = int(enc.dim)
            store_dtype = dtype or (chunks[0].dtype if chunks else torch.float32)
            tensors[f"{name}.hidden"] = (
                torch.cat(chunks, 0).contiguous() if chunks else torch.zeros(0, dim, dtype=store_dtype)
            )
            offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
            if lengths:
                offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
            tensors[f"{name}.offsets"] = offsets
            enc_meta[name] = {
                "version": str(enc.version), "dim": dim, "kind": getattr(enc, "kind", None),
                "max_length": getattr(enc, "max_length", None), "class": type(enc).__name__,
                "name": str(getattr(enc, "name", "")),
            }
    meta = {
        "format": FORMAT, "key": key, "data_version": str(data_version),
        "encoders": enc_meta, "num_ids": len(ids), "num_rows": len(uniq),
    }
    metadata = {META_KEY: json.dumps(meta, ensure_ascii=False)}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out_path


class TextCache:
    """Read a cache written by :func:`build_text_cache`.

    ``get(ids)`` returns, for each encoder in the order it was built with, the padded states and the
    mask: ``(llm_emb (B, L1, D1), llm_mask (B, L1) bool, clip_emb (B, L2, D2), clip_mask (B, L2))``
    for ``{"llm": ..., "clip": ...}``. Padding is on the right with zeros, to the longest text of
    the batch, or to ``pad_to`` (an int, or ``{name: int}``, e.g. ``{"llm": 320, "clip": 77}``).
    States are read lazily from the memory-mapped file; safe to use in DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from safetensors import SafetensorError

        from stepvideo.models.io import open_safetensors

        self.path = Path(path)
        with open_safetensors(self.path) as f:
            try:
                meta = _read_meta(f)
                if meta is None:
                    raise InputError(f"{self.path} is not a text cache (no {META_KEY!r} metadata of format {FORMAT!r})")
                ids = json.loads(bytes(f.get_tensor("ids").numpy()).decode("utf-8"))
                self._row = f.get_tensor("row")
                self.encoders: dict[str, dict[str, Any]] = meta["encoders"]
                self._offsets = {n: f.get_tensor(f"{n}.offsets") for n in self.encoders}
                self.key: str = meta["key"]
                self.data_version: str = meta["data_version"]
            except InputError:
                raise
            except (SafetensorError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise InputError(f"{self.path}: not a readable text cache ({type(e).__name__}: {e}); "
                                 "delete it to rebuild it") from None
        self.metadata = meta
        self.ids: list[str] = ids
        self._index = {i: k for k, i in enumerate(ids)}
        self._handle = None
        self._pid = None

    @property
    def names(self) -> list[str]:
        return list(self.encoders)

    @property
    def encoder_versions(self) -> dict[str, str]:
        return {n: m["version"] for n, m in self.encoders.items()}

    def matches(self, data_version: str, encoder_versions: Mapping[str, str]) -> bool:
        return self.key == cache_key(data_version, encoder_versions)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, id_: str) -> bool:
        return id_ in self._index

    def _file(self):
        from stepvideo.models.io import open_safetensors

        if self._handle is None or self._pid != os.getpid():  # re-open after a fork
            self._handle = open_safetensors(self.path)
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None
        state["_pid"] = None
        return state

    def _rows(self, ids: Sequence[str]) -> list[int]:
        if isinstance(ids, str):
            raise TypeError("get takes a list of ids, not a single id")
        missing = [i for i in ids if i not in self._index]
        if missing:
            raise KeyError(f"ids not in text cache {self.path}: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        return [int(self._row[self._index[i]]) for i in ids]

    def get_one(self, id_: str, name: str) -> torch.Tensor:
        """The (L, D) valid token states of one id for encoder ``name``."""
        (r,) = self._rows([id_])
        off = self._offsets[name]
        return self._file().get_slice(f"{name}.hidden")[int(off[r]) : int(off[r + 1])]

    def get_dict(
        self, ids: Sequence[str], pad_to: int | Mapping[str, int] | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{name: (emb (B, L, D), mask (B, L) bool)}`` for ``ids``."""
        rows = self._rows(ids)
        f = self._file()
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, meta in self.encoders.items():
            off = self._offsets[name]
            sl = f.get_slice(f"{name}.hidden")
            lengths = [int(off[r + 1] - off[r]) for r in rows]
            target = pad_to.get(name) if isinstance(pad_to, Mapping) else pad_to
            L = max(lengths, default=0)
            if target is not None:
                if target < L:
                    raise InputError(f"pad_to={target} for {name!r} is shorter than a cached sequence ({L})")
                L = int(target)
            dtype = _dtype_of(sl.get_dtype())
            emb = torch.zeros(len(rows), L, int(meta["dim"]), dtype=dtype)
            mask = torch.zeros(len(rows), L, dtype=torch.bool)
            for j, (r, n) in enumerate(zip(rows, lengths)):
                if n:
                    emb[j, :n] = sl[int(off[r]) : int(off[r + 1])]
                mask[j, :n] = True
            out[name] = (emb, mask)
        return out

    def get(self, ids: Sequence[str], pad_to: int | Mapping[str, int] | None = None) -> tuple[torch.Tensor, ...]:
        """Flat ``(emb, mask)`` per encoder, in build order: ``(llm_emb, llm_mask, clip_emb, clip_mask)``."""
        d = self.get_dict(ids, pad_to)
        return tuple(t for name in self.encoders for t in d[name])

    def __repr__(self) -> str:
        return f"TextCache({str(self.path)!r}, ids={len(self)}, encoders={self.encoder_versions}, key={self.key})"


def _dtype_of(name: str) -> torch.dtype:
    return {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8,
    }[name]
