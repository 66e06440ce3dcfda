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

from PIL import Image, ImageDraw, ImageFont

from pipeline.core.files import atomic_path
from pipeline.data.contract import open_displayed

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
