"""Scenes of the synthetic dataset: sprites on photo-like backgrounds, tight boxes.

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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.random import Generator
from PIL import Image, ImageFilter

from pipeline.core.config import SNACK_CLASSES
from pipeline.data.synth.draw import SUPERSAMPLE, Box, Color, Pen, Point, pick, pts, tone, vary
from pipeline.data.synth.snacks import CLASS_SPECS, ClassSpec


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
        patch = patch.transpose(pick(rng, [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270]))
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
    c1 = np.asarray(vary(rng, pick(rng, _SURFACES), 20)[:3], dtype=np.float32) / 255
    c2 = np.asarray(vary(rng, pick(rng, _SURFACES), 20)[:3], dtype=np.float32) / 255
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) * pixel
    angle = rng.uniform(0, np.pi)
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    kind = pick(rng, ("gradient", "wood", "cloth", "tiles", "mottled"))
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
    return (*vary(rng, rgb, 25)[:3], int(rng.integers(120, 256)))


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
    pen.polygon(corners, _translucent(rng, pick(rng, colours)))


def _cutlery(pen: Pen, rng: Generator) -> None:
    """A knife seen from above: a long thin grey bar with a thicker handle."""
    start, end = _segment(pen, _anywhere(rng), rng.uniform(0.4, 1.0), rng.uniform(0, np.pi))
    grey = vary(rng, (185, 185, 190), 25)
    pen.line([start, end], grey, rng.uniform(0.01, 0.025))
    handle = (start[0] + 0.45 * (end[0] - start[0]), start[1] + 0.45 * (end[1] - start[1]))
    pen.line([start, handle], tone(grey, 0.8), 0.04)


def _scribble(pen: Pen, rng: Generator) -> None:
    """A random-walk doodle, like a pattern on a placemat."""
    (cx, cy), steps = _anywhere(rng), rng.normal(0, 0.03, (int(rng.integers(8, 30)), 2))
    walk = [(cx + pen.rx(x), cy + pen.ry(y)) for x, y in steps.cumsum(axis=0)]
    pen.line(walk, _translucent(rng, rng.integers(0, 256, 3)), rng.uniform(0.004, 0.012))


def _shard(pen: Pen, rng: Generator) -> None:
    """An irregular flat polygon: a scrap of paper, a shadow, a reflection."""
    (cx, cy), a = _anywhere(rng), np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
    r = rng.uniform(0.05, 0.3, len(a))
    outline = pts(cx + pen.rx(1) * r * np.cos(a), cy + pen.ry(1) * r * np.sin(a))
    pen.polygon(outline, _translucent(rng, pick(rng, _SURFACES)))


def _stripes(pen: Pen, rng: Generator) -> None:
    """Parallel lines, as on a placemat or the border of a tablecloth."""
    (cx, cy), length, angle = _anywhere(rng), rng.uniform(0.5, 1.5), rng.uniform(0, np.pi)
    col, gap, width = _translucent(rng, pick(rng, _SURFACES)), rng.uniform(0.01, 0.04), 0.006
    for k in range(int(rng.integers(3, 9))):
        shifted = (cx - pen.rx(gap * k * math.sin(angle)), cy + pen.ry(gap * k * math.cos(angle)))
        pen.line(_segment(pen, shifted, length, angle), col, width)


def _text(pen: Pen, rng: Generator) -> None:
    """Rows of dark dashes, like printed words on a menu or a packet."""
    (x0, y0), ink, size = _anywhere(rng), vary(rng, (40, 40, 50), 20), rng.uniform(0.015, 0.03)
    for row in range(int(rng.integers(2, 6))):
        x, y = x0, y0 + pen.ry(1.6 * size * row)
        for _ in range(int(rng.integers(3, 8))):
            word = pen.rx(size * rng.uniform(1.5, 5))
            pen.line([(x, y), (x + word, y)], ink, 0.5 * size)
            x += word + pen.rx(size)


def _plate(pen: Pen, rng: Generator) -> None:
    """A plain white or grey plate with a rim."""
    (cx, cy), r, squash = _anywhere(rng), rng.uniform(0.15, 0.45), rng.uniform(0.6, 1.0)
    rim = vary(rng, (236, 236, 232), 12)
    pen.ellipse(cx, cy, pen.rx(r), pen.ry(r * squash), rim)
    inner = (pen.rx(0.75 * r), pen.ry(0.75 * r * squash))
    pen.ellipse(cx, cy, *inner, tone(rim, 0.94), outline=tone(rim, 0.85), width=0.006)


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
        pick(rng, _DISTRACTORS)(pen, rng)
    if rng.random() < 0.6:
        surface = surface.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))
    return np.asarray(surface, dtype=np.float32) / 255.0


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
    return pick(rng, [c for c in SNACK_CLASSES if c != main_class])


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
