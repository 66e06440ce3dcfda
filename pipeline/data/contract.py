"""The snacks data contract: splits, columns, paths, annotation CSVs and image decoding.

The raw layout (README, "The data"): ``data/<split>/<folder>/<image_id>.jpg`` and
``data/annotations-<split>.csv`` with the columns of ``ANNOTATION_COLUMNS``.
Boxes are normalized to [0, 1] and refer to the image as displayed, i.e. after its
EXIF orientation is applied; every reader here applies it.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from pipeline.core.errors import UserError

ANNOTATION_COLUMNS: list[str] = [
    "image_id", "x_min", "x_max", "y_min", "y_max", "class_name", "folder",
]  # fmt: skip
BOX_COLUMNS: list[str] = ["x_min", "x_max", "y_min", "y_max"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
# The synthetic dataset's record of every defect it injected (and the truth behind each).
MANIFEST_NAME = "defects.json"
# Names of image files (lower-case endings): the files an import looks for, and those under
# data/<split>/ that validate reports when no row names them.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)


def annotations_path(root: Path, split: str) -> Path:
    """Path of a split's annotation CSV under a data root."""
    return Path(root) / f"annotations-{split}.csv"


def image_path(root: Path, split: str, folder: str, image_id: str) -> Path:
    """Where the image of an annotation row lives (no confinement check: see safe_image_path)."""
    return Path(root) / split / str(folder) / f"{image_id}.jpg"


def safe_image_path(root: Path, split: str, folder: str, image_id: str) -> Path | None:
    """The image path if it stays inside ``root/split``; None for traversal attempts."""
    for part in (str(folder), str(image_id)):
        if not part or part in {".", ".."} or "/" in part or "\\" in part or "\x00" in part:
            return None
    base = (Path(root) / split).resolve()
    path = image_path(root, split, folder, image_id)
    try:
        path.resolve().relative_to(base)
    except ValueError:  # a symlink pointing outside the data root
        return None
    return path


def read_raw_annotations(path: Path) -> pd.DataFrame:
    """Read an annotation CSV exactly as written: every cell as text, nothing coerced.

    Validation decides what is wrong with a row; reading must not drop or alter any.
    """
    if not path.is_file():
        raise UserError(
            f"{path}: annotation file not found",
            hint="the data folder needs annotations-train/val/test.csv",
        )
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise UserError(
            f"{path}: empty file (no header)",
            hint=f"expected the header {','.join(ANNOTATION_COLUMNS)}",
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path}: not a readable CSV: {exc}",
            hint="save it as UTF-8 CSV, one row per line, as many cells per row as header columns",
        ) from None
    if not isinstance(frame.index, pd.RangeIndex):
        # pandas turns a surplus first column into the index: every cell would shift.
        raise UserError(
            f"{path}: rows have more cells than the header",
            hint=f"expected the header {','.join(ANNOTATION_COLUMNS)}",
        )
    frame.columns = [str(col).strip() for col in frame.columns]
    missing = [col for col in ANNOTATION_COLUMNS if col not in frame.columns]
    if missing:
        what, hint = header_problem(list(frame.columns), missing)
        raise UserError(f"{path}: {what}", hint=hint)
    return frame


# Header names other tools write for the contract's columns (compared without case and "_").
COLUMN_ALIASES = {
    "image_id": ("imageid", "image", "filename", "file", "imagename", "id"),
    "x_min": ("xmin", "left", "x1"),
    "x_max": ("xmax", "right", "x2"),
    "y_min": ("ymin", "top", "y1"),
    "y_max": ("ymax", "bottom", "y2"),
    "class_name": ("class", "classname", "label", "labelname", "category", "name"),
}
HEADER = ",".join(ANNOTATION_COLUMNS)


def header_problem(columns: list[str], missing: list[str]) -> tuple[str, str]:
    """(what the header looks like, how to fix it) for a header missing contract columns."""
    if len(columns) == 1:
        for sep in (";", "\t", "|", " "):
            if sep in columns[0]:
                shown = "tabs" if sep == "\t" else repr(sep)
                return f"the file looks separated by {shown}, not by commas", (
                    "save it comma-separated"
                )
    if any(re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)", col) for col in columns):
        return f"the first line is a row of data, not the header ({','.join(columns)})", (
            f"add the header line {HEADER}"
        )
    plain = {re.sub(r"[\s_]", "", col).lower(): col for col in columns}
    renames = {
        col: next((plain[alias] for alias in COLUMN_ALIASES.get(col, ()) if alias in plain), None)
        for col in missing
    }
    found = [f"{theirs} to {ours}" for ours, theirs in renames.items() if theirs]
    what = f"missing column(s) {', '.join(missing)} (the header is {','.join(columns)})"
    if not found:
        return what, f"expected the header {HEADER}"
    rest = [ours for ours, theirs in renames.items() if not theirs]
    return what, (
        f"rename {', '.join(found)}"
        + (f" and add {', '.join(rest)}" if rest else "")
        + " (boxes normalized to [0, 1]; `snackloc data import` converts VOC, COCO, YOLO, "
        "CVAT, LabelMe and Open Images files)"
    )


def read_clean_annotations(path: Path) -> pd.DataFrame:
    """Read annotations written by a stage (already validated): typed columns."""
    frame = pd.read_csv(
        path, dtype={"image_id": str, "class_name": str, "folder": str}, keep_default_na=False
    )
    frame[BOX_COLUMNS] = frame[BOX_COLUMNS].astype("float64")
    return frame


def open_image_rgb(path: Path, max_pixels: int | None = None) -> Image.Image:
    """Open an image as displayed (EXIF orientation applied), converted to RGB.

    Works for any real format whatever the extension (PNG named .jpg), and for grayscale,
    palette, CMYK, 16-bit and alpha images (alpha is flattened on white).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(path)
        try:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ValueError(f"{image.width}x{image.height} exceeds {max_pixels} pixels")
            image.load()
        except BaseException:
            image.close()  # a failed decode (truncated file) must not leak the file handle
            raise
    image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparent pixels become white."""
    if image.mode == "RGB":
        return image
    if image.mode in {"I;16", "I;16B", "I;16L", "I"}:
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray((array * (255.0 / peak)).clip(0, 255).astype(np.uint8))
    if image.mode == "P" or image.mode in {"LA", "RGBA", "PA"}:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def open_displayed(source: Path | BinaryIO, draft_side: int) -> Image.Image:
    """The image as displayed (EXIF applied), RGB, for work at about ``draft_side`` pixels.

    JPEG draft mode decodes big files at a reduced scale (never below ``draft_side``),
    which is several times faster than a full decode.
    """
    return open_displayed_sized(source, draft_side)[0]


# EXIF orientations that turn the image by 90° on display (width and height swap).
QUARTER_TURNS = frozenset({5, 6, 7, 8})


def open_displayed_sized(
    source: Path | BinaryIO, draft_side: int
) -> tuple[Image.Image, tuple[int, int]]:
    """``open_displayed`` and the full (width, height) of the image as displayed, which
    draft mode does not keep: what a box in pixels refers to."""
    with Image.open(source) as image:
        width, height = image.size
        if image.getexif().get(0x0112) in QUARTER_TURNS:
            width, height = height, width
        if image.format == "JPEG":
            image.draft("RGB", (draft_side, draft_side))
        return to_rgb(ImageOps.exif_transpose(image)), (width, height)


def load_image_array(path: Path, size: int) -> np.ndarray:
    """Decode, orient and resize an image to ``size``×``size`` RGB uint8.

    The image is squashed (not letterboxed), as the book does: normalized boxes stay valid.
    """
    return decode_for_model(path, size)[0]


def decode_for_model(source: Path | BinaryIO, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``load_image_array`` of a file or of bytes, with the (width, height) of the image as
    displayed (full size, EXIF applied). One decode, at reduced scale for big JPEGs."""
    image, shown = open_displayed_sized(source, size * 2)
    image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image, dtype=np.uint8), shown
