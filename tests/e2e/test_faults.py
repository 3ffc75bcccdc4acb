"""Faults with real processes (issue 23), in the manner of the DiT trainer's SIGKILL resume test:
each operation runs in its own process (tests/e2e/_fault_driver.py), paused at a chosen point by a
hook and SIGKILLed there; the next run must find nothing half-written and carry on.

- SIGKILL while the latent cache and the text cache are written;
- SIGKILL between the steps of a model registration and of a promotion (sqlite MLflow store);
- SIGKILL during `dvc push` to the local remote;
- the MLflow tracking server stops in the middle of a training stage (a real `mlflow server`);
- a full disk (ENOSPC) while a checkpoint is written.

The MLflow client's own retries are shortened for the server test with MLFLOW_HTTP_REQUEST_MAX_RETRIES=2,
MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1 and MLFLOW_HTTP_REQUEST_TIMEOUT=5 (its defaults, 7 retries with
factor 2 and 120 s per request, take minutes to give up on a dead server).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN, REPO

DRIVER = REPO / "tests" / "e2e" / "_fault_driver.py"


# ---------------------------------------------------------------- helpers

def _spawn(*args, log: Path, at: str | None = None, nth: int = 1, when: str = "after",
           env: dict | None = None) -> subprocess.Popen:
    e = {k: v for k, v in os.environ.items() if not k.startswith("STEPVIDEO_FAULT_")}
    e.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})})
    if at:
        e.update(STEPVIDEO_FAULT_AT=at, STEPVIDEO_FAULT_NTH=str(nth), STEPVIDEO_FAULT_WHEN=when)
    e = {k: v for k, v in e.items() if v is not None}
    return subprocess.Popen([sys.executable, str(DRIVER), *map(str, args)], env=e, stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True, start_new_session=True)


def _kill_at_fault(proc: subprocess.Popen, log: Path) -> None:
    """Wait for the driver's FAULT-POINT line, then SIGKILL its process group."""
    while True:
        line = proc.stdout.readline()
        if line.startswith("FAULT-POINT"):
            break
        if not line and proc.poll() is not None:
            raise AssertionError(f"the driver ended before the fault point (rc {proc.returncode}): "
                                 f"{log.read_text()[-3000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, log.read_text()[-3000:]
    line = next(x for x in out.splitlines() if x.startswith("DONE "))
    return json.loads(line[len("DONE "):])


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Tiny data (2 clips + 2 stills, 32x32), tiny text encoders and a complete latent cache."""
    import torch

    from stepvideo.data.latent_cache import build_latent_cache
    from stepvideo.data.manifest import read_manifest
    from stepvideo.data.synth import SynthConfig, generate
    from stepvideo.models.text_encoders import TextEncoder
    from stepvideo.models.tiny_text import build_tiny_text_encoders
    from stepvideo.models.vae import VAEConfig, VideoVAE

    root = tmp_path_factory.mktemp("faults")
    manifest = generate(SynthConfig(clips=2, images=2, height=32, width=32, frames=17, degraded_fraction=0.0),
                        root / "data", progress=False)
    rows = read_manifest(manifest)
    paths = build_tiny_text_encoders(sorted({r["caption"] for r in rows}), root / "enc", llm_dim=32, clip_dim=16,
                                     layers=1, heads=2, seed=0, vocab_size=256)
    encoders = {k: TextEncoder.from_pretrained(str(paths[k]), kind=k) for k in ("llm", "clip")}
    torch.manual_seed(0)
    build_latent_cache(rows, manifest.parent, VideoVAE(VAEConfig.tiny()), encoders, root / "cache-v1",
                       data_version="v1", vae_version="tiny-0", low_res=(16, 16), batch_size=2, progress=False,
                       max_shard_bytes=1)
    return root


def _build_latent(work: Path, out: Path, data_version: str) -> Path:
    import torch

    from stepvideo.data.latent_cache import build_latent_cache
    from stepvideo.data.manifest import read_manifest
    from stepvideo.models.text_encoders import TextEncoder
    from stepvideo.models.vae import VAEConfig, VideoVAE

    rows = read_manifest(work / "data" / "manifest.jsonl")
    encoders = {k: TextEncoder.from_pretrained(str(work / "enc" / k), kind=k) for k in ("llm", "clip")}
    torch.manual_seed(0)
    return build_latent_cache(rows, work / "data", VideoVAE(VAEConfig.tiny()), encoders, out,
                              data_version=data_version, vae_version="tiny-0", low_res=(16, 16), batch_size=2,
                              progress=False, max_shard_bytes=1)


def _read_all(cache_dir: Path) -> int:
    """Every latent and text embedding of a cache (raises on anything unreadable); returns the item count."""
    from stepvideo.data.latent_cache import LatentCache

    cache = LatentCache(cache_dir)
    for res in cache.resolutions:
        for idx in cache.buckets(range(len(cache)), res).values():
            cache.batch(idx, res)
    return len(cache)


# ---------------------------------------------------------------- 1. the caches

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_while_the_latent_cache_is_rebuilt_keeps_the_old_one(work, tmp_path):
    from stepvideo.data.latent_cache import LatentCache

    out = tmp_path / "latent_cache"
    shutil.copytree(work / "cache-v1", out)  # a complete cache of data version v1
    before = sorted(p.name for p in out.iterdir())
    log = tmp_path / "driver.log"
    # a new data version: rebuilt; killed after the second shard of the new one is on disk
    _kill_at_fault(_spawn("latent-cache", work, out, "v2", log=log,
                          at="stepvideo.data.latent_cache:_ShardWriter.flush", nth=2), log)
    assert sorted(p.name for p in out.iterdir()) == before, "the old cache was touched"
    items = _read_all(work / "cache-v1")
    assert LatentCache(out).meta["data_version"] == "v1" and _read_all(out) == items
    assert _visible(tmp_path) == ["driver.log", "latent_cache"]  # the half-built one is hidden (.latent_cache.tmp-PID)
    # killed after the text cache, before cache.json: still the old one
    _kill_at_fault(_spawn("latent-cache", work, out, "v2", log=log,
                          at="stepvideo.data.latent_cache:build_text_cache"), log)
    assert LatentCache(out).meta["data_version"] == "v1"
    # the next run rebuilds it completely (the killed runs' hidden .latent_cache.tmp-PID folders stay: see
    # the report of issue 23; nothing reads them)
    _build_latent(work, out, "v2")
    assert LatentCache(out).meta["data_version"] == "v2" and _read_all(out) == items
    assert _visible(tmp_path) == ["driver.log", "latent_cache"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_while_the_text_cache_is_written_leaves_none(work, tmp_path):
    from stepvideo.data.manifest import read_manifest
    from stepvideo.data.text_cache import TextCache, build_text_cache
    from stepvideo.models.text_encoders import TextEncoder

    out = tmp_path / "text_cache" / "text_cache.safetensors"
    log = tmp_path / "driver.log"
    # killed once the whole file is written under its temporary name, before the rename
    _kill_at_fault(_spawn("text-cache", work, out, log=log, at="safetensors.torch:save_file"), log)
    assert not out.exists()
    rows = read_manifest(work / "data" / "manifest.jsonl")
    texts = {r["id"]: r["caption"] for r in rows}
    encoders = {k: TextEncoder.from_pretrained(str(work / "enc" / k), kind=k) for k in ("llm", "clip")}
    build_text_cache(texts, encoders, out, progress=False)
    cache = TextCache(out)
    assert sorted(cache.ids) == sorted(texts) and len(cache.get(sorted(texts))) == 4
    assert _visible(out.parent) == [out.name]  # only the killed run's hidden .NAME.tmp-PID beside it


# ---------------------------------------------------------------- 2. registration and promotion

@pytest.fixture
def store(tmp_path, monkeypatch) -> dict:
    """A fresh sqlite MLflow store (and artifact folder) in tmp_path, for this process and the driver's."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "STEPVIDEO_MLFLOW_ARTIFACTS": (tmp_path / "artifacts").as_uri()}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("STEPVIDEO_PROMOTE_LOCK", raising=False)
    return env


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"kind": "fault-test"}\n')
    (path / "model.safetensors").write_bytes(os.urandom(4096))
    return path


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_during_registration_and_promotion_loses_no_version_or_alias(store, tmp_path):
    from stepvideo import tracking
    from stepvideo.registry import promotion

    name = "stepvideo-fault"
    folder = _model_folder(tmp_path / "model")
    log = tmp_path / "driver.log"

    def register() -> str:
        with tracking.run("register", experiment="faults"):
            return tracking.register_folder(folder, name, tags={"weights_hash": "w"}, aliases=("candidate",))

    def check_versions() -> dict:
        """Every version the registry lists has the whole folder; every alias names one of them."""
        mlf = tracking.client()
        versions = {str(v.version) for v in mlf.search_model_versions(f"name = '{name}'")}
        for v in versions:
            got = tracking.resolve_model(f"models:/{name}/{v}", tmp_path / "dl" / v)
            assert _tree_hash(got) == _tree_hash(folder), f"version {v} is incomplete"
        now = promotion.aliases(name)
        assert set(now.values()) <= versions, now
        return now

    assert register() == "1"
    # killed after the version is created, before the `candidate` alias moves to it
    _kill_at_fault(_spawn("register", folder, name, log=log, env=store,
                          at="mlflow.tracking.client:MlflowClient.create_model_version"), log)
    assert check_versions() == {"candidate": "1"}
    assert register() == "3"  # the next run registers again and moves the alias
    assert check_versions() == {"candidate": "3"}

    promotion.promote_by_person(name, "1", user="t")
    assert check_versions() == {"candidate": "3", "champion": "1"}
    # killed after the first alias move of promoting version 3 (the lock dies with the process)
    _kill_at_fault(_spawn("promote", name, "3", log=log, env=store,
                          at="mlflow.tracking.client:MlflowClient.set_registered_model_alias"), log)
    now = check_versions()
    assert "1" in (now.get("champion"), now.get("previous")), f"the old champion's alias was lost: {now}"
    promotion.promote_by_person(name, "3", user="t")  # the next run finishes the promotion
    assert check_versions() == {"candidate": "3", "champion": "3", "previous": "1"}
    tags = tracking.client().get_model_version(name, "3").tags
    assert tags["promotion"] == "promoted" and tags["replaced_version"] == "1"
    assert promotion.rollback(name, user="t")["champion"] == "1"  # the rollback target survived


# ---------------------------------------------------------------- 3. dvc push

def _remote_objects(remote: Path) -> dict[str, int]:
    return {str(p.relative_to(remote)): p.stat().st_size for p in remote.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_during_dvc_push_then_the_next_version_completes_the_remote(project, work, tmp_path):
    import yaml

    shutil.copytree(work / "data", project / "data")
    log = tmp_path / "driver.log"
    # killed after the third file sent to the remote (`dvc add` puts files into the project's cache first)
    _kill_at_fault(_spawn("version", project, log=log, at="dvc_objects.fs.local:LocalFileSystem.put_file", nth=3,
                          env={"STEPVIDEO_FAULT_MATCH": ".dvc-remote"}), log)
    remote = project / ".dvc-remote"
    partial = _remote_objects(remote) if remote.exists() else {}
    proc = subprocess.run([str(BIN / "stepvideo"), "data", "version", "--no-notify"], cwd=project,
                          capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    md5 = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    assert proc.stdout.strip().splitlines()[-1] == md5

    def obj(h: str) -> Path:
        return remote / "files" / "md5" / h[:2] / h[2:]

    listing = json.loads(obj(md5).read_text())
    print(f"the killed push had sent {len(partial)} of {len(listing) + 1} objects")
    assert listing and len(partial) < len(listing) + 1, "the kill came after the push had finished"
    for entry in listing:  # every file of the version is in the remote, whole
        assert hashlib.md5(obj(entry["md5"]).read_bytes()).hexdigest() == entry["md5"], entry["relpath"]
    assert not [p for p in remote.rglob("*") if p.is_file() and ".tmp" in p.name.lower()]


# ---------------------------------------------------------------- 4. the tracking server stops mid-stage

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(home: Path, port: int) -> subprocess.Popen:
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
           "--artifacts-destination", str(home / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    log = open(home / "server.log", "a")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None:
            raise AssertionError((home / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the mlflow server did not start")


def _stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_tracking_server_stops_mid_stage_then_a_clear_error_and_the_rerun_resumes(work, tmp_path, monkeypatch):
    from stepvideo import registry
    from stepvideo.data.latent_cache import LatentCache
    from stepvideo.errors import UnavailableError
    from stepvideo.models.dit import DiTConfig
    from stepvideo.registry import promotion
    from stepvideo.training import checkpoint as ckpt
    from stepvideo.training.dit_trainer import DiTTrainConfig

    home = tmp_path / "server"
    home.mkdir()
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {"MLFLOW_TRACKING_URI": uri, "STEPVIDEO_MLFLOW_ARTIFACTS": None, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    cache = LatentCache(work / "cache-v1")
    z = int(cache.meta["z_channels"])
    model = DiTConfig.preset("demo", in_channels=z, out_channels=z, caption_channels=[32, 16]).to_dict()
    cfg = DiTTrainConfig(model=model, steps=6, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=2,
                         log_every=1, keep_checkpoints=2, seed=0)
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    out = tmp_path / "run"
    log = tmp_path / "driver.log"

    server = _start_server(home, port)
    try:
        proc = _spawn("train", work / "cache-v1", out, cfg_path, 1.0, log=log, env=env)
        deadline = time.time() + 180
        while (last := ckpt.latest_checkpoint(out)) is None or int(last.name.split("-")[1]) < 2:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.1)
        _stop_server(server)
        stopped = time.time()
        proc.communicate(timeout=180)
        waited = time.time() - stopped
        err = log.read_text()
        assert proc.returncode != 0
        assert "RegistryUnavailable" in err and uri in err, err[-3000:]
        print(f"the stage failed {waited:.1f}s after the server stopped")
        # the checkpoints are whole: the newest loads
        last = ckpt.latest_checkpoint(out)
        assert last is not None and ckpt.load_state(last)["step"] >= 2 and ckpt.load_model_state(last)
        assert all(p.name == "latest.json" or (p / "state.json").is_file()
                   for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))
        done_before = ckpt.load_state(last)["step"]
        # an unreachable registry is an error, never an empty registry
        for k, v in env.items():
            monkeypatch.setenv(k, v) if v is not None else monkeypatch.delenv(k, raising=False)
        with pytest.raises(UnavailableError, match=uri.replace(".", r"\.")):
            registry.registered_version("stepvideo-fault", "w")
        with pytest.raises(UnavailableError, match=uri.replace(".", r"\.")):
            promotion.aliases("stepvideo-fault")
        # the server back: the re-run resumes from the checkpoint
        server = _start_server(home, port)
        result = _finish(_spawn("train", work / "cache-v1", out, cfg_path, 0.0, log=log, env=env), log)
        assert result["step"] == 6 and result["trained_here"] == 6 - done_before
    finally:
        _stop_server(server)


# ---------------------------------------------------------------- 5. a full disk while a checkpoint is written

def _full_disk_after(monkeypatch, module, name: str, nbytes: int, calls: dict) -> None:
    """Make `module.name` (a writer taking (tensors, path, ...)) write `nbytes` of its file, then fail with ENOSPC."""
    real = getattr(module, name)

    def writer(tensors, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < calls["fail_at"]:
            return real(tensors, filename, *args, **kwargs)
        with open(filename, "wb") as fh:
            fh.write(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(module, name, writer)


@pytest.mark.parametrize("fail_at", [1, 2])  # the model weights, then the optimizer group
def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, fail_at):
    import torch

    import stepvideo.models.io as model_io
    from stepvideo.training import checkpoint as ckpt

    run = tmp_path / "run"
    model = {"w": torch.arange(12.0).reshape(3, 4)}
    groups = {"optimizer": {"0.exp_avg": torch.ones(3, 4)}}
    ckpt.save_checkpoint(run, 2, model_state=model, model_config={"kind": "t"}, tensors=groups, state={"a": 1})
    latest = (run / "checkpoints" / "latest.json").read_bytes()

    calls = {"n": 0, "fail_at": fail_at}
    _full_disk_after(monkeypatch, model_io, "save_file", 100, calls)
    _full_disk_after(monkeypatch, ckpt, "save_file", 100, calls)
    with pytest.raises(OSError) as info:
        ckpt.save_checkpoint(run, 4, model_state={"w": model["w"] + 1}, model_config={"kind": "t"}, tensors=groups,
                             state={"a": 2})
    assert info.value.errno == errno.ENOSPC
    assert str(run / "checkpoints" / "step-000004") in str(info.value), str(info.value)  # names the path
    assert (run / "checkpoints" / "latest.json").read_bytes() == latest
    assert ckpt.latest_checkpoint(run) == run / "checkpoints" / "step-000002"
    assert ckpt.list_checkpoints(run) == [run / "checkpoints" / "step-000002"]
    assert torch.equal(ckpt.load_model_state(ckpt.latest_checkpoint(run))["w"], model["w"])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step-000002"]


def test_full_disk_on_the_state_file_or_the_pointer_keeps_the_previous_one(tmp_path, monkeypatch):
    import torch

    import stepvideo.fileio as fileio
    from stepvideo.training import checkpoint as ckpt

    run = tmp_path / "run"
    model = {"w": torch.zeros(2)}
    ckpt.save_checkpoint(run, 2, model_state=model, model_config={"kind": "t"}, state={})
    latest = (run / "checkpoints" / "latest.json").read_bytes()
    real_open = open

    def full_open(file, mode="r", *args, **kwargs):  # every text write fails once it has begun
        fh = real_open(file, mode, *args, **kwargs)
        if "w" in mode and "b" not in mode:
            fh.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fh

    monkeypatch.setattr("builtins.open", full_open)
    monkeypatch.setattr(fileio, "open", full_open, raising=False)
    with pytest.raises(OSError) as info:
        ckpt.save_checkpoint(run, 4, model_state=model, model_config={"kind": "t"}, state={})
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and "step-000004" in str(info.value)
    assert (run / "checkpoints" / "latest.json").read_bytes() == latest
    assert ckpt.latest_checkpoint(run).name == "step-000002"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_file_size_limit_in_a_real_process_keeps_the_previous_checkpoint(tmp_path):
    """RLIMIT_FSIZE (SIGXFSZ ignored): the kernel refuses the write, as on a full disk."""
    script = tmp_path / "ckpt.py"
    script.write_text(f"""
import resource, signal, sys, torch
sys.path.insert(0, {str(REPO)!r})
from stepvideo.training import checkpoint as ckpt
ckpt.save_checkpoint({str(tmp_path / 'run')!r}, 2, model_state={{"w": torch.zeros(16)}}, model_config={{}}, state={{}})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
try:
    ckpt.save_checkpoint({str(tmp_path / 'run')!r}, 4, model_state={{"w": torch.zeros(1 << 16)}}, model_config={{}},
                         state={{}})
except OSError as e:
    print("OSERROR", e.errno, e)
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OSERROR" in proc.stdout and "step-000004" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    from stepvideo.training import checkpoint as ckpt

    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-000002"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["latest.json", "step-000002"]
