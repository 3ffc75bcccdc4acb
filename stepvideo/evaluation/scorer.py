"""The scorer: a video's frames + the attributes its prompt asks for -> a verdict per check.

One implementation, used three ways: the benchmark (`stepvideo eval run`), the Video-DPO reward and
the promotion gates. It reads pixels only (see `segment.py` for how a frame is segmented):

- each expected object is found by its color (the largest segment of that color in each frame; two
  objects of one color are tracked apart by position and matched to the prompt's objects in the way
  that agrees with the prompt most);
- shape: the segment's coverage against each known shape's template placed at the segment's centroid
  with the segment's area (soft IoU; the best-fitting frame decides);
- size: the radius that area implies for the shape, undone for the camera's zoom, in world units;
- motion, speed, two-step paths: the centroid track with the camera's motion undone;
- grow/shrink: the area at the end over the area at the start (zoom undone);
- rotation: the phase of the k-th complex moment of the coverage (k = the shape's symmetry order)
  followed from frame to frame;
- camera: the chained translation + zoom of the background;
- count: the number of segments most frames show.

It also gives two artifact scores per video: `flicker` (the jerk of each object's area and
centroid: temporal instability of the segmentation) and `color_noise` (how far background pixels
stray from the known background colors, in RGB levels). Flicker is measured on the objects the
scorer tracks over 3 or more frames; a video with none has no flicker figure (None), not a perfect
one: a model that loses its objects must not read as stable (the checks count the lost object).
Summaries average flicker over the videos that have one and say how many (`flicker_videos`).
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np

from stepvideo.data.synth import inside_shape
from stepvideo.data.vocabulary import DIRECTIONS, SIZES, SPEEDS
from stepvideo.evaluation.checks import CATEGORIES, Check, expected_checks
from stepvideo.evaluation.segment import BG_COLORS, BG_NAMES, PALETTE_NAMES, Scene, Segment, analyse, background_distance
from stepvideo.errors import InputError

SHAPE_NAMES = ("circle", "square", "triangle", "diamond", "star")
SYMMETRY = {"square": 4, "diamond": 4, "triangle": 3, "star": 5}
RADII = {name: 2 * v[0] for name, v in SIZES.items()}          # world units
STILL_LIMIT = 0.15            # world units: a "still" object moves less than this
SPEED_SPLIT = 2 * (SPEEDS["slow"][0] + SPEEDS["fast"][0]) / 2  # between the slow and fast distances
PAN_LIMIT = 0.15              # world units of background translation over the clip
ZOOM_LIMIT = 0.12             # |log zoom| over the clip
GROW_LIMIT = 0.35             # |log area ratio|
ROTATION_LIMIT = math.radians(25)


# ------------------------------------------------------------------ shape templates


@lru_cache(maxsize=None)
def _unit_shape(shape: str) -> tuple[float, float, float]:
    """(area, centroid x, centroid y) of the unit shape (radius 1), by dense sampling."""
    g = (np.arange(800) + 0.5) / 800 * 3 - 1.5
    x, y = np.meshgrid(g, g)
    m = inside_shape(shape, x, y)
    cell = (3 / 800) ** 2
    return float(m.sum() * cell), float(x[m].mean()), float(y[m].mean())


def _template(shape: str, seg_alpha: np.ndarray, cx: float, cy: float, area: float, ss: int = 4) -> np.ndarray:
    """Coverage of `shape` (angle 0) with the given centroid and area, on the segment's pixel grid."""
    ua, ox, oy = _unit_shape(shape)
    r = math.sqrt(area / ua)
    h, w = seg_alpha.shape
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    ys = (np.arange(h)[:, None] + sub[None, :]).reshape(-1)
    xs = (np.arange(w)[:, None] + sub[None, :]).reshape(-1)
    gx, gy = np.meshgrid((xs - cx) / r + ox, (ys - cy) / r + oy)
    inside = inside_shape(shape, gx, gy).astype(np.float32)
    return inside.reshape(h, ss, w, ss).mean(axis=(1, 3))


def shape_scores(seg: Segment) -> dict[str, float]:
    """Soft IoU of the segment's coverage with each shape's template (cropped to the region)."""
    ys, xs = np.nonzero(seg.alpha > 0)
    y0, y1 = max(ys.min() - 3, 0), ys.max() + 4
    x0, x1 = max(xs.min() - 3, 0), xs.max() + 4
    a = seg.alpha[y0:y1, x0:x1]
    out = {}
    for s in SHAPE_NAMES:
        t = _template(s, a, seg.cx - x0, seg.cy - y0, seg.area)
        out[s] = float(np.minimum(a, t).sum() / max(np.maximum(a, t).sum(), 1e-6))
    return out


def orientation_phase(seg: Segment, k: int) -> complex:
    """The k-th complex moment of the coverage about its centroid (its phase turns k times as fast
    as the shape)."""
    ys, xs = np.nonzero(seg.alpha > 0)
    z = (xs - seg.cx) + 1j * (ys - seg.cy)
    return complex((seg.alpha[ys, xs] * z ** k).sum())


# ------------------------------------------------------------------ tracks


class Track:
    """One expected object's segment in each frame (None where it was not found)."""

    def __init__(self, scene: Scene, segs: list[Segment | None]):
        self.scene, self.segs = scene, segs
        self.frames = [t for t, s in enumerate(segs) if s is not None]
        self.clean = [t for t in self.frames if not segs[t].touches_border] or self.frames
        # frames where the whole object is in view: neither clipped nor beside another object
        self.whole = [t for t in self.clean if not segs[t].touches_other] or self.clean
        self._shapes: dict[bool, tuple[str, dict[str, float]]] = {}  # the shape and size checks share it

    def best_frames(self, frames: list[int]) -> list[int]:
        """Of `frames`, those showing the whole object, else those not clipped, else all."""
        return [t for t in self.whole if t in frames] or [t for t in self.clean if t in frames] or frames

    @property
    def present(self) -> bool:
        return len(self.frames) * 2 >= len(self.segs)

    def world(self, t: int) -> np.ndarray:
        s = self.segs[t]
        x, y = self.scene.to_reference(t, s.cx, s.cy)
        return np.array([x, y]) / (self.scene.height / 2)

    def shape(self, rotating: bool) -> tuple[str, dict[str, float]]:
        """The best-fitting shape over the (up to) three largest whole views of the object (a
        rotating object: in its first tenth of the clip, before it has turned); template scores are
        summed over those frames."""
        if rotating in self._shapes:
            return self._shapes[rotating]
        early = [t for t in self.frames if not rotating or t <= 0.1 * (len(self.segs) - 1)] or self.frames[:1]
        frames = sorted(self.best_frames(early), key=lambda t: -self.segs[t].area)[:3]
        total: dict[str, float] = {}
        for t in frames:
            for name, v in shape_scores(self.segs[t]).items():
                total[name] = total.get(name, 0.0) + v / len(frames)
        self._shapes[rotating] = (max(total, key=total.get), total)
        return self._shapes[rotating]

    def radius(self, shape: str) -> float:
        """World radius: the largest over clean frames (occlusion only ever hides area)."""
        ua = _unit_shape(shape if shape in SHAPE_NAMES else "circle")[0]
        r = [math.sqrt(self.segs[t].area / ua) / self.scene.scale[t] for t in self.whole]
        return max(r) / (self.scene.height / 2)

    def log_area_change(self) -> float:
        f = self.clean
        n = max(1, min(3, len(f) // 3))
        a0 = np.mean([self.segs[t].area / self.scene.scale[t] ** 2 for t in f[:n]])
        a1 = np.mean([self.segs[t].area / self.scene.scale[t] ** 2 for t in f[-n:]])
        return float(math.log(a1 / a0))

    def displacement(self, start: float, end: float) -> np.ndarray:
        """World displacement between clip times `start` and `end` (fractions of the clip): per axis,
        the slope of a line fitted to the centroid over the frames in that window where the object is
        not clipped on that axis (a segment cut by the bottom border still has a true x centroid; a
        fast object leaving the frame keeps its speed), times the window's length."""
        last = len(self.segs) - 1
        lo, hi = start * last, end * last
        out = np.zeros(2)
        for axis, clipped in ((0, "clipped_x"), (1, "clipped_y")):
            f = [t for t in self.frames if lo - 1e-6 <= t <= hi + 1e-6 and not getattr(self.segs[t], clipped)]
            if len(f) >= 2 and f[-1] > f[0]:
                pos = np.array([self.world(t)[axis] for t in f])
                out[axis] = np.polyfit(np.array(f, float), pos, 1)[0] * (hi - lo)
            else:
                f = [t for t in self.frames if not getattr(self.segs[t], clipped)] or self.frames
                t0, t1 = min(f, key=lambda t: abs(t - lo)), min(f, key=lambda t: abs(t - hi))
                out[axis] = self.world(t1)[axis] - self.world(t0)[axis]
        return out

    def rotation(self, k: int) -> float:
        """Total rotation (radians, positive = clockwise on screen) over the clip."""
        total, prev = 0.0, None
        for t in self.clean:
            m = orientation_phase(self.segs[t], k)
            if abs(m) < 1e-9:
                continue
            if prev is not None:
                total += math.remainder(math.atan2(m.imag, m.real) - prev, 2 * math.pi)
            prev = math.atan2(m.imag, m.real)
        return total / k

    def flicker(self) -> float | None:
        f = self.clean
        if len(f) < 3:
            return None  # too short a track to measure a jerk
        area = np.array([self.segs[t].area for t in f])
        pos = np.array([[self.segs[t].cx, self.segs[t].cy] for t in f])
        r = math.sqrt(np.median(area) / math.pi)
        jerk_a = np.abs(np.diff(area / np.median(area), 2)).mean()
        jerk_p = np.linalg.norm(np.diff(pos, 2, axis=0), axis=1).mean() / max(r, 1.0)
        return float(jerk_a + jerk_p)


def _tracks_for_color(scene: Scene, color: int, k: int) -> list[Track]:
    """k tracks of palette color `color`: per frame its k largest segments, linked to the previous
    frame's positions (a frame with fewer segments gives the nearest one to the missing tracks)."""
    per_track: list[list[Segment | None]] = [[] for _ in range(k)]
    prev: list[tuple[float, float] | None] = [None] * k
    for segs in scene.segments:
        mine = [s for s in segs if s.color == color][:k]
        assign: list[Segment | None] = [None] * k
        if mine:
            if all(p is None for p in prev):
                order = sorted(range(len(mine)), key=lambda i: mine[i].cx)  # left to right, a fixed start
                for j in range(k):
                    assign[j] = mine[order[j]] if j < len(mine) else None
            else:
                best, cost = None, math.inf
                for perm in itertools.product(range(len(mine)), repeat=k):
                    if len(set(perm)) < min(k, len(mine)):
                        continue
                    c = sum(math.hypot(mine[i].cx - p[0], mine[i].cy - p[1]) for i, p in zip(perm, prev) if p)
                    if c < cost:
                        best, cost = perm, c
                assign = [mine[i] for i in best]
        for j in range(k):
            per_track[j].append(assign[j])
            if assign[j] is not None:
                prev[j] = (assign[j].cx, assign[j].cy)
    return [Track(scene, segs) for segs in per_track]


# ------------------------------------------------------------------ judges


def _direction(d: np.ndarray) -> str:
    if np.hypot(*d) < STILL_LIMIT:
        return "still"
    return max(DIRECTIONS, key=lambda name: float(np.dot(DIRECTIONS[name][0], d)))


def judge_camera(scene: Scene) -> str:
    zoom = math.log(scene.scale[-1])
    pan = scene.shift[-1] / scene.scale[-1] / (scene.height / 2)
    if zoom > ZOOM_LIMIT:
        return "zoom_in"
    if zoom < -ZOOM_LIMIT:
        return "zoom_out"
    if abs(pan[0]) > PAN_LIMIT and abs(pan[0]) > abs(pan[1]):
        return "pan_left" if pan[0] > 0 else "pan_right"  # the picture slides opposite to the camera
    return "static"


def judge_count(scene: Scene) -> int:
    counts = sorted(len(s) for s in scene.segments)
    return int(counts[int(0.75 * (len(counts) - 1))])


def _object_verdicts(track: Track | None, check: Check, expected_obj: dict) -> str:
    """The observed value of one object check on its track ("missing" when no track)."""
    if track is None or not track.present:
        return "missing"
    cat = check.category
    if cat == "color":
        return check.expected
    action = expected_obj.get("action")
    if cat == "shape":
        return track.shape(rotating=action in ("rotate_cw", "rotate_ccw"))[0]
    if cat == "size":
        seen = track.shape(rotating=action in ("rotate_cw", "rotate_ccw"))[0]
        r = track.radius(expected_obj["shape"] if seen == expected_obj["shape"] else seen)
        return min(RADII, key=lambda n: abs(math.log(r / RADII[n])))
    if cat == "motion":
        return _direction(track.displacement(0.0, 1.0))
    if cat == "speed":
        return "fast" if np.hypot(*track.displacement(0.0, 1.0)) > SPEED_SPLIT else "slow"
    if cat == "sequence":
        return f"{_direction(track.displacement(0.0, 0.5))},{_direction(track.displacement(0.5, 1.0))}"
    if cat == "grow_shrink":
        change = track.log_area_change()
        return "grow" if change > GROW_LIMIT else "shrink" if change < -GROW_LIMIT else "same"
    if cat == "rotation":
        turn = track.rotation(SYMMETRY.get(expected_obj["shape"], 4))
        return "cw" if turn > ROTATION_LIMIT else "ccw" if turn < -ROTATION_LIMIT else "none"
    raise InputError(f"unknown check category {cat!r}")


def _color_noise(scene: Scene) -> float:
    objects = scene.labels >= 0
    from scipy import ndimage

    rims = ndimage.binary_dilation(objects, iterations=2, structure=np.ones((1, 3, 3), bool))
    d = background_distance(scene.frames, BG_COLORS[BG_NAMES.index(scene.background)])
    return float(np.minimum(d[~rims], 60.0).mean()) if (~rims).any() else 0.0


def score_frames(frames: np.ndarray, attrs: dict, *, scene: Scene | None = None) -> dict:
    """Judge one video (T, H, W, 3) uint8 against an attribute record: {"checks": [{category,
    object, expected, observed, pass}], "passed", "flicker", "color_noise"}. ``scene``: the clip's
    ``analyse(frames)`` when the caller judges the same clip against several records (read only)."""
    video = "camera" in attrs
    if video and len(frames) < 2:
        raise InputError("a clip's attributes (with a camera and actions) need a clip of 2 or more frames, got a still")
    scene = analyse(frames) if scene is None else scene
    objects = attrs["objects"]
    checks = expected_checks(attrs)
    scene_obs = {"count": str(judge_count(scene)), "background": scene.background}
    if video:
        scene_obs["camera"] = judge_camera(scene)
    # objects by color; same-colored objects get the assignment that agrees with the prompt most
    by_color: dict[str, list[int]] = {}
    for i, o in enumerate(objects):
        by_color.setdefault(o["color"], []).append(i)
    observed: dict[tuple[str, int | None], str] = {}
    tracks: dict[int, Track] = {}
    for color, idx in by_color.items():
        found = _tracks_for_color(scene, PALETTE_NAMES.index(color), len(idx)) if color in PALETTE_NAMES else []
        best, best_hits = None, -1
        for perm in itertools.permutations(range(len(found)), len(idx)) if found else [()]:
            obs = {}
            for slot, i in enumerate(idx):
                track = found[perm[slot]] if perm else None
                for c in checks:
                    if c.object == i:
                        obs[(c.category, i)] = _object_verdicts(track, c, objects[i])
            hits = sum(obs[(c.category, c.object)] == c.expected for c in checks if (c.category, c.object) in obs)
            if hits > best_hits:
                best, best_hits = (obs, perm), hits
        observed.update(best[0])
        for slot, i in enumerate(idx):
            if best[1]:
                tracks[i] = found[best[1][slot]]
    rows = []
    for c in checks:
        seen = scene_obs[c.category] if c.object is None else observed[(c.category, c.object)]
        rows.append({**c.to_dict(), "observed": seen, "pass": seen == c.expected})
    flick = [f for t in tracks.values() if t.present and (f := t.flicker()) is not None]
    return {"checks": rows, "passed": all(r["pass"] for r in rows),
            "flicker": float(np.mean(flick)) if flick else None, "color_noise": _color_noise(scene)}


# ------------------------------------------------------------------ summaries


def summarize(videos: list[dict]) -> dict:
    """Accuracy per category (share of its checks passed), per language, per language and
    category, overall (the mean of the category accuracies, so rare categories weigh the same), and
    bilingual consistency: for prompt pairs scored in both languages (same `prompt_id` and seed),
    the share of checks whose verdict is the same in English and in Chinese. Flicker: the mean over
    the videos with a tracked object (`flicker_videos` of them)."""
    def acc(rows: list[dict]) -> dict[str, float | None]:
        out = {}
        for cat in CATEGORIES:
            hits = [c["pass"] for r in rows for c in r["checks"] if c["category"] == cat]
            out[cat] = float(np.mean(hits)) if hits else None
        return out

    cats = acc(videos)
    flickers = [v["flicker"] for v in videos if v.get("flicker") is not None]
    known = [v for v in cats.values() if v is not None]
    langs = sorted({v.get("lang") for v in videos if v.get("lang")})
    by_lang = {lang: [v for v in videos if v.get("lang") == lang] for lang in langs}
    pairs, agree = 0, 0
    index = {(v.get("prompt_id"), v.get("seed"), v.get("lang")): v for v in videos}
    for (pid, seed, lang), v in index.items():
        other = index.get((pid, seed, "zh")) if lang == "en" else None
        if pid is None or other is None:
            continue
        for a, b in zip(v["checks"], other["checks"]):
            pairs += 1
            agree += a["pass"] == b["pass"]
    def micro(rows):  # noqa: E306
        hits = [c["pass"] for r in rows for c in r["checks"]]
        return float(np.mean(hits)) if hits else None
    return {"overall": float(np.mean(known)) if known else None, "categories": cats,
            "languages": {lang: micro(rows) for lang, rows in by_lang.items()},
            "language_categories": {lang: acc(rows) for lang, rows in by_lang.items()},
            "consistency": agree / pairs if pairs else None,
            "checks": {cat: sum(c["category"] == cat for r in videos for c in r["checks"]) for cat in CATEGORIES},
            "videos": len(videos),
            "passed": float(np.mean([v["passed"] for v in videos])) if videos else None,
            "flicker": float(np.mean(flickers)) if flickers else None, "flicker_videos": len(flickers),
            "color_noise": float(np.mean([v["color_noise"] for v in videos])) if videos else None}
