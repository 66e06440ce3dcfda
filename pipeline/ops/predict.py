"""`snackloc predict`: class, probability and box of any images, drawn and reported.

The model comes from the MLflow registry (``models:/snackloc@champion`` by default: the
class list and input size travel with it as metadata) or from a saved ``.keras`` file (the
class list then comes from ``outputs/validate/classes.json`` or ``--classes``).

Images are read as displayed (EXIF orientation applied) in any mode and format, whatever
their extension, and resized exactly as in training. A file that cannot be read gets a
one-line error; the other images still run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import UnidentifiedImageError

from pipeline.core.errors import UserError
from pipeline.core.files import atomic_path, read_json
from pipeline.data.boxes import clip_and_order
from pipeline.data.contract import load_image_array, open_image_rgb
from pipeline.evaluation.drawing import to_pixels, with_box
from pipeline.integrations import registry, tracking
from pipeline.model.model import input_size, load_model

DEFAULT_MODEL = "models:/snackloc@champion"
DEFAULT_CLASSES = Path("outputs/validate/classes.json")
BATCH = 32


@dataclass(frozen=True)
class Predictor:
    """A loaded model with what is needed to feed it and name its outputs."""

    model: Any
    classes: list[str]
    image_size: int
    source: str


@dataclass
class Result:
    """The prediction for one image, or why there is none."""

    image: str
    class_name: str | None = None
    probability: float | None = None
    box: list[float] | None = None  # normalized x_min, x_max, y_min, y_max
    box_pixels: list[int] | None = None  # the same in pixels of the image as displayed
    width: int | None = None
    height: int | None = None
    drawn: str | None = None
    error: str | None = None


def load_predictor(model: str = DEFAULT_MODEL, classes_file: Path | None = None) -> Predictor:
    """Load a model from a local ``.keras`` file or an MLflow model URI."""
    if Path(model).is_file():
        return _load_keras_file(Path(model), classes_file or DEFAULT_CLASSES)
    return _load_mlflow(model, classes_file)


def _load_keras_file(path: Path, classes_file: Path) -> Predictor:
    keras_model = load_model(path)
    classes = read_json(classes_file)["classes"]
    outputs = keras_model.output["class"].shape[-1]
    if outputs != len(classes):
        raise UserError(
            f"{path} predicts {outputs} classes but {classes_file} lists {len(classes)}",
            hint="pass the class list the model was trained with: --classes FILE",
        )
    return Predictor(keras_model, classes, input_size(keras_model), str(path))


def _load_mlflow(uri: str, classes_file: Path | None) -> Predictor:
    try:
        keras_model, meta = tracking.retrying(f"load {uri}", lambda: registry.load_version(uri))
    except registry.ModelNotLoaded as exc:
        raise UserError(
            exc.message,
            hint="register one first (`dvc repro`), check MLFLOW_TRACKING_URI, "
            "or pass --model path/to/model.keras",
        ) from None
    classes = read_json(classes_file)["classes"] if classes_file else meta.get("classes")
    if not classes:
        raise UserError(f"{uri} has no class list in its metadata", hint="pass --classes FILE")
    return Predictor(keras_model, list(classes), input_size(keras_model), uri)


def describe_error(exc: Exception) -> str:
    """A short reason why an image could not be read."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read (unknown or corrupt format)"
    return f"cannot decode the image: {exc}"


def predict_batch(predictor: Predictor, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and clipped, ordered boxes for a list of resized images."""
    out = predictor.model.predict(np.stack(arrays).astype("float32"), verbose=0)
    probs = np.asarray(out["class"], dtype="float64")
    return probs, clip_and_order(np.asarray(out["box"], dtype="float64"))


def _output_path(out_dir: Path, image: Path, used: set[str]) -> Path:
    """``<stem>.jpg`` in ``out_dir``, numbered when two inputs share a name."""
    name, n = f"{image.stem}.jpg", 1
    while name in used:
        n += 1
        name = f"{image.stem}-{n}.jpg"
    used.add(name)
    return out_dir / name


def predict_images(
    predictor: Predictor, paths: list[Path], out_dir: Path | None = None
) -> list[Result]:
    """Predict every image (in batches); draw each into ``out_dir`` when given."""
    results, used = [], set()
    for start in range(0, len(paths), BATCH):
        chunk = paths[start : start + BATCH]
        loaded = []
        for path in chunk:
            result = Result(image=str(path))
            try:
                shown = open_image_rgb(path)
                array = load_image_array(path, predictor.image_size)
            except Exception as exc:  # any unreadable file: report it, go on with the rest
                result.error = describe_error(exc)
            else:
                result.width, result.height = shown.size
                loaded.append((result, shown, array))
            results.append(result)
        if not loaded:
            continue
        probs, boxes = predict_batch(predictor, [array for _, _, array in loaded])
        for (result, shown, _), prob, box in zip(loaded, probs, boxes, strict=True):
            best = int(prob.argmax())
            result.class_name = predictor.classes[best]
            result.probability = round(float(prob[best]), 4)
            result.box = [round(float(v), 4) for v in box]
            result.box_pixels = to_pixels(box, result.width, result.height)
            if out_dir is not None:
                label = f"{result.class_name} {result.probability:.2f}"
                target = _output_path(out_dir, Path(result.image), used)
                with atomic_path(target) as tmp:
                    with_box(shown, result.box_pixels, label).save(tmp, "JPEG", quality=90)
                result.drawn = str(target)
    return results


def as_json(results: list[Result]) -> str:
    """Results as a JSON array (one object per image, ``error`` set for failures)."""
    return json.dumps([asdict(r) for r in results], indent=2)


def as_table(results: list[Result], source: str):
    """A rich table of the successful predictions."""
    from rich.table import Table

    table = Table(title=f"predictions of {source}")
    table.add_column("image", overflow="fold")
    for column in ("class", "prob", "box (normalized)", "box (pixels)", "size"):
        table.add_column(column, justify="right" if column == "prob" else "left")
    for r in results:
        if r.error is None:
            table.add_row(
                r.image,
                r.class_name,
                f"{r.probability:.3f}",
                ", ".join(f"{v:.3f}" for v in r.box),
                ", ".join(str(v) for v in r.box_pixels),
                f"{r.width}×{r.height}",
            )
    table.caption = "boxes are x_min, x_max, y_min, y_max"
    return table


def main(
    images: list[Path],
    model: str = DEFAULT_MODEL,
    classes_file: Path | None = None,
    out_dir: Path | None = None,
    json_output: bool = False,
) -> int:
    """The `snackloc predict` command: print the results; 1 if any image failed, else 0."""
    import sys

    from rich.console import Console

    predictor = load_predictor(model, classes_file)
    results = predict_images(predictor, images, out_dir)
    for r in results:
        if r.error:
            print(f"error: {r.image}: {r.error}", file=sys.stderr)
    if json_output:
        print(as_json(results))
    else:
        Console().print(as_table(results, predictor.source))
        if out_dir is not None and any(r.drawn for r in results):
            print(f"images with their box drawn: {out_dir}/")
    return 1 if any(r.error for r in results) else 0
