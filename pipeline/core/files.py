"""Writing files so that a crash never leaves half of one: every output is written to a
temporary name beside its target and renamed over it, a folder swapped in whole.

Stages talk through these files (the DVC outs), so a reader sees either the previous
version or the new one, never a mix. Every file and folder gets the permissions any new file
would (0666 / 0777 less the umask), though the temporary names it is written under are
created private.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.errors import UserError


def umask() -> int:
    """The process's umask (read, not changed: /proc on Linux; else set and set back)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it over ``target`` on success.

    A crash leaves the previous ``target`` intact and never a half-written file in its place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix: some writers (Keras, matplotlib) pick the format from it.
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.chmod(0o666 & ~umask())  # mkstemp makes it 0600: a teammate could not read it
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        if exc.filename is None:  # a failed write() names no file: name the output
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_json(target: Path, payload: Any) -> None:
    """Write JSON atomically, pretty-printed and with a trailing newline."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file written by a stage; a missing one is a clear error."""
    if not Path(path).is_file():
        raise UserError(
            f"{path}: not found",
            hint="run the stage that writes it first (`dvc repro` runs every stage in order)",
        )
    return json.loads(Path(path).read_text())


def write_csv(target: Path, frame: pd.DataFrame) -> None:
    """Write a CSV atomically, without the pandas index."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)


def write_text(target: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def check_replaceable(target: Path, overwrite: bool, source: Path | None = None) -> None:
    """Refuse a ``target`` that is not a folder, or a non-empty one unless ``overwrite`` (it
    may hold a real dataset), or one that is or holds ``source`` (sources are never changed)."""
    target = Path(target)
    if source is not None:
        resolved, origin = target.resolve(), Path(source).resolve()
        if resolved == origin or resolved in origin.parents:
            raise UserError(
                f"{target}: would replace the source {source}",
                hint="write to another folder; sources are never modified",
            )
    if target.exists() and not target.is_dir():
        raise UserError(f"{target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UserError(f"{target}: folder is not empty", hint="pass --force to replace it")


@contextlib.contextmanager
def replaced_dir(target: Path) -> Iterator[Path]:
    """Yield a new empty folder beside ``target``; once the block succeeds it replaces
    ``target`` whole (the old folder is removed only after the swap).

    If the block fails, ``target`` is left as it was and the new folder is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        tmp.chmod(0o777 & ~umask())  # mkdtemp makes it 0700
        yield tmp
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        if exc.filename is None:  # a failed write() names no file: name the output
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
