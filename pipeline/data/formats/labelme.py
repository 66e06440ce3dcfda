"""LabelMe: one JSON per image; rectangles are boxes, other shapes are reported."""

from __future__ import annotations

from pathlib import Path

from globox import BoundingBox

from pipeline.data.formats.base import (
    READ_ERRORS,
    Entry,
    ReadContext,
    box_item,
    describe,
    load_json,
    pixel_size,
    sniff_json,
)


def read_labelme(path: Path, ctx: ReadContext) -> list[Entry]:
    """LabelMe: one JSON per image; rectangles are boxes, other shapes are reported."""
    content = load_json(path)
    if not isinstance(content, dict) or not isinstance(content.get("shapes"), list):
        raise ValueError("not a LabelMe file (no shapes list)")
    name = str(content.get("imagePath") or path.stem)
    entry = Entry(
        name, path, size=pixel_size(content.get("imageWidth"), content.get("imageHeight"))
    )
    for index, shape in enumerate(content["shapes"]):
        item = box_item(name, index)
        kind = shape.get("shape_type") if isinstance(shape, dict) else None
        if kind != "rectangle":
            ctx.report(path, item, "not_a_box", "skipped box", f"shape_type {kind!r}")
            continue
        try:
            entry.boxes.append(BoundingBox.from_labelme(shape))
        except READ_ERRORS as exc:
            ctx.report(path, item, "bad_box", "skipped box", describe(exc))
    return [entry]


def sniff_labelme(path: Path) -> bool:
    """A JSON object with a ``shapes`` list."""
    content = sniff_json(path)
    return isinstance(content, dict) and isinstance(content.get("shapes"), list)
