"""Which images a `snackloc predict` call means: files, folders, globs, annotation CSVs.

Imports no TensorFlow, so the command can say "nothing to predict" before the model loads.

- a file: that image (whatever its extension: a PNG named .jpg is still an image);
- a folder: every image file under it (by extension, sorted, recursively);
- a glob (``"photos/**/*.jpg"``, quoted so that the shell leaves it alone): its matches;
- ``annotations-<split>.csv`` of the data contract: each image it names once, found under
  ``<data root>/<split>/<folder>/<image_id>.jpg`` (the data root: the CSV's folder if it
  holds ``<split>/``, else ``data/``, or ``--data-root``).

A path that does not exist stays in the list: it is reported as "file not found" with the
results, and the other images still run.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.data.contract import (
    IMAGE_SUFFIXES,
    SPLITS,
    read_raw_annotations,
    safe_image_path,
)

GLOB_CHARS = re.compile(r"[*?\[]")
DEFAULT_DATA_ROOT = Path("data")


def collect_images(args: list[Path], data_root: Path | None = None) -> list[Path]:
    """The image paths ``args`` name, in order, each once."""
    found: dict[Path, None] = {}  # ordered set
    for arg in args:
        for path in _expand(arg, data_root):
            found.setdefault(path)
    return list(found)


def _expand(arg: Path, data_root: Path | None) -> list[Path]:
    if arg.is_dir():  # an empty one stays: reported as "is a directory, not an image"
        return folder_images(arg) or [arg]
    if arg.suffix.lower() == ".csv" and arg.is_file():
        return csv_images(arg, data_root)
    if not arg.exists() and GLOB_CHARS.search(str(arg)):
        matches = sorted(Path(p) for p in glob.glob(str(arg), recursive=True))
        if not matches:
            raise UserError(f"{arg}: the pattern matches no file")
        return [p for m in matches for p in (folder_images(m) if m.is_dir() else [m])]
    return [arg]


def folder_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (by extension), sorted."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )


def csv_images(path: Path, data_root: Path | None = None) -> list[Path]:
    """The images an annotation CSV names, once each, in the order of their first row."""
    split = split_of(path)
    root = data_root or _data_root(path, split)
    frame = read_raw_annotations(path).drop_duplicates(["image_id", "folder"])
    paths, unsafe = [], 0
    for image_id, folder in zip(frame["image_id"], frame["folder"], strict=True):
        image = safe_image_path(root, split, folder, image_id)
        if image is None:
            unsafe += 1  # path traversal (../): never read
        else:
            paths.append(image)
    if not paths:
        raise UserError(f"{path}: no usable image row ({unsafe} with an unsafe path)")
    return paths


def split_of(path: Path) -> str:
    """``test`` of ``annotations-test.csv``; a UserError for another name."""
    found = re.fullmatch(r"annotations-(\w+)\.csv", path.name)
    if not found or found.group(1) not in SPLITS:
        raise UserError(
            f"{path}: not an annotation CSV of the data contract",
            hint="name it annotations-train.csv, annotations-val.csv or annotations-test.csv",
        )
    return found.group(1)


def _data_root(csv: Path, split: str) -> Path:
    for root in (csv.parent, DEFAULT_DATA_ROOT):
        if (root / split).is_dir():
            return root
    raise UserError(
        f"{csv}: no {split}/ image folder beside it or in {DEFAULT_DATA_ROOT}/",
        hint="say where the images are: --data-root FOLDER",
    )
