"""End to end: the `finetune-lora` flow (flow.pipeline: finetune) on a throwaway copy of the project,
shrunk to a few steps: the registry ends with the adapter (`stepvideo-lora`) and a candidate bundle
(`stepvideo-t2v@candidate`) made from the release, and an unchanged re-run is all cache hits."""

import json

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.slow

FINETUNE_STAGES = ("data", "version", "validate", "text_encoders", "text_cache", "latent_cache", "finetune",
                   "evaluate", "bundle")


def _params(root):
    p = {"preset": "finetune-lora", "data": {"clips": 6, "images": 4}, "latent_cache": {"batch_size": 4},
         "finetune": {"steps": 3, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 1, "sample_steps": 2,
                      "sample_prompts": 1},
         "evaluate": {"max_prompts": 2, "steps": 2, "batch_size": 4}}
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def test_the_finetune_lora_flow_registers_the_adapter_and_a_candidate(project):
    from mlflow.tracking import MlflowClient

    from flows.cascade import cascade
    from stepvideo import registry, tracking
    from stepvideo.stages.common import model_hash

    _params(project)
    first = cascade(root=str(project))
    assert first["cached"] == {name: False for name in FINETUNE_STAGES}
    assert not (project / "outputs" / "vae").exists() and not (project / "outputs" / "dit").exists()
    print("\n".join(first["report"]))

    client = MlflowClient(tracking.tracking_uri())
    lora = client.get_model_version_by_alias(registry.LORA, registry.CANDIDATE)
    release_dit = REPO / "release" / "stepvideo-tiny" / "dit"
    assert lora.tags["base_model_version"] == f"folder:{model_hash(release_dit)}"
    assert lora.tags["data_version"] == first["version"]["data_version"] and lora.tags["git_commit"]
    assert json.loads(lora.tags["lora_spec"])["rank"] == 8  # the preset's
    bundle = client.get_model_version_by_alias(registry.BUNDLE, registry.CANDIDATE)
    assert bundle.tags["dit_stage"] == "finetune" and bundle.tags["base_model_version"] == lora.tags["base_model_version"]
    assert bundle.tags["dit_weights"] == lora.tags["merged_weights_hash"]
    m = first["evaluate"]["metrics"]
    assert "eval_base_overall" in m and "finetune_win_rate" in m

    # the stage runs of the flow's MLflow run
    parent = client.get_run(first["run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{first['run_id']}'")
    assert {"finetune", "evaluate", "bundle", "latent_cache"} <= {r.data.tags.get("stage") for r in children}

    second = cascade(root=str(project))
    assert second["cached"] == {name: name != "version" for name in FINETUNE_STAGES}
