"""What the model answers for one image, as `snackloc predict`, `snackloc serve`, the
model `mlflow models serve` serves and the export check read it from the model's outputs:
class, probability, top-k and box (``Result``), and a detector's every object from its
``boxes``, ``scores``, ``classes`` and ``num_detections`` outputs (``detection_list``).

The saved detector has already run per-class non-maximum suppression with its own
``model.detect`` values (pipeline/model/detect_decode.py). A caller can ask for fewer
objects: a higher score threshold or a smaller maximum count filter that list. A threshold
below the model's own, or a count above it, cannot bring back what NMS dropped: the model's
values are the floor and the ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import UnidentifiedImageError

from pipeline.core.errors import UserError
from pipeline.data.boxes import clip_and_order, to_pixels

DETECTION_KEYS = ("class_name", "score", "box", "box_pixels")
TOP_K = 3  # classes listed with their probability
# one image decoded for the model: its pixels and displayed (width, height), or why not
Decoded = tuple[np.ndarray, tuple[int, int]] | Exception


@dataclass(frozen=True)
class Limits:
    """Which detections to list: score at least ``score_threshold``, at most
    ``max_detections`` of them (best first)."""

    score_threshold: float
    max_detections: int


def model_limits(model) -> Limits | None:
    """The score threshold and maximum count baked into a saved detector; None for a model
    without a detection decoder (the two-head model)."""
    from pipeline.model.detect_decode import decoder_of

    decoder = decoder_of(model)
    if decoder is None:
        return None
    return Limits(float(decoder.score_threshold), int(decoder.max_detections))


def choose_limits(
    baked: Limits | None,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    source: str = "the model",
) -> Limits | None:
    """The limits a caller asks for, the model's own where not given; a ``UserError`` for
    a value out of range or for limits asked of a model that lists no detections."""
    if baked is None:
        if score_threshold is not None or max_detections is not None:
            raise UserError(
                f"{source} answers one box per image: a score threshold or a maximum "
                "number of detections applies to a detector (model.task: detect)"
            )
        return None
    if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
        raise UserError(f"score threshold {score_threshold}: expected a number from 0 to 1")
    if max_detections is not None and max_detections < 1:
        raise UserError(f"maximum number of detections {max_detections}: expected 1 or more")
    return Limits(
        baked.score_threshold if score_threshold is None else score_threshold,
        baked.max_detections if max_detections is None else max_detections,
    )


def detection_list(
    classes: list[str],
    row: dict[str, np.ndarray],
    width: int,
    height: int,
    limits: Limits | None = None,
) -> list[dict[str, Any]]:
    """One image's detections, best first: class name, score, normalized box (x_min, x_max,
    y_min, y_max, clipped and ordered) and the box in pixels of the ``width``×``height``
    image. ``row``: that image's slice of each model output."""
    count = int(row["num_detections"])
    scores = np.asarray(row["scores"][:count], dtype="float64")
    keep = np.arange(count)
    if limits is not None:
        keep = keep[scores >= limits.score_threshold][: limits.max_detections]
    boxes = clip_and_order(np.asarray(row["boxes"][keep], dtype="float64").reshape(-1, 4))
    return [
        {
            "class_name": classes[int(row["classes"][i])],
            "score": round(float(scores[i]), 4),
            "box": [round(float(v), 4) for v in box],
            "box_pixels": to_pixels(box, width, height),
        }
        for i, box in zip(keep, boxes, strict=True)
    ]


def split_rows(out: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """A batch's named outputs as one dict per image (its slice of every output)."""
    names = list(out)
    return [dict(zip(names, values, strict=True)) for values in zip(*out.values(), strict=True)]


@dataclass(frozen=True)
class Predictor:
    """A loaded model with what is needed to feed it and name its outputs."""

    model: Any
    classes: list[str]
    image_size: int
    source: str
    # a detector's own score threshold and maximum count (None: the two-head model)
    limits: Limits | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        import tensorflow as tf

        object.__setattr__(self, "limits", model_limits(self.model))

        # One graph for every batch size (traced once): Keras' predict() builds a data
        # pipeline per call and predict_on_batch() retraces per shape, both costlier than
        # the model itself on small batches.
        spec = tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.float32)
        call = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])
        object.__setattr__(self, "_call", call)

    def outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every named output of the model, as it computes it, for a (n, size, size, 3)
        batch (a detector's lists too; what an export is checked on)."""
        out = self._call(np.asarray(batch, dtype="float32"))
        return {name: np.asarray(value) for name, value in out.items()}

    def answer(
        self,
        names: list[str],
        decoded: list[Decoded],
        top_k: int = TOP_K,
        limits: Limits | None = None,
    ) -> list[Result]:
        """One ``Result`` per image, in one model call: ``decoded`` holds each image's
        (pixels, (width, height)) or the exception that stopped its decode (its ``error``)."""
        results, loaded = [], []
        for name, item in zip(names, decoded, strict=True):
            result = Result(image=name)
            if isinstance(item, Exception):
                result.error = describe_error(item)
            else:
                result.width, result.height = item[1]
                loaded.append((result, item[0]))
            results.append(result)
        if loaded:
            out = self.outputs(np.stack([pixels for _, pixels in loaded]))
            for (result, _), row in zip(loaded, split_rows(out), strict=True):
                result.fill_outputs(self.classes, row, top_k, limits)
        return results

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities and clipped, ordered boxes of a (n, size, size, 3) batch."""
        out = self.outputs(batch)
        probs = np.asarray(out["class"], dtype="float64")
        return probs, clip_and_order(np.asarray(out["box"], dtype="float64"))


@dataclass
class Result:
    """The prediction for one image, or why there is none."""

    image: str
    class_name: str | None = None
    probability: float | None = None
    top: list[dict[str, Any]] | None = None  # the top-k classes: class_name, probability
    box: list[float] | None = None  # normalized x_min, x_max, y_min, y_max
    box_pixels: list[int] | None = None  # the same in pixels of the image as displayed
    width: int | None = None
    height: int | None = None
    drawn: str | None = None
    error: str | None = None
    # A detector's every object, best first: class_name, score, box, box_pixels.
    detections: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields it has, as JSON types: what serve and the registered model answer."""
        return {k: v for k, v in vars(self).items() if v is not None}

    def fill(
        self, classes: list[str], prob: np.ndarray, box: np.ndarray, top_k: int = TOP_K
    ) -> Result:
        """Set class, probability, top-k and box from one row of the model's outputs
        (``width`` and ``height`` set before, for the box in pixels)."""
        order = np.argsort(-prob, kind="stable")[: max(1, top_k)]
        self.class_name = classes[int(order[0])]
        self.probability = round(float(prob[order[0]]), 4)
        self.top = [
            {"class_name": classes[int(i)], "probability": round(float(prob[i]), 4)} for i in order
        ]
        self.box = [round(float(v), 4) for v in box]
        self.box_pixels = to_pixels(box, self.width, self.height)
        return self

    def fill_outputs(
        self,
        classes: list[str],
        row: dict[str, np.ndarray],
        top_k: int = TOP_K,
        limits: Limits | None = None,
    ) -> Result:
        """Set everything from one image's slice of the model's outputs (``split_rows``):
        class, top-k and box, and a detector's ``detections`` within ``limits``."""
        box = clip_and_order(np.asarray(row["box"], dtype="float64"))
        self.fill(classes, np.asarray(row["class"], dtype="float64"), box, top_k)
        if "num_detections" in row:  # a detector: every object as well
            self.detections = detection_list(classes, row, self.width, self.height, limits)
        return self


def describe_error(exc: Exception) -> str:
    """A short reason why an image could not be read."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read (unknown or corrupt format)"
    return f"cannot decode the image: {exc}"
