"""The retraining flow end to end: a real Prefect server, a tiny project, real `dvc repro`
and a real MLflow registry. The flow function is called directly under the server (a served
deployment is exercised by `snackloc schedule`, documented in docs/scheduling.md).

Slow cases share one project, in this order of versions: v1 (first run, promoted), no-op
runs, v2 (better data, promoted), v3 (worse data, kept); each needs only the fixtures it
names, so any of them also runs alone (`-k`)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers_project import make_project, sh, tiny_params
from helpers_tiny import TINY

from pipeline.stages import NAMES


def slow(test):
    """A retraining runs every stage through `dvc repro` (one process each): minutes, and
    several times that on a loaded machine, hence a timeout above the suite's 900 s."""
    return pytest.mark.timeout(1800)(pytest.mark.slow(test))


# The project's gate compares mean IoU on the (unchanged) test split, with no floors and no
# baseline check: a model trained for seconds on 40 tiny images reaches none of the default
# floors, and mean IoU moves smoothly where CorLoc on a dozen test images does not. So the
# first run always promotes v1 ("no champion yet"), and the later decisions are real ones.
GATE = {"metric": "mean_iou", "margin": 0.05, "beat_baseline": False, "floors": {}}


@contextlib.contextmanager
def lock_held_elsewhere(path: Path):
    """The retraining lock at ``path`` held by another process for the block's duration."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from filelock import FileLock; lock = FileLock(sys.argv[1]); "
            "lock.acquire(timeout=0); print('held', flush=True); sys.stdin.readline()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.communicate("\n", timeout=10)


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server):
    root = tmp_path_factory.mktemp("retrain-project")
    params = tiny_params()
    params["register"]["gate"] = GATE
    env = make_project(root, prefect_server, params)
    return root, env, prefect_server


@contextlib.contextmanager
def server_settings(api: str) -> Iterator[None]:
    """Run flows in this process against the real server (subprocesses inherit it)."""
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api
    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            yield
            APILogWorker.drain_all(timeout=5)  # send the logs while the server is still up
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


@pytest.fixture
def under_server(prefect_server):
    with server_settings(prefect_server):
        yield


def latest_artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return max(found, key=lambda a: a.created).data


def latest_task_names(flow: str) -> list[str]:
    """The task runs of the newest run of ``flow``, in the order they started."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])))
        newest = max(runs, key=lambda run: run.created)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[newest.id]))
        )
    return [task.name for task in sorted(tasks, key=lambda task: task.start_time)]


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


@pytest.fixture(scope="module")
def first_run(project):
    """The project's first retraining (v1), committed after its promotion."""
    from flows.retrain import retrain

    root, _, api = project
    with server_settings(api):
        result = retrain(str(root), source="none", commit=True)
        summary = latest_artifact("snackloc-retrain")
        tasks = latest_task_names("snackloc-retrain")
    return result, summary, tasks


@slow
def test_first_run_trains_and_registers(project, first_run):
    root, env, _ = project
    result, summary, tasks = first_run
    assert result["status"] == "promoted", result
    # every stage is a task of the flow run, in pipeline order
    assert [name for name in tasks if name in NAMES] == list(NAMES), tasks
    assert result["version"] == "1"
    assert "no model registered yet" in result["reasons"]
    # the repo records what produced the champion
    head = sh("git", "log", "-1", "--format=%H %s", cwd=root, env=env).stdout
    assert head.startswith(result["commit"]) and "is @champion" in head
    assert not sh("git", "status", "--porcelain", "dvc.lock", cwd=root, env=env).stdout
    record = json.loads((root / "outputs/register/record.json").read_text())
    assert record["version"] == "1"
    assert "up to date" in sh("dvc", "status", cwd=root, env=env).stdout
    assert "# snackloc retrain: v1 promoted to @champion" in summary and "## Decision" in summary


@slow
def test_second_run_without_new_data_is_a_no_op(project, first_run, under_server):
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
def test_a_second_trigger_while_one_runs_exits_cleanly(project, first_run, under_server):
    from flows.retrain import LOCK_NAME, retrain

    root, _, _ = project
    with lock_held_elsewhere(root / LOCK_NAME):
        result = retrain(str(root), source="none")
        assert result == {"status": "busy"}
        assert "skipped" in latest_artifact("snackloc-retrain")
    assert retrain(str(root), source="none")["status"] == "no-change"  # lock released


@slow
def test_a_run_of_the_served_deployment_triggered_through_the_api(project, first_run, under_server):
    """Two triggers at once: the second waits for the first (quietly: no log line per poll),
    both end in a state named by their outcome, and SIGTERM leaves no process behind."""
    from helpers_processes import Command
    from prefect.deployments import run_deployment

    root, env, _ = project
    serving = Command(
        ["snackloc", "schedule", "--cron", "0 3 * * *", "--source", "none", "--name", "e2e"],
        root,
        env,
    )
    try:
        wait_for_deployment("snackloc-retrain/e2e", serving.process)
        queued = [run_deployment("snackloc-retrain/e2e", timeout=0) for _ in range(2)]
        finished = [wait_for_flow_run(run.id, timeout=300) for run in queued]
        assert [run.state.name for run in finished] == ["No change", "No change"], finished
        assert "already judged" in finished[0].state.message
        assert "# snackloc retrain: no change" in latest_artifact("snackloc-retrain")
    finally:
        left = serving.stop_and_check(signal.SIGTERM)
    assert serving.process.returncode == 0, serving.output
    assert not left, left
    assert "Aborted submission" not in serving.output
    assert "never awaited" not in serving.output and "Traceback" not in serving.output


def wait_for_flow_run(run_id, timeout: float):
    """The flow run once it reached a final state."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(1)
    raise AssertionError(f"flow run {run_id} not finished in {timeout} s")


def test_merge_inbox_appends_rows_and_copies_new_images(tmp_path):
    from pipeline.data.inbox import inbox_has_data, merge_inbox

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


def test_pull_restores_the_data_from_a_dvc_remote(tmp_path, under_server):
    """`source="pull"`: data pushed to a real (local folder) DVC remote comes back."""
    from helpers_env import BIN
    from prefect import flow

    from flows.retrain import refresh_data

    @flow
    def pull(project: str) -> dict:  # the retrain flow's first step, in a flow run of its own
        return refresh_data.with_options(retries=0)(project, "pull", None)

    root, remote = tmp_path / "project", tmp_path / "remote"
    root.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    (root / "data/train/apple").mkdir(parents=True)
    files = {
        "data/annotations-train.csv": "image_id,x_min,x_max,y_min,y_max,class_name,folder\n"
        "a,0.1,0.5,0.1,0.5,apple,apple\n",
        "data/train/apple/a.jpg": "not really a jpeg",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    for command in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "add", "-q", "data"],
        ["dvc", "remote", "add", "-d", "storage", str(remote)],
        ["dvc", "push", "-q"],
    ):
        sh(*command, cwd=root, env=env)
    shutil.rmtree(root / "data")
    shutil.rmtree(root / ".dvc" / "cache")  # only the remote has the data now

    assert pull(str(root)) == {"source": "pull", "merged": False}
    assert {name: (root / name).read_text() for name in files} == files
    assert "up to date" in sh("dvc", "status", "data.dvc", cwd=root, env=env).stdout

    sh("dvc", "remote", "remove", "storage", cwd=root, env=env)
    shutil.rmtree(root / "data")
    shutil.rmtree(root / ".dvc" / "cache")
    with pytest.raises(RuntimeError, match="dvc pull"):  # a failed pull fails the run
        pull(str(root))


def test_merge_inbox_refuses_other_columns(tmp_path):
    from pipeline.core.errors import UserError
    from pipeline.data.inbox import merge_inbox

    (tmp_path / "data").mkdir()
    (tmp_path / "inbox").mkdir()
    (tmp_path / "data/annotations-val.csv").write_text("image_id,class_name\n")
    (tmp_path / "inbox/annotations-val.csv").write_text("id,label\nx,apple\n")
    with pytest.raises(UserError, match="columns"):
        merge_inbox(tmp_path / "inbox", tmp_path / "data")


def test_schedule_needs_a_real_server(tmp_path):
    from helpers_env import BIN

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = subprocess.run(
        [str(BIN / "snackloc"), "schedule"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "PREFECT_API_URL is not set" in done.stderr


def test_schedule_serves_the_cron_deployment_and_stops_on_sigterm(prefect_server, tmp_path):
    from helpers_env import BIN
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
        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            deployment = wait_for_deployment("snackloc-retrain/snackloc-retrain", server)
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
        assert deployment.parameters["project"] == str(tmp_path.resolve())
        assert deployment.parameters["source"] == "none"
        # one retraining at a time is the runner's limit: a concurrency limit of the
        # deployment makes the runner log every poll of a queued run ("Aborted submission")
        assert deployment.global_concurrency_limit is None
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, output
    assert "never awaited" not in output and "Traceback" not in output, output
    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_server}),
        get_client(sync_client=True) as client,
    ):
        again = client.read_deployment_by_name("snackloc-retrain/snackloc-retrain")
    assert not again.paused  # pause_on_shutdown=False: the schedule outlives the runner


@pytest.mark.parametrize("delay", [0.05, pytest.param(1.5, marks=pytest.mark.slow)])
def test_schedule_stops_on_a_sigterm_sent_while_it_starts(prefect_server, tmp_path, delay):
    """A SIGTERM that arrives before Prefect's runner handles signals is not lost: the
    schedule still stops, within seconds, and leaves no child behind."""
    import psutil
    from helpers_env import BIN

    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    server = subprocess.Popen(
        [str(BIN / "snackloc"), "schedule", "--source", "none"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first = server.stdout.readline()
    assert first.startswith("serving"), first
    time.sleep(delay)
    children = psutil.Process(server.pid).children(recursive=True)
    server.send_signal(signal.SIGTERM)
    try:
        output, _ = server.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        raise
    assert server.returncode == 0, first + output
    assert "Traceback" not in output, output
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


# ---------------------------------------------------------------- the gate decides
# Both data changes are large on purpose, so each decision is far from a tie (GATE above):
# - "better data": three times as many correctly labelled training images as v1 had; v1,
#   trained on 40 images, barely moved from its initial centred box, and the new model's
#   boxes follow the objects: it must win by the margin;
# - "worse data": a batch whose boxes are in the wrong scale (coordinates divided by 5, as a
#   labelling tool normalising by the wrong image size would write them: every box in the
#   top-left corner), larger than all the good data: the new model drifts to the corner and
#   must lose, so the champion stays.
WRONG_SCALE = 5.0
BOX_COLUMNS = ("x_min", "x_max", "y_min", "y_max")
TRAIN_IMAGES = TINY["synth"]["train_images"]


def rescale_boxes(csv_path: Path, factor: float) -> None:
    """Divide every box coordinate of an annotation CSV by ``factor`` (a labelling bug)."""
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    fields = list(rows[0])
    for row in rows:
        for column in BOX_COLUMNS:
            row[column] = f"{float(row[column]) / factor:.6f}"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_inbox(inbox: Path, seed: int, images: int, box_scale: float = 1.0) -> None:
    """A batch of new training images in the snacks layout (defect-free synthetic data)."""
    from pipeline.core.config import SynthParams
    from pipeline.data import synth

    settings = SynthParams(
        seed=seed,
        train_images=images,
        val_images=1,
        test_images=1,
        min_side=64,
        max_side=128,
        inject_defects=False,
    )
    batch = inbox.parent / f"{inbox.name}-synth-{seed}"
    synth.generate(batch, settings, progress=False, workers=1)
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copytree(batch / "train", inbox / "train")
    shutil.copy(batch / "annotations-train.csv", inbox / "annotations-train.csv")
    if box_scale != 1.0:
        rescale_boxes(inbox / "annotations-train.csv", box_scale)
    shutil.rmtree(batch)


def champion_version(root: Path) -> str | None:
    from pipeline.integrations import registry

    client = registry.connect(f"sqlite:///{root / 'mlflow.db'}")
    version = registry.version_by_alias(client, "snackloc", "champion")
    return None if version is None else str(version.version)


@pytest.fixture(scope="module")
def better_data_run(project, first_run):
    """Correctly labelled images, three times the first training set, through the inbox."""
    from flows.retrain import retrain

    root, _, api = project
    write_inbox(root / "inbox", seed=101, images=3 * TRAIN_IMAGES)
    with server_settings(api):
        result = retrain(str(root), source="inbox")
        summary = latest_artifact("snackloc-retrain")
    record = json.loads((root / "outputs/register/record.json").read_text())
    return root, api, result, record, summary


@slow
def test_adding_better_data_promotes(better_data_run):
    root, _, result, record, summary = better_data_run
    assert result["status"] == "promoted", (result, record["reasons"])
    assert (result["champion_before"], result["version"]) == ("1", "2")
    assert result["champion_after"] == "2" == champion_version(root)
    decision = record["decision"]
    assert decision["metric"] == "mean_iou" and decision["champion_version"] == "1"
    # a real win, not a tie: by the margin at least
    assert decision["candidate"] - decision["champion"] >= GATE["margin"], decision
    assert any("beats champion v1" in reason for reason in record["reasons"])
    assert "# snackloc retrain: v2 promoted to @champion" in summary
    assert f"{3 * TRAIN_IMAGES} images" in summary  # what the inbox brought


@slow
def test_a_new_model_the_gate_refuses_keeps_the_champion(better_data_run):
    """New data retrains every stage; the gate, asked for more than the candidate can show
    (a margin of 0.9 mean IoU), keeps the champion: the new version stays @challenger.

    (A tiny model trained for two epochs barely leaves its initial box, so even wrong boxes
    do not make it reliably worse: the refusal comes from the gate's params instead.)
    """
    from flows.retrain import retrain
    from pipeline.integrations import registry

    root, api, before, _, _ = better_data_run
    champion = before["champion_after"]
    write_inbox(root / "inbox", seed=202, images=2 * TRAIN_IMAGES, box_scale=WRONG_SCALE)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["register"]["gate"]["margin"] = 0.9
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with server_settings(api):
        result = retrain(str(root), source="inbox")
        summary = latest_artifact("snackloc-retrain")
    record = json.loads((root / "outputs/register/record.json").read_text())
    assert result["status"] == "kept", (result, record["reasons"])
    assert result["version"] == "3"
    assert result["champion_before"] == result["champion_after"] == champion
    assert champion_version(root) == champion
    decision = record["decision"]
    assert not decision["promote"] and decision["champion_version"] == champion
    assert decision["candidate"] - decision["champion"] < 0.9, decision
    assert any(f"does not beat champion v{champion}" in r for r in decision["reasons"])
    client = registry.connect(f"sqlite:///{root / 'mlflow.db'}")
    new = registry.get_version(client, "snackloc", "3")
    assert new.tags["gate.decision"] == "challenger"
    assert str(registry.version_by_alias(client, "snackloc", "challenger").version) == "3"
    assert "# snackloc retrain: v3 kept as @challenger" in summary


def test_the_outcome_of_a_retraining_is_its_run_state(tmp_path, under_server):
    """`prefect deployment run --watch` prints the final state's name, and the flow run list
    shows it: a retraining's outcome is that name, not only a log line or an artifact."""
    from flows.retrain import LOCK_NAME, OUTCOMES, outcome_state, retrain

    (tmp_path / LOCK_NAME).parent.mkdir()
    with lock_held_elsewhere(tmp_path / LOCK_NAME):
        state = retrain(str(tmp_path), source="none", return_state=True)
    assert state.is_completed() and state.name == "Busy", state
    assert state.result() == {"status": "busy"}  # calling the flow returns this
    assert "another retraining is running" in state.message

    promoted = {"status": "promoted", "version": "3", "champion_before": "2"}
    state = outcome_state({**promoted, "champion_after": "3"})
    assert (state.name, state.message) == ("Promoted", "v3 is @champion; @champion v2 -> v3")
    kept = outcome_state({**promoted, "status": "kept", "champion_after": "2"})
    assert (kept.name, kept.message) == ("Kept", "v3 stays @challenger; @champion v2 -> v2")
    unchanged = outcome_state({"status": "no-change", "data_version": "ab12"})
    assert unchanged.name == "No change" and "ab12 already judged" in unchanged.message
    assert set(OUTCOMES.values()) == {"Busy", "Promoted", "Kept", "No change"}


def test_the_summary_shows_counts_as_integers():
    from flows.retrain import summary_markdown

    record = {
        "version": "2",
        "champion_before": "1",
        "champion_after": "2",
        "decision": {"metric": "corloc"},
        "tags": {"metric.images": "292", "metric.corloc": "0.8125"},
    }
    change = {"data_version": "ab12", "reasons": ["new data"]}
    before = {"champion": {"version": "1", "metrics": {"images": 290.0, "corloc": 0.75}}}
    text = summary_markdown(change, {"source": "inbox"}, before, record, None)
    assert "| images | 292 | 290 |" in text
    assert "| corloc | 0.8125 | 0.7500 |" in text
