import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from conftest import SHARED
from stepvideo.cli import app

runner = CliRunner()
COMMANDS = [[], ["data"], ["data", "synth"], ["data", "ingest"], ["data", "validate"], ["data", "version"],
            ["params", "show"], ["params", "write"], ["stage"], ["flow", "run"], ["flow", "retrain"], ["compat", "verify"],
            ["model", "info"], ["generate"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help(cmd):
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_user_mistakes_are_one_line_not_tracebacks(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("preset: demo\ndata:\n  clipz: 3\n")
    proc = subprocess.run([sys.executable, "-m", "stepvideo.cli", "params", "show", "--params", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "data.clipz: unknown parameter" in proc.stderr
    assert "Traceback" not in proc.stderr
    res = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "d"), "--frames", "16", "--params", str(bad)])
    assert res.exit_code == 2


def test_model_info_counts_the_30b_preset():
    res = runner.invoke(app, ["model", "info", "--preset", "step-video-t2v"])
    assert res.exit_code == 0, res.output
    assert "29,342,478,400 parameters" in res.output and "75,888 tokens" in res.output


@pytest.mark.parametrize("name", ["stepvideo_dit_tiny", "stepvideo_vae_tiny"])
def test_compat_verify_passes_on_the_golden_files(name):
    ref = SHARED / "reference" / f"{name}.safetensors"
    if not ref.is_file():
        pytest.skip(f"{ref} not present (../shared/reference is provided beside the checkout)")
    res = runner.invoke(app, ["compat", "verify", str(ref)])
    assert res.exit_code == 0, res.output
    assert "parity ok" in res.output


def test_compat_verify_rejects_a_non_reference(tmp_path):
    f = tmp_path / "x.safetensors"
    f.write_bytes(b"")
    (tmp_path / "x.json").write_text('{"what": "nothing"}')
    res = runner.invoke(app, ["compat", "verify", str(f)])
    assert res.exit_code == 2


def test_generate_writes_a_decodable_mp4_of_the_requested_shape(tmp_path):
    from stepvideo.data.video_io import read_video

    out = tmp_path / "v.mp4"
    res = runner.invoke(app, ["generate", "A small red circle moves right on a gray background.", "--out", str(out),
                              "--steps", "2", "--frames", "17", "--height", "32", "--width", "48"])
    assert res.exit_code == 0, res.output
    assert read_video(out).shape == (17, 32, 48, 3)
    res = runner.invoke(app, ["generate", "x", "--out", str(out), "--frames", "16"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["generate", "x", "--out", str(out), "--steps", "1", "--vae-tile", "16"])
    assert res.exit_code == 0, res.output
    assert read_video(out).shape == (17, 64, 64, 3)
    res = runner.invoke(app, ["generate", "x", "--out", str(out), "--steps", "1", "--vae-tile", "16",
                              "--vae-tile-mode", "fast"])
    assert res.exit_code == 2 and "tile_mode" in res.output


def test_generate_from_an_mlflow_model_uri(tmp_path):
    from stepvideo import tracking
    from stepvideo.data.video_io import read_video
    from stepvideo.pipelines.t2v import T2VPipeline

    bundle = T2VPipeline.random(preset="demo", seed=1, workdir=tmp_path / "work").save_pretrained(tmp_path / "bundle")
    with tracking.run("unit", experiment="unit-tests"):
        tracking.register_folder(bundle, "unit-t2v", aliases=("production",))
    out = tmp_path / "v.mp4"
    res = runner.invoke(app, ["generate", "一个红色的圆形向右移动", "--model", "models:/unit-t2v@production",
                              "--out", str(out), "--steps", "1", "--height", "32", "--width", "32", "--frames", "1"])
    assert res.exit_code == 0, res.output
    assert read_video(out).shape == (1, 32, 32, 3)


def test_a_bug_keeps_its_traceback_and_a_user_error_does_not():
    """Only StepVideoError (and its subclasses) is a user error: a plain ValueError is a bug and
    must show where it came from instead of reading as a one-line mistake."""
    import typer

    from stepvideo.cli._common import user_errors
    from stepvideo.errors import InputError, MissingError

    def raising(exc):
        @user_errors
        def command():
            raise exc
        return command

    for exc in (InputError("params.yaml: vae.steps: expected a number"), MissingError("data/x.mp4: no such file")):
        with pytest.raises(typer.Exit) as info:
            raising(exc)()
        assert info.value.exit_code == 2
    for bug in (ValueError("shape mismatch"), FileNotFoundError("internal path"), KeyError("k")):
        with pytest.raises(type(bug)):
            raising(bug)()


def test_the_stages_lines_reach_stderr_through_logging(capsys):
    """The stages log (not print) their one-line reports; the CLI shows the `stepvideo` loggers' INFO
    lines on the stderr of the moment, once, however often it is set up."""
    import logging

    from stepvideo.cli._common import setup_logging

    setup_logging()
    setup_logging()
    logging.getLogger("stepvideo.stages.promote").info("promote: skipped (promote.enabled is false)")
    logging.getLogger("stepvideo.stages.promote").debug("not shown")
    assert capsys.readouterr().err == "promote: skipped (promote.enabled is false)\n"


def test_registry_show_on_a_fresh_store_prints_no_mlflow_chatter(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run([sys.executable, "-m", "stepvideo.cli", "registry", "show"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "no registered models" in proc.stdout, proc.stdout + proc.stderr
    assert "Creating initial MLflow database tables" not in proc.stderr and "INFO" not in proc.stderr, proc.stderr
