"""Fixture writers for the import and export tests: one small dataset per labeling
tool's format, and the expected snacks-layout rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
from helpers_data import noise_image

from pipeline.data.contract import SPLITS, annotations_path
from pipeline.data.formats import importing

CLASSES = ["apple", "banana", "cake"]
OPENIMAGES_BOX = ["XMin", "XMax", "YMin", "YMax"]
BOXES = ["x_min", "x_max", "y_min", "y_max"]
HEADER = "image_id,x_min,x_max,y_min,y_max,class_name,folder"
# (image stem, (width, height), [(class, left, top, right, bottom) in pixels])
SPEC = [
    ("pic_a", (64, 48), [("apple", 4, 4, 40, 30), ("banana", 30, 20, 60, 44)]),
    ("pic_b", (50, 60), [("banana", 5, 5, 45, 55)]),
    ("pic_c", (40, 40), [("cake", 2, 3, 30, 33), ("apple", 0, 0, 10, 10)]),
    ("pic_d", (48, 64), [("banana", 10, 10, 20, 60), ("apple", 1, 1, 47, 63)]),
]
FOLDERS = {"pic_a": "apple", "pic_b": "banana", "pic_c": "cake", "pic_d": "apple"}  # largest


# --------------------------------------------------------------------------------------
# Fixture writers: one small dataset per format
# --------------------------------------------------------------------------------------


def jpeg(path: Path, size: tuple[int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(path.name, size).save(path, format="JPEG", quality=90)
    return path


def voc_xml(filename: str, size: tuple[int, int] | None, boxes: list) -> str:
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    objects = "".join(
        f"<object><name>{c}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for c, x0, y0, x1, y1 in boxes
    )
    return f"<annotation><filename>{filename}</filename>{size_xml}{objects}</annotation>"


def write_voc(root: Path, spec: list = SPEC) -> Path:
    for stem, size, boxes in spec:
        jpeg(root / "JPEGImages" / f"{stem}.jpg", size)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", size, boxes))
    return root


def coco_json(spec: list, prefix: str = "") -> dict:
    images, annotations = [], []
    for number, (stem, (w, h), boxes) in enumerate(spec, start=1):
        images.append({"id": number, "file_name": f"{prefix}{stem}.jpg", "width": w, "height": h})
        for c, x0, y0, x1, y1 in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": CLASSES.index(c) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(root: Path, spec: list = SPEC) -> Path:
    for stem, size, _ in spec:
        jpeg(root / "images" / f"{stem}.jpg", size)
    path = root / "annotations.json"
    path.write_text(json.dumps(coco_json(spec)))
    return path


def yolo_line(c: str, x0: float, y0: float, x1: float, y1: float, w: int, h: int) -> str:
    xc, yc, bw, bh = (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h
    return f"{CLASSES.index(c)} {xc} {yc} {bw} {bh}"


def write_yolo(root: Path, spec: list = SPEC) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for stem, (w, h), boxes in spec:
        jpeg(root / f"{stem}.jpg", (w, h))
        (root / f"{stem}.txt").write_text("\n".join(yolo_line(*box, w, h) for box in boxes) + "\n")
    return root


def write_cvat(root: Path, spec: list = SPEC) -> Path:
    nodes = []
    for number, (stem, (w, h), boxes) in enumerate(spec):
        jpeg(root / "images" / f"{stem}.jpg", (w, h))
        inner = "".join(
            f'<box label="{c}" xtl="{x0}" ytl="{y0}" xbr="{x1}" ybr="{y1}" occluded="0"/>'
            for c, x0, y0, x1, y1 in boxes
        )
        nodes.append(
            f'<image id="{number}" name="{stem}.jpg" width="{w}" height="{h}">{inner}</image>'
        )
    path = root / "annotations.xml"
    path.write_text(f"<annotations><version>1.1</version>{''.join(nodes)}</annotations>")
    return path


def labelme_json(stem: str, size: tuple[int, int], boxes: list, path: str = "") -> dict:
    shapes = [
        {"label": c, "points": [[x0, y0], [x1, y1]], "shape_type": "rectangle"}
        for c, x0, y0, x1, y1 in boxes
    ]
    return {
        "version": "5.4.1",
        "shapes": shapes,
        "imagePath": path or f"{stem}.jpg",
        "imageData": None,
        "imageWidth": size[0],
        "imageHeight": size[1],
    }


def write_labelme(root: Path, spec: list = SPEC) -> Path:
    for stem, size, boxes in spec:
        jpeg(root / f"{stem}.jpg", size)
        (root / f"{stem}.json").write_text(json.dumps(labelme_json(stem, size, boxes)))
    return root


def write_openimages(root: Path, spec: list = SPEC) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    mids = {name: f"/m/0{i}" for i, name in enumerate(CLASSES)}
    with (root / "class-descriptions-boxable.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([mid, name] for name, mid in mids.items())
    with (root / "boxes.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageID", "Source", "LabelName", "Confidence", *OPENIMAGES_BOX])
        for stem, (w, h), boxes in spec:
            jpeg(root / "images" / f"{stem}.jpg", (w, h))
            for c, x0, y0, x1, y1 in boxes:
                writer.writerow([stem, "human", mids[c], 1, x0 / w, x1 / w, y0 / h, y1 / h])
    return root


WRITERS = {
    "voc": write_voc,
    "coco": write_coco,
    "yolo": write_yolo,
    "cvat": write_cvat,
    "labelme": write_labelme,
    "openimages": write_openimages,
}


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def run_import(src: Path, out: Path, fmt: str, **options) -> dict:
    return importing.import_dataset(src, out, importing.ImportOptions(fmt=fmt, **options))


def imported_rows(root: Path) -> pd.DataFrame:
    """Every split's rows with a split column, sorted for comparison."""
    frames = []
    for split in SPLITS:
        frame = pd.read_csv(annotations_path(root, split), dtype={"image_id": str})
        frames.append(frame.assign(split=split))
    rows = pd.concat([frame for frame in frames if len(frame)], ignore_index=True)
    rows[BOXES] = rows[BOXES].astype(float)
    return rows.sort_values(["image_id", "class_name", "x_min", "y_min"]).reset_index(drop=True)


def expected_rows(spec: list = SPEC) -> pd.DataFrame:
    records = [
        {
            "image_id": stem,
            "x_min": x0 / w,
            "x_max": x1 / w,
            "y_min": y0 / h,
            "y_max": y1 / h,
            "class_name": c,
            "folder": FOLDERS[stem],
        }
        for stem, (w, h), boxes in spec
        for c, x0, y0, x1, y1 in boxes
    ]
    frame = pd.DataFrame(records)
    return frame.sort_values(["image_id", "class_name", "x_min", "y_min"]).reset_index(drop=True)


def assert_same_boxes(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    keys = ["image_id", "class_name", "folder"]
    assert actual[keys].to_dict("records") == expected[keys].to_dict("records")
    np.testing.assert_allclose(actual[BOXES], expected[BOXES], atol=1e-6)


def kinds(report: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for problem in report["problems"]:
        found.setdefault(problem["kind"], []).append(problem)
    return found
