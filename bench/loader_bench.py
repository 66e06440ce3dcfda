"""Images per second of the input pipelines and of the model's own step, side by side.

One process, one dataset, the same batch size, ratios against the book's generator:

  (a) the book's per-row PIL generator (a faithful minimal copy: BookSequence below);
  (b) snackloc's SnackDataset decoding JPEGs, with 1 and 2 worker threads;
  (c) SnackDataset from the decoded ImageCache (without, then with the default augmentation);
  (d) the model's own training step with the batch already in memory: the whole model, the
      frozen backbone, and the heads alone on cached backbone features (plus the one-off
      feature extraction).

Generators are consumed the way ``fit`` consumes them (Keras' PyDataset enqueuer feeding a
no-op model: worker threads and prefetching count), and also timed alone on one thread
(``__getitem__`` only, best batch), which shows what the Keras plumbing costs. Then one
short ``fit`` with the default input pipeline times every step with a callback and reports
the share of step time spent waiting for data (median step time with the loader vs the
same step with the batch in memory).

Usage (~2-3 min on 2 cores; clean synthetic data is generated once into --data):
  .venv/bin/python bench/loader_bench.py [--images 320] [--size 128] [--alpha 0.5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np
import pandas as pd

from pipeline.core.config import SNACK_CLASSES, AugmentParams, ModelParams, SynthParams, TrainParams
from pipeline.data import synth
from pipeline.model.loader import ImageCache, SnackDataset, sample_table
from pipeline.model.model import (
    backbone_of,
    build_model,
    compile_model,
    feature_extractor,
    heads_model,
)

BATCH = 32


class BookSequence(keras.utils.PyDataset):
    """The book's generator (ch. 9), minimal: one sample per CSV row, PIL via load_img.

    Every batch loads each row's JPEG again (an image with three boxes is decoded three
    times per epoch), resizes with load_img's default (nearest), and scales to [-1, 1] with
    MobileNet's preprocess_input, in float64 as ``np.zeros`` makes it.
    """

    def __init__(self, df, image_dir, size, batch_size, classes, shuffle=True, **kwargs):
        super().__init__(**kwargs)
        self.df, self.image_dir, self.size = df, image_dir, size
        self.batch_size, self.shuffle = batch_size, shuffle
        self.class_index = {name: i for i, name in enumerate(classes)}
        self.on_epoch_end()

    def __len__(self):
        return len(self.df) // self.batch_size

    def __getitem__(self, index):
        rows = self.indices[index * self.batch_size : (index + 1) * self.batch_size]
        x = np.zeros((self.batch_size, self.size, self.size, 3))
        y_class = np.zeros((self.batch_size,))
        y_bbox = np.zeros((self.batch_size, 4))
        for i, item in enumerate(rows):
            row = self.df.iloc[item]
            path = os.path.join(self.image_dir, row["folder"], row["image_id"] + ".jpg")
            image = keras.utils.load_img(path, target_size=(self.size, self.size))
            x[i] = keras.utils.img_to_array(image)
            y_class[i] = self.class_index[row["class_name"]]
            y_bbox[i] = [row["x_min"], row["x_max"], row["y_min"], row["y_max"]]
        x = keras.applications.mobilenet.preprocess_input(x)
        return x, {"class": y_class, "box": y_bbox}

    def on_epoch_end(self):
        self.indices = np.arange(len(self.df))
        if self.shuffle:
            np.random.shuffle(self.indices)


def clean_data(root: Path, images: int) -> Path:
    """Defect-free synthetic snacks data (generated once, then reused)."""
    if not (root / "annotations-train.csv").is_file():
        params = SynthParams(train_images=images, val_images=8, test_images=8, inject_defects=False)
        print(f"generating {images} clean synthetic images into {root} ...", flush=True)
        synth.generate(root, params, progress=False, overwrite=True)
    return root


def consume(dataset: keras.utils.PyDataset, repeats: int = 3) -> float:
    """Images/second of feeding every batch to a no-op model, as fit would (enqueuer+threads).

    Best of ``repeats`` epochs: other work on the machine only ever slows a run down.
    """
    sink = keras.Sequential([keras.layers.GlobalAveragePooling2D()])
    sink.predict(dataset, steps=1, verbose=0)  # build + trace outside the clock
    rates = []
    for _ in range(repeats):
        dataset.on_epoch_end()
        started = time.perf_counter()
        images = len(sink.predict(dataset, verbose=0))
        rates.append(images / (time.perf_counter() - started))
    return max(rates)


def step_seconds(model: keras.Model, x, y, steps: int) -> float:
    """Median seconds of ``train_on_batch`` on one in-memory batch (after a warm-up step)."""
    model.train_on_batch(x, y)  # traces the graph
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training step of ``fit``, from one step's end to the next one's end."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    def median_seconds(self, skip: int = 1) -> float:
        return float(np.median(np.diff(self.ends[skip:])))


def batch_seconds(dataset: SnackDataset, batches: int = 8) -> float:
    """Best time one thread takes to build a batch (``__getitem__``, no Keras around it)."""
    times = []
    for i in range(batches):
        started = time.perf_counter()
        dataset[i % len(dataset)]
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/snackloc-bench-data"))
    parser.add_argument("--images", type=int, default=320, help="training images to generate")
    parser.add_argument("--size", type=int, default=128, help="model input size (px)")
    parser.add_argument("--alpha", type=float, default=0.5, help="MobileNet width")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    args = parser.parse_args()
    wall = time.perf_counter()
    keras.utils.set_random_seed(0)

    root = clean_data(args.data, args.images)
    rows = pd.read_csv(root / "annotations-train.csv", dtype={"image_id": str})
    classes = list(SNACK_CLASSES)
    samples = sample_table({"train": rows}, classes, root, "image")
    size = args.size
    print(
        f"{len(samples)} images, {len(rows)} rows, {size} px, batch {BATCH}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results: list[tuple[str, float, float | None]] = []

    def record(name: str, rate: float, thread: float | None = None) -> None:
        results.append((name, rate, thread))
        alone = f"{thread:8.0f}" if thread else " " * 8
        print(f"  {name:<52} {rate:8.0f} {alone}", flush=True)

    def loader(name: str, dataset: keras.utils.PyDataset) -> None:
        record(name, consume(dataset), BATCH / batch_seconds(dataset))

    print(f"  {'images/second':<52} {'as fit':>8} {'1 thread':>8}")
    loader(
        "(a) book: per-row PIL PyDataset, 1 worker",
        BookSequence(rows, root / "train", size, BATCH, classes),
    )
    for workers in (1, 2):
        plain = SnackDataset(samples, size, BATCH, shuffle=True, workers=workers)
        loader(f"(b) SnackDataset, decode, {workers} worker(s)", plain)
    started = time.perf_counter()
    cache = ImageCache(samples.path.tolist(), size, workers=2, progress=False)
    record(
        "    ImageCache fill (decode once, 2 threads)",
        len(samples) / (time.perf_counter() - started),
    )
    cached = SnackDataset(samples, size, BATCH, shuffle=True, cache=cache, workers=2)
    loader("(c) SnackDataset from cache, no augmentation", cached)
    augment = AugmentParams()  # the params.yaml defaults
    augmented = SnackDataset(
        samples, size, BATCH, shuffle=True, cache=cache, augment=augment, workers=2
    )
    loader("(c) SnackDataset from cache + default augmentation", augmented)

    params = ModelParams(alpha=args.alpha, image_size=size)
    model = build_model(len(classes), params)
    t = TrainParams()
    compile_model(
        model,
        t.learning_rate,
        t.box_loss_weight,
        t.box_loss,
        t.weight_decay,
        label_smoothing=t.label_smoothing,
        ema_momentum=t.ema_momentum,
        clip_norm=t.clip_norm,
    )
    x, y = augmented[0]
    mem_step = step_seconds(model, x, y, args.steps)
    record(f"(d) model train step, in memory (alpha {args.alpha})", BATCH / mem_step)

    # The default input pipeline feeding the same model: how long does each step wait?
    timer = StepTimer()
    steps = min(len(augmented), args.steps + 2)
    model.fit(augmented, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    fit_step = timer.median_seconds()
    record("    fit, fed by the default loader (cache + augment)", BATCH / fit_step)

    backbone_of(model).trainable = False
    t = TrainParams()
    compile_model(
        model,
        t.learning_rate,
        t.box_loss_weight,
        t.box_loss,
        t.weight_decay,
        label_smoothing=t.label_smoothing,
        ema_momentum=t.ema_momentum,
        clip_norm=t.clip_norm,
    )
    frozen = BATCH / step_seconds(model, x, y, args.steps)
    record("(d) frozen-backbone train step, in memory", frozen)
    extractor = feature_extractor(model)
    extractor.predict_on_batch(x)
    started = time.perf_counter()
    for _ in range(args.steps):
        features = extractor.predict_on_batch(x)
    record(
        "    feature extraction (once per image)",
        args.steps * BATCH / (time.perf_counter() - started),
    )
    heads = heads_model(model)
    compile_model(heads, 1e-3, 2.0, "giou_l1", 1e-4)
    record(
        "(d) heads only, on cached features",
        BATCH / step_seconds(heads, features, y, args.steps * 4),
    )

    base = results[0][1]
    print(f"\nratio to (a), as fit consumes it ({base:.0f} img/s):")
    for name, rate, _ in results:
        print(f"  {name:<52} {rate / base:6.2f}x")
    print(f"\nheads on cached features vs frozen-backbone step: {results[-1][1] / frozen:.1f}x")
    wait = max(0.0, 1.0 - mem_step / fit_step)
    print(
        f"median step: {fit_step * 1000:.0f} ms fed by the default loader, "
        f"{mem_step * 1000:.0f} ms in memory -> {wait:.0%} of step time waiting for data"
    )
    print(f"bench wall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
