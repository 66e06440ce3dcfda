"""`snackloc predict`: class, probability and box of any number of images, in batches.

The model comes from the MLflow registry (``models:/snackloc@champion`` by default: the
class list and input size travel with it as metadata) or from a saved ``.keras`` file (the
class list then comes from ``outputs/validate/classes.json`` or ``--classes``). It loads
once; images are decoded on a small thread pool one batch ahead of the model.

Images are read as displayed (EXIF orientation applied) in any mode and format, whatever
their extension, and resized exactly as in training. A file that cannot be read gets a
one-line error; the other images still run. The same ``Result`` is what `snackloc serve`
answers (pipeline/ops/serve.py).

A detector (``model.task: detect``) also lists every object it finds (``detections``, built
by pipeline/model/answers.py), filtered by a score threshold and a maximum count (the
model's own ``model.detect`` values by default). Its CSV has one row per detection, and its
drawn images show every detection.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.files import atomic_path, read_json
from pipeline.core.paths import Outputs
from pipeline.data.contract import decode_for_model, open_image_rgb
from pipeline.evaluation.drawing import draw_box
from pipeline.integrations import registry, tracking
from pipeline.model.answers import (
    TOP_K,
    Decoded,
    Limits,
    Predictor,
    Result,
    choose_limits,
    describe_error,
)
from pipeline.model.model import input_size, load_model

DEFAULT_MODEL = "models:/snackloc@champion"
DEFAULT_CLASSES = Outputs().classes
BATCH = 32
DECODE_THREADS = 2


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


def predict_batch(predictor: Predictor, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and clipped, ordered boxes for a list of resized images."""
    return predictor.infer(np.stack(arrays))


def _output_path(out_dir: Path, image: Path, used: set[str]) -> Path:
    """``<stem>.jpg`` in ``out_dir``, numbered when two inputs share a name."""
    name, n = f"{image.stem}.jpg", 1
    while name in used:
        n += 1
        name = f"{image.stem}-{n}.jpg"
    used.add(name)
    return out_dir / name


def _decode(path: Path, size: int) -> Decoded:
    """The model's input and the displayed size of one image, or why it cannot be read."""
    try:
        return decode_for_model(path, size)
    except Exception as exc:  # any unreadable file: reported with the results
        return exc


def decoded_chunks(
    paths: list[Path], size: int, batch: int
) -> Iterator[tuple[list[Path], list[Decoded]]]:
    """Chunks of ``batch`` paths with their decoded images; the next chunk decodes on a
    thread pool while the caller runs the model on this one (only one chunk ahead, so that
    memory stays flat however many images there are)."""
    chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
    with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode") as pool:

        def submit(chunk: list[Path]) -> list[Future]:
            return [pool.submit(_decode, path, size) for path in chunk]

        pending = submit(chunks[0]) if chunks else []
        for index, chunk in enumerate(chunks):
            current = pending
            if index + 1 < len(chunks):
                pending = submit(chunks[index + 1])
            yield chunk, [future.result() for future in current]


def _draw(result: Result, out_dir: Path, used: set[str]) -> None:
    """Write the image with its box and label into ``out_dir``."""
    try:
        shown = open_image_rgb(Path(result.image))
    except Exception as exc:  # changed on disk since it was decoded: report, go on
        result.error = describe_error(exc)
        return
    if result.detections is None:
        boxes = [(result.box_pixels, f"{result.class_name} {result.probability:.2f}")]
    else:  # a detector: every detection listed, the weakest drawn first (underneath)
        boxes = [(d["box_pixels"], f"{d['class_name']} {d['score']:.2f}")
                 for d in reversed(result.detections)]  # fmt: skip
    target = _output_path(out_dir, Path(result.image), used)
    for pixels, label in boxes:
        draw_box(shown, pixels, label)
    with atomic_path(target) as tmp:
        shown.save(tmp, "JPEG", quality=90)
    result.drawn = str(target)


def predict_images(
    predictor: Predictor,
    paths: list[Path],
    out_dir: Path | None = None,
    batch: int = BATCH,
    top_k: int = TOP_K,
    progress: bool = False,
    limits: Limits | None = None,
) -> list[Result]:
    """Predict every image (in batches); draw each into ``out_dir`` when given. A
    detector's list is filtered by ``limits`` (default: the model's own)."""
    from tqdm import tqdm

    results, used = [], set()
    bar = tqdm(total=len(paths), unit="img", desc="predict", disable=None if progress else True)
    with bar:
        for chunk, decoded in decoded_chunks(paths, predictor.image_size, batch):
            answers = predictor.answer([str(path) for path in chunk], decoded, top_k, limits)
            for result in answers:
                if out_dir is not None and result.error is None:
                    _draw(result, out_dir, used)
            results.extend(answers)
            bar.update(len(chunk))
    return results


CSV_COLUMNS = [
    "image", "class_name", "probability", "x_min", "x_max", "y_min", "y_max",
    "x_min_px", "x_max_px", "y_min_px", "y_max_px", "width", "height", "top", "drawn", "error",
]  # fmt: skip


def csv_row(result: Result) -> dict[str, Any]:
    """One result as a flat CSV row (boxes split into their four columns; top-k as
    ``class:probability`` pairs separated by ``;``)."""
    row = {k: v for k, v in asdict(result).items() if k in CSV_COLUMNS}
    for names, values in (
        (CSV_COLUMNS[3:7], result.box),
        (CSV_COLUMNS[7:11], result.box_pixels),
    ):
        row.update(zip(names, values or [None] * 4, strict=True))
    top = result.top or []
    row["top"] = ";".join(f"{t['class_name']}:{t['probability']}" for t in top)
    return row


DETECTION_CSV_COLUMNS = [
    "image", "rank", "class_name", "score", "x_min", "x_max", "y_min", "y_max",
    "x_min_px", "x_max_px", "y_min_px", "y_max_px", "width", "height", "drawn", "error",
]  # fmt: skip


def detection_csv_rows(result: Result) -> list[dict[str, Any]]:
    """A detector's result as CSV rows: one per detection, best first (``rank`` 1, 2, ...);
    one row without a rank for an image with no detection or an error."""
    common = {k: getattr(result, k) for k in ("image", "width", "height", "drawn", "error")}
    rows = []
    for rank, found in enumerate(result.detections or [], start=1):
        row = {**common, "rank": rank, "class_name": found["class_name"], "score": found["score"]}
        row.update(zip(DETECTION_CSV_COLUMNS[4:8], found["box"], strict=True))
        row.update(zip(DETECTION_CSV_COLUMNS[8:12], found["box_pixels"], strict=True))
        rows.append(row)
    return rows or [common]


def write_results(results: list[Result], path: Path, detector: bool = False) -> None:
    """Write the results to ``path``: JSON for ``.json``, CSV otherwise (a ``detector``'s:
    one row per detection, ``detection_csv_rows``)."""
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".json":
            tmp.write_text(as_json(results) + "\n")
            return
        with tmp.open("w", newline="") as handle:
            if detector:
                writer = csv.DictWriter(handle, DETECTION_CSV_COLUMNS)
                rows = [row for r in results for row in detection_csv_rows(r)]
            else:
                writer = csv.DictWriter(handle, CSV_COLUMNS)
                rows = [csv_row(r) for r in results]
            writer.writeheader()
            writer.writerows(rows)


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
    detector = any(r.detections is not None for r in results)
    if detector:
        table.add_column("objects", justify="right")
    for r in results:
        if r.error is None:
            table.add_row(
                r.image,
                r.class_name,
                f"{r.probability:.3f}",
                ", ".join(f"{v:.3f}" for v in r.box),
                ", ".join(str(v) for v in r.box_pixels),
                f"{r.width}×{r.height}",
                *([str(len(r.detections or []))] if detector else []),
            )
    table.caption = "boxes are x_min, x_max, y_min, y_max"
    if detector:
        table.caption += "; the best detection shown, every one in --json or -o"
    return table


@dataclass(frozen=True)
class Options:
    """What `snackloc predict` writes and how it batches."""

    out_dir: Path | None = None  # images with their box drawn
    output: Path | None = None  # results as CSV or JSON
    json_output: bool = False  # JSON on stdout instead of a table
    batch: int = BATCH
    top_k: int = TOP_K
    progress: bool = True
    score_threshold: float | None = None  # a detector's; None: the model's own
    max_detections: int | None = None  # a detector's; None: the model's own


def main(
    images: list[Path],
    model: str = DEFAULT_MODEL,
    classes_file: Path | None = None,
    options: Options = Options(),
) -> int:
    """The `snackloc predict` command: print or write the results; 1 if any image failed."""
    from rich.console import Console

    predictor = load_predictor(model, classes_file)
    limits = choose_limits(
        predictor.limits, options.score_threshold, options.max_detections, predictor.source
    )
    results = predict_images(
        predictor, images, options.out_dir, options.batch, options.top_k, options.progress,
        limits,
    )  # fmt: skip
    for r in results:
        if r.error:
            print(f"error: {r.image}: {r.error}", file=sys.stderr)
    failed = sum(1 for r in results if r.error)
    if options.output is not None:
        write_results(results, options.output, detector=limits is not None)
        print(f"{len(results) - failed} predictions, {failed} failed: {options.output}")
    elif options.json_output:
        print(as_json(results))
    else:
        Console().print(as_table(results, predictor.source))
    if options.out_dir is not None and any(r.drawn for r in results):
        # not on stdout under --json, which must stay one JSON document
        print(
            f"images with their box drawn: {options.out_dir}/",
            file=sys.stderr if options.json_output else sys.stdout,
        )
    return 1 if failed else 0
