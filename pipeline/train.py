"""Stage "train": fit the two-head model on the deduplicated annotations.

Writes the model (``model.keras``), the per-epoch history (a DVC plot), the final training
metrics and the id of the MLflow run that the evaluate and register stages add to.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import keras
import pandas as pd

from pipeline import hardware, tracking
from pipeline.config import Params
from pipeline.dataio import atomic_path, read_clean_annotations, read_json, write_csv, write_json
from pipeline.errors import UserError
from pipeline.loader import ImageCache, SnackDataset, sample_table
from pipeline.model import build_model, compile_model
from pipeline.paths import Outputs

log = logging.getLogger(__name__)


def learning_rate_at(epoch: int, base: float, drops: list[int]) -> float:
    """Base rate divided by 10 at each (1-based) drop epoch already reached."""
    return base / 10 ** sum(1 for drop in drops if epoch + 1 >= drop)


class MlflowEpochLogger(keras.callbacks.Callback):
    """Log every epoch's metrics (and the learning rate) to the active MLflow run."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        import mlflow

        metrics = {k: float(v) for k, v in (logs or {}).items() if math.isfinite(float(v))}
        mlflow.log_metrics(metrics, step=epoch)


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
    if train_samples.empty or val_samples.empty:
        raise UserError(
            "no training or validation samples left after validate and dedup",
            hint=f"check {outputs.quarantine} and {outputs.duplicates}",
        )
    return classes, train_samples, val_samples


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
    train_ds = SnackDataset(train_samples, shuffle=True, hflip=t.hflip, seed=t.seed, **common)
    val_ds = SnackDataset(val_samples, **common)
    return train_ds, val_ds


def run(params: Params, outputs: Outputs, progress: bool = True) -> dict[str, Any]:
    """Train, save the model and history, and log everything to a new MLflow run."""
    import mlflow

    keras.utils.set_random_seed(params.train.seed)
    strategy = hardware.configure()
    classes, train_samples, val_samples = load_samples(params, outputs)
    train_ds, val_ds = make_datasets(params, train_samples, val_samples, progress)
    log.info(
        "training on %d samples, validating on %d images, %d classes",
        len(train_samples),
        len(val_samples),
        len(classes),
    )

    with strategy.scope():
        model = build_model(len(classes), params.model)
        compile_model(model, params.train.learning_rate, params.train.box_loss_weight)

    t = params.train
    callbacks = [
        keras.callbacks.LearningRateScheduler(
            lambda epoch: learning_rate_at(epoch, t.learning_rate, t.lr_drop_epochs)
        ),
        MlflowEpochLogger(),
    ]
    experiment_id = tracking.setup_experiment(params.mlflow.experiment)
    dump = params.model_dump(mode="json", by_alias=True)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tags(
            {
                "snackloc.stage": "train",
                "git_commit": tracking.git_commit(),
                "data_version": tracking.data_version(),
                "params_hash": tracking.params_hash(dump),
            }
        )
        mlflow.log_params(tracking.flatten({k: dump[k] for k in ("data", "model", "train")}))
        mlflow.log_params(
            {
                "classes": len(classes),
                "train_samples": len(train_samples),
                "val_samples": len(val_samples),
            }
        )
        started = time.perf_counter()
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=t.epochs,
            callbacks=callbacks,
            verbose=1 if progress else 2,
        )
        seconds = time.perf_counter() - started
        result = save_outputs(model, history.history, outputs, seconds, len(train_samples))
        mlflow.log_metrics(
            {"train_seconds": seconds, "train_images_per_second": result["images_per_second"]}
        )
        mlflow.log_artifact(str(outputs.history), artifact_path="training")
        write_json(
            outputs.mlflow_run,
            {
                "run_id": run.info.run_id,
                "experiment_id": experiment_id,
                "tracking_uri": tracking.tracking_uri(),
            },
        )
    return result


def save_outputs(
    model: keras.Model,
    history: dict[str, list[float]],
    outputs: Outputs,
    seconds: float,
    samples: int,
) -> dict[str, Any]:
    """Model (write-then-rename), history CSV and final-epoch metrics JSON."""
    with atomic_path(outputs.model) as tmp:
        model.save(tmp)
    frame = pd.DataFrame(history)
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    write_csv(outputs.history, frame)
    final = {k: round(float(v[-1]), 6) for k, v in history.items()}
    epochs = len(frame)
    metrics = {
        **final,
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "images_per_second": round(samples * epochs / max(seconds, 1e-9), 1),
    }
    write_json(outputs.train_metrics, metrics)
    log.info("saved %s (%d epochs in %.0f s)", Path(outputs.model), epochs, seconds)
    return metrics
