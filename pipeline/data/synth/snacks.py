"""One drawer per snack class, in patch units: each fills most of its patch.

``CLASS_SPECS`` names the drawer, the aspect-ratio range and the colours of every class of
``SNACK_CLASSES``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.random import Generator

from pipeline.data.synth.draw import (
    Color,
    Pen,
    Point,
    fit,
    pick,
    points_in_ellipse,
    pts,
    spline,
    tone,
    vary,
)

_SPRINKLES: tuple[Color, ...] = (
    (240, 60, 60, 255), (60, 160, 240, 255), (250, 220, 60, 255), (80, 200, 90, 255),
    (250, 250, 250, 255), (180, 90, 220, 255),
)  # fmt: skip
_WHITE: Color = (250, 250, 250, 255)


def _apple(pen: Pen, rng: Generator) -> None:
    body = vary(rng, pick(rng, [(196, 28, 36), (150, 22, 40), (128, 182, 52), (214, 160, 44)]))
    top = 0.14
    pen.ellipse(0.5, 0.6, 0.47, 0.39, body)
    for cx in (0.3, 0.7):  # the two shoulders
        pen.ellipse(cx, top + 0.275, 0.26, 0.275, body)

    def streaks(p: Pen) -> None:
        for _ in range(int(rng.integers(4, 9))):
            x, shade = rng.uniform(0.12, 0.88), tone(body, rng.uniform(0.75, 1.25), alpha=90)
            p.line([(x, top), (x + rng.uniform(-0.08, 0.08), 1.0)], shade, 0.03)
        p.ellipse(0.32, top + 0.3, 0.09, 0.13, tone(body, 1.5, 150))  # highlight

    pen.texture(streaks)
    pen.ellipse(0.5, top + 0.05, 0.08, 0.035, tone(body, 0.6))  # stem cavity
    stem = vary(rng, (95, 60, 30), 10)
    pen.line([(0.5, top + 0.06), (0.5 + rng.uniform(-0.08, 0.08), 0.01)], stem, 0.045)
    if rng.random() < 0.7:
        tip = (rng.uniform(0.72, 0.85), rng.uniform(0.0, 0.1))
        pen.leaf((0.52, 0.07), tip, 0.14, vary(rng, (70, 150, 50)))


def _banana(pen: Pen, rng: Generator) -> None:
    col = vary(rng, pick(rng, [(236, 204, 58), (226, 214, 80), (196, 204, 70), (242, 188, 48)]))
    t = np.linspace(0.0, 1.0, 40)
    bottom = 1.0 - rng.uniform(0.35, 0.6) * (2 * t - 1) ** 2
    top = bottom - rng.uniform(0.2, 0.32) * np.sin(np.pi * t) ** 0.6 - 0.02
    ridge = 0.6 * top + 0.4 * bottom
    n = len(t)  # the outline (top edge, then bottom edge back) and the ridge, fitted together
    points = fit(pts(np.r_[t, t[::-1], t], np.r_[top, bottom[::-1], ridge]), 0.02, 0.02)
    outline, ridge_line = points[: 2 * n], points[2 * n + 3 : 3 * n - 3]
    pen.polygon(outline, col)
    pen.line(ridge_line, tone(col, 0.8), 0.025)
    pen.ellipse(*outline[0], 0.025, 0.03, (70, 50, 25, 255))  # the dark tip
    (x, y), stem = outline[n - 1], vary(rng, (120, 120, 50))
    pen.line([outline[n - 4], (min(x + 0.01, 1.0), y)], stem, 0.05)
    if rng.random() < 0.45:  # ripe: brown spots
        spots = points_in_ellipse(rng, int(rng.integers(6, 20)), 0.5, 0.7, 0.45, 0.3)
        pen.texture(lambda p: p.dots(spots, 0.008, 0.02, (90, 60, 25, 220)))


def _cake(pen: Pen, rng: Generator) -> None:
    sponge = vary(rng, pick(rng, [(226, 186, 122), (112, 62, 38), (166, 42, 52), (240, 212, 130)]))
    cream = vary(
        rng, pick(rng, [(246, 240, 228), (244, 178, 198), (86, 48, 30), (250, 232, 170)]), 10
    )
    top = rng.uniform(0.2, 0.3)
    if rng.random() < 0.5:  # a slice: the frosted top face in perspective
        pen.polygon([(0.02, top), (0.98, top), (rng.uniform(0.55, 0.85), 0.06)], tone(cream, 1.05))
    else:  # a whole cake: elliptical top
        pen.ellipse(0.5, top, 0.48, top - 0.06, tone(cream, 1.05))
    pen.rect(0.02, top, 0.98, 0.97, sponge)
    for y in np.linspace(top, 0.97, int(rng.integers(3, 6)))[1:-1]:  # cream between layers
        pen.rect(0.02, y - 0.025, 0.98, y + 0.025, cream)
    pen.rect(0.02, top - 0.02, 0.98, top + 0.05, cream)
    for x in np.linspace(0.07, 0.93, int(rng.integers(5, 10))):  # drips
        pen.ellipse(x, top + 0.06, 0.035, rng.uniform(0.03, 0.09), cream)
    if rng.random() < 0.6:
        pen.ellipse(rng.uniform(0.3, 0.7), 0.08, 0.07, 0.06, vary(rng, (200, 20, 40), 10))
    elif rng.random() < 0.5:
        for x, y in points_in_ellipse(rng, 25, 0.5, top - 0.02, 0.4, 0.04):
            pen.ellipse(x, y, 0.01, 0.01, pick(rng, _SPRINKLES))


def _candy(pen: Pen, rng: Generator) -> None:
    hues = [
        (220, 30, 60),
        (40, 90, 220),
        (30, 170, 80),
        (150, 50, 190),
        (250, 140, 20),
        (240, 80, 170),
    ]
    col = vary(rng, pick(rng, hues), 25)
    stripe = pick(rng, [_WHITE, (250, 230, 70, 255), tone(col, 0.6)])
    for side in (-1, 1):  # the twisted ends of the wrapper
        neck, end = 0.5 + side * 0.24, 0.5 + side * 0.49
        back = end - side * 0.05
        frill = [(end, 0.06), (back, 0.28), (end, 0.5), (back, 0.72), (end, 0.94)]
        pen.polygon([(neck, 0.44), *frill, (neck, 0.56)], tone(col, 1.12))
        for y in (0.28, 0.5, 0.72):
            pen.line([(neck, 0.5), (back, y)], tone(col, 0.75), 0.025)
    cx, cy, rx, ry = 0.5, 0.5, 0.27, 0.34
    pen.ellipse(cx, cy, rx, ry, col)
    for x in np.linspace(cx - 0.8 * rx, cx + 0.8 * rx, int(rng.integers(3, 6))):
        half = 0.92 * ry * math.sqrt(1 - ((x - cx) / rx) ** 2)
        pen.line([(x, cy - half), (x, cy + half)], stripe, 0.07)
    pen.ellipse(cx - 0.35 * rx, cy - 0.45 * ry, 0.2 * rx, 0.15 * ry, tone(col, 1.6))


def _carrot(pen: Pen, rng: Generator) -> None:
    body = vary(rng, pick(rng, [(236, 118, 28), (226, 100, 20), (245, 140, 40)]), 12)
    greens = vary(rng, (60, 140, 50), 15)
    shoulder = rng.uniform(0.25, 0.33)
    for _ in range(int(rng.integers(3, 7))):  # the leaves, behind the root
        tip = (0.5 + rng.uniform(-0.45, 0.45), rng.uniform(0.0, 0.06))
        pen.leaf((0.5, shoulder), tip, 0.22, tone(greens, rng.uniform(0.8, 1.2)))
    t = np.linspace(0.0, 1.0, 24)
    half = 0.45 * (1 - t) ** 0.8 + 0.03
    bend = rng.uniform(-0.06, 0.06) * t**2
    ys = shoulder + t * (0.99 - shoulder)
    pen.polygon(pts(0.5 - half + bend, ys) + pts(0.5 + half + bend, ys)[::-1], body)
    pen.ellipse(0.5, shoulder, 0.48, 0.04, body)  # the rounded top

    def ridges(p: Pen) -> None:
        for _ in range(int(rng.integers(5, 11))):
            x, y = 0.5 + rng.uniform(-0.4, 0.1), rng.uniform(shoulder + 0.04, 0.9)
            p.line([(x, y), (x + rng.uniform(0.1, 0.3), y + 0.01)], tone(body, 0.7, 200), 0.035)

    pen.texture(ridges)


def _cookie(pen: Pen, rng: Generator) -> None:
    dark = rng.random() < 0.2  # a chocolate cookie with white chips
    base = vary(
        rng,
        (120, 72, 40) if dark else pick(rng, [(206, 160, 98), (190, 140, 80), (222, 184, 120)]),
        12,
    )
    chip = (240, 232, 214, 255) if dark else vary(rng, (65, 38, 22), 8)
    angles = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
    wobble = np.convolve(rng.standard_normal(52), np.ones(5) / 5, mode="valid")[:48]
    radius = 0.47 * (1 + 0.05 * wobble)
    pen.polygon(pts(0.5 + radius * np.cos(angles), 0.5 + radius * np.sin(angles)), base)

    def texture(p: Pen) -> None:
        p.ellipse(0.5, 0.5, 0.48, 0.48, None, outline=tone(base, 0.8, 160), width=0.06)
        crumbs = points_in_ellipse(rng, 30, 0.5, 0.5, 0.42, 0.42)
        p.dots(crumbs, 0.012, 0.012, tone(base, 1.15, 170))
        for x, y in points_in_ellipse(rng, int(rng.integers(5, 14)), 0.5, 0.5, 0.36, 0.36):
            r = rng.uniform(0.035, 0.07)
            a = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, 5, endpoint=False)
            p.polygon(pts(x + r * np.cos(a), y + r * np.sin(a)), chip)

    pen.texture(texture)


def _doughnut(pen: Pen, rng: Generator) -> None:
    dough = vary(rng, (206, 146, 74), 14)
    glaze = pick(rng, [(242, 150, 186), (96, 56, 36), (246, 238, 226), None, (245, 205, 90)])
    pen.ellipse(0.5, 0.5, 0.48, 0.48, dough)
    if glaze is not None:
        a = np.linspace(0.0, 2 * np.pi, 64, endpoint=False)
        r = 0.41 + 0.035 * np.sin(a * int(rng.integers(5, 9)) + rng.uniform(0, 6))
        pen.polygon(pts(0.5 + r * np.cos(a), 0.5 + r * np.sin(a)), vary(rng, glaze, 10))
        for _ in range(int(rng.integers(25, 50)) if rng.random() < 0.6 else 0):  # sprinkles
            r, a, tilt = rng.uniform(0.23, 0.37), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
            x, y = 0.5 + r * math.cos(a), 0.5 + r * math.sin(a)
            dx, dy = 0.03 * math.cos(tilt), 0.03 * math.sin(tilt)
            pen.line([(x - dx, y - dy), (x + dx, y + dy)], pick(rng, _SPRINKLES), 0.015)
    pen.ellipse(0.5, 0.5, 0.2, 0.2, tone(dough, 0.8))
    pen.ellipse(0.5, 0.5, 0.15, 0.15, (0, 0, 0, 0))  # the hole: transparent, not in the mask


def _grape(pen: Pen, rng: Generator) -> None:
    col = pick(rng, [(96, 40, 112), (128, 30, 70), (160, 196, 84), (70, 30, 80)])
    rows = int(rng.integers(4, 6))  # an inverted triangle: the top row is the widest
    r = 0.5 / (0.9 * rows + 0.1) * pen.w / pen.short  # the top row spans the width
    top = 0.12
    dy = (0.99 - top - 2 * pen.ry(r)) / (rows - 1)
    stem = vary(rng, (100, 80, 40))
    pen.line([(0.5, top + pen.ry(r)), (0.5 + rng.uniform(-0.1, 0.1), 0.0)], stem, 0.05)
    for k in range(rows):
        count = rows - k
        for j in range(count):
            if count > 1 and rng.random() < 0.1:
                continue
            x = 0.5 + pen.rx(r) * ((j - (count - 1) / 2) * 1.8 + rng.uniform(-0.1, 0.1))
            y = top + pen.ry(r) * (1 + rng.uniform(-0.1, 0.1)) + k * dy
            grape = vary(rng, col, 12)
            pen.circle(x, y, r, grape, outline=tone(grape, 0.6), width=0.1 * r)
            pen.circle(x - pen.rx(0.35 * r), y - pen.ry(0.4 * r), 0.18 * r, tone(grape, 1.7))


def _hot_dog(pen: Pen, rng: Generator) -> None:
    bun = vary(rng, (214, 160, 92), 14)
    sausage = vary(rng, pick(rng, [(170, 72, 46), (150, 60, 40), (190, 100, 70)]), 12)
    pen.rect(0.06, 0.3, 0.94, 0.8, tone(bun, 0.88), radius=0.24)  # back half of the bun
    pen.rect(0.0, 0.2, 1.0, 0.62, sausage, radius=0.2)
    pen.line([(0.06, 0.31), (0.94, 0.31)], tone(sausage, 1.35), 0.04)
    pen.rect(0.05, 0.48, 0.95, 0.99, bun, radius=0.24)  # front half
    pen.line([(0.1, 0.92), (0.9, 0.92)], tone(bun, 0.8), 0.03)
    if rng.random() < 0.75:  # mustard or ketchup
        sauce = pick(rng, [(232, 190, 30, 255), (200, 30, 30, 255)])
        xs = np.linspace(0.12, 0.88, int(rng.integers(7, 13)))
        pen.line([(x, 0.3 if i % 2 else 0.46) for i, x in enumerate(xs)], sauce, 0.05, curve=True)


def _ice_cream(pen: Pen, rng: Generator) -> None:
    cone = vary(rng, (214, 166, 98), 12)
    scoops = int(rng.integers(1, 4))
    cone_top = 0.99 - rng.uniform(0.4, 0.55)
    r = min(0.47 * pen.w, (cone_top - 0.02) * pen.h / (1 + 0.85 * (scoops - 1))) / pen.short
    pen.polygon([(0.05, cone_top), (0.95, cone_top), (0.5, 0.99)], cone)
    run = (1 - cone_top) / pen.aspect  # 45-degree lines

    def waffle_pattern(p: Pen) -> None:
        for x in 0.5 + 0.16 * np.arange(-8, 9):
            for sign in (-1, 1):
                p.line([(x, cone_top), (x + sign * run, 1.0)], tone(cone, 0.7), 0.02)

    pen.texture(waffle_pattern)
    flavours = [(240, 170, 190), (245, 240, 225), (110, 65, 40), (170, 230, 190), (250, 220, 110)]
    y = cone_top - pen.ry(0.55 * r)
    for _ in range(scoops):
        scoop = vary(rng, pick(rng, flavours), 10)
        pen.circle(0.5, y, r, scoop)
        for x in np.linspace(0.5 - pen.rx(0.85 * r), 0.5 + pen.rx(0.85 * r), 6):  # the rim
            pen.circle(x, y + pen.ry(0.75 * r), 0.2 * r, scoop)
        pen.ellipse(
            0.5 - pen.rx(0.4 * r),
            y - pen.ry(0.4 * r),
            pen.rx(0.2 * r),
            pen.ry(0.14 * r),
            tone(scoop, 1.2),
        )
        y -= pen.ry(0.85 * r)
    if rng.random() < 0.3:  # a cherry on top
        pen.circle(0.5, max(y - pen.ry(0.05 * r), pen.ry(0.15 * r)), 0.18 * r, (200, 20, 40, 255))


def _juice(pen: Pen, rng: Generator) -> None:
    juices = [(245, 150, 30), (190, 30, 50), (110, 30, 80), (240, 215, 80), (150, 200, 70)]
    liquid = vary(rng, pick(rng, juices), 14)
    straw = pick(rng, [(240, 60, 60, 255), (60, 160, 240, 255), _WHITE, (90, 200, 90, 255)])
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
    pen.polygon([(0.08, rim), (0.92, rim), (0.8, 0.99), (0.2, 0.99)], vary(rng, (212, 226, 232), 8))

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
    pen.line([(straw_x(level), level), (straw_x(0.9), 0.9)], tone(straw, 0.7), 0.06)
    pen.line([(0.08, rim), (0.92, rim)], _WHITE, 0.035)
    pen.line([(0.22, rim + 0.08), (0.28, 0.9)], _WHITE, 0.03)  # reflection


def _carton(pen: Pen, rng: Generator, liquid: Color) -> None:
    """A juice carton with a gable top and a fruit label."""
    box = vary(rng, pick(rng, [(245, 245, 240), (250, 220, 80), (120, 180, 220)]), 10)
    pen.rect(0.25, 0.04, 0.75, 0.12, tone(box, 0.9))
    pen.polygon([(0.08, 0.28), (0.92, 0.28), (0.75, 0.1), (0.25, 0.1)], tone(box, 0.85))
    pen.rect(0.08, 0.28, 0.92, 0.99, box)
    pen.rect(0.08, 0.5, 0.92, 0.82, liquid)
    pen.ellipse(0.5, 0.66, 0.16, 0.1, tone(liquid, 1.4))


def _muffin(pen: Pen, rng: Generator) -> None:
    cups = [(240, 240, 235), (200, 40, 40), (60, 100, 200), (140, 90, 50), (240, 200, 60)]
    cup = vary(rng, pick(rng, cups), 10)
    pen.polygon([(0.14, 0.52), (0.86, 0.52), (0.76, 0.99), (0.24, 0.99)], cup)

    def pleats(p: Pen) -> None:
        for u in np.linspace(0.0, 1.0, 9):
            p.line([(0.14 + 0.72 * u, 0.52), (0.24 + 0.52 * u, 1.0)], tone(cup, 0.75), 0.02)

    pen.texture(pleats)
    dome = vary(rng, pick(rng, [(200, 140, 64), (110, 64, 36), (220, 170, 90)]), 12)
    pen.ellipse(0.5, 0.355, 0.48, 0.325, dome)
    topping = pick(rng, [(60, 50, 110, 255), (55, 32, 18, 255), (250, 245, 235, 255)])

    def crumb(p: Pen) -> None:
        for x, y in points_in_ellipse(rng, 40, 0.5, 0.35, 0.44, 0.29):
            p.ellipse(x, y, 0.03, 0.025, tone(dome, rng.uniform(0.8, 1.2), 140))
        berries = points_in_ellipse(rng, int(rng.integers(5, 12)), 0.5, 0.33, 0.38, 0.24)
        p.dots(berries, 0.035, 0.03, topping)

    pen.texture(crumb)


def _orange(pen: Pen, rng: Generator) -> None:
    peel = vary(rng, pick(rng, [(242, 140, 24), (250, 160, 40), (236, 120, 20)]), 12)
    pen.ellipse(0.5, 0.5, 0.48, 0.48, peel)
    if rng.random() < 0.75:  # whole, with a dimpled peel
        dimples = points_in_ellipse(rng, min(600, pen.w * pen.h // 250), 0.5, 0.5, 0.47, 0.47)

        def texture(p: Pen) -> None:
            for x, y in dimples:
                p.ellipse(x, y, 0.008, 0.008, tone(peel, rng.uniform(0.82, 1.12), 170))
            p.ellipse(0.33, 0.3, 0.12, 0.08, tone(peel, 1.3, 120))

        pen.texture(texture)
        pen.ellipse(0.5, rng.uniform(0.1, 0.5), 0.03, 0.025, (110, 110, 40, 255))  # navel
    else:  # cut in half: pith and segments
        pith, flesh = (250, 232, 190, 255), vary(rng, (248, 166, 50), 10)
        pen.ellipse(0.5, 0.5, 0.44, 0.44, pith)
        segments = int(rng.integers(9, 12))
        for start in np.linspace(0, 360, segments, endpoint=False) + 3:
            pen.pieslice(0.5, 0.5, 0.4, 0.4, start, start + 360 / segments - 6, flesh)
        pen.ellipse(0.5, 0.5, 0.04, 0.04, pith)


def _pineapple(pen: Pen, rng: Generator) -> None:
    body = vary(rng, pick(rng, [(206, 150, 52), (186, 128, 42), (214, 172, 70)]), 12)
    crown = vary(rng, (64, 140, 56), 14)
    top = rng.uniform(0.36, 0.45)
    for _ in range(int(rng.integers(7, 12))):  # the crown, behind the fruit
        tip = (rng.uniform(0.05, 0.95), rng.uniform(0.0, 0.4 * top))
        pen.leaf((0.5, top + 0.04), tip, 0.16, tone(crown, rng.uniform(0.8, 1.2)))
    pen.ellipse(0.5, (top + 0.99) / 2, 0.44, (0.99 - top) / 2, body)
    run = (1 - top) / pen.aspect  # 45-degree lines
    step = 1 / rng.uniform(4.0, 6.0)

    def scales(p: Pen) -> None:
        for x in 0.5 + step * np.arange(-12, 13):
            p.line([(x, top), (x + run, 1.0)], tone(body, 0.6), 0.025)
            p.line([(x, top), (x - run, 1.0)], tone(body, 0.6), 0.025)
        eyes = points_in_ellipse(rng, 30, 0.5, (top + 1) / 2, 0.44, (1 - top) / 2)
        p.dots(eyes, 0.02, 0.015, (90, 90, 30, 200))

    pen.texture(scales)


def _popcorn(pen: Pen, rng: Generator) -> None:
    stripe = vary(rng, pick(rng, [(220, 30, 40), (40, 70, 200), (230, 180, 30)]), 10)
    paper = vary(rng, (248, 246, 240), 6)
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
    col = vary(rng, pick(rng, [(250, 246, 226), (246, 226, 160), (240, 214, 130)]), 8)
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
    col = vary(rng, pick(rng, [(150, 85, 35), (125, 68, 28), (170, 100, 45)]), 10)
    knots = [
        (x + rng.uniform(-0.02, 0.02), y + rng.uniform(-0.02, 0.02)) for x, y in _PRETZEL_KNOTS
    ]
    thick = rng.uniform(0.1, 0.14)  # of the shorter side
    path = fit(spline(knots), pen.rx(thick / 2 + 0.01), pen.ry(thick / 2 + 0.01))
    pen.line(path, col, thick, curve=True)
    for x, y in (path[0], path[-1]):  # round ends
        pen.circle(x, y, thick / 2, col)
    shine = [(x - pen.rx(0.15 * thick), y - pen.ry(0.2 * thick)) for x, y in path]
    pen.line(shine, tone(col, 1.3), 0.2 * thick, curve=True)
    for i in rng.integers(0, len(path), int(rng.integers(8, 25))):  # salt
        pen.circle(*path[int(i)], 0.1 * thick, (245, 245, 240, 255))


def _salad(pen: Pen, rng: Generator) -> None:
    bowl = vary(
        rng, pick(rng, [(246, 246, 242), (172, 118, 70), (70, 110, 170), (200, 100, 60)]), 10
    )
    rim = rng.uniform(0.45, 0.55)
    greens = [(80, 150, 50), (120, 180, 60), (60, 120, 40), (150, 200, 90), (110, 60, 90)]
    for _ in range(int(rng.integers(14, 26))):  # leaves heaped above the rim
        x, y = rng.uniform(0.1, 0.9), rng.uniform(0.08, rim + 0.05)
        tip = (x + pick(rng, (-1, 1)) * rng.uniform(0.08, 0.18), y + rng.uniform(-0.15, 0.15))
        pen.leaf((x, y), tip, rng.uniform(0.14, 0.28), vary(rng, pick(rng, greens), 15))
    for _ in range(int(rng.integers(2, 6))):
        x, y, r = rng.uniform(0.15, 0.85), rng.uniform(0.1, rim), rng.uniform(0.06, 0.1)
        if rng.random() < 0.65:  # a cherry tomato
            tomato = vary(rng, (210, 40, 30), 10)
            pen.circle(x, y, r, tomato)
            pen.circle(x - pen.rx(0.3 * r), y - pen.ry(0.3 * r), 0.22 * r, tone(tomato, 1.6))
        else:  # a cucumber slice
            pen.circle(x, y, r, (200, 230, 160, 255), outline=(50, 110, 40, 255), width=0.2 * r)
    pen.chord(0.5, rim, 0.49, 0.99 - rim, 0, 180, bowl)
    pen.arc(0.5, rim, 0.49, 0.04, 0, 180, tone(bowl, 0.8), 0.025)


def _strawberry(pen: Pen, rng: Generator) -> None:
    col = vary(rng, pick(rng, [(212, 28, 40), (228, 50, 56), (190, 20, 36)]), 14)
    shoulder = 0.22

    def half_width(u: np.ndarray | float) -> Any:  # u: 0 at the shoulder, 1 at the tip
        return 0.47 * np.sin(np.pi * (0.5 + 0.5 * u)) ** 0.7

    t = np.linspace(0.0, 1.0, 30)
    half, ys = half_width(t) + 0.04 * (1 - t), shoulder + t * (0.97 - shoulder)
    pen.polygon(pts(0.5 - half, ys) + pts(0.5 + half, ys)[::-1], col)
    pen.ellipse(0.5, shoulder, 0.48, 0.08, col)  # round shoulders
    pen.ellipse(0.5, 0.965, 0.04, 0.025, col)  # round tip

    def seeds(p: Pen) -> None:
        for y in np.linspace(shoulder + 0.06, 0.9, 8):
            width = half_width((y - shoulder) / (0.97 - shoulder))
            for x in np.linspace(0.5 - 0.8 * width, 0.5 + 0.8 * width, int(6 * width) + 1):
                p.ellipse(x + rng.uniform(-0.02, 0.02), y, 0.014, 0.02, (246, 220, 90, 255))
        p.ellipse(0.32, 0.35, 0.08, 0.1, tone(col, 1.5, 110))  # highlight

    pen.texture(seeds)
    green, base = vary(rng, (60, 140, 50), 14), (0.5, shoulder - 0.03)
    for _ in range(int(rng.integers(5, 8))):  # the calyx
        angle, length = rng.uniform(-math.pi - 0.35, 0.35), rng.uniform(0.2, 0.3)
        tip = (0.5 + length * math.cos(angle), base[1] + length * pen.aspect * math.sin(angle))
        pen.leaf(base, tip, 0.1, tone(green, rng.uniform(0.85, 1.15)))
    pen.line([base, (0.5 + rng.uniform(-0.05, 0.05), 0.01)], green, 0.04)


def _waffle(pen: Pen, rng: Generator) -> None:
    col = vary(rng, pick(rng, [(218, 164, 74), (200, 140, 58), (230, 184, 96)]), 12)
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
                    x + 0.2 * cell, y + 0.2 * cell, x + 0.8 * cell, y + 0.8 * cell, tone(col, 0.72)
                )
        if syrup:
            p.ellipse(0.5, 0.5, rng.uniform(0.15, 0.3), rng.uniform(0.15, 0.3), (120, 60, 20, 200))

    pen.texture(grid)
    if rng.random() < 0.4:  # a pat of butter
        pen.rect(0.4, 0.4, 0.6, 0.6, (250, 236, 160, 255), radius=0.02)


def _watermelon(pen: Pen, rng: Generator) -> None:
    rind = vary(rng, (48, 128, 52), 12)
    flesh = vary(rng, pick(rng, [(232, 48, 64), (240, 80, 90), (220, 40, 50)]), 12)
    layers = ((1.0, rind), (0.92, (206, 232, 170, 255)), (0.88, flesh))
    if pen.aspect >= 1.4:  # a half-moon slice: flat cut on top, rind along the bottom arc
        for scale, fill in layers:
            pen.pieslice(0.5, 0.01, 0.49 * scale, 0.98 * scale, 0, 180, fill)
        seeds = points_in_ellipse(rng, 60, 0.5, 0.01, 0.34, 0.69)
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
