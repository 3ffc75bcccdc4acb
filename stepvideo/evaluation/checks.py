"""What a prompt asks for: its ground-truth attributes as a list of checks, one per judged attribute.

Attributes are the embedded domain's records (``stepvideo.data.synth``): a background, 1-3 objects
(shape, color, size, and for clips an action with its path and speed) and a camera. Every check
belongs to one of the 11 benchmark categories below; a category's accuracy is the share of its
checks that pass, over all scored videos.

Why these 11: they are the properties the embedded domain varies and a reader of pixels can judge
without a learned model. Static appearance (color, shape, size, count, background), how objects
move (direction or staying still, speed, a two-step path, growing/shrinking, rotating) and how the
camera moves. Multi-object composition is not a category of its own: a 2-3 object prompt is judged
by its count and by each object's color/shape/size found on the same segment (attribute binding),
so composition errors show up there.

Two attributes are not judged because pixels cannot show them: the rotation of a circle (it looks
the same at every angle), and the size of an object that grows or shrinks (its size changes during
the clip; the prompt's size word has no single frame to hold to).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

CATEGORIES: tuple[str, ...] = ("color", "shape", "size", "count", "background", "motion", "speed",
                               "grow_shrink", "rotation", "camera", "sequence")

CATEGORY_TEXT = {
    "color": "each object's color", "shape": "each object's shape", "size": "each object's size (small/medium/large)",
    "count": "the number of objects", "background": "the background color",
    "motion": "a moving object's direction, or a still object staying still", "speed": "slow or quick motion",
    "grow_shrink": "an object growing or shrinking", "rotation": "clockwise or counterclockwise rotation",
    "camera": "the camera: static, pan left/right, zoom in/out", "sequence": "a two-step path (left, then up)",
}


@dataclass(frozen=True)
class Check:
    """One judged attribute: `category`, the object it is about (index into attrs["objects"], None
    for a scene-wide check) and the expected value as a string (e.g. "red", "left", "left,up")."""

    category: str
    object: int | None
    expected: str

    def to_dict(self) -> dict:
        return asdict(self)


def expected_checks(attrs: dict) -> list[Check]:
    """The checks an attribute record implies, in a fixed order. A record with a "camera" key is a
    clip (motion, speed, ... are judged); without one it is a still."""
    objects = attrs["objects"]
    video = "camera" in attrs
    checks = [Check("count", None, str(len(objects))), Check("background", None, attrs["background"])]
    if video:
        checks.append(Check("camera", None, attrs["camera"]))
    for i, o in enumerate(objects):
        checks.append(Check("color", i, o["color"]))
        checks.append(Check("shape", i, o["shape"]))
        action = o.get("action", "still") if video else None
        if action not in ("grow", "shrink"):
            checks.append(Check("size", i, o["size"]))
        if action is None:
            continue
        if action == "move":
            checks += [Check("motion", i, o["path"][0]), Check("speed", i, o["speed"])]
        elif action == "move2":
            checks.append(Check("sequence", i, ",".join(o["path"])))
        elif action == "still":
            checks.append(Check("motion", i, "still"))
        elif action in ("grow", "shrink"):
            checks.append(Check("grow_shrink", i, action))
        elif action in ("rotate_cw", "rotate_ccw") and o["shape"] != "circle":
            checks.append(Check("rotation", i, "cw" if action == "rotate_cw" else "ccw"))
    return checks

