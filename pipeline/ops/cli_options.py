"""The options that several `snackloc` commands share (pipeline/cli.py and the command
groups in this room), defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Parameters file.")]
OutputsOpt = Annotated[Path, typer.Option("--outputs", help="Root of the stage outputs.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="MLflow model URI or a .keras file.")]
ClassesOpt = Annotated[
    Path | None,
    typer.Option(
        help="Class list JSON for a .keras model (default: outputs/validate/classes.json)."
    ),
]
# A detector's limits (`snackloc predict`, `snackloc serve`; pipeline/model/answers.py)
ScoreThresholdOpt = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        help="A detector's: list detections scoring at least this (default: the model's "
        "own, from model.detect). Lower than the model's own lists nothing more: the "
        "non-maximum suppression inside the model has dropped those boxes.",
        show_default=False,
    ),
]
MaxDetectionsOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="A detector's: list at most this many detections per image, best first "
        "(default, and the most it can list: the model's own, from model.detect).",
        show_default=False,
    ),
]
