"""Output files get the permissions of any new file (0666 / 0777 less the umask), so a
teammate reads what a command wrote: the CSVs of an import, the stages' JSON and markdown,
the drawn predictions. The writers create private temporary names first (mkstemp: 0600)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pandas as pd
from helpers_env import BIN
from helpers_formats import write_voc

from pipeline.core import files


def modes(root: Path) -> dict[str, int]:
    """Permission bits of every file and folder under ``root`` (root included)."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[path.relative_to(root).as_posix()] = stat.S_IMODE(path.stat().st_mode)
    return found


def test_safe_writes_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        files.write_json(tmp_path / "a.json", {"x": 1})
        files.write_csv(tmp_path / "b.csv", pd.DataFrame({"x": [1]}))
        files.write_text(tmp_path / "c.md", "text")
        with files.atomic_path(tmp_path / "d.bin") as tmp:
            tmp.write_bytes(b"\0")
        with files.replaced_dir(tmp_path / "folder") as tmp:
            (tmp / "inside.txt").write_text("x")
    finally:
        os.umask(old)
    found = modes(tmp_path)
    for name in ("a.json", "b.csv", "c.md", "d.bin", "folder/inside.txt"):
        assert found[name] == 0o640, (name, oct(found[name]))
    assert found["folder"] == 0o750


def test_imported_dataset_is_readable_by_others_under_umask_022(tmp_path):
    src = write_voc(tmp_path / "voc")
    out = tmp_path / "data"
    done = subprocess.run(
        [str(BIN / "snackloc"), "data", "import", str(src), "--format", "voc", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert done.returncode == 0, done.stderr
    found = modes(out)
    wrong = {name: oct(mode) for name, mode in found.items() if mode not in (0o644, 0o755)}
    assert not wrong, wrong
    assert found["annotations-train.csv"] == 0o644
    assert found["import-report.json"] == 0o644
