"""A tiny real snackloc project in a temporary git + DVC repo (shared by end-to-end tests)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from helpers_env import BIN, ROOT
from helpers_tiny import TINY


def sh(*args: str, cwd: Path, env: dict | None = None, check: bool = True):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        )
    return done


def tiny_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    return params


def make_project(root: Path, prefect_api: str, params: dict | None = None) -> dict[str, str]:
    """Copy the code, write tiny params, synthesise data, `dvc add` it and commit.

    Returns the environment to run commands in (this venv on PATH, the given Prefect API).
    """
    for name in ("pipeline", "flows"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_API_URL": prefect_api,
    }
    for command in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "t@example.com"],
        ["git", "config", "user.name", "test"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["snackloc", "data", "synth", "--out", "data", "--quiet"],
        ["dvc", "add", "-q", "data"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "tiny project"],
    ):
        sh(*command, cwd=root, env=env)
    return env


def kill_when(
    args: list[str],
    cwd: Path,
    env: dict,
    log_path: Path,
    ready: Callable[[], bool],
    waiting_for: str,
    poll: float = 0.05,
    timeout: float = 600,
) -> subprocess.Popen:
    """Run ``args`` in a session of its own (output to ``log_path``) and SIGKILL its whole
    process group once ``ready()`` holds; return the killed process."""
    with log_path.open("w") as log:
        process = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{waiting_for} in {timeout} s"
            time.sleep(poll)
        os.killpg(process.pid, signal.SIGKILL)  # the command, its children and threads
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return process
