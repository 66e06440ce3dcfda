"""What every format reader shares: entries, problems, the read context and small parsers.

A reader turns one annotation file into ``Entry`` objects (one per image, as the file
describes it) and records a ``Problem`` for everything it could not use. Each format module
(voc.py, coco.py, ...) holds one reader and one ``sniff`` that tells, from a file's content,
whether the file is in that format (``--format auto``).
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from globox import BoundingBox, BoxFormat, ParsingError

# Words in folder or file names that name a split (`instances_val2017.json`, `labels/train/`).
SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
UNIT = (1, 1)  # the "image size" that keeps normalized coordinates as they are
OWN_REPORTS = ("import-report.json", "export-report.json")  # written by snackloc, not sources
SNIFF_BYTES = 1 << 20  # enough of a file to tell its format
# What a reader may raise for one malformed file, box or record (reported, never fatal).
READ_ERRORS = (
    ParsingError,
    ET.ParseError,
    json.JSONDecodeError,
    UnicodeDecodeError,
    csv.Error,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    AssertionError,  # globox asserts, e.g. "`xmax` must be greater than `xmin`."
)


@dataclass(frozen=True)
class Problem:
    """One thing the import could not use as it was, and what it did about it."""

    source: str  # the annotation file (relative to the source folder), or "" for the dataset
    item: str  # the image, box or line concerned; "" for the whole file
    kind: str  # a short code: missing_image, outside_image, ... (docs/import.md)
    action: str  # skipped file | skipped image | skipped box | clipped box | kept
    detail: str


@dataclass
class Entry:
    """One image as an annotation file describes it."""

    name: str  # the image as the annotation names it: a relative path, a file name or a stem
    origin: Path  # the annotation file
    boxes: list[BoundingBox] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (width, height) as annotated; None if missing or 0
    normalized: bool = False  # box coordinates are already in [0, 1] (YOLO, OpenImages)
    split: str | None = None  # train / val / test when the source layout says so
    hints: tuple[Path, ...] = ()  # folders to look for the image in first
    aliases: tuple[str, ...] = ()  # other names of the image, tried when ``name`` is not found


@dataclass
class ReadContext:
    """What every reader shares: the source folder, reader options and the problem list."""

    root: Path
    label_names: dict[str, str] = field(default_factory=dict)  # YOLO index / OpenImages MID
    problems: list[Problem] = field(default_factory=list)
    label_key: str = "class"  # Sloth: the annotation key that holds the label
    name_first: bool = False  # RectLabel: keep only the object name of "name-attr-attr"

    def relative(self, path: Path) -> str:
        """``path`` relative to the source folder (as given when outside it), posix style."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return Path(path).as_posix()

    def report(self, path: Path | None, item: str, kind: str, action: str, detail: str) -> None:
        """Record a problem about ``path`` (an annotation file; None for the dataset)."""
        source = self.relative(path) if path is not None else ""
        self.problems.append(Problem(source, item, kind, action, detail))


Reader = Callable[[Path, ReadContext], list[Entry]]
Sniffer = Callable[[Path], bool]


@dataclass(frozen=True)
class Format:
    """How one format stores annotations: which files, their reader and their sniffer."""

    suffixes: tuple[str, ...]
    read: Reader
    per_image: bool  # one annotation file per image (else one file lists many images)
    sniff: Sniffer  # does this file's content look like this format? (``--format auto``)
    refines: str = ""  # a format this one is a dialect of: auto prefers it when it matches


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def split_of(parts: Iterable[str]) -> str | None:
    """The split named by folder/file name parts (the last one naming a split wins)."""
    found = None
    for part in parts:
        for word in re.findall(r"[a-z]+", str(part).lower()):
            found = SPLIT_WORDS.get(word, found)
    return found


def file_split(path: Path, ctx: ReadContext, per_image: bool) -> str | None:
    """The split of an annotation file: from its folders, and its name when it lists many."""
    relative = PurePosixPath(ctx.relative(path))
    parts = list(relative.parent.parts) if per_image else [*relative.parent.parts, relative.stem]
    return split_of(parts)


def pixel_size(width: Any, height: Any) -> tuple[int, int] | None:
    """(width, height) when both are positive numbers, else None (then the image decides)."""
    try:
        size = (round(float(width)), round(float(height)))
    except (TypeError, ValueError, OverflowError):
        return None
    return size if min(size) > 0 else None


def describe(exc: BaseException) -> str:
    """A one-line reason for a parse error."""
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}" if exc.args else "missing field"
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {text}"
    return f"not valid XML: {text}" if isinstance(exc, ET.ParseError) else text


def box_item(image: str, index: int) -> str:
    """How a problem names one box of an image."""
    return f"{image} box {index}"


def pixel_box(label: Any, coords: Iterable[Any], box_format: BoxFormat) -> BoundingBox:
    """A box from four pixel numbers in ``box_format`` (raises ValueError on non-numbers)."""
    values = tuple(float(value) for value in coords)
    if len(values) != 4:
        raise ValueError(f"expected 4 coordinates, got {len(values)}")
    return BoundingBox.create(label=str(label), coords=values, box_format=box_format)


# --------------------------------------------------------------------------------------
# Reading a file's head, for the sniffers
# --------------------------------------------------------------------------------------


def head_text(path: Path, limit: int = SNIFF_BYTES) -> str:
    """The first ``limit`` bytes of a file as text ("" when unreadable)."""
    try:
        with path.open("rb") as handle:
            return handle.read(limit).decode("utf-8-sig", errors="replace")
    except OSError:
        return ""


def load_json(path: Path) -> Any:
    """The JSON content of a whole file (raises for what is not JSON)."""
    return json.loads(path.read_text(encoding="utf-8-sig"))


def sniff_json(path: Path) -> Any:
    """The JSON content of a small enough file, or None (not JSON, or too large to sniff)."""
    if path.stat().st_size > 64 * SNIFF_BYTES:
        return None
    try:
        return load_json(path)
    except (OSError, ValueError):
        return None


def first_item(content: Any) -> Any:
    """The first element of a JSON list (None for anything else)."""
    return content[0] if isinstance(content, list) and content else None


def xml_root_tag(path: Path) -> str:
    """The root element's tag of an XML file ("" when it is not XML)."""
    try:
        for _, element in ET.iterparse(path, events=("start",)):
            return element.tag
    except (ET.ParseError, OSError):
        return ""
    return ""
