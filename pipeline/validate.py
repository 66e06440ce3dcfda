"""Stage "validate": check every annotation row and every image it points at.

Each row of ``annotations-<split>.csv`` either passes every check and goes to the split's
clean file, or goes to the quarantine file with every failing check named — nothing is
dropped or altered silently (``rows in == clean + quarantined`` is asserted per split).

The checks are the named entries of ``ROW_CHECKS`` (see ``CHECKS`` for their names and
meanings); adding one is one decorated function. Image facts that the loader handles
(PNG named .jpg, grayscale/CMYK/palette/alpha modes, EXIF rotation) are not errors: they
are counted as ``notes`` in the report.

The stage fails (UserError) when the quarantined share passes
``validate.max_bad_fraction`` — after writing every output, so the user can inspect them.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import ExifTags, Image
from tqdm import tqdm

from pipeline.config import SPLITS, Params, ValidateParams, resolve_classes
from pipeline.dataio import (
    ANNOTATION_COLUMNS,
    BOX_COLUMNS,
    annotations_path,
    image_path,
    open_image_rgb,
    read_raw_annotations,
    safe_image_path,
    write_csv,
    write_json,
)
from pipeline.errors import UserError
from pipeline.paths import Outputs

log = logging.getLogger(__name__)

IMAGE_WORKERS = 2  # Pillow releases the GIL while decoding; more threads do not help on 2 cores.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
# Quarantine columns added in front of / after the original CSV columns.
QUARANTINE_LEAD = ["split", "row"]
QUARANTINE_TAIL = ["reasons", "detail"]


# --------------------------------------------------------------------------------------
# What a check sees
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFacts:
    """What inspecting one image file found (each file is inspected once)."""

    path: Path
    missing: bool = False
    too_large: str | None = None  # why it was refused without decoding
    unreadable: str | None = None  # the decoder's error message
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    orientation: int = 1

    def notes(self) -> list[str]:
        """Facts worth reporting that are not errors (the loader handles them)."""
        found = []
        if self.format and self.format != "JPEG" and self.path.suffix.lower() in {".jpg", ".jpeg"}:
            found.append(f"format_{self.format}_as_jpg")
        if self.mode and self.mode != "RGB":
            found.append(f"mode_{self.mode}")
        if self.orientation not in (0, 1):
            found.append("exif_orientation")
        return found


@dataclass
class RowView:
    """One raw annotation row, parsed as far as possible, with its image facts."""

    split: str
    row: int  # 0-based data row number in the original CSV
    text: dict[str, str]  # every original column, as written
    coords: dict[str, float | None]  # box columns that parse to a finite number
    target: Path | None = None  # where folder/image_id point, confined or not
    unsafe: bool = False  # image_id/folder escape the data root
    image: ImageFacts | None = None  # None when no path could be built safely
    reasons: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def present(self, column: str) -> bool:
        return self.text.get(column, "").strip() != ""


@dataclass(frozen=True)
class CheckContext:
    limits: ValidateParams
    classes: frozenset[str] | None = None  # None until the class list is resolved


CheckFunc = Callable[[RowView, CheckContext], str | None]


@dataclass(frozen=True)
class RowCheck:
    """A named check: returns a human-readable detail when the row fails, else None."""

    name: str
    description: str
    func: CheckFunc
    needs_classes: bool = False


ROW_CHECKS: list[RowCheck] = []


def row_check(name: str, description: str, needs_classes: bool = False):
    """Register a check function under ``name`` (report and quarantine use the name)."""

    def register(func: CheckFunc) -> CheckFunc:
        ROW_CHECKS.append(RowCheck(name, description, func, needs_classes))
        return func

    return register


# --------------------------------------------------------------------------------------
# The checks, in report order
# --------------------------------------------------------------------------------------


@row_check("missing_value", "a required cell is empty")
def _missing_value(row: RowView, ctx: CheckContext) -> str | None:
    empty = [col for col in ANNOTATION_COLUMNS if not row.present(col)]
    return f"empty {', '.join(empty)}" if empty else None


@row_check("not_a_number", "a box coordinate is text, NaN or infinite")
def _not_a_number(row: RowView, ctx: CheckContext) -> str | None:
    bad = [
        f"{col}={row.text[col]!r}"
        for col in BOX_COLUMNS
        if row.present(col) and row.coords[col] is None
    ]
    return ", ".join(bad) if bad else None


@row_check("out_of_range", "a box coordinate is outside [0, 1]")
def _out_of_range(row: RowView, ctx: CheckContext) -> str | None:
    bad = [
        f"{col}={value:g}"
        for col, value in row.coords.items()
        if value is not None and not 0.0 <= value <= 1.0
    ]
    return ", ".join(bad) if bad else None


def _extents(row: RowView) -> Iterable[tuple[str, str, str, float]]:
    """(axis name, min column, max column, max - min) for each axis with both ends known."""
    for axis, lo, hi in (("width", "x_min", "x_max"), ("height", "y_min", "y_max")):
        if row.coords[lo] is not None and row.coords[hi] is not None:
            yield axis, lo, hi, row.coords[hi] - row.coords[lo]


@row_check("inverted_box", "x_min >= x_max or y_min >= y_max")
def _inverted_box(row: RowView, ctx: CheckContext) -> str | None:
    bad = [
        f"{lo} {row.coords[lo]:g} >= {hi} {row.coords[hi]:g}"
        for _, lo, hi, extent in _extents(row)
        if extent <= 0
    ]
    return ", ".join(bad) if bad else None


@row_check("box_too_small", "box width or height below validate.min_box_size")
def _box_too_small(row: RowView, ctx: CheckContext) -> str | None:
    # Inverted boxes are reported as such, not also as too small.
    bad = [
        f"{axis} {extent:.4g} < {ctx.limits.min_box_size:g}"
        for axis, _, _, extent in _extents(row)
        if 0 < extent < ctx.limits.min_box_size
    ]
    return ", ".join(bad) if bad else None


@row_check(
    "unsafe_path",
    "image_id/folder contain a path separator, '..' or NUL, "
    "or the file resolves outside the data root (symlink)",
)
def _unsafe_path(row: RowView, ctx: CheckContext) -> str | None:
    if not row.unsafe:
        return None
    return f"folder={row.text['folder']!r} image_id={row.text['image_id']!r} leaves the data root"


@row_check("missing_image", "the image file does not exist")
def _missing_image(row: RowView, ctx: CheckContext) -> str | None:
    return f"{row.image.path} not found" if row.image and row.image.missing else None


@row_check("unreadable_image", "the file cannot be decoded (truncated, corrupt, not an image)")
def _unreadable_image(row: RowView, ctx: CheckContext) -> str | None:
    return row.image.unreadable if row.image and row.image.unreadable else None


@row_check("image_too_small", "an image side is below validate.min_image_side pixels")
def _image_too_small(row: RowView, ctx: CheckContext) -> str | None:
    image = row.image
    if image is None or image.width is None or image.height is None:
        return None
    if min(image.width, image.height) >= ctx.limits.min_image_side:
        return None
    return f"{image.width}x{image.height} px, a side < {ctx.limits.min_image_side}"


@row_check("image_too_large", "more pixels than validate.max_image_pixels (refused undecoded)")
def _image_too_large(row: RowView, ctx: CheckContext) -> str | None:
    return row.image.too_large if row.image and row.image.too_large else None


@row_check("unknown_class", "class_name is not in the class list", needs_classes=True)
def _unknown_class(row: RowView, ctx: CheckContext) -> str | None:
    name = row.text["class_name"]
    if ctx.classes is None or not row.present("class_name") or name in ctx.classes:
        return None
    return f"class_name {name!r} not in the class list"


@row_check("unknown_folder", "folder is not in the class list", needs_classes=True)
def _unknown_folder(row: RowView, ctx: CheckContext) -> str | None:
    name = row.text["folder"]
    if ctx.classes is None or not row.present("folder") or name in ctx.classes:
        return None
    return f"folder {name!r} not in the class list"


CHECKS: dict[str, str] = {check.name: check.description for check in ROW_CHECKS}


def apply_checks(rows: Iterable[RowView], ctx: CheckContext, *, needs_classes: bool) -> None:
    """Run the checks of one phase on each row, appending failures to the row."""
    checks = [check for check in ROW_CHECKS if check.needs_classes == needs_classes]
    for row in rows:
        for check in checks:
            detail = check.func(row, ctx)
            if detail is not None:
                row.reasons.append(check.name)
                row.details.append(f"{check.name}: {detail}")


# --------------------------------------------------------------------------------------
# Rows and images
# --------------------------------------------------------------------------------------


def parse_coord(text: str) -> float | None:
    """A finite float, or None for empty cells, text, NaN and infinities."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def build_rows(root: Path, split: str, frame: pd.DataFrame) -> list[RowView]:
    """One RowView per CSV row, with its box parsed and its image path confined to root."""
    rows = []
    for number, record in enumerate(frame.to_dict("records")):
        text = {str(col): str(value) for col, value in record.items()}
        row = RowView(split, number, text, {col: parse_coord(text[col]) for col in BOX_COLUMNS})
        if row.present("folder") and row.present("image_id"):
            row.target = image_path(root, split, text["folder"], text["image_id"])
            path = safe_image_path(root, split, text["folder"], text["image_id"])
            if path is None:
                row.unsafe = True
            else:
                row.image = ImageFacts(path)  # placeholder until inspected
        rows.append(row)
    return rows


def _message(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # unreadable EXIF: assume upright; the full decode decides usability
        return 1


def inspect_image(path: Path, max_pixels: int) -> ImageFacts:
    """Read an image's header, refuse it if too large, else decode it fully.

    Any decoding failure is recorded as the message, never raised: one bad file must not
    stop the stage.
    """
    if not path.is_file():
        return ImageFacts(path, missing=True)
    try:
        with Image.open(path) as image:  # header only: nothing is decoded yet
            facts = ImageFacts(
                path,
                width=image.width,
                height=image.height,
                format=image.format,
                mode=image.mode,
                orientation=_orientation(image),
            )
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return ImageFacts(path, too_large=_message(exc))  # Pillow's own limit, checked on open
    except Exception as exc:
        return ImageFacts(path, unreadable=_message(exc))
    pixels = facts.width * facts.height
    if pixels > max_pixels:
        return replace(
            facts,
            too_large=f"{facts.width}x{facts.height} = {pixels} pixels "
            f"> max_image_pixels {max_pixels}",
        )
    try:
        open_image_rgb(path, max_pixels=max_pixels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return replace(facts, too_large=_message(exc))
    except Exception as exc:
        return replace(facts, unreadable=_message(exc))
    return facts


def inspect_images(paths: list[Path], max_pixels: int, progress: bool) -> dict[Path, ImageFacts]:
    """Inspect each distinct image once, on a small thread pool."""
    # catch_warnings is process-global: entering it here restores the filters that the
    # worker threads' (open_image_rgb's) own catch_warnings blocks may race on.
    with warnings.catch_warnings(), ThreadPoolExecutor(IMAGE_WORKERS) as pool:
        results = pool.map(lambda path: inspect_image(path, max_pixels), paths)
        facts = list(
            tqdm(
                results, total=len(paths), desc="validate: images", unit="img", disable=not progress
            )
        )
    return dict(zip(paths, facts, strict=True))


def unreferenced_images(root: Path, referenced: set[Path]) -> list[str]:
    """Image files under data/<split>/ that no row points at, relative to root (posix)."""
    found = []
    for split in SPLITS:
        for folder, _, files in os.walk(Path(root) / split):  # does not follow symlinked dirs
            for name in files:
                path = Path(folder) / name
                if path.suffix.lower() in IMAGE_SUFFIXES and path not in referenced:
                    found.append(path.relative_to(root).as_posix())
    return sorted(found)


# --------------------------------------------------------------------------------------
# Classes, outputs, report
# --------------------------------------------------------------------------------------


def resolve_class_list(params: Params, rows: list[RowView]) -> list[str]:
    """The class list; for "auto", the class names of train rows that passed every other check."""
    train_names = [
        row.text["class_name"] for row in rows if row.split == "train" and not row.reasons
    ]
    try:
        return resolve_classes(params.data, train_names)
    except UserError as exc:
        raise UserError(
            f"{exc.message} (no train row passed validation)",
            hint="see the quarantine file, or set data.classes explicitly",
        ) from None


def clean_frame(rows: list[RowView]) -> pd.DataFrame:
    """Clean rows: contract columns (boxes as floats) plus the original row number."""
    records = [
        {
            **{col: row.text[col] for col in ANNOTATION_COLUMNS},
            **{col: row.coords[col] for col in BOX_COLUMNS},
            "row": row.row,
        }
        for row in rows
    ]
    frame = pd.DataFrame(records, columns=[*ANNOTATION_COLUMNS, "row"])
    frame[BOX_COLUMNS] = frame[BOX_COLUMNS].astype("float64")
    frame["row"] = frame["row"].astype("int64")
    return frame


def quarantine_frame(rows: list[RowView], original_columns: list[str]) -> pd.DataFrame:
    """Bad rows with every original column as text, the failing check names and details."""
    records = []
    for row in rows:
        record: dict[str, Any] = {"split": row.split, "row": row.row}
        record.update({col: row.text.get(col, "") for col in original_columns})
        record["reasons"] = ";".join(row.reasons)
        record["detail"] = "; ".join(row.details)
        records.append(record)
    return pd.DataFrame(records, columns=[*QUARANTINE_LEAD, *original_columns, *QUARANTINE_TAIL])


def _original_columns(frames: dict[str, pd.DataFrame]) -> list[str]:
    """Contract columns first, then any extra columns of any split (renamed on a clash)."""
    columns = list(ANNOTATION_COLUMNS)
    for frame in frames.values():
        columns += [str(col) for col in frame.columns if str(col) not in columns]
    return columns


def _rename_clashes(frame: pd.DataFrame) -> pd.DataFrame:
    reserved = set(QUARANTINE_LEAD + QUARANTINE_TAIL)
    return frame.rename(
        columns={col: f"original_{col}" for col in frame.columns if col in reserved}
    )


def build_report(
    rows: list[RowView],
    facts: dict[Path, ImageFacts],
    classes: list[str] | None,
    unreferenced: list[str],
    params: Params,
) -> dict[str, Any]:
    """Numbers at the top level (DVC metrics, which skip lists); lists under "details"."""
    total = len(rows)
    bad = sum(1 for row in rows if row.reasons)
    per_check = Counter(reason for row in rows for reason in row.reasons)
    notes: Counter[str] = Counter()
    noted: dict[str, list[str]] = {}
    for path, image in sorted(facts.items()):
        if image.notes():
            notes.update(image.notes())
            noted[path.relative_to(params.data.root).as_posix()] = image.notes()
    per_split = {}
    for split in SPLITS:
        in_split = [row for row in rows if row.split == split]
        quarantined = sum(1 for row in in_split if row.reasons)
        per_split[split] = {
            "rows": len(in_split),
            "clean": len(in_split) - quarantined,
            "quarantined": quarantined,
        }
    return {
        "rows_total": total,
        "rows_clean": total - bad,
        "rows_quarantined": bad,
        "bad_fraction": round(bad / total, 6) if total else 0.0,
        "max_bad_fraction": params.validate_.max_bad_fraction,
        "classes": len(classes) if classes is not None else 0,
        "images_checked": len(facts),
        "unreferenced_images": len(unreferenced),
        "per_check": {name: per_check.get(name, 0) for name in CHECKS},
        "per_split": per_split,
        "notes": dict(sorted(notes.items())),
        "details": {
            "classes": classes,
            "unreferenced_images": unreferenced,
            "noted_images": noted,
        },
    }


def log_summary(report: dict[str, Any]) -> None:
    """A readable table of rows per split and failures per check."""
    lines = [
        f"validate: {report['rows_total']} rows, {report['rows_clean']} clean, "
        f"{report['rows_quarantined']} quarantined ({report['bad_fraction']:.1%})",
        f"  {'split':<8}{'rows':>8}{'clean':>8}{'quarantined':>13}",
    ]
    for split, counts in report["per_split"].items():
        lines.append(
            f"  {split:<8}{counts['rows']:>8}{counts['clean']:>8}{counts['quarantined']:>13}"
        )
    failing = {name: count for name, count in report["per_check"].items() if count}
    if failing:
        lines.append(f"  {'check':<20}{'rows':>8}")
        lines += [f"  {name:<20}{count:>8}" for name, count in failing.items()]
    if report["notes"]:
        lines.append(
            "  notes (handled by the loader): "
            + ", ".join(f"{name} {count}" for name, count in report["notes"].items())
        )
    if report["unreferenced_images"]:
        lines.append(f"  {report['unreferenced_images']} image file(s) referenced by no row")
    log.info("\n".join(lines))


def _threshold_error(report: dict[str, Any], outputs: Outputs) -> UserError:
    failing = [(name, count) for name, count in report["per_check"].items() if count]
    top = sorted(failing, key=lambda item: -item[1])[:5]  # stable: ties keep check order
    checks = ", ".join(f"{name} ({count})" for name, count in top)
    return UserError(
        f"validation failed: {report['rows_quarantined']} of {report['rows_total']} rows "
        f"({report['bad_fraction']:.1%}) are bad, more than validate.max_bad_fraction = "
        f"{report['max_bad_fraction']:.1%}. Top checks: {checks}. Every bad row and why is in "
        f"{outputs.quarantine}; the full report is {outputs.validate_report}.",
        hint="fix the data, or raise validate.max_bad_fraction in params.yaml",
    )


# --------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------


def run(params: Params, outputs: Outputs, progress: bool = True) -> dict[str, Any]:
    """Validate every split; write clean rows, quarantine, class list and report.

    Raises UserError for a missing/unreadable CSV, an unresolvable class list, or a bad
    fraction above ``validate.max_bad_fraction`` (the latter after writing every output).
    """
    root = Path(params.data.root)
    limits = params.validate_
    frames = {
        split: _rename_clashes(read_raw_annotations(annotations_path(root, split)))
        for split in SPLITS
    }
    rows = [row for split in SPLITS for row in build_rows(root, split, frames[split])]

    paths = sorted({row.image.path for row in rows if row.image is not None})
    facts = inspect_images(paths, limits.max_image_pixels, progress)
    for row in rows:
        if row.image is not None:
            row.image = facts[row.image.path]

    apply_checks(rows, CheckContext(limits), needs_classes=False)
    unreferenced = unreferenced_images(root, {row.target for row in rows if row.target})
    classes: list[str] | None = None
    class_error: UserError | None = None
    try:
        classes = resolve_class_list(params, rows)
    except UserError as exc:  # raised below, once the quarantine shows why
        class_error = exc
    if classes is not None:
        apply_checks(rows, CheckContext(limits, frozenset(classes)), needs_classes=True)

    original_columns = _original_columns(frames)
    for split in SPLITS:
        in_split = [row for row in rows if row.split == split]
        clean = clean_frame([row for row in in_split if not row.reasons])
        assert len(clean) + sum(1 for row in in_split if row.reasons) == len(frames[split]), split
        write_csv(outputs.validated(split), clean)
    write_csv(
        outputs.quarantine, quarantine_frame([row for row in rows if row.reasons], original_columns)
    )
    report = build_report(rows, facts, classes, unreferenced, params)
    write_json(outputs.validate_report, report)
    log_summary(report)

    if class_error is not None:
        raise class_error
    write_json(outputs.classes, {"classes": classes})
    if report["bad_fraction"] > limits.max_bad_fraction:
        raise _threshold_error(report, outputs)
    return report
