"""CVAT for images 1.1: one XML lists images with their <box> elements.

Read: every <image> and its boxes (pixel corners ``xtl ytl xbr ybr``). A box whose
``review`` attribute is ``suggestion`` (written by ``review_annotations``: the model's
suggestion that nobody accepted) and a rotated box (``rotation``: its corners are not the
object's upright box) are skipped and reported.

Written for the review (``snackloc review export --format cvat``): the suspect images with
their rows as boxes (``review`` = ``label``) and the model's suggestion as one more box of
the suggested class (``review`` = ``suggestion``), in CVAT's own layout (``<version>``,
``<meta>`` with the labels and their ``review`` attribute, ``<image id name width
height>``, ``<box label occluded xtl ytl xbr ybr>`` with ``<attribute>`` children).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any

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

REVIEW = "review"  # the box attribute telling a row from the model's suggestion
LABEL, SUGGESTION = "label", "suggestion"


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
            if _attribute(child, REVIEW) == SUGGESTION:
                detail = f"the model's suggestion, not accepted ({REVIEW} is still {SUGGESTION})"
                ctx.report(path, item, "suggestion", "skipped box", detail)
                continue
            try:
                rotation = float(child.get("rotation") or 0)
                if rotation % 360:
                    detail = f"rotated by {rotation:g} degrees: not an upright box"
                    ctx.report(path, item, "rotated_box", "skipped box", detail)
                    continue
                entry.boxes.append(BoundingBox.from_cvat(child))
            except READ_ERRORS as exc:
                ctx.report(path, item, "bad_box", "skipped box", describe(exc))
        entries.append(entry)
    return entries


def _attribute(box: ET.Element, name: str) -> str | None:
    """The text of the box's <attribute name=...> child (None when it has none)."""
    for child in box.iter("attribute"):
        if child.get("name") == name:
            return (child.text or "").strip()
    return None


def sniff_cvat(path: Path) -> bool:
    """An XML whose root is <annotations>."""
    return xml_root_tag(path) == "annotations"


def review_labels(classes: list[str]) -> list[dict[str, Any]]:
    """The labels for a CVAT project or task (its label constructor's Raw JSON): the classes,
    each with the ``review`` attribute (``label`` for a row, the default for a new box)."""
    attribute = {
        "name": REVIEW,
        "mutable": True,
        "input_type": "select",
        "default_value": LABEL,
        "values": [LABEL, SUGGESTION],
    }
    return [{"name": name, "type": "rectangle", "attributes": [attribute]} for name in classes]


def _labels_meta(classes: list[str], images: int) -> ET.Element:
    """<meta><task> with the number of images and the labels, as CVAT writes it."""
    meta = ET.Element("meta")
    task = ET.SubElement(meta, "task")
    for tag, text in (("name", "snackloc review"), ("size", str(images)), ("mode", "annotation")):
        ET.SubElement(task, tag).text = text
    labels = ET.SubElement(task, "labels")
    for spec in review_labels(classes):
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = spec["name"]
        ET.SubElement(label, "type").text = spec["type"]
        attributes = ET.SubElement(label, "attributes")
        for attribute in spec["attributes"]:
            node = ET.SubElement(attributes, "attribute")
            for key in ("name", "mutable", "input_type", "default_value", "values"):
                value = attribute[key]
                text = "\n".join(value) if isinstance(value, list) else str(value)
                ET.SubElement(node, key).text = text
    return meta


def _box(label: str, corners: tuple[float, float, float, float], size, review: str):
    """One <box> of a normalized (x_min, x_max, y_min, y_max) box, in pixels."""
    (x_min, x_max, y_min, y_max), (width, height) = corners, size
    pixels = {"xtl": x_min * width, "ytl": y_min * height, "xbr": x_max * width}
    pixels["ybr"] = y_max * height
    attrib = {"label": label, "source": "file", "occluded": "0"}
    attrib |= {key: f"{value:.2f}" for key, value in pixels.items()}
    box = ET.Element("box", {**attrib, "z_order": "0"})
    ET.SubElement(box, "attribute", {"name": REVIEW}).text = review
    return box


def review_annotations(
    suspects: list[dict[str, Any]],
    rows_of_image: dict[tuple[str, str, str], list[dict[str, Any]]],
    sizes: dict[tuple[str, str, str], tuple[int, int]],
    classes: list[str],
) -> str:
    """annotations.xml of the suspect images (each once, most suspect first): its rows as
    ``label`` boxes, the model's suggestion as a ``suggestion`` box. Image names are
    ``split/folder/id.jpg``. Arguments as for ``labelstudio.review_tasks``."""
    first: dict[tuple[str, str, str], dict[str, Any]] = {}
    for suspect in suspects:
        first.setdefault((suspect["split"], suspect["folder"], suspect["image_id"]), suspect)
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    root.append(_labels_meta(classes, len(first)))
    for number, key in enumerate(first):
        size = sizes[key]
        name = image_name(key)
        attrib = {"id": str(number), "name": name, "width": str(size[0])}
        image = ET.SubElement(root, "image", {**attrib, "height": str(size[1])})
        for row in rows_of_image.get(key, []):
            corners = (row["x_min"], row["x_max"], row["y_min"], row["y_max"])
            image.append(_box(str(row["class_name"]), corners, size, LABEL))
        suspect = first[key]
        corners = tuple(suspect[f"suggest_{c}"] for c in ("x_min", "x_max", "y_min", "y_max"))
        image.append(_box(str(suspect["suggest_class"]), corners, size, SUGGESTION))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def image_name(key: tuple[str, str, str]) -> str:
    """The name a review export gives an image: ``split/folder/id.jpg``."""
    return PurePosixPath(*key).as_posix() + ".jpg"


def review_row_ids(
    rows_of_image: dict[tuple[str, str, str], list[dict[str, Any]]],
    keys: list[tuple[str, str, str]],
) -> dict[str, list[int]]:
    """rows.json of a CVAT review export: each image's CSV row ids at the export (CVAT
    keeps none; ``apply_cvat`` checks them as Label Studio tasks carry them)."""
    return {
        image_name(key): [int(row["row"]) for row in rows_of_image.get(key, [])] for key in keys
    }


def apply_cvat(data_root, xml_path: Path, rows_path: Path) -> dict[str, Any]:
    """Write a CVAT export of a review (``review_annotations``, corrected in CVAT) into the
    dataset: each image's rows (its ids in ``rows_path``, the export's rows.json) are
    replaced by its boxes but those still marked ``suggestion``, as
    ``labelstudio.apply_tasks`` does for Label Studio. An image that rows.json does not list
    is skipped; coordinates come back at CVAT's precision (0.01 pixel)."""
    from pipeline.core.errors import UserError
    from pipeline.data.formats.base import load_json
    from pipeline.data.formats.labelstudio import apply_tasks

    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise UserError(f"{xml_path}: cannot be read ({describe(exc)})") from None
    if not Path(rows_path).is_file():
        hint = "pass --rows: the rows.json that `snackloc review export --format cvat` wrote"
        raise UserError(f"{rows_path} not found (CVAT keeps no row ids)", hint=hint)
    try:
        row_ids = load_json(Path(rows_path))
    except (OSError, ValueError) as exc:
        raise UserError(f"{rows_path}: cannot be read ({describe(exc)})") from None
    if root.tag != "annotations" or not isinstance(row_ids, dict):
        raise UserError(f"{xml_path}: not a CVAT for images file (with {rows_path})")
    tasks = []
    for node in root.iter("image"):
        name = node.get("name") or ""
        size = pixel_size(node.get("width"), node.get("height")) or (1, 1)
        boxes = [box for box in node.iter("box") if _attribute(box, REVIEW) != SUGGESTION]
        regions = [_box_region(box, size) for box in boxes]
        data = {"snackloc_image": name, "rows": row_ids[name]} if name in row_ids else {}
        tasks.append({"data": data, "annotations": [{"result": regions}]})
    return apply_tasks(data_root, tasks)


def _box_region(box: ET.Element, size: tuple[int, int]) -> dict[str, Any]:
    """A <box> as a Label Studio rectangle region; with its corners as written when they are
    not numbers (``apply_tasks`` then skips the image, saying so)."""
    from pipeline.data.formats.labelstudio import box_region

    keys = ("xtl", "xbr", "ytl", "ybr")
    try:
        left, right, top, bottom = (float(box.get(key, "")) for key in keys)
    except ValueError:  # the corners as written, for apply_tasks to name what it cannot read
        value = {"x": box.get("xtl"), "y": box.get("ytl"), "width": box.get("xbr")}
        return {"type": "rectanglelabels", "value": {**value, "height": box.get("ybr")}}
    corners = (left / size[0], right / size[0], top / size[1], bottom / size[1])
    region = box_region(corners, box.get("label") or "", size)
    region["value"]["rotation"] = box.get("rotation") or 0  # a rotated box is not applied
    return region
