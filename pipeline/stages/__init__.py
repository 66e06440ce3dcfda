"""The six DVC stages, one module each, and the one list of them.

Every stage is a plain function ``run(params, outputs, progress=True) -> dict`` in its
module here (``pipeline/stages/<name>.py``): it reads the files earlier stages wrote and
writes its own (the DVC outs), nothing else passes between stages. ``STAGES`` names them in
pipeline order; the CLI makes a command of each, the Prefect flows a task of each, dvc.yaml
has a stage of each (``tests/test_stage_deps.py`` holds them equal), and ``run_stage`` is
what all of them call. The stage modules are imported by name, only when one runs, so that
`snackloc --help` stays fast and a stage's code is exactly what its module imports.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from pipeline.core import env
from pipeline.core.errors import UserError

if TYPE_CHECKING:  # the CLI imports this module for `snackloc --help`: keep it light
    from pipeline.core.config import Params
    from pipeline.core.paths import Outputs

# Full disk, quota or file-size limit, read-only or forbidden folder: the user's to fix.
DISK_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)


@dataclass(frozen=True)
class Stage:
    """One stage: its name (the DVC stage, the command, the Prefect task) and what it does."""

    name: str
    summary: str

    @property
    def module(self) -> str:
        """The module holding the stage's ``run`` function."""
        return f"{__name__}.{self.name}"


STAGES: tuple[Stage, ...] = (
    Stage("validate", "Check annotations and images; quarantine bad rows with reasons."),
    Stage("dedup", "Remove duplicate rows and images (also across splits)."),
    Stage("train", "Train the model (two heads, or the detector); log the run to MLflow."),
    Stage("evaluate", "Score the model on the held-out split; write metrics and plots."),
    Stage("register", "Register the model in the MLflow Model Registry as @challenger."),
    Stage("review", "Rank annotation rows by how likely they are wrong (cleanlab)."),
)
NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


def get(name: str) -> Stage:
    """The stage called ``name``; a UserError naming the stages if there is none."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise UserError(f"unknown stage {name!r}", hint=f"one of {', '.join(NAMES)}")


def run_stage(name: str, params: Params, outputs: Outputs, progress: bool = True) -> dict[str, Any]:
    """Run stage ``name``; return its summary (a ``markdown`` key when it writes its own).

    A write the file system refuses (full disk, quota, read-only folder) becomes a UserError
    naming the file: the earlier outputs are intact, as every output is written to a
    temporary name and renamed over the old one.
    """
    with env.quiet_native_startup():  # the stage's modules may load TensorFlow
        run = import_module(get(name).module).run
    try:
        return run(params, outputs, progress=progress)
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise
        raise UserError(f"cannot write {exc.filename or 'an output'}: {exc.strerror}") from None
