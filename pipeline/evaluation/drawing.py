"""Boxes drawn the way the book's ``plot_image`` does: a white rectangle and a white label,
each with a thin black outline so that they stay readable on any background.

One drawer for every picture of a prediction: the images `snackloc predict` writes and the
best / worst / random galleries of the evaluate stage (ground truth dashed, label on top;
prediction solid, label at the bottom). Boxes are (x_min, x_max, y_min, y_max), normalized.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

DASH, GAP = 8, 5  # pixels of a dashed edge


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _dashed_rectangle(draw: ImageDraw.ImageDraw, corners, fill: str, width: int) -> None:
    """A rectangle outline of dashes (PIL draws only solid ones)."""
    x0, y0, x1, y1 = corners
    for start, end in (
        ((x0, y0), (x1, y0)),
        ((x1, y0), (x1, y1)),
        ((x1, y1), (x0, y1)),
        ((x0, y1), (x0, y0)),
    ):
        length = max(abs(end[0] - start[0]), abs(end[1] - start[1]))
        for offset in range(0, length + 1, DASH + GAP):
            a = offset / max(length, 1)
            b = min(offset + DASH, length) / max(length, 1)
            segment = [
                (start[0] + (end[0] - start[0]) * t, start[1] + (end[1] - start[1]) * t)
                for t in (a, b)
            ]
            draw.line(segment, fill=fill, width=width)


def draw_box(
    image: Image.Image,
    pixels: Sequence[int],
    label: str,
    dashed: bool = False,
    label_below: bool = False,
) -> None:
    """Draw a box given in pixels (x0, x1, y0, y1) and its label into ``image``, in place.

    The label sits inside the box at its top left, or at its bottom left (``label_below``).
    """
    draw = ImageDraw.Draw(image)
    x0, x1, y0, y1 = pixels
    width = max(2, round(min(image.size) / 150))
    if dashed:
        _dashed_rectangle(draw, (x0, y0, x1, y1), "black", width + 2)
        _dashed_rectangle(draw, (x0, y0, x1, y1), "white", width)
    else:
        draw.rectangle((x0, y0, x1, y1), outline="black", width=width + 2)
        # A box under 2 px across (a collapsed prediction) still gets its white line.
        inner = (x0 + 1, y0 + 1, max(x0 + 1, x1 - 1), max(y0 + 1, y1 - 1))
        draw.rectangle(inner, outline="white", width=width)
    font = _font(max(12, round(min(image.size) / 20)))
    stroke = max(1, width // 2 + 1)
    text_xy = (x0 + width + 3, y0 + width + 2)
    if label_below:
        top, bottom = draw.textbbox((0, 0), label, font=font, stroke_width=stroke)[1::2]
        text_xy = (x0 + width + 3, y1 - width - 2 - (bottom - top))
    draw.text(text_xy, label, fill="white", font=font, stroke_width=stroke, stroke_fill="black")
