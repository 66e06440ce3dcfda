"""Fault injection: the MLflow server is down or failing while `register` runs.

Each registry step is retried with backoff, a bounded number of times; then the stage fails
with one clear message (no traceback through the CLI) and @champion is unchanged. Real
`mlflow server` on 127.0.0.1 (killed with SIGKILL, started again on the same store), and a
real HTTP proxy in front of it that answers 503 to chosen calls.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import mlflow
import pytest
import yaml
from helpers_env import BIN, wait_healthy
from helpers_mlflow import FailingProxy, MlflowServer, new_training_run
from helpers_model import TINY_MODEL, save_tiny_model

from pipeline.core.config import Params, RegisterParams
from pipeline.core.env import DEFAULTS
from pipeline.core.files import write_json
from pipeline.core.paths import Outputs
from pipeline.integrations import registry, tracking
from pipeline.stages import register

NAME = "faulty"
CLASSES = ["apple", "banana", "cake"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real `mlflow server` and a tiny saved model (built while the server starts)."""
    home = tmp_path_factory.mktemp("mlflow-faults")
    server = MlflowServer(home).start(wait=False)
    model_files = save_tiny_model(home / "model", CLASSES)
    wait_healthy(f"{server.url}/health", server.process)
    try:
        yield server, model_files
    finally:
        server.kill()


@pytest.fixture
def project(served, tmp_path, monkeypatch):
    """A project folder: params.yaml, the outputs register reads, a training run."""
    server, (model, classes) = served
    if server.process is None:  # a previous test left it stopped
        server.start()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setattr(tracking, "FIRST_DELAY", 0.05)
    params = Params(model=TINY_MODEL, register=RegisterParams(model_name=NAME))
    dump = params.model_dump(mode="json", by_alias=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(dump, sort_keys=False))
    outputs = Outputs(tmp_path / "outputs")
    for source, target in ((model, outputs.model), (classes, outputs.classes)):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    new_training_run(registry.connect(server.url), params, outputs)
    return server, params, outputs


def evaluated(outputs: Outputs, corloc: float) -> None:
    """What the evaluate stage writes: metrics (accuracy 0.8, the given CorLoc), split id."""
    model = {"accuracy": 0.8, "mean_iou": 0.5, "iou50_rate": 0.5, "corloc": corloc}
    write_json(outputs.eval_metrics, {"test": model, "test_baseline": dict.fromkeys(model, 0.05)})
    write_json(outputs.eval_splits, {"test": {"images": 10, "fingerprint": "same-test-set"}})


def champion_of(url: str) -> str:
    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def versions_of(url: str) -> list[str]:
    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    return sorted(str(v.version) for v in client.search_model_versions(f"name='{NAME}'"))


def ensure_champion(params: Params, outputs: Outputs, url: str) -> str:
    if registry.version_by_alias(registry.connect(url), NAME, "champion") is None:
        evaluated(outputs, corloc=0.30)
        register.run(params, outputs)
    return champion_of(url)


@pytest.mark.slow  # ~2-4 min on a busy 2-core machine: servers start, the CLI imports TF
def test_register_cli_with_the_server_down_fails_clearly_and_keeps_the_champion(
    project, prefect_server, tmp_path
):
    server, params, outputs = project
    before = ensure_champion(params, outputs, server.url)
    new_training_run(registry.connect(server.url), params, outputs)
    versions = versions_of(server.url)
    server.kill()

    evaluated(outputs, corloc=0.5)  # a candidate the gate would promote
    env = {
        **os.environ,
        **DEFAULTS,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_API_URL": prefect_server,
    }
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "snackloc"), "register", "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output
    assert "Retry 1/" not in output  # a clear failure is final: Prefect does not rerun it
    error = next(line for line in done.stderr.splitlines() if line.startswith("error:"))
    assert error.startswith(
        f"error: stage register failed: MLflow tracking server {server.url} unreachable: "
        "could not log and register the model (connection refused; 4 tries in"
    ), error
    assert "hint: start the server or fix MLFLOW_TRACKING_URI" in done.stderr
    tries = float(re.search(r"4 tries in (\d+) s", error).group(1))
    assert tries < 40, error  # bounded: MLflow's own retries are bounded too (pipeline/core/env.py)
    assert seconds < 240, seconds

    server.start()
    assert champion_of(server.url) == before  # nothing moved
    assert versions_of(server.url) == versions  # and nothing half-registered
    record = register.run(params, outputs)  # the server is back: the same stage succeeds
    assert record["decision"]["promote"] and champion_of(server.url) == record["version"]


@pytest.mark.slow  # ~1 min with the server start of the module fixture
def test_register_retries_a_failing_server_then_gives_up_with_the_champion_unchanged(
    project, monkeypatch
):
    server, params, outputs = project
    before = ensure_champion(params, outputs, server.url)
    alias_calls = "/api/2.0/mlflow/registered-models/alias"
    with FailingProxy(server.port) as proxy:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
        # The server fails every call that moves an alias: the last step of register.
        proxy.fails = lambda method, path: method == "POST" and path.startswith(alias_calls)
        new_training_run(registry.connect(server.url), params, outputs)
        evaluated(outputs, corloc=0.7)
        with pytest.raises(tracking.TrackingUnavailable) as failure:
            register.run(params, outputs)
        message = str(failure.value)
        assert "could not tag v" in message and "move the aliases" in message
        assert "the server answers with errors; 4 tries" in message
        # 4 tries of snackloc, each 1 + 2 quick retries of MLflow: bounded, then it stops.
        assert len(proxy.failed) == 4 * 3
        assert champion_of(server.url) == before
        newest = max(versions_of(server.url), key=int)
        tags = mlflow.MlflowClient(registry_uri=server.url).get_model_version(NAME, newest).tags
        assert tags["gate.decision"] == "champion"  # decided, tagged, but no alias moved

        # A server that fails only a few times: the retries carry register through, and the
        # rerun reuses the version registered above (same run, same model file).
        proxy.failed.clear()
        evaluated(outputs, corloc=0.9)
        proxy.fails = lambda method, path: (
            method == "POST" and path.startswith(alias_calls) and len(proxy.failed) < 3
        )
        record = register.run(params, outputs)
        assert len(proxy.failed) == 3
        assert record["decision"]["promote"] and champion_of(server.url) == record["version"]
        assert record["version"] == newest and max(versions_of(server.url), key=int) == newest
