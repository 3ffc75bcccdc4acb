"""The `small` recipe (what built the stepvideo-tiny release) still runs from scratch, a few steps
per stage, and `stepvideo release build` turns its outputs into a loadable bf16 release."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_params

pytestmark = pytest.mark.slow


def test_small_recipe_runs_from_scratch_and_rebuilds_the_release(project, tmp_path):
    from mlflow.tracking import MlflowClient
    from safetensors import safe_open
    from typer.testing import CliRunner

    from flows.cascade import cascade
    from stepvideo import tracking
    from stepvideo.cli import app
    from stepvideo.config import dump_params, preset
    from stepvideo.pipelines.t2v import T2VPipeline

    (project / "params.yaml").write_text(dump_params(preset("small")))
    tiny_params(project)
    result = cascade(root=str(project))
    assert not any(result["cached"].values())
    # from scratch: the encoders are built from the captions and registered; no stage starts from the release
    record = json.loads((project / "outputs" / "text_encoders" / "encoders.json").read_text())
    assert record["llm"]["source"] == "built"
    client = MlflowClient(tracking.tracking_uri())
    assert client.search_model_versions("name = 'stepvideo-text-encoders'")
    t2i = client.get_model_version_by_alias("stepvideo-dit-t2i", "candidate")
    assert t2i.tags["parent_model_version"] == "scratch"

    out = tmp_path / "release"
    res = CliRunner().invoke(app, ["release", "build", "--out", str(out), "--vae-items", "2"])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "release.json").read_text())
    assert info["preset"] == "small" and info["data_version"] == result["version"]["data_version"]
    assert info["benchmark"]["videos"] == 6 and "chance" in info["benchmark"]
    assert set(info["stage_seconds"]) >= {"train_vae", "t2i_pretrain", "sft", "evaluate"}
    with safe_open(str(out / "dit" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    pipe = T2VPipeline.from_pretrained(out)
    assert next(pipe.dit.parameters()).dtype == torch.float32
    assert pipe.dit.config.num_layers == 4  # the `small` DiT
    video = pipe.generate("一个红色的圆形向右移动", num_frames=17, steps=2)
    assert video.shape == (1, 17, 64, 64, 3)
    card = (out / "README.md").read_text()
    assert "`small` preset" in card and info["git_commit"] in card
