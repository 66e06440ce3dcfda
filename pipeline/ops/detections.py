"""A detector's every object, as `snackloc predict`, `snackloc serve` and the export check
read it from the model's ``boxes``, ``scores``, ``classes`` and ``num_detections`` outputs.

The saved detector has already run per-class non-maximum suppression with its own
``model.detect`` values (pipeline/model/detect_decode.py). A caller can ask for fewer
objects: a higher score threshold or a smaller maximum count filter that list. A threshold
below the model's own, or a count above it, cannot bring back what NMS dropped: the model's
values are the floor and the ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.errors import UserError
from pipeline.data.boxes import clip_and_order
from pipeline.evaluation.drawing import to_pixels

DETECTION_KEYS = ("class_name", "score", "box", "box_pixels")


@dataclass(frozen=True)
class Limits:
    """Which detections to list: score at least ``score_threshold``, at most
    ``max_detections`` of them (best first)."""

    score_threshold: float
    max_detections: int


def model_limits(model) -> Limits | None:
    """The score threshold and maximum count baked into a saved detector; None for a model
    without a detection decoder (the two-head model)."""
    from pipeline.model.detect_decode import DetectionDecoder

    for layer in model.layers:
        if isinstance(layer, DetectionDecoder):
            return Limits(float(layer.score_threshold), int(layer.max_detections))
    return None


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
