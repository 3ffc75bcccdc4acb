"""An unreadable registry is an error, not an empty registry."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

from stepvideo import registry, tracking
from stepvideo.errors import MissingError
from stepvideo.registry import promotion, retrain


class _Broken:
    def __init__(self, code: int) -> None:
        self.code = code

    def _raise(self, *a, **k):
        raise mlflow.exceptions.MlflowException("boom", error_code=self.code)

    search_model_versions = get_registered_model = get_model_version = get_model_version_by_alias = _raise


@pytest.mark.parametrize("call", [lambda: registry.registered_version("stepvideo-t2v", "abc"),
                                  lambda: retrain.judged_versions("stepvideo-t2v")])
def test_an_unreachable_registry_raises_and_a_missing_model_is_empty(monkeypatch, call):
    monkeypatch.setattr(tracking, "client", lambda: _Broken(INTERNAL_ERROR))
    with pytest.raises(registry.RegistryUnavailable, match="cannot be read"):
        call()
    monkeypatch.setattr(tracking, "client", lambda: _Broken(RESOURCE_DOES_NOT_EXIST))
    assert call() in (None, [])


def test_a_missing_model_in_a_real_store_reads_as_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert retrain.judged_versions("no-such-model") == []
    assert registry.registered_version("no-such-model", "abc") is None


@pytest.mark.parametrize("call", [lambda: tracking.model_version("models:/stepvideo-t2v@champion"),
                                  lambda: promotion.aliases("stepvideo-t2v")])
def test_a_lookup_says_missing_only_when_mlflow_says_so(monkeypatch, call):
    """A lookup that MLflow answers "does not exist" is a MissingError (a user's wrong name); any
    other MLflow error is RegistryUnavailable, never "no such model"."""
    monkeypatch.setattr(tracking, "client", lambda: _Broken(INTERNAL_ERROR))
    with pytest.raises(registry.RegistryUnavailable, match="cannot be read"):
        call()
    monkeypatch.setattr(tracking, "client", lambda: _Broken(RESOURCE_DOES_NOT_EXIST))
    with pytest.raises(MissingError):
        call()
