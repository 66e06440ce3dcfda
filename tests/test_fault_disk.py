"""A write that the file system refuses: a clear error naming the file, earlier outputs intact.

Tests run as root here, so a read-only folder does not stop a write; a file-size limit
(RLIMIT_FSIZE, what a full disk or a quota looks like to the process: the write fails
with EFBIG) does, on a real `snackloc validate` in a subprocess.
"""

from __future__ import annotations

import hashlib
import resource
import signal
import subprocess

from helpers_project import make_project, sh


def _digests(folder):
    return {
        path.relative_to(folder).as_posix(): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_refused_write_fails_clearly_and_keeps_the_earlier_outputs(tmp_path, prefect_server):
    env = make_project(tmp_path, prefect_server)
    sh("snackloc", "validate", "-q", cwd=tmp_path, env=env)
    before = _digests(tmp_path / "outputs" / "validate")
    assert any(name.endswith(".csv") for name in before)

    done = subprocess.run(
        ["snackloc", "validate", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limit_file_size,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "cannot write" in errors[0] and "outputs/validate" in errors[0], errors[0]
    assert "Traceback" not in output
    assert _digests(tmp_path / "outputs" / "validate") == before
