"""One list of each stage's code feeds both drivers: dvc.yaml's code deps and the Prefect cache keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stepvideo import stages, tracking

ROOT = Path(__file__).resolve().parents[1]


def _dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(_dvc_stages()))
def test_dvc_code_deps_are_the_stage_table(stage):
    deps = [d for d in _dvc_stages()[stage]["deps"] if d.startswith("stepvideo/")]
    assert sorted(deps) == stages.code_paths(stage), (
        f"dvc.yaml stage {stage!r}: its stepvideo/ deps must be exactly {stages.code_paths(stage)}")


def test_every_path_exists_and_the_stage_modules_are_listed():
    for stage in stages.STAGE_CODE:
        for p in stages.code_paths(stage):
            assert (ROOT / p).exists(), p
    # the modules where the stages and their config builders live (the drifted entries of issue 22)
    assert "stepvideo/stages_dit.py" in stages.code_paths("sft")
    assert "stepvideo/stage_utils.py" in stages.code_paths("t2i_pretrain")
    assert "stepvideo/pipeline.py" in stages.code_paths("train_vae")


def test_the_flow_hashes_only_the_table():
    src = (ROOT / "flows" / "cascade.py").read_text()
    assert "tracking.code_version(" not in src  # no list of modules of its own
    dit = ("t2i_pretrain", "t2v_lowres", "t2v_highres", "sft")  # one key function: stages.code_version(name)
    assert "stages.code_version(name)" in src
    for stage in set(stages.STAGE_CODE) - set(dit) - {"promote"}:  # promote is never cached
        assert f'stages.code_version("{stage}")' in src, stage


def test_a_dit_cache_key_moves_with_the_stage_module(monkeypatch, tmp_path):
    from flows import cascade
    from stepvideo.config import preset

    seen = []
    real = tracking.code_version

    def record(*modules):
        seen.append(modules)
        return real(*modules)

    monkeypatch.setattr(tracking, "code_version", record)
    key = cascade._dit_key(None, {"params": preset("demo"), "stage": "sft", "root": str(tmp_path)})
    assert key and seen and "stepvideo.stages_dit" in seen[-1] and "stepvideo.stage_utils" in seen[-1]
    monkeypatch.setitem(stages.STAGE_CODE, "sft", stages.STAGE_CODE["sft"] + ("stepvideo.fileio",))
    assert cascade._dit_key(None, {"params": preset("demo"), "stage": "sft", "root": str(tmp_path)}) != key
