"""YOLO (Darknet, Ultralytics): one .txt per image, lines ``class x_c y_c w h`` in [0, 1].

Class numbers are named by the user's class list, else the dataset's own names file.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from globox import BoundingBox

from pipeline.core.errors import UserError
from pipeline.data.formats.base import (
    READ_ERRORS,
    UNIT,
    Entry,
    ReadContext,
    describe,
    head_text,
)

YOLO_NAMES_FILES = ("data.yaml", "dataset.yaml", "classes.txt", "obj.names")
YOLO_LINE = re.compile(r"^\s*\d+(\s+[-+.\deE]+){4}\s*$")


def yolo_images_dir(label_dir: Path) -> Path | None:
    """The Ultralytics convention: .../labels/<split>/x.txt pairs with .../images/<split>/x.*."""
    parts = list(label_dir.parts)
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == "labels":
            parts[index] = "images"
            return Path(*parts)
    return None


def read_yolo(path: Path, ctx: ReadContext) -> list[Entry]:
    """YOLO (Darknet, Ultralytics): one .txt per image, lines ``class x_c y_c w h`` in [0, 1]."""
    hints = tuple(p for p in (path.parent, yolo_images_dir(path.parent)) if p is not None)
    entry = Entry(path.stem, path, normalized=True, hints=hints)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            box = BoundingBox.from_yolo_darknet(line, image_size=UNIT)
        except READ_ERRORS as exc:
            ctx.report(path, f"line {number}", "bad_box", "skipped box", describe(exc))
            continue
        box.label = ctx.label_names.get(box.label, box.label)
        entry.boxes.append(box)
    return [entry]


def sniff_yolo(path: Path) -> bool:
    """A text file whose first non-empty line is ``<int> <4 numbers>``."""
    if path.name in YOLO_NAMES_FILES:
        return False
    lines = [line for line in head_text(path, 4096).splitlines() if line.strip()]
    return bool(lines) and YOLO_LINE.match(lines[0]) is not None


def read_class_list(path: Path) -> list[str]:
    """Class names from a file: one per line (.txt, .names) or a YOLO data.yaml ``names``."""
    if path.suffix.lower() not in {".yaml", ".yml"}:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        return [line.strip() for line in lines if line.strip()]
    try:
        names = yaml.safe_load(path.read_text(encoding="utf-8"))["names"]
        if isinstance(names, dict):  # {0: apple, 1: banana}
            names = [names[key] for key in sorted(names, key=int)]
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: no usable `names` ({describe(exc)})") from None
    if not isinstance(names, list) or not names:
        raise UserError(f"{path}: `names` must be a non-empty list or mapping")
    return [str(name).strip() for name in names]


def find_yolo_names(root: Path) -> Path | None:
    """The class names file of a YOLO dataset: data.yaml, classes.txt, obj.names, *.names."""
    for name in YOLO_NAMES_FILES:
        if (root / name).is_file():
            return root / name
    return next(iter(sorted(root.glob("*.names"))), None)


def yolo_names_or_fail(root: Path) -> list[str]:
    """The dataset's class names, or a UserError saying how to give them."""
    path = find_yolo_names(root)
    if path is None:
        raise UserError(
            f"{root}: YOLO labels are class numbers, and no class names file was found",
            hint="pass --classes FILE (one name per line, line i = class i), or put "
            "data.yaml / classes.txt / obj.names in the source folder",
        )
    return read_class_list(path)
