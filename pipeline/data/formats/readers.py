"""The table of format readers, and reading a whole source with one of them.

``read_source`` turns a source (one annotation file, or a folder of them) into ``Entry``
objects — one per image, as the annotation describes it — plus ``Problem`` records for
everything it could not use. Nothing here writes the snacks layout (importing.py does).
Each format lives in its own module (voc.py, coco.py, ...); ``FORMATS`` lists them in the
order ``--format auto`` asks them (detect.py).

globox parses the boxes, with each format's coordinate convention. The per-image envelope
(the image's file name and pixel size) is read by snackloc rather than by globox's
whole-dataset readers, because those stop at the first defect: a missing or zero image size
(common; filled from the image later), one inverted box, one unannotated YOLO image or one
missing OpenImages file aborts the whole dataset. Here such a defect costs only its box,
image or file, and it is reported.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.data.formats.base import (
    OWN_REPORTS,
    READ_ERRORS,
    Entry,
    Format,
    ReadContext,
    describe,
    file_split,
)
from pipeline.data.formats.coco import read_coco, sniff_coco
from pipeline.data.formats.createml import read_createml, sniff_createml
from pipeline.data.formats.cvat import read_cvat, sniff_cvat
from pipeline.data.formats.images import inside_source
from pipeline.data.formats.labelbox import read_labelbox, sniff_labelbox
from pipeline.data.formats.labelme import read_labelme, sniff_labelme
from pipeline.data.formats.labelstudio import read_labelstudio, sniff_labelstudio
from pipeline.data.formats.openimages import (
    is_class_descriptions,
    openimages_label_names,
    read_openimages,
    sniff_openimages,
)
from pipeline.data.formats.rectlabel import read_rectlabel, sniff_rectlabel
from pipeline.data.formats.sia import read_sia, sniff_sia
from pipeline.data.formats.sloth import read_sloth, sniff_sloth
from pipeline.data.formats.voc import read_voc, sniff_voc
from pipeline.data.formats.yolo import YOLO_NAMES_FILES, read_yolo, sniff_yolo, yolo_names_or_fail

FORMATS: dict[str, Format] = {
    "voc": Format((".xml",), read_voc, True, sniff_voc),
    "rectlabel": Format((".xml",), read_rectlabel, True, sniff_rectlabel, refines="voc"),
    "coco": Format((".json",), read_coco, False, sniff_coco),
    "yolo": Format((".txt",), read_yolo, True, sniff_yolo),
    "cvat": Format((".xml",), read_cvat, False, sniff_cvat),
    "labelme": Format((".json",), read_labelme, True, sniff_labelme),
    "openimages": Format((".csv",), read_openimages, False, sniff_openimages),
    "createml": Format((".json",), read_createml, False, sniff_createml),
    "sloth": Format((".json", ".yaml", ".yml"), read_sloth, False, sniff_sloth),
    "labelbox": Format((".ndjson", ".jsonl", ".json"), read_labelbox, False, sniff_labelbox),
    "sia": Format((".csv",), read_sia, False, sniff_sia),
    "labelstudio": Format((".json",), read_labelstudio, False, sniff_labelstudio),
}
AUTO = "auto"
# Other spellings users type for the same formats.
ALIASES = {
    "pascal-voc": "voc",
    "labelimg": "voc",
    "create-ml": "createml",
    "open-images": "openimages",
    "simple-image-annotator": "sia",
    "simple_image_annotator": "sia",
    "label-studio": "labelstudio",
    "label_studio": "labelstudio",
}
ALL_SUFFIXES = tuple(sorted({suffix for spec in FORMATS.values() for suffix in spec.suffixes}))


def format_name(fmt: str) -> str:
    """The table's name for ``fmt`` (aliases resolved, case ignored); UserError if unknown."""
    name = ALIASES.get(fmt.strip().lower(), fmt.strip().lower())
    if name != AUTO and name not in FORMATS:
        raise UserError(f"unknown format {fmt!r}", hint=f"use {AUTO}|{'|'.join(FORMATS)}")
    return name


def annotation_files(src: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """SRC itself when it is a file, else every file under it with one of ``suffixes``."""
    if src.is_file():
        return [src]
    found = []
    for folder, dirs, files in os.walk(src):  # does not follow symlinked folders
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            Path(folder) / name
            for name in sorted(files)
            if name.lower().endswith(suffixes)
            and not name.startswith(".")
            and name not in OWN_REPORTS
        ]
    return found


def format_files(src: Path, fmt: str, found: list[Path] | None = None) -> list[Path]:
    """The files of ``src`` that format ``fmt`` reads (names files and tables left out).

    ``found``: the source's files already listed (``--format auto`` walks the folder once).
    """
    suffixes = FORMATS[fmt].suffixes
    if found is None or src.is_file():
        files = annotation_files(src, suffixes)
    else:
        files = [path for path in found if path.name.lower().endswith(suffixes)]
    if fmt == "yolo":
        files = [path for path in files if path.name not in YOLO_NAMES_FILES]
    if fmt == "openimages":
        files = [path for path in files if not is_class_descriptions(path)]
    return files


@dataclass
class SourceRead:
    """Everything read from a source: its folder, the entries and the problems so far."""

    root: Path
    entries: list[Entry]
    context: ReadContext
    yolo_names: list[str] | None = None  # the YOLO class list, when the format is YOLO
    fmt: str = ""  # the format read (the detected one for --format auto)


def read_source(
    src: Path,
    fmt: str,
    classes: list[str] | None = None,
    *,
    label_key: str = "class",
    name_first: bool = False,
) -> SourceRead:
    """Read every annotation file of ``src`` in format ``fmt`` (``auto``: detected).

    ``classes`` is the user's class list; for YOLO it also names the class indices (else the
    dataset's data.yaml / classes.txt / obj.names does). A file that cannot be read is
    reported and skipped; only an unusable source as a whole raises UserError.
    """
    from pipeline.data.formats.detect import detect_format  # detect.py asks this table

    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: not found")
    fmt = format_name(fmt)
    fmt = detect_format(src) if fmt == AUTO else fmt
    spec = FORMATS[fmt]
    root = src.parent if src.is_file() else src
    ctx = ReadContext(root, label_key=label_key, name_first=name_first)
    files = format_files(src, fmt)
    names = None
    if fmt == "yolo":
        names = classes or yolo_names_or_fail(ctx.root)
        ctx.label_names = {str(index): name for index, name in enumerate(names)}
    if fmt == "openimages":
        ctx.label_names = openimages_label_names(annotation_files(src, (".csv",)))
    if not files:
        expected = "/".join(spec.suffixes)
        raise UserError(f"{src}: no {expected} annotation file found", found_instead(src, fmt))
    entries = []
    for path in files:
        entries += read_file(path, spec, ctx)
    return SourceRead(ctx.root, entries, ctx, names, fmt)


def found_instead(src: Path, fmt: str) -> str:
    """What a source without ``fmt``'s annotation files holds, and the formats that read it."""
    files = [p for p in src.rglob("*") if p.is_file() and not p.name.startswith(".")]
    held = []
    for suffix, count in Counter(p.suffix.lower() or p.name for p in files).most_common(4):
        readers = [name for name, spec in FORMATS.items() if suffix in spec.suffixes]
        held.append(f"{count} {suffix}" + (f" (--format {'|'.join(readers)})" if readers else ""))
    expected = f"--format {fmt} reads {'/'.join(FORMATS[fmt].suffixes)} files"
    return f"{expected}; {src} holds {', '.join(held) or 'no file'}; --format auto detects it"


def is_blank(path: Path) -> bool:
    """An empty file, or one holding only whitespace (only small files are read to tell)."""
    size = path.stat().st_size
    return size == 0 or (size < 4096 and not path.read_bytes().strip())


def read_file(path: Path, spec: Format, ctx: ReadContext) -> list[Entry]:
    """The entries of one annotation file; an empty, unreadable or outside file is reported."""
    try:
        if not inside_source(path, ctx.root):
            detail = f"a link to {path.resolve()}, outside the source folder"
            ctx.report(path, "", "outside_source", "skipped file", f"refused: {detail}")
            return []
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
