"""The validation gate: each planted bad kind is caught, with its row named."""

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from stepvideo.config import ValidateParams
from stepvideo.data.ingest import ingest
from stepvideo.data.manifest import read_manifest, write_manifest
from stepvideo.data.synth import SynthConfig, generate
from stepvideo.data.validation import ValidationFailed, validate
from stepvideo.data.video_io import write_video

GOOD_EN = "A small red circle moves right on a blue background."


def _empty_mp4(path: Path) -> None:
    """A well-formed mp4 container holding zero frames."""
    with av.open(str(path), mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=8)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        c.start_encoding()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    manifest = generate(SynthConfig(clips=4, images=2, degraded_fraction=0), root, progress=False)
    rows = read_manifest(manifest)
    good = dict(rows[0])
    frames = np.zeros((17, 64, 64, 3), np.uint8)
    (root / "bad").mkdir()
    (root / "bad/zero.mp4").write_bytes(b"")
    full = (root / rows[0]["path"]).read_bytes()
    (root / "bad/truncated.mp4").write_bytes(full[: len(full) // 3])
    (root / "bad/notvideo.mp4").write_text("this is not a video\n")
    write_video(root / "bad/wrongres.mp4", np.zeros((17, 64, 72, 3), np.uint8))
    _empty_mp4(root / "bad/zeroframes.mp4")
    write_video(root / "bad/ok.mp4", frames)
    planted = {
        "zero_byte": {"path": "bad/zero.mp4"},
        "truncated": {"path": "bad/truncated.mp4"},
        "not_video": {"path": "bad/notvideo.mp4"},
        "missing": {"path": "bad/missing.mp4"},
        "wrong_resolution": {"path": "bad/wrongres.mp4"},
        "zero_frames": {"path": "bad/zeroframes.mp4"},
        "empty_caption": {"path": "bad/ok.mp4", "caption": "   "},
        "overlong_caption": {"path": "bad/ok.mp4", "caption": GOOD_EN * 20},
        "other_language": {"path": "bad/ok.mp4",
                           "caption": "Un petit cercle rouge se déplace vers la droite sur un fond bleu."},
        "duplicate_id": {"path": "bad/ok.mp4", "id": rows[1]["id"]},
        "non_utf8": {"path": "bad/ok.mp4"},
    }
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
    for name, change in planted.items():
        row = {**good, "id": name, "clip_id": name, "source": "ingest", "attributes": "", "caption": GOOD_EN, **change}
        line = json.dumps(row, ensure_ascii=False).encode()
        if name == "non_utf8":
            line = line.replace(b"small red", b"small \xff\xfe red")
        lines.append(line)
    bad_manifest = root / "planted.jsonl"
    bad_manifest.write_bytes(b"\n".join(lines) + b"\n")
    return bad_manifest, planted, rows


EXPECTED = {
    "zero_byte": "media_error", "truncated": "media_error", "not_video": "media_error", "missing": "media_error",
    "wrong_resolution": "probed_width", "zero_frames": "media_error", "empty_caption": "caption_chars",
    "overlong_caption": "caption_chars", "other_language": "lang_detected", "duplicate_id": "id",
    "non_utf8": "caption",
}


def test_each_planted_bad_kind_is_caught_and_named(planted, tmp_path):
    manifest, bad, rows = planted
    with pytest.raises(ValidationFailed) as err:
        validate(manifest, ValidateParams(policy="fail"), tmp_path / "v", progress=False)
    report = err.value.report
    by_id = {}
    for b in report["bad"]:
        by_id.setdefault(b["id"], []).extend(b["reasons"])
    for name, column in EXPECTED.items():
        assert name in by_id or name == "duplicate_id", f"{name} not caught: {sorted(by_id)}"
        if name == "duplicate_id":
            assert any(f"({column})" in r for r in by_id[rows[1]["id"]])
            continue
        assert any(f"({column})" in r for r in by_id[name]), (name, by_id[name])
    assert any("0 bytes" in r for r in by_id["zero_byte"])
    assert any("does not exist" in r for r in by_id["missing"])
    assert any("zero frames" in r for r in by_id["zero_frames"])
    # the good synthetic rows pass
    assert not {r["id"] for r in rows[2:]} & set(by_id)


def test_quarantine_moves_bad_rows_and_continues(planted, tmp_path):
    manifest, bad, rows = planted
    res = validate(manifest, ValidateParams(policy="quarantine", min_clean_fraction=0.2), tmp_path / "q",
                   progress=False)
    clean, quarantined = read_manifest(res.clean_manifest), read_manifest(res.quarantine_manifest)
    assert len(clean) + len(quarantined) == len(rows) + len(bad)
    assert {q["id"] for q in quarantined} >= set(bad) - {"duplicate_id"}
    assert all(q["reasons"] for q in quarantined)
    # clean rows still point at their media from the new folder
    assert all((res.clean_manifest.parent / r["path"]).resolve().is_file() for r in clean)


def test_quarantine_below_threshold_fails(planted, tmp_path):
    manifest, _, _ = planted
    with pytest.raises(ValidationFailed, match="below validate.min_clean_fraction"):
        validate(manifest, ValidateParams(policy="quarantine", min_clean_fraction=0.95), tmp_path / "t",
                 progress=False)


def test_missing_column_fails_the_table(tmp_path):
    m = write_manifest(tmp_path / "m.jsonl", [{"id": "a", "path": "x.mp4", "kind": "video", "split": "train"}])
    rows = [json.loads(line) for line in m.read_text().splitlines()]
    for r in rows:
        del r["caption"]
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValidationFailed, match=r"expect_column_to_exist"):
        validate(m, ValidateParams(policy="quarantine", min_clean_fraction=0.0), tmp_path / "o", progress=False)


def test_cli_validate_fail_exits_nonzero_naming_rows(planted, tmp_path):
    manifest, _, _ = planted
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "stepvideo.cli", "data", "validate", str(manifest), "--policy", "fail",
                           "--out", str(tmp_path / "o"), "--report", str(report), "--params", "/nonexistent.yaml"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "id='truncated'" in proc.stdout and "id='other_language'" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert json.loads(report.read_text())["bad_rows"] >= 11


def test_ingest_records_bad_rows_without_crashing(tmp_path):
    vids = tmp_path / "clips"
    vids.mkdir()
    write_video(vids / "a.mp4", np.full((17, 32, 48, 3), 90, np.uint8))
    (vids / "b.mp4").write_bytes(b"")
    caps = tmp_path / "captions.csv"
    caps.write_bytes("path,caption\na.mp4,一个红色的圆形向右移动\nb.mp4,A clip\nc.mp4,Missing file\n".encode()
                     + b"a.mp4,bad \xff bytes\n")
    manifest = ingest(vids, caps, tmp_path / "out", progress=False)
    rows = read_manifest(manifest)
    assert [r["probe_error"] != "" for r in rows] == [False, True, True, False]
    assert rows[0]["frames"] == 17 and (rows[0]["height"], rows[0]["width"]) == (32, 48)
    assert "0 bytes" in rows[1]["probe_error"] and "does not exist" in rows[2]["probe_error"]
    assert "\ufffd" in rows[3]["caption"]
    with pytest.raises(ValidationFailed) as err:
        validate(manifest, ValidateParams(policy="fail"), tmp_path / "v", progress=False)
    named = {b["id"] for b in err.value.report["bad"]}
    assert named >= {"b", "c"} and "a" in named  # the last row reuses id 'a': duplicate + non-UTF-8


def test_ingest_answers_hostile_rows_one_by_one(tmp_path):
    """A decompression bomb, a path that leaves the videos folder and a spreadsheet's BOM: each is that
    row's problem (or no problem at all), never the whole ingest's; a captions file without rows, or a
    bad one, fails before the out folder is made."""
    from PIL import Image

    from stepvideo.data.ingest import IngestError

    vids = tmp_path / "clips"
    vids.mkdir()
    write_video(vids / "a.mp4", np.full((17, 32, 48, 3), 90, np.uint8))
    Image.new("L", (14000, 14000)).save(vids / "bomb.png", optimize=True)  # ~20 KB on disk
    (tmp_path / "secret.mp4").write_bytes((vids / "a.mp4").read_bytes())
    caps = tmp_path / "captions.csv"
    caps.write_bytes(b"\xef\xbb\xbfpath,caption\na.mp4,A gray clip\nbomb.png,A bomb\n../secret.mp4,Outside\n"
                     + f"{tmp_path / 'secret.mp4'},Absolute\n".encode())
    rows = read_manifest(ingest(vids, caps, tmp_path / "out", progress=False))
    errors = {r["id"]: r["probe_error"] for r in rows}
    assert errors["a"] == "" and "too many pixels" in errors["bomb"]
    assert [r["probe_error"] for r in rows[2:]] and all("leaves the videos folder" in r["probe_error"]
                                                        for r in rows[2:]), rows[2:]
    for text in (b"path,caption\n", b"\xef\xbb\xbfpath,caption\n", b"file,text\na.mp4,x\n"):
        caps.write_bytes(text)
        with pytest.raises(IngestError, match="captions.csv"):
            ingest(vids, caps, tmp_path / "never", progress=False)
        assert not (tmp_path / "never").exists()
