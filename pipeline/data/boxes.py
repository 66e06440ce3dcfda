"""Box geometry shared by every stage.

Boxes are arrays of shape ``(..., 4)`` in the column order of the data contract:
``(x_min, x_max, y_min, y_max)`` — not the ``(x_min, y_min, x_max, y_max)`` most libraries use.
Coordinates are normalized to [0, 1], so there is no "+1 pixel" term anywhere.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

X_MIN, X_MAX, Y_MIN, Y_MAX = range(4)


def _as_boxes(boxes: ArrayLike) -> np.ndarray:
    """Boxes as a float64 array, checking the last axis holds the 4 coordinates."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.shape[-1:] != (4,):
        raise ValueError(
            f"boxes need a last axis of 4 (x_min, x_max, y_min, y_max), got shape {array.shape}"
        )
    return array


def area(boxes: ArrayLike) -> np.ndarray:
    """Area of each box; inverted or degenerate boxes have area 0 (never negative)."""
    b = _as_boxes(boxes)
    width = np.clip(b[..., X_MAX] - b[..., X_MIN], 0.0, None)
    height = np.clip(b[..., Y_MAX] - b[..., Y_MIN], 0.0, None)
    return width * height


def clip_and_order(boxes: ArrayLike) -> np.ndarray:
    """Clip coordinates to [0, 1] and swap min/max where a box is inverted.

    Predicted boxes go through this before scoring, so a model that outputs x_max < x_min
    is scored on the box it describes rather than on a zero-area box.
    """
    b = np.clip(_as_boxes(boxes), 0.0, 1.0)
    out = np.empty_like(b)
    out[..., X_MIN] = np.minimum(b[..., X_MIN], b[..., X_MAX])
    out[..., X_MAX] = np.maximum(b[..., X_MIN], b[..., X_MAX])
    out[..., Y_MIN] = np.minimum(b[..., Y_MIN], b[..., Y_MAX])
    out[..., Y_MAX] = np.maximum(b[..., Y_MIN], b[..., Y_MAX])
    return out


def iou(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Intersection over union of boxes ``a`` and ``b``, broadcast over the leading axes.

    0 when the boxes do not overlap (touching edges included) and when both have zero area.
    For a pairwise matrix pass ``a[:, None]`` and ``b[None, :]``.
    """
    a, b = _as_boxes(a), _as_boxes(b)
    inter_w = np.minimum(a[..., X_MAX], b[..., X_MAX]) - np.maximum(a[..., X_MIN], b[..., X_MIN])
    inter_h = np.minimum(a[..., Y_MAX], b[..., Y_MAX]) - np.maximum(a[..., Y_MIN], b[..., Y_MIN])
    intersection = np.clip(inter_w, 0.0, None) * np.clip(inter_h, 0.0, None)
    union = area(a) + area(b) - intersection
    # Divide only where the union is positive: zero-area pairs score 0, without a warning.
    result = np.zeros_like(union)
    np.divide(intersection, union, out=result, where=union > 0)
    return np.clip(result, 0.0, 1.0)


def to_pixels(box: ArrayLike, width: int, height: int) -> list[int]:
    """A normalized (x_min, x_max, y_min, y_max) box in pixels of a width×height image."""
    scale = np.array([width, width, height, height], dtype="float64")
    return np.rint(np.asarray(box, dtype="float64") * scale).astype(int).tolist()
