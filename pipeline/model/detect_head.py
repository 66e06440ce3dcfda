"""The detector's head: every cell of the feature grid predicts class scores and a box.

An anchor-free per-cell head in the FCOS line (Tian et al. 2019): a Conv2D 3x3 on the
backbone's feature map, then upsampled once (stride 16: a 128 px image gives an 8 x 8 grid,
so that two objects side by side fall in different cells; ``detect.conv_stride: 16``
upsamples before the Conv2D, at four times its multiply-adds), with the backbone's own
stride-16 map added (``detect.lateral``: FPN's lateral connection, so that neighbouring
cells see more than one interpolated stride-32 view), and each cell predicts

- one logit per class (sigmoid, not softmax: a cell may see no object at all), and
- the distances from its centre to the box's left, right, top and bottom edges, each a
  sigmoid share of the room between the centre and that image edge (as the grid box head
  of the two-head model does), so every box lies inside the image by construction.

The training model outputs ``cells``: (batch, cells, 4 + classes), the decoded boxes
(x_min, x_max, y_min, y_max) then the class logits. Targets and loss: detect_targets.py and
detect_loss.py; the saved model adds non-maximum suppression (detect_decode.py).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from pipeline.core.config import ModelParams
from pipeline.model.backbones import SCRATCH_BN_MOMENTUM
from pipeline.model.model import cell_centres, image_features

CELLS = "cells"  # the training model's one output
PRIOR = 0.01  # initial class probability of every cell (RetinaNet's prior: a calm start)


def decode_shares(shares, centres):
    """Boxes (x_min, x_max, y_min, y_max) from each cell's shares of the room to the image
    edges (left, right, top, bottom); ``centres`` is (cells, 2) normalized (x, y)."""
    cx, cy = centres[:, 0], centres[:, 1]
    return ops.stack(
        [
            cx - shares[..., 0] * cx,
            cx + shares[..., 1] * (1 - cx),
            cy - shares[..., 2] * cy,
            cy + shares[..., 3] * (1 - cy),
        ],
        axis=-1,
    )


def encode_shares(boxes: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The inverse of ``decode_shares``: the shares that give ``boxes`` (cells, 4) from
    ``centres`` (cells, 2). Defined for a centre inside its box."""
    cx, cy = centres[:, 0], centres[:, 1]
    return np.stack(
        [
            (cx - boxes[:, 0]) / cx,
            (boxes[:, 1] - cx) / (1 - cx),
            (cy - boxes[:, 2]) / cy,
            (boxes[:, 3] - cy) / (1 - cy),
        ],
        axis=-1,
    )


@keras.saving.register_keras_serializable(package="snackloc")
class CellBoxes(layers.Layer):
    """Shares (batch, h, w, 4) → boxes (batch, h * w, 4) around the cell centres."""

    def call(self, shares):
        height, width = shares.shape[1], shares.shape[2]
        centres = np.stack(cell_centres(height, width), axis=1).astype("float32")
        flat = ops.reshape(ops.cast(shares, "float32"), (-1, height * width, 4))
        return decode_shares(flat, ops.convert_to_tensor(centres))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] * input_shape[2], 4)


def build_detector(num_classes: int, params: ModelParams) -> keras.Model:
    """Backbone → Conv2D, BatchNorm, ReLU → upsample x2 (``detect.conv_stride`` 16: before
    the Conv2D) → plus the backbone's stride-16 map (``detect.lateral``) → per-cell class
    logits and box.

    Output ``cells``: (batch, cells, 4 + num_classes), see the module docstring.
    """
    image, x, *stride16 = image_features(params, stride16=params.detect.lateral)
    upsample = layers.UpSampling2D(2, interpolation="bilinear", name="detect_upsample")
    if params.detect.conv_stride == 16:
        x = upsample(x)
    x = layers.Conv2D(params.box_head_filters, 3, padding="same", name="detect_conv")(x)
    x = layers.BatchNormalization(momentum=SCRATCH_BN_MOMENTUM, name="detect_bn")(x)
    x = layers.ReLU(name="detect_relu")(x)
    if params.detect.conv_stride == 32:
        x = upsample(x)
    if stride16:
        x = lateral(x, stride16[0])
    logits = layers.Conv2D(
        num_classes,
        1,
        name="detect_class_logits",
        bias_initializer=keras.initializers.Constant(-math.log((1 - PRIOR) / PRIOR)),
    )(x)
    shares = layers.Conv2D(4, 1, activation="sigmoid", name="detect_shares")(x)
    cells = logits.shape[1] * logits.shape[2]
    boxes = CellBoxes(name="detect_boxes", dtype="float32")(shares)
    logits = layers.Reshape((cells, num_classes), name="detect_logits_flat")(logits)
    logits = layers.Activation("linear", dtype="float32", name="detect_logits32")(logits)
    out = layers.Concatenate(name=CELLS, dtype="float32")([boxes, logits])
    return keras.Model(image, {CELLS: out}, name="snackloc_detector")


def lateral(x, stride16):
    """FPN's lateral connection: ``stride16`` through a Conv2D 1x1 and BatchNorm, added to
    the head's map ``x`` of the same grid, then ReLU."""
    side = layers.Conv2D(x.shape[-1], 1, name="detect_lateral")(stride16)
    side = layers.BatchNormalization(momentum=SCRATCH_BN_MOMENTUM, name="detect_lateral_bn")(side)
    return layers.ReLU(name="detect_merge_relu")(layers.Add(name="detect_merge")([x, side]))


def is_detector(model: keras.Model) -> bool:
    """True for the detector (its training form or its saved form)."""
    return any(layer.name == "detect_shares" for layer in model.layers)


def grid_of(model: keras.Model) -> tuple[int, int]:
    """The detector's grid: (height, width) in cells."""
    shape = model.get_layer("detect_shares").output.shape
    return int(shape[1]), int(shape[2])
