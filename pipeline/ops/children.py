"""Child processes and the signals that stop them: the one place that starts, signals and
reaps what a snackloc command runs (servers, the MLflow UI, training workers).

- ``stop_on_sigterm`` makes SIGTERM stop a command the way Ctrl+C does: it raises
  ``Terminated`` (a KeyboardInterrupt), so every ``finally``, context manager and atexit
  handler runs: a run lock is released, Prefect stops its temporary server, and children
  are stopped as below. ``snackloc`` (pipeline/cli.py) installs it for every command. A
  library that catches every exception can swallow that one: ``raise_if_terminated``
  raises it again where stopping is safe. A SIGTERM that arrives inside an import is
  raised when the import is over (raised inside, it can leave the import lock held).
- ``defer_sigterm`` is for a command with an event loop of its own (``snackloc schedule``):
  SIGTERM only sets an event that the loop checks, so a signal that arrives at any instant
  is acted on. An exception raised from a signal handler lands in whatever code runs then,
  and Python swallows it inside a weakref callback or ``__del__``: the signal would be lost.
- ``spawn`` starts a child in a process group of its own (its own children included, such
  as the uvicorn workers of `mlflow ui`), which gets SIGTERM if snackloc dies without
  cleaning up (``kill -9``): the kernel's parent-death signal.
- ``stop`` ends those groups: SIGTERM to the whole group, a bounded wait, then SIGKILL to
  what is left, so that no worker outlives its parent.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

STOP_TIMEOUT = 20.0  # seconds between SIGTERM and SIGKILL

# Loaded in the parent: the child runs only the call, between fork and exec.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl+C would raise KeyboardInterrupt (``stop_on_sigterm``)."""


_terminated = threading.Event()  # set for good by the first SIGTERM


RETRY_AFTER = 0.05  # seconds: a SIGTERM that arrived inside an import is sent again


def _inside_import(frame: FrameType | None) -> bool:
    """Whether ``frame`` or a caller of it is Python's import machinery."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _send_again_later(signum: int) -> None:
    time.sleep(RETRY_AFTER)
    os.kill(os.getpid(), signum)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    _terminated.set()
    if _inside_import(frame):
        # Raised here, it can leave the interpreter's import lock held for good: the next
        # import in any other thread (Prefect's event loop) hangs, and this thread with it,
        # waiting on that loop. Raise once the import is over. A bare thread: it takes no
        # lock that the interrupted code could hold.
        _thread.start_new_thread(_send_again_later, (signum,))
        return
    raise Terminated(f"signal {signum}")


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises ``Terminated`` in the main thread, as Ctrl+C raises
    KeyboardInterrupt (call from the main thread). Prefect's flow engine installs its own
    handler for the length of a flow run: call again inside the flow to keep this one."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def raise_if_terminated() -> None:
    """Raise ``Terminated`` again if SIGTERM came earlier: code that catches every
    exception and keeps it for a result nobody reads (Prefect runs its fire-and-forget
    calls so) swallows the first one. Call where stopping is safe: `snackloc pipeline`
    calls it before every stage and after the flow."""
    if _terminated.is_set():
        raise Terminated("SIGTERM received earlier")


def defer_sigterm() -> threading.Event:
    """From now on SIGTERM only sets the returned event (call from the main thread); the
    caller's loop checks it and stops in its own time."""
    received = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: received.set())
    return received


def _own_group_dying_with_parent() -> None:
    """In the child, before exec: a process group of its own, and SIGTERM when the thread
    that started it dies (snackloc's main thread: ``spawn`` is called from there)."""
    os.setsid()
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    command: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
) -> subprocess.Popen:
    """Start ``command`` in a process group of its own that dies with this process.

    Call it from the main thread before other threads exist (the parent-death signal
    follows the thread that started the child, and ``preexec_fn`` is unsafe once threads
    run). Standard input is closed; output goes where ``stdout``/``stderr`` say.
    """
    return subprocess.Popen(
        list(command),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        preexec_fn=_own_group_dying_with_parent,
    )


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to the process group ``spawn`` gave ``process`` (gone: nothing)."""
    # The group id is the leader's pid (setsid); an error means the group is gone already.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def stop(processes: Sequence[subprocess.Popen], timeout: float = STOP_TIMEOUT) -> list[int]:
    """SIGTERM every process group, wait up to ``timeout`` in all, SIGKILL what is left.

    Returns each process's exit status (negative: the signal that ended it).
    """
    for process in processes:
        signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            signal_group(process, signal.SIGKILL)
            codes.append(process.wait())
        # workers that outlived their parent (it exited on SIGTERM without waiting for them)
        signal_group(process, signal.SIGKILL)
    return codes


@contextlib.contextmanager
def stopped_at_exit(processes: list[subprocess.Popen]) -> Iterator[list[subprocess.Popen]]:
    """Yield ``processes`` (add to it while inside); on leaving, however it is left (an
    error, Ctrl+C, SIGTERM with ``stop_on_sigterm``), stop every group still there."""
    try:
        yield processes
    finally:
        stop(processes)
