"""OpenImages: a CSV with one row per box, normalized ``XMin, XMax, YMin, YMax``."""

from __future__ import annotations

import csv
from pathlib import Path

from globox import BoundingBox

from pipeline.data.formats.base import (
    READ_ERRORS,
    Entry,
    ReadContext,
    describe,
    head_text,
)

OPENIMAGES_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")


def read_openimages(path: Path, ctx: ReadContext) -> list[Entry]:
    """OpenImages: a CSV with one row per box, normalized ``XMin, XMax, YMin, YMax``."""
    entries: dict[str, Entry] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [col for col in OPENIMAGES_COLUMNS if col not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"not an OpenImages box file (no {', '.join(missing)} column)")
        for number, row in enumerate(reader, start=2):
            image_id = (row["ImageID"] or "").strip()
            entry = entries.setdefault(image_id, Entry(image_id, path, normalized=True))
            label = ctx.label_names.get(row["LabelName"], row["LabelName"] or "")
            try:
                coords = tuple(float(row[col]) for col in ("XMin", "YMin", "XMax", "YMax"))
                entry.boxes.append(BoundingBox.create(label=label, coords=coords))
            except READ_ERRORS as exc:
                ctx.report(path, f"line {number}", "bad_box", "skipped box", describe(exc))
    return list(entries.values())


def sniff_openimages(path: Path) -> bool:
    """A CSV whose header holds the OpenImages box columns."""
    header = next(csv.reader(head_text(path, 4096).splitlines()[:1]), [])
    return set(OPENIMAGES_COLUMNS) <= {cell.strip() for cell in header}


def is_class_descriptions(path: Path) -> bool:
    """OpenImages' MID -> display name table (``class-descriptions-boxable.csv``)."""
    return "class-descriptions" in path.name.replace("_", "-").lower()


def openimages_label_names(files: list[Path]) -> dict[str, str]:
    """MID -> display name from every class-descriptions CSV among ``files``."""
    names: dict[str, str] = {}
    for path in files:
        if is_class_descriptions(path):
            with path.open(newline="", encoding="utf-8-sig") as handle:
                names.update((row[0], row[1]) for row in csv.reader(handle) if len(row) >= 2)
    return names
