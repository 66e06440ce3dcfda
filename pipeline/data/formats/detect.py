"""``--format auto``: ask each reader of the table, in turn, whether it knows the files.

Every file with a suffix some format reads is shown to each format's ``sniff`` (content,
not extension, decides: .json is COCO, LabelMe, Create ML, Sloth or Labelbox). The format
that recognizes the most files wins, ties going to the table's order; a dialect (RectLabel
for VOC) wins over the format it refines when it recognizes any of those files. When no
format recognizes anything, the error says what the files look like.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError
from pipeline.data.formats.base import head_text, sniff_json
from pipeline.data.formats.readers import ALL_SUFFIXES, FORMATS, annotation_files, format_files

SAMPLE = 200  # files per format looked at: enough to decide, cheap on large sources
SHOWN = 3  # files described when nothing fits


def recognized(src: Path) -> Counter[str]:
    """How many of each format's files (a sample) its sniffer recognizes."""
    counts: Counter[str] = Counter()
    found = annotation_files(src, ALL_SUFFIXES)
    for name, spec in FORMATS.items():
        for path in format_files(src, name, found)[:SAMPLE]:
            try:
                counts[name] += bool(spec.sniff(path))
            except (OSError, ValueError):
                continue
    return counts


def detect_format(src: Path) -> str:
    """The format of ``src``'s annotation files; UserError saying what it saw otherwise."""
    counts = recognized(Path(src))
    order = list(FORMATS)
    best = max(order, key=lambda name: (counts[name], -order.index(name)))
    if counts[best] == 0:
        raise UserError(
            f"{src}: --format auto recognizes no annotation format here",
            hint=f"{what_it_saw(Path(src))}; give --format {'|'.join(FORMATS)}",
        )
    dialects = [name for name, spec in FORMATS.items() if spec.refines == best and counts[name]]
    return dialects[0] if dialects else best


def what_it_saw(src: Path) -> str:
    """A few files of the source and what each looks like."""
    files = [p for p in annotation_files_any(src) if p.suffix.lower() in ALL_SUFFIXES]
    if not files:
        suffixes = Counter(p.suffix.lower() or p.name for p in annotation_files_any(src))
        held = ", ".join(f"{n} {suffix}" for suffix, n in suffixes.most_common(4))
        return f"saw no {'/'.join(ALL_SUFFIXES)} file (holds {held or 'nothing'})"
    shown = "; ".join(f"{describe_file(path, src)}" for path in files[:SHOWN])
    more = f" (and {len(files) - SHOWN} more)" if len(files) > SHOWN else ""
    return f"saw {shown}{more}"


def annotation_files_any(src: Path) -> list[Path]:
    """Every visible file of the source (SRC itself when it is a file)."""
    if src.is_file():
        return [src]
    return sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))


def describe_file(path: Path, src: Path) -> str:
    """``name: what it holds`` in a few words (JSON shape, XML root, first line)."""
    name = path.name if path == src else path.relative_to(src).as_posix()
    suffix = path.suffix.lower()
    if suffix == ".xml":
        try:
            return f"{name}: XML with root <{ET.parse(path).getroot().tag}>"
        except ET.ParseError as exc:
            return f"{name}: not valid XML ({exc})"
    if suffix in {".json", ".ndjson", ".jsonl"}:
        return f"{name}: {json_shape(path)}"
    first = next((line for line in head_text(path, 4096).splitlines() if line.strip()), "")
    return f"{name}: first line {first[:60]!r}" if first else f"{name}: empty"


def json_shape(path: Path) -> str:
    """What a JSON file holds: an object with keys ..., a list of ..., or not JSON."""
    content: Any = sniff_json(path)
    if content is None:
        first = next(iter(head_text(path, 1 << 16).splitlines()), "")
        try:
            content = json.loads(first)
        except ValueError as exc:
            return f"not valid JSON ({exc})"
    if isinstance(content, dict):
        return f"a JSON object with keys {', '.join(list(map(str, content))[:6])}"
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return f"a JSON list of objects with keys {', '.join(list(map(str, content[0]))[:6])}"
    return f"JSON {type(content).__name__}"
