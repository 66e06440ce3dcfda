"""RectLabel: Pascal VOC XML with RectLabel's own habits.

* One XML per image under ``annotations/`` inside the image folder; subfolders of
  ``annotations/`` mirror the image folders.
* Pixels are counted from (1, 1): ``xmin = 1`` is the image's left edge, so the box's left
  edge is ``xmin - 1`` and its right edge ``xmax``. Values may be floats.
* Polygons, rotated boxes, cubic Béziers, lines and keypoints are ``<object>``s too, with an
  enclosing ``<bndbox>``: only true rectangles are kept, the others are reported.
* An object's name may be the name plus its attributes joined by ``-``
  (``--name-attr first`` keeps the part before the first ``-``).
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from pathlib import Path

from globox import BoundingBox, BoxFormat

from pipeline.data.contract import IMAGE_SUFFIXES
from pipeline.data.formats.base import (
    READ_ERRORS,
    Entry,
    ReadContext,
    box_item,
    describe,
    pixel_box,
)
from pipeline.data.formats.voc import voc_entry, voc_root

SHAPES = ("polygon", "rotated_box", "robndbox", "cubic_bezier", "line", "keypoints", "point")
ANGLES = ("bndbox/rotation", "bndbox/angle", "rotation", "angle")
ANNOTATIONS_DIR = "annotations"


def shape_of(node: ET.Element) -> str:
    """``rectangle`` for a true rectangle, else the kind of shape the object is."""
    for tag in SHAPES:
        if node.find(tag) is not None:
            return tag
    for path in ANGLES:
        angle = (node.findtext(path) or "0").strip()
        try:
            if float(angle) != 0.0:
                return "rotated_box"
        except ValueError:
            return "rotated_box"
    return "rectangle"


def label_of(node: ET.Element, ctx: ReadContext) -> str:
    """The object's name; with ``--name-attr first``, the part before the first ``-``."""
    name = (node.findtext("name") or "").strip()
    return name.split("-", 1)[0].strip() if ctx.name_first else name


def image_folder(annotation_dir: Path) -> Path | None:
    """The image folder that ``.../annotations/<sub>/`` mirrors: ``.../<sub>/``."""
    parts = list(annotation_dir.parts)
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == ANNOTATIONS_DIR:
            return Path(*parts[:index], *parts[index + 1 :])
    return None


def rectlabel_box(node: ET.Element, ctx: ReadContext) -> BoundingBox:
    """The object's box in 0-based pixel edges (RectLabel counts from 1)."""
    bndbox = node.find("bndbox")
    if bndbox is None:
        raise ValueError("no <bndbox>")
    x_min, y_min, x_max, y_max = (bndbox.findtext(tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
    coords = (float(x_min) - 1, float(y_min) - 1, float(x_max), float(y_max))  # type: ignore[arg-type]
    return pixel_box(label_of(node, ctx), coords, BoxFormat.LTRB)


def read_rectlabel(path: Path, ctx: ReadContext) -> list[Entry]:
    """RectLabel: one VOC-like XML per image; only true rectangles are imported."""
    root = voc_root(path)
    entry = voc_entry(root, path)
    entry.hints = tuple(p for p in (image_folder(path.parent),) if p is not None)
    for index, node in enumerate(root.iter("object")):
        item = box_item(entry.name, index)
        shape = shape_of(node)
        if shape != "rectangle":
            ctx.report(path, item, "not_a_box", "skipped box", f"a {shape} ({label_of(node, ctx)})")
            continue
        try:
            entry.boxes.append(rectlabel_box(node, ctx))
        except READ_ERRORS as exc:
            ctx.report(path, item, "bad_box", "skipped box", describe(exc))
    return [entry]


def sniff_rectlabel(path: Path) -> bool:
    """A VOC XML with a RectLabel habit: <occluded>, a non-rectangle object, or kept in
    ``annotations/`` inside a folder of images."""
    try:
        root = voc_root(path)
    except (ET.ParseError, OSError, ValueError):
        return False
    objects = root.findall("object")
    if any(node.find("occluded") is not None or shape_of(node) != "rectangle" for node in objects):
        return True
    folder = image_folder(path.parent)
    return folder is not None and holds_images(folder)


@functools.lru_cache(maxsize=64)
def holds_images(folder: Path) -> bool:
    """Whether ``folder`` directly holds an image file (asked once per folder)."""
    try:
        return any(child.suffix.lower() in IMAGE_SUFFIXES for child in folder.iterdir())
    except OSError:
        return False
