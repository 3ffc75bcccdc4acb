"""The dpo stage with `dpo.method: lora` (issue 24) on a tiny project whose SFT model is the release's
DiT: two on-policy rounds, the adapter continued from round to round against the adapter-off
reference, outputs/dit/dpo the merged DiT (what evaluate and the bundle read), outputs/dpo/adapter
registered as `stepvideo-lora` with its lineage; the trainer config of each method; refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO

RELEASE = REPO / "release" / "stepvideo-tiny"


def _params(root: Path, **dpo) -> Path:
    p = {"preset": "finetune-lora", "flow": {"pipeline": "cascade"}, "data": {"clips": 6, "images": 4},
         "dpo": {"init_from": str(RELEASE / "dit"), "method": "lora", "lora_rank": 4, "lora_alpha": 4.0,
                 "train_prompts": 1, "style_prompts": 1, "candidates_per_prompt": 2, "sample_steps": 2,
                 "frames": 17, "height": 32, "width": 32, "pairs": "margin", "steps": 2, "batch_size": 2,
                 "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 1, "rounds": 2, **dpo}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def test_the_trainer_config_of_each_method():
    from stepvideo.config import Params
    from stepvideo.stages.dpo import dpo_train_config

    dp = Params().dpo
    assert dp.method == "full"
    full = dpo_train_config(dp, Path("sft"), Path("sft"), 0)
    assert full.lora is None and full.init_adapter == ""
    dp.method, dp.lora_rank, dp.lora_target_modules = "lora", 8, ["attn1.wqkv"]
    lora = dpo_train_config(dp, Path("sft"), Path("sft"), 1, Path("round0/adapter"))
    assert lora.lora == {"rank": 8, "alpha": dp.lora_alpha, "dropout": dp.lora_dropout, "target_modules": ["attn1.wqkv"]}
    assert lora.init_from == lora.reference == "sft" and lora.init_adapter == "round0/adapter" and lora.seed == 1
    finetune = Params().finetune  # one definition of the LoRA fields and their defaults
    assert (dp.lora_alpha, dp.lora_dropout) == (finetune.lora_alpha, finetune.lora_dropout)
    assert Params().dpo.lora_dict() == finetune.lora_dict()


def test_refusals_name_the_key(tmp_path):
    from stepvideo.config import ParamsError, load_params
    from stepvideo.errors import InputError
    from stepvideo.stages.dpo import stage_dpo

    with pytest.raises(ParamsError, match="dpo.method"):
        load_params(_params(tmp_path, method="adapter"))
    with pytest.raises(ParamsError, match="dpo.lora_target_modules"):
        load_params(_params(tmp_path, lora_target_modules=[" "]))
    with pytest.raises(InputError, match="dpo.update_reference"):
        stage_dpo(load_params(_params(tmp_path, update_reference=True)), tmp_path, progress=False)
    with pytest.raises(InputError, match="dpo.lora_target_modules: 'attn9.nope'"):
        stage_dpo(load_params(_params(tmp_path, lora_target_modules=["attn9.nope"])), tmp_path, progress=False)


def test_lora_dpo_writes_the_merged_dit_and_registers_the_adapter(tmp_path, monkeypatch):
    from stepvideo import registry, tracking
    from stepvideo.config import load_params
    from stepvideo.models.io import load_state_dict
    from stepvideo.models.lora import load_adapter, merge_lora
    from stepvideo.stages import STAGES

    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("STEPVIDEO_ROOT", str(root))
    params = load_params(_params(root))
    STAGES["data"](params, root, progress=False)
    STAGES["validate"](params, root, progress=False)
    STAGES["text_encoders"](params, root)
    shutil.copytree(RELEASE / "vae", root / "outputs" / "vae")  # the release's VAE decodes the candidates
    result = STAGES["dpo"](params, root, progress=False)

    rounds = result["rounds"]
    assert len(rounds) == 2 and all(r["pairs"] > 0 for r in rounds)
    assert rounds[0]["curves"]["kl_proxy"][0] == 0.0  # B = 0 at the start: the policy is the reference
    assert rounds[1]["curves"]["kl_proxy"][0] > 0  # round 1 continues the adapter; the reference is adapter-off
    assert rounds[0]["trainable_parameters"] == rounds[1]["trainable_parameters"]
    work = Path(result["work_dir"])
    cfg1 = json.loads((work / "train-1" / "train_config.json").read_text())
    assert cfg1["init_from"] == cfg1["reference"] == str(RELEASE / "dit")
    assert cfg1["init_adapter"] == str(work / "train-0" / "adapter")
    # outputs: the merged DiT where evaluate and the bundle look, the adapter beside the pairs
    out, adapter_dir = Path(result["model_dir"]), Path(result["adapter_dir"])
    assert adapter_dir == root / "outputs" / "dpo" / "adapter"
    adapter = load_adapter(adapter_dir)
    base = load_state_dict(RELEASE / "dit")
    merged, final = merge_lora({k: v.float() for k, v in base.items()}, adapter), load_state_dict(out)
    assert set(final) == set(base)
    assert all(torch.allclose(final[k].float(), merged[k].float(), atol=1e-5) for k in final)
    lineage = json.loads((adapter_dir / "lineage.json").read_text())
    assert lineage["stage"] == "dpo" and lineage["method"] == "lora"
    assert lineage["parent_model_version"].startswith("folder:") and lineage["pairs_version"]
    assert lineage["merged_weights_hash"] == json.loads((out / "lineage.json").read_text())["weights_hash"]
    assert json.loads(lineage["lora_spec"])["rank"] == 4
    # registered: the DiT as stepvideo-dit-dpo, the adapter as stepvideo-lora tagged with its lineage
    client = tracking.client()
    assert client.get_model_version(registry.DPO, result["registered_version"]).tags["method"] == "lora"
    version = client.get_model_version(registry.LORA, result["adapter_version"])
    assert registry.CANDIDATE in version.aliases
    tags = version.tags
    assert tags["stage"] == "dpo" and tags["pairs_version"] == lineage["pairs_version"]
    assert tags["parent_model_version"] == lineage["parent_model_version"]
    assert tags["weights_hash"] == lineage["adapter_hash"]


def test_a_full_dpo_section_hashes_as_before_the_lora_fields():
    """Under method full the LoRA fields do nothing, so the dpo section's hash (the stage's cache key,
    lineage params_hash, the retrain check's training_hash) is what it was before they existed
    (the demo preset's value at e155880); under lora any of them changes it."""
    import dataclasses
    import hashlib

    from stepvideo.config import LoraFields, preset

    p = preset("demo")
    assert p.section_hash("dpo") == "5af70b2c40aaaadd" and p.training_hash() == "5927be6707dcc9db"
    old = {k: v for k, v in dataclasses.asdict(p.dpo).items()
           if k not in {"method", *(f.name for f in dataclasses.fields(LoraFields))}}
    assert p.section_hash("dpo") == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    p.dpo.lora_rank = 4  # inert under full
    assert p.section_hash("dpo") == "5af70b2c40aaaadd"
    p.dpo.method = "lora"
    lora4 = p.section_hash("dpo")
    p.dpo.lora_rank = 8
    assert len({lora4, p.section_hash("dpo"), "5af70b2c40aaaadd"}) == 3
