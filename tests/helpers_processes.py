"""Running a command as a user's shell would, signalling it, and checking that nothing it
started is left behind. Import as ``from helpers_processes import ...``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from pathlib import Path

import psutil


class Command:
    """A command started in a session of its own (like a shell job), its output collected
    line by line in the background."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 300) -> None:
        """Until a line holds ``text``; fail if the command exits first."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None, self.output
            assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n{self.output}"
            time.sleep(0.2)

    def descendants(self) -> list[psutil.Process]:
        """Every process the command started, and theirs."""
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop_and_check(self, signum: int, timeout: float = 60, grace: float = 30) -> list[str]:
        """Send ``signum`` to the command alone (not its group: as `kill PID` does), wait
        for it, and return what of the processes it had started is still alive ``grace``
        seconds after it exited."""
        started = self.descendants()
        os.kill(self.process.pid, signum)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as late:  # fail with what it printed: where it hung
            message = f"still running {timeout} s after the signal:\n{self.output}"
            raise AssertionError(message) from late
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, 9)
        _, alive = psutil.wait_procs(started, timeout=grace)
        left = [_describe(process) for process in alive if _running(process)]
        for process in alive:  # leave nothing behind for the next test either
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        return left


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())[:120]}"
    except psutil.NoSuchProcess:
        return f"{process.pid} (gone)"


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
