"""The registered model as MLflow serves it: image bytes in, `snackloc predict`'s answers out.

A version is an MLflow pyfunc model (``ImageModel``) that holds the trained ``.keras`` file
and its class list (``classes.json``) as artifacts, so that ``mlflow models serve``
(and ``mlflow.pyfunc.load_model``) answer the way ``snackloc predict`` and ``snackloc
serve`` do (pipeline/model/answers.py). ``predict`` takes:

- images, one per row of an ``image`` column (``{"dataframe_records": [{"image": BASE64}]}``,
  ``dataframe_split``, or ``{"inputs": {"image": [BASE64, ...]}}``): base64 text or bytes of
  any format Pillow reads. Each gets its answer: class, probability, top-k, box (normalized
  and in pixels of the image as displayed), width, height, a detector's ``detections``, or
  ``error`` for an image that cannot be read (the others still run);
- pixel arrays ``{"inputs": [...]}``, (n, size, size, 3) in 0-255: the model's own outputs
  as arrays, as the versions logged with MLflow's tensorflow flavour answered.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pipeline.core.files import read_json
from pipeline.data.contract import decode_for_model
from pipeline.model.answers import Decoded, Predictor

IMAGE_COLUMN = "image"
KERAS, CLASSES = "keras", "classes"  # the artifact keys of the .keras file and classes.json
BATCH = 32


class ImageModel(mlflow.pyfunc.PythonModel):
    """The Keras model behind MLflow's pyfunc interface (see the module docstring)."""

    def load_context(self, context) -> None:
        """Load the Keras model artifact once per process."""
        from pipeline.model.model import input_size, load_model

        model = load_model(context.artifacts[KERAS])
        classes = read_json(Path(context.artifacts[CLASSES]))["classes"]
        self.predictor = Predictor(model, classes, input_size(model), "mlflow pyfunc")

    @property
    def model(self):
        """The Keras model (what ``registry.load_version`` hands out)."""
        return self.predictor.model

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        """Answers for images, or the model's outputs for pixel arrays. ``model_input`` is a
        DataFrame, a dict or an array as MLflow parsed the request: from a DataFrame hint
        MLflow infers no schema, so it converts nothing (a signature would refuse one form)."""
        images = image_column(model_input)
        if images is None:
            return self.predictor.outputs(np.asarray(model_input, dtype="float32"))
        answers = []
        for start in range(0, len(images), BATCH):
            chunk = images[start : start + BATCH]
            decoded = [decode_value(value, self.predictor.image_size) for value in chunk]
            names = [str(start + i) for i in range(len(chunk))]
            for result in self.predictor.answer(names, decoded):
                answers.append(result.to_dict())
        return answers


def image_column(model_input) -> list | None:
    """The encoded images of a request (its ``image`` column or key), None for pixels."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(f"expected a column {IMAGE_COLUMN!r} of base64 images")
        return model_input[IMAGE_COLUMN].tolist()
    if isinstance(model_input, dict):
        if IMAGE_COLUMN not in model_input:
            raise ValueError(f"expected the key {IMAGE_COLUMN!r}: a list of base64 images")
        return list(np.atleast_1d(model_input[IMAGE_COLUMN]))
    array = np.asarray(model_input)
    return list(array.ravel()) if array.dtype.kind in "OSU" else None


def decode_value(value, size: int) -> Decoded:
    """One image of a request decoded for the model, or why it cannot be."""
    try:
        data = value if isinstance(value, bytes) else base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError):
        return ValueError("not base64 text of an image file")
    try:
        return decode_for_model(io.BytesIO(data), size)
    except Exception as exc:  # whatever Pillow raises for bad bytes: that image's error
        return exc
