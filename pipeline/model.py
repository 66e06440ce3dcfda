"""The two-head localization model of the book: MobileNet features → class head + box head.

Input: RGB images as float32 in [0, 255], shape (size, size, 3). Preprocessing is part of
the model, so the saved model, `snackloc predict` and a served MLflow model all take plain
pixels. Outputs: ``class`` (softmax over the classes) and ``box`` (x_min, x_max, y_min, y_max,
normalized).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from pipeline.config import ModelParams
from pipeline.errors import UserError

# MobileNet v1 ImageNet weights exist only for these input sizes.
IMAGENET_SIZES = (128, 160, 192, 224)
SCRATCH_BN_MOMENTUM = 0.9


def build_backbone(params: ModelParams) -> keras.Model:
    """The MobileNet feature extractor (no top), random or ImageNet-initialised."""
    size = params.image_size
    weights = None if params.weights == "none" else "imagenet"
    if weights and size not in IMAGENET_SIZES:
        raise UserError(
            f"model.image_size={size} has no ImageNet MobileNet weights",
            hint=f"use one of {IMAGENET_SIZES}, or model.weights: none",
        )
    try:
        backbone = keras.applications.MobileNet(
            input_shape=(size, size, 3), alpha=params.alpha, include_top=False, weights=weights
        )
    except Exception as exc:  # network errors come in many types
        if weights is None:
            raise
        raise UserError(
            f"could not load ImageNet weights for MobileNet (alpha={params.alpha}): {exc}",
            hint="this host may be offline: copy the weights file into ~/.keras/models/ "
            "or set model.weights: none",
        ) from None
    if weights is None:
        # From random init the features move fast; BatchNorm's moving statistics must keep
        # up or inference (validation) collapses to one class. Keras' 0.99 lags too far
        # behind on a few hundred steps; 0.9 follows (measured: val accuracy 0.05 vs 0.23).
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    return backbone


def build_model(num_classes: int, params: ModelParams) -> keras.Model:
    """Backbone plus the book's two heads.

    class: GlobalAveragePooling → Dropout → Dense(num_classes, softmax)
    box:   Conv2D(filters, 3) → BatchNorm → ReLU → GlobalAveragePooling → Dense(4)
    """
    size = params.image_size
    image = keras.Input(shape=(size, size, 3), name="image", dtype="float32")
    # MobileNet expects [-1, 1].
    scaled = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(image)
    features = build_backbone(params)(scaled)

    pooled = layers.GlobalAveragePooling2D(name="class_pool")(features)
    pooled = layers.Dropout(params.dropout, name="class_dropout")(pooled)
    class_out = layers.Dense(num_classes, activation="softmax", name="class", dtype="float32")(
        pooled
    )

    x = layers.Conv2D(params.box_head_filters, 3, padding="same", name="box_conv")(features)
    x = layers.BatchNormalization(momentum=SCRATCH_BN_MOMENTUM, name="box_bn")(x)
    x = layers.ReLU(name="box_relu")(x)
    x = layers.GlobalAveragePooling2D(name="box_pool")(x)
    # Start from a centred box rather than a degenerate one at the origin.
    box_out = layers.Dense(
        4,
        name="box",
        dtype="float32",
        bias_initializer=keras.initializers.Constant([0.25, 0.75, 0.25, 0.75]),
    )(x)

    return keras.Model(image, {"class": class_out, "box": box_out}, name="snackloc")


class BoxMeanIoU(keras.metrics.Metric):
    """Mean IoU of predicted vs true boxes (x_min, x_max, y_min, y_max), clipped and ordered."""

    def __init__(self, name: str = "mean_iou", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        iou = box_iou(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32"))
        self.total.assign_add(ops.sum(iou))
        self.count.assign_add(ops.cast(ops.shape(iou)[0], "float32"))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self) -> None:
        self.total.assign(0.0)
        self.count.assign(0.0)


def box_iou(true, pred):
    """Backend-agnostic IoU per row; predictions are clipped to [0, 1] and re-ordered."""
    pred = ops.clip(pred, 0.0, 1.0)
    p_x0 = ops.minimum(pred[:, 0], pred[:, 1])
    p_x1 = ops.maximum(pred[:, 0], pred[:, 1])
    p_y0 = ops.minimum(pred[:, 2], pred[:, 3])
    p_y1 = ops.maximum(pred[:, 2], pred[:, 3])
    inter_w = ops.maximum(0.0, ops.minimum(true[:, 1], p_x1) - ops.maximum(true[:, 0], p_x0))
    inter_h = ops.maximum(0.0, ops.minimum(true[:, 3], p_y1) - ops.maximum(true[:, 2], p_y0))
    inter = inter_w * inter_h
    area_true = (true[:, 1] - true[:, 0]) * (true[:, 3] - true[:, 2])
    area_pred = (p_x1 - p_x0) * (p_y1 - p_y0)
    return ops.divide_no_nan(inter, area_true + area_pred - inter)


def compile_model(model: keras.Model, learning_rate: float, box_loss_weight: float) -> None:
    """Adam, sparse categorical cross-entropy + weighted MSE, as the book does."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss={"class": "sparse_categorical_crossentropy", "box": "mse"},
        loss_weights={"class": 1.0, "box": box_loss_weight},
        metrics={"class": ["accuracy"], "box": [BoxMeanIoU()]},
    )


def load_model(path) -> keras.Model:
    """Load a saved model for inference (safe mode on: no code runs from the file)."""
    return keras.saving.load_model(path, compile=False, safe_mode=True)
