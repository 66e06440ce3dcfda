"""Stage "train": fit the two-head model on the deduplicated annotations.

Writes the model (``model.keras``), the per-epoch history (a DVC plot), the final training
metrics and the id of the MLflow run that the evaluate and register stages add to.

Training runs in the phases of the recipe (pipeline/model/recipe.py): from random init one
phase, every layer training; from a pretrained backbone the heads first on the frozen
backbone (optionally on backbone features computed once, ``train.cache_features``), then
the fine-tuning. Each finished epoch is backed up under
``outputs/train/backup/`` (not a DVC out): a run that was interrupted resumes from its last
finished epoch, in the same MLflow run, when params and data are unchanged. The backup is
removed once the model is saved.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from pipeline.core.config import Params, TrainParams
from pipeline.core.errors import UserError
from pipeline.core.files import atomic_path, read_json, write_csv, write_json
from pipeline.core.paths import Outputs
from pipeline.data.contract import annotations_path, read_clean_annotations, read_raw_annotations
from pipeline.integrations import tracking
from pipeline.model import backbones, hardware
from pipeline.model.augment import AugmentSettings
from pipeline.model.loader import ImageBatches, ImageCache, SnackDataset, distributed, sample_table
from pipeline.model.model import (
    build_model,
    compile_model,
    feature_extractor,
    heads_model,
)
from pipeline.model.recipe import (
    Phase,
    describe_recipe,
    ema_momentum_for,
    head_epochs,
    learning_rate_for,
    plan_phases,
    set_trainable,
)

log = logging.getLogger(__name__)


class MlflowEpochLogger(keras.callbacks.Callback):
    """Log every epoch's metrics (and the learning rate) to the training's MLflow run.

    An unreachable tracking server does not stop training (tracking.TrainingRun).
    """

    def __init__(self, tracker: tracking.TrainingRun) -> None:
        super().__init__()
        self.tracker = tracker

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items() if math.isfinite(float(v))}
        self.tracker.log_epoch(epoch, metrics)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose files are written to temporary names, then renamed.

    Keras writes ``latest.weights.h5`` and ``training_metadata.json`` in place: a kill while
    saving would leave a truncated backup that cannot be restored. Here a kill leaves the
    previous epoch's backup whole. The random state of the dropout layers is backed up too
    (save_weights skips it), so a resumed run draws what an uninterrupted one would have.
    (Uses the private attributes of Keras 3.15's callback.)
    """

    def _seed_states(self) -> list:
        return [v for v in self.model.variables if v.name == "seed_generator_state"]

    def on_train_begin(self, logs: dict | None = None) -> None:
        # Keras never resets the epoch a restore sets: the next phase's fit() would start
        # from the previous phase's restored epoch instead of its own.
        self.model._initial_epoch = None
        super().on_train_begin(logs)
        if not self.model._initial_epoch:
            return
        seeds = json.loads(Path(self._training_metadata_path).read_text()).get("seeds", [])
        states = self._seed_states()
        if len(seeds) == len(states):
            for variable, value in zip(states, seeds, strict=True):
                variable.assign(np.asarray(value, dtype=variable.dtype))
        log.info("resuming after epoch %d (backup %s)", self.model._initial_epoch, self.backup_dir)

    def _save_model(self) -> None:
        folder = Path(self.backup_dir)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / f".tmp-{os.getpid()}.weights.h5"  # Keras wants this suffix
        metadata = folder / f".tmp-{os.getpid()}.json"
        self.model.save_weights(weights, overwrite=True)
        state = {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "seeds": [np.asarray(v).tolist() for v in self._seed_states()],
        }
        metadata.write_text(json.dumps(state))
        os.replace(weights, self._weights_path)
        os.replace(metadata, self._training_metadata_path)


class DatasetEpoch(keras.callbacks.Callback):
    """Give the training generator the epoch about to run (see SnackDataset.set_epoch)."""

    def __init__(self, dataset: SnackDataset) -> None:
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.dataset.set_epoch(epoch)


class HistoryLog(keras.callbacks.Callback):
    """Append each finished epoch's logs to a JSON-lines file: the history survives resumes."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.epochs_run = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.epochs_run += 1


def read_history(path: Path) -> pd.DataFrame:
    """The epochs logged by HistoryLog, one row per epoch (a repeated epoch keeps its last)."""
    if not path.is_file():
        return pd.DataFrame({"epoch": []})
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    frame = pd.DataFrame(rows).drop_duplicates("epoch", keep="last")
    return frame.sort_values("epoch").reset_index(drop=True)


def load_samples(params: Params, outputs: Outputs) -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    """Class list, training samples and validation samples (one per image)."""
    classes = read_json(outputs.classes)["classes"]
    root = params.data.root
    train = read_clean_annotations(outputs.deduped("train"))
    val = read_clean_annotations(outputs.deduped("val"))
    train_samples = sample_table({"train": train}, classes, root, params.train.target)
    if params.train.subset < 1.0:
        train_samples = train_samples.sample(
            frac=params.train.subset, random_state=params.train.seed
        ).sort_index()
    val_samples = sample_table({"val": val}, classes, root, "image")
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


def make_datasets(params: Params, train_samples, val_samples, progress: bool):
    """Generators for training (shuffled, augmented) and validation."""
    size, t = params.model.image_size, params.train
    cache = None
    if t.cache_images:
        paths = train_samples.path.tolist() + val_samples.path.tolist()
        cache = ImageCache(paths, size, workers=t.workers, progress=progress)
    common = {
        "image_size": size,
        "batch_size": t.batch_size,
        "cache": cache,
        "workers": t.workers,
        "use_multiprocessing": False,
    }
    a = t.augment
    settings = AugmentSettings(
        hflip=a.hflip,
        crop_scale=a.crop_scale,
        min_visible=a.min_visible,
        color_jitter=a.color_jitter,
        zoom_out=a.zoom_out,
    )
    train_ds = SnackDataset(train_samples, shuffle=True, augment=settings, seed=t.seed, **common)
    val_ds = SnackDataset(val_samples, **common)
    return train_ds, val_ds


def backbone_features(model: keras.Model, ds: SnackDataset, workers: int = 1) -> np.ndarray:
    """Backbone features of every sample of ``ds``, in sample order; each image runs once.

    ``predict`` runs BatchNorm in inference mode, as a frozen backbone does while training.
    """
    unique = list(dict.fromkeys(ds.paths))
    images = ImageBatches(unique, ds.image_size, ds.batch_size, cache=ds.cache, workers=workers)
    features = feature_extractor(model).predict(images, verbose=0)
    row = {path: i for i, path in enumerate(unique)}
    return features[[row[path] for path in ds.paths]]


def targets(ds: SnackDataset) -> dict[str, np.ndarray]:
    """The (unaugmented) training targets of every sample of ``ds``, in sample order."""
    return {"class": ds.labels, "box": ds.boxes}


@dataclass
class FitResult:
    """What ``fit`` returns."""

    model: keras.Model
    history: pd.DataFrame  # every epoch trained so far, resumed ones included
    epochs_run: int  # epochs trained by this call


def fit(
    params: Params,
    num_classes: int,
    train_ds: SnackDataset,
    val_ds: SnackDataset,
    backup: Path,
    setup: hardware.Setup,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = 2,
) -> FitResult:
    """Build the model and train it phase by phase, backing up every epoch under ``backup``.

    If ``backup`` holds the state of an interrupted call with the same arguments, training
    continues from its last finished epoch.
    """
    backup.mkdir(parents=True, exist_ok=True)
    # Seed again here: between configure() and now, libraries draw from the global random
    # state (MLflow names a run with `random` on a local store, not on a server), and Keras
    # draws its initializer seeds from it.
    keras.utils.set_random_seed(params.train.seed)
    with setup.strategy.scope():
        model = build_model(num_classes, params.model)
    history = HistoryLog(backup / "history.jsonl")
    t = params.train
    log.info("recipe: %s", describe_recipe(params))
    for index, phase in enumerate(plan_phases(t.epochs, head_epochs(params))):
        resume = AtomicBackupAndRestore(str(backup / f"phase-{index}"), delete_checkpoint=False)
        # The history line first: a kill between the two repeats the epoch, and the history
        # keeps its last line per epoch.
        phase_callbacks = [DatasetEpoch(train_ds), history, resume, *callbacks]
        if fit_phase(model, phase, params, train_ds, val_ds, setup, phase_callbacks, verbose):
            log.info("early stopping: no better val_loss for %d epochs", t.early_stopping_patience)
            break
    return FitResult(model, read_history(history.path), history.epochs_run)


def fit_phase(
    model: keras.Model,
    phase: Phase,
    params: Params,
    train_ds: SnackDataset,
    val_ds: SnackDataset,
    setup: hardware.Setup,
    callbacks: list[keras.callbacks.Callback],
    verbose: int | str,
) -> bool:
    """Train one phase (from its backup, if any); True when early stopping ended it."""
    t = params.train
    set_trainable(model, phase, params)
    on_features = phase.frozen and t.cache_features
    target = heads_model(model) if on_features else model
    data = phase_data(model, on_features, t, train_ds, val_ds, setup)
    steps_per_epoch = math.ceil(len(train_ds.paths) / t.batch_size)
    ema = ema_momentum_for(t.ema_momentum, steps_per_epoch * (phase.end - phase.start))
    if ema != t.ema_momentum:
        log.info("weight averaging momentum %.3f for this short phase", ema)
    with setup.strategy.scope():
        compile_model(
            target,
            t.learning_rate,
            t.box_loss_weight,
            t.box_loss,
            t.weight_decay,
            jit_compile=setup.jit_compile,
            run_eagerly=setup.run_eagerly,
            label_smoothing=t.label_smoothing,
            ema_momentum=ema,
        )
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate_for(epoch, params))
    # Validate with the averaged weights, the ones the run keeps.
    swap = [keras.callbacks.SwapEMAWeights()] if ema else []
    stopper = []
    if t.early_stopping_patience:
        stopper = [
            keras.callbacks.EarlyStopping(
                patience=t.early_stopping_patience, restore_best_weights=True
            )
        ]
    target.fit(
        **data,
        initial_epoch=phase.start,
        epochs=phase.end,
        callbacks=[schedule, *swap, *callbacks, *stopper],
        verbose=verbose,
    )
    return bool(stopper) and stopper[0].stopped_epoch > 0


def phase_data(
    model: keras.Model,
    on_features: bool,
    t: TrainParams,
    train_ds: SnackDataset,
    val_ds: SnackDataset,
    setup: hardware.Setup | None = None,
) -> dict[str, Any]:
    """fit() arguments for the data: the generators, or backbone features computed once."""
    if not on_features and setup is not None and setup.cluster is not None:
        # Each worker builds only its replicas' parts of every batch (loader.distributed),
        # already in the epoch's shuffled order.
        return {
            "x": distributed(train_ds, setup.strategy),
            "validation_data": distributed(val_ds, setup.strategy),
            "shuffle": False,
        }
    if not on_features:
        # The dataset shuffles itself, seeded per epoch. Keras would also shuffle the batch
        # order from Python's global random state, which a resumed run cannot reproduce.
        return {"x": train_ds, "validation_data": val_ds, "shuffle": False}
    started = time.perf_counter()
    data = {
        "x": backbone_features(model, train_ds, t.workers),
        "y": targets(train_ds),
        "batch_size": t.batch_size,
        "shuffle": True,
        "validation_data": (backbone_features(model, val_ds, t.workers), targets(val_ds)),
    }
    log.info("backbone features computed in %.1f s", time.perf_counter() - started)
    return data


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
    dump: dict[str, Any],
    setup: hardware.Setup,
    classes: int,
    train: int,
    val: int,
) -> None:
    """Tags (lineage, hardware) and params (data, model, train, sample counts) of the run."""
    tags = {
        "snackloc.stage": "train",
        "git_commit": tracking.git_commit(),
        "data_version": tracking.data_version(),
        "params_hash": tracking.params_hash(dump),
        **setup.describe(),
    }
    params = tracking.flatten({k: dump[k] for k in ("data", "model", "train")})
    params |= {"classes": classes, "train_samples": train, "val_samples": val}
    dataset = tracking.data_input(Path(dump["data"]["root"]), tags["data_version"])
    tracker.log_inputs(params, tags, name=tracking.run_name(dump), dataset=dataset)


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
    log.info(
        "training on %d samples, validating on %d images, %d classes",
        len(train_samples),
        len(val_samples),
        len(classes),
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
    dump = params.model_dump(mode="json", by_alias=True)
    lineage = {k: dump[k] for k in ("data", "model", "train")}
    fingerprint = tracking.params_hash(
        {**lineage, "classes": classes, "train": train_ds.paths, "val": val_ds.paths}
    )
    backup = outputs.train_dir / "backup"
    if not setup.is_chief:  # multi-worker: the chief alone writes outputs and tracks the run
        worker_backup = outputs.train_dir / f"backup-worker{setup.cluster.rank}"
        verbose = 1 if progress and sys.stdout.isatty() else 2
        return run_worker(
            params, setup, len(classes), train_ds, val_ds, worker_backup, fingerprint, verbose
        )
    resume_id = open_backup(backup, fingerprint)
    tracker = tracking.TrainingRun(
        params.mlflow.experiment,
        resume_id,
        remember=lambda run_id: write_json(
            backup / "state.json", {"fingerprint": fingerprint, "mlflow_run_id": run_id}
        ),
    )
    try:
        tracker.start()
        log_inputs(tracker, dump, setup, len(classes), len(train_samples), len(val_samples))
        started = time.perf_counter()
        result = fit(
            params,
            len(classes),
            train_ds,
            val_ds,
            backup,
            setup,
            callbacks=[MlflowEpochLogger(tracker)],
            verbose=1 if progress and sys.stdout.isatty() else 2,
        )
        seconds = time.perf_counter() - started
        metrics = save_outputs(
            result.model, result.history, outputs, seconds, len(train_samples) * result.epochs_run
        )
    except BaseException:
        tracker.end_failed()
        raise
    try:
        run_id = tracker.finish(
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
        metrics = save_outputs(
            result.model,
            result.history,
            Outputs(Path(tmp)),
            seconds,
            len(train_ds.paths) * result.epochs_run,
        )
    shutil.rmtree(backup)
    return metrics


def save_outputs(
    model: keras.Model,
    history: pd.DataFrame,
    outputs: Outputs,
    seconds: float,
    samples_seen: int,
) -> dict[str, Any]:
    """Model (write-then-rename), history CSV and final-epoch metrics JSON.

    ``samples_seen`` counts the training samples of the epochs run in ``seconds``.
    """
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
