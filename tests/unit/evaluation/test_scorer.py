"""The scorer's judges on hand-made clips (rendered with fixed start positions), and its summaries."""

from __future__ import annotations

import numpy as np
import pytest

from stepvideo.data.synth import degrade, render
from stepvideo.evaluation.checks import CATEGORIES, expected_checks
from stepvideo.evaluation.scorer import judge_camera, judge_count, score_frames, summarize
from stepvideo.evaluation.segment import analyse


def clip(objects, starts, background="black", camera="static", frames=17, size=64):
    attrs = {"background": background, "camera": camera, "objects": objects}
    return attrs, render(attrs, frames, size, size, starts=starts)


def verdicts(frames, attrs) -> dict[tuple[str, int | None], tuple[str, bool]]:
    return {(c["category"], c["object"]): (c["observed"], c["pass"]) for c in score_frames(frames, attrs)["checks"]}


def mover(direction, speed="slow", color="red", shape="circle", size="medium"):
    return {"shape": shape, "color": color, "size": size, "action": "move", "path": [direction], "speed": speed}


def still(color="red", shape="circle", size="medium", action="still"):
    return {"shape": shape, "color": color, "size": size, "action": action}


@pytest.mark.parametrize("direction,start", [("left", (0.3, 0.0)), ("right", (-0.3, 0.0)), ("up", (0.0, 0.3)),
                                             ("down", (0.0, -0.3))])
def test_motion_direction(direction, start):
    attrs, frames = clip([mover(direction)], [start])
    v = verdicts(frames, attrs)
    assert v[("motion", 0)] == (direction, True)
    assert v[("speed", 0)] == ("slow", True)


def test_a_clip_moving_left_is_not_judged_right():
    attrs, frames = clip([mover("left")], [(0.3, 0.0)])
    wrong = {**attrs, "objects": [mover("right")]}
    v = verdicts(frames, wrong)
    assert v[("motion", 0)] == ("left", False)


def test_speed_fast_and_object_leaving_the_frame():
    attrs, frames = clip([mover("right", speed="fast", size="large")], [(-0.2, 0.1)])  # ends past the edge
    v = verdicts(frames, attrs)
    assert v[("motion", 0)] == ("right", True) and v[("speed", 0)] == ("fast", True)


def test_still_object_is_still_and_moving_one_is_not():
    attrs, frames = clip([still()], [(0.0, 0.0)])
    assert verdicts(frames, attrs)[("motion", 0)] == ("still", True)
    attrs, frames = clip([mover("up")], [(0.0, 0.3)])
    assert verdicts(frames, {**attrs, "objects": [still()]})[("motion", 0)] == ("up", False)


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "diamond", "star"])
def test_shapes(shape):
    attrs, frames = clip([still(shape=shape)], [(0.0, 0.0)])
    assert verdicts(frames, attrs)[("shape", 0)] == (shape, True)


def test_a_red_square_is_not_a_red_circle():
    attrs, frames = clip([still(shape="square")], [(0.0, 0.0)])
    v = verdicts(frames, {**attrs, "objects": [still(shape="circle")]})
    assert v[("shape", 0)] == ("square", False)
    assert v[("color", 0)] == ("red", True)


def test_a_blue_circle_is_not_red():
    attrs, frames = clip([still(color="blue")], [(0.0, 0.0)])
    v = verdicts(frames, {**attrs, "objects": [still(color="red")]})
    assert v[("color", 0)] == ("missing", False)


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_sizes(size):
    attrs, frames = clip([still(shape="star", size=size)], [(0.0, 0.0)])
    assert verdicts(frames, attrs)[("size", 0)] == (size, True)


@pytest.mark.parametrize("camera", ["static", "pan_left", "pan_right", "zoom_in", "zoom_out"])
def test_camera(camera):
    attrs, frames = clip([mover("right")], [(-0.3, 0.0)], camera=camera, background="gray")
    assert judge_camera(analyse(frames)) == camera
    v = verdicts(frames, attrs)
    assert v[("camera", None)] == (camera, True)
    assert v[("motion", 0)] == ("right", True)  # the object's own motion, with the camera's undone


def test_a_static_camera_is_not_a_pan():
    attrs, frames = clip([still()], [(0.0, 0.0)], camera="static")
    v = verdicts(frames, {**attrs, "camera": "pan_left"})
    assert v[("camera", None)] == ("static", False)


@pytest.mark.parametrize("action", ["rotate_cw", "rotate_ccw"])
@pytest.mark.parametrize("shape", ["square", "triangle", "star"])
def test_rotation(shape, action):
    attrs, frames = clip([still(shape=shape, size="large", action=action)], [(0.0, 0.0)])
    expected = "cw" if action == "rotate_cw" else "ccw"
    assert verdicts(frames, attrs)[("rotation", 0)] == (expected, True)


def test_circle_rotation_and_growing_size_are_not_judged():
    checks = expected_checks({"background": "black", "camera": "static",
                              "objects": [still(action="rotate_cw"), still(color="blue", action="grow")]})
    cats = [(c.category, c.object) for c in checks]
    assert ("rotation", 0) not in cats and ("size", 1) not in cats and ("grow_shrink", 1) in cats


@pytest.mark.parametrize("action", ["grow", "shrink"])
def test_grow_shrink(action):
    attrs, frames = clip([still(shape="square", action=action)], [(0.0, 0.0)], camera="zoom_out")
    other = "shrink" if action == "grow" else "grow"
    assert verdicts(frames, attrs)[("grow_shrink", 0)] == (action, True)
    assert verdicts(frames, {**attrs, "objects": [still(shape="square", action=other)]})[("grow_shrink", 0)][1] is False


def test_two_step_sequence():
    obj = {"shape": "diamond", "color": "yellow", "size": "small", "action": "move2", "path": ["left", "up"],
           "speed": "slow"}
    attrs, frames = clip([obj], [(0.25, 0.25)], background="navy")
    assert verdicts(frames, attrs)[("sequence", 0)] == ("left,up", True)
    swapped = {**obj, "path": ["up", "left"]}
    assert verdicts(frames, {**attrs, "objects": [swapped]})[("sequence", 0)] == ("left,up", False)


def test_count_and_two_objects_of_one_color():
    objs = [mover("left", color="green"), mover("right", color="green", shape="square")]
    attrs, frames = clip(objs, [(-0.4, -0.4), (0.4, 0.4)], background="brown")
    assert judge_count(analyse(frames)) == 2
    v = verdicts(frames, attrs)
    assert v[("count", None)] == ("2", True)
    assert v[("motion", 0)] == ("left", True) and v[("motion", 1)] == ("right", True)
    assert v[("shape", 0)] == ("circle", True) and v[("shape", 1)] == ("square", True)


@pytest.mark.parametrize("background", ["black", "gray", "navy", "brown"])
def test_background(background):
    attrs, frames = clip([still(color="white")], [(0.0, 0.0)], background=background)
    assert verdicts(frames, attrs)[("background", None)] == (background, True)


def test_still_image():
    attrs = {"background": "gray", "objects": [{"shape": "triangle", "color": "orange", "size": "large"}]}
    frames = render(attrs, 1, 64, 64, starts=[(0.0, 0.0)])
    result = score_frames(frames, attrs)
    assert {c["category"] for c in result["checks"]} == {"count", "background", "color", "shape", "size"}
    assert result["passed"]


def test_artifact_scores_rise_with_noise_and_jitter():
    attrs, frames = clip([mover("right")], [(-0.3, 0.0)])
    clean = score_frames(frames, attrs)
    noisy = score_frames(degrade(frames, "noise", np.random.default_rng(0)), attrs)
    jittered = score_frames(degrade(frames, "jitter", np.random.default_rng(0)), attrs)
    assert noisy["color_noise"] > 3 * clean["color_noise"]
    assert jittered["flicker"] > 3 * clean["flicker"]


def test_another_resolution_and_aspect():
    attrs = {"background": "black", "camera": "pan_right", "objects": [mover("down", color="cyan", shape="star")]}
    frames = render(attrs, 17, 96, 160, starts=[(0.0, -0.3)])
    assert score_frames(frames, attrs)["passed"]


def test_summary_accuracy_languages_and_consistency():
    row = lambda pid, lang, passes: {"prompt_id": pid, "seed": 0, "lang": lang, "passed": all(passes),  # noqa: E731
                                     "flicker": 0.0, "color_noise": 1.0,
                                     "checks": [{"category": c, "pass": p} for c, p in zip(("color", "shape"), passes)]}
    videos = [row("a", "en", [True, True]), row("a", "zh", [True, False]), row("b", "en", [False, False]),
              row("b", "zh", [False, False])]
    s = summarize(videos)
    assert s["categories"]["color"] == 0.5 and s["categories"]["shape"] == 0.25
    assert s["categories"]["camera"] is None and set(s["categories"]) == set(CATEGORIES)
    assert s["overall"] == pytest.approx((0.5 + 0.25) / 2)
    assert s["languages"] == {"en": 0.5, "zh": 0.25}
    assert s["consistency"] == 0.75  # 3 of 4 paired checks agree


def test_flicker_is_not_measured_where_the_object_is_lost():
    """A video whose object never shows has no flicker figure (not a perfect one); summaries average
    flicker over the videos that have one and say how many."""
    from stepvideo.preference.pairs import RewardWeights, reward

    attrs, frames = clip([mover("right")], [(-0.3, 0.0)])
    empty = render({**attrs, "objects": []}, 17, 64, 64, starts=[])
    lost, seen = score_frames(empty, attrs), score_frames(frames, attrs)
    assert lost["flicker"] is None and seen["flicker"] is not None and seen["flicker"] >= 0
    assert not lost["passed"]  # the checks charge the missing object
    s = summarize([{**seen, "lang": "en"}, {**lost, "lang": "en"}])
    assert s["flicker"] == pytest.approx(seen["flicker"]) and s["flicker_videos"] == 1
    assert summarize([{**lost, "lang": "en"}])["flicker"] is None
    w = RewardWeights(checks=1.0, flicker=0.5, color_noise=0.0)
    share = lambda r: sum(c["pass"] for c in r["checks"]) / len(r["checks"])  # noqa: E731
    assert reward({**lost, "passed_share": share(lost)}, w) == pytest.approx(share(lost))  # no flicker term


def test_a_clip_analysed_once_judges_like_one_analysed_per_record():
    """The benchmark segments each clip once and judges it against its prompt and its chance record:
    the same verdicts as analysing it for each record, and the scene is left as it was."""
    attrs, frames = clip([mover("right", color="blue", shape="square")], [(-0.3, 0.0)], camera="zoom_in",
                         background="gray")
    other = {**attrs, "camera": "pan_left", "objects": [mover("left", color="red")]}
    scene = analyse(frames)
    labels, shift = scene.labels.copy(), scene.shift.copy()
    for record in (attrs, other, attrs):
        assert score_frames(frames, record, scene=scene) == score_frames(frames, record)
    assert np.array_equal(scene.labels, labels) and np.array_equal(scene.shift, shift)
