"""A tiny untrained two-head model for tests that need a real Keras model (no fixtures).

Import from a test module as ``from helpers_model import save_tiny_model``.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers_tiny import TINY_MODEL

from pipeline.core.config import ModelParams


def save_tiny_model(folder: Path, classes: list[str], seed: int = 0) -> tuple[Path, Path]:
    """Build, save and return (model.keras, classes.json) in ``folder``."""
    import keras

    from pipeline.model.model import build_model

    keras.utils.set_random_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    model_path, classes_path = folder / "model.keras", folder / "classes.json"
    build_model(len(classes), TINY_MODEL).save(model_path)
    classes_path.write_text(json.dumps({"classes": classes}))
    return model_path, classes_path


def save_tiny_backbone(folder: Path, seed: int = 1) -> ModelParams:
    """A "pretrained" tiny backbone: its weights saved to a file, and the model params that
    start from it (so that the transfer recipe applies)."""
    import keras

    from pipeline.model.backbones import new_backbone

    keras.utils.set_random_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "backbone.weights.h5"
    new_backbone(TINY_MODEL, weights=None).save_weights(path)
    return TINY_MODEL.model_copy(update={"weights": str(path)})
