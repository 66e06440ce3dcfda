"""Stage "train": fit the two-head model on the deduplicated annotations.

Writes the model (``model.keras``), the per-epoch history (a DVC plot), the final training
metrics and the id of the MLflow run that the evaluate and register stages add to. The
training engine (datasets, phases, callbacks) is ``pipeline/model/fit.py``.

Each finished epoch is backed up under ``outputs/train/backup/`` (not a DVC out): a run that
was interrupted resumes from its last finished epoch, in the same MLflow run, when params and
data are unchanged. The backup is removed once the model is saved.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.config import Params
from pipeline.core.errors import UserError
from pipeline.core.files import atomic_path, read_json, write_csv, write_json
from pipeline.core.paths import Outputs
from pipeline.data.contract import annotations_path, read_clean_annotations, read_raw_annotations
from pipeline.integrations import tracking
from pipeline.model import backbones, hardware
from pipeline.model.callbacks import EpochMetricsLogger, read_history
from pipeline.model.fit import FitResult, fit, make_datasets
from pipeline.model.loader import SnackDataset, every_box, sample_table

log = logging.getLogger(__name__)


def run(params: Params, outputs: Outputs, progress: bool = True) -> dict[str, Any]:
    """Train, save the model and history, and log everything to an MLflow run.

    The tracking server may be unreachable while training runs (tracking.TrainingRun): the
    run is completed at the end, or the stage fails then with the backup kept, so that a
    rerun logs it without training again.
    """
    backbones.check_params(params.model)
    setup = hardware.configure(params.train)
    classes, train_samples, val_samples = load_samples(params, outputs)
    train_ds, val_ds = make_datasets(params, train_samples, val_samples, progress)
    log_data(setup, len(classes), train_ds, val_ds)
    fingerprint = training_fingerprint(params, classes, train_ds, val_ds)
    verbose = fit_verbosity(progress)
    if not setup.is_chief:  # multi-worker: the chief alone writes outputs and tracks the run
        backup = outputs.train_worker_backup(setup.cluster.rank)
        return run_worker(
            params, setup, len(classes), train_ds, val_ds, backup, fingerprint, verbose
        )
    return run_chief(params, outputs, setup, len(classes), train_ds, val_ds, fingerprint, verbose)


def fit_verbosity(progress: bool) -> int:
    """Keras' progress bar on a terminal, one line an epoch in a log file."""
    return 1 if progress and sys.stdout.isatty() else 2


def log_data(
    setup: hardware.Setup, num_classes: int, train_ds: SnackDataset, val_ds: SnackDataset
) -> None:
    """One log line on the data, and one on the workers of a multi-worker training."""
    log.info(
        "training on %d samples, validating on %d images, %d classes",
        len(train_ds.paths),
        len(val_ds.paths),
        num_classes,
    )
    if setup.cluster is not None:
        log.info(
            "multi-worker: worker %d of %d, %d replicas in all; global batch %d, %d steps an epoch",
            setup.cluster.rank,
            setup.workers,
            setup.replicas,
            train_ds.batch_size,
            train_ds.batches_in_parts(setup.replicas),
        )


def training_fingerprint(
    params: Params, classes: list[str], train_ds: SnackDataset, val_ds: SnackDataset
) -> str:
    """What a backup must match to be resumed: the params, the classes and the samples."""
    lineage = tracking.training_params(params)
    return tracking.params_hash(
        {**lineage, "classes": classes, "train": train_ds.paths, "val": val_ds.paths}
    )


def run_chief(
    params: Params,
    outputs: Outputs,
    setup: hardware.Setup,
    num_classes: int,
    train_ds: SnackDataset,
    val_ds: SnackDataset,
    fingerprint: str,
    verbose: int,
) -> dict[str, Any]:
    """Train in an MLflow run (resumed with the backup, if any), save the outputs, log them."""
    backup = outputs.train_backup
    resume_id = open_backup(backup, fingerprint)
    tracker = tracking.TrainingRun(
        params.mlflow.experiment,
        resume_id,
        remember=lambda run_id: write_json(
            backup / "state.json", {"fingerprint": fingerprint, "mlflow_run_id": run_id}
        ),
    )
    samples = len(train_ds.paths)
    try:
        tracker.start()
        log_inputs(tracker, params, setup, num_classes, samples, len(val_ds.paths))
        started = time.perf_counter()
        logger = EpochMetricsLogger(tracker.log_epoch)
        result = fit(params, num_classes, train_ds, val_ds, backup, setup, [logger], verbose)
        seconds = time.perf_counter() - started
        metrics = save_outputs(result, outputs, seconds, samples)
    except BaseException:
        tracker.end_failed()
        raise
    run_id = finish_tracking(tracker, backup, outputs, seconds, metrics)
    write_json(
        outputs.mlflow_run,
        {
            "run_id": run_id,
            "experiment_id": tracker.experiment_id,
            "tracking_uri": tracking.tracking_uri(),
        },
    )
    shutil.rmtree(backup)
    return metrics


def finish_tracking(
    tracker: tracking.TrainingRun,
    backup: Path,
    outputs: Outputs,
    seconds: float,
    metrics: dict[str, Any],
) -> str:
    """Log the history and timings and end the run; its id. Unreachable: keep the backup."""
    try:
        return tracker.finish(
            read_history(backup / "history.jsonl").to_dict("records"),
            {"train_seconds": seconds, "train_images_per_second": metrics["images_per_second"]},
            artifacts=[(outputs.history, "training")],
        )
    except tracking.TrackingUnavailable as exc:  # the stage fails; the training is kept
        raise tracking.TrackingUnavailable(
            f"{exc.message}; the trained state is kept in {backup}",
            hint="run `snackloc train` (or `dvc repro`) again once the server is reachable: "
            "it resumes from that backup, trains no epoch again and logs the run",
        ) from None


def run_worker(
    params: Params,
    setup: hardware.Setup,
    num_classes: int,
    train_ds: SnackDataset,
    val_ds: SnackDataset,
    backup: Path,
    fingerprint: str,
    verbose: int | str,
) -> dict[str, Any]:
    """A non-chief worker of a multi-worker training: train in step, leave no output behind.

    Its backup is its own (Keras 3's BackupAndRestore is per process): interrupted together,
    every worker resumes after the same epoch. Every worker saves the model, as TensorFlow's
    multi-worker guide has it (saving may read variables collectively), the non-chief ones
    into a temporary folder that is then deleted.
    """
    open_backup(backup, fingerprint)
    write_json(backup / "state.json", {"fingerprint": fingerprint})
    started = time.perf_counter()
    result = fit(params, num_classes, train_ds, val_ds, backup, setup, verbose=verbose)
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="snackloc-worker-") as tmp:
        metrics = save_outputs(result, Outputs(Path(tmp)), seconds, len(train_ds.paths))
    shutil.rmtree(backup)
    return metrics


def load_samples(params: Params, outputs: Outputs) -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    """Class list, training samples and validation samples (one per image); for the
    detector with an ``objects`` column: every box of the image (``loader.every_box``)."""
    classes = read_json(outputs.classes)["classes"]
    root = params.data.root
    train = read_clean_annotations(outputs.deduped("train"))
    val = read_clean_annotations(outputs.deduped("val"))
    detect = params.model.task == "detect"  # one sample per image, with every box of it
    rule = "image" if detect else params.train.target
    train_samples = sample_table({"train": train}, classes, root, rule)
    if params.train.subset < 1.0:
        train_samples = train_samples.sample(
            frac=params.train.subset, random_state=params.train.seed
        ).sort_index()
    val_samples = sample_table({"val": val}, classes, root, "image")
    if detect:
        train_samples["objects"] = every_box(train_samples, train, classes)
        val_samples["objects"] = every_box(val_samples, val, classes)
    for split, samples in (("train", train_samples), ("val", val_samples)):
        if samples.empty:
            raise no_images_error(split, root, outputs)
    return classes, train_samples, val_samples


def no_images_error(split: str, root: Path, outputs: Outputs) -> UserError:
    """Training without train or val images: a split the data lacks, or one validation emptied."""
    source = annotations_path(root, split)
    if read_raw_annotations(source).empty:  # e.g. an import from a source without val images
        return UserError(
            f"no {split} images: {source} has no rows, and training needs train and val images",
            hint=f"make a {split} split: `snackloc data import SRC --resplit` splits all images "
            f"by --split-ratios; or move some images to {Path(root) / split}/<folder>/ with their "
            f"rows in {source.name}",
        )
    return UserError(
        f"no {split} images left after validate and dedup: every row of {source} was "
        "quarantined or a duplicate",
        hint=f"check {outputs.quarantine} and {outputs.duplicates}",
    )


def open_backup(backup: Path, fingerprint: str) -> str | None:
    """Keep a backup of the same training (return its MLflow run id), else start afresh."""
    state = backup / "state.json"
    if state.is_file():
        saved = read_json(state)
        if saved.get("fingerprint") == fingerprint:
            log.info("resuming an interrupted training from %s", backup)
            return saved.get("mlflow_run_id")
        log.warning("discarding %s: it backs up a training with other params or data", backup)
    if backup.exists():
        shutil.rmtree(backup)
    backup.mkdir(parents=True)
    return None


def log_inputs(
    tracker: tracking.TrainingRun,
    params: Params,
    setup: hardware.Setup,
    classes: int,
    train: int,
    val: int,
) -> None:
    """Tags (lineage, hardware) and params (data, model, train, sample counts) of the run."""
    tags = {"snackloc.stage": "train", **tracking.lineage(params), **setup.describe()}
    logged = tracking.run_params(params)
    logged |= {"classes": classes, "train_samples": train, "val_samples": val}
    dataset = tracking.data_input(Path(params.data.root), tags["data_version"])
    tracker.log_inputs(logged, tags, name=tracking.run_name(params), dataset=dataset)


def save_outputs(
    result: FitResult, outputs: Outputs, seconds: float, samples: int
) -> dict[str, Any]:
    """Model (write-then-rename), history CSV and final-epoch metrics JSON.

    ``samples`` is the training samples of one epoch; ``result.epochs_run`` ran in ``seconds``.
    """
    model, history = result.model, result.history
    samples_seen = samples * result.epochs_run
    with atomic_path(outputs.model) as tmp:
        model.save(tmp)
    write_csv(outputs.history, history)
    epochs = len(history)
    final = {k: round(float(v), 6) for k, v in history.iloc[-1].items() if k != "epoch"}
    metrics = {
        **final,
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "images_per_second": round(samples_seen / max(seconds, 1e-9), 1),
    }
    write_json(outputs.train_metrics, metrics)
    log.info("saved %s (%d epochs, %.0f s in this run)", Path(outputs.model), epochs, seconds)
    return metrics
