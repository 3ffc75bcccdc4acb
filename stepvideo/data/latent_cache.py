"""Latent cache: VAE latents and text embeddings of every clean item, computed once.

The DiT stages never run the VAE encoder or the text encoders: ``build_latent_cache`` encodes the
media of every clean row (once per ``clip_id``: the en/zh rows of a clip share its latents) at each
resolution, and every caption (plus the empty prompt ``EMPTY_ID``) with every text encoder, into one
folder keyed by (data version, VAE version, encoder versions, resolutions). ``LatentCache`` serves
same-shape batches from it; ``BucketSampler`` draws them as a pure function of (seed, step).

Folder layout (``FORMAT = "stepvideo.latent_cache/1"``):

=============================  ==================================================================
file                           content
=============================  ==================================================================
``cache.json``                 format, key (:func:`latent_cache_key`), data_version, vae_version,
                               encoder_versions, resolutions ``{name: [H, W]}`` (pixels; "full" =
                               the most common native size), z_channels, counts, rows_digest,
                               files ``{name: bytes}``; items (one per row, sorted by id: id,
                               clip_id, path, kind, split, quality, lang, caption); media (per
                               clip_id: kind, frames, shard, pixels and latent (F, h, w) per
                               resolution). JSON with sorted keys.
``latents-NNNNN.safetensors``  per media and resolution ``<clip_id>/<res>/mean`` and ``.../logvar``:
                               the posterior's mean and (clamped) logvar, float32 (F_lat, z, h, w)
``text.safetensors``           a :mod:`stepvideo.data.text_cache` file; ids = row ids + EMPTY_ID
=============================  ==================================================================

Resolutions: ``"full"`` is each item's native size (multiples of 16), ``"low"`` every item resized
to ``low_res`` (torch bilinear, antialias) before encoding. The folder is written beside its target
and renamed into place; an existing folder with the same key and rows is reused without computing,
anything else (other versions, half-written, corrupt) is rebuilt. Same inputs give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError

from stepvideo.data.text_cache import TextCache, build_text_cache, cache_key, texts_version
from stepvideo.fileio import atomic_folder
from stepvideo.errors import InputError

__all__ = ["FORMAT", "EMPTY_ID", "FULL", "LOW", "low_resolution", "most_common_size", "latent_cache_key", "build_latent_cache",
           "LatentCache", "bucket_key", "BucketSampler", "cache_summary"]

FORMAT = "stepvideo.latent_cache/1"
EMPTY_ID = "__empty__"
FULL, LOW = "full", "low"
META_NAME, TEXT_NAME = "cache.json", "text.safetensors"
ROW_FIELDS = ("id", "clip_id", "path", "kind", "split", "quality", "lang", "caption")
log = logging.getLogger(__name__)


def low_resolution(height: int, width: int, factor: float = 0.5, multiple: int = 16) -> tuple[int, int]:
    """The low-res stage's size: ``round(side * factor)`` rounded down to a multiple of ``multiple``."""
    out = tuple(int(round(s * factor)) // multiple * multiple for s in (height, width))
    if min(out) < 16:
        raise InputError(f"low resolution of {height}x{width} at factor {factor} is {out[0]}x{out[1]}: below 16 pixels")
    return out  # type: ignore[return-value]


def latent_cache_key(data_version: str, vae_version: str, encoder_versions: Mapping[str, str],
                     resolutions: Mapping[str, tuple[int, int]]) -> str:
    """16 hex chars of a sha256 over the format and the inputs (order-independent). ``"full"`` (the
    items' native size, fixed by the data version) is ignored, so ``cache.resolutions`` can be passed."""
    payload = {"format": FORMAT, "data_version": str(data_version), "vae_version": str(vae_version),
               "encoders": {str(k): str(v) for k, v in encoder_versions.items()},
               "resolutions": {str(k): [int(x) for x in v] for k, v in resolutions.items() if k != FULL}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def most_common_size(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The most common (H, W) of ``sizes`` (ties: the smallest): the cache's "full" resolution."""
    counts = Counter(tuple(int(x) for x in s) for s in sizes)
    if not counts:
        raise InputError("no sizes given")
    return min(counts, key=lambda s: (-counts[s], s))  # type: ignore[return-value]


def _plan(rows: Sequence[Mapping]) -> tuple[list[dict], dict[str, dict]]:
    """Items (one per row, sorted by id) and media (one per clip_id) of the rows; checks consistency."""
    items: dict[str, dict] = {}
    media: dict[str, dict] = {}
    for row in rows:
        rid = str(row["id"])
        if rid in items or rid == EMPTY_ID:
            raise InputError(f"row id {rid!r} is {'duplicated' if rid in items else 'reserved'}")
        if row.get("kind") not in ("video", "image"):
            raise InputError(f"row {rid!r}: kind must be 'video' or 'image', got {row.get('kind')!r}")
        clip = str(row.get("clip_id") or row["path"])
        q = row.get("quality")
        items[rid] = {"id": rid, "clip_id": clip, "path": str(row["path"]), "kind": row["kind"],
                      "split": row.get("split"), "quality": None if q is None else float(q),
                      "lang": row.get("lang"), "caption": str(row.get("caption") or "")}
        m = media.setdefault(clip, {"path": str(row["path"]), "kind": row["kind"], "ids": []})
        if (m["path"], m["kind"]) != (str(row["path"]), row["kind"]):
            raise InputError(f"row {rid!r}: clip_id {clip!r} has another path/kind in row {m['ids'][0]!r}")
        m["ids"].append(rid)
    return [items[k] for k in sorted(items)], media


def _rows_digest(items: Sequence[Mapping]) -> str:
    raw = json.dumps([[it[k] for k in ROW_FIELDS] for it in items], ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


def _read_meta(folder: Path) -> dict[str, Any]:
    """cache.json of a complete cache folder; ValueError naming the folder otherwise."""
    try:
        meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{folder} is not a latent cache (no readable {META_NAME}: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{folder} is not a latent cache of format {FORMAT!r}")
    for name, size in meta.get("files", {}).items():
        if not (folder / name).is_file() or (folder / name).stat().st_size != size:
            raise InputError(f"{folder}: latent cache is incomplete or corrupt ({name} missing or of the wrong size)")
    return meta


def _is_current(folder: Path, key: str, digest: str) -> bool:
    from safetensors import SafetensorError, safe_open

    if not folder.exists():
        return False
    try:
        meta = _read_meta(folder)
        if meta["key"] != key or meta["rows_digest"] != digest:
            return False
        for name in meta["files"]:
            with safe_open(str(folder / name), framework="pt") as f:
                f.keys()
        return True
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        log.info("latent cache %s is unreadable (%s): rebuilding it", folder, e)
        return False


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, T, 3, H, W) -> (B, T, 3, h, w), bilinear with antialias."""
    b, t = x.shape[:2]
    y = torch.nn.functional.interpolate(x.flatten(0, 1), size=size, mode="bilinear", antialias=True,
                                        align_corners=False)
    return y.unflatten(0, (b, t))


class _ShardWriter:
    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.tensors: dict[str, torch.Tensor] = {}
        self.bytes, self.count = 0, 0

    @property
    def name(self) -> str:
        return f"latents-{self.count:05d}.safetensors"

    def add(self, tensors: Mapping[str, torch.Tensor]) -> str:
        name = self.name
        self.tensors.update(tensors)
        self.bytes += sum(t.numel() * t.element_size() for t in tensors.values())
        if self.bytes >= self.max_bytes:
            self.flush()
        return name

    def flush(self) -> None:
        from safetensors.torch import save_file

        if self.tensors:
            save_file(self.tensors, str(self.folder / self.name), metadata={"format": FORMAT})
            self.tensors, self.bytes, self.count = {}, 0, self.count + 1


def build_latent_cache(
    rows: Sequence[Mapping], data_root: str | os.PathLike, vae: Any, encoders: Mapping[str, Any],
    out_dir: str | os.PathLike, *, data_version: str, vae_version: str, low_res: tuple[int, int] | None,
    batch_size: int = 8, progress: bool = True, text_cache: str | os.PathLike | None = None,
    max_shard_bytes: int = 2 * 1024**3,
) -> Path:
    """Encode the rows' media with ``vae`` and their captions with ``encoders`` into ``out_dir``
    (see the module docstring); returns ``out_dir``. ``text_cache``: an existing text cache file
    that is exactly the one this build needs (same captions + EMPTY_ID, same encoders) is copied
    instead of encoding again."""
    from tqdm.auto import tqdm

    from stepvideo.data.video_io import read_video
    from stepvideo.models.vae import frames_to_tensor

    out_dir, root = Path(out_dir), Path(data_root)
    if not encoders:
        raise InputError("no text encoders given")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    sf = int(vae.config.spatial_factor)
    if low_res is not None:
        low_res = (int(low_res[0]), int(low_res[1]))
        if min(low_res) < sf or low_res[0] % sf or low_res[1] % sf:
            raise InputError(f"low_res {low_res} must be positive multiples of {sf}")
    wanted = {LOW: low_res} if low_res else {}
    versions = {str(n): str(e.version) for n, e in encoders.items()}
    key = latent_cache_key(data_version, vae_version, versions, wanted)
    items, media = _plan(rows)
    if not items:
        raise InputError("no rows to cache")
    digest = _rows_digest(items)
    if _is_current(out_dir, key, digest):
        log.info("latent cache %s is up to date (key %s), reusing it", out_dir, key)
        return out_dir
    res_names = [FULL] + list(wanted)
    was_training = vae.training
    try:
        with atomic_folder(out_dir) as tmp:
            vae.eval()
            p = next(vae.parameters())
            writer = _ShardWriter(tmp, max_shard_bytes)
            pending: dict[tuple[int, int, int], list[tuple[str, torch.Tensor]]] = {}

            def flush(group: list[tuple[str, torch.Tensor]]) -> None:
                x = torch.stack([t for _, t in group]).to(p.device)  # float32; the VAE casts to its dtype
                out: dict[str, dict[str, torch.Tensor]] = {c: {} for c, _ in group}
                for res in res_names:
                    post = vae.posterior(x if res == FULL else _resize(x, wanted[res]))
                    mean, logvar = post.mean.float().cpu(), post.logvar.float().cpu()
                    for j, (clip, _) in enumerate(group):
                        out[clip][f"{clip}/{res}/mean"] = mean[j].contiguous().clone()
                        out[clip][f"{clip}/{res}/logvar"] = logvar[j].contiguous().clone()
                        media[clip]["latent"][res] = [int(mean.shape[1]), int(mean.shape[3]), int(mean.shape[4])]
                for clip, _ in group:
                    media[clip]["shard"] = writer.add(out[clip])

            with torch.no_grad(), tqdm(total=len(media), desc="latent cache", unit="item", disable=not progress) as bar:
                for clip in sorted(media):
                    m = media[clip]
                    frames = read_video(root / m["path"])
                    t, h, w = (int(s) for s in frames.shape[:3])
                    if h < sf or w < sf or h % sf or w % sf:
                        raise InputError(f"row {m['ids'][0]!r} ({m['path']}): size {h}x{w} is not a multiple of {sf}; "
                                         f"crop or resize the media before caching")
                    if not (t == 1 or t % vae.frame_chunk == 0):
                        raise InputError(f"row {m['ids'][0]!r} ({m['path']}): {t} frames; must be 1 or a multiple "
                                         f"of {vae.frame_chunk}")
                    m.update(frames=t, pixels={FULL: [h, w], **{r: list(s) for r, s in wanted.items()}}, latent={})
                    group = pending.setdefault((t, h, w), [])
                    group.append((clip, frames_to_tensor(frames)))
                    if len(group) >= batch_size:
                        flush(pending.pop((t, h, w)))
                    bar.update()
                for shape in sorted(pending):
                    flush(pending[shape])
            writer.flush()

            texts = {it["id"]: it["caption"] for it in items}
            texts[EMPTY_ID] = ""
            src = Path(text_cache) if text_cache is not None else None
            if src is not None and src.is_file() and _text_key(src) == cache_key(texts_version(texts), versions):
                shutil.copyfile(src, tmp / TEXT_NAME)
            else:
                build_text_cache(texts, encoders, tmp / TEXT_NAME, progress=progress)

            full = most_common_size([m["pixels"][FULL] for m in media.values()])
            meta = {
                "format": FORMAT, "key": key, "data_version": str(data_version), "vae_version": str(vae_version),
                "encoder_versions": versions, "resolutions": {FULL: list(full), **{r: list(s) for r, s in wanted.items()}},
                "z_channels": int(vae.config.z_channels), "rows_digest": digest,
                "counts": {"items": len(items), "media": len(media),
                           "videos": sum(m["frames"] > 1 for m in media.values()),
                           "stills": sum(m["frames"] == 1 for m in media.values())},
                "files": {f.name: f.stat().st_size for f in sorted(tmp.iterdir())},
                "items": items,
                "media": {c: {k: m[k] for k in ("kind", "frames", "shard", "pixels", "latent")} for c, m in media.items()},
            }
            (tmp / META_NAME).write_text(json.dumps(meta, sort_keys=True, ensure_ascii=False, indent=1) + "\n",
                                         encoding="utf-8")
            if out_dir.is_file() or out_dir.is_symlink():
                out_dir.unlink()
    finally:
        vae.train(was_training)
    return out_dir


def _text_key(path: Path) -> str | None:
    from safetensors import SafetensorError

    try:
        return TextCache(path).key
    except (OSError, ValueError, KeyError, SafetensorError):  # not a text cache we can reuse: encode anew
        return None


class LatentCache:
    """Read a folder written by :func:`build_latent_cache`. Tensors are read lazily from the
    memory-mapped shards (handles re-open after a fork: safe in DataLoader workers)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        meta = _read_meta(self.folder)
        try:
            self._media: dict[str, dict] = meta.pop("media")
            self.items: list[dict] = [dict(it, quality=float("nan") if it["quality"] is None else float(it["quality"]))
                                      for it in meta.pop("items")]
            self.meta: dict[str, Any] = meta
            self.key: str = meta["key"]
            self.resolutions: dict[str, tuple[int, int]] = {k: (int(v[0]), int(v[1]))
                                                            for k, v in meta["resolutions"].items()}
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise InputError(f"{self.folder / META_NAME}: not a latent cache's metadata ({type(e).__name__}: {e}); "
                             "delete the folder to rebuild it") from None
        self.text = TextCache(self.folder / TEXT_NAME)
        self._handles: dict[str, Any] = {}
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, _handles={}, _pid=None)

    def _file(self, shard: str) -> Any:
        from stepvideo.models.io import open_safetensors

        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = open_safetensors(self.folder / shard)
        return self._handles[shard]

    def select(self, split: str | None = "train", kinds: Sequence[str] = ("video", "image"),
               min_quality: float | None = None) -> list[int]:
        """Indices of the items of ``split`` (None: all) and ``kinds`` with quality >= ``min_quality``
        (an unknown quality, NaN, never passes a ``min_quality``)."""
        return [i for i, it in enumerate(self.items)
                if (split is None or it["split"] == split) and it["kind"] in kinds
                and (min_quality is None or it["quality"] >= min_quality)]

    def shape(self, index: int, resolution: str) -> tuple[int, int, int]:
        """Latent (F, h, w) of item ``index`` at ``resolution``."""
        if resolution not in self.resolutions:
            raise InputError(f"{self.folder}: no resolution {resolution!r} (has {sorted(self.resolutions)})")
        f, h, w = self._media[self.items[index]["clip_id"]]["latent"][resolution]
        return int(f), int(h), int(w)

    def buckets(self, indices: Sequence[int], resolution: str) -> dict[tuple[int, int, int], list[int]]:
        """``{(F, h, w): [indices...]}`` with sorted keys, indices in the given order."""
        out: dict[tuple[int, int, int], list[int]] = {}
        for i in indices:
            out.setdefault(self.shape(int(i), resolution), []).append(int(i))
        return {k: out[k] for k in sorted(out)}

    def batch(self, indices: Sequence[int], resolution: str, drop_text: Sequence[bool] | None = None) -> dict:
        """Latents and text embeddings of ``indices`` (one bucket); ``drop_text[i]``: EMPTY_ID's embeddings."""
        idx = [int(i) for i in indices]
        if not idx:
            raise InputError("batch of no items")
        shapes = sorted({self.shape(i, resolution) for i in idx})
        if len(shapes) > 1:
            raise InputError(f"batch mixes latent shapes {shapes} at {resolution!r}: draw it from one bucket")
        drop = [False] * len(idx) if drop_text is None else [bool(d) for d in drop_text]
        if len(drop) != len(idx):
            raise InputError(f"drop_text has {len(drop)} entries for {len(idx)} items")
        means, logvars = [], []
        for i in idx:
            clip = self.items[i]["clip_id"]
            shard = self._media[clip]["shard"]
            f = self._file(shard)
            try:
                means.append(f.get_tensor(f"{clip}/{resolution}/mean"))
                logvars.append(f.get_tensor(f"{clip}/{resolution}/logvar"))
            except SafetensorError as e:
                raise InputError(f"{self.folder / shard}: latent cache shard lacks {clip}/{resolution} ({e}); "
                                 "delete the folder to rebuild it") from None
        out: dict[str, Any] = {"mean": torch.stack(means), "logvar": torch.stack(logvars)}
        text = self.text.get_dict([EMPTY_ID if d else self.items[i]["id"] for i, d in zip(idx, drop)])
        for name, (emb, mask) in text.items():
            out[f"{name}_emb"], out[f"{name}_mask"] = emb, mask
        out["ids"] = [self.items[i]["id"] for i in idx]
        return out

    def __repr__(self) -> str:
        return f"LatentCache({str(self.folder)!r}, items={len(self)}, key={self.key})"


def bucket_key(key: tuple[int, int, int]) -> str:
    """``(3, 4, 4)`` -> ``"3x4x4"``."""
    return "x".join(str(int(k)) for k in key)


def cache_summary(cache: LatentCache) -> dict[str, Any]:
    """Counts for logging: items per kind / split, media, buckets (with item counts) per resolution."""
    everything = range(len(cache.items))
    return {
        "items": len(cache.items), "media": cache.meta["counts"]["media"],
        "items_per_kind": dict(sorted(Counter(it["kind"] for it in cache.items).items())),
        "items_per_split": dict(sorted(Counter(str(it["split"]) for it in cache.items).items())),
        "buckets": {r: {bucket_key(k): len(v) for k, v in cache.buckets(everything, r).items()}
                    for r in cache.resolutions},
    }


class BucketSampler:
    """Global batches drawn from same-shape buckets as a pure function of ``(seed, step)``."""

    def __init__(self, cache: LatentCache, indices: Sequence[int], resolution: str, batch_size: int,
                 bucket_batch_sizes: Mapping[str, int] | None = None, still_share: float | None = None,
                 seed: int = 0) -> None:
        if len(indices) == 0:
            raise InputError("BucketSampler: no items to sample (indices is empty)")
        self.buckets = cache.buckets(indices, resolution)
        self.resolution, self.seed = resolution, int(seed)
        self._groups = {True: [k for k in self.buckets if k[0] == 1], False: [k for k in self.buckets if k[0] != 1]}
        n_still = sum(len(self.buckets[k]) for k in self._groups[True])
        if still_share is None:
            still_share = n_still / sum(len(v) for v in self.buckets.values())
        still_share = float(still_share)
        if not 0.0 <= still_share <= 1.0:
            raise InputError(f"still_share must be in [0, 1], got {still_share}")
        if still_share > 0 and not self._groups[True]:
            raise InputError(f"still_share={still_share} but the items have no stills (F=1) at {resolution!r}")
        if still_share < 1 and not self._groups[False]:
            raise InputError(f"still_share={still_share} but the items have no videos at {resolution!r}")
        self.still_share = still_share
        sizes = dict(bucket_batch_sizes or {})
        self.batch_sizes = {k: int(sizes.get(bucket_key(k), batch_size)) for k in self.buckets}
        bad = {bucket_key(k): v for k, v in self.batch_sizes.items() if v < 1}
        if bad:
            raise InputError(f"batch sizes must be >= 1, got {bad}")

    def _draw(self, step: int) -> tuple[tuple[int, int, int], list[int]]:
        if step < 0:
            raise InputError(f"step must be >= 0, got {step}")
        rng = np.random.default_rng([self.seed, int(step)])
        group = self._groups[bool(rng.random() < self.still_share)]
        weights = np.array([len(self.buckets[k]) for k in group], dtype=np.float64)
        key = group[int(rng.choice(len(group), p=weights / weights.sum()))]
        members, n = self.buckets[key], self.batch_sizes[key]
        pick = rng.choice(len(members), size=n, replace=len(members) < n)
        return key, [members[int(j)] for j in pick]

    def batch_indices(self, step: int) -> list[int]:
        """The global batch of optimizer step ``step`` (item indices, one bucket)."""
        return self._draw(step)[1]

    def bucket_of(self, step: int) -> tuple[int, int, int]:
        return self._draw(step)[0]
