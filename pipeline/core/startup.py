"""What a process can only choose when it starts: its memory allocator and its hash seed.

TensorFlow allocates and frees large buffers on every training step. glibc's malloc hands
them back to the kernel and faults them in again at the next step (mmap above its mmap
threshold, trimming at the top of the heap): on a virtual machine, where a fresh page is
expensive, ``fit()`` then spends as much CPU time in the kernel as in user space. tcmalloc
keeps freed memory for reuse (``bench/train_speed.py`` measures both).

Python salts the hash of every string per process, so anything that iterates a set of
strings (Great Expectations lists the columns of its Data Docs tables that way) changes
order from run to run. A stage's outputs must be the same bytes for the same inputs, so
the stages run with a fixed seed (PYTHONHASHSEED=0).

``snackloc`` calls ``restart`` first thing: the command is run again, once, with
``LD_PRELOAD`` naming tcmalloc where the host has it (``make install`` installs Debian's
``libtcmalloc-minimal4`` when it can) and the hash seed for the stages; every stage run by
``dvc repro``, ``snackloc pipeline`` or the retraining flow goes through it. Without
tcmalloc, ``tune_glibc`` keeps glibc's freed memory instead of returning it; TensorFlow's
generator dataset resets glibc's trim threshold when it first runs, so training tunes it
again once the data pipeline exists (``pipeline.model.callbacks.KeepFreedMemory``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Collection
from pathlib import Path

TCMALLOC = "tcmalloc_minimal"
RESTARTED = "SNACKLOC_RESTARTED"  # set in a restarted process: never restart twice
CHOICE = "SNACKLOC_ALLOCATOR"  # "glibc": keep glibc's malloc (to measure it, or on a bad host)
# mallopt parameters (malloc.h): keep freed memory instead of unmapping or trimming it.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit hosts
TRIM_THRESHOLD = 1024 * 1024 * 1024

_glibc_tuned = False


def tcmalloc_library() -> str | None:
    """tcmalloc's file name for LD_PRELOAD, or None where the host has none (or
    SNACKLOC_ALLOCATOR=glibc asks for glibc)."""
    if not sys.platform.startswith("linux") or os.environ.get(CHOICE) == "glibc":
        return None
    return ctypes.util.find_library(TCMALLOC)


def allocator() -> str:
    """The allocator this process runs on: "tcmalloc", "glibc (tuned)" or "glibc"."""
    maps = Path("/proc/self/maps")
    if maps.exists() and "libtcmalloc" in maps.read_text():
        return "tcmalloc"
    return "glibc (tuned)" if _glibc_tuned else "glibc"


def wanted_settings(fixed_hash_seed: bool) -> dict[str, str]:
    """The environment this process should have started with, where it differs."""
    wanted = {}
    library = tcmalloc_library()
    if library is not None and allocator() != "tcmalloc":
        preload = [p for p in os.environ.get("LD_PRELOAD", "").split() if p]
        wanted["LD_PRELOAD"] = " ".join([library, *preload])
    if fixed_hash_seed and os.environ.get("PYTHONHASHSEED") != "0":
        wanted["PYTHONHASHSEED"] = "0"
    return wanted


def restart(command: str | None, reproducible: Collection[str]) -> None:
    """Run this process again with the settings it lacks (tcmalloc; a fixed hash seed for
    the commands in ``reproducible``), at most once; else tune glibc where it is in use.
    Call first thing in the entry point, before heavy imports or threads."""
    wanted = wanted_settings(command in reproducible)
    if not wanted or os.environ.get(RESTARTED):
        tune_glibc()
        return
    os.environ.update(wanted)
    os.environ[RESTARTED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def tune_glibc() -> bool:
    """Keep glibc's freed memory for reuse instead of returning it to the kernel at every
    step (larger mmap and trim thresholds). True when glibc took the settings."""
    global _glibc_tuned
    if not sys.platform.startswith("linux") or allocator() == "tcmalloc":
        return False
    try:
        libc = ctypes.CDLL(None)
        _glibc_tuned = bool(
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):  # not glibc (musl): leave it as it is
        _glibc_tuned = False
    return _glibc_tuned
