"""Training images/second of two workers (MultiWorkerMirroredStrategy) against one worker.

One run launches both configurations, each in fresh processes, on the same data:

  (1) one worker: ``train.strategy: default``, one process;
  (2) two workers: ``train.strategy: multi_worker``, two processes on 127.0.0.1 started by
      ``pipeline.ops.multiworker.launch`` (each with its TF_CONFIG), each building only its half
      of every global batch (``loader.distributed``) and all-reducing gradients over gRPC.

Both train the default model (params.yaml's model section) with the same global batch, the
real input pipeline (decoded-image cache, default augmentation) and ``train.fit``, for
``--epochs`` epochs. A callback times each epoch's training steps (validation excluded); the
first epoch (graph tracing, warm-up) is left out; images/s = training samples / median epoch
seconds. On a 2-core machine the two workers share the two cores that the one worker has
to itself: expect no gain there; the figure that matters is on separate hosts or GPUs.

Usage (~5 min on 2 busy cores; clean synthetic data is generated once into --data):
  .venv/bin/python bench/multiworker_bench.py [--images 640] [--epochs 4] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def clean_data(root: Path, images: int) -> Path:
    """Defect-free synthetic snacks data (generated once, then reused)."""
    from pipeline.core.config import SynthParams
    from pipeline.data import synth

    marker = root / "annotations-train.csv"
    if not marker.is_file():
        params = SynthParams(
            train_images=images, val_images=16, test_images=8, inject_defects=False
        )
        print(f"generating {images} clean synthetic images into {root} ...", flush=True)
        synth.generate(root, params, progress=False, overwrite=True)
    return root


def worker(args: argparse.Namespace) -> None:
    """One training process (one worker of a cluster when TF_CONFIG is set)."""
    from pipeline.core.config import Params, TrainParams
    from pipeline.model import hardware

    params = Params(
        train=TrainParams(epochs=args.epochs, batch_size=args.batch, strategy=args.strategy)
    )
    setup = hardware.configure(params.train)  # first: creates MultiWorkerMirroredStrategy

    import keras
    import pandas as pd

    from pipeline.core.config import SNACK_CLASSES
    from pipeline.model import fit as engine
    from pipeline.model.loader import sample_table

    class EpochTimer(keras.callbacks.Callback):
        """Seconds from an epoch's start to the end of its last training step."""

        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.begin = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.last = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(self.last - self.begin)

    classes = list(SNACK_CLASSES)
    frames = {
        split: pd.read_csv(args.data / f"annotations-{split}.csv", dtype={"image_id": str})
        for split in ("train", "val")
    }
    train_samples = sample_table({"train": frames["train"]}, classes, args.data, "image")
    val_samples = sample_table({"val": frames["val"]}, classes, args.data, "image")
    train_ds, val_ds = engine.make_datasets(params, train_samples, val_samples, progress=False)
    timer = EpochTimer()
    with tempfile.TemporaryDirectory(prefix="snackloc-bench-backup-") as backup:
        engine.fit(params, len(classes), train_ds, val_ds, Path(backup), setup, [timer], verbose=0)
    if setup.is_chief:
        steps = train_ds.batches_in_parts(setup.replicas) if setup.cluster else len(train_ds)
        result = {
            "workers": setup.workers,
            "replicas": setup.replicas,
            "strategy": type(setup.strategy).__name__,
            "samples": len(train_samples),
            "steps": steps,
            "epoch_seconds": timer.seconds,
        }
        args.out.write_text(json.dumps(result))


def measure(name: str, workers: int, args: argparse.Namespace, logs: Path) -> dict:
    """Run one configuration in fresh processes; return the chief's figures."""
    from pipeline.ops import multiworker

    out = logs / f"{name}.json"
    command = [sys.executable, __file__, "--role", "worker", "--out", str(out)]
    command += ["--data", str(args.data), "--epochs", str(args.epochs), "--batch", str(args.batch)]
    started = time.perf_counter()
    if workers == 1:
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        codes = [subprocess.call([*command, "--strategy", "default"], env=env)]
    else:
        command += ["--strategy", "multi_worker"]
        codes = multiworker.launch(command, workers, logs / name)
    if any(codes):
        raise SystemExit(f"{name}: workers exited with {codes} (logs in {logs})")
    result = json.loads(out.read_text())
    result["wall_seconds"] = time.perf_counter() - started
    timed = result["epoch_seconds"][1:] or result["epoch_seconds"]
    result["median_epoch"] = statistics.median(timed)
    result["images_per_second"] = result["samples"] / result["median_epoch"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/snackloc-bench-mw-data"))
    parser.add_argument("--images", type=int, default=640, help="training images to generate")
    parser.add_argument("--epochs", type=int, default=4, help="epochs (the first is not timed)")
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--role", default="bench", choices=["bench", "worker"])
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.role == "worker":
        worker(args)
        return

    clean_data(args.data, args.images)
    logs = Path(tempfile.mkdtemp(prefix="snackloc-mw-bench-"))
    cores, load = os.cpu_count(), os.getloadavg()[0]
    print(
        f"{args.images} images, batch {args.batch}, {args.epochs} epochs, {cores} cores, "
        f"load {load:.1f}; logs in {logs}",
        flush=True,
    )
    rows = [measure("one-worker", 1, args, logs), measure("two-workers", 2, args, logs)]
    base = rows[0]["images_per_second"]
    print(f"\nload average after: {os.getloadavg()[0]:.1f} (before: {load:.1f})")
    print(
        "| configuration | processes | replicas | steps/epoch | epoch s (median, timed) "
        "| images/s | ratio | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        epochs = ", ".join(f"{s:.1f}" for s in row["epoch_seconds"])
        print(
            f"| {row['strategy']} | {row['workers']} | {row['replicas']} | {row['steps']} "
            f"| {row['median_epoch']:.1f} ({epochs}) | {row['images_per_second']:.1f} "
            f"| {row['images_per_second'] / base:.2f}x | {row['wall_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
