"""Resuming an interrupted fit ends exactly where an uninterrupted one ends (tiny, in process).

The fast companions of tests/test_fault_kill.py (a real SIGKILL, slow): the same seeds, the
same shuffling and augmentation per epoch after a resume, the optimizer state restored, each
phase starting at its own epoch, and backup files that are only ever complete.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers_model import save_tiny_backbone
from helpers_train import EpochsSeen, Interrupt, tiny_datasets, tiny_setup, tiny_train_params

from pipeline.core.config import AugmentParams, TransferParams
from pipeline.model import fit as engine

AUGMENT = AugmentParams(
    hflip=True, crop_scale=(0.6, 1.0), min_visible=0.7, color_jitter=0.2, zoom_out=1.0
)


def fit(params, data, backup, callbacks=()):
    train_ds, val_ds = data
    return engine.fit(params, 2, train_ds, val_ds, backup, tiny_setup(params), callbacks, verbose=0)


def augmented(root):
    """The tiny datasets, the training one shuffled and augmented (both drawn per epoch)."""
    train_ds, val_ds = tiny_datasets(root)
    train_ds.augment = AUGMENT
    return train_ds, val_ds


def test_a_resumed_fit_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    # Shuffling, augmentation and dropout all draw per epoch: the resume restores each one.
    params = tiny_train_params(epochs=3, deterministic=True)
    assert params.model.dropout > 0
    whole = fit(params, augmented(tmp_path / "a"), tmp_path / "whole")

    backup = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        fit(params, augmented(tmp_path / "b"), backup, [Interrupt(0)])
    assert not list(backup.glob("phase-0/.tmp-*")), "temporary backup files were left"
    resumed = fit(params, augmented(tmp_path / "b"), backup)  # new objects, as a new process

    assert resumed.epochs_run == 2
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # not close: equal
    np.testing.assert_array_equal(whole.history.val_loss, resumed.history.val_loss)


def test_a_resume_in_the_frozen_phase_starts_the_next_phase_at_its_own_epoch(tmp_path):
    pretrained = save_tiny_backbone(tmp_path / "pretrained")
    params = tiny_train_params(pretrained, epochs=3, transfer=TransferParams(head_epochs=2))
    data = tiny_datasets(tmp_path / "data")
    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        fit(params, data, backup, [Interrupt(0)])
    seen = EpochsSeen()
    result = fit(params, data, backup, [seen])
    assert seen.epochs == [1, 2]  # Keras alone would start the fine-tuning at epoch 1 again
    assert list(result.history.epoch) == [1, 2, 3]
