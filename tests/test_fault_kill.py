"""Fault injection: `snackloc train` killed with SIGKILL in the middle of an epoch.

A real subprocess in a tiny real project (git, DVC, Prefect server, MLflow sqlite store).
The rerun resumes after the last finished epoch and ends where an uninterrupted run ends;
the model file is only ever a finished one (written, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_env import BIN
from helpers_project import kill_when, make_project, sh, tiny_params

EPOCHS = 6
KILL_IN_EPOCH = 3  # 1-based: killed as soon as this epoch has begun


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server):
    """A tiny project after validate and dedup, with deterministic, longer epochs."""
    root = tmp_path_factory.mktemp("killed")
    params = tiny_params()
    # Batches of 2: ~20 steps an epoch, so that an epoch lasts long enough to be killed in.
    params["train"].update({"epochs": EPOCHS, "batch_size": 2, "deterministic": True})
    env = make_project(root, prefect_server, params)
    env["PYTHONUNBUFFERED"] = "1"  # Keras' "Epoch i/n" lines reach the log at once
    for stage in ("validate", "dedup"):
        sh("snackloc", stage, "--quiet", cwd=root, env=env)
    return root, env


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def epochs_begun(log: str) -> list[int]:
    return [int(n) for n in re.findall(rf"^Epoch (\d+)/{EPOCHS}$", log, flags=re.M)]


def train_killed_in_epoch(root: Path, env: dict, epoch: int) -> str:
    """Start `snackloc train`, SIGKILL it (and its children) once ``epoch`` has begun."""
    log_path = root / "killed-train.log"
    # "Epoch N/n" is printed when epoch N begins, after epoch N-1 is backed up.
    process = kill_when(
        [str(BIN / "snackloc"), "train", "--quiet"],
        root,
        env,
        log_path,
        ready=lambda: epoch in epochs_begun(log_path.read_text()),
        waiting_for="training never reached the epoch",
        poll=0.02,
    )
    assert process.returncode == -signal.SIGKILL
    return log_path.read_text()


@pytest.mark.slow  # 4-8 min on a busy 2-core machine: three trainings in subprocesses
def test_training_killed_mid_epoch_resumes_and_ends_like_an_uninterrupted_run(project):
    root, env = project
    train_dir = root / "outputs" / "train"
    backup = train_dir / "backup"

    # The reference: one uninterrupted run.
    sh("snackloc", "train", "--quiet", cwd=root, env=env)
    reference = pd.read_csv(train_dir / "history.csv")
    reference_metrics = json.loads((train_dir / "metrics.json").read_text())
    reference_model = digest(train_dir / "model.keras")
    assert list(reference.epoch) == list(range(1, EPOCHS + 1)) and not backup.exists()

    # The same training again, killed as soon as epoch 3 has begun.
    killed_log = train_killed_in_epoch(root, env, KILL_IN_EPOCH)
    finished = len((backup / "history.jsonl").read_text().splitlines())
    assert KILL_IN_EPOCH - 1 <= finished < EPOCHS, killed_log[-2000:]
    assert (backup / "phase-0" / "latest.weights.h5").is_file()
    # The model on disk is still the previous, finished one: never a partial file.
    assert digest(train_dir / "model.keras") == reference_model
    assert not list(train_dir.glob(".model.*")), "a temporary model file was left behind"

    # The rerun resumes after the last finished epoch (the dead process's lock is gone).
    rerun = sh("snackloc", "train", "--quiet", cwd=root, env=env)
    log = rerun.stdout + rerun.stderr
    assert "resuming an interrupted training" in log
    assert f"resuming after epoch {finished} " in log
    assert epochs_begun(log) == list(range(finished + 1, EPOCHS + 1))
    assert not backup.exists()

    # And ends where the uninterrupted run ended (deterministic ops, per-epoch seeds).
    resumed = pd.read_csv(train_dir / "history.csv")
    assert list(resumed.epoch) == list(reference.epoch)
    for column in ("loss", "val_loss", "val_class_accuracy", "val_box_mean_iou"):
        np.testing.assert_allclose(resumed[column], reference[column], rtol=1e-3, atol=1e-4)
    metrics = json.loads((train_dir / "metrics.json").read_text())
    assert metrics["epochs"] == reference_metrics["epochs"] == EPOCHS
    assert metrics["val_loss"] == pytest.approx(reference_metrics["val_loss"], rel=1e-3)
    assert digest(train_dir / "model.keras") != reference_model  # a new, complete file
