"""The embedded default dataset: a synthetic "snacks" dataset with documented defects.

``generate(out_dir, params)`` writes a dataset in the book's format (the data contract,
``pipeline.data.contract``), byte-for-byte reproducible from ``params.seed``::

    out_dir/train/<folder>/<image_id>.jpg   val/...   test/...
    out_dir/annotations-{train,val,test}.csv   image_id,x_min,x_max,y_min,y_max,class_name,folder
    out_dir/defects.json                       the manifest (below)

Usage: ``generate(Path("data"), load_params().synth)``; it refuses to replace a non-empty folder
(it may hold the real dataset) unless ``overwrite=True``, and swaps the finished tree into place
only at the end. Rendering runs in a ``spawn`` process pool (safe next to threads), so scripts
that call it at top level need the usual ``if __name__ == "__main__":`` guard.

The images
    Every image is one photo-like scene: a cluttered background (wood, gingham cloth, tiles,
    gradients or mottled surfaces, uneven light, grain, optional depth-of-field blur) with
    unannotated distractors that are not snack-like (napkins, cutlery, scribbles, shards,
    placemat lines, "text", plates), and 1-3 procedurally drawn snacks of the 20 classes in
    ``SNACK_CLASSES``, each recognisable by shape, colour and texture, with per-object colour
    jitter, shape variants, a small tilt, flips, shading, and sometimes lying on their side.
    Objects cover roughly 3-70 % of the image, may leave the frame a little and may overlap
    (later-drawn objects cover earlier ones). Per image: random size between ``min_side`` and
    ``max_side`` with aspect ratio up to 1.8, brightness/contrast/hue/saturation/white-balance
    shifts, vignetting, sensor noise and a JPEG quality of 60-95. Main classes are balanced per
    split. Objects are drawn at 2x and downsampled (anti-aliased).

The annotations
    One row per object. Boxes are tight around the *visible* pixels of the object (its drawn
    alpha mask > 0.5, minus what later objects cover), normalized by width (x) and height (y)
    to [0, 1], and refer to the image as displayed, i.e. after its EXIF orientation is applied.
    ``folder`` is the class of the main object, which is the one with the largest visible area.
    The main object's row comes first; rows are sorted by image_id (as Open Images CSVs are).
    Image ids are 16 hex characters, like Open Images ids.

The manifest (defects.json, sorted keys)
    ``seed``, ``params`` (the SynthParams), ``counts`` ({split: {"images": files on disk,
    "rows": CSV data rows}}), ``kinds`` ({kind: {"expect", "summary"}}) and ``defects``: one
    entry per injected defect with ``kind``, ``split``, ``image_id``, ``folder``, ``row`` (0-based
    data-row index in that split's CSV, for row-level kinds; else null), ``rows`` (every CSV row
    concerned, e.g. all rows of a truncated image), ``expect`` (quarantine | dedup | readable |
    report: what the pipeline should do), ``description``, and per-kind details listed below.

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

Determinism: every image has its own ``numpy.random.Generator`` (PCG64) seeded with
``[seed, 1, split_index, image_index]``, so images are independent and rendered in parallel;
defects use ``[seed, 3]``. JPEGs are written by Pillow with explicit quality and subsampling and
no metadata; CSVs and the manifest are written in a fixed order (with Pillow pinned in
uv.lock: Pillow 13 writes the same bytes for the same array in every process).
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.random import Generator
from PIL import Image, ImageChops, ImageDraw, ImageFile, ImageFilter
from tqdm import tqdm

from pipeline.core.config import SNACK_CLASSES, SynthParams
from pipeline.core.files import check_replaceable, replaced_dir
from pipeline.data.boxes import iou
from pipeline.data.contract import ANNOTATION_COLUMNS, SPLITS, annotations_path, image_path

Color = tuple[int, int, int, int]
Point = tuple[float, float]
Box = tuple[float, float, float, float]  # x_min, x_max, y_min, y_max (normalized)

SUPERSAMPLE = 2  # objects are drawn at this scale and downsampled (anti-aliasing)
JPEG_QUALITY = (60, 95)  # inclusive range of the per-image JPEG quality
MANIFEST_NAME = "defects.json"


# --------------------------------------------------------------------------------------------
# Drawing helpers. Object drawers paint on a transparent RGBA patch; its alpha is the mask.
# --------------------------------------------------------------------------------------------


def _pick(rng: Generator, options: Sequence[Any]) -> Any:
    """One element of a sequence (rng.choice would turn tuples into arrays)."""
    return options[int(rng.integers(len(options)))]


def _color(rng: Generator, rgb: Sequence[int], spread: float = 16.0) -> Color:
    """A jittered opaque colour: a random gain and a per-channel offset around ``rgb``."""
    values = np.asarray(rgb, dtype=float) * rng.uniform(0.88, 1.12)
    values += rng.uniform(-spread, spread, 3)
    r, g, b = (int(v) for v in np.clip(values, 0, 255))
    return (r, g, b, 255)


def _tone(color: Sequence[int], factor: float, alpha: int = 255) -> Color:
    """A lighter (factor > 1) or darker (factor < 1) version of a colour."""
    r, g, b = (int(min(255.0, c * factor)) for c in color[:3])
    return (r, g, b, alpha)


def _pts(xs: Iterable[float], ys: Iterable[float]) -> list[Point]:
    """Pair x and y coordinates into points."""
    return [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]


def _points_in_ellipse(
    rng: Generator, n: int, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    """``n`` points spread uniformly inside an ellipse, shape (n, 2)."""
    radius = np.sqrt(rng.uniform(0.0, 1.0, n))
    theta = rng.uniform(0.0, 2 * np.pi, n)
    return np.stack([cx + rx * radius * np.cos(theta), cy + ry * radius * np.sin(theta)], axis=1)


def _spline(points: Sequence[Point], samples: int = 10) -> list[Point]:
    """A Catmull-Rom curve through ``points`` (open, ends included)."""
    p = np.asarray(points, dtype=float)
    p = np.vstack([p[0], p, p[-1]])
    out: list[Point] = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        for t in np.linspace(0.0, 1.0, samples, endpoint=False):
            a, b, c = p2 - p0, 2 * p0 - 5 * p1 + 4 * p2 - p3, 3 * p1 - p0 - 3 * p2 + p3
            q = p1 + 0.5 * (a * t + b * t * t + c * t**3)
            out.append((float(q[0]), float(q[1])))
    out.append((float(p[-2][0]), float(p[-2][1])))
    return out


def _fit(points: Sequence[Point], margin_x: float, margin_y: float) -> list[Point]:
    """Stretch points so that their bounding box fills the unit square minus margins."""
    p = np.asarray(points, dtype=float)
    low, span = p.min(axis=0), np.maximum(np.ptp(p, axis=0), 1e-9)
    margin = np.array([margin_x, margin_y])
    q = (p - low) / span * (1 - 2 * margin) + margin
    return [(float(x), float(y)) for x, y in q]


class Pen:
    """ImageDraw in patch units: x and y are fractions of the patch width and height.

    Line widths and circle radii are fractions of the patch's shorter side.
    """

    def __init__(self, img: Image.Image, blend: bool = False) -> None:
        self.img = img
        self.w, self.h = img.size
        self.short = min(self.w, self.h)
        self.aspect = self.w / self.h
        # blend: paint translucent colours over an RGB image (else pixels are replaced)
        self.draw = ImageDraw.Draw(img, "RGBA" if blend else None)

    def rx(self, size: float) -> float:
        """``size`` shorter sides, in width units."""
        return size * self.short / self.w

    def ry(self, size: float) -> float:
        """``size`` shorter sides, in height units."""
        return size * self.short / self.h

    def _xy(self, points: Iterable[Point]) -> list[Point]:
        return [(x * self.w, y * self.h) for x, y in points]

    def _px(self, size: float) -> int:
        return max(1, round(size * self.short))

    def _box(self, cx: float, cy: float, rx: float, ry: float) -> list[float]:
        return [(cx - rx) * self.w, (cy - ry) * self.h, (cx + rx) * self.w, (cy + ry) * self.h]

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: Color | None,
                outline: Color | None = None, width: float = 0.0) -> None:  # fmt: skip
        """An ellipse by centre and radii (width and height units)."""
        line = self._px(width) if outline else 1
        self.draw.ellipse(self._box(cx, cy, rx, ry), fill=fill, outline=outline, width=line)

    def circle(self, cx: float, cy: float, r: float, fill: Color | None,
               outline: Color | None = None, width: float = 0.0) -> None:  # fmt: skip
        """A round circle: radius in shorter sides."""
        self.ellipse(cx, cy, self.rx(r), self.ry(r), fill, outline, width)

    def dots(self, centers: Iterable[Point], rx: float, ry: float, fill: Color) -> None:
        """Small ellipses at each centre."""
        for x, y in centers:
            self.ellipse(float(x), float(y), rx, ry, fill)

    def polygon(self, points: Iterable[Point], fill: Color) -> None:
        self.draw.polygon(self._xy(points), fill=fill)

    def line(self, points: Iterable[Point], fill: Color, width: float, curve: bool = False) -> None:
        """A polyline; ``curve`` rounds its joints."""
        joint = "curve" if curve else None
        self.draw.line(self._xy(points), fill=fill, width=self._px(width), joint=joint)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: Color,
             radius: float = 0.0) -> None:  # fmt: skip
        """A rectangle by corners; ``radius`` (shorter sides) rounds them."""
        box = [x0 * self.w, y0 * self.h, x1 * self.w, y1 * self.h]
        if radius:
            self.draw.rounded_rectangle(box, radius=radius * self.short, fill=fill)
        else:
            self.draw.rectangle(box, fill=fill)

    def pieslice(self, cx: float, cy: float, rx: float, ry: float, start: float, end: float,
                 fill: Color) -> None:  # fmt: skip
        """A pie slice of an ellipse; angles in degrees, clockwise from 3 o'clock."""
        self.draw.pieslice(self._box(cx, cy, rx, ry), start, end, fill=fill)

    def chord(self, cx: float, cy: float, rx: float, ry: float, start: float, end: float,
              fill: Color) -> None:  # fmt: skip
        self.draw.chord(self._box(cx, cy, rx, ry), start, end, fill=fill)

    def arc(self, cx: float, cy: float, rx: float, ry: float, start: float, end: float,
            fill: Color, width: float) -> None:  # fmt: skip
        self.draw.arc(self._box(cx, cy, rx, ry), start, end, fill=fill, width=self._px(width))

    def leaf(self, base: Point, tip: Point, width: float, fill: Color) -> None:
        """A pointed leaf from ``base`` to ``tip``; ``width`` in shorter sides."""
        (x0, y0), (x1, y1) = self._xy([base, tip])
        length = math.hypot(x1 - x0, y1 - y0) or 1.0
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        t = np.linspace(0.0, 1.0, 12)
        half = width * self.short / 2 * np.sin(np.pi * t) ** 0.8
        xs, ys = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
        left, right = _pts(xs - uy * half, ys + ux * half), _pts(xs + uy * half, ys - ux * half)
        self.draw.polygon(left + right[::-1], fill=fill)

    def texture(self, paint: Callable[[Pen], None]) -> None:
        """Paint on what is drawn so far: clipped to the current alpha, alpha unchanged."""
        layer = Image.new("RGBA", self.img.size, (0, 0, 0, 0))
        paint(Pen(layer))
        alpha = self.img.getchannel("A")
        mask = ImageChops.multiply(layer.getchannel("A"), alpha)
        self.img.paste(layer.convert("RGB"), (0, 0), mask)
        self.img.putalpha(alpha)


# --------------------------------------------------------------------------------------------
# One drawer per class, in patch units. Each fills most of its patch (any aspect in range).
# --------------------------------------------------------------------------------------------

_SPRINKLES: tuple[Color, ...] = (
    (240, 60, 60, 255), (60, 160, 240, 255), (250, 220, 60, 255), (80, 200, 90, 255),
    (250, 250, 250, 255), (180, 90, 220, 255),
)  # fmt: skip
_WHITE: Color = (250, 250, 250, 255)


def _apple(pen: Pen, rng: Generator) -> None:
    body = _color(rng, _pick(rng, [(196, 28, 36), (150, 22, 40), (128, 182, 52), (214, 160, 44)]))
    top = 0.14
    pen.ellipse(0.5, 0.6, 0.47, 0.39, body)
    for cx in (0.3, 0.7):  # the two shoulders
        pen.ellipse(cx, top + 0.275, 0.26, 0.275, body)

    def streaks(p: Pen) -> None:
        for _ in range(int(rng.integers(4, 9))):
            x, shade = rng.uniform(0.12, 0.88), _tone(body, rng.uniform(0.75, 1.25), alpha=90)
            p.line([(x, top), (x + rng.uniform(-0.08, 0.08), 1.0)], shade, 0.03)
        p.ellipse(0.32, top + 0.3, 0.09, 0.13, _tone(body, 1.5, 150))  # highlight

    pen.texture(streaks)
    pen.ellipse(0.5, top + 0.05, 0.08, 0.035, _tone(body, 0.6))  # stem cavity
    stem = _color(rng, (95, 60, 30), 10)
    pen.line([(0.5, top + 0.06), (0.5 + rng.uniform(-0.08, 0.08), 0.01)], stem, 0.045)
    if rng.random() < 0.7:
        tip = (rng.uniform(0.72, 0.85), rng.uniform(0.0, 0.1))
        pen.leaf((0.52, 0.07), tip, 0.14, _color(rng, (70, 150, 50)))


def _banana(pen: Pen, rng: Generator) -> None:
    col = _color(rng, _pick(rng, [(236, 204, 58), (226, 214, 80), (196, 204, 70), (242, 188, 48)]))
    t = np.linspace(0.0, 1.0, 40)
    bottom = 1.0 - rng.uniform(0.35, 0.6) * (2 * t - 1) ** 2
    top = bottom - rng.uniform(0.2, 0.32) * np.sin(np.pi * t) ** 0.6 - 0.02
    ridge = 0.6 * top + 0.4 * bottom
    n = len(t)  # the outline (top edge, then bottom edge back) and the ridge, fitted together
    points = _fit(_pts(np.r_[t, t[::-1], t], np.r_[top, bottom[::-1], ridge]), 0.02, 0.02)
    outline, ridge_line = points[: 2 * n], points[2 * n + 3 : 3 * n - 3]
    pen.polygon(outline, col)
    pen.line(ridge_line, _tone(col, 0.8), 0.025)
    pen.ellipse(*outline[0], 0.025, 0.03, (70, 50, 25, 255))  # the dark tip
    (x, y), stem = outline[n - 1], _color(rng, (120, 120, 50))
    pen.line([outline[n - 4], (min(x + 0.01, 1.0), y)], stem, 0.05)
    if rng.random() < 0.45:  # ripe: brown spots
        spots = _points_in_ellipse(rng, int(rng.integers(6, 20)), 0.5, 0.7, 0.45, 0.3)
        pen.texture(lambda p: p.dots(spots, 0.008, 0.02, (90, 60, 25, 220)))


def _cake(pen: Pen, rng: Generator) -> None:
    sponge = _color(
        rng, _pick(rng, [(226, 186, 122), (112, 62, 38), (166, 42, 52), (240, 212, 130)])
    )
    cream = _color(
        rng, _pick(rng, [(246, 240, 228), (244, 178, 198), (86, 48, 30), (250, 232, 170)]), 10
    )
    top = rng.uniform(0.2, 0.3)
    if rng.random() < 0.5:  # a slice: the frosted top face in perspective
        pen.polygon([(0.02, top), (0.98, top), (rng.uniform(0.55, 0.85), 0.06)], _tone(cream, 1.05))
    else:  # a whole cake: elliptical top
        pen.ellipse(0.5, top, 0.48, top - 0.06, _tone(cream, 1.05))
    pen.rect(0.02, top, 0.98, 0.97, sponge)
    for y in np.linspace(top, 0.97, int(rng.integers(3, 6)))[1:-1]:  # cream between layers
        pen.rect(0.02, y - 0.025, 0.98, y + 0.025, cream)
    pen.rect(0.02, top - 0.02, 0.98, top + 0.05, cream)
    for x in np.linspace(0.07, 0.93, int(rng.integers(5, 10))):  # drips
        pen.ellipse(x, top + 0.06, 0.035, rng.uniform(0.03, 0.09), cream)
    if rng.random() < 0.6:
        pen.ellipse(rng.uniform(0.3, 0.7), 0.08, 0.07, 0.06, _color(rng, (200, 20, 40), 10))
    elif rng.random() < 0.5:
        for x, y in _points_in_ellipse(rng, 25, 0.5, top - 0.02, 0.4, 0.04):
            pen.ellipse(x, y, 0.01, 0.01, _pick(rng, _SPRINKLES))


def _candy(pen: Pen, rng: Generator) -> None:
    hues = [
        (220, 30, 60),
        (40, 90, 220),
        (30, 170, 80),
        (150, 50, 190),
        (250, 140, 20),
        (240, 80, 170),
    ]
    col = _color(rng, _pick(rng, hues), 25)
    stripe = _pick(rng, [_WHITE, (250, 230, 70, 255), _tone(col, 0.6)])
    for side in (-1, 1):  # the twisted ends of the wrapper
        neck, end = 0.5 + side * 0.24, 0.5 + side * 0.49
        back = end - side * 0.05
        frill = [(end, 0.06), (back, 0.28), (end, 0.5), (back, 0.72), (end, 0.94)]
        pen.polygon([(neck, 0.44), *frill, (neck, 0.56)], _tone(col, 1.12))
        for y in (0.28, 0.5, 0.72):
            pen.line([(neck, 0.5), (back, y)], _tone(col, 0.75), 0.025)
    cx, cy, rx, ry = 0.5, 0.5, 0.27, 0.34
    pen.ellipse(cx, cy, rx, ry, col)
    for x in np.linspace(cx - 0.8 * rx, cx + 0.8 * rx, int(rng.integers(3, 6))):
        half = 0.92 * ry * math.sqrt(1 - ((x - cx) / rx) ** 2)
        pen.line([(x, cy - half), (x, cy + half)], stripe, 0.07)
    pen.ellipse(cx - 0.35 * rx, cy - 0.45 * ry, 0.2 * rx, 0.15 * ry, _tone(col, 1.6))


def _carrot(pen: Pen, rng: Generator) -> None:
    body = _color(rng, _pick(rng, [(236, 118, 28), (226, 100, 20), (245, 140, 40)]), 12)
    greens = _color(rng, (60, 140, 50), 15)
    shoulder = rng.uniform(0.25, 0.33)
    for _ in range(int(rng.integers(3, 7))):  # the leaves, behind the root
        tip = (0.5 + rng.uniform(-0.45, 0.45), rng.uniform(0.0, 0.06))
        pen.leaf((0.5, shoulder), tip, 0.22, _tone(greens, rng.uniform(0.8, 1.2)))
    t = np.linspace(0.0, 1.0, 24)
    half = 0.45 * (1 - t) ** 0.8 + 0.03
    bend = rng.uniform(-0.06, 0.06) * t**2
    ys = shoulder + t * (0.99 - shoulder)
    pen.polygon(_pts(0.5 - half + bend, ys) + _pts(0.5 + half + bend, ys)[::-1], body)
    pen.ellipse(0.5, shoulder, 0.48, 0.04, body)  # the rounded top

    def ridges(p: Pen) -> None:
        for _ in range(int(rng.integers(5, 11))):
            x, y = 0.5 + rng.uniform(-0.4, 0.1), rng.uniform(shoulder + 0.04, 0.9)
            p.line([(x, y), (x + rng.uniform(0.1, 0.3), y + 0.01)], _tone(body, 0.7, 200), 0.035)

    pen.texture(ridges)


def _cookie(pen: Pen, rng: Generator) -> None:
    dark = rng.random() < 0.2  # a chocolate cookie with white chips
    base = _color(
        rng,
        (120, 72, 40) if dark else _pick(rng, [(206, 160, 98), (190, 140, 80), (222, 184, 120)]),
        12,
    )
    chip = (240, 232, 214, 255) if dark else _color(rng, (65, 38, 22), 8)
    angles = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
    wobble = np.convolve(rng.standard_normal(52), np.ones(5) / 5, mode="valid")[:48]
    radius = 0.47 * (1 + 0.05 * wobble)
    pen.polygon(_pts(0.5 + radius * np.cos(angles), 0.5 + radius * np.sin(angles)), base)

    def texture(p: Pen) -> None:
        p.ellipse(0.5, 0.5, 0.48, 0.48, None, outline=_tone(base, 0.8, 160), width=0.06)
        crumbs = _points_in_ellipse(rng, 30, 0.5, 0.5, 0.42, 0.42)
        p.dots(crumbs, 0.012, 0.012, _tone(base, 1.15, 170))
        for x, y in _points_in_ellipse(rng, int(rng.integers(5, 14)), 0.5, 0.5, 0.36, 0.36):
            r = rng.uniform(0.035, 0.07)
            a = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, 5, endpoint=False)
            p.polygon(_pts(x + r * np.cos(a), y + r * np.sin(a)), chip)

    pen.texture(texture)


def _doughnut(pen: Pen, rng: Generator) -> None:
    dough = _color(rng, (206, 146, 74), 14)
    glaze = _pick(rng, [(242, 150, 186), (96, 56, 36), (246, 238, 226), None, (245, 205, 90)])
    pen.ellipse(0.5, 0.5, 0.48, 0.48, dough)
    if glaze is not None:
        a = np.linspace(0.0, 2 * np.pi, 64, endpoint=False)
        r = 0.41 + 0.035 * np.sin(a * int(rng.integers(5, 9)) + rng.uniform(0, 6))
        pen.polygon(_pts(0.5 + r * np.cos(a), 0.5 + r * np.sin(a)), _color(rng, glaze, 10))
        for _ in range(int(rng.integers(25, 50)) if rng.random() < 0.6 else 0):  # sprinkles
            r, a, tilt = rng.uniform(0.23, 0.37), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
            x, y = 0.5 + r * math.cos(a), 0.5 + r * math.sin(a)
            dx, dy = 0.03 * math.cos(tilt), 0.03 * math.sin(tilt)
            pen.line([(x - dx, y - dy), (x + dx, y + dy)], _pick(rng, _SPRINKLES), 0.015)
    pen.ellipse(0.5, 0.5, 0.2, 0.2, _tone(dough, 0.8))
    pen.ellipse(0.5, 0.5, 0.15, 0.15, (0, 0, 0, 0))  # the hole: transparent, not in the mask


def _grape(pen: Pen, rng: Generator) -> None:
    col = _pick(rng, [(96, 40, 112), (128, 30, 70), (160, 196, 84), (70, 30, 80)])
    rows = int(rng.integers(4, 6))  # an inverted triangle: the top row is the widest
    r = 0.5 / (0.9 * rows + 0.1) * pen.w / pen.short  # the top row spans the width
    top = 0.12
    dy = (0.99 - top - 2 * pen.ry(r)) / (rows - 1)
    stem = _color(rng, (100, 80, 40))
    pen.line([(0.5, top + pen.ry(r)), (0.5 + rng.uniform(-0.1, 0.1), 0.0)], stem, 0.05)
    for k in range(rows):
        count = rows - k
        for j in range(count):
            if count > 1 and rng.random() < 0.1:
                continue
            x = 0.5 + pen.rx(r) * ((j - (count - 1) / 2) * 1.8 + rng.uniform(-0.1, 0.1))
            y = top + pen.ry(r) * (1 + rng.uniform(-0.1, 0.1)) + k * dy
            grape = _color(rng, col, 12)
            pen.circle(x, y, r, grape, outline=_tone(grape, 0.6), width=0.1 * r)
            pen.circle(x - pen.rx(0.35 * r), y - pen.ry(0.4 * r), 0.18 * r, _tone(grape, 1.7))


def _hot_dog(pen: Pen, rng: Generator) -> None:
    bun = _color(rng, (214, 160, 92), 14)
    sausage = _color(rng, _pick(rng, [(170, 72, 46), (150, 60, 40), (190, 100, 70)]), 12)
    pen.rect(0.06, 0.3, 0.94, 0.8, _tone(bun, 0.88), radius=0.24)  # back half of the bun
    pen.rect(0.0, 0.2, 1.0, 0.62, sausage, radius=0.2)
    pen.line([(0.06, 0.31), (0.94, 0.31)], _tone(sausage, 1.35), 0.04)
    pen.rect(0.05, 0.48, 0.95, 0.99, bun, radius=0.24)  # front half
    pen.line([(0.1, 0.92), (0.9, 0.92)], _tone(bun, 0.8), 0.03)
    if rng.random() < 0.75:  # mustard or ketchup
        sauce = _pick(rng, [(232, 190, 30, 255), (200, 30, 30, 255)])
        xs = np.linspace(0.12, 0.88, int(rng.integers(7, 13)))
        pen.line([(x, 0.3 if i % 2 else 0.46) for i, x in enumerate(xs)], sauce, 0.05, curve=True)


def _ice_cream(pen: Pen, rng: Generator) -> None:
    cone = _color(rng, (214, 166, 98), 12)
    scoops = int(rng.integers(1, 4))
    cone_top = 0.99 - rng.uniform(0.4, 0.55)
    r = min(0.47 * pen.w, (cone_top - 0.02) * pen.h / (1 + 0.85 * (scoops - 1))) / pen.short
    pen.polygon([(0.05, cone_top), (0.95, cone_top), (0.5, 0.99)], cone)
    run = (1 - cone_top) / pen.aspect  # 45-degree lines

    def waffle_pattern(p: Pen) -> None:
        for x in 0.5 + 0.16 * np.arange(-8, 9):
            for sign in (-1, 1):
                p.line([(x, cone_top), (x + sign * run, 1.0)], _tone(cone, 0.7), 0.02)

    pen.texture(waffle_pattern)
    flavours = [(240, 170, 190), (245, 240, 225), (110, 65, 40), (170, 230, 190), (250, 220, 110)]
    y = cone_top - pen.ry(0.55 * r)
    for _ in range(scoops):
        scoop = _color(rng, _pick(rng, flavours), 10)
        pen.circle(0.5, y, r, scoop)
        for x in np.linspace(0.5 - pen.rx(0.85 * r), 0.5 + pen.rx(0.85 * r), 6):  # the rim
            pen.circle(x, y + pen.ry(0.75 * r), 0.2 * r, scoop)
        pen.ellipse(
            0.5 - pen.rx(0.4 * r),
            y - pen.ry(0.4 * r),
            pen.rx(0.2 * r),
            pen.ry(0.14 * r),
            _tone(scoop, 1.2),
        )
        y -= pen.ry(0.85 * r)
    if rng.random() < 0.3:  # a cherry on top
        pen.circle(0.5, max(y - pen.ry(0.05 * r), pen.ry(0.15 * r)), 0.18 * r, (200, 20, 40, 255))


def _juice(pen: Pen, rng: Generator) -> None:
    juices = [(245, 150, 30), (190, 30, 50), (110, 30, 80), (240, 215, 80), (150, 200, 70)]
    liquid = _color(rng, _pick(rng, juices), 14)
    straw = _pick(rng, [(240, 60, 60, 255), (60, 160, 240, 255), _WHITE, (90, 200, 90, 255)])
    tip_x = rng.uniform(0.62, 0.85)
    pen.line([(0.55, 0.6), (tip_x, 0.01)], straw, 0.07)
    if rng.random() < 0.65:
        _glass(pen, rng, liquid, straw, tip_x)
    else:
        _carton(pen, rng, liquid)


def _glass(pen: Pen, rng: Generator, liquid: Color, straw: Color, tip_x: float) -> None:
    """A glass of juice, with the straw (from (0.55, 0.6) to (tip_x, 0.01)) seen through it."""
    rim, level = rng.uniform(0.18, 0.26), rng.uniform(0.08, 0.25)
    level += rim
    pen.polygon(
        [(0.08, rim), (0.92, rim), (0.8, 0.99), (0.2, 0.99)], _color(rng, (212, 226, 232), 8)
    )

    def inset(y: float) -> float:  # left edge of the juice at height y
        return 0.12 + 0.12 * (y - rim) / (0.99 - rim)

    def straw_x(y: float) -> float:
        return 0.55 + (tip_x - 0.55) * (0.6 - y) / 0.59

    pen.polygon(
        [
            (inset(level), level),
            (1 - inset(level), level),
            (1 - inset(0.97), 0.97),
            (inset(0.97), 0.97),
        ],
        liquid,
    )
    pen.line([(straw_x(level), level), (straw_x(0.9), 0.9)], _tone(straw, 0.7), 0.06)
    pen.line([(0.08, rim), (0.92, rim)], _WHITE, 0.035)
    pen.line([(0.22, rim + 0.08), (0.28, 0.9)], _WHITE, 0.03)  # reflection


def _carton(pen: Pen, rng: Generator, liquid: Color) -> None:
    """A juice carton with a gable top and a fruit label."""
    box = _color(rng, _pick(rng, [(245, 245, 240), (250, 220, 80), (120, 180, 220)]), 10)
    pen.rect(0.25, 0.04, 0.75, 0.12, _tone(box, 0.9))
    pen.polygon([(0.08, 0.28), (0.92, 0.28), (0.75, 0.1), (0.25, 0.1)], _tone(box, 0.85))
    pen.rect(0.08, 0.28, 0.92, 0.99, box)
    pen.rect(0.08, 0.5, 0.92, 0.82, liquid)
    pen.ellipse(0.5, 0.66, 0.16, 0.1, _tone(liquid, 1.4))


def _muffin(pen: Pen, rng: Generator) -> None:
    cups = [(240, 240, 235), (200, 40, 40), (60, 100, 200), (140, 90, 50), (240, 200, 60)]
    cup = _color(rng, _pick(rng, cups), 10)
    pen.polygon([(0.14, 0.52), (0.86, 0.52), (0.76, 0.99), (0.24, 0.99)], cup)

    def pleats(p: Pen) -> None:
        for u in np.linspace(0.0, 1.0, 9):
            p.line([(0.14 + 0.72 * u, 0.52), (0.24 + 0.52 * u, 1.0)], _tone(cup, 0.75), 0.02)

    pen.texture(pleats)
    dome = _color(rng, _pick(rng, [(200, 140, 64), (110, 64, 36), (220, 170, 90)]), 12)
    pen.ellipse(0.5, 0.355, 0.48, 0.325, dome)
    topping = _pick(rng, [(60, 50, 110, 255), (55, 32, 18, 255), (250, 245, 235, 255)])

    def crumb(p: Pen) -> None:
        for x, y in _points_in_ellipse(rng, 40, 0.5, 0.35, 0.44, 0.29):
            p.ellipse(x, y, 0.03, 0.025, _tone(dome, rng.uniform(0.8, 1.2), 140))
        berries = _points_in_ellipse(rng, int(rng.integers(5, 12)), 0.5, 0.33, 0.38, 0.24)
        p.dots(berries, 0.035, 0.03, topping)

    pen.texture(crumb)


def _orange(pen: Pen, rng: Generator) -> None:
    peel = _color(rng, _pick(rng, [(242, 140, 24), (250, 160, 40), (236, 120, 20)]), 12)
    pen.ellipse(0.5, 0.5, 0.48, 0.48, peel)
    if rng.random() < 0.75:  # whole, with a dimpled peel
        dimples = _points_in_ellipse(rng, min(600, pen.w * pen.h // 250), 0.5, 0.5, 0.47, 0.47)

        def texture(p: Pen) -> None:
            for x, y in dimples:
                p.ellipse(x, y, 0.008, 0.008, _tone(peel, rng.uniform(0.82, 1.12), 170))
            p.ellipse(0.33, 0.3, 0.12, 0.08, _tone(peel, 1.3, 120))

        pen.texture(texture)
        pen.ellipse(0.5, rng.uniform(0.1, 0.5), 0.03, 0.025, (110, 110, 40, 255))  # navel
    else:  # cut in half: pith and segments
        pith, flesh = (250, 232, 190, 255), _color(rng, (248, 166, 50), 10)
        pen.ellipse(0.5, 0.5, 0.44, 0.44, pith)
        segments = int(rng.integers(9, 12))
        for start in np.linspace(0, 360, segments, endpoint=False) + 3:
            pen.pieslice(0.5, 0.5, 0.4, 0.4, start, start + 360 / segments - 6, flesh)
        pen.ellipse(0.5, 0.5, 0.04, 0.04, pith)


def _pineapple(pen: Pen, rng: Generator) -> None:
    body = _color(rng, _pick(rng, [(206, 150, 52), (186, 128, 42), (214, 172, 70)]), 12)
    crown = _color(rng, (64, 140, 56), 14)
    top = rng.uniform(0.36, 0.45)
    for _ in range(int(rng.integers(7, 12))):  # the crown, behind the fruit
        tip = (rng.uniform(0.05, 0.95), rng.uniform(0.0, 0.4 * top))
        pen.leaf((0.5, top + 0.04), tip, 0.16, _tone(crown, rng.uniform(0.8, 1.2)))
    pen.ellipse(0.5, (top + 0.99) / 2, 0.44, (0.99 - top) / 2, body)
    run = (1 - top) / pen.aspect  # 45-degree lines
    step = 1 / rng.uniform(4.0, 6.0)

    def scales(p: Pen) -> None:
        for x in 0.5 + step * np.arange(-12, 13):
            p.line([(x, top), (x + run, 1.0)], _tone(body, 0.6), 0.025)
            p.line([(x, top), (x - run, 1.0)], _tone(body, 0.6), 0.025)
        eyes = _points_in_ellipse(rng, 30, 0.5, (top + 1) / 2, 0.44, (1 - top) / 2)
        p.dots(eyes, 0.02, 0.015, (90, 90, 30, 200))

    pen.texture(scales)


def _popcorn(pen: Pen, rng: Generator) -> None:
    stripe = _color(rng, _pick(rng, [(220, 30, 40), (40, 70, 200), (230, 180, 30)]), 10)
    paper = _color(rng, (248, 246, 240), 6)
    top, r = rng.uniform(0.38, 0.5), 0.09 * pen.aspect  # r: puff radius, shorter sides
    for _ in range(int(rng.integers(16, 28))):  # the heap, behind the box
        y = rng.uniform(0.02 + pen.ry(r), top + 0.05)
        _puff(pen, rng, rng.uniform(0.14, 0.86), y, r * rng.uniform(0.8, 1.2))
    pen.polygon([(0.06, top), (0.94, top), (0.8, 0.99), (0.2, 0.99)], paper)
    n = int(rng.integers(5, 8))

    def stripes(p: Pen) -> None:
        for u0, u1 in zip(np.arange(0, n, 2) / n, np.arange(1, n + 1, 2) / n, strict=False):
            corners = [
                (0.06 + 0.88 * u0, top),
                (0.06 + 0.88 * u1, top),
                (0.2 + 0.6 * u1, 1.0),
                (0.2 + 0.6 * u0, 1.0),
            ]
            p.polygon(corners, stripe)

    pen.texture(stripes)
    for _ in range(int(rng.integers(3, 7))):  # spilling over the rim
        _puff(pen, rng, rng.uniform(0.14, 0.86), top + rng.uniform(-0.02, 0.03), r)


def _puff(pen: Pen, rng: Generator, x: float, y: float, r: float) -> None:
    """One popped kernel: a few overlapping blobs around a brown hull."""
    col = _color(rng, _pick(rng, [(250, 246, 226), (246, 226, 160), (240, 214, 130)]), 8)
    for dx, dy in rng.uniform(-0.5, 0.5, (4, 2)) * r:
        pen.circle(x + pen.rx(dx), y + pen.ry(dy), 0.6 * r, col)
    pen.circle(x, y, 0.15 * r, (200, 150, 60, 255))


# The pretzel's rope, as knots of a spline: left end on the belly, up through the twist,
# round the right lobe, along the belly, round the left lobe, through the twist, right end.
_PRETZEL_KNOTS: tuple[Point, ...] = (
    (0.25, 0.8), (0.35, 0.45), (0.5, 0.3), (0.65, 0.18), (0.82, 0.12), (0.96, 0.3), (0.97, 0.58),
    (0.85, 0.86), (0.5, 0.97), (0.15, 0.86), (0.03, 0.58), (0.04, 0.3), (0.18, 0.12), (0.35, 0.18),
    (0.5, 0.3), (0.65, 0.45), (0.75, 0.8),
)  # fmt: skip


def _pretzel(pen: Pen, rng: Generator) -> None:
    col = _color(rng, _pick(rng, [(150, 85, 35), (125, 68, 28), (170, 100, 45)]), 10)
    knots = [
        (x + rng.uniform(-0.02, 0.02), y + rng.uniform(-0.02, 0.02)) for x, y in _PRETZEL_KNOTS
    ]
    thick = rng.uniform(0.1, 0.14)  # of the shorter side
    path = _fit(_spline(knots), pen.rx(thick / 2 + 0.01), pen.ry(thick / 2 + 0.01))
    pen.line(path, col, thick, curve=True)
    for x, y in (path[0], path[-1]):  # round ends
        pen.circle(x, y, thick / 2, col)
    shine = [(x - pen.rx(0.15 * thick), y - pen.ry(0.2 * thick)) for x, y in path]
    pen.line(shine, _tone(col, 1.3), 0.2 * thick, curve=True)
    for i in rng.integers(0, len(path), int(rng.integers(8, 25))):  # salt
        pen.circle(*path[int(i)], 0.1 * thick, (245, 245, 240, 255))


def _salad(pen: Pen, rng: Generator) -> None:
    bowl = _color(
        rng, _pick(rng, [(246, 246, 242), (172, 118, 70), (70, 110, 170), (200, 100, 60)]), 10
    )
    rim = rng.uniform(0.45, 0.55)
    greens = [(80, 150, 50), (120, 180, 60), (60, 120, 40), (150, 200, 90), (110, 60, 90)]
    for _ in range(int(rng.integers(14, 26))):  # leaves heaped above the rim
        x, y = rng.uniform(0.1, 0.9), rng.uniform(0.08, rim + 0.05)
        tip = (x + _pick(rng, (-1, 1)) * rng.uniform(0.08, 0.18), y + rng.uniform(-0.15, 0.15))
        pen.leaf((x, y), tip, rng.uniform(0.14, 0.28), _color(rng, _pick(rng, greens), 15))
    for _ in range(int(rng.integers(2, 6))):
        x, y, r = rng.uniform(0.15, 0.85), rng.uniform(0.1, rim), rng.uniform(0.06, 0.1)
        if rng.random() < 0.65:  # a cherry tomato
            tomato = _color(rng, (210, 40, 30), 10)
            pen.circle(x, y, r, tomato)
            pen.circle(x - pen.rx(0.3 * r), y - pen.ry(0.3 * r), 0.22 * r, _tone(tomato, 1.6))
        else:  # a cucumber slice
            pen.circle(x, y, r, (200, 230, 160, 255), outline=(50, 110, 40, 255), width=0.2 * r)
    pen.chord(0.5, rim, 0.49, 0.99 - rim, 0, 180, bowl)
    pen.arc(0.5, rim, 0.49, 0.04, 0, 180, _tone(bowl, 0.8), 0.025)


def _strawberry(pen: Pen, rng: Generator) -> None:
    col = _color(rng, _pick(rng, [(212, 28, 40), (228, 50, 56), (190, 20, 36)]), 14)
    shoulder = 0.22

    def half_width(u: np.ndarray | float) -> Any:  # u: 0 at the shoulder, 1 at the tip
        return 0.47 * np.sin(np.pi * (0.5 + 0.5 * u)) ** 0.7

    t = np.linspace(0.0, 1.0, 30)
    half, ys = half_width(t) + 0.04 * (1 - t), shoulder + t * (0.97 - shoulder)
    pen.polygon(_pts(0.5 - half, ys) + _pts(0.5 + half, ys)[::-1], col)
    pen.ellipse(0.5, shoulder, 0.48, 0.08, col)  # round shoulders
    pen.ellipse(0.5, 0.965, 0.04, 0.025, col)  # round tip

    def seeds(p: Pen) -> None:
        for y in np.linspace(shoulder + 0.06, 0.9, 8):
            width = half_width((y - shoulder) / (0.97 - shoulder))
            for x in np.linspace(0.5 - 0.8 * width, 0.5 + 0.8 * width, int(6 * width) + 1):
                p.ellipse(x + rng.uniform(-0.02, 0.02), y, 0.014, 0.02, (246, 220, 90, 255))
        p.ellipse(0.32, 0.35, 0.08, 0.1, _tone(col, 1.5, 110))  # highlight

    pen.texture(seeds)
    green, base = _color(rng, (60, 140, 50), 14), (0.5, shoulder - 0.03)
    for _ in range(int(rng.integers(5, 8))):  # the calyx
        angle, length = rng.uniform(-math.pi - 0.35, 0.35), rng.uniform(0.2, 0.3)
        tip = (0.5 + length * math.cos(angle), base[1] + length * pen.aspect * math.sin(angle))
        pen.leaf(base, tip, 0.1, _tone(green, rng.uniform(0.85, 1.15)))
    pen.line([base, (0.5 + rng.uniform(-0.05, 0.05), 0.01)], green, 0.04)


def _waffle(pen: Pen, rng: Generator) -> None:
    col = _color(rng, _pick(rng, [(218, 164, 74), (200, 140, 58), (230, 184, 96)]), 12)
    if rng.random() < 0.35:
        pen.ellipse(0.5, 0.5, 0.48, 0.48, col)
    else:
        pen.rect(0.02, 0.02, 0.98, 0.98, col, radius=0.08)
    n, syrup = int(rng.integers(4, 7)), rng.random() < 0.4
    cell = 0.96 / n

    def grid(p: Pen) -> None:
        for x in 0.02 + cell * np.arange(n):
            for y in 0.02 + cell * np.arange(n):
                p.rect(
                    x + 0.2 * cell, y + 0.2 * cell, x + 0.8 * cell, y + 0.8 * cell, _tone(col, 0.72)
                )
        if syrup:
            p.ellipse(0.5, 0.5, rng.uniform(0.15, 0.3), rng.uniform(0.15, 0.3), (120, 60, 20, 200))

    pen.texture(grid)
    if rng.random() < 0.4:  # a pat of butter
        pen.rect(0.4, 0.4, 0.6, 0.6, (250, 236, 160, 255), radius=0.02)


def _watermelon(pen: Pen, rng: Generator) -> None:
    rind = _color(rng, (48, 128, 52), 12)
    flesh = _color(rng, _pick(rng, [(232, 48, 64), (240, 80, 90), (220, 40, 50)]), 12)
    layers = ((1.0, rind), (0.92, (206, 232, 170, 255)), (0.88, flesh))
    if pen.aspect >= 1.4:  # a half-moon slice: flat cut on top, rind along the bottom arc
        for scale, fill in layers:
            pen.pieslice(0.5, 0.01, 0.49 * scale, 0.98 * scale, 0, 180, fill)
        seeds = _points_in_ellipse(rng, 60, 0.5, 0.01, 0.34, 0.69)
        seeds = seeds[seeds[:, 1] > 0.11]
    else:  # a wedge: apex on top, rind along the bottom arc (radius 0.98 heights)
        half = math.asin(min(0.95, 0.5 * pen.aspect))
        for scale, fill in layers:
            r = 0.98 * scale
            pen.pieslice(
                0.5, 0.01, r / pen.aspect, r, 90 - math.degrees(half), 90 + math.degrees(half), fill
            )
        radius = rng.uniform(0.3, 0.78, 40) * 0.98
        theta = math.pi / 2 + rng.uniform(-0.75, 0.75, 40) * half
        seeds = np.stack(
            [0.5 + radius * np.cos(theta) / pen.aspect, 0.01 + radius * np.sin(theta)], axis=1
        )
    pen.dots(seeds[: int(rng.integers(5, 13))], 0.015, 0.03, (30, 20, 20, 255))


@dataclass(frozen=True)
class ClassSpec:
    """How to draw one class: the drawer, its natural width/height range, allowed poses."""

    draw: Callable[[Pen, Generator], None]
    aspect: tuple[float, float]
    turnable: bool = False  # may also lie on its side (turned by 90 degrees)
    tilt: float = 15.0  # maximal random rotation, degrees


CLASS_SPECS: dict[str, ClassSpec] = {
    "apple": ClassSpec(_apple, (0.85, 1.1)),
    "banana": ClassSpec(_banana, (2.0, 3.0), turnable=True, tilt=25.0),
    "cake": ClassSpec(_cake, (0.9, 1.6)),
    "candy": ClassSpec(_candy, (1.8, 2.8), turnable=True, tilt=30.0),
    "carrot": ClassSpec(_carrot, (0.3, 0.45), turnable=True, tilt=25.0),
    "cookie": ClassSpec(_cookie, (0.9, 1.12)),
    "doughnut": ClassSpec(_doughnut, (0.9, 1.2)),
    "grape": ClassSpec(_grape, (0.6, 0.9)),
    "hot dog": ClassSpec(_hot_dog, (2.0, 3.0), turnable=True, tilt=20.0),
    "ice cream": ClassSpec(_ice_cream, (0.45, 0.7)),
    "juice": ClassSpec(_juice, (0.45, 0.7), tilt=8.0),
    "muffin": ClassSpec(_muffin, (0.85, 1.2)),
    "orange": ClassSpec(_orange, (0.9, 1.1)),
    "pineapple": ClassSpec(_pineapple, (0.45, 0.65)),
    "popcorn": ClassSpec(_popcorn, (0.6, 0.9), tilt=8.0),
    "pretzel": ClassSpec(_pretzel, (1.05, 1.4), tilt=20.0),
    "salad": ClassSpec(_salad, (1.2, 1.7), tilt=8.0),
    "strawberry": ClassSpec(_strawberry, (0.72, 0.95), tilt=20.0),
    "waffle": ClassSpec(_waffle, (0.9, 1.3), tilt=20.0),
    "watermelon": ClassSpec(_watermelon, (0.85, 2.2), tilt=15.0),
}


# --------------------------------------------------------------------------------------------
# Sprites: one drawn, posed, anti-aliased object with its alpha mask.
# --------------------------------------------------------------------------------------------


@dataclass
class Sprite:
    """A posed object: premultiplied RGB and alpha in [0, 1], both (height, width[, 3])."""

    class_name: str
    rgb: np.ndarray
    alpha: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.alpha.shape[1], self.alpha.shape[0]


def _pose_dims(spec: ClassSpec, rng: Generator, area: float) -> tuple[float, float, bool, float]:
    """Drawing width/height (natural orientation), whether turned, and the tilt angle."""
    aspect = rng.uniform(*spec.aspect) * rng.uniform(0.92, 1.08)
    width = math.sqrt(area * aspect)
    turned = spec.turnable and rng.random() < 0.4
    angle = rng.uniform(-spec.tilt, spec.tilt)
    return width, area / width, turned, angle


def make_sprite(
    rng: Generator, class_name: str, area: float, max_size: tuple[int, int], light: float
) -> Sprite:
    """Draw ``class_name`` covering about ``area`` pixels, posed, shaded, fitting ``max_size``."""
    spec = CLASS_SPECS[class_name]
    w, h, turned, angle = _pose_dims(spec, rng, area)
    pw, ph = (h, w) if turned else (w, h)
    cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    box_w, box_h = pw * cos + ph * sin, pw * sin + ph * cos
    shrink = min(1.0, 0.98 * max_size[0] / box_w, 0.98 * max_size[1] / box_h)
    size = (max(16, round(w * shrink * SUPERSAMPLE)), max(16, round(h * shrink * SUPERSAMPLE)))
    patch = Image.new("RGBA", size, (0, 0, 0, 0))
    spec.draw(Pen(patch), rng)
    if rng.random() < 0.5:
        patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if turned:
        patch = patch.transpose(_pick(rng, [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270]))
    patch = patch.convert("RGBa").reduce(SUPERSAMPLE)  # box filter on premultiplied colour
    patch = patch.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    array = np.asarray(patch, dtype=np.float32) / 255.0
    rgb, alpha = array[..., :3], array[..., 3].clip(0.0, 1.0)
    rgb = rgb * _shading(alpha.shape, light)[..., None] * rng.uniform(0.9, 1.1)
    grain = 1.0 + rng.standard_normal(alpha.shape, dtype=np.float32) * rng.uniform(0.0, 0.06)
    rgb = rgb * grain[..., None]
    return Sprite(class_name, np.minimum(rgb, alpha[..., None]), alpha)


def _shading(shape: tuple[int, int], light: float) -> np.ndarray:
    """Soft 3-D look: lit from direction ``light`` (radians), darker towards the rim."""
    h, w = shape
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    directional = 0.14 * (x * math.cos(light) + y * math.sin(light))
    rim = 0.16 * np.minimum(x * x + y * y, 1.0)
    return 1.0 + directional - rim


# --------------------------------------------------------------------------------------------
# Backgrounds: photo-like surfaces with unannotated, non-snack distractors.
# --------------------------------------------------------------------------------------------

_SURFACES: tuple[tuple[int, int, int], ...] = (
    (222, 206, 178), (190, 150, 105), (140, 95, 60), (235, 235, 230), (200, 200, 205),
    (120, 125, 130), (90, 110, 140), (170, 190, 170), (60, 55, 50), (230, 220, 200),
    (180, 60, 50), (60, 90, 60), (245, 240, 225), (40, 60, 90), (210, 180, 140),
)  # fmt: skip


def _lowfreq(rng: Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1], with ``cells`` blobs across the longer side."""
    gw = max(2, round(cells * w / max(w, h))) + 1
    gh = max(2, round(cells * h / max(w, h))) + 1
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC))


def _surface(rng: Generator, w: int, h: int, pixel: float = 1.0) -> np.ndarray:
    """A table/cloth/wall-like surface, float32 (h, w, 3) in [0, 1].

    ``pixel`` is the size of one surface pixel in image pixels (patterns keep their scale).
    """
    c1 = np.asarray(_color(rng, _pick(rng, _SURFACES), 20)[:3], dtype=np.float32) / 255
    c2 = np.asarray(_color(rng, _pick(rng, _SURFACES), 20)[:3], dtype=np.float32) / 255
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) * pixel
    angle = rng.uniform(0, np.pi)
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    kind = _pick(rng, ("gradient", "wood", "cloth", "tiles", "mottled"))
    if kind == "gradient":
        t = (u - u.min()) / max(1e-6, float(u.max() - u.min()))
    elif kind == "wood":
        warp = 3.0 * _lowfreq(rng, w, h, 4)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * v / rng.uniform(6, 25) + warp)
        t = np.where(np.mod(v, rng.uniform(40, 120)) < 2, 0.0, t**2)
        c2 = c1 * rng.uniform(0.55, 0.8)
    elif kind == "cloth":
        period = rng.uniform(6, 30)
        t = 0.45 * (np.floor(u / period) % 2) + 0.45 * (np.floor(v / period) % 2)
        c1 = np.asarray((0.95, 0.95, 0.93), dtype=np.float32)
    elif kind == "tiles":
        period = rng.uniform(20, 70)
        tile = np.floor(u / period) * 7 + np.floor(v / period) * 13
        t = 0.15 * (np.sin(tile) * 0.5 + 0.5)
        grout = (np.mod(u, period) < 2.5) | (np.mod(v, period) < 2.5)
        t = np.where(grout, 0.9, t)
    else:
        t = 0.5 + 0.5 * _lowfreq(rng, w, h, int(rng.integers(4, 12)))
    image = c1 + (c2 - c1) * t[..., None]
    image *= (1.0 + 0.12 * _lowfreq(rng, w, h, 3))[..., None]
    grain = rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(0.005, 0.03)
    return np.clip(image + grain, 0.0, 1.0)


def _anywhere(rng: Generator) -> Point:
    return (float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))


def _translucent(rng: Generator, rgb: Sequence[int]) -> Color:
    """A jittered colour with a random opacity."""
    return (*_color(rng, rgb, 25)[:3], int(rng.integers(120, 256)))


def _segment(pen: Pen, centre: Point, length: float, angle: float) -> list[Point]:
    """Ends of a segment through ``centre``; ``length`` in shorter sides."""
    dx, dy = pen.rx(length / 2 * math.cos(angle)), pen.ry(length / 2 * math.sin(angle))
    return [(centre[0] - dx, centre[1] - dy), (centre[0] + dx, centre[1] + dy)]


def _napkin(pen: Pen, rng: Generator) -> None:
    """A rotated rectangle of cloth or paper."""
    (cx, cy), a, b = _anywhere(rng), rng.uniform(0.1, 0.4), rng.uniform(0.05, 0.25)
    ux, uy = math.cos(angle := rng.uniform(0, np.pi)), math.sin(angle)
    corners = [
        (cx + pen.rx(sx * a * ux - sy * b * uy), cy + pen.ry(sx * a * uy + sy * b * ux))
        for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))
    ]
    colours = [(240, 240, 240), (200, 220, 240), (240, 200, 200), (220, 230, 200)]
    pen.polygon(corners, _translucent(rng, _pick(rng, colours)))


def _cutlery(pen: Pen, rng: Generator) -> None:
    """A knife seen from above: a long thin grey bar with a thicker handle."""
    start, end = _segment(pen, _anywhere(rng), rng.uniform(0.4, 1.0), rng.uniform(0, np.pi))
    grey = _color(rng, (185, 185, 190), 25)
    pen.line([start, end], grey, rng.uniform(0.01, 0.025))
    handle = (start[0] + 0.45 * (end[0] - start[0]), start[1] + 0.45 * (end[1] - start[1]))
    pen.line([start, handle], _tone(grey, 0.8), 0.04)


def _scribble(pen: Pen, rng: Generator) -> None:
    """A random-walk doodle, like a pattern on a placemat."""
    (cx, cy), steps = _anywhere(rng), rng.normal(0, 0.03, (int(rng.integers(8, 30)), 2))
    walk = [(cx + pen.rx(x), cy + pen.ry(y)) for x, y in steps.cumsum(axis=0)]
    pen.line(walk, _translucent(rng, rng.integers(0, 256, 3)), rng.uniform(0.004, 0.012))


def _shard(pen: Pen, rng: Generator) -> None:
    """An irregular flat polygon: a scrap of paper, a shadow, a reflection."""
    (cx, cy), a = _anywhere(rng), np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
    r = rng.uniform(0.05, 0.3, len(a))
    outline = _pts(cx + pen.rx(1) * r * np.cos(a), cy + pen.ry(1) * r * np.sin(a))
    pen.polygon(outline, _translucent(rng, _pick(rng, _SURFACES)))


def _stripes(pen: Pen, rng: Generator) -> None:
    """Parallel lines, as on a placemat or the border of a tablecloth."""
    (cx, cy), length, angle = _anywhere(rng), rng.uniform(0.5, 1.5), rng.uniform(0, np.pi)
    col, gap, width = _translucent(rng, _pick(rng, _SURFACES)), rng.uniform(0.01, 0.04), 0.006
    for k in range(int(rng.integers(3, 9))):
        shifted = (cx - pen.rx(gap * k * math.sin(angle)), cy + pen.ry(gap * k * math.cos(angle)))
        pen.line(_segment(pen, shifted, length, angle), col, width)


def _text(pen: Pen, rng: Generator) -> None:
    """Rows of dark dashes, like printed words on a menu or a packet."""
    (x0, y0), ink, size = _anywhere(rng), _color(rng, (40, 40, 50), 20), rng.uniform(0.015, 0.03)
    for row in range(int(rng.integers(2, 6))):
        x, y = x0, y0 + pen.ry(1.6 * size * row)
        for _ in range(int(rng.integers(3, 8))):
            word = pen.rx(size * rng.uniform(1.5, 5))
            pen.line([(x, y), (x + word, y)], ink, 0.5 * size)
            x += word + pen.rx(size)


def _plate(pen: Pen, rng: Generator) -> None:
    """A plain white or grey plate with a rim."""
    (cx, cy), r, squash = _anywhere(rng), rng.uniform(0.15, 0.45), rng.uniform(0.6, 1.0)
    rim = _color(rng, (236, 236, 232), 12)
    pen.ellipse(cx, cy, pen.rx(r), pen.ry(r * squash), rim)
    inner = (pen.rx(0.75 * r), pen.ry(0.75 * r * squash))
    pen.ellipse(cx, cy, *inner, _tone(rim, 0.94), outline=_tone(rim, 0.85), width=0.006)


_DISTRACTORS: tuple[Callable[[Pen, Generator], None], ...] = (
    _napkin, _cutlery, _scribble, _shard, _stripes, _text, _plate,
)  # fmt: skip


def make_background(rng: Generator, w: int, h: int) -> np.ndarray:
    """Surface + distractors + optional depth-of-field blur, float32 (h, w, 3) in [0, 1]."""
    half = _surface(rng, (w + 1) // 2, (h + 1) // 2, pixel=2.0)  # smooth: half resolution
    surface = Image.fromarray(np.round(half * 255).astype(np.uint8))
    surface = surface.resize((w, h), Image.Resampling.BILINEAR)
    pen = Pen(surface, blend=True)
    for _ in range(int(rng.integers(2, 9))):
        _pick(rng, _DISTRACTORS)(pen, rng)
    if rng.random() < 0.6:
        surface = surface.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))
    return np.asarray(surface, dtype=np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# Per-image look: colour, light and sensor effects applied to the whole photo.
# --------------------------------------------------------------------------------------------


@dataclass
class Look:
    """Photo-wide effects, drawn once per image so they can be applied to several layers."""

    matrix: np.ndarray  # 3×3 colour matrix: hue rotation and saturation
    gains: np.ndarray  # white balance, per channel
    contrast: float
    brightness: float
    vignette: np.ndarray  # (h, w) multiplicative falloff
    noise: np.ndarray  # (h, w, 1) sensor noise (luminance)
    light: float  # direction of the light on objects, radians


def make_look(rng: Generator, w: int, h: int) -> Look:
    """Draw brightness/contrast/hue/saturation/white-balance/vignette/noise for one image."""
    theta, saturation = rng.uniform(-0.15, 0.15), rng.uniform(0.75, 1.25)
    k = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], dtype=np.float32)
    hue = (
        math.cos(theta) * np.eye(3)
        + (1 - math.cos(theta)) / 3 * np.ones((3, 3))
        + math.sin(theta) / math.sqrt(3) * k
    )
    luma = np.tile(np.array([0.299, 0.587, 0.114]), (3, 1))
    sat = saturation * np.eye(3) + (1 - saturation) * luma
    gains = np.array([1 + rng.uniform(-0.07, 0.07), 1.0, 1 + rng.uniform(-0.07, 0.07)])
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    strength = rng.uniform(0.0, 0.35) if rng.random() < 0.5 else 0.0
    vignette = 1.0 - strength * 0.5 * (x * x + y * y)
    noise = rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(0.0, 0.025)
    return Look(
        matrix=(sat @ hue).astype(np.float32),
        gains=gains.astype(np.float32),
        contrast=rng.uniform(0.8, 1.2),
        brightness=rng.uniform(-0.08, 0.08),
        vignette=vignette,
        noise=noise,
        light=rng.uniform(0, 2 * np.pi),
    )


def apply_look(image: np.ndarray, look: Look) -> np.ndarray:
    """Apply a ``Look`` to a float (h, w, 3) image in [0, 1]; return uint8."""
    lit = image * look.vignette[..., None] + look.noise
    photo = Image.fromarray(np.round(np.clip(lit, 0.0, 1.0) * 255.0).astype(np.uint8))
    # colour matrix, white balance and contrast folded into one affine map, applied by Pillow
    linear = look.contrast * look.gains[:, None] * look.matrix
    offset = (0.5 * (1.0 - look.contrast) + look.brightness) * 255.0
    matrix = tuple(float(v) for row in linear for v in (*row, offset))
    return np.asarray(photo.convert("RGB", matrix))


# --------------------------------------------------------------------------------------------
# Scenes: background + objects, their visible masks and tight boxes.
# --------------------------------------------------------------------------------------------


@dataclass
class SceneObject:
    """One annotated object: class, visible mask (h, w) bool and its tight normalized box."""

    class_name: str
    mask: np.ndarray
    box: Box


@dataclass
class Scene:
    """A rendered photo. ``objects[0]`` is the main object (largest visible area)."""

    image: np.ndarray  # (h, w, 3) uint8
    objects: list[SceneObject]
    background: np.ndarray | None = None  # same look, no objects (only when asked for)


def mask_box(mask: np.ndarray) -> Box:
    """Tight normalized box (x_min, x_max, y_min, y_max) of a non-empty mask's pixels."""
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (
        float(cols[0] / w),
        float((cols[-1] + 1) / w),
        float(rows[0] / h),
        float((rows[-1] + 1) / h),
    )


def _extra_class(rng: Generator, main_class: str) -> str:
    """The class of a secondary object: usually another class, sometimes the same one."""
    if rng.random() < 0.15:
        return main_class
    return _pick(rng, [c for c in SNACK_CLASSES if c != main_class])


def _place(rng: Generator, sprite: Sprite, w: int, h: int, inside: bool) -> tuple[int, int]:
    """Top-left corner; unless ``inside``, up to 15 % of the sprite may leave the frame."""
    sw, sh = sprite.size
    slack_x, slack_y = (0, 0) if inside else (int(0.15 * sw), int(0.15 * sh))
    x = int(rng.integers(-slack_x, max(-slack_x, w - sw + slack_x) + 1))
    y = int(rng.integers(-slack_y, max(-slack_y, h - sh + slack_y) + 1))
    return x, y


def _stamp(
    sprite: Sprite, pos: tuple[int, int], w: int, h: int
) -> tuple[slice, slice, slice, slice]:
    """Image and sprite slices (ys, xs, sys, sxs) of the part of the sprite inside the frame."""
    sw, sh = sprite.size
    x0, y0 = max(0, pos[0]), max(0, pos[1])
    x1, y1 = min(w, pos[0] + sw), min(h, pos[1] + sh)
    return (
        slice(y0, y1),
        slice(x0, x1),
        slice(y0 - pos[1], y1 - pos[1]),
        slice(x0 - pos[0], x1 - pos[0]),
    )


def _visible_masks(
    sprites: list[Sprite], positions: list[tuple[int, int]], w: int, h: int
) -> list[np.ndarray] | None:
    """Visible masks in drawing order, or None when the layout hides or crops too much."""
    full = []
    for sprite, pos in zip(sprites, positions, strict=True):
        ys, xs, sys, sxs = _stamp(sprite, pos, w, h)
        mask = np.zeros((h, w), dtype=bool)
        mask[ys, xs] = sprite.alpha[sys, sxs] > 0.5
        if mask.sum() < 0.7 * (sprite.alpha > 0.5).sum():
            return None  # mostly out of frame
        full.append(mask)
    visible, cover = [], np.zeros((h, w), dtype=bool)
    for mask in reversed(full):
        seen = mask & ~cover
        if not seen.any() or seen.sum() < 0.5 * mask.sum():
            return None  # mostly hidden by later objects (or too small to see)
        visible.append(seen)
        cover |= mask
    return visible[::-1]


def _layout(
    rng: Generator, sprites: list[Sprite], w: int, h: int
) -> tuple[list[Sprite], list[tuple[int, int]], list[np.ndarray]]:
    """Place sprites (``sprites[0]`` is main) so each is mostly visible and main is largest.

    Tries random drawing orders and positions; drops secondary objects when nothing fits.
    """
    for count in range(len(sprites), 0, -1):
        for _ in range(12):
            order = [int(i) for i in rng.permutation(count)]
            posed = [sprites[i] for i in order]
            positions = [_place(rng, s, w, h, inside=count == 1) for s in posed]
            masks = _visible_masks(posed, positions, w, h)
            if masks is None:
                continue
            areas = {i: int(m.sum()) for i, m in zip(order, masks, strict=True)}
            if all(areas[0] > a for i, a in areas.items() if i != 0):
                return posed, positions, masks
    raise RuntimeError(f"cannot place a {sprites[0].class_name} in a {w}x{h} image")


def _shadow_offset(rng: Generator, light: float, w: int, h: int) -> tuple[int, int]:
    """Where shadows fall: away from the light, a few percent of the image size."""
    reach = rng.uniform(0.0, 0.03) * max(w, h)
    return round(-math.cos(light) * reach), round(-math.sin(light) * reach)


def _blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a float (h, w, 3) image in [0, 1] (through 8-bit Pillow)."""
    pil = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0


def _cast_shadow(canvas: np.ndarray, sprite: Sprite, pos: tuple[int, int]) -> None:
    """Darken the canvas under a soft copy of the sprite's silhouette (not part of its mask)."""
    h, w = canvas.shape[:2]
    ys, xs, sys, sxs = _stamp(sprite, pos, w, h)
    if ys.start >= ys.stop or xs.start >= xs.stop:
        return
    silhouette = Image.fromarray(np.round(sprite.alpha * 255).astype(np.uint8))
    radius = 0.03 * max(sprite.size)
    soft = np.asarray(silhouette.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    canvas[ys, xs] *= 1.0 - 0.35 * soft[sys, sxs, None] / 255.0


def render_scene(
    rng: Generator, width: int, height: int, main_class: str, *, with_background: bool = False
) -> Scene:
    """Render one photo of ``main_class`` (plus 0-2 other objects) on a cluttered background."""
    look = make_look(rng, width, height)
    background = make_background(rng, width, height)
    count = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    classes = [main_class] + [_extra_class(rng, main_class) for _ in range(count - 1)]
    main_share = rng.uniform(0.1, 0.75)
    shares = [main_share] + [rng.uniform(0.03, min(0.35, 0.7 * main_share)) for _ in classes[1:]]
    sprites = [
        make_sprite(rng, name, share * width * height, (width, height), look.light)
        for name, share in zip(classes, shares, strict=True)
    ]
    posed, positions, masks = _layout(rng, sprites, width, height)
    canvas = background.copy()
    shadow = _shadow_offset(rng, look.light, width, height)
    for sprite, pos in zip(posed, positions, strict=True):
        _cast_shadow(canvas, sprite, (pos[0] + shadow[0], pos[1] + shadow[1]))
        ys, xs, sys, sxs = _stamp(sprite, pos, width, height)
        alpha = sprite.alpha[sys, sxs, None]
        canvas[ys, xs] = canvas[ys, xs] * (1.0 - alpha) + sprite.rgb[sys, sxs]
    if rng.random() < 0.2:  # a slightly soft photo (focus, motion); boxes move < 1 pixel
        canvas = _blur(canvas, rng.uniform(0.3, 0.9))
    objects = [SceneObject(s.class_name, m, mask_box(m)) for s, m in zip(posed, masks, strict=True)]
    main = next(i for i, s in enumerate(posed) if s is sprites[0])
    objects.insert(0, objects.pop(main))
    return Scene(
        image=apply_look(canvas, look),
        objects=objects,
        background=apply_look(background, look) if with_background else None,
    )


# --------------------------------------------------------------------------------------------
# Images: one task per image, rendered independently (in parallel) from its own seed.
# --------------------------------------------------------------------------------------------


def _entropy(seed: int) -> int:
    """SeedSequence entropy must be non-negative: map any int seed to one."""
    return seed % 2**63


@dataclass(frozen=True)
class ImageTask:
    """What to render: the image's split, its index there, and its main class."""

    split: str
    split_index: int
    index: int
    main_class: str


@dataclass(frozen=True)
class ImageRecord:
    """A rendered image: id, folder, size, JPEG quality and its annotations (main first)."""

    split: str
    image_id: str
    folder: str
    width: int
    height: int
    quality: int
    boxes: tuple[tuple[str, float, float, float, float], ...]  # class, x_min, x_max, y_min, y_max


def split_sizes(params: SynthParams) -> dict[str, int]:
    """Number of rendered images per split."""
    return {split: int(getattr(params, f"{split}_images")) for split in SPLITS}


def image_tasks(params: SynthParams) -> list[ImageTask]:
    """All images to render, in order; main classes are balanced and shuffled per split."""
    tasks = []
    for split_index, (split, count) in enumerate(split_sizes(params).items()):
        rng = np.random.default_rng([_entropy(params.seed), 2, split_index])
        n = len(SNACK_CLASSES)  # every class count // n times, the remainder drawn at random
        labels = np.r_[np.tile(np.arange(n), count // n), rng.choice(n, count % n, replace=False)]
        for index, label in enumerate(rng.permutation(labels)):
            tasks.append(ImageTask(split, split_index, index, SNACK_CLASSES[int(label)]))
    return tasks


def _image_size(rng: Generator, params: SynthParams) -> tuple[int, int]:
    """Width and height: long side in [min_side, max_side], aspect ratio up to 1.8."""
    low, high = sorted((params.min_side, params.max_side))
    long_side = int(rng.integers(low, high + 1))
    short_side = max(low, round(long_side / rng.uniform(1.0, 1.8)))
    return (long_side, short_side) if rng.random() < 0.7 else (short_side, long_side)


def encode_jpeg(image: Image.Image, quality: int, **options: Any) -> bytes:
    """JPEG bytes with explicit settings and no metadata (deterministic with pinned Pillow)."""
    buffer = io.BytesIO()
    subsampling = 0 if quality >= 90 else 2  # 4:4:4 for high quality, else 4:2:0
    if image.mode not in ("RGB", "YCbCr"):
        subsampling = 0
    image.save(buffer, "JPEG", quality=quality, subsampling=subsampling, optimize=False, **options)
    return buffer.getvalue()


def render_image(task: ImageTask, params: SynthParams) -> tuple[ImageRecord, bytes]:
    """Render one image from its own generator; return its record and JPEG bytes."""
    rng = np.random.default_rng([_entropy(params.seed), 1, task.split_index, task.index])
    image_id = rng.bytes(8).hex()
    width, height = _image_size(rng, params)
    scene = render_scene(rng, width, height, task.main_class)
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    boxes = tuple((obj.class_name, *obj.box) for obj in scene.objects)
    record = ImageRecord(task.split, image_id, task.main_class, width, height, quality, boxes)
    return record, encode_jpeg(Image.fromarray(scene.image), quality)


def _render_to_file(task: ImageTask, params: SynthParams, root: Path) -> ImageRecord:
    """Worker: render one image and write it under ``root``."""
    record, data = render_image(task, params)
    path = image_path(root, record.split, record.folder, record.image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return record


def _default_workers(count: int) -> int:
    """Processes to use: all available cores, but one for small jobs (no start-up cost)."""
    if count < 64:
        return 1
    try:
        return max(1, min(len(os.sched_getaffinity(0)), 16))
    except AttributeError:  # not on Linux
        return max(1, min(os.cpu_count() or 1, 16))


def _render_all(
    root: Path, params: SynthParams, progress: bool, workers: int | None
) -> list[ImageRecord]:
    """Render every image (in a process pool when ``workers`` > 1), records in task order."""
    tasks = image_tasks(params)
    workers = workers or _default_workers(len(tasks))
    render = partial(_render_to_file, params=params, root=root)
    bar = partial(tqdm, total=len(tasks), desc="synth", unit="img", disable=not progress)
    if workers <= 1:
        return list(bar(map(render, tasks)))
    # spawn: safe even when the caller runs threads (Prefect, TensorFlow), unlike fork.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return list(bar(pool.imap(render, tasks, chunksize=8)))


# --------------------------------------------------------------------------------------------
# Defects: injected after rendering, each into a different image, recorded in the manifest.
# --------------------------------------------------------------------------------------------


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


class _Row:
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


def _record_rows(record: ImageRecord) -> list[_Row]:
    """The CSV rows of a rendered image, main object first."""
    return [
        _Row([record.image_id, _fmt(x0), _fmt(x1), _fmt(y0), _fmt(y1), name, record.folder])
        for name, x0, x1, y0, y1 in record.boxes
    ]


@dataclass(eq=False)
class _Defect:
    """A defect while being injected: rows are kept as objects until the CSV order is final."""

    kind: str
    split: str
    image_id: str
    folder: str
    description: str
    row: _Row | None = None
    rows: list[_Row] = field(default_factory=list)
    row_refs: dict[str, _Row] = field(default_factory=dict)  # e.g. duplicate_of
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, index: dict[int, int]) -> dict[str, Any]:
        """The manifest entry, with rows turned into 0-based CSV data-row indices."""
        entry = {
            "kind": self.kind,
            "split": self.split,
            "image_id": self.image_id,
            "folder": self.folder,
            "description": self.description,
            "expect": DEFECT_SPECS[self.kind].expect,
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


class _Injector:
    """Injects every defect kind into distinct images, in a fixed order, from one generator."""

    def __init__(
        self, root: Path, rows: dict[str, list[_Row]], records: list[ImageRecord], rng: Generator
    ) -> None:
        self.root, self.rows, self.rng = root, rows, rng
        self.pool = [records[int(i)] for i in rng.permutation(len(records))]
        self.defects: list[_Defect] = []
        self.used_ids = {record.image_id for record in records}

    def run(self, total_images: int) -> list[_Defect]:
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

    def _rows_of(self, record: ImageRecord) -> list[_Row]:
        return [row for row in self.rows[record.split] if row.get("image_id") == record.image_id]

    def _one_row(self, record: ImageRecord) -> _Row:
        return _pick(self.rng, self._rows_of(record))

    def _insert_after(self, split: str, anchor: _Row, row: _Row) -> None:
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
            _Defect(kind, record.split, record.image_id, record.folder, description, **fields)
        )

    def _reencode(self, record: ImageRecord, convert: Callable[[Image.Image], bytes]) -> None:
        path = self._path(record)
        with Image.open(path) as image:
            path.write_bytes(convert(image.convert("RGB")))

    # row and annotation defects --------------------------------------------------------------
    def _duplicate_row(self, record: ImageRecord, number: int) -> None:
        row = self._one_row(record)
        copy = _Row(row.cells)
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
        copy = _Row(row.cells)
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
        row, column = self._one_row(record), _pick(self.rng, _BOX_COLUMNS)
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
        row, axis = self._one_row(record), _pick(self.rng, ("x", "y"))
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
        row, name = self._one_row(record), _pick(self.rng, _UNKNOWN_CLASSES)
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
        row, column = self._one_row(record), _pick(self.rng, _BOX_COLUMNS)
        value = _pick(self.rng, _BAD_NUMBERS)
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
        row, column = self._one_row(record), _pick(self.rng, _BOX_COLUMNS)
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
        copy = _Row(row.cells)
        copy.set("image_id", target)
        self._insert_after(record.split, row, copy)
        self.defects.append(
            _Defect(
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
        split = _pick(self.rng, others) if cross else record.split
        image_id = self._new_id()
        path = self._path(record, split, image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        copies = []
        for row in self._rows_of(record):
            copy = _Row(row.cells)
            copy.set("image_id", image_id)
            self.rows[split].append(copy)
            copies.append(copy)
        where = f"in {split} (leakage across splits)" if cross else f"in the same split {split}"
        self.defects.append(
            _Defect(
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
            quality = int(np.clip(quality + _pick(self.rng, (-25, -15, 15, 25)), 40, 98))
        elif variant == "resize":
            scale = self.rng.uniform(0.75, 0.92)
            size = (round(image.width * scale), round(image.height * scale))
            image = image.resize(size, Image.Resampling.LANCZOS)
        else:
            factor = _pick(self.rng, (0.88, 0.93, 1.07, 1.12))
            image = Image.fromarray(np.clip(np.asarray(image) * factor, 0, 255).astype(np.uint8))
        data = encode_jpeg(image, quality)
        self._copy_image(
            "near_duplicate_image",
            record,
            number,
            data,
            f"near-duplicate ({variant}, {image.width}x{image.height}, q{quality})",
        )


# --------------------------------------------------------------------------------------------
# Writing: CSVs in image_id order, the manifest, and the atomic swap into place.
# --------------------------------------------------------------------------------------------


def _write_csv(path: Path, rows: Iterable[_Row]) -> None:
    """Write an annotation CSV with the contract's header, "\\n" line ends, UTF-8."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(ANNOTATION_COLUMNS)
        writer.writerows(row.cells for row in rows)


def _count_files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def _finish(
    root: Path, rows: dict[str, list[_Row]], defects: list[_Defect], params: SynthParams
) -> dict[str, Any]:
    """Sort rows, write the CSVs and the manifest; return the manifest."""
    entries, counts = [], {}
    for split in SPLITS:
        ordered = sorted(rows[split], key=lambda row: row.get("image_id"))  # stable
        _write_csv(annotations_path(root, split), ordered)
        index = {id(row): i for i, row in enumerate(ordered)}
        counts[split] = {"images": _count_files(root / split), "rows": len(ordered)}
        entries += [d.to_json(index) for d in defects if d.split == split]
    kind_order = list(DEFECT_SPECS)
    entries.sort(
        key=lambda e: (
            SPLITS.index(e["split"]),
            kind_order.index(e["kind"]),
            e["rows"][:1],
            e["image_id"],
        )
    )
    manifest = {
        "seed": params.seed,
        "params": params.model_dump(mode="json"),
        "counts": counts,
        "kinds": {k: {"expect": s.expect, "summary": s.summary} for k, s in DEFECT_SPECS.items()},
        "defects": entries,
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def generate(
    out_dir: Path,
    params: SynthParams,
    progress: bool = True,
    *,
    workers: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the synthetic snacks dataset to ``out_dir``; return the manifest (defects.json).

    The result depends only on ``params`` (not on ``workers`` or the machine, with Pillow and
    numpy pinned). ``workers`` defaults to all cores (one process for tiny datasets). A
    non-empty ``out_dir`` is replaced only with ``overwrite=True``, and only once the new
    dataset is complete.
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir, overwrite)
    with replaced_dir(out_dir) as tmp:
        records = _render_all(tmp, params, progress, workers)
        for split in SPLITS:
            (tmp / split).mkdir(exist_ok=True)
        rows = {split: [] for split in SPLITS}
        for record in records:
            rows[record.split] += _record_rows(record)
        defects: list[_Defect] = []
        if params.inject_defects:
            rng = np.random.default_rng([_entropy(params.seed), 3])
            defects = _Injector(tmp, rows, records, rng).run(len(records))
        manifest = _finish(tmp, rows, defects, params)
    return manifest
