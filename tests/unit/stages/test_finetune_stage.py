"""The `finetune` stage (issue 24) run directly on a tiny project of the `finetune-lora` preset: the
caches from the release's VAE and encoders, LoRA on the release's DiT, the adapter and the merged
DiT registered with their lineage, evaluate (base vs fine-tuned) and the bundle; inputs that do not
fit the base are refused by name; a SIGKILLed stage resumes to the same adapter."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO

RELEASE = REPO / "release" / "stepvideo-tiny"


def write_params(root: Path, **finetune) -> Path:
    """The finetune-lora preset shrunk to a few steps and prompts."""
    p = {"preset": "finetune-lora", "data": {"clips": 6, "images": 4},
         "latent_cache": {"batch_size": 4},
         "finetune": {"steps": 3, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 1, "sample_steps": 2,
                      "sample_prompts": 1, "lora_rank": 4, "lora_alpha": 4.0, **finetune},
         "evaluate": {"max_prompts": 2, "steps": 2, "batch_size": 4}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ft_project(tmp_path_factory):
    from stepvideo.config import load_params
    from stepvideo.stages import STAGES

    root = tmp_path_factory.mktemp("finetune") / "project"
    root.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("STEPVIDEO_ROOT", str(root))
        params = load_params(write_params(root))
        STAGES["data"](params, root, progress=False)
        STAGES["validate"](params, root, progress=False)
        STAGES["text_encoders"](params, root)
        results = {"latent_cache": STAGES["latent_cache"](params, root, progress=False)}
        results["finetune"] = STAGES["finetune"](params, root, progress=False)
        results["evaluate"] = STAGES["evaluate"](params, root)
        results["bundle"] = STAGES["bundle"](params, root)
        yield root, params, results, mp


def test_the_caches_come_from_the_release(ft_project):
    from stepvideo import tracking
    from stepvideo.data.latent_cache import LatentCache

    root, _, results, _ = ft_project
    cache = LatentCache(results["latent_cache"]["cache"])
    assert cache.meta["vae_version"] == tracking.file_hash(RELEASE / "vae")
    assert not (root / "outputs" / "vae").exists()  # no VAE was trained


def test_finetune_writes_the_adapter_and_the_merged_dit(ft_project):
    from stepvideo.models.dit import StepVideoDiT
    from stepvideo.models.lora import load_adapter, merge_lora
    from stepvideo.stages.common import model_hash
    from stepvideo.training import checkpoint as ckpt

    root, params, results, _ = ft_project
    r = results["finetune"]
    out = root / "outputs" / "finetune"
    assert Path(r["model_dir"]) == out / "dit" and Path(r["adapter_dir"]) == out / "adapter"
    adapter = load_adapter(out / "adapter")
    assert {adapter.rank(m) for m in adapter.modules} == {4}
    base = load_file(str(RELEASE / "dit" / "model.safetensors"))
    base = {k: v.float() for k, v in base.items()}
    merged = load_file(str(out / "dit" / "model.safetensors"))
    expected = merge_lora(base, adapter)
    assert max(float((merged[k] - expected[k]).abs().max()) for k in merged) < 1e-5
    StepVideoDiT.from_pretrained(out / "dit")
    m = r["metrics"]
    assert m["step"] == 3 and m["adapter_bytes"] == (out / "adapter" / "adapter_model.safetensors").stat().st_size
    assert 0 < m["trainable_parameters"] < sum(v.numel() for v in base.values()) / 10
    lineage = json.loads((out / "adapter" / "lineage.json").read_text())
    assert lineage["base_model_version"] == f"folder:{model_hash(RELEASE / 'dit')}"
    assert lineage["method"] == "lora" and lineage["params_hash"] == params.section_hash("finetune")
    assert lineage["merged_weights_hash"] == model_hash(out / "dit")
    assert list((out / "samples").glob("*.mp4"))
    # the stage's checkpoints hold the adapter only
    last = ckpt.latest_checkpoint(Path(r["work_dir"]))
    assert all(".lora_A." in k or ".lora_B." in k for k in ckpt.load_model_state(last))


def test_the_registry_has_the_adapter_the_dit_and_a_candidate_bundle(ft_project):
    from mlflow.tracking import MlflowClient

    from stepvideo import registry, tracking

    root, params, results, _ = ft_project
    client = MlflowClient(tracking.tracking_uri())
    lora = client.get_model_version_by_alias(registry.LORA, registry.CANDIDATE)
    assert str(lora.version) == results["finetune"]["adapter_version"]
    for tag in ("base_model_version", "base_weights", "data_version", "params_hash", "git_commit", "lora_spec",
                "adapter_hash"):
        assert lora.tags.get(tag), tag
    dit = client.get_model_version_by_alias(registry.FINETUNE, registry.CANDIDATE)
    assert dit.tags["weights_hash"] == lora.tags["merged_weights_hash"]
    bundle = client.get_model_version_by_alias(registry.BUNDLE, registry.CANDIDATE)
    assert bundle.tags["dit_stage"] == "finetune" and bundle.tags["dit_weights"] == dit.tags["weights_hash"]
    assert bundle.tags["parent_model_version"] == f"{registry.FINETUNE}/{dit.version}"
    assert bundle.tags["base_model_version"] == lora.tags["base_model_version"]
    index = json.loads((root / "outputs" / "bundle" / "model_index.json").read_text())
    assert index["sampler"]["num_steps"] == params.finetune.sample_steps


def test_evaluate_judges_the_base_beside_the_fine_tuned_model(ft_project):
    from stepvideo.stages.common import model_hash

    root, _, results, _ = ft_project
    m = results["evaluate"]["metrics"]
    assert {"eval_overall", "eval_base_overall", "finetune_win_rate"} <= set(m)
    data = json.loads((root / "outputs" / "eval" / "results.json").read_text())
    assert data["baseline"]["model"] == f"folder:{model_hash(RELEASE / 'dit')}"
    assert (root / "outputs" / "eval" / "base").is_dir() and (root / "outputs" / "eval" / "report.html").is_file()


def test_caches_of_another_vae_or_encoder_are_refused_by_name(ft_project, tmp_path):
    from stepvideo.data.latent_cache import LatentCache
    from stepvideo.errors import InputError
    from stepvideo.stages.finetune import check_inputs_fit_base, finetune_base

    root, params, results, _ = ft_project
    cache_dir = Path(results["latent_cache"]["cache"])
    cache = LatentCache(cache_dir)
    base = finetune_base(params, root)
    check_inputs_fit_base(params, root, cache, base, cache_dir)  # as built: fits
    cache.meta["vae_version"] = "another"
    with pytest.raises(InputError, match="another VAE than the base's.*latent_cache.vae"):
        check_inputs_fit_base(params, root, cache, base, cache_dir)
    import copy

    cache = LatentCache(cache_dir)
    other = copy.deepcopy(params)
    other.text_encoders.llm = ""
    with pytest.raises(InputError, match=r"text_encoders\.llm: .* is not the base's encoder"):
        check_inputs_fit_base(other, root, cache, base, cache_dir)


def test_a_target_the_base_lacks_names_the_key(ft_project):
    import copy

    from stepvideo.data.latent_cache import LatentCache
    from stepvideo.errors import InputError
    from stepvideo.stages.finetune import finetune_train_config

    root, params, results, _ = ft_project
    other = copy.deepcopy(params)
    other.finetune.lora_target_modules = ["attn1.wqkv", "attn9.nothing"]
    with pytest.raises(InputError, match=r"finetune\.lora_target_modules: 'attn9\.nothing' matches no module"):
        finetune_train_config(other, LatentCache(results["latent_cache"]["cache"]), RELEASE / "dit")


def test_a_missing_or_unknown_base_names_the_key(ft_project, tmp_path):
    import copy

    from stepvideo.errors import MissingError
    from stepvideo.stages.finetune import finetune_base

    root, params, _, _ = ft_project
    other = copy.deepcopy(params)
    other.finetune.base = str(tmp_path / "nowhere")
    with pytest.raises(MissingError, match="finetune.base: .*nowhere"):
        finetune_base(other, root)
    (tmp_path / "empty").mkdir()
    other.finetune.base = str(tmp_path / "empty")
    with pytest.raises(MissingError, match="finetune.base: .* is neither"):
        finetune_base(other, root)
    other.finetune.base = str(RELEASE / "dit")  # a DiT folder is a base too (no bundle: no VAE check)
    assert finetune_base(other, root)["bundle"] is None


def test_an_official_release_is_converted_on_load(ft_project, tmp_path):
    """An official Step-Video-T2V layout (transformer/ with the official config keys) becomes our
    DiT folder once, through stepvideo.compat.dit."""
    import copy

    from stepvideo.compat.dit import official_config_from_ours
    from stepvideo.models.dit import StepVideoDiT
    from stepvideo.stages.finetune import finetune_base

    root, params, _, _ = ft_project
    ours = StepVideoDiT.from_pretrained(RELEASE / "dit")
    official = tmp_path / "official" / "transformer"
    official.mkdir(parents=True)
    (official / "config.json").write_text(json.dumps(official_config_from_ours(ours)))
    shutil.copy(RELEASE / "dit" / "model.safetensors", official / "diffusion_pytorch_model.safetensors")
    other = copy.deepcopy(params)
    other.finetune.base = str(official.parent)
    base = finetune_base(other, root)
    assert base["dit"].parent == root / ".cache" / "finetune" / "base" and base["bundle"] is None
    converted = StepVideoDiT.from_pretrained(base["dit"])
    for (k, a), (_, b) in zip(sorted(ours.state_dict().items()), sorted(converted.state_dict().items())):
        assert torch.equal(a.float(), b.float()), k


def test_method_full_trains_every_weight_and_writes_no_adapter(ft_project):
    from stepvideo.config import load_params
    from stepvideo.stages import STAGES
    from stepvideo.training import checkpoint as ckpt

    root, _, _, _ = ft_project
    params = load_params(write_params(root, method="full", steps=2))
    r = STAGES["finetune"](params, root, progress=False)
    base = load_file(str(RELEASE / "dit" / "model.safetensors"))
    assert r["adapter_dir"] is None and r["adapter_version"] is None
    assert not (root / "outputs" / "finetune" / "adapter").exists()
    assert r["metrics"]["trainable_parameters"] == sum(v.numel() for v in base.values())
    assert set(ckpt.load_model_state(ckpt.latest_checkpoint(Path(r["work_dir"])))) == set(base)
    assert r["lineage"]["method"] == "full" and "lora_spec" not in r["lineage"]
    write_params(root)


DRIVER = """
import sys
sys.path.insert(0, {e2e!r})
import _fault_driver
_fault_driver._install_hook()
from pathlib import Path
from stepvideo.config import load_params
from stepvideo.stages import STAGES
root = Path({root!r})
STAGES["finetune"](load_params(root / "params.yaml"), root, progress=False)
print("DONE", flush=True)
"""


def _stage(root: Path, fault_nth: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "STEPVIDEO_ROOT": str(root),
           "PYTHONPATH": str(REPO)}
    if fault_nth:
        env.update(STEPVIDEO_FAULT_AT="stepvideo.training.checkpoint:save_checkpoint",
                   STEPVIDEO_FAULT_NTH=str(fault_nth))
    code = DRIVER.format(e2e=str(REPO / "tests" / "e2e"), root=str(root))
    return subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
def test_the_stage_killed_with_sigkill_resumes_to_the_same_adapter(ft_project):
    root, _, _, mp = ft_project
    write_params(root, steps=5)
    done = _stage(root)
    stdout, stderr = done.communicate(timeout=600)
    assert done.returncode == 0 and "DONE" in stdout, stderr[-3000:]
    out = root / "outputs" / "finetune"
    reference = {n: load_file(str(out / n)) for n in ("adapter/adapter_model.safetensors", "dit/model.safetensors")}
    shutil.rmtree(out)
    shutil.rmtree(root / ".cache" / "finetune")

    killed = _stage(root, fault_nth=3)  # paused after the checkpoint of step 3 of 5, then SIGKILLed
    deadline = time.time() + 600
    while time.time() < deadline:
        line = killed.stdout.readline()
        if "FAULT-POINT" in line or not line:
            break
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL and not out.exists()
    from stepvideo.training import checkpoint as ckpt

    work = next((root / ".cache" / "finetune").glob("[0-9a-f]*"))
    assert ckpt.latest_checkpoint(work).name == "step-000003"  # what the rerun resumes from
    resumed = _stage(root)
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0 and "DONE" in stdout, stderr[-3000:]
    for name, tensors in reference.items():
        again = load_file(str(out / name))
        assert again.keys() == tensors.keys()
        for k in tensors:
            assert torch.equal(again[k], tensors[k]), (name, k)
    write_params(root)  # the module's other tests read the 3-step project


def test_outside_the_finetune_pipeline_the_stage_is_skipped(tmp_path):
    """`dvc repro` of the cascade reaches the dvc.yaml stage too: it writes a marker, trains nothing."""
    from stepvideo.config import preset
    from stepvideo.stages import STAGES

    result = STAGES["finetune"](preset("demo"), tmp_path)
    assert result["skipped"] and "flow.pipeline" in result["lineage"]["skipped"]
    assert json.loads((tmp_path / "outputs" / "finetune" / "lineage.json").read_text())["skipped"]
    assert not (tmp_path / ".cache").exists()
