"""In-process training of the tiny model: its params, a noise dataset, the hardware setup
run eagerly, and callbacks that interrupt a fit or record its epochs.

Import from a test module as ``from helpers_train import tiny_datasets, ...``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from helpers_tiny import NO_AUGMENT, TINY_MODEL
from PIL import Image

from pipeline.core.config import ModelParams, Params, TrainParams
from pipeline.model import hardware
from pipeline.model.loader import SnackDataset, sample_table


def tiny_train_params(model: ModelParams = TINY_MODEL, **train_values) -> Params:
    """Params of an in-process training: the tiny model, 2 epochs, no augmentation."""
    values = {"epochs": 2, "batch_size": 8, "augment": NO_AUGMENT, **train_values}
    return Params(model=model, train=TrainParams(**values))


def tiny_datasets(root: Path, n: int = 16) -> tuple[SnackDataset, SnackDataset]:
    """Noise images with two classes and one box each; train and val see the same files."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = root / "train" / "x" / f"im{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        rows.append((f"im{i}", 0.1, 0.6, 0.2, 0.7, "xy"[i % 2], "x"))
    columns = ["image_id", "x_min", "x_max", "y_min", "y_max", "class_name", "folder"]
    frame = pd.DataFrame(rows, columns=columns)
    samples = sample_table({"train": frame}, ["x", "y"], root, "image")
    common = {"image_size": 32, "batch_size": 8}
    return SnackDataset(samples, shuffle=True, **common), SnackDataset(samples, **common)


def tiny_setup(params: Params) -> hardware.Setup:
    """The hardware setup, run eagerly: tracing the graph of a tiny model costs more (~20 s
    here) than training it for two batches (the graph path runs in test_pipeline_dvc.py)."""
    return dataclasses.replace(hardware.configure(params.train), run_eagerly=True)


class Interrupt(keras.callbacks.Callback):
    """Fail like a killed job once the given (0-based) epoch has finished and been backed up."""

    def __init__(self, after_epoch: int) -> None:
        super().__init__()
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after_epoch:
            raise KeyboardInterrupt("simulated interruption")


class EpochsSeen(keras.callbacks.Callback):
    """Record the (0-based) epochs a fit begins."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)
