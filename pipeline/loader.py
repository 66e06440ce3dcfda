"""Training and evaluation samples, and the generator that feeds them to Keras.

A *sample* is one (image, class, box) triple. The annotations have one row per box, so an
image can carry several boxes; the ``target`` rule says which one the single box head learns:

- ``image`` (default): one sample per image; the target is the largest box whose class is the
  image's folder class (the image's main object), else the largest box of the image.
- ``rows``: one sample per annotation row, as the book's generator does. The same pixels then
  appear with conflicting box targets.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.augment import AugmentSettings, augment
from pipeline.dataio import BOX_COLUMNS, image_path, load_image_array


def select_targets(frame: pd.DataFrame, rule: str = "image") -> pd.DataFrame:
    """One row per sample according to ``rule`` (see module docstring), in a stable order."""
    if rule == "rows":
        return frame.reset_index(drop=True)
    if rule != "image":
        raise ValueError(f"unknown target rule {rule!r}")
    work = frame.assign(
        _area=(frame.x_max - frame.x_min) * (frame.y_max - frame.y_min),
        _main=(frame.class_name == frame.folder),
    )
    # Main-class boxes first, then by area; ties keep the annotation order.
    work = work.sort_values(["_main", "_area"], ascending=[False, False], kind="stable")
    chosen = work.drop_duplicates(subset=["split", "folder", "image_id"], keep="first")
    return chosen.sort_index().drop(columns=["_area", "_main"]).reset_index(drop=True)


def sample_table(
    annotations: dict[str, pd.DataFrame], classes: list[str], data_root: Path, rule: str
) -> pd.DataFrame:
    """Samples of the given splits with their image path, class index and box."""
    frames = [frame.assign(split=split) for split, frame in annotations.items()]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    frame = frame[frame.class_name.isin(classes)]
    samples = select_targets(frame, rule)
    index = {name: i for i, name in enumerate(classes)}
    samples["label"] = samples.class_name.map(index).astype("int64")
    samples["path"] = [
        str(image_path(data_root, s, f, i))
        for s, f, i in zip(samples.split, samples.folder, samples.image_id, strict=True)
    ]
    return samples


class ImageCache:
    """Decoded, resized uint8 images of a set of files, loaded once in parallel threads.

    Decoding dominates the loader's cost; keeping the small resized arrays in memory makes
    every epoch after the first free of JPEG work (1500 images at 128 px take 74 MB).
    """

    def __init__(self, paths: list[str], size: int, workers: int = 2, progress: bool = True):
        self.size = size
        self.index = {path: i for i, path in enumerate(dict.fromkeys(paths))}
        self.images = np.empty((len(self.index), size, size, 3), dtype=np.uint8)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            loaded = pool.map(lambda p: load_image_array(Path(p), size), self.index)
            for i, array in enumerate(
                tqdm(loaded, total=len(self.index), desc="decode images", disable=not progress)
            ):
                self.images[i] = array

    def get(self, path: str) -> np.ndarray:
        return self.images[self.index[path]]


def read_image(path: str, size: int, cache: ImageCache | None = None) -> np.ndarray:
    """One resized uint8 image: from the cache when it has it, else decoded from disk."""
    if cache is not None:
        return cache.get(path)
    return load_image_array(Path(path), size)


class ImageBatches(keras.utils.PyDataset):
    """Batches of images alone (float32 0-255) of the given files, in order: for predict()."""

    def __init__(
        self,
        paths: list[str],
        image_size: int,
        batch_size: int,
        cache: ImageCache | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.paths = paths
        self.image_size = image_size
        self.batch_size = batch_size
        self.cache = cache

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, batch: int) -> np.ndarray:
        chunk = self.paths[batch * self.batch_size : (batch + 1) * self.batch_size]
        return np.stack([read_image(p, self.image_size, self.cache) for p in chunk]).astype(
            "float32"
        )


class SnackDataset(keras.utils.PyDataset):
    """Batches of (images float32 0-255, {"class": labels, "box": boxes}).

    Shuffles every epoch from its own seeded generator and, given ``augment`` settings,
    transforms each image with its box (pipeline/augment.py). Random draws are seeded per
    (epoch, batch), so a batch is the same whichever worker thread builds it. Without a
    cache, images are decoded per batch by the PyDataset worker threads.
    """

    def __init__(
        self,
        samples: pd.DataFrame,
        image_size: int,
        batch_size: int,
        shuffle: bool = False,
        augment: AugmentSettings | None = None,
        seed: int = 0,
        cache: ImageCache | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.paths = samples.path.tolist()
        self.labels = samples.label.to_numpy(dtype="int64")
        self.boxes = samples[BOX_COLUMNS].to_numpy(dtype="float32")
        self.image_size = image_size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.cache = cache
        self.seed = seed
        self.epoch = 0
        self.order = self._epoch_order()

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, batch: int):
        picks = self.order[batch * self.batch_size : (batch + 1) * self.batch_size]
        images = np.stack([read_image(self.paths[i], self.image_size, self.cache) for i in picks])
        boxes = self.boxes[picks].copy()
        if self.augment is None:
            images = images.astype("float32")
        else:
            rng = np.random.default_rng([self.seed, self.epoch, batch])
            out = [
                augment(img, box, self.augment, rng) for img, box in zip(images, boxes, strict=True)
            ]
            images = np.stack([img for img, _ in out]).astype("float32")
            boxes = np.stack([box for _, box in out]).astype("float32")
        return images, {"class": self.labels[picks], "box": boxes}

    def _epoch_order(self) -> np.ndarray:
        order = np.arange(len(self.paths))
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        return order

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._epoch_order()
