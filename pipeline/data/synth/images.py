"""One task per image, rendered independently (in parallel) from its own seed."""

from __future__ import annotations

import io
import multiprocessing
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.random import Generator
from PIL import Image
from tqdm import tqdm

from pipeline.core.config import SNACK_CLASSES, SynthParams
from pipeline.data.contract import SPLITS, image_path
from pipeline.data.synth.scenes import render_scene

JPEG_QUALITY = (60, 95)  # inclusive range of the per-image JPEG quality


def entropy(seed: int) -> int:
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
        rng = np.random.default_rng([entropy(params.seed), 2, split_index])
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
    rng = np.random.default_rng([entropy(params.seed), 1, task.split_index, task.index])
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


def render_all(
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
