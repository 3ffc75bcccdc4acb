"""Test isolation: Prefect, MLflow and DVC stores live in temporary folders, never in the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="stepvideo-tests-"))
# Prefect reads its settings when first imported: set them before any test imports it.
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # its startup heartbeat races sqlite
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_TMP / 'mlflow.db'}"
os.environ["STEPVIDEO_MLFLOW_ARTIFACTS"] = (_SESSION_TMP / "mlartifacts").as_uri()

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BIN = Path(sys.executable).parent


def load_bench(name: str):
    """The benchmark script bench/NAME.py as a module (the bench/ folder is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A throwaway copy of the project's pipeline files (git + DVC repo, local remote), cwd inside it."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    # dvc.yaml's code deps point at the package: link it in
    (root / "stepvideo").symlink_to(REPO / "stepvideo", target_is_directory=True)
    (root / "release").symlink_to(REPO / "release", target_is_directory=True)  # the release the demo fine-tunes
    (root / ".gitignore").write_text("/data\n/outputs\n/.dvc-remote\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "init"],
                   cwd=root, check=True)
    monkeypatch.chdir(root)
    monkeypatch.setenv("STEPVIDEO_ROOT", str(root))
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return root


def tiny_params(root: Path, **data) -> Path:
    """Shrink the dataset, the VAE and the DiT stages in a project's params.yaml."""
    import yaml

    path = root / "params.yaml"
    p = yaml.safe_load(path.read_text())
    p["data"].update({"clips": 6, "images": 4, **data})
    p["vae"].update({"steps": 2, "eval_max_items": 2, "checkpoint_every": 1, "eval_size": 32})
    p["latent_cache"].update({"batch_size": 4})
    for name in ("t2i_pretrain", "t2v_lowres", "t2v_highres", "sft"):
        p[name].update({"steps": 3 if name == "sft" else 2, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 1,
                        "sample_steps": 2, "sample_prompts": 2})
    p["sft"].update({"average_last": 2})
    p["dpo"].update({"train_prompts": 2, "style_prompts": 1, "candidates_per_prompt": 2, "sample_steps": 2,
                     "steps": 2, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 1, "min_margin": 0.0, "rounds": 1,
                     "generate_batch_size": 8})
    p["evaluate"].update({"max_prompts": 3, "steps": 2, "batch_size": 6, "vae_items": 2})
    path.write_text(yaml.safe_dump(p, sort_keys=False, allow_unicode=True))
    return path


@pytest.fixture(autouse=True)
def _stepvideo_logger_restored():
    """A CLI command in a test installs the `stepvideo` loggers' stderr handler (cli._common.setup_logging)
    for the whole process: put the logger back after each test, so no test sees another's set-up."""
    import logging

    logger = logging.getLogger("stepvideo")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
