"""Out-of-fold predictions on the training images, for the label review.

A model fit to the train split agrees with that split's mistakes, so its own predictions
there are no evidence against a label. K full trainings would be honest but cost k times
the train stage. The cheap middle: the trained backbone's features are computed once, and
for each fold fresh heads (the model's own, newly initialized) train on the other folds'
features and predict the held-out one. The heads never see the labels they judge; the
backbone did, so a label it has memorized can still hide (docs/review.md measures what this
finds).
"""

from __future__ import annotations

import keras
import numpy as np

from pipeline.model.features import backbone_features, targets
from pipeline.model.loader import SnackDataset
from pipeline.model.model import compile_model, heads_model


def fold_of(count: int, folds: int, seed: int) -> np.ndarray:
    """The fold of each of ``count`` samples: a seeded shuffle cut into ``folds`` parts."""
    order = np.random.default_rng(seed).permutation(count)
    fold = np.empty(count, dtype="int64")
    fold[order] = np.arange(count) % folds
    return fold


def out_of_fold(
    model: keras.Model,
    ds: SnackDataset,
    folds: int,
    epochs: int,
    seed: int,
    loss: dict[str, float | str],
) -> dict[str, np.ndarray]:
    """Class probabilities and boxes for every sample of ``ds`` (unaugmented, in order), each
    predicted by heads that did not train on it. ``loss``: the training's learning_rate,
    box_loss_weight and box_loss (``compile_model``'s arguments)."""
    features = backbone_features(model, ds)
    wanted = targets(ds)
    fold = fold_of(len(features), folds, seed)
    shapes = {name: tensor.shape[-1] for name, tensor in heads_model(model).output.items()}
    out = {name: np.zeros((len(features), width), "float64") for name, width in shapes.items()}
    for k in range(folds):
        held, rest = fold == k, fold != k
        keras.utils.set_random_seed(seed + k)
        heads = heads_model(keras.models.clone_model(model))  # fresh weights, same layers
        compile_model(heads, **loss)
        heads.fit(
            features[rest],
            {name: value[rest] for name, value in wanted.items()},
            batch_size=ds.batch_size,
            epochs=epochs,
            shuffle=True,
            verbose=0,
        )
        predicted = heads(features[held], training=False)  # no predict(): no retracing
        for name in out:
            out[name][held] = keras.ops.convert_to_numpy(predicted[name])
    return out
