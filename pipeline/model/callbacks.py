"""The Keras callbacks of a training: per-epoch metrics, the history, backups and resume.

Used by ``pipeline.model.fit``; every one of them survives an interrupted run, so that a
resumed training logs, draws and records what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from pipeline.core.startup import tune_glibc
from pipeline.model.loader import SnackDataset

log = logging.getLogger(__name__)


class EpochMetricsLogger(keras.callbacks.Callback):
    """Hand every epoch's finite metrics (and the learning rate) to ``log_epoch``.

    The train stage passes its tracking run's ``log_epoch``: the model room knows no tracker.
    """

    def __init__(self, log_epoch: Callable[[int, dict[str, float]], None]) -> None:
        super().__init__()
        self.log_epoch = log_epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items() if math.isfinite(float(v))}
        self.log_epoch(epoch, metrics)


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


class KeepFreedMemory(keras.callbacks.Callback):
    """Keep glibc's freed memory for reuse once the data pipeline is built.

    TensorFlow's generator dataset (every ``PyDataset`` in ``fit``) sets glibc's trim
    threshold to 128 KB when it first runs, undoing ``startup.tune_glibc``: freed memory
    then goes back to the kernel and is faulted in again at every step (about 10x the page
    faults per step, bench/train_speed.py). Tuning again at each epoch's first batch, after
    the dataset exists, keeps it. A no-op on tcmalloc.
    """

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if batch == 0:
            tune_glibc()


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
