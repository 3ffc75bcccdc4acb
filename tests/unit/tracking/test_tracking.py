import torch
from mlflow import MlflowClient

from stepvideo import tracking
from stepvideo.models.io import load_state_dict, save_folder


def test_register_folder_and_load_back_by_alias(tmp_path):
    folder = save_folder(tmp_path / "ckpt", {"w": torch.arange(6.0).reshape(2, 3)}, {"kind": "toy"})
    with tracking.run("unit", experiment="unit-tests", tags={"data_version": "abc.dir"}):
        v1 = tracking.register_folder(folder, "unit-toy", tags={"data_version": "abc.dir"}, aliases=("candidate",))
    folder2 = save_folder(tmp_path / "ckpt2", {"w": torch.ones(2, 3)}, {"kind": "toy"})
    with tracking.run("unit", experiment="unit-tests"):
        v2 = tracking.register_folder(folder2, "unit-toy", aliases=("candidate",))
    assert int(v2) == int(v1) + 1
    tracking.set_alias("unit-toy", "production", v1)
    prod = tracking.resolve_model("models:/unit-toy@production", tmp_path / "dl1")
    cand = tracking.resolve_model("models:/unit-toy@candidate", tmp_path / "dl2")
    assert torch.equal(load_state_dict(prod)["w"], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(load_state_dict(cand)["w"], torch.ones(2, 3))
    mv = MlflowClient(tracking.tracking_uri()).get_model_version("unit-toy", v1)
    assert mv.tags["data_version"] == "abc.dir"


def test_resolve_model_errors_clearly(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="model folder not found"):
        tracking.resolve_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="models:/no-such-model@x"):
        tracking.resolve_model("models:/no-such-model@x", tmp_path / "dl")


def test_code_version_moves_with_source():
    a = tracking.code_version("stepvideo.data")
    assert a == tracking.code_version("stepvideo.data") and a != tracking.code_version("stepvideo.models")
