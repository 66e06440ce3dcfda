"""Simple Image Annotator: a CSV with one row a box, ``image,id,name,xMin,xMax,yMin,yMax``.

Coordinates are pixels, x values first, then y; values may be floats (``34.0``). Files
written with the tool's ``--out`` option have no header.
"""

from __future__ import annotations

import csv
from pathlib import Path

from globox import BoxFormat

from pipeline.data.formats.base import (
    READ_ERRORS,
    Entry,
    ReadContext,
    describe,
    head_text,
    pixel_box,
)

SIA_HEADER = ("image", "id", "name", "xMin", "xMax", "yMin", "yMax")


def is_number(text: str) -> bool:
    """Whether ``text`` parses as a float."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def is_sia_row(row: list[str], header_ok: bool = True) -> bool:
    """The header, or a 7-cell row whose last four cells are numbers."""
    cells = [cell.strip() for cell in row]
    if header_ok and tuple(cells) == SIA_HEADER:
        return True
    return len(cells) == 7 and all(is_number(cell) for cell in cells[3:])


def read_sia(path: Path, ctx: ReadContext) -> list[Entry]:
    """Simple Image Annotator: one CSV row a box, in pixels; a bad row costs only itself."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    first = next((row for row in rows if any(cell.strip() for cell in row)), [])
    if not is_sia_row(first):
        raise ValueError(f"not a Simple Image Annotator CSV (expected {','.join(SIA_HEADER)})")
    entries: dict[str, Entry] = {}
    for number, row in enumerate(rows, start=1):
        if not any(cell.strip() for cell in row) or tuple(c.strip() for c in row) == SIA_HEADER:
            continue
        item = f"line {number}"
        if len(row) != 7:
            detail = f"{len(row)} cells, expected 7 ({','.join(SIA_HEADER)})"
            ctx.report(path, item, "bad_box", "skipped box", detail)
            continue
        image, _, name, x_min, x_max, y_min, y_max = (cell.strip() for cell in row)
        entry = entries.setdefault(image, Entry(image, path))
        if not name:
            ctx.report(path, item, "bad_box", "skipped box", f"{image}: empty name")
            continue
        try:
            entry.boxes.append(pixel_box(name, (x_min, y_min, x_max, y_max), BoxFormat.LTRB))
        except READ_ERRORS as exc:
            ctx.report(path, item, "bad_box", "skipped box", f"{image}: {describe(exc)}")
    return list(entries.values())


def sniff_sia(path: Path) -> bool:
    """A CSV whose first row is the tool's header or a box row of 7 cells."""
    lines = [line for line in head_text(path, 4096).splitlines() if line.strip()]
    return bool(lines) and is_sia_row(next(csv.reader(lines[:1])))
