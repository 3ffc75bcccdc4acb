"""Pixels -> scene: background, colored segments per frame, the camera's motion.

The embedded domain draws flat-colored objects from a known palette over one of four known
backgrounds (a base color with a faint +-10 checkerboard). So a frame segments by color: a pixel
near the background's color line is background, a pixel near a palette color belongs to that color,
anything else (anti-aliased edges, codec noise) is left out. Connected pixels of one color form a
segment. The camera's motion is measured on the background alone (objects masked out): a global
translation + zoom about the frame's center, fitted between consecutive frames by least squares on
the brightness constancy equation (Lucas-Kanade with a parametric model, refined by warping), and
chained over the clip.

All coordinates are pixels, x to the right and y down; world units (the renderer's) are pixels
divided by H/2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from stepvideo.data.vocabulary import BACKGROUNDS, COLORS, SIZES
from stepvideo.errors import InputError

PALETTE_NAMES = tuple(COLORS)
PALETTE = np.array([COLORS[c][0] for c in PALETTE_NAMES], dtype=np.float32)  # (8, 3)
BG_NAMES = tuple(BACKGROUNDS)
BG_COLORS = np.array([BACKGROUNDS[b][0] for b in BG_NAMES], dtype=np.float32)  # (4, 3)
CHECKER = 10.0            # the background's checkerboard amplitude, per channel
BG_RADIUS = 24.0          # a pixel this close to the background's color line is background
COLOR_RADIUS = 72.0       # ... this close to a palette color (and closer than to the background) is that color
SMALLEST_RADIUS = 2 * min(v[0] for v in SIZES.values())  # world units (frame height = 2)
_STRUCT4 = ndimage.generate_binary_structure(2, 1)


@dataclass
class Segment:
    """One connected region of one palette color in one frame (pixel units)."""

    color: int          # index into PALETTE_NAMES
    area: float         # pixels (coverage-weighted: anti-aliased edges count by their share)
    cx: float
    cy: float
    mask: np.ndarray    # (H, W) bool, the region's pixels
    alpha: np.ndarray   # (H, W) float32 coverage of the color in [0, 1] around the region, 0 elsewhere
    clipped_x: bool     # touches the left or right border (its x centroid is biased)
    clipped_y: bool     # touches the top or bottom border
    touches_other: bool  # borders a segment of another color (it may be partly hidden)

    @property
    def touches_border(self) -> bool:
        return self.clipped_x or self.clipped_y


@dataclass
class Scene:
    frames: np.ndarray                  # (T, H, W, 3) float32
    background: str
    background_mask: np.ndarray         # (T, H, W) bool
    labels: np.ndarray                  # (T, H, W) int8: palette index, -1 for background/unknown
    segments: list[list[Segment]]       # per frame, area-sorted (largest first)
    scale: np.ndarray                   # (T,) camera zoom relative to frame 0
    shift: np.ndarray                   # (T, 2) camera translation (x, y) in pixels, center-relative
    min_area: float

    @property
    def height(self) -> int:
        return self.frames.shape[1]

    @property
    def width(self) -> int:
        return self.frames.shape[2]

    def to_reference(self, t: int, x: float, y: float) -> tuple[float, float]:
        """Pixel (x, y) of frame t -> where that scene point was in frame 0 (camera motion undone)."""
        cx, cy = (self.width - 1) / 2, (self.height - 1) / 2
        s, (tx, ty) = self.scale[t], self.shift[t]
        return (x - cx - tx) / s + cx, (y - cy - ty) / s + cy


def background_distance(px: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Distance of pixels (..., 3) to the checkerboard's color segment base + s*(1,1,1), |s| <= CHECKER."""
    d = px - base
    s = np.clip(d.mean(-1, keepdims=True), -CHECKER, CHECKER)
    return np.linalg.norm(d - s, axis=-1)


def classify_background(frames: np.ndarray) -> int:
    """Index of the known background most pixels of the clip lie near (the border counts double)."""
    sub = frames[:, ::2, ::2].reshape(-1, 3)
    votes = [(background_distance(sub, b) < BG_RADIUS).sum() for b in BG_COLORS]
    return int(np.argmax(votes))


def label_pixels(frames: np.ndarray, bg: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels (T, H, W) int8 with -1 = none, background mask (T, H, W))."""
    d_bg = background_distance(frames, BG_COLORS[bg])
    d_pal = np.linalg.norm(frames[..., None, :] - PALETTE, axis=-1)  # (T, H, W, 8)
    nearest = d_pal.argmin(-1)
    d_near = np.take_along_axis(d_pal, nearest[..., None], -1)[..., 0]
    is_bg = d_bg < BG_RADIUS
    labels = np.where((d_near < COLOR_RADIUS) & (d_near < d_bg) & ~is_bg, nearest, -1).astype(np.int8)
    return labels, is_bg


def coverage(frame: np.ndarray, color: int, bg: int) -> np.ndarray:
    """Per-pixel share of palette color `color` over background `bg`: the projection of the pixel
    onto the line from the background to the color, clipped to [0, 1]."""
    c, b = PALETTE[color], BG_COLORS[bg]
    v = c - b
    return np.clip(((frame - b) @ v) / float(v @ v), 0.0, 1.0).astype(np.float32)


def find_segments(frame: np.ndarray, labels: np.ndarray, bg: int, min_area: float) -> list[Segment]:
    """The frame's colored regions with at least `min_area` pixels, largest first. A color's mask is
    opened first (a 1-pixel seam where two colors blend, e.g. red + blue ~ purple, is not an object)."""
    h, w = labels.shape
    out: list[Segment] = []
    for color in np.unique(labels):
        if color < 0:
            continue
        mask = ndimage.binary_opening(labels == color, _STRUCT4)
        comp, n = ndimage.label(mask, _STRUCT4)
        if n == 0:
            continue
        cov = None
        for k, sl in enumerate(ndimage.find_objects(comp), 1):
            region = comp[sl] == k
            if region.sum() < min_area * 0.5:
                continue
            if cov is None:
                cov = coverage(frame, int(color), bg)
            # coverage counts in the region grown by one pixel (its anti-aliased rim)
            y0, y1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, h)
            x0, x1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, w)
            grown = ndimage.binary_dilation(comp[y0:y1, x0:x1] == k, _STRUCT4)
            alpha = np.zeros((h, w), np.float32)
            mine = grown & (labels[y0:y1, x0:x1] < 0)  # the rim, minus pixels of other colors
            mine |= comp[y0:y1, x0:x1] == k
            alpha[y0:y1, x0:x1] = np.where(mine, cov[y0:y1, x0:x1], 0.0)
            area = float(alpha.sum())
            if area < min_area:
                continue
            ys, xs = np.mgrid[0:h, 0:w]
            full = comp == k
            ring = ndimage.binary_dilation(full, iterations=2) & ~full
            other = bool(((labels[ring] >= 0) & (labels[ring] != color)).sum() >= 2)
            out.append(Segment(int(color), area, float((alpha * xs).sum() / area), float((alpha * ys).sum() / area),
                               full, alpha, bool(full[:, 0].any() or full[:, -1].any()),
                               bool(full[0].any() or full[-1].any()), other))
    out.sort(key=lambda s: -s.area)
    return out


# ------------------------------------------------------------------ camera


def _gray(frame: np.ndarray) -> np.ndarray:
    return frame @ np.array([0.299, 0.587, 0.114], np.float32)


def _smooth(gray: np.ndarray) -> np.ndarray:
    """The blur the motion fit works on (float64, sigma 0.7 px)."""
    return ndimage.gaussian_filter(gray.astype(np.float64), 0.7)


def _fit_motion(a: np.ndarray, b: np.ndarray, valid: np.ndarray, iters: int = 4) -> tuple[float, float, float]:
    """(tx, ty, s) with b(x') ~ a(x), x' = (1 + s) (x - c) + c + t: translation + zoom about the center c.
    ``a`` and ``b`` are :func:`_smooth`-ed gray frames."""
    h, w = a.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    X, Y = xs - cx, ys - cy
    gy, gx = np.gradient(a)
    tx = ty = s = 0.0
    inner = valid.copy()
    inner[:3], inner[-3:], inner[:, :3], inner[:, -3:] = False, False, False, False
    for _ in range(iters):
        # sample b at the predicted positions of a's pixels
        coords = np.stack([(1 + s) * Y + cy + ty, (1 + s) * X + cx + tx])
        bw = ndimage.map_coordinates(b, coords, order=1, mode="nearest")
        inside = inner & (coords[0] >= 1) & (coords[0] <= h - 2) & (coords[1] >= 1) & (coords[1] <= w - 2)
        if inside.sum() < 50:
            break
        e = (bw - a)[inside]
        J = np.stack([gx[inside], gy[inside], gx[inside] * X[inside] + gy[inside] * Y[inside]], 1)
        delta, *_ = np.linalg.lstsq(J.T @ J + 1e-3 * np.eye(3), -(J.T @ e), rcond=None)
        # b(p + d) ~ a(p) + grad . (p' - p) => first-order update of the parameters
        tx, ty, s = tx + delta[0], ty + delta[1], s + delta[2]
    # the model assumes small steps: a fit that runs off (a frame with no usable background, a
    # generated clip that changes wholesale) counts as no camera motion for this pair
    if not (np.isfinite([tx, ty, s]).all() and abs(s) < 0.25 and max(abs(tx), abs(ty)) < max(h, w) / 6):
        return 0.0, 0.0, 0.0
    return tx, ty, s


def camera_motion(frames: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chained camera motion relative to frame 0: (scale (T,), shift (T, 2)), from the background
    pixels of each pair of consecutive frames (objects and their rims masked out)."""
    t = len(frames)
    scale, shift = np.ones(t), np.zeros((t, 2))
    if t < 2:
        return scale, shift
    gray = [_smooth(g) for g in _gray(frames)]  # each frame blurred once (it is b of one pair, a of the next)
    for i in range(1, t):
        valid = ndimage.binary_erosion(background[i - 1] & background[i], iterations=2)
        tx, ty, s = _fit_motion(gray[i - 1], gray[i], valid)
        scale[i] = scale[i - 1] * (1 + s)
        shift[i] = shift[i - 1] * (1 + s) + (tx, ty)
    return scale, shift


def analyse(frames: np.ndarray) -> Scene:
    """Segment a clip (T, H, W, 3) uint8 (or a still, T = 1)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"expected frames (T, H, W, 3), got {frames.shape}")
    f = frames.astype(np.float32)
    h = f.shape[1]
    min_area = 0.15 * (SMALLEST_RADIUS * h / 2) ** 2  # about a seventh of the smallest object's area
    bg = classify_background(f)
    labels, is_bg = label_pixels(f, bg)
    segments = [find_segments(f[i], labels[i], bg, min_area) for i in range(len(f))]
    scale, shift = camera_motion(f, is_bg)
    return Scene(f, BG_NAMES[bg], is_bg, labels, segments, scale, shift, min_area)
