"""Defects injected into the rendered dataset, each into a different image.

The injected defects (``params.inject_defects``; rates in ``DEFECT_SPECS``)
    Each kind is injected max(minimum, rate x images) times (about 0.5-1 % of the images each,
    at least 1-2 even in a tiny dataset), each instance into a different image.

    Rows and annotations (``expect``: quarantine unless noted)
      duplicate_row          an exact copy of a row (dedup; ``duplicate_of`` = original row)
      duplicate_box          the same object annotated twice: same image and class, the box
                             jittered slightly, IoU > 0.95 (dedup; ``duplicate_of``)
      box_out_of_range       one coordinate < 0 or > 1 (``column``, ``value``)
      box_inverted           x_min > x_max or y_min > y_max (the pair swapped)
      unknown_class          a class_name outside the 20 (e.g. "sandwich", typos "hotdog")
      text_in_number         a coordinate cell holding text such as "abc" or "n/a"
      empty_value            an empty coordinate cell
      missing_file           the image file of the rows was deleted
      path_traversal         an extra row whose image_id contains "../" and points outside data/
    Files
      truncated_jpeg         a JPEG cut off mid-stream (Pillow's load() fails)
      corrupt_file           not an image at all: an HTML error page, an empty file, or garbage
      exact_duplicate_image  a byte-identical copy of another image under a new id, with copies
                             of its rows; within a split or in another split (``cross_split``:
                             leakage); ``source_split``/``source_image_id`` name the original
                             (dedup)
      near_duplicate_image   the same scene re-encoded at another JPEG quality, slightly resized
                             or brightness-shifted, under a new id, within or across splits (dedup)
      unreferenced_image     an image file that no row references (its rows were lost; report)
    Valid images the pipeline must read (``expect``: readable; the rows are correct)
      grayscale_image        a single-channel (L) JPEG
      cmyk_image             a CMYK JPEG
      png_as_jpg             a PNG file named .jpg
      exif_rotated           pixels stored rotated, with an EXIF Orientation tag (3, 6 or 8)
                             so that the displayed image matches the boxes

"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.random import Generator
from PIL import Image, ImageFile

from pipeline.data.boxes import iou
from pipeline.data.contract import ANNOTATION_COLUMNS, SPLITS, image_path
from pipeline.data.synth.draw import pick
from pipeline.data.synth.images import ImageRecord, encode_jpeg


@dataclass(frozen=True)
class DefectSpec:
    """How often a defect kind is injected and what the pipeline is expected to do with it."""

    rate: float  # share of all rendered images
    minimum: int  # at least this many, whatever the dataset size (if images are left)
    expect: str  # quarantine | dedup | readable | report
    summary: str


DEFECT_SPECS: dict[str, DefectSpec] = {
    "duplicate_row": DefectSpec(0.01, 1, "dedup", "an exact copy of an existing row"),
    "duplicate_box": DefectSpec(0.01, 1, "dedup", "the same object annotated twice (IoU > 0.95)"),
    "exact_duplicate_image": DefectSpec(
        0.0075, 2, "dedup", "a byte-identical copy of an image under another id"
    ),
    "near_duplicate_image": DefectSpec(
        0.0075, 2, "dedup", "the same scene re-encoded, resized or brightness-shifted"
    ),
    "box_out_of_range": DefectSpec(0.005, 1, "quarantine", "a coordinate < 0 or > 1"),
    "box_inverted": DefectSpec(0.005, 1, "quarantine", "x_min > x_max or y_min > y_max"),
    "unknown_class": DefectSpec(0.005, 1, "quarantine", "a class_name outside the 20 classes"),
    "text_in_number": DefectSpec(0.002, 2, "quarantine", "text in a coordinate cell"),
    "empty_value": DefectSpec(0.002, 2, "quarantine", "an empty coordinate cell"),
    "missing_file": DefectSpec(0.005, 1, "quarantine", "the rows' image file does not exist"),
    "path_traversal": DefectSpec(0.0, 2, "quarantine", "an image_id pointing outside data/"),
    "truncated_jpeg": DefectSpec(0.005, 1, "quarantine", "a JPEG cut off mid-stream"),
    "corrupt_file": DefectSpec(0.005, 1, "quarantine", "a .jpg that is not an image"),
    "unreferenced_image": DefectSpec(0.005, 1, "report", "an image file no row references"),
    "grayscale_image": DefectSpec(0.01, 1, "readable", "a single-channel JPEG"),
    "cmyk_image": DefectSpec(0.005, 1, "readable", "a CMYK JPEG"),
    "png_as_jpg": DefectSpec(0.005, 1, "readable", "a PNG file named .jpg"),
    "exif_rotated": DefectSpec(
        0.01, 1, "readable", "pixels stored rotated, EXIF Orientation restores the displayed image"
    ),
}

_UNKNOWN_CLASSES = ("sandwich", "pizza", "burger", "hotdog", "ice_cream", "sushi")
_BAD_NUMBERS = ("abc", "n/a", "none", "?", "0.5x")
_BOX_COLUMNS = ("x_min", "x_max", "y_min", "y_max")
_INVERSE_ORIENTATION = {  # stored = displayed.transpose(...) so that exif_transpose restores it
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


class Row:
    """One CSV data row (cells in ANNOTATION_COLUMNS order); identity matters, not value."""

    __slots__ = ("cells",)

    def __init__(self, cells: Sequence[str]) -> None:
        self.cells = list(cells)

    def get(self, column: str) -> str:
        return self.cells[ANNOTATION_COLUMNS.index(column)]

    def set(self, column: str, value: str) -> None:
        self.cells[ANNOTATION_COLUMNS.index(column)] = value


def _fmt(value: float) -> str:
    """A coordinate as written in the CSV."""
    return f"{value:.6f}"


def record_rows(record: ImageRecord) -> list[Row]:
    """The CSV rows of a rendered image, main object first."""
    return [
        Row([record.image_id, _fmt(x0), _fmt(x1), _fmt(y0), _fmt(y1), name, record.folder])
        for name, x0, x1, y0, y1 in record.boxes
    ]


@dataclass(eq=False)
class Defect:
    """A defect while being injected: rows are kept as objects until the CSV order is final."""

    kind: str
    split: str
    image_id: str
    folder: str
    description: str
    row: Row | None = None
    rows: list[Row] = field(default_factory=list)
    row_refs: dict[str, Row] = field(default_factory=dict)  # e.g. duplicate_of
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, index: dict[int, int]) -> dict[str, Any]:
        """The manifest entry, with rows turned into 0-based CSV data-row indices."""
        entry = {
            "kind": self.kind,
            "split": self.split,
            "image_id": self.image_id,
            "folder": self.folder,
            "description": self.description,
            "expect": self.extra.get("expect") or DEFECT_SPECS[self.kind].expect,
            "row": index[id(self.row)] if self.row is not None else None,
            "rows": sorted(index[id(row)] for row in self.rows if id(row) in index),
        }
        entry.update({key: index[id(row)] for key, row in self.row_refs.items()})
        entry.update(self.extra)
        return entry


def _decodes(path: Path) -> bool:
    """Whether Pillow can open and fully decode a file (truncated data is an error)."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:  # any failure means "not decodable"; Pillow raises many kinds
        return False
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


class Injector:
    """Injects every defect kind into distinct images, in a fixed order, from one generator."""

    def __init__(
        self, root: Path, rows: dict[str, list[Row]], records: list[ImageRecord], rng: Generator
    ) -> None:
        self.root, self.rows, self.rng = root, rows, rng
        self.pool = [records[int(i)] for i in rng.permutation(len(records))]
        self.defects: list[Defect] = []
        self.used_ids = {record.image_id for record in records}

    def run(self, total_images: int) -> list[Defect]:
        """Inject each kind ``max(minimum, rate × images)`` times, while images are left."""
        for kind, spec in DEFECT_SPECS.items():
            inject = getattr(self, f"_{kind}")
            for number in range(max(spec.minimum, round(spec.rate * total_images))):
                if not self.pool:
                    return self.defects
                inject(self.pool.pop(), number)
        return self.defects

    # helpers ---------------------------------------------------------------------------------
    def _path(self, record: ImageRecord, split: str | None = None, image_id: str = "") -> Path:
        split = split or record.split
        return image_path(self.root, split, record.folder, image_id or record.image_id)

    def _rows_of(self, record: ImageRecord) -> list[Row]:
        return [row for row in self.rows[record.split] if row.get("image_id") == record.image_id]

    def _one_row(self, record: ImageRecord) -> Row:
        return pick(self.rng, self._rows_of(record))

    def _insert_after(self, split: str, anchor: Row, row: Row) -> None:
        rows = self.rows[split]
        rows.insert(next(i for i, r in enumerate(rows) if r is anchor) + 1, row)

    def _new_id(self) -> str:
        image_id = self.rng.bytes(8).hex()
        while image_id in self.used_ids:
            image_id = self.rng.bytes(8).hex()
        self.used_ids.add(image_id)
        return image_id

    def _add(self, kind: str, record: ImageRecord, description: str, **fields: Any) -> None:
        self.defects.append(
            Defect(kind, record.split, record.image_id, record.folder, description, **fields)
        )

    def _reencode(self, record: ImageRecord, convert: Callable[[Image.Image], bytes]) -> None:
        path = self._path(record)
        with Image.open(path) as image:
            path.write_bytes(convert(image.convert("RGB")))

    # row and annotation defects --------------------------------------------------------------
    def _duplicate_row(self, record: ImageRecord, number: int) -> None:
        row = self._one_row(record)
        copy = Row(row.cells)
        self._insert_after(record.split, row, copy)
        self._add(
            "duplicate_row",
            record,
            "exact copy of the row `duplicate_of`",
            row=copy,
            rows=[row, copy],
            row_refs={"duplicate_of": row},
        )

    def _duplicate_box(self, record: ImageRecord, number: int) -> None:
        row = self._one_row(record)
        box = [float(row.get(c)) for c in _BOX_COLUMNS]
        size = (box[1] - box[0], box[1] - box[0], box[3] - box[2], box[3] - box[2])
        while True:
            moved = [
                v + self.rng.uniform(-0.008, 0.008) * s for v, s in zip(box, size, strict=True)
            ]
            moved = [float(_fmt(min(1.0, max(0.0, v)))) for v in moved]
            if moved != box and 0.95 < float(iou(box, moved)) < 1.0:
                break
        copy = Row(row.cells)
        for column, value in zip(_BOX_COLUMNS, moved, strict=True):
            copy.set(column, _fmt(value))
        self._insert_after(record.split, row, copy)
        self._add(
            "duplicate_box",
            record,
            f"same object as row `duplicate_of`, box jittered (IoU {float(iou(box, moved)):.3f})",
            row=copy,
            rows=[row, copy],
            row_refs={"duplicate_of": row},
            extra={"iou": round(float(iou(box, moved)), 4)},
        )

    def _box_out_of_range(self, record: ImageRecord, number: int) -> None:
        row, column = self._one_row(record), pick(self.rng, _BOX_COLUMNS)
        overshoot = self.rng.uniform(0.01, 0.15)
        value = -overshoot if column.endswith("min") else 1.0 + overshoot
        row.set(column, _fmt(value))
        self._add(
            "box_out_of_range",
            record,
            f"{column} = {_fmt(value)} is outside [0, 1]",
            row=row,
            rows=[row],
            extra={"column": column, "value": _fmt(value)},
        )

    def _box_inverted(self, record: ImageRecord, number: int) -> None:
        row, axis = self._one_row(record), pick(self.rng, ("x", "y"))
        low, high = row.get(f"{axis}_min"), row.get(f"{axis}_max")
        row.set(f"{axis}_min", high)
        row.set(f"{axis}_max", low)
        self._add(
            "box_inverted",
            record,
            f"{axis}_min and {axis}_max swapped ({high} > {low})",
            row=row,
            rows=[row],
            extra={"column": f"{axis}_min"},
        )

    def _unknown_class(self, record: ImageRecord, number: int) -> None:
        row, name = self._one_row(record), pick(self.rng, _UNKNOWN_CLASSES)
        original = row.get("class_name")
        row.set("class_name", name)
        self._add(
            "unknown_class",
            record,
            f"class_name {name!r} (was {original!r})",
            row=row,
            rows=[row],
            extra={"column": "class_name", "value": name},
        )

    def _text_in_number(self, record: ImageRecord, number: int) -> None:
        row, column = self._one_row(record), pick(self.rng, _BOX_COLUMNS)
        value = pick(self.rng, _BAD_NUMBERS)
        row.set(column, value)
        self._add(
            "text_in_number",
            record,
            f"{column} holds the text {value!r}",
            row=row,
            rows=[row],
            extra={"column": column, "value": value},
        )

    def _empty_value(self, record: ImageRecord, number: int) -> None:
        row, column = self._one_row(record), pick(self.rng, _BOX_COLUMNS)
        row.set(column, "")
        self._add(
            "empty_value",
            record,
            f"{column} is empty",
            row=row,
            rows=[row],
            extra={"column": column, "value": ""},
        )

    def _missing_file(self, record: ImageRecord, number: int) -> None:
        self._path(record).unlink()
        self._add(
            "missing_file",
            record,
            "image file deleted; its rows remain",
            rows=self._rows_of(record),
        )

    def _path_traversal(self, record: ImageRecord, number: int) -> None:
        row = self._one_row(record)
        target = (
            "../../../../../../../../etc/passwd"
            if number % 2 == 0
            else f"{self._new_id()}/../../../../outside/{self._new_id()}"
        )
        copy = Row(row.cells)
        copy.set("image_id", target)
        self._insert_after(record.split, row, copy)
        self.defects.append(
            Defect(
                "path_traversal",
                record.split,
                target,
                record.folder,
                "image_id escapes the data folder with '../'",
                row=copy,
                rows=[copy],
            )
        )

    # file defects ----------------------------------------------------------------------------
    def _truncated_jpeg(self, record: ImageRecord, number: int) -> None:
        path = self._path(record)
        data = path.read_bytes()
        keep = int(len(data) * self.rng.uniform(0.3, 0.75))
        while True:
            path.write_bytes(data[:keep])
            if not _decodes(path):
                break
            keep //= 2
        self._add(
            "truncated_jpeg",
            record,
            f"file cut after {keep} of {len(data)} bytes",
            rows=self._rows_of(record),
        )

    def _corrupt_file(self, record: ImageRecord, number: int) -> None:
        path = self._path(record)
        variants = {
            "html": b"<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
            b"<body><h1>Not Found</h1></body></html>\n",
            "empty": b"",
            "garbage": b"\x00garbage" + self.rng.bytes(int(self.rng.integers(200, 4000))),
        }
        variant = ("html", "empty", "garbage")[number % 3]
        path.write_bytes(variants[variant])
        if _decodes(path):  # practically impossible, but the manifest must not lie
            path.write_bytes(variants["html"])
            variant = "html"
        self._add(
            "corrupt_file",
            record,
            f"not an image ({variant} content)",
            rows=self._rows_of(record),
            extra={"content": variant},
        )

    def _unreferenced_image(self, record: ImageRecord, number: int) -> None:
        rows = self._rows_of(record)
        self.rows[record.split] = [r for r in self.rows[record.split] if r not in rows]
        self._add("unreferenced_image", record, f"its {len(rows)} row(s) were removed")

    def _grayscale_image(self, record: ImageRecord, number: int) -> None:
        self._reencode(record, lambda im: encode_jpeg(im.convert("L"), record.quality))
        self._add("grayscale_image", record, "mode L JPEG", rows=self._rows_of(record))

    def _cmyk_image(self, record: ImageRecord, number: int) -> None:
        self._reencode(record, lambda im: encode_jpeg(im.convert("CMYK"), record.quality))
        self._add("cmyk_image", record, "CMYK JPEG", rows=self._rows_of(record))

    def _png_as_jpg(self, record: ImageRecord, number: int) -> None:
        def to_png(image: Image.Image) -> bytes:
            buffer = io.BytesIO()
            image.save(buffer, "PNG", compress_level=6)
            return buffer.getvalue()

        self._reencode(record, to_png)
        self._add("png_as_jpg", record, "PNG data in a .jpg file", rows=self._rows_of(record))

    def _exif_rotated(self, record: ImageRecord, number: int) -> None:
        orientation = (6, 8, 3)[number % 3]

        def rotate(image: Image.Image) -> bytes:
            exif = Image.Exif()
            exif[0x0112] = orientation
            stored = image.transpose(_INVERSE_ORIENTATION[orientation])
            return encode_jpeg(stored, record.quality, exif=exif.tobytes())

        self._reencode(record, rotate)
        self._add(
            "exif_rotated",
            record,
            f"stored pixels rotated, EXIF Orientation {orientation}; boxes refer to the "
            "displayed (EXIF-applied) image",
            rows=self._rows_of(record),
            extra={"orientation": orientation},
        )

    # duplicate images ------------------------------------------------------------------------
    def _copy_image(
        self, kind: str, record: ImageRecord, number: int, data: bytes, description: str
    ) -> None:
        """Write ``data`` as a new image of ``record``'s scene, with copies of its rows."""
        cross = number % 2 == 1
        others = [s for s in SPLITS if s != record.split]
        split = pick(self.rng, others) if cross else record.split
        image_id = self._new_id()
        path = self._path(record, split, image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        copies = []
        for row in self._rows_of(record):
            copy = Row(row.cells)
            copy.set("image_id", image_id)
            self.rows[split].append(copy)
            copies.append(copy)
        where = f"in {split} (leakage across splits)" if cross else f"in the same split {split}"
        self.defects.append(
            Defect(
                kind,
                split,
                image_id,
                record.folder,
                f"{description} of {record.split}/{record.image_id}, {where}",
                rows=copies,
                extra={
                    "source_split": record.split,
                    "source_image_id": record.image_id,
                    "cross_split": cross,
                },
            )
        )

    def _exact_duplicate_image(self, record: ImageRecord, number: int) -> None:
        data = self._path(record).read_bytes()
        self._copy_image("exact_duplicate_image", record, number, data, "byte-identical copy")

    def _near_duplicate_image(self, record: ImageRecord, number: int) -> None:
        variant = ("quality", "resize", "brightness")[number % 3]
        with Image.open(self._path(record)) as image:
            image = image.convert("RGB")
        quality = record.quality
        if variant == "quality":
            quality = int(np.clip(quality + pick(self.rng, (-25, -15, 15, 25)), 40, 98))
        elif variant == "resize":
            scale = self.rng.uniform(0.75, 0.92)
            size = (round(image.width * scale), round(image.height * scale))
            image = image.resize(size, Image.Resampling.LANCZOS)
        else:
            factor = pick(self.rng, (0.88, 0.93, 1.07, 1.12))
            image = Image.fromarray(np.clip(np.asarray(image) * factor, 0, 255).astype(np.uint8))
        data = encode_jpeg(image, quality)
        self._copy_image(
            "near_duplicate_image",
            record,
            number,
            data,
            f"near-duplicate ({variant}, {image.width}x{image.height}, q{quality})",
        )
