"""`snackloc review export` and `snackloc review apply`: the fix round trip of the review.

``snackloc review`` itself runs the stage (pipeline/cli.py makes it this group's callback).
Export writes the top suspects as Label Studio tasks (or CVAT for images 1.1 XML); a person
corrects them there and exports the project (JSON, or CVAT's XML); apply writes those
corrections into the dataset's CSVs, a new data version that ``dvc repro`` (and the
retraining flow) pick up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.paths import OUTPUTS_ROOT
from pipeline.ops.cli_options import OutputsOpt, ParamsOpt

review_app = typer.Typer()


@review_app.command("export")
def review_export(
    out: Annotated[Path, typer.Option(help="Folder to write the export into.")],
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="label-studio (tasks.json, label_config.xml) | cvat (CVAT for images 1.1: "
            "annotations.xml, labels.json, images/).",
        ),
    ] = "label-studio",
    top: Annotated[int, typer.Option(min=1, help="The most suspect rows.")] = 50,
    url_prefix: Annotated[
        str,
        typer.Option(help="label-studio: put before <split>/<folder>/<id>.jpg in each image URL."),
    ] = "/data/local-files/?d=",
    params: ParamsOpt = Path("params.yaml"),
    outputs: OutputsOpt = OUTPUTS_ROOT,
) -> None:
    """Write the top suspects as tasks for a labeling tool (Label Studio or CVAT).

    Each task holds the image, its rows to correct and the model's suggestion (a Label
    Studio prediction, or a CVAT box whose review attribute is "suggestion"); the row ids
    are kept for `review apply`. See docs/review.md.
    """
    from pipeline.ops.review_export import export_review

    typer.echo(export_review(params, outputs, out, top, format_, url_prefix))


@review_app.command("apply")
def review_apply(
    export: Annotated[
        Path, typer.Argument(help="Label Studio's JSON export, or CVAT's annotations.xml.")
    ],
    data: Annotated[Path, typer.Option(help="The dataset that was reviewed.")] = Path("data"),
    rows: Annotated[
        Path | None,
        typer.Option(help="CVAT: the rows.json `review export` wrote (default: beside EXPORT)."),
    ] = None,
) -> None:
    """Write the corrected rows of a Label Studio or CVAT export into the dataset's CSVs."""
    from pipeline.data.formats.cvat import apply_cvat, sniff_cvat
    from pipeline.data.formats.labelstudio import apply_export

    if export.suffix.lower() == ".xml" or sniff_cvat(export):
        summary = apply_cvat(data, export, rows or export.parent / "rows.json")
    else:
        summary = apply_export(data, export)
    typer.echo(
        f"{summary['applied']} images corrected in {data} "
        f"({summary['rows_before']} rows replaced by {summary['rows_after']})"
    )
    for line in summary["skipped"]:
        typer.echo(f"skipped {line}")
    if summary["applied"]:
        typer.echo("then: dvc commit data.dvc (or dvc add data) and dvc repro")
