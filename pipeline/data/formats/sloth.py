"""Sloth: a JSON (or YAML) list of ``{"class": "image", "filename", "annotations"}`` items.

A rectangle has ``x, y, width, height`` in pixels (top-left corner) and its label under
``class`` (another key with ``--label-key``). Points (``x, y``) and polygons (``xn, yn``)
are counted and skipped; file names are relative to the label file; video items are
reported as unsupported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from globox import BoxFormat

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

YAML_SUFFIXES = (".yaml", ".yml")
RECT_KEYS = ("x", "y", "width", "height")


def load_sloth(path: Path) -> Any:
    """The file's content: YAML by extension, else JSON."""
    if path.suffix.lower() in YAML_SUFFIXES:
        try:
            return yaml.safe_load(path.read_text(encoding="utf-8-sig"))
        except yaml.YAMLError as exc:
            raise ValueError(f"not valid YAML: {describe(exc)}") from None
    return load_json(path)


def is_sloth(content: Any) -> bool:
    """A list whose first element is an item with a ``filename``."""
    item = first_item(content)
    return isinstance(item, dict) and "filename" in item and "image" not in item


def shape_of(annotation: Any) -> str:
    """rect, point or polygon, from the keys an annotation has."""
    if not isinstance(annotation, dict):
        return "malformed"
    if "xn" in annotation or "yn" in annotation:
        return "polygon"
    if all(key in annotation for key in RECT_KEYS):
        return "rect"
    return "point" if "x" in annotation and "y" in annotation else "unknown-shape"


def read_sloth(path: Path, ctx: ReadContext) -> list[Entry]:
    """Sloth: image items with rectangle annotations in pixels."""
    content = load_sloth(path)
    if not is_sloth(content):
        raise ValueError("not a Sloth file (expected a list of items with a filename)")
    entries = []
    for index, item in enumerate(content):
        if not isinstance(item, dict) or not item.get("filename"):
            ctx.report(path, f"[{index}]", "bad_image_record", "skipped image", "no filename")
            continue
        name, kind = str(item["filename"]), item.get("class", "image")
        if kind != "image":
            detail = f"a {kind!r} item: only image items are read"
            ctx.report(path, name, "unsupported_item", "skipped image", detail)
            continue
        entry = Entry(name, path)
        for number, annotation in enumerate(item.get("annotations") or []):
            add_box(entry, number, annotation, ctx)
        entries.append(entry)
    return entries


def add_box(entry: Entry, number: int, annotation: Any, ctx: ReadContext) -> None:
    """Add one rectangle to the entry, or report why it is not one."""
    item = box_item(entry.name, number)
    shape = shape_of(annotation)
    if shape != "rect":
        ctx.report(entry.origin, item, "not_a_box", "skipped box", f"a {shape}")
        return
    label = annotation.get(ctx.label_key)
    if label is None or not str(label).strip():
        detail = f"no label under {ctx.label_key!r} (keys: {', '.join(map(str, annotation))})"
        ctx.report(entry.origin, item, "bad_box", "skipped box", detail)
        return
    try:
        coords = [annotation[key] for key in RECT_KEYS]
        entry.boxes.append(pixel_box(label, coords, BoxFormat.LTWH))
    except READ_ERRORS as exc:
        ctx.report(entry.origin, item, "bad_box", "skipped box", describe(exc))


def sniff_sloth(path: Path) -> bool:
    """A JSON or YAML list of items with a ``filename``."""
    if path.suffix.lower() in YAML_SUFFIXES:
        try:
            return is_sloth(load_sloth(path))
        except (OSError, ValueError):
            return False
    return is_sloth(sniff_json(path))
