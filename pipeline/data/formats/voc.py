"""Pascal VOC (LabelImg, CVAT's VOC export): one XML per image, corner boxes in pixels."""

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
    xml_root_tag,
)


def voc_root(path: Path) -> ET.Element:
    """The <annotation> element of a VOC file (ValueError for any other XML)."""
    root = ET.parse(path).getroot()
    if root.tag != "annotation":
        raise ValueError(f"not a Pascal VOC file (root element <{root.tag}>)")
    return root


def voc_entry(root: ET.Element, path: Path) -> Entry:
    """The image a VOC file describes, without its boxes."""
    name = (root.findtext("filename") or "").strip() or path.stem
    size = pixel_size(root.findtext("size/width"), root.findtext("size/height"))
    return Entry(name, path, size=size)


def read_voc(path: Path, ctx: ReadContext) -> list[Entry]:
    """Pascal VOC / LabelImg: one XML per image, boxes in pixels."""
    root = voc_root(path)
    entry = voc_entry(root, path)
    for index, node in enumerate(root.iter("object")):
        try:
            entry.boxes.append(BoundingBox.from_xml(node))
        except READ_ERRORS as exc:
            ctx.report(path, box_item(entry.name, index), "bad_box", "skipped box", describe(exc))
    return [entry]


def sniff_voc(path: Path) -> bool:
    """An XML whose root is <annotation>."""
    return xml_root_tag(path) == "annotation"
