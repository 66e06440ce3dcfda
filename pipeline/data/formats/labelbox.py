"""Labelbox exports: v2 NDJSON (one data row a line) and the legacy v1 JSON array.

v2: the image is named by ``data_row.external_id``, else ``data_row.global_key``, else the
file name of the ``data_row.row_data`` URL (each tried in turn on the local disk; nothing is
downloaded). ``projects`` maps project ids to ``labels[]``, each with
``annotations.objects[]``; a box is an object with ``annotation_kind: "ImageBoundingBox"``,
its label in ``name`` and ``bounding_box: {top, left, height, width}`` in pixels.
v1: ``External ID``, ``Labeled Data`` (URL), ``Label.objects[]`` with ``title`` and
``bbox``, and ``Skipped``.

One label per image: when a data row carries several labels (several labelers or
projects), the first one that has objects is used, in file order (projects as listed,
labels as listed); every other one is reported (``label_conflict`` when its boxes differ,
``duplicate_label`` when they are the same).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from globox import BoundingBox, BoxFormat

from pipeline.data.formats.base import (
    READ_ERRORS,
    Entry,
    ReadContext,
    box_item,
    describe,
    first_item,
    head_text,
    pixel_box,
    pixel_size,
)
from pipeline.data.formats.images import url_file_name

V1_KEYS = ("Labeled Data", "External ID", "Label", "DataRow ID")
Candidate = tuple[str, list[Any]]  # (where the label is, its objects)


def image_names(*names: Any, url: Any = "") -> list[str]:
    """The non-empty, distinct names an image goes by, the URL's file name last."""
    found = [str(name) for name in (*names, url_file_name(str(url or ""))) if name]
    return list(dict.fromkeys(found))


def choose_label(ctx: ReadContext, path: Path, name: str, labels: list[Candidate]) -> list[Any]:
    """The objects of the first label that has any; every other label is reported."""
    with_objects = [(where, objects) for where, objects in labels if objects]
    if not with_objects:
        return []
    (chosen_at, chosen), others = with_objects[0], with_objects[1:]
    for where, objects in others:
        same = objects == chosen
        kind = "duplicate_label" if same else "label_conflict"
        how = "the same objects" if same else f"{len(objects)} different objects"
        detail = f"{where} has {how}; the first label ({chosen_at}) is used"
        ctx.report(path, name, kind, "skipped label", detail)
    return chosen


def add_objects(entry: Entry, objects: list[Any], ctx: ReadContext, box_of: Any) -> None:
    """Add each object that ``box_of`` makes a box of; report the others by kind."""
    for number, obj in enumerate(objects):
        item = box_item(entry.name, number)
        try:
            box = box_of(obj)
        except READ_ERRORS as exc:
            ctx.report(entry.origin, item, "bad_box", "skipped box", describe(exc))
            continue
        if isinstance(box, str):
            ctx.report(entry.origin, item, "not_a_box", "skipped box", box)
        else:
            entry.boxes.append(box)


# --------------------------------------------------------------------------------------
# Export v2 (NDJSON)
# --------------------------------------------------------------------------------------


def v2_box(obj: dict) -> BoundingBox | str:
    """A v2 object's box, or what kind of object it is instead."""
    kind = obj.get("annotation_kind")
    if kind != "ImageBoundingBox":
        return f"a {kind or 'object without annotation_kind'} ({obj.get('name', '')})"
    box = obj["bounding_box"]
    coords = (box["left"], box["top"], box["width"], box["height"])
    return pixel_box(obj["name"], coords, BoxFormat.LTWH)


def v2_entry(row: dict, path: Path, ctx: ReadContext, item: str) -> Entry | None:
    """The image of one v2 data row, with the boxes of its chosen label."""
    data_row = row["data_row"]
    names = image_names(
        data_row.get("external_id"), data_row.get("global_key"), url=data_row.get("row_data")
    )
    if not names:
        detail = "no external_id, global_key or row_data file name"
        ctx.report(path, item, "missing_image", "skipped image", detail)
        return None
    media = row.get("media_attributes") or {}
    size = pixel_size(media.get("width"), media.get("height"))
    entry = Entry(names[0], path, size=size, aliases=tuple(names[1:]))
    labels = [
        (f"project {project_id} label {label.get('id', number)}", label_objects(label))
        for project_id, project in (row.get("projects") or {}).items()
        for number, label in enumerate(project.get("labels") or [])
    ]
    add_objects(entry, choose_label(ctx, path, entry.name, labels), ctx, v2_box)
    return entry


def label_objects(label: dict) -> list[Any]:
    """The objects of one v2 label."""
    return list((label.get("annotations") or {}).get("objects") or [])


def read_ndjson(text: str, path: Path, ctx: ReadContext) -> list[Entry]:
    """Export v2: one JSON data row a line; a bad line costs only its row."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        item = f"line {number}"
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("data_row"), dict):
                raise ValueError("not a Labelbox data row (no data_row object)")
            entry = v2_entry(row, path, ctx, item)
        except READ_ERRORS as exc:
            if not entries and number == 1:  # the first line decides whether this is Labelbox
                raise ValueError(f"line 1: {describe(exc)}") from None
            ctx.report(path, item, "bad_record", "skipped image", describe(exc))
            continue
        if entry is not None:
            entries.append(entry)
    return entries


# --------------------------------------------------------------------------------------
# Legacy export v1 (JSON array)
# --------------------------------------------------------------------------------------


def v1_box(obj: dict) -> BoundingBox | str:
    """A v1 object's box, or what kind of object it is instead."""
    if "bbox" not in obj:
        shape = next((key for key in ("polygon", "line", "point") if key in obj), "object")
        return f"a {shape} ({obj.get('title', '')})"
    box = obj["bbox"]
    coords = (box["left"], box["top"], box["width"], box["height"])
    return pixel_box(obj["title"], coords, BoxFormat.LTWH)


def read_v1(content: list, path: Path, ctx: ReadContext) -> list[Entry]:
    """Legacy v1: rows of the same data row (several labelers) share one image."""
    groups: dict[str, tuple[Entry, list[Candidate]]] = {}
    for index, record in enumerate(content):
        record = record if isinstance(record, dict) else {}
        names = image_names(record.get("External ID"), url=record.get("Labeled Data"))
        if not names:
            detail = "no External ID or Labeled Data file name"
            ctx.report(path, f"[{index}]", "bad_image_record", "skipped image", detail)
            continue
        if record.get("Skipped") or record.get("Label") == "Skip":
            ctx.report(path, names[0], "skipped_in_tool", "skipped image", "marked Skipped")
            continue
        key = str(record.get("DataRow ID") or names[0])
        entry = Entry(names[0], path, aliases=tuple(names[1:]))
        entry, labels = groups.setdefault(key, (entry, []))
        label = record.get("Label") if isinstance(record.get("Label"), dict) else {}
        labels.append((f"row {index} (ID {record.get('ID', '?')})", label.get("objects") or []))
    for entry, labels in groups.values():
        add_objects(entry, choose_label(ctx, path, entry.name, labels), ctx, v1_box)
    return [entry for entry, _ in groups.values()]


def read_labelbox(path: Path, ctx: ReadContext) -> list[Entry]:
    """A Labelbox export: the v1 JSON array, or v2 NDJSON."""
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        content = json.loads(text)
        if not is_v1(content):
            raise ValueError(f"not a Labelbox v1 export (no {', '.join(V1_KEYS)})")
        return read_v1(content, path, ctx)
    return read_ndjson(text, path, ctx)


def is_v1(content: Any) -> bool:
    """A JSON list whose first element has a v1 key."""
    item = first_item(content)
    return isinstance(item, dict) and any(key in item for key in V1_KEYS)


def sniff_labelbox(path: Path) -> bool:
    """A v2 data row on the first line, or a v1 JSON array."""
    text = head_text(path).lstrip()
    if text.startswith("["):
        try:
            return is_v1(json.loads(path.read_text(encoding="utf-8-sig")))
        except (OSError, ValueError):
            return False
    try:
        row = json.loads(text.splitlines()[0]) if text else None
    except ValueError:
        return False
    return isinstance(row, dict) and isinstance(row.get("data_row"), dict)
