"""Which cell learns which box: the detector's per-cell targets (centre sampling, FCOS).

Ground truth comes from the loader as (batch, max_boxes, 5): x_min, x_max, y_min, y_max and
the class index, padded with class -1. A cell is a *candidate* for a box when

- its centre lies inside the box and within ``radius`` cells of the box centre (FCOS's
  centre sampling: the cells that see the middle of the object, not its corners), or
- it is the cell that holds the box centre (so that a box smaller than a cell still gets one).

Of a cell's candidates it learns the smallest box (FCOS's rule for overlapping objects);
a cell with none is background. Written with ``keras.ops``, so it runs inside the loss on
whatever batch arrives, augmented boxes included.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from pipeline.model.model import cell_centres

PAD_CLASS = -1  # the class of a padding row


def assign(gt, grid: tuple[int, int], radius: float, num_classes: int):
    """Per-cell targets of a batch of ground truth (module docstring).

    Returns (boxes (batch, cells, 4), classes one-hot (batch, cells, num_classes), zero rows
    for background, positive (batch, cells) as 0/1 floats).
    """
    gt = ops.cast(gt, "float32")
    boxes, labels = gt[..., :4], gt[..., 4]
    height, width = grid
    cx, cy = (ops.convert_to_tensor(c.astype("float32")) for c in cell_centres(height, width))
    cx, cy = cx[None, :, None], cy[None, :, None]  # (1, cells, 1) against (batch, 1, boxes)
    x0, x1, y0, y1 = (boxes[:, None, :, i] for i in range(4))
    gx, gy = (x0 + x1) / 2, (y0 + y1) / 2
    inside = (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
    near = (ops.abs(cx - gx) <= radius / width) & (ops.abs(cy - gy) <= radius / height)
    own = (ops.abs(cx - gx) <= 0.5 / width) & (ops.abs(cy - gy) <= 0.5 / height)
    valid = (labels >= 0)[:, None, :]
    candidate = ((inside & near) | own) & valid  # (batch, cells, boxes)
    area = (x1 - x0) * (y1 - y0)
    cost = ops.where(candidate, area, 2.0)  # larger than any normalized area
    pick = ops.one_hot(ops.argmin(cost, axis=-1), ops.shape(boxes)[1])  # (batch, cells, boxes)
    positive = ops.cast(ops.any(candidate, axis=-1), "float32")
    target_boxes = ops.einsum("bkm,bmd->bkd", pick, boxes)
    onehot = ops.one_hot(ops.cast(ops.maximum(labels, 0), "int32"), num_classes)
    target_classes = ops.einsum("bkm,bmc->bkc", pick, onehot) * positive[..., None]
    return target_boxes, target_classes, positive


def pad_boxes(boxes: np.ndarray, labels: np.ndarray, max_boxes: int) -> np.ndarray:
    """One image's boxes (n, 4) and class indices (n,) as the (max_boxes, 5) rows the loss
    reads: the largest ``max_boxes`` boxes, then padding rows of class -1."""
    out = np.zeros((max_boxes, 5), dtype="float32")
    out[:, 4] = PAD_CLASS
    areas = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
    keep = np.argsort(-areas, kind="stable")[:max_boxes]
    out[: len(keep), :4] = boxes[keep]
    out[: len(keep), 4] = labels[keep]
    return out
