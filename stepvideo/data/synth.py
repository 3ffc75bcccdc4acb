"""The embedded bilingual dataset: procedurally rendered clips with English and Chinese captions.

Every clip has 1-3 objects (shape, color, size) doing one action each (move one way or two ways in
sequence, grow, shrink, rotate, stay still) over a textured background under a camera that may pan
or zoom. Captions come from several paraphrase templates per language; ground-truth attributes are
stored with each row so that what a model learned can later be scored from pixels. A share of clips
is degraded (noise, blur, jitter, caption mismatch) with a low quality score, for SFT filtering.

The evaluation benchmark's scenes (stepvideo/evaluation/benchmark/embedded-v1.jsonl) are held out by
construction: a drawn record whose `scene_key` is one of them is drawn again from the same generator.
`plan`/`captions` list a dataset's items and captions without rendering, through the code `generate` uses.

Generation is byte-for-byte deterministic: each item draws from its own seeded generator, frames are
rendered with plain numpy arithmetic and written with bit-exact single-threaded encoders.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stepvideo.data.manifest import write_manifest
from stepvideo.data.vocabulary import ACTIONS, BACKGROUNDS, CAMERAS, COLORS, DIRECTIONS, SHAPES, SIZES, SPEEDS
from stepvideo.data.video_io import write_image, write_video
from stepvideo.errors import InputError, MissingError
from stepvideo.fileio import read_jsonl

DEGRADATIONS = ("noise", "blur", "jitter", "mismatch")

EN_TEMPLATES = ("{objs} on a {bg} background.", "On a {bg} background, {objs}.",
                "A video of {objs}, against a {bg} background.")
ZH_TEMPLATES = ("{bg}背景上，{objs}。", "在{bg}的背景中，{objs}。", "视频中，{objs}，背景是{bg}。")
EN_STILL = ("{objs} on a {bg} background.", "An image of {objs} against a {bg} background.")
ZH_STILL = ("{bg}背景上有{objs}。", "一张图片：{objs}，背景是{bg}。")


@dataclass(frozen=True)
class SynthConfig:
    clips: int = 48
    images: int = 32
    seed: int = 0
    height: int = 64
    width: int = 64
    frames: int = 17
    fps: int = 8
    heldout_fraction: float = 0.125
    degraded_fraction: float = 0.15
    lossless: bool = True  # clips as lossless RGB H.264 (the frames as rendered); False: lossy yuv420p crf 18

    def check(self) -> None:
        if self.frames < 17 or self.frames % 17:
            raise InputError(f"frames must be a multiple of 17 (17, 34, ..., 204), got {self.frames}")
        if self.height % 16 or self.width % 16 or self.height < 32 or self.width < 32:
            raise InputError(f"height and width must be multiples of 16 and >= 32, got {self.height}x{self.width}")
        if self.clips < 0 or self.images < 0:
            raise InputError("clips and images must be >= 0")
        if not 0 <= self.heldout_fraction < 1 or not 0 <= self.degraded_fraction < 1:
            raise InputError("heldout_fraction and degraded_fraction must be in [0, 1)")


# ---------------------------------------------------------------- attributes and captions

def sample_attributes(rng: np.random.Generator, video: bool) -> dict:
    n = int(rng.integers(1, 4))
    objects = []
    for _ in range(n):
        obj = {"shape": str(rng.choice(list(SHAPES))), "color": str(rng.choice(list(COLORS))),
               "size": str(rng.choice(list(SIZES)))}
        if video:
            action = str(rng.choice(ACTIONS))
            obj["action"] = action
            if action in ("move", "move2"):
                d1 = str(rng.choice(list(DIRECTIONS)))
                path = [d1]
                if action == "move2":
                    perpendicular = ["up", "down"] if d1 in ("left", "right") else ["left", "right"]
                    path.append(str(rng.choice(perpendicular)))
                obj["path"] = path
                obj["speed"] = str(rng.choice(list(SPEEDS)))
        objects.append(obj)
    attrs = {"background": str(rng.choice(list(BACKGROUNDS))), "objects": objects}
    if video:
        attrs["camera"] = str(rng.choice(list(CAMERAS), p=[0.6, 0.1, 0.1, 0.1, 0.1]))
    return attrs


def _obj_en(o: dict) -> str:
    return f"a {o['size']} {o['color']} {SHAPES[o['shape']][0]}"


def _act_en(o: dict) -> str:
    a = o["action"]
    if a == "move":
        return f"moves {o['path'][0]} {SPEEDS[o['speed']][1]}"
    if a == "move2":
        return f"moves {o['path'][0]}, then {o['path'][1]}"
    return {"grow": "grows larger", "shrink": "shrinks", "rotate_cw": "rotates clockwise",
            "rotate_ccw": "rotates counterclockwise", "still": "stays still"}[a]


def _obj_zh(o: dict) -> str:
    return f"一个{SIZES[o['size']][1]}{COLORS[o['color']][1]}{SHAPES[o['shape']][1]}"


def _act_zh(o: dict) -> str:
    a = o["action"]
    if a == "move":
        return f"{SPEEDS[o['speed']][2]}{DIRECTIONS[o['path'][0]][1]}移动"
    if a == "move2":
        return f"先{DIRECTIONS[o['path'][0]][1]}移动，然后{DIRECTIONS[o['path'][1]][1]}移动"
    return {"grow": "逐渐变大", "shrink": "逐渐变小", "rotate_cw": "顺时针旋转", "rotate_ccw": "逆时针旋转",
            "still": "保持静止"}[a]


def caption(attrs: dict, lang: str, template: int) -> str:
    """The caption of `attrs` in `lang` ('en' | 'zh') with paraphrase template number `template`."""
    objs, video = attrs["objects"], "camera" in attrs
    if lang == "en":
        if video:
            parts = [f"{_obj_en(o)} {_act_en(o)}" for o in objs]
            body = parts[0] if len(parts) == 1 else ", while ".join([", ".join(parts[:-1]), parts[-1]])
            text = EN_TEMPLATES[template % len(EN_TEMPLATES)].format(objs=body, bg=attrs["background"])
            cam = CAMERAS[attrs["camera"]][0]
        else:
            body = " and ".join(_obj_en(o) for o in objs)
            text, cam = EN_STILL[template % len(EN_STILL)].format(objs=body, bg=attrs["background"]), ""
        text = text[0].upper() + text[1:]
        return f"{text} {cam}".strip()
    if lang == "zh":
        bg = BACKGROUNDS[attrs["background"]][1]
        if video:
            body = "，同时".join(f"{_obj_zh(o)}{_act_zh(o)}" for o in objs)
            return ZH_TEMPLATES[template % len(ZH_TEMPLATES)].format(objs=body, bg=bg) + CAMERAS[attrs["camera"]][1]
        body = "和".join(_obj_zh(o) for o in objs)
        return ZH_STILL[template % len(ZH_STILL)].format(objs=body, bg=bg)
    raise InputError(f"unknown language {lang!r}")


def check_attributes(attrs: object) -> str:
    """'' when `attrs` is a valid synthetic attribute record, else the reason it is not."""
    if not isinstance(attrs, dict):
        return "attributes are not a JSON object"
    known = lambda value, table: isinstance(value, str) and value in table  # noqa: E731 (a list or dict: unhashable)
    if not known(attrs.get("background"), BACKGROUNDS):
        return f"unknown background {attrs.get('background')!r}"
    objs = attrs.get("objects")
    if not isinstance(objs, list) or not 1 <= len(objs) <= 3:
        return "objects must be a list of 1-3 objects"
    if "camera" in attrs and not known(attrs["camera"], CAMERAS):
        return f"unknown camera {attrs['camera']!r}"
    for i, o in enumerate(objs):
        if not isinstance(o, dict):
            return f"object {i} is not a JSON object"
        for key, table in (("shape", SHAPES), ("color", COLORS), ("size", SIZES)):
            if not known(o.get(key), table):
                return f"object {i}: unknown {key} {o.get(key)!r}"
        if "action" in o:
            if not known(o["action"], ACTIONS):
                return f"object {i}: unknown action {o['action']!r}"
            if o["action"] in ("move", "move2"):
                path = o.get("path")
                if not isinstance(path, list) or len(path) != (1 if o["action"] == "move" else 2) \
                        or not all(known(d, DIRECTIONS) for d in path):
                    return f"object {i}: bad path {path!r} for action {o['action']}"
                # a move2 caption states no speed, so a record parsed from one has none
                if (o["action"] == "move" or "speed" in o) and not known(o.get("speed"), SPEEDS):
                    return f"object {i}: unknown speed {o.get('speed')!r}"
    return ""


def scene_key(attrs: dict) -> str:
    """The canonical text of a scene: its attributes as JSON with sorted keys, no ASCII escaping and
    no spaces. A move2 object's speed is left out: captions never state it, so records that differ
    only there are one scene to a prompt (a benchmark move2 prompt matches any drawn speed)."""
    objects = [{k: v for k, v in o.items() if not (k == "speed" and o.get("action") == "move2")}
               for o in attrs["objects"]]
    return json.dumps({**attrs, "objects": objects}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


BENCHMARK_FILE = Path(__file__).resolve().parents[1] / "evaluation" / "benchmark" / "embedded-v1.jsonl"


@lru_cache(maxsize=None)
def benchmark_scene_keys() -> frozenset[str]:
    """The scene keys of the evaluation benchmark's prompts (read lazily, once), which the dataset
    generator never renders or captions. Read here rather than imported from stepvideo.evaluation,
    which imports this module."""
    if not BENCHMARK_FILE.is_file():
        raise MissingError(f"{BENCHMARK_FILE}: the benchmark prompts are missing; the dataset holds their "
                                "scenes out (regenerate: python -m stepvideo.evaluation.prompts --write)")
    return frozenset(scene_key(row["attributes"]) for _, row in read_jsonl(BENCHMARK_FILE))


def sample_training_attributes(rng: np.random.Generator, video: bool, exclude: frozenset[str] | None = None) -> dict:
    """`sample_attributes`, drawn again from the same `rng` while the record's scene key is in `exclude`
    (default: the benchmark's scenes), so benchmark scenes are held out of the data by construction."""
    exclude = benchmark_scene_keys() if exclude is None else exclude
    while True:
        attrs = sample_attributes(rng, video)
        if scene_key(attrs) not in exclude:
            return attrs


# ---------------------------------------------------------------- rendering

def inside_shape(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Membership in the unit shape, in object-local coordinates."""
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.82
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1.0
    if shape == "triangle":  # pointing up, centred
        return (y <= 0.6) & (y >= -1.0 + 1.8 * np.abs(x) / 1.05)
    if shape == "star":
        r = np.sqrt(x * x + y * y)
        theta = np.arctan2(y, x) + np.pi / 2
        return r <= 0.55 + 0.45 * np.abs(np.cos(2.5 * theta)) ** 3
    raise InputError(shape)


def _object_state(o: dict, t: float, start: tuple[float, float]) -> tuple[float, float, float, float]:
    """(cx, cy, radius_scale, angle) of an object at time t in [0, 1], world units (frame = [-1, 1])."""
    cx, cy = start
    scale, angle = 1.0, 0.0
    a = o.get("action", "still")
    if a in ("move", "move2"):
        dist = 2 * SPEEDS[o["speed"]][0]
        steps = o["path"]
        for k, d in enumerate(steps):
            share = np.clip(t * len(steps) - k, 0.0, 1.0)
            dx, dy = DIRECTIONS[d][0]
            cx, cy = cx + dx * dist * share, cy + dy * dist * share
    elif a == "grow":
        scale = 0.7 + 0.6 * t
    elif a == "shrink":
        scale = 1.3 - 0.6 * t
    elif a == "rotate_cw":
        angle = 0.5 * np.pi * t
    elif a == "rotate_ccw":
        angle = -0.5 * np.pi * t
    return cx, cy, scale, angle


LAYOUT_TRIES = 256
# the farthest point of each unit shape from its centre (a square's corner: 0.82 * sqrt(2))
EXTENT = {"circle": 1.0, "square": 1.16, "triangle": 1.1, "diamond": 1.0, "star": 1.0}
GAP = 0.06  # world units kept between two objects' outlines at every moment


def _view(camera: str, t: np.ndarray, aspect: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre x, half width, half height) of the camera's view at times t, in world units."""
    pan = {"pan_left": -0.4 * t, "pan_right": 0.4 * t}.get(camera, 0.0 * t)
    zoom = {"zoom_in": 1.0 + 0.35 * t, "zoom_out": 1.0 - 0.25 * t}.get(camera, 1.0 + 0.0 * t)
    return pan, aspect / zoom, 1.0 / zoom


def layout_penalty(objs: list[dict], starts: list[tuple[float, float]], camera: str = "static",
                   aspect: float = 1.0) -> float:
    """How far a layout is from a clean one (0 = clean): at 9 moments over the clip, every two
    objects' bounding circles stay GAP apart, and every object stays whole in view (a mover may
    leave it by up to half its radius)."""
    t = np.linspace(0.0, 1.0, 9)
    pos, rad = [], []
    for o, start in zip(objs, starts):
        cx, cy, scale, _ = _object_state(o, t, start)  # vectorised over t
        pos.append(np.stack([np.broadcast_to(cx, t.shape), np.broadcast_to(cy, t.shape)], 1))
        rad.append(2 * SIZES[o["size"]][0] * np.broadcast_to(scale, t.shape) * EXTENT[o["shape"]])
    penalty = 0.0
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            gap = np.linalg.norm(pos[i] - pos[j], axis=1) - rad[i] - rad[j] - GAP
            penalty += float(np.clip(-gap, 0, None).sum())
    cx, hw, hh = _view(camera, t, aspect)
    for o, p, r in zip(objs, pos, rad):
        margin = 0.5 * r if o.get("action") in ("move", "move2") else r  # movers may leave by half
        penalty += float(np.clip(np.abs(p[:, 0] - cx) - (hw - margin), 0, None).sum())
        penalty += float(np.clip(np.abs(p[:, 1]) - (hh - margin), 0, None).sum())
    return penalty


def _start_positions(rng: np.random.Generator, objs: list[dict], camera: str = "static",
                     aspect: float = 1.0, tries: int = LAYOUT_TRIES) -> tuple[list[tuple[float, float]], float]:
    """Start positions with no overlap between objects over the whole clip and every object in view
    (`layout_penalty` 0), and that penalty. Objects are placed one after another, each at the first
    of `tries` candidate points (drawn at once) that keeps the layout clean, else at the least bad
    one. A mover's path is centred on its candidate point."""
    t = np.linspace(0.0, 1.0, 9)
    cx_view, hw, hh = _view(camera, t, aspect)
    placed: list[tuple[np.ndarray, np.ndarray]] = []
    starts, total = [], 0.0
    for o in objs:
        ox, oy, scale, _ = _object_state(o, t, (0.0, 0.0))  # the path relative to the start, over t
        off = np.stack([np.broadcast_to(ox, t.shape), np.broadcast_to(oy, t.shape)], 1)  # (9, 2)
        r = 2 * SIZES[o["size"]][0] * np.broadcast_to(scale, t.shape) * EXTENT[o["shape"]]
        cand = rng.uniform(-0.75, 0.75, size=(tries, 2)) * np.array([aspect, 1.0]) - off[-1] / 2
        path = cand[:, None, :] + off[None]  # (tries, 9, 2)
        margin = 0.5 * r if o.get("action") in ("move", "move2") else r
        pen = np.clip(np.abs(path[..., 0] - cx_view) - (hw - margin), 0, None).sum(1)
        pen += np.clip(np.abs(path[..., 1]) - (hh - margin), 0, None).sum(1)
        for other, r_other in placed:
            gap = np.linalg.norm(path - other[None], axis=2) - r - r_other - GAP
            pen += np.clip(-gap, 0, None).sum(1)
        k = int(np.argmin(pen))
        starts.append((float(cand[k, 0]), float(cand[k, 1])))
        placed.append((path[k], r))
        total += float(pen[k])
    return starts, total


SCENE_TRIES = 30


def _draw_scene(rng: np.random.Generator, video: bool, exclude: frozenset[str] | None,
                aspect: float) -> tuple[dict, list[tuple[float, float]]]:
    """Attributes and start positions of one item. A scene too crowded for a clean layout (say three
    large movers in a small frame) is drawn again, so every object of the dataset can be seen whole
    and told apart (the scorer's ground truth); after SCENE_TRIES the least crowded draw is kept."""
    best = None
    for _ in range(SCENE_TRIES):
        attrs = sample_training_attributes(rng, video, exclude)
        starts, penalty = _start_positions(rng, attrs["objects"], attrs.get("camera", "static"), aspect)
        if best is None or penalty < best[2]:
            best = (attrs, starts, penalty)
        if penalty == 0.0:
            break
    return best[0], best[1]


def render(attrs: dict, frames: int, height: int, width: int, rng: np.random.Generator | None = None, ss: int = 2,
           starts: list[tuple[float, float]] | None = None) -> np.ndarray:
    """Render (frames, H, W, 3) uint8 with `ss`x`ss` supersampling for smooth edges. The objects'
    start positions are `starts`, or drawn from `rng` (its only use) when not given."""
    objs = attrs["objects"]
    if starts is None:
        starts = _start_positions(rng, objs, attrs.get("camera", "static"), width / height)[0]
    aspect = width / height
    ys = (np.arange(height * ss) + 0.5) / (height * ss) * 2 - 1
    xs = ((np.arange(width * ss) + 0.5) / (width * ss) * 2 - 1) * aspect
    gx, gy = np.meshgrid(xs, ys)
    bg = np.array(BACKGROUNDS[attrs["background"]][0], dtype=np.float64)
    camera = attrs.get("camera", "static")
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for f in range(frames):
        t = f / max(frames - 1, 1)
        pan = {"pan_left": -0.4 * t, "pan_right": 0.4 * t}.get(camera, 0.0)
        zoom = {"zoom_in": 1.0 + 0.35 * t, "zoom_out": 1.0 - 0.25 * t}.get(camera, 1.0)
        wx, wy = gx / zoom + pan, gy / zoom  # pixel -> world
        checker = ((np.floor(wx * 4) + np.floor(wy * 4)) % 2)[..., None]
        img = bg + (checker * 2 - 1) * 10.0
        img = np.broadcast_to(img, gx.shape + (3,)).copy()
        for o, start in zip(objs, starts):
            cx, cy, scale, angle = _object_state(o, t, start)
            radius = SIZES[o["size"]][0] * 2 * scale
            lx, ly = (wx - cx) / radius, (wy - cy) / radius
            c, s = np.cos(angle), np.sin(angle)
            mask = inside_shape(o["shape"], c * lx + s * ly, -s * lx + c * ly)
            img[mask] = COLORS[o["color"]][0]
        # box-filter the supersamples with element-wise adds in a fixed order: numpy's SIMD reductions
        # (mean/sum over an axis) can round differently with memory alignment, and one flipped
        # pixel changes the mp4's bytes
        img = img.reshape(height, ss, width, ss, 3)
        acc = np.zeros((height, width, 3))
        for i in range(ss):
            for j in range(ss):
                acc = acc + img[:, i, :, j]
        img = acc / (ss * ss)
        out[f] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def degrade(frames: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    return _apply_degradation(frames, kind, _draw_degradation(kind, frames.shape, rng))


def _draw_degradation(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray | None:
    """The random part of a degradation of frames of `shape`: the noise (noise), the per-frame offsets
    (jitter), None (blur)."""
    if kind == "noise":
        return rng.normal(0, 40, size=shape)
    if kind == "jitter":
        return np.array([rng.integers(-4, 5, size=2) for _ in range(shape[0])])
    return None


def _apply_degradation(frames: np.ndarray, kind: str, effect: np.ndarray | None) -> np.ndarray:
    x = frames.astype(np.float64)
    if kind == "noise":
        x = x + effect
    elif kind == "blur":  # 5x5 box blur, per frame
        pad = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
        h, w = x.shape[1:3]
        x = sum(pad[:, i:i + h, j:j + w] for i in range(5) for j in range(5)) / 25.0
    elif kind == "jitter":  # each frame shifted by a random offset
        x = np.stack([np.roll(fr, tuple(off), axis=(0, 1)) for fr, off in zip(x, effect)])
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- the dataset

def _rng(seed: int, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, kind, index])


@dataclass(frozen=True)
class PlannedItem:
    """One dataset item with every random draw made, before rendering: what `generate` renders and
    writes, and what `captions` lists without rendering (one code path, so the two cannot drift)."""

    clip_id: str
    kind: str  # video | image
    split: str  # train | heldout
    attrs: dict  # what is rendered
    caption_attrs: dict  # what the captions say (differs for a "mismatch" clip)
    starts: list[tuple[float, float]]  # the objects' start positions
    degradation: str  # none | noise | blur | jitter | mismatch
    quality: float
    template: int  # caption template number
    effect: np.ndarray | None = field(default=None, repr=False)  # the degradation's random part

    @property
    def path(self) -> str:
        return f"videos/{self.clip_id}.mp4" if self.kind == "video" else f"images/{self.clip_id}.png"

    def caption(self, lang: str) -> str:
        return caption(self.caption_attrs, lang, self.template)


def _assignments(cfg: SynthConfig) -> tuple[set[int], dict[int, str]]:
    """(held-out clip indices, {degraded clip index: degradation})."""
    n_heldout = int(round(cfg.clips * cfg.heldout_fraction))
    n_degraded = int(round(cfg.clips * cfg.degraded_fraction))
    order = _rng(cfg.seed, 9, 0).permutation(cfg.clips)
    heldout = set(order[:n_heldout].tolist())
    degraded = {int(i): DEGRADATIONS[k % len(DEGRADATIONS)]
                for k, i in enumerate(order[n_heldout:n_heldout + n_degraded])}
    return heldout, degraded


def _plan_clip(cfg: SynthConfig, index: int, split: str, degradation: str,
               exclude: frozenset[str] | None) -> PlannedItem:
    rng = _rng(cfg.seed, 0, index)
    attrs, starts = _draw_scene(rng, True, exclude, cfg.width / cfg.height)
    caption_attrs, effect = attrs, None
    if degradation == "mismatch":
        caption_attrs = sample_training_attributes(rng, True, exclude)
    elif degradation != "none":
        effect = _draw_degradation(degradation, (cfg.frames, cfg.height, cfg.width, 3), rng)
    quality = round(float(rng.uniform(0.1, 0.4) if degradation != "none" else rng.uniform(0.8, 1.0)), 4)
    template = int(rng.integers(0, 1000))
    return PlannedItem(f"clip_{index:05d}", "video", split, attrs, caption_attrs, starts, degradation, quality,
                       template, effect)


def _plan_image(cfg: SynthConfig, index: int, exclude: frozenset[str] | None) -> PlannedItem:
    rng = _rng(cfg.seed, 1, index)
    attrs, starts = _draw_scene(rng, False, exclude, cfg.width / cfg.height)
    template = int(rng.integers(0, 1000))
    split = "heldout" if index < int(round(cfg.images * cfg.heldout_fraction)) else "train"
    quality = round(float(rng.uniform(0.8, 1.0)), 4)
    return PlannedItem(f"image_{index:05d}", "image", split, attrs, attrs, starts, "none", quality, template)


def plan(cfg: SynthConfig, exclude: frozenset[str] | None = None) -> Iterator[PlannedItem]:
    """The items of the dataset `cfg` describes (clips, then images), lazily, without rendering.
    `exclude`: the scene keys never drawn (default: the benchmark's, `benchmark_scene_keys()`)."""
    cfg.check()
    heldout, degraded = _assignments(cfg)
    for i in range(cfg.clips):
        yield _plan_clip(cfg, i, "heldout" if i in heldout else "train", degraded.get(i, "none"), exclude)
    for i in range(cfg.images):
        yield _plan_image(cfg, i, exclude)


def captions(cfg: SynthConfig, exclude: frozenset[str] | None = None) -> list[dict]:
    """Every caption row of the dataset `cfg` describes, without rendering: dicts with id, clip_id,
    kind, split, lang and caption, in manifest order."""
    return [{"id": f"{item.clip_id}-{lang}", "clip_id": item.clip_id, "kind": item.kind, "split": item.split,
             "lang": lang, "caption": item.caption(lang)} for item in plan(cfg, exclude) for lang in ("en", "zh")]


def clean_clip(cfg: SynthConfig, index: int) -> np.ndarray:
    """Clip ``index`` as rendered, (T, H, W, 3) uint8: before any degradation and before the
    lossy mp4 encoding (what a perfect codec would give back)."""
    item = _plan_clip(cfg, index, "train", "none", None)  # attrs and starts come before any other draw
    return render(item.attrs, cfg.frames, cfg.height, cfg.width, starts=item.starts)


def generate(cfg: SynthConfig, out: str | os.PathLike, progress: bool = True) -> Path:
    """Write `out/` (videos/, images/, manifest.jsonl) atomically; returns the manifest path."""
    cfg.check()
    out = Path(out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "videos").mkdir(parents=True)
    (tmp / "images").mkdir()
    rows: list[dict] = []
    bar = tqdm(total=cfg.clips + cfg.images, desc="synth", unit="item", disable=not progress)
    for item in plan(cfg):
        if item.kind == "video":
            frames = render(item.attrs, cfg.frames, cfg.height, cfg.width, starts=item.starts)
            if item.degradation not in ("none", "mismatch"):
                frames = _apply_degradation(frames, item.degradation, item.effect)
            write_video(tmp / item.path, frames, fps=cfg.fps, lossless=cfg.lossless)
            n_frames = cfg.frames
        else:
            write_image(tmp / item.path, render(item.attrs, 1, cfg.height, cfg.width, starts=item.starts)[0])
            n_frames = 1
        for lang in ("en", "zh"):
            rows.append(_row(item.clip_id, lang, item.path, item.kind, item.split, item.caption(lang), cfg, n_frames,
                             item.quality, item.degradation, item.attrs))
        bar.update()
    bar.close()
    write_manifest(tmp / "manifest.jsonl", rows)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out / "manifest.jsonl"


def _row(clip_id, lang, rel, kind, split, text, cfg, frames, quality, degradation, attrs) -> dict:
    return {"id": f"{clip_id}-{lang}", "clip_id": clip_id, "path": rel, "kind": kind, "split": split,
            "caption": text, "lang": lang, "frames": frames, "fps": float(cfg.fps) if kind == "video" else 0.0,
            "height": cfg.height, "width": cfg.width, "quality": quality, "degradation": degradation,
            "source": "synth", "attributes": json.dumps(attrs, sort_keys=True, ensure_ascii=False)}
