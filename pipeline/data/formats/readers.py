"""Readers of the annotation formats that labeling tools write; globox parses the boxes.

``read_source`` turns a source (one annotation file, or a folder of them) into ``Entry``
objects — one per image, as the annotation describes it — plus ``Problem`` records for
everything it could not use. Nothing here writes the snacks layout (importing.py does); the
image headers and the problems table at the end serve the import and the export alike.

globox parses every box, with each format's coordinate convention: Pascal VOC ``bndbox``,
COCO ``[x, y, width, height]``, CVAT ``xtl/ytl/xbr/ybr``, LabelMe corner points, YOLO
normalized centre and size. The per-image envelope (the image's file name and pixel size)
is read here rather than by globox's whole-dataset readers, because those stop at the first
defect: a missing or zero image size (common; filled from the image later), one inverted
box, one unannotated YOLO image or one missing OpenImages file aborts the whole dataset.
Here such a defect costs only its box, image or file, and it is reported.
"""

from __future__ import annotations

import csv
import json
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from globox import BoundingBox, BoxFormat, ParsingError
from PIL import ExifTags, Image

from pipeline.core.errors import UserError
from pipeline.data.contract import IMAGE_SUFFIXES

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
ROTATED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
UNIT = (1, 1)  # the "image size" that keeps normalized coordinates as they are
YOLO_NAMES_FILES = ("data.yaml", "dataset.yaml", "classes.txt", "obj.names")
OWN_REPORTS = ("import-report.json", "export-report.json")  # written by snackloc, not sources
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


@dataclass
class ReadContext:
    """What every reader shares: the source folder, label names and the problem list."""

    root: Path
    label_names: dict[str, str] = field(default_factory=dict)  # YOLO index / OpenImages MID
    problems: list[Problem] = field(default_factory=list)

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


@dataclass(frozen=True)
class Format:
    """How one format stores annotations: which files, and the reader of one file."""

    suffix: str
    read: Reader
    per_image: bool  # one annotation file per image (else one file lists many images)


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
    except (TypeError, ValueError):
        return None
    return size if min(size) > 0 else None


def describe(exc: BaseException) -> str:
    """A one-line reason for a parse error."""
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}" if exc.args else "missing field"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _box_item(image: str, index: int) -> str:
    return f"{image} box {index}"


# --------------------------------------------------------------------------------------
# The readers: one annotation file -> its entries
# --------------------------------------------------------------------------------------


def read_voc(path: Path, ctx: ReadContext) -> list[Entry]:
    """Pascal VOC / RectLabel / LabelImg: one XML per image, boxes in pixels."""
    root = ET.parse(path).getroot()
    if root.tag != "annotation":
        raise ValueError(f"not a Pascal VOC file (root element <{root.tag}>)")
    name = (root.findtext("filename") or "").strip() or path.stem
    entry = Entry(
        name, path, size=pixel_size(root.findtext("size/width"), root.findtext("size/height"))
    )
    for index, node in enumerate(root.iter("object")):
        try:
            entry.boxes.append(BoundingBox.from_xml(node))
        except READ_ERRORS as exc:
            ctx.report(path, _box_item(name, index), "bad_box", "skipped box", describe(exc))
    return [entry]


def read_labelme(path: Path, ctx: ReadContext) -> list[Entry]:
    """LabelMe: one JSON per image; rectangles are boxes, other shapes are reported."""
    content = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(content, dict) or not isinstance(content.get("shapes"), list):
        raise ValueError("not a LabelMe file (no shapes list)")
    name = str(content.get("imagePath") or path.stem)
    entry = Entry(
        name, path, size=pixel_size(content.get("imageWidth"), content.get("imageHeight"))
    )
    for index, shape in enumerate(content["shapes"]):
        item = _box_item(name, index)
        kind = shape.get("shape_type") if isinstance(shape, dict) else None
        if kind != "rectangle":
            ctx.report(path, item, "not_a_box", "skipped box", f"shape_type {kind!r}")
            continue
        try:
            entry.boxes.append(BoundingBox.from_labelme(shape))
        except READ_ERRORS as exc:
            ctx.report(path, item, "bad_box", "skipped box", describe(exc))
    return [entry]


def read_coco(path: Path, ctx: ReadContext) -> list[Entry]:
    """COCO: one JSON lists images, categories and boxes ``[x, y, width, height]``."""
    content = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise ValueError("not a COCO file (no images list)")
    labels = {cat["id"]: str(cat["name"]) for cat in content.get("categories") or []}
    entries: dict[Any, Entry] = {}
    for index, image in enumerate(content["images"]):
        try:
            size = pixel_size(image.get("width"), image.get("height"))
            entries[image["id"]] = Entry(str(image["file_name"]), path, size=size)
        except READ_ERRORS as exc:
            ctx.report(path, f"images[{index}]", "bad_image_record", "skipped image", describe(exc))
    for index, record in enumerate(content.get("annotations") or []):
        item = f"annotations[{index}]"
        try:
            entry = entries.get(record["image_id"])
            label = labels.get(record["category_id"])
            if entry is None:
                raise ValueError(f"image_id {record['image_id']!r} is not in images")
            if label is None:
                detail = f"category_id {record['category_id']!r} is not in categories"
                ctx.report(path, item, "unknown_class", "skipped box", detail)
                continue
            coords = tuple(float(value) for value in record["bbox"])
            box = BoundingBox.create(label=label, coords=coords, box_format=BoxFormat.LTWH)
        except READ_ERRORS as exc:
            ctx.report(path, item, "bad_box", "skipped box", describe(exc))
            continue
        entry.boxes.append(box)
    return list(entries.values())


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
            item = _box_item(name, index)
            if child.tag != "box":
                ctx.report(path, item, "not_a_box", "skipped box", f"<{child.tag}> element")
                continue
            try:
                entry.boxes.append(BoundingBox.from_cvat(child))
            except READ_ERRORS as exc:
                ctx.report(path, item, "bad_box", "skipped box", describe(exc))
        entries.append(entry)
    return entries


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


FORMATS: dict[str, Format] = {
    "voc": Format(".xml", read_voc, per_image=True),
    "coco": Format(".json", read_coco, per_image=False),
    "yolo": Format(".txt", read_yolo, per_image=True),
    "cvat": Format(".xml", read_cvat, per_image=False),
    "labelme": Format(".json", read_labelme, per_image=True),
    "openimages": Format(".csv", read_openimages, per_image=False),
}


# --------------------------------------------------------------------------------------
# Label names
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Whole sources
# --------------------------------------------------------------------------------------


def annotation_files(src: Path, suffix: str) -> list[Path]:
    """SRC itself when it is a file, else every ``*suffix`` file under it (hidden ones skipped)."""
    if src.is_file():
        return [src]
    found = []
    for folder, dirs, files in os.walk(src):  # does not follow symlinked folders
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            Path(folder) / name
            for name in sorted(files)
            if name.lower().endswith(suffix)
            and not name.startswith(".")
            and name not in OWN_REPORTS
        ]
    return found


@dataclass
class SourceRead:
    """Everything read from a source: its folder, the entries and the problems so far."""

    root: Path
    entries: list[Entry]
    context: ReadContext
    yolo_names: list[str] | None = None  # the YOLO class list, when the format is YOLO


def read_source(src: Path, fmt: str, classes: list[str] | None = None) -> SourceRead:
    """Read every annotation file of ``src`` in format ``fmt``.

    ``classes`` is the user's class list; for YOLO it also names the class indices (else the
    dataset's data.yaml / classes.txt / obj.names does). A file that cannot be read is
    reported and skipped; only an unusable source as a whole raises UserError.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: not found")
    spec = FORMATS[fmt]
    ctx = ReadContext(root=src.parent if src.is_file() else src)
    files = annotation_files(src, spec.suffix)
    names = None
    if fmt == "yolo":
        names = classes or _yolo_names_or_fail(ctx.root)
        ctx.label_names = {str(index): name for index, name in enumerate(names)}
        files = [path for path in files if path.name not in YOLO_NAMES_FILES]
    if fmt == "openimages":
        ctx.label_names = openimages_label_names(files)
        files = [path for path in files if not is_class_descriptions(path)]
    if not files:
        raise UserError(f"{src}: no {spec.suffix} annotation file found", found_instead(src, fmt))
    entries = []
    for path in files:
        entries += _read_file(path, spec, ctx)
    return SourceRead(ctx.root, entries, ctx, names)


def found_instead(src: Path, fmt: str) -> str:
    """What a source without ``fmt``'s annotation files holds, and the formats that read it."""
    files = [p for p in src.rglob("*") if p.is_file() and not p.name.startswith(".")]
    held = []
    for suffix, count in Counter(p.suffix.lower() or p.name for p in files).most_common(4):
        readers = [name for name, spec in FORMATS.items() if spec.suffix == suffix]
        held.append(f"{count} {suffix}" + (f" (--format {'|'.join(readers)})" if readers else ""))
    expected = f"--format {fmt} reads {FORMATS[fmt].suffix} files"
    return f"{expected}; {src} holds {', '.join(held) or 'no file'}"


def _yolo_names_or_fail(root: Path) -> list[str]:
    path = find_yolo_names(root)
    if path is None:
        raise UserError(
            f"{root}: YOLO labels are class numbers, and no class names file was found",
            hint="pass --classes FILE (one name per line, line i = class i), or put "
            "data.yaml / classes.txt / obj.names in the source folder",
        )
    return read_class_list(path)


def is_blank(path: Path) -> bool:
    """An empty file, or one holding only whitespace (only small files are read to tell)."""
    size = path.stat().st_size
    return size == 0 or (size < 4096 and not path.read_bytes().strip())


def _read_file(path: Path, spec: Format, ctx: ReadContext) -> list[Entry]:
    """The entries of one annotation file; an empty or unreadable file is reported."""
    try:
        if is_blank(path):
            ctx.report(path, "", "empty_file", "skipped file", "the file is empty")
            return []
        entries = spec.read(path, ctx)
    except (OSError, *READ_ERRORS) as exc:
        ctx.report(path, "", "unreadable_file", "skipped file", describe(exc))
        return []
    split = file_split(path, ctx, spec.per_image)
    for entry in entries:
        entry.split = entry.split or split
    return entries


# --------------------------------------------------------------------------------------
# Finding the image an entry names
# --------------------------------------------------------------------------------------


class ImageIndex:
    """Every image file under the source folder, to find the file an annotation names.

    Lookup order for an entry naming ``name``: ``name`` relative to each of the entry's
    hint folders, its annotation file's folder and the source folder; then (when ``name``
    has no image extension, as YOLO stems and OpenImages IDs) a file of that stem in those
    folders; then the only file under the source folder with that file name (or stem).
    When several match, the one under a folder of the entry's split wins; if that does not
    single one out the image is ambiguous and reported.
    """

    def __init__(self, root: Path, exclude: Path | None = None) -> None:
        self.root = Path(root)
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        skip = Path(exclude).resolve() if exclude is not None else None  # the import's --out
        for folder, dirs, files in os.walk(self.root):  # does not follow symlinked folders
            dirs[:] = sorted(
                d for d in dirs if not d.startswith(".") and (Path(folder) / d).resolve() != skip
            )
            for name in sorted(files):
                path = Path(folder) / name
                if path.suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                    self.by_name.setdefault(name, []).append(path)
                    self.by_stem.setdefault(path.stem, []).append(path)

    def find(self, entry: Entry) -> tuple[Path | None, str, str]:
        """(image file, "", "") when found, else (None, problem kind, detail)."""
        name = PurePosixPath(entry.name.replace("\\", "/"))
        bases = [*entry.hints, entry.origin.parent, self.root]
        direct = [Path(name)] if name.is_absolute() else [base / name for base in bases]
        for candidate in direct:
            if candidate.is_file():
                return candidate, "", ""
        bare = name.suffix.lower() not in IMAGE_SUFFIXES
        matches = (self.by_stem if bare else self.by_name).get(name.name, [])
        if bare:
            for base in bases:
                beside = [path for path in matches if path.parent == base]
                if len(beside) == 1:
                    return beside[0], "", ""
        if len(matches) > 1 and entry.split:
            matches = [path for path in matches if self._split(path) == entry.split] or matches
        if len(matches) == 1:
            return matches[0], "", ""
        if not matches:
            where = f"beside {entry.origin.name} or under {self.root}"
            return None, "missing_image", f"no image {entry.name!r} {where}"
        shown = ", ".join(self._relative(path) for path in matches[:3])
        return None, "ambiguous_image", f"{len(matches)} files match {entry.name!r}: {shown}"

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _split(self, path: Path) -> str | None:
        return split_of(path.relative_to(self.root).parts[:-1])


# --------------------------------------------------------------------------------------
# Image headers and the problems table (import and export)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, without decoding the pixels."""

    fmt: str
    size: tuple[int, int]  # (width, height) as displayed: EXIF orientation applied


def read_header(path: Path) -> ImageHeader:
    """The image's real format and displayed size (raises for what Pillow cannot open)."""
    with Image.open(path) as image:
        width, height = image.size
        try:
            orientation = int(image.getexif().get(ExifTags.Base.Orientation, 1))
        except Exception:  # unreadable EXIF: upright, as the loader assumes
            orientation = 1
        if orientation in ROTATED:
            width, height = height, width
        return ImageHeader(image.format or "unknown", (width, height))


def format_problems(problems: list[Problem], limit: int = 20) -> str:
    """The problems as an aligned text table (the first ``limit``) and counts per kind."""
    if not problems:
        return "no problems"
    header = ("kind", "action", "source", "item", "detail")
    rows = [header] + [
        (p.kind, p.action, p.source, p.item, shorten(p.detail, 90)) for p in problems[:limit]
    ]
    widths = [max(len(row[col]) for row in rows) for col in range(4)]
    lines = [
        "  ".join([*(row[col].ljust(widths[col]) for col in range(4)), row[4]]) for row in rows
    ]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    counts = Counter(p.kind for p in problems)
    lines.append("by kind: " + ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())))
    return "\n".join("  " + line.rstrip() for line in lines)


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, an ellipsis marking the cut."""
    return text if len(text) <= width else text[: width - 3] + "..."


def problem_records(report: dict[str, Any]) -> list[Problem]:
    """The problems of an import or export report, back as ``Problem`` records."""
    return [Problem(**record) for record in report["problems"]]
