"""The training recipe: which epochs train which layers, and at what learning rate.

From random init (``model.weights: none``) every layer trains from the first epoch. A
pretrained backbone follows the transfer recipe (``train.transfer``): first the heads alone
on the frozen backbone, then everything at a lower learning rate with the backbone's
BatchNorm layers kept in inference mode (docs/training.md says why). Plain functions of the
params, used by the train stage (pipeline/stages/train.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras

from pipeline.core.config import Params
from pipeline.model.model import backbone_of


def learning_rate_at(
    epoch: int, base: float, drops: list[int], schedule: str = "step", epochs: int = 1
) -> float:
    """Learning rate of a (0-based) epoch.

    step: base divided by 10 at each (1-based) drop epoch already reached (the book).
    cosine: a linear warmup over the first epoch, then cosine decay towards zero.
    """
    if schedule == "cosine":
        if epoch == 0:
            return base * 0.1
        progress = (epoch - 1) / max(1, epochs - 1)
        return base * 0.5 * (1 + math.cos(math.pi * progress))
    return base / 10 ** sum(1 for drop in drops if epoch + 1 >= drop)


def head_epochs(params: Params) -> int:
    """Epochs on a frozen backbone before fine-tuning: only a pretrained backbone has them."""
    if not params.model.pretrained:
        return 0
    return min(params.train.transfer.head_epochs, params.train.epochs)


def peak_learning_rate(params: Params) -> float:
    """The detector's own rate from random init (model.detect), else train's: the two
    heads', and the transfer recipe's for both tasks (a pretrained backbone lost at the
    detector's rate: docs/detection.md)."""
    if params.model.task == "detect" and not params.model.pretrained:
        return params.model.detect.learning_rate
    return params.train.learning_rate


def learning_rate_for(epoch: int, params: Params) -> float:
    """The schedule's rate, times fine_tune_lr_factor once a frozen backbone is unfrozen."""
    train = params.train
    rate = learning_rate_at(
        epoch, peak_learning_rate(params), train.lr_drop_epochs, train.lr_schedule, train.epochs
    )
    if 0 < head_epochs(params) <= epoch:
        rate *= train.transfer.fine_tune_lr_factor
    return rate


@dataclass(frozen=True)
class Phase:
    """Epochs [start, end) (0-based) trained with the backbone frozen or trainable."""

    start: int
    end: int
    frozen: bool


def describe_recipe(params: Params) -> str:
    """One line saying how this training treats its backbone."""
    if not params.model.pretrained:
        return "from random init: every layer trains from the first epoch"
    transfer = params.train.transfer
    steps = []
    if head_epochs(params):
        steps.append(f"{head_epochs(params)} epochs of heads on the frozen backbone")
    if head_epochs(params) < params.train.epochs:
        batchnorm = "BatchNorm frozen" if transfer.freeze_batchnorm else "BatchNorm training"
        factor = transfer.fine_tune_lr_factor
        steps.append(f"fine-tuning at {factor:g}x the learning rate ({batchnorm})")
    return f"transfer from {params.model.weights}: " + ", then ".join(steps)


def set_trainable(model: keras.Model, phase: Phase, params: Params) -> None:
    """Freeze or unfreeze the backbone for ``phase``.

    A frozen layer runs in inference mode in Keras 3: a frozen backbone, and the frozen
    BatchNorm layers of a fine-tuned pretrained one, normalise with their moving statistics
    and leave them as they are. (BatchNorm that trains on small batches moves those
    statistics slowly, momentum 0.999, while the weights move fast: inference then sees
    statistics that no longer match the weights, and its predictions collapse.)
    """
    backbone = backbone_of(model)
    backbone.trainable = not phase.frozen
    if phase.frozen or not (params.model.pretrained and params.train.transfer.freeze_batchnorm):
        return
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def ema_momentum_for(requested: float, steps: int) -> float:
    """The weight-averaging momentum for a phase of ``steps`` optimizer steps.

    Keras starts the average at the initial weights, whose share after n steps is
    momentum**n. A short run (a small dataset, a quick experiment) would keep much of its
    random init, so the averaging window 1 / (1 - momentum) is capped at a tenth of the
    phase: the initial weights then weigh below e**-10.
    """
    if requested == 0:
        return 0.0
    return max(0.0, min(requested, 1.0 - 10.0 / max(steps, 1)))


def plan_phases(epochs: int, frozen_epochs: int) -> list[Phase]:
    """Heads-only epochs first (if any), then the fine-tuning (or from-scratch) epochs."""
    phases = []
    if frozen_epochs > 0:
        phases.append(Phase(0, frozen_epochs, frozen=True))
    if frozen_epochs < epochs:
        phases.append(Phase(frozen_epochs, epochs, frozen=False))
    return phases
