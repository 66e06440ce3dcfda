"""The export formats of `snackloc export`: how each writes the model and how each runs it.

Every format takes what the Keras model takes (float32 RGB pixels, 0-255, ``size``×``size``,
any batch: the rescaling is inside the model) and answers the model's named outputs by
name, whatever they are (``class`` and ``box`` for the two-head model): the check in
pipeline/ops/export.py compares each of them with Keras, so a model with other heads
exports and checks the same way.

- ``tflite``: TensorFlow Lite (LiteRT) flatbuffer, signature ``serving_default``; float32,
  float16 (weights stored in half precision) or int8 (weights and activations, calibrated
  on the check images). Run with LiteRT's interpreter (``ai-edge-litert``) when installed,
  else TensorFlow's own, one image at a time as a phone does.
- ``onnx``: Keras' ``model.export(format="onnx")`` (tf2onnx underneath), opset
  ``ONNX_OPSET``, input ``image`` with a free ``batch`` dimension; float32 only. Run with
  onnxruntime's CPU provider, in batches.
- ``coreml``: a Core ML ML program (an ``.mlpackage`` folder) converted by coremltools, input
  ``image`` (a batch of 1 to ``COREML_MAX_BATCH``), outputs renamed to the model's; float32
  computes in float32 (coremltools' default is float16), float16 in half precision. A
  detector: a pipeline of its every cell and Core ML's own NMS, as Vision reads detectors
  (``write_coreml_detector``). Core ML predicts only on macOS: elsewhere the file's
  interface is checked, not its numbers.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import UserError

Outputs = dict[str, np.ndarray]  # a model's named outputs for a batch of images
Runner = Callable[[np.ndarray], Outputs]
ONNX_OPSET = 17  # onnxruntime 1.14+, and most phone runtimes of 2023 on
RUN_BATCH = 32
COREML_MAX_BATCH = 64


@dataclass(frozen=True)
class Format:
    """One export format: the quantizations it offers and its runtime's name."""

    name: str
    suffix: str
    quantizations: tuple[str, ...]
    runtime: str


FORMATS = {
    "tflite": Format("tflite", ".tflite", ("float32", "float16", "int8"), "TFLite interpreter"),
    "onnx": Format("onnx", ".onnx", ("float32",), "onnxruntime (CPU)"),
    "coreml": Format("coreml", ".mlpackage", ("float32", "float16"), "Core ML (macOS only)"),
}


def offered(fmt: str, quantize: str) -> None:
    """Refuse a format or quantization that is not offered, saying what is."""
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; expected {', '.join(FORMATS)}")
    if quantize not in FORMATS[fmt].quantizations:
        raise UserError(
            f"--quantize {quantize} is not offered for {fmt}",
            hint=f"{fmt} exports {', '.join(FORMATS[fmt].quantizations)}",
        )


def convert(model, fmt: str, quantize: str, samples: np.ndarray) -> bytes:
    """The Keras ``model`` as the bytes of a ``fmt`` file (``samples``: calibration images);
    Core ML writes a folder: ``write_coreml``."""
    offered(fmt, quantize)
    return tflite_bytes(model, quantize, samples) if fmt == "tflite" else onnx_bytes(model)


def runner(fmt: str, content: bytes) -> Runner:
    """A function from a batch of images to the exported model's named outputs."""
    return run_tflite(content) if fmt == "tflite" else run_onnx(content)


def tflite_bytes(model, quantize: str, samples: np.ndarray) -> bytes:
    """The model as a TFLite flatbuffer; no optimization at all for float32, so the file
    computes what Keras computes (only the kernels differ)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in samples)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras lists the traced signature
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


def run_tflite(content: bytes) -> Runner:
    """Runs the flatbuffer's ``serving_default`` signature, one image at a time."""
    signature = interpreter(content).get_signature_runner("serving_default")

    def run(images: np.ndarray) -> Outputs:
        rows = [signature(image=image[None].astype("float32")) for image in images]
        return {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}

    return run


def onnx_bytes(model) -> bytes:
    """The model as an ONNX file: input ``image`` (batch, size, size, 3), the model's
    outputs under their names, the batch dimension named ``batch``."""
    import onnx
    import tensorflow as tf

    size = model.input_shape[1:]
    spec = tf.TensorSpec([None, *size], tf.float32, name="image")
    with tempfile.TemporaryDirectory(prefix="snackloc-onnx-") as folder:
        path = Path(folder) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx on numpy 2 (np.object)
            model.export(
                str(path), format="onnx", input_signature=[spec], opset_version=ONNX_OPSET,
                verbose=False,
            )  # fmt: skip
        proto = onnx.load(str(path))
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"  # tf2onnx says unk__N
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def run_onnx(content: bytes) -> Runner:
    """Runs the ONNX model with onnxruntime on the CPU, in batches of ``RUN_BATCH``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    feed = session.get_inputs()[0].name

    def run(images: np.ndarray) -> Outputs:
        parts = [
            session.run(names, {feed: images[i : i + RUN_BATCH].astype("float32")})
            for i in range(0, len(images), RUN_BATCH)
        ]
        return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(names)}

    return run


def write_coreml(model, quantize: str, out: Path) -> dict:
    """Write the model as a Core ML ML program to the folder ``out`` (replaced whole) and
    return what its interface says (``coreml_interface``), read from the converted program."""
    import coremltools as ct

    size = tuple(model.input_shape[1:])
    image = ct.TensorType(
        name="image", shape=(ct.RangeDim(1, COREML_MAX_BATCH), *size), dtype=np.float32
    )
    converted, shapes = coreml_program(model, image, quantize)
    interface = coreml_interface(converted.get_spec(), [shape[1:] for shape in shapes])
    save_package(converted, out)
    return interface


def write_coreml_detector(
    candidates, classes: list[str], decoder, quantize: str, out: Path
) -> dict:
    """Write a detector as Vision reads one: a Core ML pipeline of the ML program
    ``candidates`` (pipeline/model/detect_decode.py ``vision_candidates``: every cell's
    ``confidence`` and ``coordinates`` for one image) and Core ML's NonMaximumSuppression
    model with the class names and the ``decoder``'s values (IoU and score thresholds,
    maximum count: pipeline/model/detect_decode.py). The pipeline's inputs: the
    ``image`` (an RGB image, size×size) and, optional, ``iouThreshold`` and
    ``confidenceThreshold``; its outputs ``confidence`` (objects, classes) and
    ``coordinates`` (objects, 4), as Apple's own detectors (Create ML, Turi Create)."""
    import coremltools as ct

    size = candidates.input_shape[1]
    image = ct.ImageType(name="image", shape=(1, size, size, 3), color_layout=ct.colorlayout.RGB)
    program, _ = coreml_program(candidates, image, quantize, ct.target.iOS15)
    spec = program.get_spec()
    for output in spec.description.output:  # the NMS model answers under the plain names
        ct.utils.rename_feature(spec, output.name, "raw_" + output.name)
    program = ct.models.MLModel(spec, weights_dir=program.weights_dir, skip_model_load=True)
    nms = nms_model(spec, classes, decoder)
    pipeline = ct.utils.make_pipeline(program, nms)
    description = pipeline._spec.description
    add_threshold_inputs(description, decoder)
    description.metadata.userDefined["classes"] = ",".join(classes)
    pipeline = ct.models.MLModel(
        pipeline._spec, weights_dir=pipeline.weights_dir, skip_model_load=True
    )
    save_package(pipeline, out)
    return coreml_detector_interface(pipeline.get_spec())


def nms_model(candidates_spec, classes: list[str], decoder):
    """Core ML's NonMaximumSuppression model on the outputs ``raw_confidence`` and
    ``raw_coordinates`` of ``candidates_spec``: per class (a cell under its best class), with
    the detector's thresholds, at most its ``max_detections`` objects."""
    import coremltools as ct

    spec = ct.proto.Model_pb2.Model()
    spec.specificationVersion = 5  # iOS 13: NMS with optional threshold inputs
    widths = {"confidence": len(classes), "coordinates": 4}
    for raw in candidates_spec.description.output:
        spec.description.input.add().CopyFrom(raw)
        output = spec.description.output.add()
        output.CopyFrom(raw)
        output.name = raw.name.removeprefix("raw_")
        array = output.type.multiArrayType
        del array.shape[:]  # objects: however many NMS keeps
        array.shapeRange.sizeRanges.add(lowerBound=0, upperBound=decoder.max_detections)
        width = widths[output.name]
        array.shapeRange.sizeRanges.add(lowerBound=width, upperBound=width)
    add_threshold_inputs(spec.description, decoder)
    nms = spec.nonMaximumSuppression
    nms.confidenceInputFeatureName, nms.confidenceOutputFeatureName = "raw_confidence", "confidence"
    nms.coordinatesInputFeatureName = "raw_coordinates"
    nms.coordinatesOutputFeatureName = "coordinates"
    nms.iouThresholdInputFeatureName = "iouThreshold"
    nms.confidenceThresholdInputFeatureName = "confidenceThreshold"
    nms.iouThreshold = decoder.iou_threshold
    nms.confidenceThreshold = decoder.score_threshold
    nms.pickTop.perClass = True
    nms.stringClassLabels.vector.extend(classes)
    return ct.models.MLModel(spec, skip_model_load=True)


def add_threshold_inputs(description, decoder) -> None:
    """The optional ``iouThreshold`` and ``confidenceThreshold`` inputs (doubles) that
    override the NMS values, each described with the detector's default."""
    defaults = {
        "iouThreshold": decoder.iou_threshold,
        "confidenceThreshold": decoder.score_threshold,
    }
    for name, value in defaults.items():
        threshold = description.input.add()
        threshold.name = name
        threshold.type.doubleType.SetInParent()
        threshold.type.isOptional = True
        threshold.shortDescription = f"optional, default {value:g}"


def coreml_program(model, image, quantize: str, target=None) -> tuple[Any, list[tuple]]:
    """The Keras ``model`` converted to an ML program, its outputs under their Keras names
    (coremltools calls them Identity, Identity_1, ... in the order of ``output_names``), and
    the shapes of those outputs in the converted program (which confirm the order)."""
    import coremltools as ct

    precision = ct.precision.FLOAT32 if quantize == "float32" else ct.precision.FLOAT16
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # "TensorFlow 2.21 has not been tested", tqdm bars
        converted = ct.convert(
            model, source="tensorflow", convert_to="mlprogram", inputs=[image],
            compute_precision=precision, minimum_deployment_target=target,
        )  # fmt: skip
    spec = converted.get_spec()
    for old, new in zip([o.name for o in spec.description.output], model.output_names, strict=True):
        ct.utils.rename_feature(spec, old, new)
    shapes = [tuple(v.shape) for v in converted._mil_program.functions["main"].outputs]
    renamed = ct.models.MLModel(spec, weights_dir=converted.weights_dir, skip_model_load=True)
    return renamed, shapes


def save_package(mlmodel, out: Path) -> None:
    """Save a Core ML model as the package folder ``out``, replacing it whole."""
    import shutil

    with tempfile.TemporaryDirectory(prefix="snackloc-coreml-", dir=out.parent) as folder:
        package = Path(folder) / "model.mlpackage"  # coremltools adds the suffix if absent
        mlmodel.save(str(package))
        shutil.rmtree(out, ignore_errors=True)
        package.rename(out)


def coreml_interface(spec, output_shapes: list[tuple]) -> dict:
    """Input name, type and shape range, and each output's name and shape (after the batch
    dimension) of a converted Core ML model."""
    image = spec.description.input[0].type.multiArrayType
    ranges = [(r.lowerBound, r.upperBound) for r in image.shapeRange.sizeRanges]
    return {
        "inputs": [i.name for i in spec.description.input],
        "input_float32": image.dataType == image.FLOAT32,
        "input_shape_ranges": ranges,
        "outputs": {
            o.name: list(shape)
            for o, shape in zip(spec.description.output, output_shapes, strict=True)
        },
    }


def coreml_detector_interface(spec) -> dict:
    """What a Core ML detector pipeline says of itself: its inputs (the image's size and
    colour space, the optional thresholds), outputs and the NMS model's values."""
    inputs = {i.name: i.type for i in spec.description.input}
    image = inputs["image"].imageType if "image" in inputs else None
    program, nms = spec.pipeline.models
    return {
        "inputs": list(inputs),
        "image": None if image is None else [image.width, image.height, image.colorSpace],
        "optional": [name for name, kind in inputs.items() if kind.isOptional],
        "outputs": {
            o.name: [r.upperBound for r in o.type.multiArrayType.shapeRange.sizeRanges]
            for o in spec.description.output
        },
        "candidates": {
            o.name: list(o.type.multiArrayType.shape) for o in program.description.output
        },
        "models": [m.WhichOneof("Type") for m in spec.pipeline.models],
        "classes": list(nms.nonMaximumSuppression.stringClassLabels.vector),
        "iou_threshold": nms.nonMaximumSuppression.iouThreshold,
        "score_threshold": nms.nonMaximumSuppression.confidenceThreshold,
        "per_class": nms.nonMaximumSuppression.pickTop.perClass,
    }
