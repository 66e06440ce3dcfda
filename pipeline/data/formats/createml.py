"""Apple Create ML object detection JSON: read and write.

A list of ``{"image": "a.jpg", "annotations": [{"label": ..., "coordinates": {"x", "y",
"width", "height"}}]}``, where x and y are the box's centre, all in pixels. Create ML wants
the JSON file in the folder of the images, names relative to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from globox import Annotation, BoxFormat

from pipeline.data.formats.base import (
    READ_ERRORS,
    Entry,
    ReadContext,
    box_item,
    describe,
    first_item,
    load_json,
    pixel_box,
    sniff_json,
)

CREATEML_FILE = "annotations.json"  # the name the export gives each split's file


def is_createml(content: Any) -> bool:
    """A JSON list whose first element has ``image`` and ``annotations``."""
    item = first_item(content)
    return isinstance(item, dict) and "image" in item and "annotations" in item


def read_createml(path: Path, ctx: ReadContext) -> list[Entry]:
    """Create ML: a JSON list of images, each with centre-based pixel boxes."""
    content = load_json(path)
    if not is_createml(content):
        raise ValueError("not a Create ML file (expected a list of {image, annotations})")
    entries = []
    for index, record in enumerate(content):
        if not isinstance(record, dict) or not record.get("image"):
            detail = "not an object with an image name"
            ctx.report(path, f"[{index}]", "bad_image_record", "skipped image", detail)
            continue
        entry = Entry(str(record["image"]), path)
        for number, annotation in enumerate(record.get("annotations") or []):
            try:
                box = annotation["coordinates"]
                coords = (box["x"], box["y"], box["width"], box["height"])
                entry.boxes.append(pixel_box(annotation["label"], coords, BoxFormat.XYWH))
            except READ_ERRORS as exc:
                item = box_item(entry.name, number)
                ctx.report(path, item, "bad_box", "skipped box", describe(exc))
        entries.append(entry)
    return entries


def sniff_createml(path: Path) -> bool:
    """A JSON list of ``{image, annotations}`` objects."""
    return is_createml(sniff_json(path))


def createml_records(annotations: list[Annotation]) -> list[dict[str, Any]]:
    """The Create ML records of globox annotations (boxes in pixels, centre-based)."""
    return [
        {
            "image": annotation.image_id,
            "annotations": [
                {
                    "label": box.label,
                    "coordinates": dict(zip(("x", "y", "width", "height"), box.xywh, strict=True)),
                }
                for box in annotation.boxes
            ],
        }
        for annotation in annotations
    ]
