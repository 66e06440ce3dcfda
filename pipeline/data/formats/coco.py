"""COCO: one JSON lists images, categories and boxes ``[x, y, width, height]`` in pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from globox import BoxFormat

from pipeline.data.formats.base import (
    READ_ERRORS,
    Entry,
    ReadContext,
    describe,
    load_json,
    pixel_box,
    pixel_size,
    sniff_json,
)


def coco_images(content: dict, path: Path, ctx: ReadContext) -> dict[Any, Entry]:
    """The ``images`` list as entries by id; a record without id or file name is reported."""
    entries: dict[Any, Entry] = {}
    for index, image in enumerate(content["images"]):
        try:
            size = pixel_size(image.get("width"), image.get("height"))
            entries[image["id"]] = Entry(str(image["file_name"]), path, size=size)
        except READ_ERRORS as exc:
            ctx.report(path, f"images[{index}]", "bad_image_record", "skipped image", describe(exc))
    return entries


def read_coco(path: Path, ctx: ReadContext) -> list[Entry]:
    """COCO: one JSON lists images, categories and boxes ``[x, y, width, height]``."""
    content = load_json(path)
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise ValueError("not a COCO file (no images list)")
    labels = {cat["id"]: str(cat["name"]) for cat in content.get("categories") or []}
    entries = coco_images(content, path, ctx)
    for index, record in enumerate(content.get("annotations") or []):
        item = f"annotations[{index}]"
        try:
            entry = entries.get(record["image_id"])
            label = labels.get(record["category_id"])
            if entry is None:
                raise ValueError(f"image_id {record['image_id']!r} is not in images")
            if label is None:
                detail = f"category_id {record['category_id']!r} is not in categories"
                ctx.report(path, item, "unknown_class", "skipped box", detail)
                continue
            entry.boxes.append(pixel_box(label, record["bbox"], BoxFormat.LTWH))
        except READ_ERRORS as exc:
            ctx.report(path, item, "bad_box", "skipped box", describe(exc))
    return list(entries.values())


def sniff_coco(path: Path) -> bool:
    """A JSON object with an ``images`` list."""
    content = sniff_json(path)
    return isinstance(content, dict) and isinstance(content.get("images"), list)
