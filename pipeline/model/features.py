"""Backbone features of a dataset, computed once: training the heads on them is training
with a frozen backbone without running it every step (the frozen phase with
``train.cache_features``, the review's out-of-fold heads)."""

from __future__ import annotations

import keras
import numpy as np

from pipeline.model.loader import ImageBatches, SnackDataset
from pipeline.model.model import feature_extractor


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
