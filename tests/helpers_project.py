"""A tiny real snackloc project in a temporary git + DVC repo (shared by end-to-end tests)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml
from conftest import BIN, ROOT
from test_pipeline_dvc import sh, tiny_params

__all__ = ["make_project", "sh"]


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
