"""End to end: the Prefect cascade flow and `dvc repro` on a throwaway copy of the project."""

import json
import os
import subprocess

import pytest

from conftest import BIN, tiny_params

pytestmark = pytest.mark.slow


def test_flow_runs_end_to_end_records_mlflow_and_hits_cache(project):
    from mlflow.tracking import MlflowClient

    from flows.cascade import cascade
    from stepvideo import tracking

    tiny_params(project)
    first = cascade(root=str(project))
    assert first["cached"] == {"data": False, "version": False, "validate": False, "text_encoders": False,
                               "text_cache": False, "train_vae": False}
    assert (project / "data.dvc").is_file() and (project / ".dvc-remote").is_dir()
    assert first["version"]["data_version"].endswith(".dir")
    assert first["validate"]["metrics"]["rows"] == 2 * (6 + 4)

    client = MlflowClient(tracking.tracking_uri())
    parent = client.get_run(first["run_id"])
    assert parent.data.tags["data_version"] == first["version"]["data_version"]
    assert parent.data.tags["git_commit"] and parent.data.params["data.clips"] == "6"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{first['run_id']}'")
    stages = {r.data.tags["stage"]: r for r in children}
    assert set(stages) == {"data", "version", "validate", "text_encoders", "text_cache", "train_vae"}
    vae_run = stages["train_vae"]
    assert vae_run.data.tags["data_version"] == first["version"]["data_version"]
    assert "heldout_psnr" in vae_run.data.metrics and "loss_l1" in vae_run.data.metrics
    mv = client.get_model_version_by_alias("stepvideo-vae", "candidate")
    assert mv.run_id == vae_run.info.run_id and mv.tags["data_version"] == first["version"]["data_version"]
    from stepvideo.models.vae import VideoVAE

    VideoVAE.from_pretrained(tracking.resolve_model("models:/stepvideo-vae@candidate", project / "dl"))
    te = stages["text_encoders"]
    assert te.data.tags["llm_version"] == first["text_encoders"]["versions"]["llm"]
    versions = client.search_model_versions("name = 'stepvideo-text-encoders'")
    assert any(mv.run_id == te.info.run_id for mv in versions)
    v = stages["validate"]
    assert v.data.metrics["clean_fraction"] > 0.8 and v.data.metrics["rows"] == 20
    assert v.data.tags["data_version"] == first["version"]["data_version"]
    assert any(a.path == "validation" for a in client.list_artifacts(v.info.run_id))

    second = cascade(root=str(project))
    assert all(second["cached"][k] for k in ("data", "validate", "text_encoders", "text_cache", "train_vae"))
    assert second["version"]["data_version"] == first["version"]["data_version"]

    # a changed params section busts exactly the stages that read it
    tiny_params(project, seed=1)
    third = cascade(root=str(project))
    assert not third["cached"]["data"] and not third["cached"]["validate"]
    assert third["version"]["data_version"] != first["version"]["data_version"]


def test_dvc_repro_in_a_temporary_clone(project):
    tiny_params(project)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    run = lambda *cmd: subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)  # noqa: E731
    assert run(str(BIN / "stepvideo"), "data", "synth").returncode == 0
    assert run(str(BIN / "dvc"), "add", "data").returncode == 0
    repro = run(str(BIN / "dvc"), "repro")
    assert repro.returncode == 0, repro.stderr[-2000:]
    report = json.loads((project / "outputs/validated/report.json").read_text())
    assert report["rows"] == 20
    assert (project / "dvc.lock").is_file()
    assert (project / "outputs/text_encoders/llm/config.json").is_file()
    assert (project / "outputs/text_cache/text_cache.safetensors").is_file()
    assert (project / "outputs/vae/config.json").is_file() and (project / "outputs/vae/lineage.json").is_file()
    again = run(str(BIN / "dvc"), "repro")
    assert again.returncode == 0 and "didn't change" in (again.stdout + again.stderr)
    dag = run(str(BIN / "dvc"), "dag")
    assert all(s in dag.stdout for s in ("data.dvc", "validate", "text_encoders", "text_cache", "train_vae"))
    # a params change reruns the stage
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace("min_clean_fraction: 0.8",
                                                                                       "min_clean_fraction: 0.5"))
    status = run(str(BIN / "dvc"), "status")
    assert "validate" in status.stdout and "params.yaml" in status.stdout


def test_flow_runs_on_ingested_user_clips(project, tmp_path):
    """The same cascade on a user's own clips: bad files are quarantined, the rest flows on."""
    import numpy as np

    from flows.cascade import cascade
    from stepvideo.data.synth import SynthConfig, generate

    tiny_params(project)
    src = generate(SynthConfig(clips=6, images=0), tmp_path / "theirs", progress=False).parent
    (src / "videos" / "broken.mp4").write_bytes(b"not a video")
    captions = ["A red circle moves right on a gray background.", "蓝色背景上，一个小的绿色正方形向上移动。"]
    lines = ["path,caption"] + [f"clip_{i:05d}.mp4,{captions[i % 2]}" for i in range(6)] + ["broken.mp4,A clip"]
    (tmp_path / "captions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cascade(root=str(project), source="ingest", videos=str(src / "videos"),
                     captions=str(tmp_path / "captions.csv"))
    assert "ingest" in result["cached"] and "data" not in result["cached"]
    metrics = result["validate"]["metrics"]
    assert metrics["rows"] == 7 and metrics["bad_rows"] == 1
    quarantine = (project / "outputs/validated/quarantine.jsonl").read_text()
    assert "broken" in quarantine and np.isfinite(result["vae"]["metrics"]["train_l1_last"])
