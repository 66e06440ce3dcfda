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
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.core.config import AugmentParams
from pipeline.data.contract import BOX_COLUMNS, image_path, load_image_array
from pipeline.model.augment import augment, augment_boxes
from pipeline.model.detect_head import CELLS
from pipeline.model.detect_targets import pad_boxes

if TYPE_CHECKING:
    import tensorflow as tf


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


def every_box(samples: pd.DataFrame, frame: pd.DataFrame, classes: list[str]) -> list[np.ndarray]:
    """Per sample (one per image), every box of its image with the class index: (n, 5) rows
    of x_min, x_max, y_min, y_max, class. The detector's targets; rows of other classes
    than ``classes`` are left out, as ``sample_table`` leaves them out."""
    index = {name: i for i, name in enumerate(classes)}
    known = frame[frame.class_name.isin(classes)]
    groups = {
        key: np.column_stack(
            [g[BOX_COLUMNS].to_numpy("float32"), g.class_name.map(index).to_numpy("float32")]
        )
        for key, g in known.groupby(["folder", "image_id"], sort=False)
    }
    empty = np.zeros((0, 5), dtype="float32")
    return [groups.get(key, empty) for key in zip(samples.folder, samples.image_id, strict=True)]


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
    transforms each image with its box (pipeline/model/augment.py). Random draws are seeded per
    (epoch, batch), so a batch is the same whichever worker thread builds it. Without a
    cache, images are decoded per batch by the PyDataset worker threads.

    Given ``objects`` (``every_box``, one array per sample), it yields the detector's batches
    instead: (images, {"cells": every box of each image, padded to ``max_boxes`` rows}), see
    ``detect_targets.pad_boxes``; augmentation moves every box and drops those a crop cuts.
    """

    def __init__(
        self,
        samples: pd.DataFrame,
        image_size: int,
        batch_size: int,
        shuffle: bool = False,
        augment: AugmentParams | None = None,
        seed: int = 0,
        cache: ImageCache | None = None,
        objects: list[np.ndarray] | None = None,
        max_boxes: int = 20,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.objects = objects
        self.max_boxes = max_boxes
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
        return self._load(picks, [self.seed, self.epoch, batch])

    def batches_in_parts(self, parts: int) -> int:
        """Batches of an epoch split in ``parts`` (see ``part``): a last batch with fewer
        samples than parts is left out, so that no replica gets an empty batch."""
        full, rest = divmod(len(self.paths), self.batch_size)
        return full + (rest >= parts)

    def part(self, batch: int, index: int, parts: int, epoch: int | None = None):
        """Part ``index`` of ``parts`` near-equal parts of batch ``batch`` of ``epoch``
        (default: the current one): what one of ``parts`` replicas of a multi-worker training
        reads. The parts together are the samples of that batch, in order; augmentation is
        drawn per part."""
        epoch = self.epoch if epoch is None else epoch
        order = self.order if epoch == self.epoch else self._epoch_order(epoch)
        picks = np.array_split(
            order[batch * self.batch_size : (batch + 1) * self.batch_size], parts
        )
        return self._load(picks[index], [self.seed, epoch, batch, index])

    def _load(self, picks: np.ndarray, draw: list[int]):
        """The samples ``picks``, augmented with random draws seeded by ``draw``."""
        images = np.stack([read_image(self.paths[i], self.image_size, self.cache) for i in picks])
        if self.objects is not None:
            return self._load_objects(images, picks, draw)
        boxes = self.boxes[picks].copy()
        if self.augment is None:
            images = images.astype("float32")
        else:
            rng = np.random.default_rng(draw)
            out = [
                augment(img, box, self.augment, rng) for img, box in zip(images, boxes, strict=True)
            ]
            images = np.stack([img for img, _ in out]).astype("float32")
            boxes = np.stack([box for _, box in out]).astype("float32")
        return images, {"class": self.labels[picks], "box": boxes}

    def _load_objects(self, images: np.ndarray, picks: np.ndarray, draw: list[int]):
        """The detector's batch of ``picks``: every box of each image, padded."""
        rng = np.random.default_rng(draw) if self.augment is not None else None
        out_images, targets = [], []
        for image, i in zip(images, picks, strict=True):
            boxes, labels = self.objects[i][:, :4], self.objects[i][:, 4]
            if rng is not None:
                image, boxes, keep = augment_boxes(image, boxes, self.augment, rng)
                boxes, labels = boxes[keep], labels[keep]
            out_images.append(image)
            targets.append(pad_boxes(boxes, labels, self.max_boxes))
        return np.stack(out_images).astype("float32"), {CELLS: np.stack(targets)}

    def _epoch_order(self, epoch: int | None = None) -> np.ndarray:
        order = np.arange(len(self.paths))
        if self.shuffle:
            drawn = self.epoch if epoch is None else epoch
            np.random.default_rng([self.seed, drawn]).shuffle(order)
        return order

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._epoch_order()

    def set_epoch(self, epoch: int) -> None:
        """Draw the order and augmentation of (0-based) ``epoch``: a training resumed
        mid-way sees the batches an uninterrupted one would have seen."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.order = self._epoch_order()


def distributed(
    ds: SnackDataset, strategy: tf.distribute.Strategy
) -> tf.distribute.DistributedDataset:
    """``ds`` as a multi-worker input: each worker reads only its own replicas' parts.

    Given a ``PyDataset``, Keras 3 wraps it in one ``tf.data`` generator and tf.distribute
    shards that by data: every worker would decode and augment every global batch and
    keep 1/N of it. Here each worker runs its own pipeline
    (``distribute_datasets_from_function``): global batch ``b`` of the epoch (the same
    shuffled order on every worker) is split into one part per replica (``SnackDataset.part``),
    and the worker builds only the parts of its replicas, in ``ds.workers`` threads. A global
    step still consumes ``ds.batch_size`` samples and an epoch has the batches of one worker.

    The epoch is read when Keras opens the epoch's iterator, after ``set_epoch`` (the
    ``DatasetEpoch`` callback of train.py) has run, as Keras opens a new iterator per epoch.
    """
    import tensorflow as tf

    parts = strategy.num_replicas_in_sync
    steps = ds.batches_in_parts(parts)
    size = ds.image_size
    spec = (
        tf.TensorSpec((None, size, size, 3), tf.float32),
        {"class": tf.TensorSpec((None,), tf.int64), "box": tf.TensorSpec((None, 4), tf.float32)},
    )

    def worker_dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = parts // context.num_input_pipelines  # replicas of this worker
        mine = range(context.input_pipeline_id * local, (context.input_pipeline_id + 1) * local)

        def generate():
            epoch = ds.epoch
            ahead = 2 * max(1, ds.workers)  # bounded read-ahead: memory stays a few batches
            with ThreadPoolExecutor(max_workers=max(1, ds.workers)) as pool:
                pending: deque[Future] = deque()
                for batch in range(steps):
                    for index in mine:
                        pending.append(pool.submit(ds.part, batch, index, parts, epoch))
                        if len(pending) > ahead:
                            yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()

        dataset = tf.data.Dataset.from_generator(generate, output_signature=spec)
        # A known length lets Keras count steps and show progress.
        return dataset.apply(tf.data.experimental.assert_cardinality(steps * local)).prefetch(local)

    return strategy.distribute_datasets_from_function(worker_dataset)
