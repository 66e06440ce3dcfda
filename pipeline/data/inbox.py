"""New data dropped into an inbox folder, merged into the data folder.

The scheduled retraining (flows/retrain.py) merges an inbox in the snacks layout before it
runs ``dvc add data``; the validate stage then judges the merged rows like any others.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError
from pipeline.data.contract import SPLITS, annotations_path


def merge_inbox(inbox: Path, data: Path) -> dict[str, Any]:
    """Merge a snacks-layout inbox into ``data``; return counts per split.

    Rows are appended to ``data/annotations-<split>.csv`` (the header must match); images
    are copied beside the existing ones. An image whose path already exists in ``data`` is
    kept as it is (never overwritten) and counted under ``conflicts``. Bad rows are left for
    the validate stage to quarantine.
    """
    counts: dict[str, Any] = {"rows": {}, "images": 0, "conflicts": []}
    for split in SPLITS:
        source = annotations_path(inbox, split)
        if not source.is_file():
            continue
        target = annotations_path(data, split)
        with source.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header, rows = next(reader, None), [row for row in reader if row]
        if header is None:
            continue
        if target.is_file():
            with target.open(newline="", encoding="utf-8") as handle:
                existing = next(csv.reader(handle), None)
            if existing != header:
                raise UserError(
                    f"{source}: columns {header} differ from {target}'s {existing}",
                    hint="write the inbox CSVs in the snacks format (see docs/scheduling.md)",
                )
            text = target.read_text(encoding="utf-8")
            with target.open("a", newline="", encoding="utf-8") as handle:
                if text and not text.endswith("\n"):
                    handle.write("\n")
                csv.writer(handle, lineterminator="\n").writerows(rows)
        else:
            shutil.copyfile(source, target)
        counts["rows"][split] = len(rows)
        images = inbox / split
        if images.is_dir():
            for path in sorted(p for p in images.rglob("*") if p.is_file()):
                dest = data / split / path.relative_to(images)
                if dest.exists():
                    counts["conflicts"].append(str(dest.relative_to(data)))
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
                counts["images"] += 1
    return counts


def inbox_has_data(inbox: Path) -> bool:
    """Whether ``inbox`` holds an annotation CSV of any split."""
    return any(annotations_path(inbox, split).is_file() for split in SPLITS)
