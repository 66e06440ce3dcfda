"""Tiny models for tests that need a real Keras model (no fixtures): the two-head model
untrained, a detector with jittered weights.

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


def jitter_weights(model, seed: int = 0) -> None:
    """Move every weight as if trained a little (BatchNorm variances kept positive), so
    that outputs differ between images: an untrained model gives every image one answer,
    which any export or server would match."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = weight.numpy()
        noise = rng.normal(0, 0.3, value.shape).astype("float32")
        weight.assign(np.abs(value + noise) + 0.5 if "variance" in weight.path else value + noise)


def save_tiny_detector(
    folder: Path, classes: list[str], max_detections: int = 8, seed: int = 0
) -> tuple[Path, Path]:
    """A tiny detector (64 px: 4 × 4 cells) saved with its decoder, weights jittered
    (``jitter_weights``) so that images get different lists; (model.keras, classes.json)."""
    import keras

    from pipeline.core.config import DetectParams
    from pipeline.model.detect_decode import inference_model
    from pipeline.model.model import build_model

    keras.utils.set_random_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    params = TINY_MODEL.model_copy(update={"task": "detect", "image_size": 64})
    trained = build_model(len(classes), params)
    jitter_weights(trained, seed)
    _spread_the_heads(trained, seed)
    model = inference_model(trained, DetectParams(max_detections=max_detections))
    model_path, classes_path = folder / "model.keras", folder / "classes.json"
    model.save(model_path)
    classes_path.write_text(json.dumps({"classes": classes}))
    return model_path, classes_path


def _spread_the_heads(model, seed: int) -> None:
    """Rescale the detector's two 1×1 heads so that their pre-activations have mean -1 and
    standard deviation 1.5 on noise images: jittered weights alone saturate every score at
    1 and every box at the image's edges."""
    import keras
    import numpy as np

    features = keras.Model(model.inputs, model.get_layer("detect_class_logits").input)
    noise = np.random.default_rng(seed).uniform(0, 255, (8, *model.input_shape[1:]))
    x = np.asarray(features([noise.astype("float32")]))
    for name in ("detect_class_logits", "detect_shares"):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        before = x @ kernel[0, 0] + bias
        scale = 1.5 / before.std()
        layer.set_weights([kernel * scale, bias * scale - 1.0 - before.mean() * scale])


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
