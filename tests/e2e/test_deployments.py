"""The deployments of infra/prefect/prefect.yaml on a real `prefect server start`, a process work
pool and a worker, with the stages recording to a real `mlflow server` (sqlite + artifact folder):
the on-demand cascade promotes its first model; the scheduled retrain skips when nothing changed;
`stepvideo data version` on new data sends the event whose automation runs the on-new-data retrain."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, tiny_params

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _process(cmd: list[str], env: dict, log: Path, cwd: Path):
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        time.sleep(1.0)
    raise TimeoutError(f"{url} not up after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _cli(args: list[str], env: dict, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    r = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)} -> {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def _flow_runs(api: str, deployment: str) -> list:
    """The flow runs of deployment 'FLOW/NAME', newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                                     sort=FlowRunSort.START_TIME_DESC)


def _deployment(api: str, name: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def _wait_for(fn, timeout: float, what: str, logs: list[Path]):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = fn()
        if found:
            return found
        time.sleep(2.0)
    raise TimeoutError(f"{what} after {timeout:.0f} s\n" + "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                                                                    for p in logs))


def test_deployments_on_demand_schedule_skip_and_data_trigger(project, tmp_path):
    from mlflow import MlflowClient

    from stepvideo.config import load_params

    t_start = time.perf_counter()
    tiny_params(project)
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["promote"].update({"min_overall": 0.0, "min_consistency": 0.0})  # the tiny model becomes the first champion
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False, allow_unicode=True))
    for name in ("flows", "infra"):
        (project / name).symlink_to(REPO / name, target_is_directory=True)

    mport, pport = _free_port(), _free_port()
    mlflow_url, api = f"http://127.0.0.1:{mport}", f"http://127.0.0.1:{pport}/api"
    artifacts = tmp_path / "mlflow-server" / "artifacts"
    env = {k: v for k, v in os.environ.items() if k not in ("STEPVIDEO_MLFLOW_ARTIFACTS", "PREFECT_API_URL")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
                "PREFECT_SERVER_API_HOST": "127.0.0.1"})
    client_env = {**env, "PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": mlflow_url, "STEPVIDEO_ROOT": str(project),
                  "PREFECT_WORKER_QUERY_SECONDS": "1"}
    logs = [tmp_path / "mlflow-server.log", tmp_path / "prefect-server.log", tmp_path / "worker.log"]
    with contextlib.ExitStack() as stack:
        mlflow_server = stack.enter_context(_process(  # the recipe, on sqlite + a folder
            ["bash", str(REPO / "infra" / "mlflow" / "serve.sh")],
            {**env, "STEPVIDEO_MLFLOW_HOME": str(tmp_path / "mlflow-server"), "STEPVIDEO_MLFLOW_PORT": str(mport)},
            logs[0], tmp_path))
        prefect_server = stack.enter_context(_process(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(pport)], env, logs[1],
            tmp_path))
        _wait_http(f"{mlflow_url}/health", mlflow_server, logs[0])
        _wait_http(f"{api}/health", prefect_server, logs[1])
        prefect = str(BIN / "prefect")
        _cli([prefect, "work-pool", "create", "stepvideo", "--type", "process"], client_env, project)
        _cli([prefect, "--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect/prefect.yaml"], client_env,
             project)
        stack.enter_context(_process([prefect, "worker", "start", "--pool", "stepvideo"], client_env, logs[2],
                                     tmp_path))

        # 1. the cascade on demand: trained, registered on the mlflow server, the first champion
        t0 = time.perf_counter()
        _cli([prefect, "deployment", "run", "stepvideo-cascade/on-demand", "--watch", "--watch-timeout", "900"],
             client_env, project)
        t_cascade = time.perf_counter() - t0
        [run] = _flow_runs(api, "stepvideo-cascade/on-demand")
        assert run.state.is_completed(), run.state
        ml = MlflowClient(tracking_uri=mlflow_url)
        champion = ml.get_model_version_by_alias("stepvideo-t2v", "champion")
        params = load_params(project / "params.yaml")
        data_v1 = (yaml.safe_load((project / "data.dvc").read_text()))["outs"][0]["md5"]
        assert champion.tags["data_version"] == data_v1
        assert champion.tags["cascade_params"] == params.training_hash()
        # the server stored the artifacts (its --artifacts-destination), not a project sqlite/folder
        assert any(artifacts.rglob("model_index.json")), "the bundle's files are not in the server's artifact store"
        assert not (project / "mlflow" / "mlflow.db").exists()

        # 2. the schedule: the server's scheduler has put the cron runs on the calendar
        dep = _deployment(api, "stepvideo-retrain/scheduled")
        assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * 1"]
        scheduled = _wait_for(lambda: [r for r in _flow_runs(api, "stepvideo-retrain/scheduled")
                                       if r.state.is_scheduled()], 120, "no scheduled runs", logs)
        assert all(r.expected_start_time.weekday() == 0 and r.expected_start_time.hour == 3 for r in scheduled)
        # ... and a scheduled retrain with nothing changed skips training and says why
        versions_before = len(ml.search_model_versions("name = 'stepvideo-t2v'"))
        t0 = time.perf_counter()
        _cli([prefect, "deployment", "run", "stepvideo-retrain/scheduled", "--watch", "--watch-timeout", "600"],
             client_env, project)
        t_skip = time.perf_counter() - t0
        done = [r for r in _flow_runs(api, "stepvideo-retrain/scheduled") if r.state.is_final()]
        assert len(done) == 1 and done[0].state.is_completed(), done
        assert done[0].state.message.startswith("skipped: nothing changed"), done[0].state.message
        assert f"stepvideo-t2v version {champion.version} (@champion)" in done[0].state.message
        assert len(ml.search_model_versions("name = 'stepvideo-t2v'")) == versions_before

        # 3. new data: `stepvideo data version` sends the event, the automation runs the on-new-data retrain
        stepvideo = str(BIN / "stepvideo")
        _cli([stepvideo, "data", "synth", "--seed", "7"], client_env, project)
        sent = _cli([stepvideo, "data", "version"], client_env, project)
        data_v2 = sent.stdout.strip().splitlines()[-1]
        assert data_v2 != data_v1 and "sent stepvideo.data.versioned" in sent.stderr
        t0 = time.perf_counter()
        finished = _wait_for(lambda: [r for r in _flow_runs(api, "stepvideo-retrain/on-new-data")
                                      if r.state.is_final()], 900, "no data-triggered run finished", logs)
        t_trigger = time.perf_counter() - t0
        [triggered] = finished
        assert triggered.state.is_completed(), triggered.state
        assert triggered.parameters["data_version"] == data_v2 and triggered.parameters["reason"] == "data event"
        assert triggered.state.message.startswith("retrained (changed since stepvideo-t2v version"), \
            triggered.state.message
        new = [v for v in ml.search_model_versions("name = 'stepvideo-t2v'") if v.tags.get("data_version") == data_v2]
        assert len(new) == 1
        aliases = ml.get_registered_model("stepvideo-t2v").aliases
        assert str(new[0].version) in (aliases.get("champion"), aliases.get("challenger")), aliases
        shown = _cli([stepvideo, "registry", "show", "stepvideo-t2v"], client_env, project).stdout
        assert shown.startswith("stepvideo-t2v: 2 version(s); aliases:") and data_v2 in shown
    print("\n" + shown)
    print(f"\ndeployment test: on-demand cascade {t_cascade:.0f} s, skipped retrain {t_skip:.0f} s, "
          f"data-triggered retrain {t_trigger:.0f} s, whole test {time.perf_counter() - t_start:.0f} s")
