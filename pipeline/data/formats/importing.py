"""Import annotations from labeling tools into the snacks layout (`snackloc data import`).

``import_dataset`` reads a source with pipeline/data/formats/readers.py (globox parses the
boxes) and writes the raw data contract (pipeline/data/contract.py):
``<out>/<split>/<folder>/<image_id>.jpg`` and ``<out>/annotations-<split>.csv``. The rules
(docs/import.md has the long version):

* Images: JPEG files (by content, not by extension) are copied byte for byte; any other
  format is written as JPEG (``jpeg_quality``), EXIF orientation applied and alpha
  flattened on white (``dataio.open_image_rgb``). Sources are never modified.
* Boxes are normalized by the image size the annotation states, or by the image's own
  size (as displayed, EXIF orientation applied) when the annotation's is missing or zero.
  A box crossing the image border is clipped (``outside="clip"``) or skipped
  (``outside="skip"``); a box entirely outside is skipped. Either way it is reported.
* image_id: the source file's stem when it is a safe file name and unique (case-
  insensitively) among the imported images; else ``img_`` + 16 hex digits of the SHA-256
  of the image's path relative to the source folder (stable from run to run).
* folder: the class of the image's largest box (ties: the first), or of its first box.
* split: the source's own (train/val/test folders or file names) when every image has one;
  else a stratified split by folder, deterministic from ``seed``, with byte-identical
  images kept in one split.
* Everything that could not be used as it was is a ``Problem``: printed as a table and
  written to ``<out>/import-report.json``; it never stops the import of the rest.

The way back is pipeline/data/formats/exporting.py.
"""

from __future__ import annotations

import functools
import hashlib
import math
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from globox import BoundingBox

from pipeline.core.config import SNACK_CLASSES
from pipeline.core.errors import UserError
from pipeline.core.files import atomic_path, check_replaceable, replaced_dir, write_csv, write_json
from pipeline.data.contract import (
    ANNOTATION_COLUMNS,
    SPLITS,
    annotations_path,
    image_path,
    open_image_rgb,
)
from pipeline.data.formats.base import OWN_REPORTS, UNIT, Entry, Problem, ReadContext
from pipeline.data.formats.images import ImageHeader, ImageIndex, read_header
from pipeline.data.formats.readers import AUTO, FORMATS, SourceRead, format_name, read_source
from pipeline.data.formats.report import format_problems, problem_records
from pipeline.data.formats.yolo import read_class_list

IMPORT_FORMATS: tuple[str, ...] = (AUTO, *FORMATS)
FOLDER_RULES: tuple[str, ...] = ("largest", "first")
OUTSIDE_RULES: tuple[str, ...] = ("clip", "skip")
NAME_ATTR_RULES: tuple[str, ...] = ("keep", "first")
IMPORT_REPORT = OWN_REPORTS[0]
JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # MPO: the multi-picture JPEG of phone cameras
EPS = 1e-6  # coordinates this close beyond the border are float noise, snapped silently
TINY_SPLIT = 10  # fewer images than this in a split make its numbers noise...
TINY_FROM = 100  # ... worth a warning once the import has this many images to spread
NEEDED_FOR = {"train": "nothing to train on", "val": "train needs it", "test": "evaluate needs it"}


@dataclass(frozen=True)
class ImportOptions:
    """How to import: the CLI options of ``snackloc data import``."""

    fmt: str = AUTO  # a name of readers.FORMATS, or auto: detected from the content
    classes: tuple[str, ...] | None = None  # keep only these (YOLO: index i = classes[i])
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test
    seed: int = 0
    resplit: bool = False  # split anew even when the source has train/val/test
    folder_from: str = "largest"  # largest | first
    outside: str = "clip"  # clip | skip
    jpeg_quality: int = 95
    label_key: str = "class"  # Sloth: the annotation key that holds the label
    name_attr: str = "keep"  # RectLabel "name-attr" names: keep them whole, or `first` part

    def __post_init__(self) -> None:
        object.__setattr__(self, "fmt", format_name(self.fmt))
        if self.name_attr not in NAME_ATTR_RULES:
            raise UserError(f"--name-attr {self.name_attr!r}: use {'|'.join(NAME_ATTR_RULES)}")
        if not self.label_key.strip():
            raise UserError("--label-key: give the annotation key that holds the label")
        if self.folder_from not in FOLDER_RULES:
            raise UserError(f"--folder-from {self.folder_from!r}: use {'|'.join(FOLDER_RULES)}")
        if self.outside not in OUTSIDE_RULES:
            raise UserError(f"--outside {self.outside!r}: use {'|'.join(OUTSIDE_RULES)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"--jpeg-quality {self.jpeg_quality}: needs 1..100")
        check_ratios(self.ratios)


class SnackBox(NamedTuple):
    """One box of the snacks format: normalized coordinates in the book's column order."""

    class_name: str
    x_min: float
    x_max: float
    y_min: float
    y_max: float

    @property
    def area(self) -> float:
        return (self.x_max - self.x_min) * (self.y_max - self.y_min)


@dataclass
class SourceImage:
    """One image to import, with every box the source gives it."""

    path: Path  # the source file
    key: str  # its path relative to the source folder: the seed of a hash image_id
    fmt: str  # the real format, as Pillow detects it
    split: str | None
    boxes: list[SnackBox]
    image_id: str = ""
    folder: str = ""


# --------------------------------------------------------------------------------------
# Options and small helpers
# --------------------------------------------------------------------------------------


def check_ratios(ratios: Iterable[float]) -> tuple[float, float, float]:
    """Three shares (train, val, test), each >= 0, summing to 1, with train > 0."""
    values = tuple(float(value) for value in ratios)
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values):
        raise UserError(f"split ratios {values}: need three numbers >= 0 (train,val,test)")
    if abs(sum(values) - 1.0) > 1e-6 or values[0] <= 0:
        raise UserError(f"split ratios {values}: must sum to 1, with train > 0")
    return values  # type: ignore[return-value]


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> (0.8, 0.1, 0.1)."""
    try:
        return check_ratios(float(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"split ratios {text!r}: expected three numbers like 0.8,0.1,0.1") from None


def load_classes(value: str | None) -> tuple[str, ...] | None:
    """The ``--classes`` option: ``snacks`` (the book's 20) or a file (one name per line)."""
    if value is None:
        return None
    if value == "snacks":
        return SNACK_CLASSES
    path = Path(value)
    if not path.is_file():
        raise UserError(f"--classes {value}: not a file", hint="a names file, or `snacks`")
    names = read_class_list(path)
    if len(set(names)) != len(names) or not names:
        raise UserError(f"{path}: class names must be unique and at least one")
    return tuple(names)


def is_safe_name(name: str) -> bool:
    """Usable as one path component anywhere: no separator, NUL, control char, outer space."""
    return (
        bool(name)
        and name == name.strip()
        and name not in {".", ".."}
        and not any(char in name for char in "/\\")
        and all(ord(char) >= 32 for char in name)
    )


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (duplicates = identical bytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _box_text(coords: Iterable[float]) -> str:
    return "(" + ", ".join(f"{value:.4g}" for value in coords) + ")"


# --------------------------------------------------------------------------------------
# Import: entries -> images with normalized boxes
# --------------------------------------------------------------------------------------


def snap(value: float) -> float:
    """Float noise just beyond [0, 1] (e.g. 1.0000000000000002) back onto the border."""
    if -EPS < value < 0.0:
        return 0.0
    if 1.0 < value < 1.0 + EPS:
        return 1.0
    return value


def to_snack_box(
    box: BoundingBox,
    size: tuple[int, int],
    allowed: frozenset[str] | None,
    outside: str,
    report: Callable[[str, str, str], None],
) -> SnackBox | None:
    """The normalized box, clipped if need be; None (reported) when it cannot be used.

    ``report(kind, action, detail)`` records a problem about this box.
    """
    label = box.label.strip()
    if not is_safe_name(label):
        report("bad_class_name", "skipped box", f"class {label!r} cannot be a folder name")
        return None
    if allowed is not None and label not in allowed:
        report("unknown_class", "skipped box", f"class {label!r} is not in the class list")
        return None
    width, height = size
    left, top, right, bottom = box.ltrb
    coords = [snap(left / width), snap(right / width), snap(top / height), snap(bottom / height)]
    x_min, x_max, y_min, y_max = coords
    if x_max <= x_min or y_max <= y_min:
        report("bad_box", "skipped box", f"zero width or height: {_box_text(coords)}")
        return None
    if all(0.0 <= value <= 1.0 for value in coords):
        return SnackBox(label, *coords)
    clipped = [min(max(value, 0.0), 1.0) for value in coords]
    shown = f"{_box_text(coords)} (x_min, x_max, y_min, y_max)"
    if clipped[1] <= clipped[0] or clipped[3] <= clipped[2]:
        report("outside_image", "skipped box", f"{shown} lies outside the image")
        return None
    if outside == "skip":
        report("outside_image", "skipped box", f"{shown} crosses the image border")
        return None
    report("clipped_box", "clipped box", f"{shown} -> {_box_text(clipped)}")
    return SnackBox(label, *clipped)


def entry_size(entry: Entry, header: ImageHeader, ctx: ReadContext) -> tuple[int, int]:
    """The size that normalizes the entry's boxes: the annotation's, else the image's."""
    if entry.normalized:
        return UNIT
    if entry.size is None:
        return header.size
    if entry.size != header.size:
        (w, h), (iw, ih) = entry.size, header.size
        detail = f"annotation says {w}x{h}, the image is {iw}x{ih}; the annotation's size is used"
        ctx.report(entry.origin, entry.name, "size_mismatch", "kept", detail)
    return entry.size


def locate(entry: Entry, index: ImageIndex, ctx: ReadContext) -> tuple[Path, ImageHeader] | None:
    """The entry's image file and header; None (reported) when missing or unreadable."""
    path, kind, detail = index.find(entry)
    if path is None:
        ctx.report(entry.origin, entry.name, kind, "skipped image", detail)
        return None
    try:
        return path, read_header(path)
    except Exception as exc:  # any decoder error: this image only
        ctx.report(entry.origin, entry.name, "unreadable_image", "skipped image", str(exc))
        return None


def entry_boxes(
    entry: Entry,
    size: tuple[int, int],
    allowed: frozenset[str] | None,
    outside: str,
    ctx: ReadContext,
) -> list[SnackBox]:
    """The entry's usable boxes, normalized; each unusable one is reported."""
    boxes = []
    for number, box in enumerate(entry.boxes):
        report = functools.partial(ctx.report, entry.origin, f"{entry.name} box {number}")
        snack = to_snack_box(box, size, allowed, outside, report)
        if snack is not None:
            boxes.append(snack)
    return boxes


def source_key(path: Path, root: Path) -> str:
    """The image's path relative to the source folder (absolute when outside it)."""
    resolved, base = path.resolve(), root.resolve()
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else str(resolved)


def collect_images(
    source: SourceRead, options: ImportOptions, exclude: Path | None = None
) -> list[SourceImage]:
    """Find each entry's image and normalize its boxes; entries naming one file are merged."""
    ctx = source.context
    index = ImageIndex(source.root, exclude=exclude)
    names = options.classes or source.yolo_names
    allowed = frozenset(names) if names else None
    images: dict[str, SourceImage] = {}
    for entry in source.entries:
        if not entry.boxes:
            ctx.report(entry.origin, entry.name, "no_boxes", "skipped image", "no box")
            continue
        found = locate(entry, index, ctx)
        if found is None:
            continue
        path, header = found
        size = entry_size(entry, header, ctx)
        boxes = entry_boxes(entry, size, allowed, options.outside, ctx)
        key = source_key(path, source.root)
        if not boxes:
            ctx.report(entry.origin, entry.name, "no_boxes", "skipped image", "every box skipped")
        elif key in images:
            images[key].boxes += boxes
            detail = f"{key} is listed more than once; boxes merged"
            ctx.report(entry.origin, entry.name, "listed_twice", "merged", detail)
        else:
            images[key] = SourceImage(path, key, header.fmt, entry.split, boxes)
    return list(images.values())


# --------------------------------------------------------------------------------------
# Import: ids, folders, splits
# --------------------------------------------------------------------------------------


def assign_ids(images: list[SourceImage]) -> None:
    """image_id = the file stem when safe and unique (case-insensitively), else a hash."""
    counts = Counter(image.path.stem.casefold() for image in images)
    for image in images:
        stem = image.path.stem
        if is_safe_name(stem) and counts[stem.casefold()] == 1:
            image.image_id = stem
        else:
            image.image_id = "img_" + hashlib.sha256(image.key.encode()).hexdigest()[:16]


def choose_folder(boxes: list[SnackBox], rule: str) -> str:
    """The image's folder: the class of its largest box (first of equals) or first box."""
    if rule == "first":
        return boxes[0].class_name
    return max(boxes, key=lambda box: box.area).class_name


def allocate(count: int, ratios: tuple[float, float, float]) -> list[int]:
    """Split ``count`` items by ``ratios`` (largest remainder; ties favour train, then val)."""
    exact = [count * ratio for ratio in ratios]
    sizes = [math.floor(value) for value in exact]
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[: count - sum(sizes)]:
        sizes[i] += 1
    return sizes


def stratified_split(
    images: list[SourceImage], ratios: tuple[float, float, float], seed: int
) -> None:
    """Assign train/val/test per folder by ``ratios``; identical files share a split.

    Groups of byte-identical images are shuffled by SHA-256 of ``seed`` and their content
    (independent of the source order), then cut by ``allocate`` within each folder.
    """
    groups: dict[str, list[SourceImage]] = defaultdict(list)
    for image in images:
        groups[file_digest(image.path)].append(image)
    strata: dict[str, list[str]] = defaultdict(list)
    for digest, members in groups.items():
        strata[min(members, key=lambda image: image.key).folder].append(digest)
    for digests in strata.values():
        digests.sort(key=lambda digest: hashlib.sha256(f"{seed}:{digest}".encode()).hexdigest())
        start = 0
        for split, size in zip(SPLITS, allocate(len(digests), ratios), strict=True):
            for digest in digests[start : start + size]:
                for image in groups[digest]:
                    image.split = split
            start += size


def assign_splits(images: list[SourceImage], options: ImportOptions, ctx: ReadContext) -> str:
    """Keep the source's splits when every image has one, else split anew; say which."""
    known = sum(1 for image in images if image.split)
    if known == len(images) and not options.resplit:
        return "source"
    if 0 < known < len(images) and not options.resplit:
        detail = f"only {known} of {len(images)} images have a train/val/test source folder or file"
        ctx.report(None, "", "partial_source_split", "split anew", detail)
    stratified_split(images, options.ratios, options.seed)
    return "stratified"


# --------------------------------------------------------------------------------------
# Import: writing the snacks layout
# --------------------------------------------------------------------------------------


def place_image(image: SourceImage, target: Path, quality: int) -> str:
    """Copy a JPEG byte for byte, or write any other format as JPEG; say which."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if image.fmt in JPEG_FORMATS:
        shutil.copyfile(image.path, target)
        return "copied"
    with atomic_path(target) as tmp:
        open_image_rgb(image.path).save(tmp, format="JPEG", quality=quality)
    return "converted"


def snack_rows(image: SourceImage) -> list[dict[str, Any]]:
    """The CSV rows of one image, one per box."""
    return [
        {"image_id": image.image_id, **box._asdict(), "folder": image.folder} for box in image.boxes
    ]


@dataclass
class Written:
    """What ``write_layout`` wrote."""

    images: dict[str, int]  # per split
    rows: dict[str, int]  # per split
    copied: int = 0  # JPEGs copied byte for byte
    converted: int = 0  # other formats written as JPEG


def write_layout(root: Path, images: list[SourceImage], quality: int, ctx: ReadContext) -> Written:
    """Images under ``root/<split>/<folder>/`` and the three annotation CSVs."""
    rows: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    written = Written(images=dict.fromkeys(SPLITS, 0), rows=dict.fromkeys(SPLITS, 0))
    for split in SPLITS:
        (root / split).mkdir(parents=True, exist_ok=True)
    for image in sorted(images, key=lambda im: (SPLITS.index(im.split), im.folder, im.image_id)):
        target = image_path(root, image.split, image.folder, image.image_id)
        try:
            how = place_image(image, target, quality)
        except Exception as exc:  # a decoder error while converting: this image only
            ctx.report(None, image.key, "unreadable_image", "skipped image", str(exc))
            continue
        written.copied += how == "copied"
        written.converted += how == "converted"
        written.images[image.split] += 1
        rows[image.split] += snack_rows(image)
    for split in SPLITS:
        write_csv(
            annotations_path(root, split), pd.DataFrame(rows[split], columns=ANNOTATION_COLUMNS)
        )
        written.rows[split] = len(rows[split])
    return written


def import_dataset(
    src: Path, out: Path, options: ImportOptions, *, overwrite: bool = False
) -> dict:
    """Import ``src`` (format ``options.fmt``) into the snacks layout at ``out``.

    Returns the report (also written to ``out/import-report.json``). Raises UserError only
    for an unusable source as a whole, or when not one image could be imported (then
    ``out`` is left untouched).
    """
    src, out = Path(src), Path(out)
    if not src.exists():
        raise UserError(f"{src}: not found")
    check_replaceable(out, overwrite, source=src if src.is_dir() else src.parent)
    source = read_source(
        src,
        options.fmt,
        list(options.classes) if options.classes else None,
        label_key=options.label_key,
        name_first=options.name_attr == "first",
    )
    ctx = source.context
    images = collect_images(source, options, exclude=out)
    if not images:
        raise UserError(f"{src}: no image could be imported\n{format_problems(ctx.problems)}")
    assign_ids(images)
    for image in images:
        image.folder = choose_folder(image.boxes, options.folder_from)
    split_from = assign_splits(images, options, ctx)
    with replaced_dir(out) as tmp:
        written = write_layout(tmp, images, options.jpeg_quality, ctx)
        if not any(written.rows.values()):
            raise UserError(f"{src}: no image could be imported\n{format_problems(ctx.problems)}")
        report = import_report(src, out, options, split_from, written, ctx.problems)
        report.update(format=source.fmt, format_detected=options.fmt == AUTO)
        report.update(multi_object_share=multi_object_share(images))
        write_json(tmp / IMPORT_REPORT, report)
    return report


def import_report(
    src: Path,
    out: Path,
    options: ImportOptions,
    split_from: str,
    written: Written,
    problems: list[Problem],
) -> dict[str, Any]:
    """The import report: what was written, by which rules, and every problem."""
    split: dict[str, Any] = {"from": split_from}
    if split_from == "stratified":
        split.update(ratios=list(options.ratios), seed=options.seed)
    return {
        "source": str(src),
        "format": options.fmt,
        "out": str(out),
        "images": written.images,
        "rows": written.rows,
        "jpeg_copied": written.copied,
        "converted_to_jpeg": written.converted,
        "split": split,
        "folder_from": options.folder_from,
        "outside": options.outside,
        "jpeg_quality": options.jpeg_quality,
        "classes": list(options.classes) if options.classes else None,
        "warnings": split_warnings(written.images, split_from, options.ratios),
        "problem_counts": dict(sorted(Counter(p.kind for p in problems).items())),
        "problems": [asdict(problem) for problem in problems],
    }


def split_warnings(
    images: dict[str, int], split_from: str, ratios: tuple[float, float, float]
) -> list[str]:
    """One line per split left empty (or tiny in a large import), with how to fix it."""
    total, found = sum(images.values()), []
    for split, ratio in zip(SPLITS, ratios, strict=True):
        count = images[split]
        if count and (count >= TINY_SPLIT or total < TINY_FROM):
            continue
        if split_from == "source":
            fix = (
                f"the source's own split was kept, and it has {count or 'no'} {split} images: "
                f"pass --resplit to split all {total} images by --split-ratios, or give the "
                f"source a {split}/ folder"
            )
        elif ratio == 0:
            fix = f"--split-ratios gives {split} a share of 0: give it one, e.g. 0.8,0.1,0.1"
        else:
            fix = f"a share of {ratio:g} of {total} images: raise it in --split-ratios"
        found.append(f"{split} has {count} images ({NEEDED_FOR[split]}): {fix}")
    return found


def multi_object_share(images: list[SourceImage]) -> float:
    """Share of the imported images with two boxes or more."""
    return sum(len(image.boxes) >= 2 for image in images) / max(len(images), 1)


# --------------------------------------------------------------------------------------
# What the CLI prints
# --------------------------------------------------------------------------------------


# From this share of multi-object images on, the summary suggests the detector.
MULTI_OBJECT_HINT = 0.3


def import_summary(report: dict[str, Any]) -> str:
    """A few lines about an import, then the problems table."""
    images, rows = report["images"], report["rows"]
    split = report["split"]
    how = (
        "kept from the source"
        if split["from"] == "source"
        else f"stratified {'/'.join(f'{r:g}' for r in split['ratios'])}, seed {split['seed']}"
    )
    lines = [
        f"imported {sum(images.values())} images / {sum(rows.values())} rows from "
        f"{report['source']} ({report['format']}) into {report['out']}: "
        + ", ".join(f"{s} {images[s]} images / {rows[s]} rows" for s in SPLITS),
        f"split: {how}; folder: class of the {report['folder_from']} box; "
        f"{report['jpeg_copied']} JPEGs copied, {report['converted_to_jpeg']} converted to JPEG",
    ]
    lines += [f"warning: {line}" for line in report.get("warnings", [])]
    share = report.get("multi_object_share", 0.0)
    if share >= MULTI_OBJECT_HINT:
        lines.append(
            f"{share:.0%} of the images hold two objects or more: the two-head model boxes one "
            "of them; `model.task: detect` in params.yaml finds every one (docs/detection.md)"
        )
    problems = problem_records(report)
    if problems:
        report_path = Path(report["out"]) / IMPORT_REPORT
        lines += [f"{len(problems)} problems (all in {report_path}):", format_problems(problems)]
    return "\n".join(lines)
