"""`snackloc review export` and `snackloc review apply`: the fix round trip of the review.

``snackloc review`` itself runs the stage (pipeline/cli.py makes it this group's callback).
Export writes the top suspects as Label Studio tasks; a person corrects them there and
exports the project as JSON; apply writes those corrections into the dataset's CSVs, a new
data version that ``dvc repro`` (and the retraining flow) pick up.
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
    out: Annotated[Path, typer.Option(help="Folder for tasks.json and label_config.xml.")],
    format_: Annotated[str, typer.Option("--format", "-f", help="label-studio")] = "label-studio",
    top: Annotated[int, typer.Option(min=1, help="The most suspect rows.")] = 50,
    url_prefix: Annotated[
        str, typer.Option(help="Put before <split>/<folder>/<id>.jpg in each image URL.")
    ] = "/data/local-files/?d=",
    params: ParamsOpt = Path("params.yaml"),
    outputs: OutputsOpt = OUTPUTS_ROOT,
) -> None:
    """The top suspects as Label Studio tasks: their rows to correct, the model's suggestion
    as a pre-annotation, the row ids kept (import tasks.json; config: label_config.xml)."""
    from pipeline.stages.review import export_label_studio

    typer.echo(export_label_studio(params, outputs, out, top, format_, url_prefix))


@review_app.command("apply")
def review_apply(
    export: Annotated[Path, typer.Argument(help="Label Studio's JSON export of the tasks.")],
    data: Annotated[Path, typer.Option(help="The dataset that was reviewed.")] = Path("data"),
) -> None:
    """Write the corrected rows of a Label Studio export into the dataset's CSVs."""
    from pipeline.data.formats.labelstudio import apply_export

    summary = apply_export(data, export)
    typer.echo(
        f"{summary['applied']} images corrected in {data} "
        f"({summary['rows_before']} rows replaced by {summary['rows_after']})"
    )
    for line in summary["skipped"]:
        typer.echo(f"skipped {line}")
    if summary["applied"]:
        typer.echo("then: dvc commit data.dvc (or dvc add data) and dvc repro")
