"""Box-aware augmentation on uint8 images (H, W, 3) with one normalized box each (or, for
the detector, every box of the image: ``augment_boxes``).

Every geometric transform moves the box with the pixels: a box drawn into the image before
augmentation is where the transformed box says it is after (tests/test_augment.py).
Boxes are (x_min, x_max, y_min, y_max), normalized to [0, 1]. What to apply is the
``train.augment`` section of the params (``AugmentParams``, its one home and defaults).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.core.config import AugmentParams


def hflip(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: x' = 1 - x, and x_min/x_max swap (one box (4,) or many (n, 4))."""
    b = box
    flipped = np.stack([1 - b[..., 1], 1 - b[..., 0], b[..., 2], b[..., 3]], axis=-1)
    return image[:, ::-1], flipped.astype(box.dtype)


def visible_fraction(box: np.ndarray, crop: np.ndarray) -> float:
    """Share of the box's area inside the crop (both normalized, same order)."""
    w = max(0.0, min(box[1], crop[1]) - max(box[0], crop[0]))
    h = max(0.0, min(box[3], crop[3]) - max(box[2], crop[2]))
    area = (box[1] - box[0]) * (box[3] - box[2])
    return float(w * h / area) if area > 0 else 0.0


def visible_fractions(boxes: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """``visible_fraction`` of each of the boxes (n, 4)."""
    return np.array([visible_fraction(box, crop) for box in boxes])


def sample_crop(
    box: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float],
    min_visible: float,
    tries: int = 10,
) -> np.ndarray | None:
    """A random crop window (normalized) keeping enough of the box, or None."""
    for _ in range(tries):
        area = rng.uniform(*scale)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w = min(1.0, np.sqrt(area * ratio))
        h = min(1.0, np.sqrt(area / ratio))
        x0 = rng.uniform(0, 1 - w)
        y0 = rng.uniform(0, 1 - h)
        crop = np.array([x0, x0 + w, y0, y0 + h])
        if visible_fraction(box, crop) >= min_visible:
            return crop
    return None


def sample_canvas(rng: np.random.Generator, max_zoom_out: float) -> np.ndarray:
    """A window (normalized) larger than the image and holding all of it: a zoom out."""
    side = rng.uniform(1.0, max_zoom_out)
    x0 = -rng.uniform(0, side - 1)
    y0 = -rng.uniform(0, side - 1)
    return np.array([x0, x0 + side, y0, y0 + side])


def crop_resize(
    image: np.ndarray, box: np.ndarray, crop: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Resample the window ``crop`` of the image to the original size; re-express the box
    (one box (4,) or many (n, 4)).

    The window may reach outside the image (a zoom out): that part is filled with the
    image's mean colour.
    """
    h, w = image.shape[:2]
    x0, x1, y0, y1 = crop
    pil = Image.fromarray(image)
    extent = (x0 * w, y0 * h, x1 * w, y1 * h)
    if x0 >= 0 and y0 >= 0 and x1 <= 1 and y1 <= 1:
        pil = pil.resize((w, h), Image.Resampling.BILINEAR, box=extent)  # 2x faster
    else:
        fill = tuple(int(v) for v in image[::4, ::4].mean(axis=(0, 1)))
        pil = pil.transform(
            (w, h), Image.Transform.EXTENT, extent, Image.Resampling.BILINEAR, fillcolor=fill
        )
    cw, ch = x1 - x0, y1 - y0
    b = box
    new = np.stack(
        [
            (b[..., 0] - x0) / cw,
            (b[..., 1] - x0) / cw,
            (b[..., 2] - y0) / ch,
            (b[..., 3] - y0) / ch,
        ],
        axis=-1,
    )
    return np.asarray(pil), np.clip(new, 0.0, 1.0).astype(box.dtype)


GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation; returns float32 in [0, 255].

    In place on one float32 copy: the loader runs this for every sample of every epoch.
    """
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3).astype(np.float32)
    x = image.astype(np.float32)
    gray = (x @ GRAY)[..., None]
    x -= gray  # saturation: x = gray + (x - gray) * s
    x *= s
    x += gray
    mean = x.mean(dtype=np.float32)
    x -= mean  # contrast then brightness: ((x - mean) * c + mean) * b
    x *= c * b
    x += mean * b
    return np.clip(x, 0, 255, out=x)


def augment(
    image: np.ndarray, box: np.ndarray, settings: AugmentParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the configured transforms to one image and its box (float32 image out)."""
    if settings.zoom_out > 1.0 and rng.random() < 0.5:
        image, box = crop_resize(image, box, sample_canvas(rng, settings.zoom_out))
    elif settings.crop_scale[0] < 1.0:
        crop = sample_crop(box, rng, settings.crop_scale, settings.min_visible)
        if crop is not None:
            image, box = crop_resize(image, box, crop)
    if settings.hflip and rng.random() < 0.5:
        image, box = hflip(image, box)
    if settings.color_jitter > 0:
        return color_jitter(image, settings.color_jitter, rng), box
    return image.astype(np.float32), box


def augment_boxes(
    image: np.ndarray, boxes: np.ndarray, settings: AugmentParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``augment`` for every box of an image (n, 4): the detector's targets.

    A crop must keep ``min_visible`` of the largest box (the image's main object, as the
    one-box target is); every box of which the crop keeps less is dropped. Returns the float32
    image, the moved boxes and which of the given boxes remain (a boolean mask).
    """
    keep = np.ones(len(boxes), dtype=bool)
    if settings.zoom_out > 1.0 and rng.random() < 0.5:
        image, boxes = crop_resize(image, boxes, sample_canvas(rng, settings.zoom_out))
    elif settings.crop_scale[0] < 1.0 and len(boxes):
        main = boxes[np.argmax((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2]))]
        crop = sample_crop(main, rng, settings.crop_scale, settings.min_visible)
        if crop is not None:
            keep = visible_fractions(boxes, crop) >= settings.min_visible
            image, boxes = crop_resize(image, boxes, crop)
    if settings.hflip and rng.random() < 0.5:
        image, boxes = hflip(image, boxes)
    if settings.color_jitter > 0:
        return color_jitter(image, settings.color_jitter, rng), boxes, keep
    return image.astype(np.float32), boxes, keep
