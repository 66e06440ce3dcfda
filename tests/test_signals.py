"""No process left behind: SIGTERM (`kill PID`, a service manager) or SIGINT of a snackloc
command stops what the command started (pipeline/ops/children.py), and the command itself
ends without a traceback. Each case runs the real command and the real children."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest
import yaml
from helpers_env import BIN, ROOT, free_port
from helpers_processes import Command
from helpers_project import sh, tiny_params

from pipeline.integrations import tracking


def project_env(root) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env.pop("PREFECT_API_URL", None)
    return {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_stops_mlflow_ui_and_its_workers(tmp_path, monkeypatch, signum):
    # an experiment in the project's store: the UI's address opens its training runs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.local_store_uri(tmp_path))
    experiment = tracking.setup_experiment("snackloc")
    port = free_port()
    ui = Command(
        [str(BIN / "snackloc"), "ui", "--port", str(port)], tmp_path, project_env(tmp_path)
    )
    runs = f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs?workflowType=machine_learning"
    ui.wait_for(runs, timeout=240)
    assert ui.descendants(), "mlflow ui runs as a child"
    left = ui.stop_and_check(signum)
    assert not left, left
    assert ui.process.returncode in (0, 130), ui.output
    assert "Traceback" not in ui.output
    with socket.socket() as sock:  # the port is free again
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_pipeline_stops_prefects_temporary_server(tmp_path):
    env = project_env(tmp_path)
    params = tiny_params()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("snackloc", "data", "synth", "--out", "data", "--quiet", cwd=tmp_path, env=env)
    run = Command([str(BIN / "snackloc"), "pipeline", "-q"], tmp_path, env)
    run.wait_for("Beginning flow run", timeout=300)  # the temporary server answers
    assert run.descendants(), "Prefect's temporary server runs as a child"
    left = run.stop_and_check(signal.SIGTERM)
    assert not left, left
    assert run.process.returncode == 130, run.output
    assert "Traceback" not in run.output


def test_multiworker_launcher_stops_its_workers(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["strategy"] = "multi_worker"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    launcher = Command(
        [str(BIN / "python"), "-m", "pipeline.ops.multiworker", "--workers", "2"],
        tmp_path,
        project_env(tmp_path),
    )
    launcher.wait_for("starting 2 workers", timeout=120)
    while len(launcher.descendants()) < 2:  # both workers started (they import TF now)
        assert launcher.process.poll() is None, launcher.output
    # the workers are stopped before the launcher exits: none is alive a moment later
    left = launcher.stop_and_check(signal.SIGTERM, grace=3)
    assert not left, left
    assert launcher.process.returncode == 130, launcher.output


SWALLOWED = """
import os, signal, sys
from pipeline.ops import children
children.stop_on_sigterm()
try:  # a library that keeps every exception for a result nobody reads
    os.kill(os.getpid(), signal.SIGTERM)
    [None for _ in range(10**6)]  # the handler runs here
except BaseException:
    pass
print("swallowed", flush=True)
try:
    children.raise_if_terminated()
except children.Terminated:
    sys.exit(130)
"""


def test_a_sigterm_a_library_swallowed_is_raised_again_where_stopping_is_safe():
    # `snackloc pipeline` checks before every stage, and once more after the flow
    run = subprocess.run(
        [str(BIN / "python"), "-c", SWALLOWED], capture_output=True, text=True, timeout=60
    )
    assert "swallowed" in run.stdout, run.stderr
    assert run.returncode == 130, run.stderr


INSIDE_AN_IMPORT = """
import sys, time
from pipeline.ops import children
children.stop_on_sigterm()
sys.path.insert(0, sys.argv[1])
try:
    import signalling  # its body sends SIGTERM to this process, then works on
except children.Terminated:
    sys.exit("raised inside the import")
try:
    time.sleep(30)
except children.Terminated:
    sys.exit(130 if signalling.DONE else "the import did not finish")
"""


def test_a_sigterm_inside_an_import_is_raised_when_the_import_is_over(tmp_path):
    # raised inside, it can leave the import lock held: another thread's import then hangs
    module = "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nDONE = sum(range(10**6))\n"
    (tmp_path / "signalling.py").write_text(module)
    run = subprocess.run(
        [str(BIN / "python"), "-c", INSIDE_AN_IMPORT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 130, run.stderr
