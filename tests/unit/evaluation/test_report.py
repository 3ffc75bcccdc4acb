"""The evaluation report: one self-contained HTML page, checked as text and in headless chromium."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from stepvideo.data.video_io import write_video
from stepvideo.evaluation.report import BASELINE_COLOR, CANDIDATE_COLOR, write_report

EVIL = '<script>alert("x")</script> & "quotes"'


def _clip(color, step: int) -> np.ndarray:
    frames = np.full((17, 64, 64, 3), 30, np.uint8)
    for t in range(17):
        x = (4 + step * t) % 48
        frames[t, 24:40, x:x + 16] = color
    return frames


def _video(vid, category, lang, prompt, path, passed, user=0.3):
    checks = [{"category": category, "object": 0, "expected": "red", "observed": "red" if passed else "blue",
               "pass": passed},
              {"category": "count", "object": None, "expected": "1", "observed": "1", "pass": True}]
    return {"id": vid, "prompt_id": vid.split("-")[0], "category": category, "lang": lang, "prompt": prompt,
            "seed": 0, "video": path, "checks": checks, "passed": passed, "flicker": 0.01, "color_noise": 2.0,
            "user_metrics": {"clip": user}}


@pytest.fixture
def results(tmp_path) -> dict:
    root = tmp_path / "eval"
    specs = [("b001-en-s0", "color", "en", "A red square moves left.", (220, 30, 30), 2, True),
             ("b001-zh-s0", "color", "zh", "红色方块向左移动。", (30, 200, 30), 3, False),
             ("b002-en-s0", "motion", "en", EVIL, (30, 30, 220), -2, True)]
    videos, base_videos = [], []
    for vid, cat, lang, prompt, color, step, passed in specs:
        write_video(root / "videos" / f"{vid}.mp4", _clip(color, step))
        videos.append(_video(vid, cat, lang, prompt, f"videos/{vid}.mp4", passed))
        # the baseline's videos: absolute paths, inside the evaluated folder (as `eval run --baseline` copies them)
        bpath = write_video(root / "baseline" / "videos" / f"{vid}.mp4", _clip(color[::-1], -step))
        base_videos.append(_video(vid, cat, lang, prompt, str(bpath), not passed, user=0.1))
    summary = {"overall": 0.6, "categories": {"color": 0.5, "motion": 0.9, "count": 1.0, "speed": None},
               "languages": {"en": 0.7, "zh": 0.5},
               "language_categories": {"en": {"color": 0.6, "motion": 0.9}, "zh": {"color": 0.4}},
               "consistency": 0.8, "checks": {"color": 2, "motion": 1, "count": 3, "speed": 0}, "videos": 3,
               "flicker": 0.01, "color_noise": 2.0, "user_metrics": {"clip": 0.3}}
    base_summary = {**summary, "overall": 0.4, "categories": {"color": 0.7, "motion": 0.3, "count": 0.8, "speed": None},
                    "languages": {"en": 0.45, "zh": 0.35}, "user_metrics": {"clip": 0.1}}
    return {"format": 1, "model": "models:/stepvideo-t2v@candidate <b>", "created": "2026-12-03T12:00:00Z",
            "git_commit": "0123456789abcdef",
            "settings": {"seeds": 1, "steps": 20, "cfg": 5.0, "shift": 3.0, "frames": 17, "height": 64, "width": 64,
                         "fps": 8},
            "summary": summary, "videos": videos,
            "baseline": {"model": "models:/stepvideo-t2v@champion", "summary": base_summary, "videos": base_videos},
            "loss_curves": {"t2i_pretrain": [[i, 5.0 / i] for i in range(1, 30)],
                            "t2v_lowres": [[i, 3.0 - 0.05 * i] for i in range(1, 30)]}}



def test_report_is_self_contained_and_escaped(results, tmp_path):
    out = write_report(results, tmp_path / "eval")
    assert out == tmp_path / "eval" / "report.html"
    assert not list(out.parent.glob(".report.html.tmp-*"))
    page = out.read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I), "something loads from the web"
    assert "http://" not in page and "https://" not in page
    # one <video> per candidate entry and one per baseline entry, all inline
    assert page.count("<video") == 6
    assert page.count('src="data:video/mp4;base64,') == 6
    # text is escaped: the only <script> is ours
    assert page.count("<script>") == 1
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert "stepvideo-t2v@candidate &lt;b&gt;" in page
    assert "红色方块向左移动。" in page
    # verdicts, n/a for a category without checks, charts and loss curves
    assert "✗ color[0]: red → blue" in page and "✓ count: 1" in page
    assert "n/a" in page and page.count("<svg") >= 5 and "loss: t2v_lowres" in page
    assert CANDIDATE_COLOR in page and BASELINE_COLOR in page


def test_report_gallery_and_missing_keys(tmp_path):
    root = tmp_path / "gallery"
    write_video(root / "o001.mp4", _clip((200, 200, 30), 1))
    results = {"model": "m", "summary": {"categories": None, "videos": 2},
               "videos": [{"id": "o001", "category": "Sports", "lang": "zh", "prompt": "一个人在打篮球",
                           "video": "o001.mp4", "checks": [], "user_metrics": {"clip": 0.25}},
                          {"id": "o002", "category": "Food", "prompt": "noodles", "video": "missing.mp4"}]}
    page = write_report(results, root, out=tmp_path / "r" / "g.html", title="Gallery <1>").read_text()
    assert "not judged" in page and "Accuracy per category" not in page
    assert "Gallery &lt;1&gt;" in page and "Sports" in page and "Food" in page
    assert page.count("<video") == 1 and "cannot read missing.mp4" in page
    assert "0.250" in page  # the per-category user-metric mean
    # the bare minimum does not crash
    assert "<html" in write_report({}, tmp_path / "empty").read_text()


# ---------------------------------------------------------------- headless chromium

@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed but CI is set: .ci/run installs Debian's chromium")
    pytest.skip("chromium not installed (apt-get install chromium); the browser checks run on CI")


def _run_chromium(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
           f"--user-data-dir={profile}", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)  # ~1 s when idle
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"chromium took over {e.timeout} s: {(e.stderr or b'')[-2000:]!r}")
    except subprocess.CalledProcessError as e:
        pytest.fail(f"chromium failed (rc {e.returncode}): {e.stderr[-2000:]}")


class _Videos(HTMLParser):
    def __init__(self):
        super().__init__()
        self.videos, self.loaded, self._in_loaded = [], None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "video":
            self.videos.append(attrs)
        self._in_loaded = attrs.get("id") == "videos-loaded"

    def handle_data(self, data):
        if self._in_loaded:
            self.loaded, self._in_loaded = data.strip(), False


def test_report_videos_play_in_chromium(results, tmp_path, chromium):
    out = write_report(results, tmp_path / "eval")
    dom = _run_chromium(chromium, tmp_path, "--virtual-time-budget=10000", "--dump-dom", out.as_uri()).stdout
    parser = _Videos()
    parser.feed(dom)
    assert len(parser.videos) == 6
    errors = [v.get("data-src") for v in parser.videos if v.get("data-error")]
    assert not errors, f"videos that failed to decode: {errors}"
    durations = [float(v.get("data-duration", "0")) for v in parser.videos]
    assert all(d > 0 for d in durations), f"videos without metadata: {durations}"
    assert all(abs(d - 17 / 8) < 0.2 for d in durations), durations  # 17 frames at 8 fps
    assert all(v.get("data-ready") == "1" for v in parser.videos), "a video's first frame was not decoded"
    assert parser.loaded == "6"


def test_report_charts_render_in_chromium(results, tmp_path, chromium):
    from PIL import Image

    out = write_report(results, tmp_path / "eval")
    shot = tmp_path / "shot.png"
    _run_chromium(chromium, tmp_path, "--hide-scrollbars", "--window-size=1280,1000", "--virtual-time-budget=5000",
                  f"--screenshot={shot}", out.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1000, 1280)

    def count(hex_color: str) -> int:
        rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb).max(axis=-1) <= 10).sum())

    # the category and language charts are above the fold: both series' bars are drawn
    assert count(CANDIDATE_COLOR) > 1500, count(CANDIDATE_COLOR)
    assert count(BASELINE_COLOR) > 1000, count(BASELINE_COLOR)


def test_every_value_from_a_results_file_is_escaped(tmp_path):
    """A results file is user input: a number field holding markup must show as text."""
    from stepvideo.evaluation.report import render_report

    evil = "<script>alert(1)</script>"
    results = {"model": evil, "summary": {"videos": evil, "flicker_videos": evil}, "videos": [],
               "preference": {"win_rate": {"wins": evil, "ties": evil, "losses": evil},
                              "win_rate_by_checks": {"n": evil}, "flicker_videos_candidate": evil}}
    page = render_report(results, tmp_path)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page


def test_only_files_inside_the_evaluated_folder_are_embedded(tmp_path):
    """A results file is user input: a baseline (or candidate) video path that leaves the evaluated
    folder (`..`, an absolute path elsewhere, a symlink out) is refused, visibly, and its bytes stay out."""
    import base64

    from stepvideo.evaluation.report import render_report

    root = tmp_path / "eval"
    inside = write_video(root / "videos" / "ok.mp4", _clip((220, 30, 30), 2))
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"SECRET-BYTES " * 50)
    (root / "videos" / "link.mp4").symlink_to(secret)
    (root / "videos" / "sub").mkdir()
    refused = ["../secret.mp4", "/etc/passwd", str(secret), "videos/link.mp4", "videos/sub/../../../secret.mp4",
               "videos/\x00.mp4"]
    base_videos = [{"id": f"v{i}", "video": path} for i, path in enumerate(refused)]
    results = {"model": "m", "summary": {"videos": len(refused)},
               "videos": [{"id": f"v{i}", "video": "videos/ok.mp4"} for i in range(len(refused))],
               "baseline": {"model": "b", "summary": {}, "videos": base_videos}}
    page = render_report(results, root)
    payloads = [secret.read_bytes(), Path("/etc/passwd").read_bytes() if Path("/etc/passwd").is_file() else b""]
    for data in payloads:
        if data:
            encoded = base64.b64encode(data).decode()
            assert encoded[:60] not in page and data[:40].decode("latin-1") not in page
    for path in refused:
        assert f"refused {html.escape(path)} (outside the evaluated folder" in page, path
    assert page.count("refused ") == len(refused)
    # the file inside the folder is embedded, by a relative path and by an absolute one
    assert page.count(base64.b64encode(inside.read_bytes()).decode()[:200]) == len(refused)
    ok_abs = render_report({"videos": [{"id": "a", "video": str(inside)}]}, root)
    assert ok_abs.count('src="data:video/mp4;base64,') == 1 and "refused" not in ok_abs
    # the folder itself reached through a symlink: its own files are inside it
    (tmp_path / "eval-link").symlink_to(root)
    via_link = render_report({"videos": [{"id": "a", "video": "videos/ok.mp4"}]}, tmp_path / "eval-link")
    assert via_link.count('src="data:video/mp4;base64,') == 1


def test_preference_change_counts_are_escaped(tmp_path):
    from stepvideo.evaluation.report import render_report

    evil = "<img src=x onerror=alert(1)>"
    results = {"videos": [], "summary": {"flicker_videos": "<b>"},
               "preference": {"flicker_change": {"mean": 0.1, "up": evil, "down": evil, "equal": evil}}}
    page = render_report(results, tmp_path)
    assert "<img src=x" not in page and page.count(html.escape(evil)) == 3
    assert "mean flicker (&lt;b&gt; videos" in page  # escaped once, not twice (&amp;lt;)


def test_an_earlier_eval_folders_baseline_videos_are_copied_inside(tmp_path):
    """`eval run --baseline EARLIER_FOLDER`: its videos are copied under OUT/baseline (the report embeds
    only files inside OUT); a path that leaves the earlier folder is not copied and shows as refused."""
    from stepvideo.evaluation.report import render_report
    from stepvideo.evaluation.runner import _copy_baseline_videos

    earlier, out = tmp_path / "earlier", tmp_path / "out"
    write_video(earlier / "videos" / "a.mp4", _clip((220, 30, 30), 2))
    (tmp_path / "secret.mp4").write_bytes(b"SECRET")
    videos = _copy_baseline_videos([{"id": "a", "video": "videos/a.mp4"}, {"id": "b", "video": "../secret.mp4"}],
                                   earlier, out / "baseline")
    assert videos[0]["video"] == "baseline/videos/a.mp4" and (out / "baseline" / "videos" / "a.mp4").is_file()
    assert videos[1]["video"] == "../secret.mp4" and not (out / "secret.mp4").exists()
    page = render_report({"videos": videos}, out)
    assert page.count('src="data:video/mp4;base64,') == 1 and "refused ../secret.mp4" in page
