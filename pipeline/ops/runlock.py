"""One pipeline run at a time per workspace.

Two runs writing the same outputs/ would interleave files and corrupt dvc.lock. Every stage
command and `snackloc pipeline` hold ``.snackloc/run.lock`` while they work; a second one
refuses at once with a clear message instead of waiting. (Two `dvc repro` are already
refused by DVC's own lock; this also covers `snackloc pipeline` and single stages.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline.core.errors import UserError

LOCK_PATH = Path(".snackloc") / "run.lock"


class RunLocked(UserError):
    """Another snackloc run holds the workspace lock."""


@contextlib.contextmanager
def run_lock(what: str, path: Path = LOCK_PATH) -> Iterator[None]:
    """Hold the workspace lock for the duration of ``what``, or raise RunLocked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunLocked(
            f"another snackloc run is in progress in this workspace ({what} refused)",
            hint=f"wait for it to finish; the lock is {path} (held by a live process)",
        ) from None
    try:
        yield
    finally:
        lock.release()
