"""The settings a snackloc process restarts with (pipeline/core/startup.py), in real
subprocesses: tcmalloc where the host has it, a fixed hash seed for the stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.core import startup

PROBE = (
    "import json, os; from pipeline.core import startup; "
    "startup.restart({command!r}, {{'validate'}}); "
    "print(json.dumps([startup.allocator(), os.environ.get('PYTHONHASHSEED'), hash('snack')]))"
)


def probe(command: str, **env: str) -> list:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONHASHSEED", "LD_PRELOAD")}
    base = {k: v for k, v in base.items() if not k.startswith("SNACKLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(command=command)],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(startup.tcmalloc_library() is None, reason="no tcmalloc on this host")
def test_a_process_restarts_on_tcmalloc_once():
    allocator, _, _ = probe("train")
    assert allocator == "tcmalloc"


def test_glibc_on_request_is_tuned_instead():
    allocator, seed, _ = probe("train", SNACKLOC_ALLOCATOR="glibc")
    assert allocator == "glibc (tuned)"
    assert seed is None  # only the stages that must be reproducible fix the seed


def test_a_stage_hashes_strings_the_same_in_every_process():
    first, second = probe("validate"), probe("validate", SNACKLOC_ALLOCATOR="glibc")
    assert first[1] == second[1] == "0"
    assert first[2] == second[2]  # set order of strings, as Great Expectations iterates them
