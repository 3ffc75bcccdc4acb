"""The DiT cascade's stage functions (latent_cache -> t2i_pretrain -> t2v_lowres -> t2v_highres -> sft
-> dpo -> bundle), run directly, a few steps each, on one tiny project shared by the module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, tiny_params


@pytest.fixture(scope="module")
def dit_project(tmp_path_factory):
    """A tiny project with the stages up to the latent cache run, then the four DiT stages."""
    from stepvideo.stages import STAGES
    from stepvideo.config import load_params

    root = tmp_path_factory.mktemp("dit") / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("STEPVIDEO_ROOT", str(root))
        tiny_params(root)
        params = load_params(root / "params.yaml")
        STAGES["data"](params, root, progress=False)
        STAGES["validate"](params, root, progress=False)
        STAGES["text_encoders"](params, root)
        STAGES["train_vae"](params, root, progress=False)
        latents = STAGES["latent_cache"](params, root, progress=False)
        results = {"latent_cache": latents}
        for name in ("t2i_pretrain", "t2v_lowres", "t2v_highres", "sft", "dpo"):
            results[name] = STAGES[name](params, root, progress=False)
        results["bundle"] = STAGES["bundle"](params, root)
        yield root, params, results, mp


def test_latent_cache_stage(dit_project):
    from stepvideo.data.latent_cache import LatentCache

    root, params, results, _ = dit_project
    r = results["latent_cache"]
    cache = LatentCache(r["cache"])
    assert cache.key == r["key"] and r["metrics"]["items"] == len(cache.items) > 0
    assert r["resolutions"]["full"] == [64, 64] and r["resolutions"]["low"] == [32, 32]


def test_each_stage_writes_a_loadable_folder_with_lineage_and_samples(dit_project):
    from stepvideo.models.dit import StepVideoDiT

    root, params, results, _ = dit_project
    for name in ("t2i_pretrain", "t2v_lowres", "t2v_highres", "sft"):
        r = results[name]
        folder = Path(r["model_dir"])
        assert folder == root / "outputs" / "dit" / name
        model = StepVideoDiT.from_pretrained(folder)
        assert model.config.in_channels == 16 and model.config.caption_channels == [64, 32]
        lineage = json.loads((folder / "lineage.json").read_text())
        assert lineage["latent_cache_key"] == results["latent_cache"]["key"]
        keys = {"data_version", "vae_version", "llm_version", "clip_version", "params_hash", "git_commit"}
        assert keys <= set(lineage)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["step"] == getattr(params, name).steps and len(metrics["loss_curve"]) == metrics["step"]
        samples = sorted(p.name for p in (folder / "samples").iterdir())
        still = name == "t2i_pretrain"
        assert samples == sorted(["0_en" + (".png" if still else ".mp4"), "0_en.gif",
                                  "1_en" + (".png" if still else ".mp4"), "1_en.gif", "prompts.json"])
        assert r["registered_version"] is not None
    assert json.loads((root / "outputs/dit/sft/metrics.json").read_text())["weights"].startswith("mean of 2")


def test_init_from_chains_through_the_cascade(dit_project):
    root, params, results, _ = dit_project
    assert results["t2i_pretrain"]["lineage"]["parent_model_version"].startswith("folder:")  # the release
    for prev, name in (("t2i_pretrain", "t2v_lowres"), ("t2v_lowres", "t2v_highres"), ("t2v_highres", "sft")):
        registered = f"{pipeline_registered(prev)}/{results[prev]['registered_version']}"
        assert results[name]["lineage"]["parent_model_version"] == registered
        assert results[name]["lineage"]["init_weights"] == results[prev]["lineage"]["weights_hash"]
    d = results["dpo"]["lineage"]
    assert d["parent_model_version"] == f"stepvideo-dit-sft/{results['sft']['registered_version']}"
    b = results["bundle"]["lineage"]
    assert b["parent_model_version"] == f"stepvideo-dit-dpo/{results['dpo']['registered_version']}"
    assert b["pairs_version"] == d["pairs_version"] and b["dit_stage"] == "dpo"


def test_dpo_stage_registers_the_model_with_its_lineage_and_pair_dataset(dit_project):
    from mlflow import MlflowClient

    from stepvideo import tracking
    from stepvideo.models.dit import StepVideoDiT
    from stepvideo.preference.pairs import read_pairs

    root, params, results, _ = dit_project
    r = results["dpo"]
    folder = root / "outputs" / "dit" / "dpo"
    StepVideoDiT.from_pretrained(folder)
    pairs = read_pairs(root / "outputs" / "dpo" / "pairs")
    assert pairs and all(p["source"] == "reward" and p["chosen"] != p["rejected"] for p in pairs)
    assert r["lineage"]["pairs_version"] == tracking.file_hash(root / "outputs" / "dpo" / "pairs")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert len(metrics["rounds"][0]["curves"]["implicit_acc"]) == params.dpo.steps
    version = MlflowClient(tracking.tracking_uri()).get_model_version("stepvideo-dit-dpo", r["registered_version"])
    for key in ("parent_model_version", "pairs_version", "reward_weights", "source", "data_version", "git_commit"):
        assert version.tags[key] == str(r["lineage"][key])
    assert json.loads(version.tags["reward_weights"])["checks"] == params.dpo.reward_checks
    # a re-run resumes from the same work folder and gives the same weights
    again = pipeline_stage("dpo")(params, root, progress=False)
    assert again["work_dir"] == r["work_dir"] and again["lineage"]["weights_hash"] == r["lineage"]["weights_hash"]


def test_dpo_disabled_passes_the_sft_weights_through(dit_project, tmp_path):
    import dataclasses

    from stepvideo.stages.common import model_hash

    root, params, results, _ = dit_project
    off = dataclasses.replace(params, dpo=dataclasses.replace(params.dpo, enabled=False))
    r = pipeline_stage("dpo")(off, root, progress=False)
    assert r["skipped"] and model_hash(root / "outputs/dit/dpo") == model_hash(root / "outputs/dit/sft")
    assert "enabled is false" in json.loads((root / "outputs/dit/dpo/lineage.json").read_text())["skipped"]
    pipeline_stage("dpo")(params, root, progress=False)  # leave the project as the other tests found it


def test_dpo_from_human_labels_then_an_onpolicy_round_ranked_by_the_reward_model(dit_project, tmp_path):
    """People label candidates (`stepvideo dpo candidates` + the labels file the page writes); the
    stage trains on their pairs, fits the reward model to them, and ranks round 2's fresh
    candidates with it; the lineage names the annotators."""
    import dataclasses

    from stepvideo.preference.labeling import append_labels, label_pairs, load_candidates, make_label
    from stepvideo.preference.pairs import read_pairs
    from stepvideo.stages.dpo import make_candidates

    root, params, results, _ = dit_project
    cands = tmp_path / "cands"
    make_candidates(params, root, cands, progress=False)
    rows = load_candidates(cands)
    labels = []
    for pair in label_pairs(rows):  # alice and bob prefer the lower seed; carol disagrees once
        a, b = sorted((pair["a"], pair["b"]), key=lambda c: int(c.rsplit("-s", 1)[1]))
        labels.append(make_label(pair, a, b, "left", "alice"))
        labels.append(make_label(pair, b, a, "right", "bob"))
    labels.append(make_label(label_pairs(rows)[0], label_pairs(rows)[0]["a"], label_pairs(rows)[0]["b"], "tie", "carol"))
    append_labels(cands / "labels.jsonl", labels)
    human = dataclasses.replace(params, dpo=dataclasses.replace(
        params.dpo, source="human", labels=str(cands / "labels.jsonl"), human_candidates=str(cands), rounds=2,
        onpolicy_reward="reward_model", reward_model_steps=5, reward_model_heldout=0.5))
    r = pipeline_stage("dpo")(human, root, progress=False)
    pairs = read_pairs(root / "outputs" / "dpo" / "pairs")
    assert {p["source"] for p in pairs if p["round"] == 0} == {"human"}
    assert {p["source"] for p in pairs if p["round"] == 1} <= {"reward_model"}
    assert r["lineage"]["annotators"] == "alice,bob,carol" and r["lineage"]["source"] == "human"
    assert len(r["rounds"]) == 2 and r["rounds"][1]["candidates"] == r["rounds"][0]["candidates"]
    assert "heldout_accuracy" in json.loads((root / "outputs/dpo/reward_model/metrics.json").read_text())
    pipeline_stage("dpo")(params, root, progress=False)  # leave the project as the other tests found it


def test_dpo_params_are_checked(dit_project):
    import dataclasses

    root, params, _, _ = dit_project
    bad = dataclasses.replace(params, dpo=dataclasses.replace(params.dpo, source="human"))
    with pytest.raises(ValueError, match="dpo.labels"):
        pipeline_stage("dpo")(bad, root, progress=False)
    bad = dataclasses.replace(params, dpo=dataclasses.replace(params.dpo, source="votes"))
    with pytest.raises(ValueError, match="dpo.source must be one of"):
        pipeline_stage("dpo")(bad, root, progress=False)


def pipeline_stage(name: str):
    from stepvideo.stages import STAGES

    return STAGES[name]


def pipeline_registered(name: str) -> str:
    from stepvideo import registry

    return registry.DIT_STAGES[name]


def test_sft_leaves_out_the_degraded_clips(dit_project):
    from stepvideo.data.manifest import read_manifest

    root, params, results, _ = dit_project
    rows = read_manifest(root / "outputs/validated/clean.jsonl")
    low = [r for r in rows if r["kind"] == "video" and r["split"] == "train" and r["quality"] < params.sft.min_quality]
    assert any(r["degradation"] != "none" for r in low)
    m = results["sft"]["metrics"]
    assert m["sft_excluded_low_quality"] == len(low) > 0
    assert m["items"] == sum(r["kind"] == "video" and r["split"] == "train" for r in rows) - len(low)


def test_rerun_resumes_and_a_changed_section_starts_afresh(dit_project):
    import dataclasses

    from stepvideo.stages import STAGES

    root, params, results, _ = dit_project
    again = STAGES["t2i_pretrain"](params, root, progress=False)
    assert again["work_dir"] == results["t2i_pretrain"]["work_dir"]
    assert again["lineage"]["weights_hash"] == results["t2i_pretrain"]["lineage"]["weights_hash"]
    changed = dataclasses.replace(params, t2i_pretrain=dataclasses.replace(params.t2i_pretrain, lr=1e-4,
                                                                           sample_prompts=0))
    fresh = STAGES["t2i_pretrain"](changed, root, progress=False)
    assert fresh["work_dir"] != results["t2i_pretrain"]["work_dir"] and fresh["samples"] == []
    # leave the project as the other tests found it
    STAGES["t2i_pretrain"](params, root, progress=False)


def test_a_missing_previous_stage_is_named(dit_project, tmp_path):
    from stepvideo.stages import STAGES

    root, params, _, _ = dit_project
    other = tmp_path / "other"
    (other / "outputs").mkdir(parents=True)
    (other / "outputs" / "latent_cache").symlink_to(root / "outputs" / "latent_cache", target_is_directory=True)
    with pytest.raises(FileNotFoundError, match="t2i_pretrain"):
        STAGES["t2v_lowres"](params, other, progress=False)
    with pytest.raises(FileNotFoundError, match="latent_cache"):
        STAGES["t2i_pretrain"](params, tmp_path / "empty", progress=False)


def test_bundle_loads_and_generates(dit_project):
    from stepvideo import tracking
    from stepvideo.pipelines.t2v import T2VPipeline

    root, params, results, _ = dit_project
    pipe = T2VPipeline.from_pretrained(tracking.resolve_model("models:/stepvideo-t2v@candidate", root / "dl"))
    assert pipe.sampler.num_steps == params.sft.sample_steps
    assert pipe.lineage["dit_stage"] == "dpo" and pipe.lineage["parent_model_version"].startswith("stepvideo-dit-dpo/")
    video = pipe.generate("A large red circle moves right quickly on a navy background.", steps=1, num_frames=17)
    assert video.shape == (1, 17, 64, 64, 3)


@pytest.mark.slow
@pytest.mark.parametrize("sp_degree", [1, 2])
def test_a_stage_runs_on_two_ranks_under_torchrun(dit_project, tmp_path, sp_degree):
    """`torchrun --nproc_per_node 2 stepvideo stage NAME`: both ranks train (gloo, ZeRO-2; as data-parallel
    ranks, or at `sp_degree: 2` as one sequence-parallel group), rank 0 alone writes the folder, renders
    the samples and registers the model once."""
    import os
    import socket
    import subprocess
    import sys

    import yaml
    from mlflow import MlflowClient

    from conftest import BIN
    from stepvideo import tracking

    root, _, _, _ = dit_project
    work = tmp_path / "project"
    shutil.copytree(root, work, symlinks=True, ignore=shutil.ignore_patterns(".cache"))
    p = yaml.safe_load((work / "params.yaml").read_text())
    p["t2v_lowres"].update({"steps": 3, "batch_size": 4, "zero_stage": 2, "sample_prompts": 1, "sp_degree": sp_degree})
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False, allow_unicode=True))
    before = len(MlflowClient(tracking.tracking_uri()).search_model_versions("name = 'stepvideo-dit-t2v-lowres'"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "STEPVIDEO_ROOT": str(work), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={port}", "--master_addr=127.0.0.1", str(BIN / "stepvideo"), "stage",
                          "t2v_lowres"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((work / "outputs" / "dit" / "t2v_lowres" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["step"] == 3 and metrics["sp_degree"] == sp_degree
    assert len(list((work / "outputs" / "dit" / "t2v_lowres" / "samples").glob("*.mp4"))) == 1
    after = MlflowClient(tracking.tracking_uri()).search_model_versions("name = 'stepvideo-dit-t2v-lowres'")
    assert len(after) == before + 1  # one registration, by rank 0


def test_a_fine_tune_keeps_the_starting_models_patch_size(tmp_path):
    import json

    from stepvideo.stages.dit import stage_patch_size

    (tmp_path / "config.json").write_text(json.dumps({"patch_size": 2}))
    assert stage_patch_size(0, tmp_path) == 2  # inherited from the folder it starts from
    assert stage_patch_size(1, tmp_path) == 1  # an explicit value wins
    assert stage_patch_size(0, None) == 0  # from scratch: the preset's
    assert stage_patch_size(0, tmp_path / "missing") == 0
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        stage_patch_size(0, tmp_path)
