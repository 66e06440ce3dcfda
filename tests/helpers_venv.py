"""A throwaway venv with pinned packages from the package index, for opt-in tests that check
the project's files against another tool's own code. Import as ``from helpers_venv import
throwaway_venv``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_env import ROOT


def throwaway_venv(where: Path, pins: tuple[str, ...], reuse_variable: str) -> Path:
    """A venv at ``where`` with ``pins`` installed by uv, or the venv the environment
    variable ``reuse_variable`` names; the test is skipped, with the reason, when they
    cannot be installed (offline, no uv)."""
    reuse = os.environ.get(reuse_variable)
    if reuse:
        return Path(reuse)
    uv = ROOT / ".tools" / "bin" / "uv"
    uv = str(uv) if uv.exists() else shutil.which("uv")
    if uv is None:
        pytest.skip(f"{' '.join(pins)}: no uv to install with (make install brings .tools/bin/uv)")
    steps = [[uv, "venv", "-q", "--python", sys.executable, str(where)]]
    steps.append([uv, "pip", "install", "-q", "--python", str(where / "bin" / "python"), *pins])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=600)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"{' '.join(pins)} cannot be installed here (offline?): {last}")
    return where
