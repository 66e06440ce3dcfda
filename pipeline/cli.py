"""The `snackloc` command line.

Heavy libraries (TensorFlow, MLflow, Prefect) are imported inside the commands that need
them, so `snackloc --help` answers at once.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core import env
from pipeline.core.errors import UserError
from pipeline.core.paths import OUTPUTS_ROOT, Outputs
from pipeline.ops import cli_options as opts
from pipeline.ops.review_commands import review_app
from pipeline.stages import NAMES, STAGES, Stage, run_stage

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


def fail(message: str, code: int = 2) -> None:
    """Print a user-facing error (no traceback) and exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _log_to_stderr() -> None:
    """Show the stages' INFO lines (their summaries) on stderr, once per process."""
    logger = logging.getLogger("pipeline")
    if not any(getattr(h, "snackloc", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s", "%H:%M:%S")
        )
        handler.snackloc = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _stage_command(stage: Stage, group: typer.Typer | None = None) -> None:
    """`snackloc <stage>`, what dvc.yaml runs: the stage function here (or a ``group``'s)."""

    def command(
        ctx: typer.Context,
        params: opts.ParamsOpt = Path("params.yaml"),
        outputs: opts.OutputsOpt = OUTPUTS_ROOT,
        quiet: opts.QuietOpt = False,
    ) -> None:
        from pipeline.core.config import load_params
        from pipeline.ops.runlock import run_lock

        if ctx.invoked_subcommand is not None:
            return
        settings = load_params(params)
        _log_to_stderr()
        with run_lock(stage.name):
            try:
                run_stage(stage.name, settings, Outputs(outputs), progress=not quiet)
            except UserError as exc:
                fail(f"stage {stage.name} failed: {exc}")

    command.__doc__ = stage.summary
    register = group.callback(invoke_without_command=True) if group else app.command(stage.name)
    register(command)


app.add_typer(review_app, name="review")  # `snackloc review` runs the stage
for _stage in STAGES:
    _stage_command(_stage, review_app if _stage.name == "review" else None)


@app.command()
def pipeline(
    params: opts.ParamsOpt = Path("params.yaml"),
    outputs: opts.OutputsOpt = OUTPUTS_ROOT,
    quiet: opts.QuietOpt = False,
) -> None:
    """Run every stage as a task of one Prefect flow run (no DVC caching: all stages run)."""
    from pipeline.core.config import load_params
    from pipeline.ops import children
    from pipeline.ops.runlock import run_lock

    settings = load_params(params)
    from flows.stages import pipeline_flow

    with run_lock("pipeline"):
        state = pipeline_flow(settings, str(outputs), not quiet, return_state=True)
    children.raise_if_terminated()  # a SIGTERM swallowed in the last stage still stops
    if not state.is_completed():
        fail(f"pipeline failed: {state.message}")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write the dataset into.")] = Path("data"),
    params: opts.ParamsOpt = Path("params.yaml"),
    force: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
    quiet: opts.QuietOpt = False,
) -> None:
    """Generate the synthetic snacks dataset (deterministic from synth.seed)."""
    from pipeline.core.config import load_params
    from pipeline.data import synth

    settings = load_params(params).synth
    manifest = synth.generate(out, settings, progress=not quiet, overwrite=force)
    counts = manifest["counts"]
    typer.echo(
        f"wrote {out}: "
        + ", ".join(
            f"{split} {c['images']} images / {c['rows']} rows" for split, c in counts.items()
        )
        + f"; {len(manifest['defects'])} injected defects listed in {out / 'defects.json'}"
    )


@data_app.command("import")
def data_import(
    src: Annotated[
        Path, typer.Argument(help="Annotation file or folder (images beside/under it).")
    ],
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="auto (from the content) | voc | rectlabel | coco | yolo | cvat | labelme | "
            "openimages | createml | sloth | labelbox | sia (Simple Image Annotator) | labelstudio",
        ),
    ] = "auto",
    out: Annotated[Path, typer.Option(help="Folder to write the snacks layout into.")] = Path(
        "data"
    ),
    classes: Annotated[
        str | None,
        typer.Option(
            help="Keep only these classes: a names file (YOLO: line i = class i) or `snacks`."
        ),
    ] = None,
    split_ratios: Annotated[
        str, typer.Option(help="train,val,test shares when the source has no split.")
    ] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Seed of the stratified split.")] = 0,
    resplit: Annotated[
        bool, typer.Option(help="Split anew even if the source has splits.")
    ] = False,
    folder_from: Annotated[
        str, typer.Option(help="Image folder = class of its `largest` or `first` box.")
    ] = "largest",
    outside: Annotated[
        str, typer.Option(help="Boxes crossing the image border: `clip` or `skip` (reported).")
    ] = "clip",
    jpeg_quality: Annotated[int, typer.Option(help="Quality of non-JPEG images converted.")] = 95,
    label_key: Annotated[
        str, typer.Option(help="Sloth: the annotation key that holds the label.")
    ] = "class",
    name_attr: Annotated[
        str,
        typer.Option(help="RectLabel `name-attr` names: `keep` whole, or the `first` part."),
    ] = "keep",
    force: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Import annotations from a labeling tool into the snacks layout (docs/import.md)."""
    from pipeline.data.formats import importing

    options = importing.ImportOptions(
        fmt=format_,
        classes=importing.load_classes(classes),
        ratios=importing.parse_ratios(split_ratios),
        seed=seed,
        resplit=resplit,
        folder_from=folder_from,
        outside=outside,
        jpeg_quality=jpeg_quality,
        label_key=label_key,
        name_attr=name_attr,
    )
    report = importing.import_dataset(src, out, options, overwrite=force)
    typer.echo(importing.import_summary(report))


@data_app.command("export")
def data_export(
    format_: Annotated[str, typer.Option("--format", "-f", help="coco | voc | yolo | createml")],
    out: Annotated[Path, typer.Option(help="Folder to write the export into.")],
    data: Annotated[Path, typer.Option(help="The snacks dataset to export.")] = Path("data"),
    force: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Export the snacks dataset as COCO, Pascal VOC, YOLO or Create ML (images copied beside)."""
    from pipeline.data.formats import exporting

    report = exporting.export_dataset(data, out, format_, overwrite=force)
    typer.echo(exporting.export_summary(report))


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    host: Annotated[
        str,
        typer.Option(help="Interface; keep 127.0.0.1 unless an authenticating proxy is in front."),
    ] = "127.0.0.1",
    params: opts.ParamsOpt = Path("params.yaml"),
) -> None:
    """Open the MLflow UI over the project's tracking store (until Ctrl+C or SIGTERM)."""
    from pipeline.integrations import tracking
    from pipeline.ops import servers

    uri = tracking.tracking_uri()
    experiment = _experiment_name(params)
    if uri.startswith(("http://", "https://", "databricks")):
        # A tracking server serves its own UI; `mlflow ui` only opens stores.
        url = tracking.experiment_url(servers.hide_password(uri), experiment, uri)
        typer.echo(f"MLFLOW_TRACKING_URI is a tracking server: open {url}")
        raise typer.Exit(0)
    server = servers.mlflow_ui(Path.cwd(), host, port, uri)

    def ready(running: list) -> None:
        typer.echo(
            f"MLflow UI for {uri}: the training runs of experiment {experiment!r} are at\n"
            f"  {tracking.experiment_url(server.url, experiment, uri)}\n"
            f"(log {server.log}; Ctrl+C stops it)"
        )

    typer.echo(f"starting the MLflow UI on {server.url} ...")
    raise typer.Exit(servers.serve([server], ready))


def _experiment_name(params: Path) -> str:
    """The MLflow experiment of the params file (the default one if there is no file)."""
    from pipeline.core.config import MlflowParams, load_params

    return load_params(params).mlflow.experiment if params.is_file() else MlflowParams().experiment


@app.command()
def predict(
    images: Annotated[
        list[Path],
        typer.Argument(
            help="Images (any size, mode, format), folders of images, quoted globs "
            '("photos/**/*.jpg") or annotation CSVs (annotations-test.csv).',
            show_default=False,
        ),
    ],
    model: opts.ModelOpt = "models:/snackloc@champion",
    classes: opts.ClassesOpt = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the results to this .csv or .json file."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Also write each image with its box(es) drawn here.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=1024, help="Images per batch.")] = 32,
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to list per image.")] = 3,
    data_root: Annotated[
        Path | None,
        typer.Option(help="Image root of annotation CSVs (default: the CSV's folder, else data/)."),
    ] = None,
    score_threshold: opts.ScoreThresholdOpt = None,
    max_detections: opts.MaxDetectionsOpt = None,
    quiet: opts.QuietOpt = False,
) -> None:
    """Predict class, probability and box of images: one model load, batches of images.

    A detector also lists every object (class, score, box; -o CSV: a row per detection).
    A file that cannot be read is reported and skipped (exit status 1); the rest still run.
    """
    from pipeline.ops.inputs import collect_images

    paths = collect_images(images, data_root)
    missing = [path for path in paths if not path.is_file()]
    if len(missing) == len(paths):  # said at once, before the model and TensorFlow load
        first = missing[0] if missing else images[0]
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        fail(f"{first}: {'no image in this folder' if first.is_dir() else 'no such file'}{more}")
    with env.quiet_native_startup():
        from pipeline.ops import predict as predicting

    options = predicting.Options(
        out, output, json_output, batch_size, top_k, not quiet, score_threshold, max_detections
    )
    raise typer.Exit(predicting.main(paths, model, classes, options))


@app.command()
def serve(
    model: opts.ModelOpt = "models:/snackloc@champion",
    classes: opts.ClassesOpt = None,
    host: Annotated[
        str, typer.Option(help="Interface; no authentication: keep 127.0.0.1 or use a proxy.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_batch: Annotated[
        int, typer.Option(min=1, max=1024, help="Most images per model call.")
    ] = 32,
    max_wait_ms: Annotated[
        float, typer.Option(min=0, help="How long a batch waits for more images (ms).")
    ] = 5.0,
    decode_threads: Annotated[int, typer.Option(min=1, help="Threads decoding images.")] = 2,
    max_body_mb: Annotated[float, typer.Option(min=0.01, help="Largest request body (MB).")] = 20,
    score_threshold: opts.ScoreThresholdOpt = None,
    max_detections: opts.MaxDetectionsOpt = None,
) -> None:
    """Serve the model over HTTP with dynamic batching, until Ctrl+C or SIGTERM.

    POST images (raw JPEG/PNG bytes, multipart, base64 or pixel arrays in JSON) to
    /predict; GET /health, /ready and /metrics. A detector answers every object too
    (?score_threshold= and ?max_detections= per request). See docs/serving.md.
    """
    from pipeline.ops import servers

    try:
        servers.check_port_free(host, port)  # said before the model loads
    except UserError as exc:
        fail(f"{exc.message}; pick another --port")
    if not servers.is_local(host):
        typer.secho(
            f"warning: binding to {host}: the server has no authentication",
            fg=typer.colors.YELLOW,
            err=True,
        )
    with env.quiet_native_startup():
        from pipeline.ops import predict as predicting
        from pipeline.ops import serve as serving

    predictor = predicting.load_predictor(model, classes)
    settings = serving.ServeSettings(
        max_batch, max_wait_ms, decode_threads, max_body_mb,
        score_threshold=score_threshold, max_detections=max_detections,
    )  # fmt: skip
    url = f"http://{servers.client_host(host)}:{port}"

    def ready() -> None:
        typer.echo(
            f"serving {predictor.source} ({len(predictor.classes)} classes, "
            f"{predictor.image_size} px) on {url}\n"
            f"  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' {url}/predict\n"
            "Ctrl+C stops it."
        )

    raise typer.Exit(serving.run(serving.create_app(predictor, settings), host, port, ready))


@app.command()
def export(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="What to write (.tflite, .onnx, .mlpackage).")
    ],
    model: opts.ModelOpt = "models:/snackloc@champion",
    classes: opts.ClassesOpt = None,
    format_: Annotated[
        str, typer.Option("--format", "-f", help="tflite (LiteRT) | onnx | coreml.")
    ] = "tflite",
    quantize: Annotated[
        str, typer.Option("--quantize", help="float32 | float16 (not onnx) | int8 (tflite).")
    ] = "float32",
    check: Annotated[
        list[Path] | None,
        typer.Option(
            help="Images, folders or annotation CSVs to compare the export with Keras on "
            "(default: outputs/dedup/annotations-test.csv).",
        ),
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(help="Largest |Δ| allowed (default: 1e-3 float32, 1e-2 float16, 0.1 int8)."),
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Image root of annotation CSVs (default: data/).")
    ] = None,
) -> None:
    """Export the model (TensorFlow Lite, ONNX or Core ML) and check it against Keras.

    Exit status 1 when an exported output differs by more than the tolerance (Core ML:
    when its inputs or outputs differ from the model's; its numbers need macOS).
    A registered model's export is also logged to its training run (files under exports/,
    the differences as metrics).
    """
    from pipeline.ops.inputs import collect_images

    offers = {"tflite": ("float32", "float16", "int8"), "onnx": ("float32",),
              "coreml": ("float32", "float16")}  # fmt: skip
    if format_ not in offers:
        fail(f"unknown --format {format_!r}; expected tflite, onnx or coreml")
    offered = offers[format_]
    if quantize not in offered:
        fail(f"--quantize {quantize!r} is not offered for {format_}: {', '.join(offered)}")
    default = Outputs().deduped("test")
    sources = check if check else ([default] if default.is_file() else [])
    paths = collect_images(sources, data_root)
    with env.quiet_native_startup():
        from pipeline.ops import export as exporting
        from pipeline.ops import predict as predicting

        predictor = predicting.load_predictor(model, classes)
        if format_ == "coreml":
            result = exporting.export_coreml(predictor, out, quantize)
        else:
            result = exporting.export_model(predictor, out, format_, quantize, paths, tolerance)
    typer.echo(exporting.summary(result))
    if not Path(model).is_file():
        from pipeline.integrations import registry

        files = [out, Path(f"{out}.check.json")]
        run_id = registry.log_export(model, files, exporting.metrics(result))
        if run_id:
            typer.echo(f"logged to run {run_id} under exports/")
    raise typer.Exit(0 if result.passed else 1)


def _echo_record(record: dict) -> None:
    before, after = (
        f"v{v}" if v else "none" for v in (record["champion_before"], record["champion_after"])
    )
    typer.echo(
        f"{record['model_name']} @champion: {before} -> {after} ({'; '.join(record['reasons'])})"
    )


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="The model version to make @champion.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the tags and history.")] = "",
    params: opts.ParamsOpt = Path("params.yaml"),
    outputs: opts.OutputsOpt = OUTPUTS_ROOT,
) -> None:
    """Make a registered version the @champion by hand (recorded in outputs/register/)."""
    from pipeline.core.config import load_params
    from pipeline.ops import promotion

    _echo_record(promotion.promote(load_params(params), Outputs(outputs), version, reason))


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why; kept in the tags and history.")] = "",
    params: opts.ParamsOpt = Path("params.yaml"),
    outputs: opts.OutputsOpt = OUTPUTS_ROOT,
) -> None:
    """Give @champion back to the version the current champion replaced."""
    from pipeline.core.config import load_params
    from pipeline.ops import promotion

    _echo_record(promotion.rollback(load_params(params), Outputs(outputs), reason))


@app.command()
def schedule(
    cron: Annotated[str, typer.Option(help="When to retrain (cron, UTC).")] = "0 3 * * *",
    source: Annotated[str, typer.Option(help="Data source: inbox | pull | none.")] = "inbox",
    inbox: Annotated[
        Path | None, typer.Option(help="Inbox folder for --source inbox (default: inbox/).")
    ] = None,
    commit: Annotated[
        bool, typer.Option(help="git commit dvc.lock and data.dvc after a promotion.")
    ] = False,
    name: Annotated[str, typer.Option(help="Deployment name.")] = "snackloc-retrain",
) -> None:
    """Serve the retraining flow on a cron schedule (needs a Prefect server; docs/scheduling.md)."""
    from pipeline.ops import children

    stop_requested = children.defer_sigterm()  # before the slow imports: no signal is lost
    if not os.environ.get("PREFECT_API_URL"):
        fail(
            "PREFECT_API_URL is not set: schedules need a real Prefect server "
            "(start one with `prefect server start --host 127.0.0.1`, then export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api; see docs/scheduling.md)"
        )
    from flows import retrain

    if source not in retrain.SOURCES:
        fail(f"unknown --source {source!r}; expected one of {', '.join(retrain.SOURCES)}")
    parameters = {
        "project": str(Path.cwd().resolve()),
        "source": source,
        "inbox": str(inbox.resolve()) if inbox else None,
        "commit": commit,
    }
    typer.echo(
        f"serving {name} on {os.environ['PREFECT_API_URL']} with cron {cron!r} "
        "(Ctrl+C or SIGTERM stops it; the schedule stays active on the server)"
    )
    retrain.serve(name, cron, parameters, stop_requested)


@app.command()
def server(
    host: Annotated[
        str,
        typer.Option(help="Interface for both servers. Neither has auth: keep 127.0.0.1."),
    ] = "127.0.0.1",
    prefect_port: Annotated[int, typer.Option(help="Prefect API and UI port.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow tracking server port.")] = 5000,
    backend_store_uri: Annotated[
        str | None,
        typer.Option(
            envvar="MLFLOW_BACKEND_STORE_URI",
            help="MLflow runs + registry store, e.g. postgresql://...; default: mlflow.db here.",
        ),
    ] = None,
    artifacts_destination: Annotated[
        str | None,
        typer.Option(
            envvar="MLFLOW_ARTIFACTS_DESTINATION",
            help="Where MLflow keeps artifacts, e.g. s3://bucket/path; default: mlartifacts/.",
        ),
    ] = None,
    mlflow_workers: Annotated[int, typer.Option(help="MLflow server worker processes.")] = 1,
    prefect_ui: Annotated[bool, typer.Option(help="Serve the Prefect UI.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for both to be healthy.")] = 180,
) -> None:
    """Run a Prefect server and an MLflow server for this project until Ctrl+C or SIGTERM.

    State stays in the project (.prefect/, mlflow.db, mlartifacts/) unless options or the
    environment name other stores. See docs/scheduling.md.
    """
    from pipeline.integrations import tracking
    from pipeline.ops import servers

    project = Path.cwd()
    if not servers.is_local(host):
        typer.secho(
            f"warning: binding to {host}: neither server has authentication; anyone who can "
            "reach this machine can read and change runs, models and flows. Put an "
            "authenticating proxy in front (docs/scheduling.md, 'Beyond this machine').",
            fg=typer.colors.YELLOW,
            err=True,
        )
    prefect = servers.prefect_server(project, host, prefect_port, ui=prefect_ui)
    mlflow = servers.mlflow_server(
        project, host, mlflow_port, backend_store_uri, artifacts_destination, mlflow_workers
    )
    store = backend_store_uri or tracking.local_store_uri(project)
    artifacts = artifacts_destination or tracking.local_artifacts_uri(project)

    def ready(running: list) -> None:
        pids = ", ".join(f"{r.server.name} {r.process.pid}" for r in running)
        experiment = _experiment_name(Path("params.yaml"))
        runs = tracking.experiment_url(mlflow.url, experiment, mlflow.url)
        typer.echo(
            f"Prefect  {prefect.url}  (database {servers.prefect_database()})\n"
            f"MLflow   {mlflow.url}  (store {servers.hide_password(store)}, "
            f"artifacts {servers.hide_password(artifacts)})\n"
            f"runs     {runs}\n"
            f"logs     {prefect.log.parent}  (pids: {pids})\n\n"
            "In another shell, to use them:\n"
            f"  export PREFECT_API_URL={prefect.url}/api\n"
            f"  export MLFLOW_TRACKING_URI={mlflow.url}\n\n"
            "Ctrl+C stops both."
        )

    typer.echo(f"starting Prefect on {prefect.url} and MLflow on {mlflow.url} ...")
    raise typer.Exit(servers.serve([prefect, mlflow], ready, timeout=timeout))


def main() -> None:
    """Console-script entry point: user errors become one red line, not a traceback;
    SIGTERM stops a command as Ctrl+C does (status 130), its child processes with it
    (pipeline/ops/children.py). The process first restarts with tcmalloc and, for the
    stages, a fixed hash seed (pipeline/core/startup.py)."""
    from pipeline.core import startup
    from pipeline.ops import children

    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    startup.restart(command, reproducible={*NAMES, "pipeline"})
    env.configure()
    children.stop_on_sigterm()
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
