"""The detector's final answer, inside the saved model: per-class non-maximum suppression.

Hand-written on TensorFlow's own NMS op (``NonMaxSuppressionV5``, one image at a time under
``tf.map_fn``): keras-hub's ``NonMaxSuppression`` layer does the same but would add keras-hub
and the tokenizer packages it imports (tensorflow-text, sentencepiece, huggingface-hub) to
the lock for one layer, and Keras 3.15 has no NMS op. The layer works on the TensorFlow
backend, the project's one.

Per class in one call: every class's boxes are shifted by ``2 × class`` (boxes lie in
[0, 1]), so that boxes of two classes never overlap and one class-agnostic NMS suppresses
within each class only; its first ``max_detections`` picks, best first, are then exactly
``tf.image.combined_non_max_suppression``'s answer with ``max_detections`` per class and in
all. That op is not used because it does not export: TFLite has it only as a Select TF op
(a runtime without the Flex delegate, LiteRT's included, refuses the file), whereas
``NonMaxSuppressionV5`` and the loop are TFLite builtins and tf2onnx converts them to ONNX's
``NonMaxSuppression`` and ``Loop``; so the saved model and its exports run one graph
(docs/detection.md, "Exports").

The saved detector answers, per image:

- ``boxes`` (max_detections, 4) as (x_min, x_max, y_min, y_max), ``scores``, ``classes``
  (index, -1 past the end) and ``num_detections``: every object, best first;
- ``class`` (per-class best cell score, normalized) and ``box`` (the best cell's box): the
  one-box answer of the two-head model, so that everything that reads a two-head model
  (evaluate's book metrics, predict, serve, review) reads the detector too.

``vision_candidates`` gives the same model's every cell before NMS, as Apple's Vision
framework reads a detector (the Core ML export appends Core ML's own NMS to it).
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
        # tf.argmax, not ops.argmax: Keras' adds a Bitcast and a BitwiseAnd (for -0.0) that
        # neither TFLite's builtins nor ONNX have
        top = tf.argmax(ops.max(probs, axis=2), axis=1, output_type="int32")  # best cell
        box = tf.gather(boxes, top, batch_dims=1)
        n = self.max_detections
        found, scores, classes, count = tf.map_fn(
            self._one_image,
            (boxes, probs),
            fn_output_signature=(
                tf.TensorSpec([n, 4], "float32"),
                tf.TensorSpec([n], "float32"),
                tf.TensorSpec([n], "int32"),
                tf.TensorSpec([], "int32"),
            ),
        )
        filled = ops.arange(n)[None, :] < count[:, None]
        return {
            "class": best / ops.maximum(ops.sum(best, axis=1, keepdims=True), 1e-9),
            "box": box,
            "boxes": ops.where(filled[..., None], found, 0.0),
            "scores": ops.where(filled, scores, 0.0),
            "classes": ops.where(filled, classes, -1),
            "num_detections": count,
        }

    def _one_image(self, image):
        """Per-class NMS of one image's (cells, 4) boxes and (cells, classes) scores, padded
        to ``max_detections`` (module docstring: one call, classes shifted apart)."""
        import tensorflow as tf

        boxes, probs = image
        num_classes = probs.shape[-1]
        scores = tf.reshape(probs, [-1])  # cell-major: candidate i is cell i // C, class i % C
        labels = tf.range(tf.shape(scores)[0]) % num_classes
        yxyx = tf.stack([boxes[:, 2], boxes[:, 0], boxes[:, 3], boxes[:, 1]], axis=-1)
        shifted = tf.repeat(yxyx, num_classes, axis=0) + 2.0 * tf.cast(labels, "float32")[:, None]
        picked, picked_scores, count = tf.raw_ops.NonMaxSuppressionV5(
            boxes=shifted,
            scores=scores,
            max_output_size=self.max_detections,
            iou_threshold=self.iou_threshold,
            score_threshold=self.score_threshold,
            soft_nms_sigma=0.0,
            pad_to_max_output_size=True,
        )
        return (
            tf.gather(boxes, picked // num_classes),
            picked_scores,
            picked % num_classes,
            tf.cast(count, "int32"),
        )

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


def decoder_of(model: keras.Model) -> DetectionDecoder | None:
    """The saved detector's decoder (its NMS values); None for the two-head model."""
    found = [layer for layer in model.layers if isinstance(layer, DetectionDecoder)]
    return found[0] if found else None


def vision_candidates(model: keras.Model) -> keras.Model:
    """The saved detector's every cell for one image, before NMS, as Vision's detectors
    answer: ``confidence`` (cells, classes) class probabilities and ``coordinates``
    (cells, 4) as (x_centre, y_centre, width, height), normalized, y down.

    The batch is folded into the cells: fed one image, the outputs are exactly what Core
    ML's NonMaximumSuppression model takes (rank 2). Vision reads the sum of a row as the
    chance of any object, so a row whose independent (sigmoid) class probabilities sum
    above 1 is scaled down to 1; its best class stays the same."""
    cells = decoder_of(model).input
    classes = cells.shape[-1] - 4
    x_min, x_max, y_min, y_max = (cells[..., i] for i in range(4))
    probs = ops.sigmoid(cells[..., 4:])
    centre = ops.stack(
        [(x_min + x_max) / 2, (y_min + y_max) / 2, x_max - x_min, y_max - y_min], axis=-1
    )
    outputs = {
        "confidence": ops.reshape(
            probs / ops.maximum(ops.sum(probs, -1, keepdims=True), 1.0), (-1, classes)
        ),
        "coordinates": ops.reshape(centre, (-1, 4)),
    }
    named = {name: layers.Identity(name=name)(value) for name, value in outputs.items()}
    return keras.Model(model.inputs, named, name="snackloc_candidates")
