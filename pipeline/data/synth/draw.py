"""Drawing helpers of the synthetic dataset: colours, points, splines and the ``Pen``.

Object drawers paint on a transparent RGBA patch; its alpha is the object's mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from numpy.random import Generator
from PIL import Image, ImageChops, ImageDraw

Color = tuple[int, int, int, int]
Point = tuple[float, float]
Box = tuple[float, float, float, float]  # x_min, x_max, y_min, y_max (normalized)

SUPERSAMPLE = 2  # objects are drawn at this scale and downsampled (anti-aliasing)


def pick(rng: Generator, options: Sequence[Any]) -> Any:
    """One element of a sequence (rng.choice would turn tuples into arrays)."""
    return options[int(rng.integers(len(options)))]


def vary(rng: Generator, rgb: Sequence[int], spread: float = 16.0) -> Color:
    """A jittered opaque colour: a random gain and a per-channel offset around ``rgb``."""
    values = np.asarray(rgb, dtype=float) * rng.uniform(0.88, 1.12)
    values += rng.uniform(-spread, spread, 3)
    r, g, b = (int(v) for v in np.clip(values, 0, 255))
    return (r, g, b, 255)


def tone(color: Sequence[int], factor: float, alpha: int = 255) -> Color:
    """A lighter (factor > 1) or darker (factor < 1) version of a colour."""
    r, g, b = (int(min(255.0, c * factor)) for c in color[:3])
    return (r, g, b, alpha)


def pts(xs: Iterable[float], ys: Iterable[float]) -> list[Point]:
    """Pair x and y coordinates into points."""
    return [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]


def points_in_ellipse(
    rng: Generator, n: int, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    """``n`` points spread uniformly inside an ellipse, shape (n, 2)."""
    radius = np.sqrt(rng.uniform(0.0, 1.0, n))
    theta = rng.uniform(0.0, 2 * np.pi, n)
    return np.stack([cx + rx * radius * np.cos(theta), cy + ry * radius * np.sin(theta)], axis=1)


def spline(points: Sequence[Point], samples: int = 10) -> list[Point]:
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


def fit(points: Sequence[Point], margin_x: float, margin_y: float) -> list[Point]:
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
        left, right = pts(xs - uy * half, ys + ux * half), pts(xs + uy * half, ys - ux * half)
        self.draw.polygon(left + right[::-1], fill=fill)

    def texture(self, paint: Callable[[Pen], None]) -> None:
        """Paint on what is drawn so far: clipped to the current alpha, alpha unchanged."""
        layer = Image.new("RGBA", self.img.size, (0, 0, 0, 0))
        paint(Pen(layer))
        alpha = self.img.getchannel("A")
        mask = ImageChops.multiply(layer.getchannel("A"), alpha)
        self.img.paste(layer.convert("RGB"), (0, 0), mask)
        self.img.putalpha(alpha)
