"""End to end: the Prefect cascade flow and `dvc repro` on a throwaway copy of the project."""

import json
import os
import shutil
import subprocess

import pytest

from conftest import BIN, REPO, tiny_params

pytestmark = pytest.mark.slow

DIT_STAGES = {"t2i_pretrain": "stepvideo-dit-t2i", "t2v_lowres": "stepvideo-dit-t2v-lowres",
              "t2v_highres": "stepvideo-dit-t2v-highres", "sft": "stepvideo-dit-sft"}
ALL_STAGES = ("data", "version", "validate", "text_encoders", "text_cache", "train_vae", "latent_cache", *DIT_STAGES,
              "dpo", "evaluate", "bundle", "promote")


def test_flow_runs_end_to_end_records_mlflow_and_hits_cache(project):
    from mlflow.tracking import MlflowClient

    from flows.cascade import cascade
    from stepvideo import tracking

    tiny_params(project)
    first = cascade(root=str(project))
    assert first["cached"] == {name: False for name in ALL_STAGES}
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
    assert set(stages) == set(ALL_STAGES)
    vae_run = stages["train_vae"]
    assert vae_run.data.tags["data_version"] == first["version"]["data_version"]
    assert "heldout_psnr" in vae_run.data.metrics and "loss_l1" in vae_run.data.metrics
    # how much content the VAE keeps: the scorer on held-out clips before and after a round trip
    assert vae_run.data.metrics["scorer_gt_overall"] > 0.9 and "scorer_vae_overall" in vae_run.data.metrics
    mv = client.get_model_version_by_alias("stepvideo-vae", "candidate")
    assert mv.run_id == vae_run.info.run_id and mv.tags["data_version"] == first["version"]["data_version"]
    from stepvideo.models.vae import VideoVAE

    VideoVAE.from_pretrained(tracking.resolve_model("models:/stepvideo-vae@candidate", project / "dl"))
    te = stages["text_encoders"]
    assert te.data.tags["llm_version"] == first["text_encoders"]["versions"]["llm"]
    # the demo fine-tunes the release: its encoders are used as they are (recorded, not rebuilt)
    record = json.loads((project / "outputs" / "text_encoders" / "encoders.json").read_text())
    assert record["llm"]["source"].endswith("text_encoders/llm") and record["llm"]["version"] == te.data.tags["llm_version"]
    v = stages["validate"]
    assert v.data.metrics["clean_fraction"] > 0.8 and v.data.metrics["rows"] == 20
    assert v.data.tags["data_version"] == first["version"]["data_version"]
    assert any(a.path == "validation" for a in client.list_artifacts(v.info.run_id))

    # the DiT cascade: each stage's folder registered with its lineage, chained by init_from
    from stepvideo.pipelines.t2v import T2VPipeline
    from stepvideo.models.dit import StepVideoDiT

    data_version = first["version"]["data_version"]
    vae_version = tracking.file_hash(project / "outputs/vae")
    assert stages["latent_cache"].data.tags["latent_cache_key"] == first["latent_cache"]["key"]
    from stepvideo.stages.common import model_hash

    parent = f"folder:{model_hash(project / 'release' / 'stepvideo-tiny' / 'dit')}"  # the demo starts from the release
    for name, registered in DIT_STAGES.items():
        run = stages[name]
        assert "loss" in run.data.metrics and "tokens_per_s" in run.data.metrics
        assert len(client.get_metric_history(run.info.run_id, "loss")) == first[name]["metrics"]["step"]
        assert any(a.path == "samples" for a in client.list_artifacts(run.info.run_id))
        mv = client.get_model_version_by_alias(registered, "candidate")
        assert mv.run_id == run.info.run_id and str(mv.version) == first[name]["registered_version"]
        assert mv.tags["data_version"] == data_version and mv.tags["vae_version"] == vae_version
        assert mv.tags["parent_model_version"] == parent
        assert mv.tags["params_hash"] and mv.tags["git_commit"]
        assert mv.tags["latent_cache_key"] == first["latent_cache"]["key"]
        assert mv.tags["llm_version"] == first["text_encoders"]["versions"]["llm"]
        StepVideoDiT.from_pretrained(project / "outputs" / "dit" / name)
        parent = f"{registered}/{mv.version}"
    assert stages["sft"].data.metrics["sft_excluded_low_quality"] > 0
    # dpo: from the SFT candidate, registered with its lineage
    dpo_mv = client.get_model_version_by_alias("stepvideo-dit-dpo", "candidate")
    assert dpo_mv.tags["parent_model_version"] == parent and dpo_mv.tags["source"] == "reward"
    assert dpo_mv.tags["pairs_version"] == first["dpo"]["lineage"]["pairs_version"]
    assert stages["dpo"].data.metrics["pairs"] == first["dpo"]["metrics"]["pairs"] > 0
    # evaluate: the DPO model beside its SFT parent, logged to its run and tagged on both versions
    ev = stages["evaluate"]
    assert {"eval_overall", "eval_color", "eval_lang_en", "eval_lang_zh", "eval_consistency", "eval_sft_overall",
            "dpo_win_rate", "dpo_ci_low", "dpo_ci_high"} <= set(ev.data.metrics)
    assert ev.data.metrics["eval_videos"] == 6  # 3 prompts x EN + ZH
    assert any(a.path == "eval" for a in client.list_artifacts(ev.info.run_id))
    sft_mv = client.get_model_version_by_alias("stepvideo-dit-sft", "candidate")
    assert ev.data.tags["evaluated"] == f"stepvideo-dit-dpo/{dpo_mv.version}"
    assert ev.data.tags["baseline"] == f"stepvideo-dit-sft/{sft_mv.version}"
    assert float(dpo_mv.tags["eval_overall"]) == pytest.approx(ev.data.metrics["eval_overall"], abs=1e-4)
    assert float(sft_mv.tags["eval_overall"]) == pytest.approx(ev.data.metrics["eval_sft_overall"], abs=1e-4)
    results = json.loads((project / "outputs/eval/results.json").read_text())
    assert len(results["videos"]) == 6 and set(results["loss_curves"]) == set(DIT_STAGES)
    assert results["baseline"]["model"] == f"stepvideo-dit-sft/{sft_mv.version}"
    assert results["preference"]["win_rate"]["n"] == 6
    assert "Video-DPO vs SFT" in (project / "outputs/eval/report.html").read_text()
    bundle_mv = client.get_model_version_by_alias("stepvideo-t2v", "candidate")
    assert bundle_mv.tags["parent_model_version"] == f"stepvideo-dit-dpo/{dpo_mv.version}"
    assert bundle_mv.tags["data_version"] == data_version
    assert bundle_mv.tags["vae_version"] == vae_version
    assert bundle_mv.tags["params_hash"] and bundle_mv.tags["git_commit"]
    pipe = T2VPipeline.from_pretrained(tracking.resolve_model("models:/stepvideo-t2v@candidate", project / "dl2"))
    assert pipe.lineage["dit_stage"] == "dpo" and pipe.dit.config.in_channels == VideoVAE.from_pretrained(
        project / "outputs/vae").config.z_channels

    second = cascade(root=str(project))
    assert all(second["cached"][k] for k in ALL_STAGES if k not in ("version", "promote"))  # never cached
    assert first["promote"]["decision"]["outcome"] in ("first-model", "promoted", "rejected")
    assert second["version"]["data_version"] == first["version"]["data_version"]

    # a changed DiT section busts that stage and the ones after it, not the ones before
    import yaml

    p = yaml.safe_load((project / "params.yaml").read_text())
    p["t2v_highres"]["lr"] = 1.0e-4
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False, allow_unicode=True))
    changed = cascade(root=str(project))
    assert all(changed["cached"][k] for k in ("latent_cache", "t2i_pretrain", "t2v_lowres"))
    assert not any(changed["cached"][k] for k in ("t2v_highres", "sft", "dpo", "evaluate", "bundle"))

    # a changed params section busts exactly the stages that read it
    tiny_params(project, seed=2)
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
    assert (project / "outputs/text_encoders/encoders.json").is_file()  # the release's encoders, recorded
    assert (project / "outputs/text_cache/text_cache.safetensors").is_file()
    assert (project / "outputs/vae/config.json").is_file() and (project / "outputs/vae/lineage.json").is_file()
    assert (project / "outputs/latent_cache/cache.json").is_file()
    for name in (*DIT_STAGES, "dpo"):
        assert (project / "outputs/dit" / name / "config.json").is_file()
        assert (project / "outputs/dit" / name / "lineage.json").is_file()
    assert (project / "outputs/bundle/model_index.json").is_file()
    assert (project / "outputs/eval/results.json").is_file() and (project / "outputs/eval/report.html").is_file()
    again = run(str(BIN / "dvc"), "repro")
    assert again.returncode == 0 and "didn't change" in (again.stdout + again.stderr)
    dag = run(str(BIN / "dvc"), "dag")
    assert all(s in dag.stdout for s in ("data.dvc", *ALL_STAGES[2:]))
    # editing a file of a stage's code table reruns that stage (and only the stages that list it)
    (project / "stepvideo").unlink()
    shutil.copytree(REPO / "stepvideo", project / "stepvideo")  # a copy of the package to edit

    def changed() -> set[str]:  # the stages `dvc status` lists (promote always: it reads the registry)
        out = run(str(BIN / "dvc"), "status").stdout
        return {line[:-1] for line in out.splitlines() if line and not line[0].isspace() and line.endswith(":")}

    assert changed() == {"promote"}
    dit = project / "stepvideo" / "stages" / "dit.py"
    dit.write_text(dit.read_text() + "\n# an edit\n")
    stale = changed()
    assert {"latent_cache", "t2i_pretrain", "t2v_lowres", "t2v_highres", "sft", "dpo"} <= stale, stale
    assert not {"validate", "text_encoders", "train_vae"} & stale, stale
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
    # their clips and stills (text-to-image pre-training needs stills); no quality scores
    src = generate(SynthConfig(clips=6, images=3), tmp_path / "theirs", progress=False).parent
    (src / "videos" / "broken.mp4").write_bytes(b"not a video")
    captions = ["A red circle moves right on a gray background.", "蓝色背景上，一个小的绿色正方形向上移动。"]
    lines = (["path,caption"] + [f"videos/clip_{i:05d}.mp4,{captions[i % 2]}" for i in range(6)]
             + [f"images/image_{i:05d}.png,A red circle on a gray background." for i in range(3)]
             + ["videos/broken.mp4,A clip"])
    (tmp_path / "captions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cascade(root=str(project), source="ingest", videos=str(src), captions=str(tmp_path / "captions.csv"))
    assert "ingest" in result["cached"] and "data" not in result["cached"]
    metrics = result["validate"]["metrics"]
    assert metrics["rows"] == 10 and metrics["bad_rows"] == 1
    # no quality scores: SFT's quality filter cannot apply and is recorded as off
    assert "sft_excluded_low_quality" not in result["sft"]["metrics"]
    assert result["sft"]["lineage"]["quality_filter"].startswith("off")
    assert (project / "outputs/bundle/model_index.json").is_file()
    quarantine = (project / "outputs/validated/quarantine.jsonl").read_text()
    assert "broken" in quarantine and np.isfinite(result["vae"]["metrics"]["train_l1_last"])
