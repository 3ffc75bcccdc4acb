import json
from pathlib import Path

import yaml

from conftest import REPO
from stepvideo.config import load_params
from stepvideo.data.manifest import read_manifest
from stepvideo.data.synth import (BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, SIZES, SynthConfig, caption,
                                  check_attributes, generate)
from stepvideo.data.video_io import read_video



def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_byte_for_byte_deterministic(tmp_path):
    cfg = SynthConfig(clips=5, images=3, seed=3)
    generate(cfg, tmp_path / "a", progress=False)
    generate(cfg, tmp_path / "b", progress=False)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b and len(a) == 5 + 3 + 1
    generate(SynthConfig(clips=5, images=3, seed=4), tmp_path / "c", progress=False)
    assert _files(tmp_path / "c") != a


def test_rows_match_files_and_attributes(tmp_path):
    cfg = SynthConfig(clips=8, images=4, frames=34, height=48, width=64, heldout_fraction=0.25, degraded_fraction=0.5)
    manifest = generate(cfg, tmp_path / "d", progress=False)
    rows = read_manifest(manifest)
    assert len(rows) == 2 * (8 + 4) and len({r["id"] for r in rows}) == len(rows)
    assert {r["split"] for r in rows} == {"train", "heldout"}
    assert {r["degradation"] for r in rows if r["kind"] == "video"} >= {"none", "noise", "blur", "jitter", "mismatch"}
    for r in rows:
        frames = read_video(manifest.parent / r["path"])
        assert frames.shape == ((34 if r["kind"] == "video" else 1), 48, 64, 3)
        assert check_attributes(json.loads(r["attributes"])) == ""
        if r["degradation"] != "none":
            assert r["quality"] < 0.5 and r["split"] == "train"
        else:
            assert r["quality"] >= 0.8


def test_captions_name_every_attribute_in_both_languages(tmp_path):
    rows = read_manifest(generate(SynthConfig(clips=12, images=6, degraded_fraction=0), tmp_path / "d", progress=False))
    for r in rows:
        attrs, text = json.loads(r["attributes"]), r["caption"]
        lang = r["lang"]
        bg = attrs["background"] if lang == "en" else BACKGROUNDS[attrs["background"]][1]
        assert bg in text, (r["id"], text)
        for o in attrs["objects"]:
            words = ([SHAPES[o["shape"]][0], o["color"], o["size"]] if lang == "en"
                     else [SHAPES[o["shape"]][1], COLORS[o["color"]][1], SIZES[o["size"]][1]])
            for w in words:
                assert w in text, (r["id"], w, text)
            for d in o.get("path", []):
                assert (d if lang == "en" else DIRECTIONS[d][1]) in text, (r["id"], d, text)


def test_chinese_captions_are_chinese_and_templates_vary():
    attrs = {"background": "gray", "camera": "pan_left",
             "objects": [{"shape": "star", "color": "red", "size": "small", "action": "move2", "path": ["right", "up"],
                          "speed": "fast"}]}
    zh = {caption(attrs, "zh", t) for t in range(3)}
    en = {caption(attrs, "en", t) for t in range(3)}
    assert len(zh) == 3 and len(en) == 3
    assert all("先向右移动，然后向上移动" in z and "镜头向左平移" in z for z in zh)
    assert all("moves right, then up" in e and "pans left" in e for e in en)


def test_default_dataset_reproduces_committed_dvc_hash(tmp_path):
    """A fresh clone regenerates exactly the data that data.dvc records."""
    from dvc.repo import Repo

    params = load_params(REPO / "params.yaml")
    cfg = SynthConfig(**{k: getattr(params.data, k) for k in SynthConfig.__dataclass_fields__})
    generate(cfg, tmp_path / "data", progress=False)
    repo = Repo.init(str(tmp_path), no_scm=True)
    repo.add(str(tmp_path / "data"))
    repo.close()
    ours = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]
    committed = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    assert (ours["md5"], ours["nfiles"], ours["size"]) == (committed["md5"], committed["nfiles"], committed["size"])
