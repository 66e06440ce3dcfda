"""Contact sheets: a grid of thumbnails with their boxes, labels and a caption, as one PNG.

"When working with images, make plenty of plots to see if your data is correct": a sheet
shows at a glance whether boxes sit on their objects (EXIF rotation, swapped columns and
wrong normalization all show up as misplaced boxes) and what the quarantined images are.
Images are drawn as displayed (EXIF orientation applied), the way boxes are defined.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from pipeline.core.files import atomic_path
from pipeline.data.contract import BOX_COLUMNS, SPLITS, open_displayed
from pipeline.data.quality import expectations
from pipeline.data.quality.checks import CHECKS, Findings, Located
from pipeline.data.quality.imagecheck import ImageFacts

TILE = 192  # thumbnail side, pixels
COLUMNS = 4
FONT_SIZE = 11
LINE_HEIGHT = 14
CAPTION_LINES = 3
TITLE_HEIGHT = 28
PAD = 6
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195),
    (128, 128, 0), (255, 215, 180), (0, 0, 128), (255, 225, 25), (128, 128, 128),
)  # fmt: skip

Box = tuple[float, float, float, float]  # x_min, x_max, y_min, y_max, normalized


@dataclass
class Tile:
    """One image of a sheet. ``path`` None draws a placeholder (file missing or unusable)."""

    path: Path | None
    boxes: list[tuple[Box, str]] = field(default_factory=list)  # (box, label)
    caption: list[str] = field(default_factory=list)


def color(label: str) -> tuple[int, int, int]:
    """A stable colour per label."""
    return PALETTE[zlib.crc32(label.encode()) % len(PALETTE)]


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_SIZE)


def thumbnail(path: Path, size: int = TILE) -> Image.Image:
    """The image as displayed, RGB, fitted into ``size`` x ``size``."""
    shown = open_displayed(path, size)
    shown.thumbnail((size, size))
    return shown


def _placeholder(size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), (90, 90, 90))
    draw = ImageDraw.Draw(image)
    draw.line([(0, 0), (size, size)], fill=(130, 130, 130), width=2)
    draw.line([(0, size), (size, 0)], fill=(130, 130, 130), width=2)
    draw.text((PAD, PAD), "no usable image", fill=(255, 255, 255), font=_font())
    return image


def draw_boxes(image: Image.Image, boxes: Sequence[tuple[Box, str]]) -> None:
    """Draw normalized boxes with their labels (clipped to the image, min/max ordered)."""
    draw, font = ImageDraw.Draw(image), _font()
    width, height = image.size
    for (x_min, x_max, y_min, y_max), label in boxes:
        xs = sorted(min(1.0, max(0.0, value)) * (width - 1) for value in (x_min, x_max))
        ys = sorted(min(1.0, max(0.0, value)) * (height - 1) for value in (y_min, y_max))
        rgb = color(label)
        draw.rectangle([xs[0], ys[0], xs[1], ys[1]], outline=rgb, width=2)
        left, top, right, bottom = draw.textbbox((xs[0] + 2, ys[0] + 1), label, font=font)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=rgb)
        ink = (0, 0, 0) if sum(rgb) > 380 else (255, 255, 255)  # readable on the label colour
        draw.text((xs[0] + 2, ys[0] + 1), label, fill=ink, font=font)


def render_tile(tile: Tile, size: int = TILE) -> Image.Image:
    """A thumbnail with boxes over a caption of CAPTION_LINES lines."""
    canvas = Image.new("RGB", (size, size + CAPTION_LINES * LINE_HEIGHT + PAD), (255, 255, 255))
    try:
        image = thumbnail(tile.path, size) if tile.path is not None else _placeholder(size)
    except Exception:  # a file that changed since it was checked: show that, do not fail
        image = _placeholder(size)
    draw_boxes(image, tile.boxes if tile.path is not None else [])
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    draw, font = ImageDraw.Draw(canvas), _font()
    fits = max(8, int(size / (FONT_SIZE * 0.55)))  # characters per caption line, about
    for number, line in enumerate(tile.caption[:CAPTION_LINES]):
        text = line if len(line) <= fits else line[: fits - 1] + "…"
        draw.text((2, size + 2 + number * LINE_HEIGHT), text, fill=(0, 0, 0), font=font)
    return canvas


def contact_sheet(tiles: Sequence[Tile], title: str, columns: int = COLUMNS) -> Image.Image:
    """Render tiles in a grid under a title line."""
    rendered = [render_tile(tile) for tile in tiles] or [_empty_tile()]
    tile_w, tile_h = rendered[0].size
    rows = -(-len(rendered) // columns)
    sheet = Image.new(
        "RGB",
        (columns * (tile_w + PAD) + PAD, TITLE_HEIGHT + rows * (tile_h + PAD) + PAD),
        (235, 235, 235),
    )
    ImageDraw.Draw(sheet).text((PAD, 8), title, fill=(0, 0, 0), font=_font())
    for number, image in enumerate(rendered):
        row, column = divmod(number, columns)
        sheet.paste(image, (PAD + column * (tile_w + PAD), TITLE_HEIGHT + row * (tile_h + PAD)))
    return sheet


def _empty_tile() -> Image.Image:
    return render_tile(Tile(None, caption=["nothing to show"]))


def write_sheet(tiles: Sequence[Tile], title: str, target: Path) -> Path:
    """Render and save a contact sheet PNG atomically."""
    with atomic_path(target) as tmp:
        contact_sheet(tiles, title).save(tmp, format="PNG")
    return target


# --------------------------------------------------------------------------------------
# Which images the validate stage's sheets show
# --------------------------------------------------------------------------------------

SHEET_IMAGES = 16  # images per contact sheet
SHEET_NOTED = 4  # of which, at most, images with notes (EXIF-rotated, CMYK...) shown first
SHEET_SEED = 0


def _boxes(rows: pd.DataFrame) -> list[tuple[Box, str]]:
    """Drawable boxes (all four coordinates parsed) with their class names."""
    values = rows[[expectations.value_column(c) for c in BOX_COLUMNS]]
    usable = values.notna().all(axis=1) & np.isfinite(values.fillna(0)).all(axis=1)
    labels = rows["class_name"].fillna("?")
    return [
        (tuple(box), str(label))
        for box, label in zip(values[usable].to_numpy(), labels[usable], strict=True)
    ]


def _one_per_note(paths: list[Path], facts: dict[Path, ImageFacts]) -> list[Path]:
    """The first image with each kind of note (EXIF rotation, CMYK...)."""
    first: dict[str, Path] = {}
    for path in paths:
        for note in facts[path].notes():
            first.setdefault(note, path)
    return list(dict.fromkeys(first.values()))


def split_tiles(
    table: pd.DataFrame, bad_rows: list[int], located: Located, facts: dict[Path, ImageFacts]
) -> list[contact_sheet.Tile]:
    """Clean images of a split: those with notes (EXIF-rotated...) first, then random ones."""
    good = table[~table["row"].isin(bad_rows)]
    rows_of = dict(iter(good.groupby(good["row"].map(located.paths), sort=True)))
    paths = list(rows_of)
    noted = _one_per_note(paths, facts)[:SHEET_NOTED]
    rest = [path for path in paths if path not in noted]
    rng = np.random.default_rng(SHEET_SEED)
    count = min(SHEET_IMAGES - len(noted), len(rest))
    chosen = noted + [rest[i] for i in sorted(rng.choice(len(rest), count, replace=False))]
    tiles = []
    for path in chosen:
        rows = rows_of[path]
        caption = [f"{path.parent.name}/{path.stem}", f"{len(rows)} box(es)"]
        caption += [", ".join(facts[path].notes())] if facts[path].notes() else []
        tiles.append(Tile(path, _boxes(rows), caption))
    return tiles


def _text(value: Any) -> str:
    """A cell for a caption: "?" where it is empty."""
    return "?" if value is None or pd.isna(value) else str(value)


def quarantine_tiles(
    tables: dict[str, pd.DataFrame],
    findings: Findings,
    located: dict[str, Located],
    facts: dict[Path, ImageFacts],
) -> list[contact_sheet.Tile]:
    """Quarantined images with their reasons: one per check first, then in split/row order."""
    images: dict[tuple[str, str], list[int]] = {}  # (split, image name) -> bad rows
    for split in SPLITS:
        table = tables[split].set_index("row", drop=False)
        for row in findings.bad_rows(split):
            folder, image_id = (table.at[row, column] for column in ("folder", "image_id"))
            name = f"{_text(folder)}/{_text(image_id)}"
            images.setdefault((split, name), []).append(row)
    reasons = {
        key: {reason for row in rows for reason in findings.reasons(key[0], row)}
        for key, rows in images.items()
    }
    chosen: list[tuple[str, str]] = []
    for check in CHECKS:
        first = next((key for key in images if check in reasons[key] and key not in chosen), None)
        if first is not None:
            chosen.append(first)
    chosen += [key for key in images if key not in chosen][: max(0, SHEET_IMAGES - len(chosen))]
    tiles = []
    for split, name in chosen[:SHEET_IMAGES]:
        rows = images[split, name]
        path = located[split].paths.get(rows[0])
        usable = path is not None and facts[path].decodable
        table = tables[split]
        ordered = [check for check in CHECKS if check in reasons[split, name]]
        caption = [f"{split}: {name}", f"rows {', '.join(map(str, rows))}", ", ".join(ordered)]
        boxes = _boxes(table[table["row"].isin(rows)]) if usable else []
        tiles.append(Tile(path if usable else None, boxes, caption))
    return tiles


def write_contact_sheets(
    tables: dict[str, pd.DataFrame],
    findings: Findings,
    located: dict[str, Located],
    facts: dict[Path, ImageFacts],
    target: Path,
) -> list[Path]:
    """One sheet per split of clean images with their boxes, one of quarantined images."""
    written = []
    for split in SPLITS:
        tiles = split_tiles(tables[split], findings.bad_rows(split), located[split], facts)
        title = f"{split}: {len(tiles)} clean images (noted ones first, then random), boxes as read"
        written.append(write_sheet(tiles, title, target / f"{split}.png"))
    tiles = quarantine_tiles(tables, findings, located, facts)
    title = f"quarantine: {len(tiles)} images with the reasons of their rows"
    written.append(write_sheet(tiles, title, target / "quarantine.png"))
    return written
