"""`snackloc server`: a real Prefect server and a real MLflow server, started and stopped.

The default suite checks the process handling with stand-in processes (seconds); the real
servers start in the slow case (`-m slow`)."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers_env import BIN, ROOT, free_port, wait_healthy
from helpers_processes import Command

from pipeline.ops import servers


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow  # 50-81 s measured on the shared 2-core machine (load 8-10)
def test_server_runs_prefect_and_mlflow_in_the_project_and_stops_both_on_sigterm(tmp_path):
    from mlflow import MlflowClient

    prefect_port, mlflow_port = free_port(), free_port()
    # no PREFECT_HOME from the test session: the project's own .prefect/ (pipeline/core/env.py)
    env = {k: v for k, v in os.environ.items() if k not in {"PREFECT_HOME", "PREFECT_API_URL"}}
    command = Command(
        [
            str(BIN / "snackloc"),
            "server",
            "--prefect-port",
            str(prefect_port),
            "--mlflow-port",
            str(mlflow_port),
        ],
        cwd=tmp_path,
        env=env,
    )
    process, lines = command.process, command.lines
    pids: list[int] = []
    try:
        command.wait_for("Ctrl+C stops both", timeout=240)
        prefect_url, mlflow_url = (
            f"http://127.0.0.1:{prefect_port}",
            f"http://127.0.0.1:{mlflow_port}",
        )
        wait_healthy(f"{prefect_url}/api/health", process, timeout=5)
        wait_healthy(f"{mlflow_url}/health", process, timeout=5)
        output = "\n".join(lines)
        assert f"export PREFECT_API_URL={prefect_url}/api" in output
        assert f"export MLFLOW_TRACKING_URI={mlflow_url}" in output
        found = re.search(r"pids: Prefect (\d+), MLflow (\d+)", output)
        assert found, output
        pids = [int(pid) for pid in found.groups()]
        # each server leads its own process group (its workers included)
        assert all(os.getpgid(pid) == pid for pid in pids)

        # the printed MLflow URI works, and artifacts land in the project's mlartifacts/
        client = MlflowClient(tracking_uri=mlflow_url)
        experiment = client.create_experiment("server-test")
        run = client.create_run(experiment)
        client.log_text(run.info.run_id, "hello", "note.txt")
        assert [p.read_text() for p in (tmp_path / "mlartifacts").rglob("note.txt")] == ["hello"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            for pid in pids:
                if group_alive(pid):
                    os.killpg(pid, signal.SIGKILL)
            raise
    assert process.returncode == 0, "\n".join(lines)
    # both servers and every process of their groups (uvicorn workers) are gone
    assert pids and not any(group_alive(pid) for pid in pids), pids
    # state inside the project
    assert (tmp_path / ".prefect" / "prefect.db").is_file()
    assert (tmp_path / "mlflow.db").is_file()
    assert (tmp_path / ".snackloc/logs/prefect.log").is_file()


def test_server_refuses_a_busy_port_and_warns_about_other_hosts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [str(BIN / "snackloc"), "server", "--host", "0.0.0.0", "--prefect-port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert "neither server has authentication" in done.stderr
    assert f"cannot listen on 0.0.0.0:{port}" in done.stderr
    assert not (tmp_path / ".snackloc/logs").exists()  # nothing was started


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://mlflow:s3cret@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("postgresql+asyncpg://u:p@w@db/prefect", "postgresql+asyncpg://u:***@db/prefect"),
        ("sqlite:////srv/mlflow.db", "sqlite:////srv/mlflow.db"),
        ("s3://bucket/mlartifacts", "s3://bucket/mlartifacts"),
    ],
)
def test_printed_uris_hide_passwords(uri, shown):
    assert servers.hide_password(uri) == shown


def test_hosts_and_default_stores(tmp_path):
    assert servers.client_host("0.0.0.0") == "127.0.0.1"
    assert servers.client_host("::1") == "[::1]"
    assert servers.is_local("127.0.0.1") and servers.is_local("localhost")
    assert not servers.is_local("0.0.0.0") and not servers.is_local("10.0.0.5")
    mlflow = servers.mlflow_server(tmp_path, "127.0.0.1", 5001)
    assert mlflow.env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert mlflow.env["MLFLOW_ARTIFACTS_DESTINATION"] == (tmp_path / "mlartifacts").as_uri()
    secret = "postgresql://mlflow:s3cret@db/m"
    team = servers.mlflow_server(tmp_path, "0.0.0.0", 5001, secret, "s3://b/a")
    assert team.env["MLFLOW_BACKEND_STORE_URI"] == secret
    assert team.env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://b/a"
    assert not any("s3cret" in arg for arg in team.command)  # not visible in `ps`
    assert team.url == "http://127.0.0.1:5001"
    assert servers.prefect_database({"PREFECT_HOME": str(tmp_path)}) == (
        f"sqlite:///{tmp_path.resolve() / 'prefect.db'}"
    )
    url = "postgresql+asyncpg://p:secret@db/prefect"
    shown = servers.prefect_database({"PREFECT_API_DATABASE_CONNECTION_URL": url})
    assert shown == "postgresql+asyncpg://p:***@db/prefect"


def sleeper(tmp_path, code: str = "import time; time.sleep(120)") -> servers.Server:
    """A stand-in server process (plain Python) for the process-group handling."""
    command = [sys.executable, "-c", code]
    log = tmp_path / "sleeper.log"
    return servers.Server("sleeper", command, "127.0.0.1", 0, "", "", dict(os.environ), log)


def wait_gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_stop_kills_a_server_group_that_ignores_sigterm(tmp_path):
    # a leader that ignores SIGTERM, with a child of its own in the same group
    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        "print('ready', flush=True); time.sleep(120)"
    )
    running = servers.start(sleeper(tmp_path, code))
    deadline = time.monotonic() + 30
    while "ready" not in (tmp_path / "sleeper.log").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    started = time.monotonic()
    codes = servers.stop([running], timeout=1)
    assert codes == {"sleeper": -signal.SIGKILL}
    assert time.monotonic() - started < 10
    assert wait_gone(running.process.pid)  # the grandchild too


def test_servers_get_sigterm_when_snackloc_server_is_killed(tmp_path):
    """kill -9 of the parent leaves no orphan server behind (Linux: PR_SET_PDEATHSIG)."""
    if sys.platform != "linux":
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time; from pipeline.ops import servers; "
            "from test_servers import sleeper; from pathlib import Path; "
            "r = servers.start(sleeper(Path(sys.argv[1]))); print(r.process.pid, flush=True); "
            "time.sleep(120)",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    assert group_alive(child)
    parent.kill()
    parent.wait(timeout=10)
    assert wait_gone(child)


def test_a_server_that_dies_while_starting_stops_the_other(tmp_path):
    from pipeline.core.errors import UserError

    code = "import os, time; print(os.getpid(), flush=True); time.sleep(120)"
    waiting = dataclasses.replace(
        sleeper(tmp_path, code), health_url="http://127.0.0.1:9/health"
    )  # never healthy (nothing listens on port 9)
    failing = dataclasses.replace(
        # exits 2 s in: the other one has printed its pid by then
        sleeper(tmp_path, "import sys, time; time.sleep(2); print('bad store URI'); sys.exit(3)"),
        name="broken",
        health_url="http://127.0.0.1:9/health",
        log=tmp_path / "broken.log",
    )
    with pytest.raises(UserError, match=r"broken server exited with 3(.|\n)*bad store URI"):
        servers.serve([waiting, failing], on_ready=lambda running: None, timeout=60)
    pid = int((tmp_path / "sleeper.log").read_text().split()[0])
    assert wait_gone(pid)  # the other server was stopped too
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_ui_with_a_tracking_server_points_there_and_starts_nothing(tmp_path):
    port = free_port()
    done = subprocess.run(
        [str(BIN / "snackloc"), "ui", "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": "http://team:s3cret@127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "open http://team:***@127.0.0.1:9" in done.stdout
    assert "s3cret" not in done.stdout + done.stderr
    with socket.socket() as sock:  # nothing listens where a local UI would have
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_ui_serves_the_project_store(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = Command([str(BIN / "snackloc"), "ui", "--port", str(port)], cwd=tmp_path, env=env)
    ui = command.process
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", ui)
        command.wait_for("MLflow UI for sqlite:///", timeout=120)
        assert (tmp_path / "mlflow.db").is_file()  # the project store, beside the project
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
