"""The detector's final answer, inside the saved model: per-class non-maximum suppression.

Hand-written on ``tf.image.combined_non_max_suppression`` (TensorFlow itself): keras-hub's
``NonMaxSuppression`` layer does the same but would add keras-hub and the tokenizer packages
it imports (tensorflow-text, sentencepiece, huggingface-hub) to the lock for one layer, and
Keras 3.15 has no NMS op. The layer works on the TensorFlow backend, the project's one.

The saved detector answers, per image:

- ``boxes`` (max_detections, 4) as (x_min, x_max, y_min, y_max), ``scores``, ``classes``
  (index, -1 past the end) and ``num_detections``: every object, best first;
- ``class`` (per-class best cell score, normalized) and ``box`` (the best cell's box): the
  one-box answer of the two-head model, so that everything that reads a two-head model
  (evaluate's book metrics, predict, serve, review) reads the detector too.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from pipeline.core.config import DetectParams
from pipeline.model.detect_head import CELLS

DETECTION_OUTPUTS = ("boxes", "scores", "classes", "num_detections")


@keras.saving.register_keras_serializable(package="snackloc")
class DetectionDecoder(layers.Layer):
    """``cells`` (batch, cells, 4 + classes) → the detections of the module docstring."""

    def __init__(
        self, max_detections: int, score_threshold: float, iou_threshold: float, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.max_detections = max_detections
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold

    def call(self, cells):
        import tensorflow as tf

        cells = ops.cast(cells, "float32")
        boxes, probs = cells[..., :4], ops.sigmoid(cells[..., 4:])
        best = ops.max(probs, axis=1)  # (batch, classes)
        top = ops.argmax(ops.max(probs, axis=2), axis=1)  # the best cell of each image
        box = ops.take_along_axis(boxes, top[:, None, None], axis=1)[:, 0]
        yxyx = ops.stack([boxes[..., 2], boxes[..., 0], boxes[..., 3], boxes[..., 1]], -1)
        nms = tf.image.combined_non_max_suppression(
            yxyx[:, :, None, :],
            probs,
            max_output_size_per_class=self.max_detections,
            max_total_size=self.max_detections,
            iou_threshold=self.iou_threshold,
            score_threshold=self.score_threshold,
            clip_boxes=False,
        )
        found = nms.nmsed_boxes
        count = ops.cast(nms.valid_detections, "int32")
        filled = ops.arange(self.max_detections)[None, :] < count[:, None]
        return {
            "class": best / ops.maximum(ops.sum(best, axis=1, keepdims=True), 1e-9),
            "box": box,
            "boxes": ops.stack([found[..., 1], found[..., 3], found[..., 0], found[..., 2]], -1),
            "scores": nms.nmsed_scores,
            "classes": ops.where(filled, ops.cast(nms.nmsed_classes, "int32"), -1),
            "num_detections": count,
        }

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "max_detections": self.max_detections,
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
        }


def inference_model(model: keras.Model, params: DetectParams) -> keras.Model:
    """The trained detector with its final answer (module docstring); shares its weights."""
    decoder = DetectionDecoder(
        params.max_detections,
        params.score_threshold,
        params.iou_threshold,
        name="detections",
        dtype="float32",
    )
    return keras.Model(model.inputs, decoder(model.output[CELLS]), name="snackloc_detector")
