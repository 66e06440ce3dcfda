"""Shared fixtures: offline settings and real local services (no mocks)."""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers_env import BIN, free_port, stop, wait_healthy

from pipeline.core import env

# The project's own offline defaults (pipeline/core/env.py), and the CPU even on a GPU host.
OFFLINE_ENV = {**env.DEFAULTS, "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="session", autouse=True)
def offline_environment(tmp_path_factory):
    """Keep every tool offline and its state out of the developer's home and project."""
    home = tmp_path_factory.mktemp("prefect-home")
    saved = dict(os.environ)
    os.environ.update(OFFLINE_ENV)
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("PREFECT_API_URL", None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server` on 127.0.0.1; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home)}
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ui",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(f"{api}/health", process)
        yield api
    finally:
        stop(process)
        log.close()
