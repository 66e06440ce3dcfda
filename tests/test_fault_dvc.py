"""Fault injection: `dvc repro` killed (SIGKILL of dvc and its stage) during the train stage.

A real `dvc repro` in a tiny temporary git + DVC project. The rerun keeps the stages that
had finished, resumes the interrupted one from its backup, and leaves a dvc.lock whose every
stage and output hash matches the files on disk (`dvc status` clean).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from helpers_project import kill_when, make_project, sh, tiny_params

from pipeline.stages import NAMES as STAGES


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def kill_repro_during_train(root: Path, env: dict) -> str:
    """Start `dvc repro`; SIGKILL its process group once train has finished one epoch."""
    history = root / "outputs" / "train" / "backup" / "history.jsonl"
    log_path = root / "killed-repro.log"
    kill_when(
        ["dvc", "repro"],
        root,
        env,
        log_path,
        ready=lambda: history.is_file() and bool(history.read_text().strip()),
        waiting_for="train never finished an epoch",
    )
    return log_path.read_text()


@pytest.mark.slow  # 4-15 min on a busy 2-core machine: the tiny pipeline runs twice
def test_dvc_repro_killed_in_train_reruns_to_a_consistent_lock(tmp_path, prefect_server):
    params = tiny_params()
    params["train"]["epochs"] = 4  # long enough to be killed after its first epoch
    env = make_project(tmp_path, prefect_server, params)

    killed = kill_repro_during_train(tmp_path, env)
    assert "Running stage 'train'" in killed and "Running stage 'evaluate'" not in killed
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"validate", "dedup"}  # finished stages only
    assert not (tmp_path / "outputs" / "train" / "model.keras").exists()

    rerun = sh("dvc", "repro", cwd=tmp_path, env=env)
    log = rerun.stdout + rerun.stderr
    for stage in ("validate", "dedup"):
        assert f"Running stage '{stage}'" not in log  # kept, not redone
    for stage in ("train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in log
    assert "resuming an interrupted training" in log  # train went on from its backup

    status = sh("dvc", "status", cwd=tmp_path, env=env).stdout
    assert "Data and pipelines are up to date." in status
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert list(lock["stages"]) == list(STAGES)
    for stage, entry in lock["stages"].items():
        for out in entry.get("outs", []):
            path = tmp_path / out["path"]
            assert path.exists(), (stage, out["path"])
            if path.is_file():
                assert md5(path) == out["md5"], (stage, out["path"])
            else:
                assert out["md5"].endswith(".dir"), (stage, out["path"])
