"""The detector's loss: sigmoid focal loss on every cell's classes, GIoU + L1 on the boxes
of the cells that learn one (detect_targets.py), both divided by the batch's positive cells.

Focal loss (Lin et al. 2017) down-weights the many easy background cells; the box terms are
the two-head model's ``giou_l1_loss`` (model.py), applied per cell. With ``class_target:
iou`` the class target of a positive cell is the IoU of its predicted box with its target
box (not differentiated), under quality focal loss (Li et al. 2020, GFL): a cell's score then
estimates how well its box fits, and non-maximum suppression keeps the better-placed box.
"""

from __future__ import annotations

import keras
from keras import ops

from pipeline.core.config import DetectParams
from pipeline.model.detect_head import CELLS
from pipeline.model.detect_targets import aligned_assign, assign
from pipeline.model.model import box_iou, giou_l1_loss, make_optimizer

FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0  # RetinaNet's values
QUALITY_BETA = 2.0  # GFL's value


def focal_loss(targets, logits):
    """Sigmoid focal loss per element (targets 0/1, same shape as logits)."""
    ce = ops.binary_crossentropy(targets, logits, from_logits=True)
    p = ops.sigmoid(logits)
    p_t = targets * p + (1 - targets) * (1 - p)
    alpha_t = targets * FOCAL_ALPHA + (1 - targets) * (1 - FOCAL_ALPHA)
    return alpha_t * (1 - p_t) ** FOCAL_GAMMA * ce


def quality_focal_loss(targets, logits):
    """Quality focal loss per element (GFL): targets are soft scores in [0, 1]."""
    ce = ops.binary_crossentropy(targets, logits, from_logits=True)
    return ops.abs(targets - ops.sigmoid(logits)) ** QUALITY_BETA * ce


def detection_loss(
    grid: tuple[int, int],
    radius: float,
    box_weight: float,
    class_target: str = "onehot",
    assigner: str = "centre",
    topk: int = 9,
):
    """Loss function of the ``cells`` output against (batch, max_boxes, 5) ground truth.

    Per image: its summed cell losses x batch size / positive cells of the batch, so that
    Keras' mean over the batch is the sum over the batch divided by its positives (FCOS).
    With ``assigner: aligned`` (detect_targets.aligned_assign) the class targets are the
    cells' alignment qualities, which also weight their box terms, and the sum of those
    qualities divides instead (YOLOv8).
    """

    def loss(y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        boxes, logits = y_pred[..., :4], y_pred[..., 4:]
        if assigner == "aligned":
            target_boxes, target_classes, positive = aligned_assign(
                y_true, boxes, logits, grid, topk
            )
            weight = ops.sum(target_classes, axis=-1)  # each positive cell's quality
        else:
            target_boxes, target_classes, positive = assign(y_true, grid, radius, logits.shape[-1])
            weight = positive
        flat_targets, flat_boxes = ops.reshape(target_boxes, (-1, 4)), ops.reshape(boxes, (-1, 4))
        if class_target == "iou" and assigner != "aligned":
            fit = ops.stop_gradient(box_iou(flat_targets, flat_boxes))
            target_classes = target_classes * ops.reshape(fit, ops.shape(positive))[..., None]
        if class_target == "iou" or assigner == "aligned":
            classes = ops.sum(quality_focal_loss(target_classes, logits), axis=(1, 2))
        else:
            classes = ops.sum(focal_loss(target_classes, logits), axis=(1, 2))
        per_cell = giou_l1_loss(flat_targets, flat_boxes)
        box = ops.sum(ops.reshape(per_cell, ops.shape(positive)) * weight, axis=1)
        batch = ops.cast(ops.shape(positive)[0], "float32")
        return (classes + box_weight * box) * batch / ops.maximum(ops.sum(weight), 1.0)

    return loss


def compile_detector(
    model: keras.Model,
    grid: tuple[int, int],
    detect: DetectParams,
    learning_rate: float,
    weight_decay: float = 0.0,
    jit_compile: bool | str = "auto",
    run_eagerly: bool = False,
    ema_momentum: float = 0.0,
    clip_norm: float = 0.0,
) -> None:
    """The detector's counterpart of ``model.compile_model``: the same optimizer, its loss."""
    loss = detection_loss(
        grid,
        detect.center_radius,
        detect.box_loss_weight,
        detect.class_target,
        detect.assigner,
        detect.topk,
    )
    model.compile(
        optimizer=make_optimizer(learning_rate, weight_decay, ema_momentum, clip_norm),
        loss={CELLS: loss},
        jit_compile=jit_compile,
        run_eagerly=run_eagerly,
    )
