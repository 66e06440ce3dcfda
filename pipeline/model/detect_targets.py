"""Which cell learns which box: the detector's per-cell targets.

Ground truth comes from the loader as (batch, max_boxes, 5): x_min, x_max, y_min, y_max and
the class index, padded with class -1. Two rules (``model.detect.assigner``):

- ``centre`` (FCOS's centre sampling): a cell learns a box when its centre lies inside the
  box and within ``radius`` cells of the box centre (the cells that see the middle of the
  object, not its corners), or holds the box centre (so that a box smaller than a cell
  still gets one); of several, the smallest box (FCOS's rule for overlapping objects).
- ``aligned`` (TOOD's task alignment): of the cells inside a box, the few whose current
  predictions fit it best in class score and IoU (``aligned_assign``).

A cell with no box is background. Written with ``keras.ops``, so it runs inside the loss on
whatever batch arrives, augmented boxes included.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from pipeline.model.model import box_iou, cell_centres

PAD_CLASS = -1  # the class of a padding row
ALIGN_ALPHA, ALIGN_BETA = 1.0, 6.0  # TOOD's weights of score and IoU in the alignment


def _candidates(boxes, labels, grid: tuple[int, int], radius: float | None):
    """(batch, cells, boxes) booleans: the cells whose centre lies inside a box (within
    ``radius`` cells of its centre unless None), and the cell that holds each box centre."""
    height, width = grid
    cx, cy = (ops.convert_to_tensor(c.astype("float32")) for c in cell_centres(height, width))
    cx, cy = cx[None, :, None], cy[None, :, None]  # (1, cells, 1) against (batch, 1, boxes)
    x0, x1, y0, y1 = (boxes[:, None, :, i] for i in range(4))
    gx, gy = (x0 + x1) / 2, (y0 + y1) / 2
    inside = (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
    if radius is not None:
        near = (ops.abs(cx - gx) <= radius / width) & (ops.abs(cy - gy) <= radius / height)
        inside = inside & near
    own = (ops.abs(cx - gx) <= 0.5 / width) & (ops.abs(cy - gy) <= 0.5 / height)
    return (inside | own) & (labels >= 0)[:, None, :]


def _onehot(labels, num_classes: int):
    """(batch, boxes, num_classes) one-hot classes; padding rows read as class 0."""
    return ops.one_hot(ops.cast(ops.maximum(labels, 0), "int32"), num_classes)


def _targets(pick, positive, boxes, onehot):
    """Each cell's target box and one-hot class from ``pick`` (batch, cells, boxes)."""
    target_boxes = ops.einsum("bkm,bmd->bkd", pick, boxes)
    target_classes = ops.einsum("bkm,bmc->bkc", pick, onehot) * positive[..., None]
    return target_boxes, target_classes


def assign(gt, grid: tuple[int, int], radius: float, num_classes: int):
    """Per-cell targets of a batch of ground truth by centre sampling (module docstring).

    Returns (boxes (batch, cells, 4), classes one-hot (batch, cells, num_classes), zero rows
    for background, positive (batch, cells) as 0/1 floats).
    """
    gt = ops.cast(gt, "float32")
    boxes, labels = gt[..., :4], gt[..., 4]
    candidate = _candidates(boxes, labels, grid, radius)
    area = ((boxes[..., 1] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 2]))[:, None, :]
    cost = ops.where(candidate, area, 2.0)  # larger than any normalized area
    pick = ops.one_hot(ops.argmin(cost, axis=-1), ops.shape(boxes)[1])  # (batch, cells, boxes)
    positive = ops.cast(ops.any(candidate, axis=-1), "float32")
    return (*_targets(pick, positive, boxes, _onehot(labels, num_classes)), positive)


def aligned_assign(gt, pred_boxes, logits, grid: tuple[int, int], topk: int):
    """Per-cell targets by task alignment (TOOD, Feng et al. 2021; YOLOv8's assigner).

    Of the cells inside a box (and the one holding its centre), the ``topk`` whose current
    prediction aligns best with it, score^1 x IoU^6, learn it: a large object gets the cells
    that already see it well, wherever they are, a small one the few it has. A cell picked
    by several boxes learns the one it aligns with best. Returns ``assign``'s boxes and
    positive, and soft class targets: each cell's alignment scaled so that the box's best
    cell gets the best IoU among its cells (the quality its score should estimate).
    """
    gt = ops.cast(gt, "float32")
    boxes, labels = gt[..., :4], gt[..., 4]
    candidate = _candidates(boxes, labels, grid, None)
    onehot = _onehot(labels, logits.shape[-1])
    score = ops.einsum("bkc,bmc->bkm", ops.sigmoid(logits), onehot)
    iou = box_iou(boxes[:, None, :, :], pred_boxes[:, :, None, :])  # (batch, cells, boxes)
    metric = ops.stop_gradient(score**ALIGN_ALPHA * iou**ALIGN_BETA)
    metric = ops.where(candidate, metric, 0.0)
    kth = ops.top_k(ops.transpose(metric, (0, 2, 1)), topk)[0][..., -1]  # (batch, boxes)
    top = (metric >= kth[:, None, :]) & (metric > 0)
    chosen = candidate & (top | _best_cell(candidate, metric))
    pick = ops.one_hot(ops.argmax(ops.where(chosen, metric, -1.0), axis=-1), ops.shape(boxes)[1])
    positive = ops.cast(ops.any(chosen, axis=-1), "float32")
    best_metric = ops.max(ops.where(chosen, metric, 0.0), axis=1, keepdims=True)
    best_iou = ops.max(ops.where(chosen, ops.stop_gradient(iou), 0.0), axis=1, keepdims=True)
    quality = ops.sum(pick * ops.divide_no_nan(metric * best_iou, best_metric), axis=-1)
    target_boxes, target_classes = _targets(pick, positive, boxes, onehot)
    return target_boxes, target_classes * quality[..., None], positive


def _best_cell(candidate, metric):
    """The best candidate cell of each box, so that no box goes without one."""
    best = ops.argmax(ops.where(candidate, metric, -1.0), axis=1)  # (batch, boxes)
    return ops.transpose(ops.one_hot(best, ops.shape(metric)[1]), (0, 2, 1)) > 0


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
