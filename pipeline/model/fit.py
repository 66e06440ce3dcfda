"""The training engine: datasets from params, then the model fitted phase by phase.

The phases come from the recipe (pipeline/model/recipe.py): from random init one phase, every
layer training; from a pretrained backbone the heads first on the frozen backbone (optionally
on backbone features computed once, ``train.cache_features``), then the fine-tuning. Every
finished epoch is backed up (pipeline/model/callbacks.py), so an interrupted ``fit`` resumes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import pandas as pd

from pipeline.core.config import Params, TrainParams
from pipeline.model import hardware
from pipeline.model.callbacks import (
    AtomicBackupAndRestore,
    DatasetEpoch,
    HistoryLog,
    KeepFreedMemory,
    read_history,
)
from pipeline.model.detect_decode import inference_model
from pipeline.model.detect_head import grid_of, is_detector
from pipeline.model.detect_loss import compile_detector
from pipeline.model.features import backbone_features, targets
from pipeline.model.loader import ImageCache, SnackDataset, distributed
from pipeline.model.model import build_model, compile_model, heads_model
from pipeline.model.recipe import (
    Phase,
    describe_recipe,
    ema_momentum_for,
    head_epochs,
    learning_rate_for,
    peak_learning_rate,
    plan_phases,
    set_trainable,
)

log = logging.getLogger(__name__)


def make_datasets(
    params: Params, train_samples: pd.DataFrame, val_samples: pd.DataFrame, progress: bool
) -> tuple[SnackDataset, SnackDataset]:
    """Generators for training (shuffled, augmented) and validation."""
    size, train = params.model.image_size, params.train
    cache = None
    if train.cache_images:
        paths = train_samples.path.tolist() + val_samples.path.tolist()
        cache = ImageCache(paths, size, workers=train.workers, progress=progress)
    common = {
        **detection_targets(params),
        "image_size": size,
        "batch_size": train.batch_size,
        "cache": cache,
        "workers": train.workers,
        "use_multiprocessing": False,
    }
    train_ds = SnackDataset(
        train_samples, shuffle=True, augment=train.augment, seed=train.seed, **common
    )
    val_ds = SnackDataset(val_samples, **common)
    if params.model.task == "detect":  # every box of each image (train.load_samples adds them)
        train_ds.objects = train_samples.objects.tolist()
        val_ds.objects = val_samples.objects.tolist()
    return train_ds, val_ds


def detection_targets(params: Params) -> dict[str, Any]:
    """SnackDataset arguments of the detector's targets (none for the two heads)."""
    if params.model.task != "detect":
        return {}
    return {"max_boxes": params.model.detect.max_boxes}


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
    log.info("recipe: %s", describe_recipe(params))
    for index, phase in enumerate(plan_phases(params.train.epochs, head_epochs(params))):
        resume = AtomicBackupAndRestore(str(backup / f"phase-{index}"), delete_checkpoint=False)
        # The history line first: a kill between the two repeats the epoch, and the history
        # keeps its last line per epoch.
        phase_callbacks = [DatasetEpoch(train_ds), history, resume, *callbacks]
        if fit_phase(model, phase, params, train_ds, val_ds, setup, phase_callbacks, verbose):
            patience = params.train.early_stopping_patience
            log.info("early stopping: no better val_loss for %d epochs", patience)
            break
    if is_detector(model):  # saved with its final answer: boxes after NMS
        model = inference_model(model, params.model.detect)
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
    train = params.train
    set_trainable(model, phase, params)
    on_features = phase.frozen and train.cache_features
    target = heads_model(model) if on_features else model
    data = phase_data(model, on_features, train, train_ds, val_ds, setup)
    steps_per_epoch = math.ceil(len(train_ds.paths) / train.batch_size)
    ema = ema_momentum_for(train.ema_momentum, steps_per_epoch * (phase.end - phase.start))
    if ema != train.ema_momentum:
        log.info("weight averaging momentum %.3f for this short phase", ema)
    compile_phase(target, model, params, setup, ema)
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate_for(epoch, params))
    # Validate with the averaged weights, the ones the run keeps.
    swap = [keras.callbacks.SwapEMAWeights()] if ema else []
    stopper = []
    if train.early_stopping_patience:
        stopper = [
            keras.callbacks.EarlyStopping(
                patience=train.early_stopping_patience, restore_best_weights=True
            )
        ]
    target.fit(
        **data,
        initial_epoch=phase.start,
        epochs=phase.end,
        callbacks=[KeepFreedMemory(), schedule, *swap, *callbacks, *stopper],
        verbose=verbose,
    )
    return bool(stopper) and stopper[0].stopped_epoch > 0


def compile_phase(
    target: keras.Model, model: keras.Model, params: Params, setup: hardware.Setup, ema: float
) -> None:
    """Compile what a phase trains (``target``: the model or its heads) with its task's loss."""
    train = params.train
    with setup.strategy.scope():
        if is_detector(model):
            compile_detector(
                target,
                grid_of(model),
                params.model.detect,
                peak_learning_rate(params),
                train.weight_decay,
                jit_compile=setup.jit_compile,
                run_eagerly=setup.run_eagerly,
                ema_momentum=ema,
                clip_norm=train.clip_norm,
            )
        else:
            compile_model(
                target,
                peak_learning_rate(params),
                train.box_loss_weight,
                train.box_loss,
                train.weight_decay,
                jit_compile=setup.jit_compile,
                run_eagerly=setup.run_eagerly,
                label_smoothing=train.label_smoothing,
                ema_momentum=ema,
                clip_norm=train.clip_norm,
            )


def phase_data(
    model: keras.Model,
    on_features: bool,
    train: TrainParams,
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
        "x": backbone_features(model, train_ds, train.workers),
        "y": targets(train_ds),
        "batch_size": train.batch_size,
        "shuffle": True,
        "validation_data": (backbone_features(model, val_ds, train.workers), targets(val_ds)),
    }
    log.info("backbone features computed in %.1f s", time.perf_counter() - started)
    return data
