"""`snackloc export`: the model as a file for phones and other runtimes, checked.

Formats (pipeline/ops/converters.py): TensorFlow Lite (LiteRT) and ONNX. Each file takes
what the Keras model takes (float32 RGB pixels, 0-255, ``size``×``size``, any batch:
preprocessing is inside the model) and answers the model's named outputs by name: ``class``
(probabilities) and ``box`` (x_min, x_max, y_min, y_max, normalized; clip and order it as
the Keras path does) for the two-head model.

Every export is run on check images (the test split by default) next to the Keras model;
the largest absolute difference of each named output is printed, written to
``<file>.check.json`` and compared with a tolerance per quantization:

- ``float32``: no quantization, tolerance 1e-3 (the same graph, other kernels);
- ``float16``: weights stored as float16 (half the size), tolerance 1e-2;
- ``int8``: weights and activations quantized on the check images, tolerance 0.1.

A detector's final answer (``boxes``, ``scores``, ``classes``, ``num_detections``: after
non-maximum suppression, inside the model and so inside the export) is compared as a set
per image, not position by position: two detections of equal score may come out in either
order. Each image's detections are matched one to one, same class only, to those of the
export that are closest (largest of box and score differences); ``boxes`` and ``scores``
are then the largest differences over matched pairs, ``num_detections`` the largest count
difference, and a detection without a partner of its class counts as a difference of 1
in ``boxes``, ``scores`` and ``classes`` (``compare_detections``).

A float32 export of a trained model, or of the pretrained MobileNetV2 with new heads,
differs from Keras by about 1e-6 (docs/serving.md). Larger float32 gaps come from the
weights, not the converter: on weights that blow activations up (random weights without
their BatchNorm statistics), Keras' own float32 answer is as far from the float64 one.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.files import atomic_path
from pipeline.model.answers import Predictor
from pipeline.model.detect_decode import DETECTION_OUTPUTS, decoder_of, vision_candidates
from pipeline.ops import converters
from pipeline.ops.predict import decoded_chunks

TOLERANCE = {"float32": 1e-3, "float16": 1e-2, "int8": 0.1}
CHECK_IMAGES = 64
SEED_TEXT = "snackloc export check"


@dataclass
class ExportCheck:
    """How far the exported model's outputs are from the Keras model's."""

    file: str
    format: str
    source: str
    quantize: str
    size_bytes: int
    images: int
    check_images: str  # where they came from
    max_abs_diff: dict[str, float]  # per named output of the model
    top1_agreement: float | None  # same top class (None: the model has no "class" output)
    tolerance: float
    passed: bool
    runtime: str
    keras_ms_per_image: float
    export_ms_per_image: float
    missing_outputs: list[str] = field(default_factory=list)  # Keras has them, the file not
    # Only when the check fails: Keras' own float32 answer against the same model computed
    # in float64 (None: not computed, or the model would not rebuild in float64).
    keras_float32_vs_float64: dict[str, float] | None = None
    # Core ML off macOS: the file's interface as converted, and what is wrong with it
    interface: dict | None = None
    problems: list[str] = field(default_factory=list)
    # A detector's: Keras' detections on the check images, and how many of them found no
    # partner of their class in the export (``compare_detections``)
    detections: int | None = None
    unmatched_detections: int | None = None


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


def compare(keras_out: converters.Outputs, exported: converters.Outputs) -> dict[str, float]:
    """The largest absolute difference of each output Keras answers (inf: the export
    lacks it or answers another shape)."""
    diffs = {}
    for name, expected in keras_out.items():
        got = exported.get(name)
        same_shape = got is not None and np.shape(got) == np.shape(expected)
        diffs[name] = (
            float(np.abs(np.asarray(got, "float64") - expected).max()) if same_shape else np.inf
        )
    return diffs


def compare_detections(
    keras_out: converters.Outputs, exported: converters.Outputs
) -> tuple[dict[str, float], int, int]:
    """A detector's outputs compared as matched sets per image (module docstring): the
    differences of ``boxes``, ``scores``, ``classes`` and ``num_detections``, how many
    detections Keras lists and how many of them have no partner in the export."""
    from scipy.optimize import linear_sum_assignment

    worst = {"boxes": 0.0, "scores": 0.0, "classes": 0.0}
    counts = keras_out["num_detections"].astype(int), exported["num_detections"].astype(int)
    total = unmatched = 0
    for image, (mine, theirs) in enumerate(zip(*counts, strict=True)):
        a = {name: keras_out[name][image, :mine] for name in ("boxes", "scores", "classes")}
        b = {name: exported[name][image, :theirs] for name in ("boxes", "scores", "classes")}
        box_gap = np.abs(a["boxes"][:, None, :] - b["boxes"][None, :, :]).max(axis=2, initial=0)
        score_gap = np.abs(a["scores"][:, None] - b["scores"][None, :])
        cost = np.where(a["classes"][:, None] == b["classes"][None, :], 0.0, np.inf)
        cost = cost + np.maximum(box_gap, score_gap)
        rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e9))
        matched = np.isfinite(cost[rows, cols])
        rows, cols = rows[matched], cols[matched]
        if len(rows):
            worst["boxes"] = max(worst["boxes"], float(box_gap[rows, cols].max()))
            worst["scores"] = max(worst["scores"], float(score_gap[rows, cols].max()))
        total, unmatched = total + int(mine), unmatched + int(mine) - len(rows)
        if len(rows) < max(mine, theirs):  # a detection without a partner of its class
            worst = dict.fromkeys(worst, 1.0)
    gap = np.abs(counts[0] - counts[1])
    worst["num_detections"] = float(gap.max(initial=0))
    return worst, total, unmatched


def float64_gap(
    model, images: np.ndarray, keras_out: converters.Outputs
) -> dict[str, float] | None:
    """How far Keras' float32 outputs are from the same model and weights computed in
    float64: the rounding that the weights amplify. When it is as large as the export's
    difference, the model is ill-conditioned and no float32 runtime can do better; when it
    is far smaller, the export is at fault. None when the model does not rebuild in float64
    (a layer that fixes its own dtype)."""
    import keras

    def widen(config):
        if isinstance(config, dict):
            return {k: "float64" if k == "dtype" else widen(v) for k, v in config.items()}
        return [widen(v) for v in config] if isinstance(config, list) else config

    try:
        wide = keras.Model.from_config(widen(model.get_config()))
        wide.set_weights([weight.astype("float64") for weight in model.get_weights()])
        out = wide(images.astype("float64"), training=False)
        return compare(keras_out, {name: np.asarray(value) for name, value in out.items()})
    except Exception:  # any layer that will not widen: the check says it was not computed
        return None


def timed(run, images: np.ndarray) -> tuple[converters.Outputs, float]:
    """``run(images)`` and its milliseconds per image (after a first call that traces or
    allocates)."""
    run(images[:1])
    started = time.perf_counter()
    out = run(images)
    return out, (time.perf_counter() - started) * 1000 / len(images)


def export_model(
    predictor: Predictor,
    out: Path,
    fmt: str,
    quantize: str,
    paths: list[Path],
    tolerance: float | None,
) -> ExportCheck:
    """Write ``out`` and ``out.check.json``; return the check (``passed`` or not)."""
    images, origin = check_images(predictor, paths)
    content = converters.convert(predictor.model, fmt, quantize, images)
    keras_out, keras_ms = timed(predictor.outputs, images)
    keras_out = {name: value.astype("float64") for name, value in keras_out.items()}
    exported, export_ms = timed(converters.runner(fmt, content), images)
    diffs = compare(keras_out, exported)
    found = unmatched = None
    if all(np.isfinite(diffs.get(name, np.inf)) for name in DETECTION_OUTPUTS):
        matched, found, unmatched = compare_detections(keras_out, exported)
        diffs.update(matched)  # as sets: the order of equal scores is free
    limit = TOLERANCE[quantize] if tolerance is None else tolerance
    top1 = None
    if "class" in keras_out and np.isfinite(diffs["class"]):
        top1 = float((exported["class"].argmax(1) == keras_out["class"].argmax(1)).mean())
    with atomic_path(out) as tmp:
        tmp.write_bytes(content)
    passed = max(diffs.values()) <= limit
    wide = None if passed else float64_gap(predictor.model, images, keras_out)
    check = ExportCheck(
        str(out), fmt, predictor.source, quantize, len(content), len(images), origin, diffs,
        top1, limit, passed, converters.FORMATS[fmt].runtime,
        round(keras_ms, 3), round(export_ms, 3),
        [name for name, diff in diffs.items() if not np.isfinite(diff)], wide,
        detections=found, unmatched_detections=unmatched,
    )  # fmt: skip
    report = out.with_name(out.name + ".check.json")
    with atomic_path(report) as tmp:
        tmp.write_text(json.dumps(as_record(check), indent=2) + "\n")
    return check


def as_record(check: ExportCheck) -> dict:
    """The check as plain JSON (an output the export lacks: null rather than Infinity)."""
    record = asdict(check)
    for key in ("max_abs_diff", "keras_float32_vs_float64"):
        if record[key] is not None:
            record[key] = {n: d if np.isfinite(d) else None for n, d in record[key].items()}
    return record


def metrics(check: ExportCheck) -> dict[str, float]:
    """What is logged to the model's MLflow run: the largest difference of each output
    and the pass mark, under the format and quantization's name."""
    prefix = f"export_{check.format}_{check.quantize}"
    values = {f"{prefix}_max_abs_diff_{name}": diff for name, diff in check.max_abs_diff.items()}
    values[f"{prefix}_passed"] = float(check.passed)
    return {key: value for key, value in values.items() if np.isfinite(value)}


def export_coreml(predictor: Predictor, out: Path, quantize: str) -> ExportCheck:
    """Write the Core ML package ``out`` and check its interface against the Keras model:
    input ``image`` (float32, size×size×3, a range of batch sizes) and every named output
    with its shape; a detector's as Vision reads one (``coreml_detector``). Its
    numbers are not checked: Core ML predicts only on macOS."""
    converters.offered("coreml", quantize)
    if predictor.limits is not None:
        interface, problems, expected = coreml_detector(predictor, out, quantize)
    else:
        interface = converters.write_coreml(predictor.model, quantize, out)
        expected = {name: list(t.shape[1:]) for name, t in predictor.model.output.items()}
        problems = coreml_problems(interface, expected, predictor.image_size)
    check = ExportCheck(
        str(out), "coreml", predictor.source, quantize,
        sum(f.stat().st_size for f in out.rglob("*") if f.is_file()), 0,
        "none: Core ML predicts only on macOS, so the numbers are not checked here", {},
        None, TOLERANCE[quantize], not problems, converters.FORMATS["coreml"].runtime, 0.0, 0.0,
        [n for n in expected if n not in interface["outputs"]], None, interface, problems,
    )  # fmt: skip
    with atomic_path(out.with_name(out.name + ".check.json")) as tmp:
        tmp.write_text(json.dumps(as_record(check), indent=2) + "\n")
    return check


def coreml_problems(interface: dict, expected: dict, size: int) -> list[str]:
    """How a two-head model's Core ML interface differs from the Keras model's."""
    problems = []
    if interface["inputs"] != ["image"] or not interface["input_float32"]:
        problems.append(f"input {interface['inputs']} is not one float32 image")
    if [tuple(r) for r in interface["input_shape_ranges"][1:]] != [(size, size)] * 2 + [(3, 3)]:
        problems.append(f"input shapes {interface['input_shape_ranges']}, not n×{size}×{size}×3")
    if interface["outputs"] != expected:
        problems.append(f"outputs {interface['outputs']}, Keras answers {expected}")
    return problems


def coreml_detector(predictor: Predictor, out: Path, quantize: str) -> tuple[dict, list, dict]:
    """Write a detector as a Core ML pipeline (ML program + Core ML's NMS, the form Vision
    reads) and list how its interface differs from what the Keras detector implies: the
    image size, every cell's candidates, the class names and the NMS values."""
    decoder = decoder_of(predictor.model)
    candidates = vision_candidates(predictor.model)
    interface = converters.write_coreml_detector(
        candidates, predictor.classes, decoder, quantize, out
    )
    classes, size = len(predictor.classes), predictor.image_size
    cells = decoder.input.shape[1]  # the feature map's cells, one candidate each
    most = decoder.max_detections
    expected = {"confidence": [most, classes], "coordinates": [most, 4]}
    wanted = {
        "inputs": ["image", "iouThreshold", "confidenceThreshold"],
        "image": [size, size, 20],  # ImageFeatureType.RGB
        "optional": ["iouThreshold", "confidenceThreshold"],
        "outputs": expected,
        "candidates": {"raw_confidence": [cells, classes], "raw_coordinates": [cells, 4]},
        "models": ["mlProgram", "nonMaximumSuppression"],
        "classes": predictor.classes,
        "iou_threshold": decoder.iou_threshold,
        "score_threshold": decoder.score_threshold,
        "per_class": True,
    }
    problems = [
        f"{key}: {interface[key]}, expected {value}"
        for key, value in wanted.items()
        if interface[key] != value
    ]
    return interface, problems, expected


def summary(check: ExportCheck) -> str:
    """What the command prints."""
    verdict = "within" if check.passed else "OVER"
    if check.interface is not None:
        return coreml_summary(check)
    diffs = ", ".join(f"{name} {diff:.2e}" for name, diff in check.max_abs_diff.items())
    lines = [
        f"wrote {check.file} ({check.size_bytes / 1e6:.2f} MB, {check.format} "
        f"{check.quantize}) from {check.source}",
        f"checked on {check.check_images} against Keras: max |Δ| {diffs} ({verdict} the "
        f"tolerance {check.tolerance:g})",
    ]
    if check.top1_agreement is not None:
        lines[-1] += f"; same top-1 class {check.top1_agreement:.0%}"
    if check.detections is not None:
        lines.append(
            f"detections after NMS compared as sets per image: {check.detections} in Keras, "
            f"{check.unmatched_detections} without a partner of their class in the export"
        )
    if check.keras_float32_vs_float64 is not None:
        gaps = ", ".join(f"{n} {d:.2e}" for n, d in check.keras_float32_vs_float64.items())
        lines.append(
            f"Keras' own float32 answer against float64: max |Δ| {gaps} (as large as the "
            "export's: the weights amplify rounding, no float32 runtime does better; far "
            "smaller: the export is at fault)"
        )
    if check.missing_outputs:
        lines.append(f"the export lacks the output(s) {', '.join(check.missing_outputs)}")
    lines.append(
        f"{check.runtime}: {check.export_ms_per_image:.2f} ms per image "
        f"(Keras, batched: {check.keras_ms_per_image:.2f})"
    )
    return "\n".join(lines)


def coreml_summary(check: ExportCheck) -> str:
    """What the command prints for a Core ML package (interface checked, numbers not)."""
    face = check.interface
    outputs = ", ".join(f"{n} {shape}" for n, shape in face["outputs"].items())
    verdict = "matches the Keras model" if check.passed else "DIFFERS: " + "; ".join(check.problems)
    if "image" in face:  # a detector: a pipeline with Core ML's NMS
        width, height, _ = face["image"]
        cells = face["candidates"]["raw_coordinates"][0]
        source = (
            f"interface: input image (RGB, {width}×{height}; optional iouThreshold "
            f"{face['iou_threshold']:g}, confidenceThreshold {face['score_threshold']:g}), "
            f"{cells} candidates per image into Core ML's NMS (per class, "
            f"{len(face['classes'])} classes named), outputs {outputs}: {verdict}"
        )
    else:
        source = (
            f"interface: input image (float32, batch {face['input_shape_ranges'][0]}), "
            f"outputs {outputs}: {verdict}"
        )
    return (
        f"wrote {check.file} ({check.size_bytes / 1e6:.2f} MB, coreml {check.quantize}) from "
        f"{check.source}\n{source}\n"
        "numbers not checked: Core ML predicts only on macOS (there, compare with "
        "coremltools' MLModel.predict)"
    )
