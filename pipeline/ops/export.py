"""`snackloc export`: the model as a TensorFlow Lite (LiteRT) file for phones, checked.

The file takes what the Keras model takes (float32 RGB pixels, 0-255, ``size``×``size``,
any batch: preprocessing is inside the model) and answers the same two outputs, by name,
through its ``serving_default`` signature: ``class`` (probabilities) and ``box`` (x_min,
x_max, y_min, y_max, normalized; clip and order it as the Keras path does).

Every export is run on check images (the test split by default) next to the Keras model;
the largest absolute differences of class probabilities and boxes are printed, written to
``<file>.check.json`` and compared with a tolerance per quantization:

- ``float32``: no quantization, tolerance 1e-3 (the same graph, other kernels);
- ``float16``: weights stored as float16 (half the size), tolerance 1e-2;
- ``int8``: weights and activations quantized on the check images, tolerance 0.1.
"""

from __future__ import annotations

import json
import time
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.files import atomic_path
from pipeline.data.boxes import clip_and_order
from pipeline.ops.predict import Predictor, decoded_chunks

TOLERANCE = {"float32": 1e-3, "float16": 1e-2, "int8": 0.1}
CHECK_IMAGES = 64
SEED_TEXT = "snackloc export check"


@dataclass
class ExportCheck:
    """How far the exported model's outputs are from the Keras model's."""

    file: str
    source: str
    quantize: str
    size_bytes: int
    images: int
    check_images: str  # where they came from
    max_abs_diff_class: float
    max_abs_diff_box: float
    top1_agreement: float
    tolerance: float
    passed: bool
    keras_ms_per_image: float
    tflite_ms_per_image: float


def convert(predictor: Predictor, quantize: str, samples: np.ndarray) -> bytes:
    """The model as TFLite flatbuffer bytes (``samples``: calibration images for int8)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(predictor.model)
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in samples)
    elif quantize != "float32":
        raise UserError(f"unknown quantization {quantize!r}; expected {', '.join(TOLERANCE)}")
    return converter.convert()


def interpreter(content: bytes):
    """A TFLite interpreter: LiteRT's (``ai-edge-litert``) if installed, else TensorFlow's
    own (deprecated in its favour, still shipped and equivalent for checking)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the deprecation notice
        return Interpreter(model_content=content)


def run_tflite(content: bytes, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and clipped, ordered boxes from the exported model."""
    runner = interpreter(content).get_signature_runner("serving_default")
    probs, boxes = [], []
    for image in images:  # one at a time: how a phone runs it
        out = runner(image=image[None].astype("float32"))
        probs.append(out["class"][0])
        boxes.append(out["box"][0])
    return np.asarray(probs, "float64"), clip_and_order(np.asarray(boxes, "float64"))


def check_images(predictor: Predictor, paths: list[Path]) -> tuple[np.ndarray, str]:
    """Up to ``CHECK_IMAGES`` decoded images and a word on where they came from; seeded
    noise when no path can be read (said so in the report)."""
    size = predictor.image_size
    arrays = [
        item[0]
        for _, decoded in decoded_chunks(paths[:CHECK_IMAGES], size, 32)
        for item in decoded
        if not isinstance(item, Exception)
    ]
    if arrays:
        return np.stack(arrays).astype("float32"), f"{len(arrays)} images"
    rng = np.random.default_rng(zlib.crc32(SEED_TEXT.encode()))
    noise = rng.uniform(0, 255, (16, size, size, 3)).astype("float32")
    return noise, "16 random images (no check image given or readable)"


def export_tflite(
    predictor: Predictor, out: Path, quantize: str, paths: list[Path], tolerance: float | None
) -> ExportCheck:
    """Write ``out`` and ``out.check.json``; return the check (``passed`` or not)."""
    images, origin = check_images(predictor, paths)
    content = convert(predictor, quantize, images)
    started = time.perf_counter()
    keras_probs, keras_boxes = predictor.infer(images)
    keras_ms = (time.perf_counter() - started) * 1000 / len(images)
    started = time.perf_counter()
    lite_probs, lite_boxes = run_tflite(content, images)
    lite_ms = (time.perf_counter() - started) * 1000 / len(images)
    limit = TOLERANCE[quantize] if tolerance is None else tolerance
    diff_class = float(np.abs(lite_probs - keras_probs).max())
    diff_box = float(np.abs(lite_boxes - keras_boxes).max())
    with atomic_path(out) as tmp:
        tmp.write_bytes(content)
    check = ExportCheck(
        str(out), predictor.source, quantize, len(content), len(images), origin,
        diff_class, diff_box,
        float((lite_probs.argmax(1) == keras_probs.argmax(1)).mean()),
        limit, max(diff_class, diff_box) <= limit, round(keras_ms, 3), round(lite_ms, 3),
    )  # fmt: skip
    report = out.with_name(out.name + ".check.json")
    with atomic_path(report) as tmp:
        tmp.write_text(json.dumps(asdict(check), indent=2) + "\n")
    return check


def summary(check: ExportCheck) -> str:
    """What the command prints."""
    verdict = "within" if check.passed else "OVER"
    return (
        f"wrote {check.file} ({check.size_bytes / 1e6:.2f} MB, {check.quantize}) from "
        f"{check.source}\n"
        f"checked on {check.check_images} against Keras: max |Δ| class probabilities "
        f"{check.max_abs_diff_class:.2e}, boxes {check.max_abs_diff_box:.2e} "
        f"({verdict} the tolerance {check.tolerance:g}); same top-1 class "
        f"{check.top1_agreement:.0%}; {check.tflite_ms_per_image:.2f} ms per image "
        f"(Keras, batched: {check.keras_ms_per_image:.2f})"
    )
