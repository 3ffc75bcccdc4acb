"""Reading and writing clips: H.264 mp4 through PyAV (lossy yuv420p, or lossless RGB), stills as PNG.

Frames are numpy uint8 arrays of shape (T, H, W, 3), RGB. Writing is bit-exact and single-threaded
so the same frames always give the same bytes (the committed `data.dvc` hash depends on it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from stepvideo.errors import InputError
from stepvideo.fileio import atomic_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class VideoReadError(InputError):
    """A media file that cannot be opened or decoded; the message names the file."""


@dataclass(frozen=True)
class Probe:
    frames: int
    fps: float
    height: int
    width: int
    duration: float
    kind: str  # "video" | "image"


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 8, crf: int = 18,
                lossless: bool = False) -> Path:
    """Write (T, H, W, 3) uint8 frames as H.264 mp4, deterministically: yuv420p at `crf`, or with
    `lossless` RGB at qp 0 (libx264rgb: reads back bit-exact, ~23 KB for a 17x64x64 synth clip).

    x264's `ultrafast` preset: with slower presets the same frames gave different bytes now and then
    (seen in 1 of ~50 encodes under CPU load, single-threaded), which would break `data.dvc`."""
    import av

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"{path}: expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if not lossless and (frames.shape[1] % 2 or frames.shape[2] % 2):
        raise InputError(f"{path}: H.264 yuv420p needs even height and width, got {frames.shape[1:3]}")
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4",
                                           options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264rgb" if lossless else "libx264", rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        quality = {"qp": "0"} if lossless else {"crf": str(crf)}
        stream.options = {**quality, "preset": "ultrafast", "threads": "1", "flags": "+bitexact"}
        stream.codec_context.thread_count = 1
        # The encoder keeps references to frames for its lookahead, but the memory behind a PyAV
        # frame is freed with the Python object: keep every frame alive until the flush, or the
        # bytes written depend on reused memory (nondeterministic output).
        alive = []
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if not lossless:
                frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)  # x264's rate control reads timestamps
            frame.pict_type = av.video.frame.PictureType.NONE
            alive.append(frame)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        del alive
    return path


def write_image(path: str | os.PathLike, frame: np.ndarray) -> Path:
    """Write one (H, W, 3) uint8 frame as PNG (lossless, deterministic)."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(tmp, format="PNG", optimize=False)
    return path


def _readable(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: file is empty (0 bytes)")
    return path


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode a clip or still into (T, H, W, 3) uint8 RGB; raises VideoReadError naming the file."""
    path = _readable(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))[None]
        except Image.DecompressionBombError as e:  # e.g. 14000x14000 in a 24 KB PNG
            raise VideoReadError(f"{path}: too many pixels to decode safely ({e})") from e
        except (UnidentifiedImageError, OSError) as e:
            raise VideoReadError(f"{path}: not a readable image ({e})") from e
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream (zero frames)")
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.error.FFmpegError as e:
        raise VideoReadError(f"{path}: cannot decode ({e})") from e
    if not frames:
        raise VideoReadError(f"{path}: decodes to zero frames")
    return np.stack(frames)


def probe(path: str | os.PathLike) -> Probe:
    """Fully decode a file and report frames, fps, size and duration (decoding is the real test).
    A clip is decoded one frame at a time and no frame is kept: a long 1080p clip needs one frame of
    memory, not the whole clip's (200 frames of 640x640 took 575 MB when they were stacked)."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        frames = read_video(path)
        return Probe(1, 0.0, frames.shape[1], frames.shape[2], 0.0, "image")
    _readable(path)
    import av

    count, height, width = 0, 0, 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream (zero frames)")
            rate = container.streams.video[0].average_rate
            fps = float(rate) if rate else 0.0
            for frame in container.decode(video=0):
                if not count:
                    height, width = frame.height, frame.width
                count += 1
    except av.error.FFmpegError as e:
        raise VideoReadError(f"{path}: cannot decode ({e})") from e
    if not count:
        raise VideoReadError(f"{path}: decodes to zero frames")
    return Probe(count, fps, height, width, count / fps if fps else 0.0, "video")
