"""The embedded bilingual dataset: procedurally rendered clips with English and Chinese captions.

Every clip has 1-3 objects (shape, color, size) doing one action each (move one way or two ways in
sequence, grow, shrink, rotate, stay still) over a textured background under a camera that may pan
or zoom. Captions come from several paraphrase templates per language; ground-truth attributes are
stored with each row so that what a model learned can later be scored from pixels. A share of clips
is degraded (noise, blur, jitter, caption mismatch) with a low quality score, for SFT filtering.

Generation is byte-for-byte deterministic: each item draws from its own seeded generator, frames are
rendered with plain numpy arithmetic and written with bit-exact single-threaded encoders.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stepvideo.data.manifest import write_manifest
from stepvideo.data.video_io import write_image, write_video

# value -> (English, Chinese). Order matters: it is part of the generator.
SHAPES = {"circle": ("circle", "圆形"), "square": ("square", "正方形"), "triangle": ("triangle", "三角形"),
          "diamond": ("diamond", "菱形"), "star": ("star", "星形")}
COLORS = {"red": ((225, 45, 45), "红色"), "green": ((50, 200, 70), "绿色"), "blue": ((50, 90, 235), "蓝色"),
          "yellow": ((240, 220, 50), "黄色"), "purple": ((160, 70, 210), "紫色"), "orange": ((245, 140, 30), "橙色"),
          "white": ((240, 240, 240), "白色"), "cyan": ((40, 210, 220), "青色")}
BACKGROUNDS = {"black": ((18, 18, 22), "黑色"), "gray": ((110, 110, 115), "灰色"),
               "navy": ((20, 30, 75), "深蓝色"), "brown": ((85, 55, 35), "棕色")}
SIZES = {"small": (0.13, "小的"), "medium": (0.19, "中等大小的"), "large": (0.26, "大的")}
DIRECTIONS = {"left": ((-1, 0), "向左"), "right": ((1, 0), "向右"), "up": ((0, -1), "向上"), "down": ((0, 1), "向下")}
SPEEDS = {"slow": (0.25, "slowly", "缓慢地"), "fast": (0.5, "quickly", "快速地")}
ACTIONS = ("move", "move2", "grow", "shrink", "rotate_cw", "rotate_ccw", "still")
CAMERAS = {"static": ("", ""), "pan_left": ("The camera pans left.", "镜头向左平移。"),
           "pan_right": ("The camera pans right.", "镜头向右平移。"),
           "zoom_in": ("The camera zooms in.", "镜头拉近。"), "zoom_out": ("The camera zooms out.", "镜头拉远。")}
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

    def check(self) -> None:
        if self.frames < 17 or self.frames % 17:
            raise ValueError(f"frames must be a multiple of 17 (17, 34, ..., 204), got {self.frames}")
        if self.height % 16 or self.width % 16 or self.height < 32 or self.width < 32:
            raise ValueError(f"height and width must be multiples of 16 and >= 32, got {self.height}x{self.width}")
        if self.clips < 0 or self.images < 0:
            raise ValueError("clips and images must be >= 0")
        if not 0 <= self.heldout_fraction < 1 or not 0 <= self.degraded_fraction < 1:
            raise ValueError("heldout_fraction and degraded_fraction must be in [0, 1)")


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
    raise ValueError(f"unknown language {lang!r}")


def check_attributes(attrs: object) -> str:
    """'' when `attrs` is a valid synthetic attribute record, else the reason it is not."""
    if not isinstance(attrs, dict):
        return "attributes are not a JSON object"
    if attrs.get("background") not in BACKGROUNDS:
        return f"unknown background {attrs.get('background')!r}"
    objs = attrs.get("objects")
    if not isinstance(objs, list) or not 1 <= len(objs) <= 3:
        return "objects must be a list of 1-3 objects"
    if "camera" in attrs and attrs["camera"] not in CAMERAS:
        return f"unknown camera {attrs['camera']!r}"
    for i, o in enumerate(objs):
        if not isinstance(o, dict):
            return f"object {i} is not a JSON object"
        for key, table in (("shape", SHAPES), ("color", COLORS), ("size", SIZES)):
            if o.get(key) not in table:
                return f"object {i}: unknown {key} {o.get(key)!r}"
        if "action" in o:
            if o["action"] not in ACTIONS:
                return f"object {i}: unknown action {o['action']!r}"
            if o["action"] in ("move", "move2"):
                path = o.get("path")
                if not isinstance(path, list) or len(path) != (1 if o["action"] == "move" else 2) \
                        or any(d not in DIRECTIONS for d in path):
                    return f"object {i}: bad path {path!r} for action {o['action']}"
                if o.get("speed") not in SPEEDS:
                    return f"object {i}: unknown speed {o.get('speed')!r}"
    return ""


# ---------------------------------------------------------------- rendering

def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
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
    raise ValueError(shape)


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


def _start_positions(rng: np.random.Generator, objs: list[dict]) -> list[tuple[float, float]]:
    starts = []
    n = len(objs)
    for i, o in enumerate(objs):
        # spread objects over horizontal lanes, then push movers back so they stay in frame
        cx = -0.55 + 1.1 * (i + 0.5) / n + float(rng.uniform(-0.08, 0.08))
        cy = float(rng.uniform(-0.3, 0.3))
        if o.get("action") in ("move", "move2"):
            dist = 2 * SPEEDS[o["speed"]][0]
            for d in o["path"]:
                dx, dy = DIRECTIONS[d][0]
                cx, cy = cx - dx * dist / len(o["path"]) * 0.5, cy - dy * dist / len(o["path"]) * 0.5
        starts.append((cx, cy))
    return starts


def render(attrs: dict, frames: int, height: int, width: int, rng: np.random.Generator, ss: int = 2) -> np.ndarray:
    """Render (frames, H, W, 3) uint8 with `ss`x`ss` supersampling for smooth edges."""
    objs = attrs["objects"]
    starts = _start_positions(rng, objs)
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
            mask = _inside(o["shape"], c * lx + s * ly, -s * lx + c * ly)
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
    x = frames.astype(np.float64)
    if kind == "noise":
        x = x + rng.normal(0, 40, size=x.shape)
    elif kind == "blur":  # 5x5 box blur, per frame
        pad = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
        h, w = x.shape[1:3]
        x = sum(pad[:, i:i + h, j:j + w] for i in range(5) for j in range(5)) / 25.0
    elif kind == "jitter":  # each frame shifted by a random offset
        x = np.stack([np.roll(fr, tuple(rng.integers(-4, 5, size=2)), axis=(0, 1)) for fr in x])
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- the dataset

def _rng(seed: int, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, kind, index])


def _render_clip(cfg: SynthConfig, index: int) -> tuple[np.random.Generator, dict, np.ndarray]:
    rng = _rng(cfg.seed, 0, index)
    attrs = sample_attributes(rng, video=True)
    return rng, attrs, render(attrs, cfg.frames, cfg.height, cfg.width, rng)


def clean_clip(cfg: SynthConfig, index: int) -> np.ndarray:
    """Clip ``index`` as rendered, (T, H, W, 3) uint8: before any degradation and before the
    lossy mp4 encoding (what a perfect codec would give back)."""
    return _render_clip(cfg, index)[2]


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
    n_heldout = int(round(cfg.clips * cfg.heldout_fraction))
    n_degraded = int(round(cfg.clips * cfg.degraded_fraction))
    order = _rng(cfg.seed, 9, 0).permutation(cfg.clips)
    heldout = set(order[:n_heldout].tolist())
    degraded = {int(i): DEGRADATIONS[k % len(DEGRADATIONS)] for k, i in enumerate(order[n_heldout:n_heldout + n_degraded])}
    bar = tqdm(total=cfg.clips + cfg.images, desc="synth", unit="item", disable=not progress)
    for i in range(cfg.clips):
        rng, attrs, frames = _render_clip(cfg, i)
        kind = degraded.get(i, "none")
        caption_attrs = attrs
        if kind != "none":
            if kind == "mismatch":
                caption_attrs = sample_attributes(rng, video=True)
            else:
                frames = degrade(frames, kind, rng)
            quality = round(float(rng.uniform(0.1, 0.4)), 4)
        else:
            quality = round(float(rng.uniform(0.8, 1.0)), 4)
        rel = f"videos/clip_{i:05d}.mp4"
        write_video(tmp / rel, frames, fps=cfg.fps)
        template = int(rng.integers(0, 1000))
        for lang in ("en", "zh"):
            rows.append(_row(f"clip_{i:05d}", lang, rel, "video", "heldout" if i in heldout else "train",
                             caption(caption_attrs, lang, template), cfg, cfg.frames, quality, kind, attrs))
        bar.update()
    for i in range(cfg.images):
        rng = _rng(cfg.seed, 1, i)
        attrs = sample_attributes(rng, video=False)
        frame = render(attrs, 1, cfg.height, cfg.width, rng)[0]
        rel = f"images/image_{i:05d}.png"
        write_image(tmp / rel, frame)
        template = int(rng.integers(0, 1000))
        split = "heldout" if i < int(round(cfg.images * cfg.heldout_fraction)) else "train"
        quality = round(float(rng.uniform(0.8, 1.0)), 4)
        for lang in ("en", "zh"):
            rows.append(_row(f"image_{i:05d}", lang, rel, "image", split, caption(attrs, lang, template),
                             cfg, 1, quality, "none", attrs))
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
