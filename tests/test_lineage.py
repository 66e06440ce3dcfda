"""Lineage of a run and a registered version: the git commit, and where the UI shows it."""

from __future__ import annotations

import subprocess

from pipeline.integrations import tracking


def git(*args: str, cwd) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def test_files_the_pipeline_rewrites_do_not_make_the_commit_dirty(tmp_path, monkeypatch):
    """A fresh clone's `make run` rewrites dvc.lock (and `make data` may touch data.dvc):
    the first version it registers still names the clean commit."""
    (tmp_path / "pipeline").mkdir()
    for name in ("dvc.lock", "data.dvc", "pipeline/code.py"):
        (tmp_path / name).write_text("one\n")
    git("init", "-q", cwd=tmp_path)
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "add", "-A", cwd=tmp_path)
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "x", cwd=tmp_path)
    monkeypatch.chdir(tmp_path / "pipeline")  # from a subfolder too
    clean = tracking.git_commit()
    assert len(clean) == 40

    (tmp_path / "dvc.lock").write_text("rewritten by dvc repro\n")
    (tmp_path / "data.dvc").write_text("rewritten by dvc commit\n")
    assert tracking.git_commit() == clean

    (tmp_path / "pipeline/code.py").write_text("changed code\n")
    assert tracking.git_commit() == f"{clean}-dirty"
