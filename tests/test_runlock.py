"""A second run in the same workspace refuses clearly instead of corrupting outputs."""

import subprocess
import sys
import textwrap

import pytest

from pipeline.ops.runlock import RunLocked, run_lock


def test_second_run_refuses_while_the_first_holds_the_lock(tmp_path):
    lock = tmp_path / "run.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from pipeline.ops.runlock import run_lock
            with run_lock("first", Path({str(lock)!r})):
                print("held", flush=True)
                sys.stdin.readline()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(RunLocked, match="another snackloc run is in progress"),
            run_lock("second", lock),
        ):
            pass
    finally:
        holder.communicate("\n", timeout=30)
    with run_lock("third", lock):  # released when the first run ended
        pass
