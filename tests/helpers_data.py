"""Tiny snacks-format datasets built inside a test's tmp_path (no fixtures, plain functions).

Import from a test module as ``from helpers_data import make_dataset, ...``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.config import DataParams, Params, ValidateParams
from pipeline.data.contract import ANNOTATION_COLUMNS, BOX_COLUMNS, SPLITS

GOOD_BOX = ("0.1", "0.9", "0.2", "0.8")  # x_min, x_max, y_min, y_max as written in a CSV


def ann(
    image_id: str,
    cls: str = "cake",
    folder: str | None = None,
    box: tuple[str, str, str, str] = GOOD_BOX,
    **extra: str,
) -> dict[str, str]:
    """One CSV row as text; ``folder`` defaults to the class name."""
    x_min, x_max, y_min, y_max = box
    row = {
        "image_id": image_id,
        "x_min": x_min,
        "x_max": x_max,
        "y_min": y_min,
        "y_max": y_max,
        "class_name": cls,
        "folder": cls if folder is None else folder,
    }
    return {**row, **extra}


def noise_image(seed_text: str, size: tuple[int, int] = (40, 32), mode: str = "RGB") -> Image.Image:
    """A small image whose pixels depend on ``seed_text`` (distinct names, distinct bytes)."""
    rng = np.random.default_rng(zlib.crc32(seed_text.encode()))
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def write_image(
    path: Path, image: Image.Image | None = None, fmt: str = "JPEG", **save_args: object
) -> Path:
    """Save an image (default: noise seeded by the path) at ``path``, making folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (image or noise_image(str(path))).save(path, format=fmt, **save_args)
    return path


def write_csv_rows(root: Path, split: str, rows: list[dict[str, str]]) -> Path:
    """Write annotations-<split>.csv with the contract columns first, then any extras."""
    columns = list(ANNOTATION_COLUMNS)
    for row in rows:
        columns += [col for col in row if col not in columns]
    path = root / f"annotations-{split}.csv"
    pd.DataFrame(rows, columns=columns, dtype=str).to_csv(path, index=False)
    return path


def make_dataset(
    root: Path, splits: dict[str, list[dict[str, str]]], skip_images: tuple[str, ...] = ()
) -> Path:
    """Write the CSV of every split (empty when not given) and a JPEG for each row's image.

    Images are written only for rows whose folder/image_id make a plain path; pass
    "split/folder/image_id" in ``skip_images`` to leave a file missing.
    """
    root.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        rows = splits.get(split, [])
        write_csv_rows(root, split, rows)
        for row in rows:
            folder, image_id = row.get("folder", ""), row.get("image_id", "")
            if not folder or not image_id or any(c in folder + image_id for c in "/\\\0"):
                continue
            if folder in {".", ".."} or f"{split}/{folder}/{image_id}" in skip_images:
                continue
            path = root / split / folder / f"{image_id}.jpg"
            if not path.exists():
                write_image(path)
    return root


def make_params(root: Path, classes: str | list[str] = "snacks", **validate: object) -> Params:
    """Params for a test dataset; ``validate`` overrides ValidateParams fields.

    Data Docs are off unless asked for (``data_docs=True``): building them takes a second.
    """
    return Params(
        data=DataParams(root=root, classes=classes),
        validate=ValidateParams(**{"max_bad_fraction": 1.0, "data_docs": False, **validate}),
    )


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares ``width``x``height`` but holds almost no pixel data.

    Opening it reads the size from the header; decoding it would need width*height*3 bytes.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    payload = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def read_text_csv(path: Path) -> pd.DataFrame:
    """Read a stage's CSV back with every cell as written."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def scene_image(seed_text: str, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A smooth, photo-like image (random low-frequency colour field): perceptual hashes of
    its resized or re-encoded copies stay close, unlike those of pixel noise."""
    rng = np.random.default_rng(zlib.crc32(seed_text.encode()))
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def write_validated(outputs_root: Path, splits: dict[str, list[dict[str, str]]]) -> None:
    """Write validated annotation CSVs as the validate stage does (every row clean)."""
    for split in SPLITS:
        frame = pd.DataFrame(splits.get(split, []), columns=ANNOTATION_COLUMNS)
        frame[BOX_COLUMNS] = frame[BOX_COLUMNS].astype("float64")
        frame["row"] = range(len(frame))
        path = outputs_root / "validate" / f"annotations-{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
