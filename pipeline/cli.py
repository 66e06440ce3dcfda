"""The `snackloc` command line.

Heavy libraries (TensorFlow, MLflow, Prefect) are imported inside the commands that need
them, so `snackloc --help` answers at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline import env
from pipeline.errors import UserError

app = typer.Typer(
    name="snackloc",
    help="Train, evaluate and register a class + bounding-box model on snacks-format data.\n\n"
    "The usual way to run everything is `dvc repro`; each stage is also a command here.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Create and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Parameters file.")]
OutputsOpt = Annotated[Path, typer.Option("--outputs", help="Root of the stage outputs.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def fail(message: str, code: int = 2) -> None:
    """Print a user-facing error (no traceback) and exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _run_stage(stage: str, params: Path, outputs: Path, quiet: bool) -> None:
    from pipeline.config import load_params

    load_params(params)  # fail fast on bad params, before Prefect starts
    from flows.pipeline import stage_flow

    state = stage_flow(stage, str(params), str(outputs), not quiet, return_state=True)
    if not state.is_completed():
        fail(f"stage {stage} failed: {state.message}")


def _stage_command(stage: str, summary: str) -> None:
    def command(
        params: ParamsOpt = Path("params.yaml"),
        outputs: OutputsOpt = Path("outputs"),
        quiet: QuietOpt = False,
    ) -> None:
        _run_stage(stage, params, outputs, quiet)

    command.__doc__ = summary
    app.command(name=stage)(command)


_stage_command("validate", "Check annotations and images; quarantine bad rows with reasons.")
_stage_command("dedup", "Remove duplicate rows and images (also across splits).")
_stage_command("train", "Train the two-head model; log the run to MLflow.")
_stage_command("evaluate", "Score the model on the held-out split; write metrics and plots.")
_stage_command("register", "Register the model in the MLflow Model Registry as @challenger.")


@app.command()
def pipeline(
    params: ParamsOpt = Path("params.yaml"),
    outputs: OutputsOpt = Path("outputs"),
    quiet: QuietOpt = False,
) -> None:
    """Run every stage in one Prefect flow run (no DVC caching; `dvc repro` is cached)."""
    from pipeline.config import load_params

    load_params(params)
    from flows.pipeline import pipeline_flow

    state = pipeline_flow(str(params), str(outputs), not quiet, return_state=True)
    if not state.is_completed():
        fail(f"pipeline failed: {state.message}")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write the dataset into.")] = Path("data"),
    params: ParamsOpt = Path("params.yaml"),
    force: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate the synthetic snacks dataset (deterministic from synth.seed)."""
    from pipeline import synth
    from pipeline.config import load_params

    settings = load_params(params).synth
    if out.exists() and any(out.iterdir()) and not force:
        fail(f"{out} already exists and is not empty; pass --force to replace it")
    manifest = synth.generate(out, settings, progress=not quiet, overwrite=force)
    counts = manifest["counts"]
    typer.echo(
        f"wrote {out}: "
        + ", ".join(
            f"{split} {c['images']} images / {c['rows']} rows" for split, c in counts.items()
        )
        + f"; {len(manifest['defects'])} injected defects listed in {out / 'defects.json'}"
    )


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    host: Annotated[
        str,
        typer.Option(help="Interface; keep 127.0.0.1 unless an authenticating proxy is in front."),
    ] = "127.0.0.1",
) -> None:
    """Open the MLflow UI over the project's tracking store."""
    from pipeline import tracking

    uri = tracking.tracking_uri()
    typer.echo(f"MLflow UI for {uri} on http://{host}:{port} (Ctrl+C to stop)")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if uri.startswith("sqlite"):
        command += ["--default-artifact-root", Path(tracking.DEFAULT_ARTIFACTS).resolve().as_uri()]
    try:
        raise typer.Exit(subprocess.call(command))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def main() -> None:
    """Console-script entry point: user errors become one red line, not a traceback."""
    env.configure()
    try:
        app()
    except UserError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
