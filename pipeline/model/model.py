"""The two-head localization model of the book: MobileNet features → class head + box head.

Input: RGB images as float32 in [0, 255], shape (size, size, 3). Preprocessing is part of
the model, so the saved model, `snackloc predict` and a served MLflow model all take plain
pixels. Outputs: ``class`` (softmax over the classes) and ``box`` (x_min, x_max, y_min, y_max,
normalized).
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import layers, ops

from pipeline.core.config import ModelParams
from pipeline.model.backbones import FAMILIES, SCRATCH_BN_MOMENTUM, build_backbone

# One class: the class head is a softmax over one unit, always 1.0 (right by definition).
warnings.filterwarnings(
    "ignore", message="You are using a softmax over axis -1 of a tensor of shape"
)


def build_model(num_classes: int, params: ModelParams) -> keras.Model:
    """Backbone plus two heads.

    class: GlobalAveragePooling → Dropout → Dense(num_classes, softmax)
    box:   Conv2D → BatchNorm → ReLU, then ``grid_box_head`` or ``pooled_box_head``
           (``model.box_head``)

    With ``model.task: detect``, the detector's training model instead (detect_head.py).
    """
    if params.task == "detect":
        from pipeline.model.detect_head import build_detector

        return build_detector(num_classes, params)
    image, features = image_features(params)
    pooled = layers.GlobalAveragePooling2D(name="class_pool")(features)
    pooled = layers.Dropout(params.dropout, name="class_dropout")(pooled)
    class_out = layers.Dense(num_classes, activation="softmax", name="class", dtype="float32")(
        pooled
    )

    x = layers.Conv2D(params.box_head_filters, 3, padding="same", name="box_conv")(features)
    x = layers.BatchNormalization(momentum=SCRATCH_BN_MOMENTUM, name="box_bn")(x)
    x = layers.ReLU(name="box_relu")(x)
    box_out = grid_box_head(x) if params.head == "grid" else pooled_box_head(x, params.box_output)
    return keras.Model(image, {"class": class_out, "box": box_out}, name="snackloc")


def image_features(params: ModelParams, stride16: bool = False) -> tuple:
    """The model's pixel input and the backbone's feature map of it (shared by every head);
    with ``stride16`` a third item, the backbone's last map at twice the final map's side
    (MobileNetV2's ``block_13_expand_relu``, v1's ``conv_pw_11_relu``: SSDLite's taps)."""
    size = params.image_size
    image = keras.Input(shape=(size, size, 3), name="image", dtype="float32")
    if FAMILIES[params.backbone].rescales_input:
        scaled = image  # MobileNetV3 rescales 0-255 pixels itself
    else:
        # MobileNet v1 and v2 expect [-1, 1].
        scaled = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(image)
    backbone = build_backbone(params)
    if not stride16:
        return image, backbone(scaled)
    side = backbone.output.shape[1]
    tap = [layer for layer in backbone.layers if layer.output.shape[1] == 2 * side][-1]
    # The same layers and weights with one more output: still the model's one nested model.
    taps = keras.Model(backbone.inputs, [backbone.output, tap.output], name=backbone.name)
    return image, *taps(scaled)


def cell_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalized (x, y) centres of the cells of a height x width grid, row by row."""
    centre_y, centre_x = np.meshgrid(
        (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij"
    )
    return centre_x.ravel(), centre_y.ravel()


def pooled_box_head(x, kind: str):
    """The book's box head after its Conv2D: global average pooling, then a Dense box.

    Pooling keeps what is in the image more than where: the box is read from an average over
    every position. From random init it does as well as the grid head; on pretrained
    features it fits the boxes of real photos worse (docs/training.md).
    """
    x = layers.GlobalAveragePooling2D(name="box_pool")(x)
    return box_output(x, kind)


def _fixed_dense(kernel: np.ndarray, name: str) -> layers.Dense:
    """A Dense layer that multiplies by the constant ``kernel`` (no bias, never trained)."""
    return layers.Dense(
        kernel.shape[1],
        use_bias=False,
        trainable=False,
        kernel_initializer=keras.initializers.Constant(kernel),
        name=name,
    )


def grid_box_head(x):
    """Every cell of the feature grid proposes a box around its own centre, with a score.

    The box is the mean of the proposals weighted by a softmax of the scores: the cells
    that see the object decide, and each one only has to measure the distances from its
    centre to the four edges (FCOS's box encoding, Tian et al. 2019; here the highest-scoring
    cells are averaged rather than picked, so it trains end to end with one box target).
    Each distance is a sigmoid share of the room between the centre and that image edge,
    so every proposal, and their mean, lies inside the image by construction. (A proposal
    clipped to the image instead gets no gradient once an edge is past the border: on small
    real sets of large objects training then stalls, or collapses to one constant box.)
    Built from stock layers: the cell centres and rooms are fixed kernels of Dense layers.
    Output: (x_min, x_max, y_min, y_max), always ordered.
    """
    height, width = x.shape[1], x.shape[2]
    cells = height * width
    score = layers.Conv2D(1, 1, name="box_score")(x)
    weights = layers.Softmax(name="box_attention")(
        layers.Reshape((cells,), name="box_scores")(score)
    )
    # Shares of the room to the left, right, top and bottom edges; half of it at the start.
    distances = layers.Conv2D(4, 1, activation="sigmoid", name="box_distances")(x)
    distances = layers.Reshape((cells, 4), name="box_distances_flat")(distances)
    centre_x, centre_y = cell_centres(height, width)
    centres = np.stack([centre_x, centre_x, centre_y, centre_y], 1)
    room = np.stack([centre_x, 1 - centre_x, centre_y, 1 - centre_y], 1)
    flat = layers.Reshape((cells * 4,), name="box_distances_vector")(distances)
    reach = _fixed_dense(np.diag(room.ravel()), "box_reach_of_room")(flat)
    reach = layers.Reshape((cells, 4), name="box_reach")(reach)
    mean_reach = layers.Dot(axes=1, name="box_mean_distances")([weights, reach])
    centre = _fixed_dense(centres, "box_centre")(weights)
    signed = _fixed_dense(np.diag([-1.0, 1.0, -1.0, 1.0]), "box_signed_distances")(mean_reach)
    box = layers.Add(name="box_unclipped")([centre, signed])
    return layers.ReLU(max_value=1.0, name="box", dtype="float32")(box)  # rounding guard only


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone sub-model of a two-head model (its one nested model)."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def feature_extractor(model: keras.Model) -> keras.Model:
    """Pixels → backbone features, sharing the model's layers (run it in inference mode)."""
    return keras.Model(model.inputs, model.get_layer("class_pool").input, name="features")


def heads_model(model: keras.Model) -> keras.Model:
    """The two heads alone, fed with backbone features; shares layers and weights with model.

    Training it on features from ``feature_extractor`` is training ``model`` with a frozen
    backbone (BatchNorm in inference mode), without running the backbone every step.
    """
    features = model.get_layer("class_pool").input  # the backbone's output in model's graph
    outputs = {name: model.get_layer(name).output for name in ("class", "box")}
    return keras.Model(features, outputs, name="heads")


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


def _overlap(true, pred):
    """Intersection, union and the ordered predicted corners (x0, x1, y0, y1) per row."""
    x0 = ops.minimum(pred[..., 0], pred[..., 1])
    x1 = ops.maximum(pred[..., 0], pred[..., 1])
    y0 = ops.minimum(pred[..., 2], pred[..., 3])
    y1 = ops.maximum(pred[..., 2], pred[..., 3])
    inter_w = ops.maximum(0.0, ops.minimum(true[..., 1], x1) - ops.maximum(true[..., 0], x0))
    inter_h = ops.maximum(0.0, ops.minimum(true[..., 3], y1) - ops.maximum(true[..., 2], y0))
    inter = inter_w * inter_h
    area_true = (true[..., 1] - true[..., 0]) * (true[..., 3] - true[..., 2])
    union = area_true + (x1 - x0) * (y1 - y0) - inter
    return inter, union, (x0, x1, y0, y1)


def box_iou(true, pred):
    """Backend-agnostic IoU per row; predictions are clipped to [0, 1] and re-ordered."""
    inter, union, _ = _overlap(true, ops.clip(pred, 0.0, 1.0))
    return ops.divide_no_nan(inter, union)


def box_output(x, kind: str):
    """The box head's last layer, named ``box``: (x_min, x_max, y_min, y_max).

    "sigmoid": four sigmoid units, each coordinate pair ordered with Minimum/Maximum, so
    every prediction is a valid box inside the image. Built from stock layers only, so the
    saved model loads in Keras' safe mode and in MLflow without custom code.
    "linear": the book's Dense(4), started from a centred box.
    """
    if kind == "linear":
        centred = keras.initializers.Constant([0.25, 0.75, 0.25, 0.75])
        return layers.Dense(4, name="box", dtype="float32", bias_initializer=centred)(x)
    units = [
        layers.Dense(
            1,
            activation="sigmoid",
            dtype="float32",
            name=f"box_{name}",
            bias_initializer=keras.initializers.Constant(bias),
        )(x)
        for name, bias in (("x_a", -1.1), ("x_b", 1.1), ("y_a", -1.1), ("y_b", 1.1))
    ]  # biases ±1.1 start near the centred box (0.25, 0.75)
    coords = [
        layers.Minimum(name="box_x_min", dtype="float32")(units[:2]),
        layers.Maximum(name="box_x_max", dtype="float32")(units[:2]),
        layers.Minimum(name="box_y_min", dtype="float32")(units[2:]),
        layers.Maximum(name="box_y_max", dtype="float32")(units[2:]),
    ]
    return layers.Concatenate(name="box", dtype="float32")(coords)


def giou_loss(y_true, y_pred):
    """1 - generalized IoU per box (Rezatofighi et al. 2019); 0 for a perfect box."""
    true = ops.cast(y_true, "float32")
    inter, union, (x0, x1, y0, y1) = _overlap(true, ops.cast(y_pred, "float32"))
    hull = (ops.maximum(true[:, 1], x1) - ops.minimum(true[:, 0], x0)) * (
        ops.maximum(true[:, 3], y1) - ops.minimum(true[:, 2], y0)
    )
    iou = ops.divide_no_nan(inter, union)
    return 1.0 - (iou - ops.divide_no_nan(hull - union, hull))


def giou_l1_loss(y_true, y_pred):
    """GIoU loss plus the mean absolute coordinate error (as DETR combines them)."""
    l1 = ops.mean(ops.abs(ops.cast(y_true, "float32") - ops.cast(y_pred, "float32")), axis=-1)
    return giou_loss(y_true, y_pred) + l1


BOX_LOSSES = {"mse": "mse", "giou": giou_loss, "giou_l1": giou_l1_loss}


def class_loss(label_smoothing: float = 0.0):
    """Sparse cross-entropy; with smoothing, the target puts ``label_smoothing`` of its mass
    uniformly over all classes (Szegedy et al. 2016), which keeps logits from growing without
    bound on a small training set."""
    if label_smoothing == 0:
        return "sparse_categorical_crossentropy"

    def smoothed_crossentropy(y_true, y_pred):
        classes = ops.shape(y_pred)[-1]
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), classes)
        return keras.losses.categorical_crossentropy(
            onehot, y_pred, label_smoothing=label_smoothing
        )

    return smoothed_crossentropy


def compile_model(
    model: keras.Model,
    learning_rate: float,
    box_loss_weight: float,
    box_loss: str = "mse",
    weight_decay: float = 0.0,
    jit_compile: bool | str = "auto",
    run_eagerly: bool = False,
    label_smoothing: float = 0.0,
    ema_momentum: float = 0.0,
    clip_norm: float = 0.0,
) -> None:
    """Cross-entropy for the class, the chosen box loss (weighted), Adam or AdamW.

    The book's recipe is box_loss="mse", box_loss_weight=10, weight_decay=0 (Adam), no label
    smoothing, no weight averaging. ``ema_momentum`` > 0 keeps an exponential moving average
    of the weights, which fit() copies into the model when it ends; ``clip_norm`` > 0 clips
    each step's gradients to that global norm.
    ``jit_compile`` (XLA) and ``run_eagerly`` come from pipeline/model/hardware.py. Also compiles a
    ``heads_model``.
    """
    # One class leaves nothing to smooth (and Keras warns about a one-unit cross-entropy).
    smoothing = label_smoothing if model.get_layer("class").units > 1 else 0.0
    model.compile(
        optimizer=make_optimizer(learning_rate, weight_decay, ema_momentum, clip_norm),
        loss={"class": class_loss(smoothing), "box": BOX_LOSSES[box_loss]},
        loss_weights={"class": 1.0, "box": box_loss_weight},
        metrics={
            # Named: Keras' "accuracy" picks binary accuracy for a one-unit output.
            "class": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            "box": [BoxMeanIoU()],
        },
        jit_compile=jit_compile,
        run_eagerly=run_eagerly,
    )


def make_optimizer(
    learning_rate: float, weight_decay: float, ema_momentum: float, clip_norm: float = 0.0
):
    """AdamW (decoupled weight decay) when ``weight_decay`` > 0, else Adam (the book); with a
    moving average of the weights when ``ema_momentum`` > 0 and gradients clipped to a global
    norm when ``clip_norm`` > 0."""
    options = {
        "use_ema": ema_momentum > 0,
        "ema_momentum": ema_momentum or 0.99,
        "global_clipnorm": clip_norm or None,
    }
    if weight_decay > 0:
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **options)
    return keras.optimizers.Adam(learning_rate, **options)


def load_model(path) -> keras.Model:
    """Load a saved model for inference (safe mode on: no code runs from the file)."""
    from pipeline.model import detect_decode  # noqa: F401  registers the detector's layers

    return keras.saving.load_model(path, compile=False, safe_mode=True)


def input_size(model: keras.Model) -> int:
    """The side of the square images a model takes: once a model is trained, the one source
    of its image size (evaluation, registration and predict read it here)."""
    return int(model.input_shape[1])
