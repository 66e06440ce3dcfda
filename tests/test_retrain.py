"""The retraining flow end to end: a real Prefect server, a tiny project, real `dvc repro`
and a real MLflow registry. The flow function is called directly under the server (a served
deployment is exercised by `snackloc schedule`, documented in docs/scheduling.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers_project import make_project, sh

# The first retraining runs every stage through `dvc repro` (one process each): minutes.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server):
    root = tmp_path_factory.mktemp("retrain-project")
    env = make_project(root, prefect_server)
    return root, env, prefect_server


@pytest.fixture
def under_server(project, monkeypatch):
    """Run flows in this process against the real server (subprocesses inherit it)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    _, _, api = project
    monkeypatch.setenv("PREFECT_API_URL", api)
    with temporary_settings(updates={PREFECT_API_URL: api}):
        yield
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # send the logs while the server is still up


def latest_artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return max(found, key=lambda a: a.created).data


def wait_for_deployment(name: str, serving: subprocess.Popen, timeout: float = 90):
    """The deployment once `snackloc schedule` has registered it (under the current API)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert serving.poll() is None, serving.stdout.read()
            try:
                return client.read_deployment_by_name(name)
            except Exception:
                time.sleep(1)
    raise AssertionError(f"deployment {name} was not registered in {timeout} s")


@slow
def test_first_run_trains_and_registers(project, under_server):
    from flows.retrain import retrain

    root, env, _ = project
    result = retrain(str(root), source="none", commit=True)
    assert result["status"] in {"promoted", "kept"}, result
    if result["status"] == "promoted":  # the repo records what produced the champion
        head = sh("git", "log", "-1", "--format=%H %s", cwd=root, env=env).stdout
        assert head.startswith(result["commit"]) and "is @champion" in head
        assert not sh("git", "status", "--porcelain", "dvc.lock", cwd=root, env=env).stdout
    else:
        assert result["commit"] is None
    assert result["version"] == "1"
    assert "no model registered yet" in result["reasons"]
    record = json.loads((root / "outputs/register/record.json").read_text())
    assert record["version"] == "1"
    assert "up to date" in sh("dvc", "status", cwd=root, env=env).stdout
    summary = latest_artifact("snackloc-retrain")
    assert "# snackloc retrain: v1" in summary and "## Decision" in summary


@slow
def test_second_run_without_new_data_is_a_no_op(project, under_server):
    from flows.retrain import retrain

    root, _, _ = project
    mtime = (root / "outputs/train/model.keras").stat().st_mtime_ns
    started = time.monotonic()
    result = retrain(str(root), source="inbox", inbox=str(root / "inbox"))  # empty inbox
    assert result["status"] == "no-change", result
    assert time.monotonic() - started < 30
    assert (root / "outputs/train/model.keras").stat().st_mtime_ns == mtime
    assert "# snackloc retrain: no change" in latest_artifact("snackloc-retrain")


@slow
def test_a_second_trigger_while_one_runs_exits_cleanly(project, under_server):
    from flows.retrain import LOCK_NAME, retrain

    root, _, _ = project
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from filelock import FileLock; "
            "lock = FileLock(sys.argv[1]); lock.acquire(timeout=0); print('held', flush=True); "
            "sys.stdin.readline()",
            str(root / LOCK_NAME),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = retrain(str(root), source="none")
        assert result == {"status": "busy"}
        assert "skipped" in latest_artifact("snackloc-retrain")
    finally:
        holder.communicate("\n", timeout=10)
    assert retrain(str(root), source="none")["status"] == "no-change"  # lock released


@slow
def test_a_run_of_the_served_deployment_triggered_through_the_api(project, under_server):
    from prefect.deployments import run_deployment

    root, env, _ = project
    serving = subprocess.Popen(
        ["snackloc", "schedule", "--cron", "0 3 * * *", "--source", "none", "--name", "e2e"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_deployment("snackloc-retrain/e2e", serving)
        run = run_deployment("snackloc-retrain/e2e", timeout=180)
        assert run.state.is_completed(), run.state
        assert "# snackloc retrain: no change" in latest_artifact("snackloc-retrain")
    finally:
        serving.send_signal(signal.SIGTERM)
        serving.communicate(timeout=30)
    assert serving.returncode == 0


def test_merge_inbox_appends_rows_and_copies_new_images(tmp_path):
    from flows.retrain import inbox_has_data, merge_inbox

    header = "image_id,x_min,x_max,y_min,y_max,class_name,folder\n"
    data, inbox = tmp_path / "data", tmp_path / "inbox"
    (data / "train/apple").mkdir(parents=True)
    (data / "train/apple/a.jpg").write_bytes(b"old")
    (data / "annotations-train.csv").write_text(header + "a,0.1,0.5,0.1,0.5,apple,apple\n")
    assert not inbox_has_data(inbox)
    (inbox / "train/apple").mkdir(parents=True)
    (inbox / "train/apple/a.jpg").write_bytes(b"new")  # clash: kept as it was
    (inbox / "train/apple/b.jpg").write_bytes(b"b")
    (inbox / "annotations-train.csv").write_text(header + "b,0.2,0.6,0.2,0.6,apple,apple\n")
    assert inbox_has_data(inbox)
    counts = merge_inbox(inbox, data)
    assert counts == {"rows": {"train": 1}, "images": 1, "conflicts": ["train/apple/a.jpg"]}
    lines = (data / "annotations-train.csv").read_text().splitlines()
    assert lines[-1].startswith("b,") and len(lines) == 3
    assert (data / "train/apple/a.jpg").read_bytes() == b"old"
    assert (data / "train/apple/b.jpg").read_bytes() == b"b"


def test_merge_inbox_refuses_other_columns(tmp_path):
    from flows.retrain import merge_inbox
    from pipeline.errors import UserError

    (tmp_path / "data").mkdir()
    (tmp_path / "inbox").mkdir()
    (tmp_path / "data/annotations-val.csv").write_text("image_id,class_name\n")
    (tmp_path / "inbox/annotations-val.csv").write_text("id,label\nx,apple\n")
    with pytest.raises(UserError, match="columns"):
        merge_inbox(tmp_path / "inbox", tmp_path / "data")


def test_schedule_needs_a_real_server(tmp_path):
    from conftest import BIN

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = subprocess.run(
        [str(BIN / "snackloc"), "schedule"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "PREFECT_API_URL is not set" in done.stderr


def test_schedule_serves_the_cron_deployment_and_stops_on_sigterm(prefect_server, tmp_path):
    from conftest import BIN
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    server = subprocess.Popen(
        [str(BIN / "snackloc"), "schedule", "--cron", "0 3 * * *", "--source", "none"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deployment = None
        with (
            temporary_settings(updates={PREFECT_API_URL: prefect_server}),
            get_client(sync_client=True) as client,
        ):
            deadline = time.monotonic() + 90
            while deployment is None and time.monotonic() < deadline:
                assert server.poll() is None, server.stdout.read()
                try:
                    deployment = client.read_deployment_by_name("snackloc-retrain/snackloc-retrain")
                except Exception:
                    time.sleep(1)
        assert deployment is not None, "the deployment was not registered"
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
        assert deployment.parameters["project"] == str(tmp_path.resolve())
        assert deployment.parameters["source"] == "none"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, output
    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_server}),
        get_client(sync_client=True) as client,
    ):
        again = client.read_deployment_by_name("snackloc-retrain/snackloc-retrain")
    assert not again.paused  # pause_on_shutdown=False: the schedule outlives the runner
