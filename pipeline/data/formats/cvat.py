"""CVAT for images 1.1: one XML lists images with their <box> elements."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from globox import BoundingBox

from pipeline.data.formats.base import (
    READ_ERRORS,
    Entry,
    ReadContext,
    box_item,
    describe,
    pixel_size,
    split_of,
    xml_root_tag,
)


def read_cvat(path: Path, ctx: ReadContext) -> list[Entry]:
    """CVAT for images 1.1: one XML lists images with their <box> elements."""
    root = ET.parse(path).getroot()
    nodes = root.findall("image")
    if root.tag != "annotations" or not nodes:
        raise ValueError(
            "not a CVAT for images file (no <image> elements; video tracks unsupported)"
        )
    entries = []
    for node in nodes:
        name = node.get("name") or ""
        size = pixel_size(node.get("width"), node.get("height"))
        entry = Entry(name, path, size=size, split=split_of([node.get("subset", "")]))
        for index, child in enumerate(node):
            item = box_item(name, index)
            if child.tag != "box":
                ctx.report(path, item, "not_a_box", "skipped box", f"<{child.tag}> element")
                continue
            try:
                entry.boxes.append(BoundingBox.from_cvat(child))
            except READ_ERRORS as exc:
                ctx.report(path, item, "bad_box", "skipped box", describe(exc))
        entries.append(entry)
    return entries


def sniff_cvat(path: Path) -> bool:
    """An XML whose root is <annotations>."""
    return xml_root_tag(path) == "annotations"
