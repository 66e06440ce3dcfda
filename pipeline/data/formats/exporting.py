"""Export the snacks dataset as COCO, Pascal VOC, YOLO or Create ML (`snackloc data export`).

``export_dataset`` writes one set per split with globox's writers (Create ML: createml.py),
images copied beside.
Rows are read as the validate stage reads them (``expectations.table_frame``: the same cells
count as numbers); a row whose box is not numeric, not inside [0, 1] or has no width or
height, or whose class is empty, is reported and skipped, as is a missing or unreadable
image. Nothing is fatal but an unusable dataset as a whole.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import yaml
from globox import Annotation, AnnotationSet, BoundingBox

from pipeline.core.errors import UserError
from pipeline.core.files import check_replaceable, replaced_dir, write_json
from pipeline.data.contract import (
    BOX_COLUMNS,
    SPLITS,
    annotations_path,
    read_raw_annotations,
    safe_image_path,
)
from pipeline.data.formats.base import OWN_REPORTS, ReadContext
from pipeline.data.formats.createml import CREATEML_FILE, createml_records
from pipeline.data.formats.images import read_header
from pipeline.data.formats.report import format_problems, problem_records
from pipeline.data.quality.expectations import table_frame, value_column

EXPORT_FORMATS: tuple[str, ...] = ("coco", "voc", "yolo", "createml")
EXPORT_REPORT = OWN_REPORTS[1]


def _box_text(coords: Iterable[float]) -> str:
    return "(" + ", ".join(f"{value:.4g}" for value in coords) + ")"


class Exported(NamedTuple):
    """One image to export: its globox annotation (image_id = file name) and file."""

    annotation: Annotation
    path: Path


def parse_row_box(record: dict[str, str], parsed: pd.Series) -> tuple[float, ...] | str:
    """(x_min, x_max, y_min, y_max) of a CSV row, or why it is not a usable box.

    ``parsed`` is the row as the validate stage parses it (``table_frame``).
    """
    if not record["class_name"].strip():
        return "empty class_name"
    coords = tuple(float(parsed[value_column(col)]) for col in BOX_COLUMNS)
    if any(pd.isna(value) for value in coords):
        return f"box {[record[col] for col in BOX_COLUMNS]} is not numeric"
    x_min, x_max, y_min, y_max = coords
    if not all(0.0 <= value <= 1.0 for value in coords):
        return f"box {_box_text(coords)} is not inside [0, 1]"
    if x_max <= x_min or y_max <= y_min:
        return f"box {_box_text(coords)} has no width or height"
    return coords


def read_snacks_split(root: Path, split: str, ctx: ReadContext) -> list[Exported]:
    """The images of one split with their boxes; unusable rows and images are reported."""
    csv_path = annotations_path(root, split)
    frame = read_raw_annotations(csv_path)
    grouped: dict[tuple[str, str], list[tuple[str, tuple[float, ...]]]] = {}
    parsed = table_frame(frame)
    for number, record in enumerate(frame.to_dict("records")):
        coords = parse_row_box(record, parsed.iloc[number])
        if isinstance(coords, str):
            ctx.report(csv_path, f"row {number}", "bad_box", "skipped box", coords)
            continue
        key = (record["folder"], record["image_id"])
        grouped.setdefault(key, []).append((record["class_name"], coords))
    exported: list[Exported] = []
    seen: set[str] = set()
    for (folder, image_id), boxes in grouped.items():
        item = f"{split}/{folder}/{image_id}"
        path = safe_image_path(root, split, folder, image_id)
        if path is None or image_id in seen:
            why = "unsafe folder/image_id" if path is None else "image_id also in another folder"
            ctx.report(csv_path, item, "bad_image_id", "skipped image", why)
            continue
        if not path.is_file():
            ctx.report(csv_path, item, "missing_image", "skipped image", f"{path} not found")
            continue
        try:
            size = read_header(path).size
        except Exception as exc:  # any decoder error: this image only
            ctx.report(csv_path, item, "unreadable_image", "skipped image", str(exc))
            continue
        seen.add(image_id)
        annotation = Annotation(f"{image_id}.jpg", size)
        for label, (x_min, x_max, y_min, y_max) in boxes:
            coords = (x_min, y_min, x_max, y_max)
            annotation.add(
                BoundingBox.create(label=label, coords=coords, relative=True, image_size=size)
            )
        exported.append(Exported(annotation, path))
    return exported


def copy_images(items: list[Exported], folder: Path) -> None:
    """Each image, byte for byte, as ``folder/<image_id>.jpg``."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in items:
        shutil.copyfile(item.path, folder / item.annotation.image_id)


def _annotation_set(items: list[Exported]) -> AnnotationSet:
    return AnnotationSet(item.annotation for item in items)


def export_coco(out: Path, split: str, items: list[Exported], labels: list[str]) -> None:
    """``annotations/instances_<split>.json`` + ``images/<split>/`` (category ids from 1)."""
    copy_images(items, out / "images" / split)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    _annotation_set(items).save_coco(
        out / "annotations" / f"instances_{split}.json",
        label_to_id={label: number for number, label in enumerate(labels, start=1)},
        imageid_to_id={item.annotation.image_id: n for n, item in enumerate(items, start=1)},
    )


def export_voc(out: Path, split: str, items: list[Exported], labels: list[str]) -> None:
    """``<split>/Annotations/<id>.xml`` + ``<split>/JPEGImages/<id>.jpg``."""
    copy_images(items, out / split / "JPEGImages")
    (out / split / "Annotations").mkdir(parents=True, exist_ok=True)
    _annotation_set(items).save_pascal_voc(out / split / "Annotations")


def export_yolo(out: Path, split: str, items: list[Exported], labels: list[str]) -> None:
    """Ultralytics layout: ``images/<split>/``, ``labels/<split>/`` (data.yaml written later)."""
    copy_images(items, out / "images" / split)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    label_to_id = {label: number for number, label in enumerate(labels)}
    _annotation_set(items).save_yolo_darknet(out / "labels" / split, label_to_id=label_to_id)


def export_createml(out: Path, split: str, items: list[Exported], labels: list[str]) -> None:
    """``<split>/annotations.json`` beside the split's images, as Create ML wants them."""
    copy_images(items, out / split)
    records = createml_records([item.annotation for item in items])
    text = json.dumps(records, indent=1, ensure_ascii=False)
    (out / split / CREATEML_FILE).write_text(text + "\n", encoding="utf-8")


def write_yolo_names(out: Path, labels: list[str], splits: Iterable[str]) -> None:
    """``data.yaml`` (Ultralytics) and ``classes.txt`` (Darknet): class i = labels[i]."""
    config: dict[str, Any] = {split: f"images/{split}" for split in splits}
    config["names"] = dict(enumerate(labels))
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    (out / "data.yaml").write_text(text, encoding="utf-8")
    (out / "classes.txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")


EXPORTERS: dict[str, Callable[[Path, str, list[Exported], list[str]], None]] = {
    "coco": export_coco,
    "voc": export_voc,
    "yolo": export_yolo,
    "createml": export_createml,
}


def export_dataset(data: Path, out: Path, fmt: str, *, overwrite: bool = False) -> dict:
    """Write the snacks dataset at ``data`` as COCO, Pascal VOC, YOLO or Create ML at ``out``.

    One set per split present, images copied beside; classes are numbered in sorted name
    order. Unusable rows and images are reported, not fatal. Returns the report (also
    written to ``out/export-report.json``).
    """
    if fmt not in EXPORTERS:
        raise UserError(f"unknown export format {fmt!r}", hint=f"use {'|'.join(EXPORTERS)}")
    data, out = Path(data), Path(out)
    present = [split for split in SPLITS if annotations_path(data, split).is_file()]
    if not present:
        raise UserError(f"{data}: no annotations-<split>.csv", hint="point --data at a dataset")
    check_replaceable(out, overwrite, source=data)
    if data.resolve() in out.resolve().parents:
        raise UserError(f"{out}: inside the dataset {data}", hint="export to another folder")
    ctx = ReadContext(root=data)
    splits = {split: read_snacks_split(data, split, ctx) for split in present}
    labels = sorted(
        {box.label for items in splits.values() for item in items for box in item.annotation.boxes}
    )
    with replaced_dir(out) as tmp:
        for split, items in splits.items():
            EXPORTERS[fmt](tmp, split, items, labels)
        if fmt == "yolo":
            write_yolo_names(tmp, labels, present)
        report = {
            "data": str(data),
            "format": fmt,
            "out": str(out),
            "images": {split: len(items) for split, items in splits.items()},
            "boxes": {
                s: sum(len(i.annotation.boxes) for i in items) for s, items in splits.items()
            },
            "classes": labels,
            "problem_counts": dict(sorted(Counter(p.kind for p in ctx.problems).items())),
            "problems": [asdict(problem) for problem in ctx.problems],
        }
        write_json(tmp / EXPORT_REPORT, report)
    return report


def export_summary(report: dict[str, Any]) -> str:
    """A few lines about an export, then the problems table."""
    lines = [
        f"exported {report['data']} as {report['format']} into {report['out']}: "
        + ", ".join(
            f"{s} {n} images / {report['boxes'][s]} boxes" for s, n in report["images"].items()
        )
        + f"; {len(report['classes'])} classes"
    ]
    problems = problem_records(report)
    if problems:
        report_path = Path(report["out"]) / EXPORT_REPORT
        lines += [f"{len(problems)} problems (all in {report_path}):", format_problems(problems)]
    return "\n".join(lines)
