"""The DiT cascade's stage functions (latent_cache -> t2i_pretrain -> t2v_lowres -> t2v_highres -> sft
-> bundle), run directly, a few steps each, on one tiny project shared by the module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, tiny_params


@pytest.fixture(scope="module")
def dit_project(tmp_path_factory):
    """A tiny project with the stages up to the latent cache run, then the four DiT stages."""
    from stepvideo import pipeline
    from stepvideo.config import load_params

    root = tmp_path_factory.mktemp("dit") / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("STEPVIDEO_ROOT", str(root))
        tiny_params(root)
        params = load_params(root / "params.yaml")
        pipeline.stage_data(params, root, progress=False)
        pipeline.stage_validate(params, root, progress=False)
        pipeline.stage_text_encoders(params, root)
        pipeline.stage_vae(params, root, progress=False)
        latents = pipeline.stage_latent_cache(params, root, progress=False)
        results = {"latent_cache": latents}
        for name in ("t2i_pretrain", "t2v_lowres", "t2v_highres", "sft"):
            results[name] = pipeline.STAGES[name](params, root, progress=False)
        results["bundle"] = pipeline.stage_bundle(params, root)
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
    b = results["bundle"]["lineage"]
    assert b["parent_model_version"] == f"stepvideo-dit-sft/{results['sft']['registered_version']}"


def pipeline_registered(name: str) -> str:
    from stepvideo import pipeline

    return pipeline.DIT_REGISTERED[name]


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

    from stepvideo import pipeline

    root, params, results, _ = dit_project
    again = pipeline.stage_t2i_pretrain(params, root, progress=False)
    assert again["work_dir"] == results["t2i_pretrain"]["work_dir"]
    assert again["lineage"]["weights_hash"] == results["t2i_pretrain"]["lineage"]["weights_hash"]
    changed = dataclasses.replace(params, t2i_pretrain=dataclasses.replace(params.t2i_pretrain, lr=1e-4,
                                                                           sample_prompts=0))
    fresh = pipeline.stage_t2i_pretrain(changed, root, progress=False)
    assert fresh["work_dir"] != results["t2i_pretrain"]["work_dir"] and fresh["samples"] == []
    # leave the project as the other tests found it
    pipeline.stage_t2i_pretrain(params, root, progress=False)


def test_a_missing_previous_stage_is_named(dit_project, tmp_path):
    from stepvideo import pipeline

    root, params, _, _ = dit_project
    other = tmp_path / "other"
    (other / "outputs").mkdir(parents=True)
    (other / "outputs" / "latent_cache").symlink_to(root / "outputs" / "latent_cache", target_is_directory=True)
    with pytest.raises(FileNotFoundError, match="t2i_pretrain"):
        pipeline.stage_t2v_lowres(params, other, progress=False)
    with pytest.raises(FileNotFoundError, match="latent_cache"):
        pipeline.stage_t2i_pretrain(params, tmp_path / "empty", progress=False)


def test_bundle_loads_and_generates(dit_project):
    from stepvideo import tracking
    from stepvideo.generation import T2VPipeline

    root, params, results, _ = dit_project
    pipe = T2VPipeline.from_pretrained(tracking.resolve_model("models:/stepvideo-t2v@candidate", root / "dl"))
    assert pipe.sampler.num_steps == params.sft.sample_steps
    assert pipe.lineage["dit_stage"] == "sft" and pipe.lineage["parent_model_version"].startswith("stepvideo-dit-sft/")
    video = pipe.generate("A large red circle moves right quickly on a navy background.", steps=1, num_frames=17)
    assert video.shape == (1, 17, 64, 64, 3)


@pytest.mark.slow
def test_a_stage_runs_on_two_ranks_under_torchrun(dit_project, tmp_path):
    """`torchrun --nproc_per_node 2 stepvideo stage NAME`: both ranks train (gloo, ZeRO-2), rank 0
    alone writes the folder, renders the samples and registers the model once."""
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
    p["t2v_lowres"].update({"steps": 3, "batch_size": 4, "zero_stage": 2, "sample_prompts": 1})
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
    assert metrics["world_size"] == 2 and metrics["step"] == 3
    assert len(list((work / "outputs" / "dit" / "t2v_lowres" / "samples").glob("*.mp4"))) == 1
    after = MlflowClient(tracking.tracking_uri()).search_model_versions("name = 'stepvideo-dit-t2v-lowres'")
    assert len(after) == before + 1  # one registration, by rank 0
