"""The book's two heads and the detector side by side, on the embedded synthetic data or on
real photos.

One process: validate and dedup once, then for each task (``model.task: localize`` and
``detect``) and seed, `train` and `evaluate` into a folder of their own (every model sees the
same images), and one table of the scored split's figures: COCO mAP@.5, mAP@[.5:.95], AR@100
and the class-agnostic recall at IoU >= 0.5 over every ground-truth box (the one-box model
scored as one detection per image), the book's metrics (from each model's one-box answer) and
the training time. Everything else is params.yaml's defaults (random init).

    python bench/detect_compare.py                        # both tasks, seeds 42 and 7
    python bench/detect_compare.py --epochs 10 --seeds 42  # a quicker look

Real photos, as a user would run them: ``--photos`` imports a Pascal VOC folder with
`snackloc data import` (classes: auto) and ``--pretrained`` trains from a Keras MobileNetV2
file (alpha 1.0, 160 px) with the transfer recipe; ``--split val+test`` scores the val and
test images together (a small real set's splits are a few dozen images each):

    python bench/detect_compare.py --photos ../shared/real-photos/raccoon-voc \
        --pretrained ../shared/pretrained/mobilenet_v2_1.0_160_dogs.h5 --split val+test

Helpers (running a stage, merging params, median/range cells) are recipe_compare.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_compare import PRETRAINED_MODEL, ROOT, cell, merge, parse_set, snackloc

from pipeline.core.files import read_json

TASKS = ("localize", "detect")
ROWS = (
    "map50", "map", "ar100", "agnostic_recall50",
    "accuracy", "mean_iou", "iou50_rate", "corloc",
)  # fmt: skip


BOTH = "val+test"  # --split: the val and test images scored together


def task_params(task: str, args: argparse.Namespace, seed: int, epochs: int | None) -> dict:
    """params.yaml with the task, the dataset, the weights and the seed (and --epochs, --set)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    model = {"task": task}
    if args.pretrained:
        model |= {**PRETRAINED_MODEL, "weights": str(args.pretrained.resolve())}
    params = merge(params, {"data": args.data_params, "model": model})
    params["train"]["seed"] = seed
    if epochs:
        params["train"]["epochs"] = epochs
    params["mlflow"] = {"experiment": "bench-detect"}
    return merge(params, args.changes)


def split_scores(folder: Path, split: str, nms: dict | None = None) -> dict[str, float]:
    """The evaluate stage's metrics of a trained model on ``split`` (val+test: both as one
    set), by its own `evaluate_split`; ``nms`` changes a detector's model.detect decoding
    params (max_detections, score_threshold, iou_threshold) without retraining."""
    import keras

    from pipeline.core.config import load_params
    from pipeline.core.paths import Outputs
    from pipeline.data.contract import read_clean_annotations
    from pipeline.model.detect_decode import inference_model
    from pipeline.model.detect_head import CELLS
    from pipeline.model.loader import sample_table  # imports Keras: not for --help
    from pipeline.model.model import input_size, load_model
    from pipeline.stages.evaluate import evaluate_split

    params, outputs = load_params(folder / "params.yaml"), Outputs(folder / "outputs")
    classes = read_json(outputs.classes)["classes"]
    splits = ("val", "test") if split == BOTH else (split,)
    split_rows = {s: read_clean_annotations(outputs.deduped(s)) for s in splits}
    samples = sample_table(split_rows, classes, params.data.root, "image")
    rows = pd.concat(split_rows.values(), ignore_index=True)
    model = load_model(outputs.model)
    if nms:
        cells = keras.Model(model.inputs, {CELLS: model.get_layer("detections").input})
        model = inference_model(cells, params.model.detect.model_copy(update=nms))
    size, batch = input_size(model), params.evaluate.batch_size
    scores = evaluate_split(model, samples, rows, classes, size, batch).metrics
    return {**scores, "images": len(samples)}


def rescore(args: argparse.Namespace) -> str:
    """The trained detectors of the workdir (--seeds) decoded with each --nms setting."""
    settings = [{}, *(parse_set(item.split(",")) for item in args.nms)]
    names = ["as trained", *args.nms]
    lines = ["| seed | decoding | " + " | ".join(ROWS[:4]) + " |", "|---" * 6 + "|"]
    for seed in args.seeds:
        for name, nms in zip(names, settings, strict=True):
            figures = split_scores(args.workdir / f"detect-seed{seed}", args.split, nms)
            cells = " | ".join(f"{figures[row]:.3f}" for row in ROWS[:4])
            lines.append(f"| {seed} | {name} | {cells} |")
    return "\n".join(lines)


def run_task(task: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """Train and evaluate one task with one seed; its test figures and training time."""
    folder = args.workdir / f"{task}-seed{seed}"
    outputs = folder / "outputs"
    shutil.rmtree(folder, ignore_errors=True)
    for stage in ("validate", "dedup"):
        shutil.copytree(args.workdir / "outputs" / stage, outputs / stage)
    params = task_params(task, args, seed, args.epochs)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.perf_counter()
    for stage in ("train", "evaluate"):
        snackloc(stage, "-q", "-p", str(folder / "params.yaml"), "--outputs", str(outputs),
                 cwd=folder, log=folder / f"{stage}.log")  # fmt: skip
    print(f"{task}, seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    if args.split == BOTH:
        figures = split_scores(folder, BOTH)
    else:
        figures = read_json(outputs / "evaluate" / "metrics.json")[args.split]
    train = read_json(outputs / "train" / "metrics.json")
    return {**figures, "train_seconds": train["train_seconds"]}


def multiply_adds(model) -> int:
    """Multiply-adds of one image's forward pass through the model's convolutions and dense
    layers (nested models included): a count that does not depend on the host."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += multiply_adds(layer)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            kernel = layer.kernel.shape  # (kh, kw, in, out) or (kh, kw, in, multiplier)
            _, height, width, _ = layer.output.shape
            total += height * width * int(np.prod(kernel))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def step_times(args: argparse.Namespace, steps: int, rounds: int = 5) -> str:
    """Median seconds per training step of each task, measured in turns (module docstring)."""
    from pipeline.core.config import Params
    from pipeline.core.paths import Outputs
    from pipeline.model import hardware
    from pipeline.model.fit import compile_phase, make_datasets
    from pipeline.model.model import build_model
    from pipeline.model.recipe import head_epochs, plan_phases, set_trainable
    from pipeline.stages.train import load_samples

    steppers = {}
    for task in args.tasks:
        values = task_params(task, args, args.seeds[0], args.epochs)
        values["train"]["cache_images"] = False  # one batch is used: decode no more
        params = Params.model_validate(values)
        setup = hardware.configure(params.train)
        classes, train, val = load_samples(params, Outputs(args.workdir / "outputs"))
        batch = make_datasets(params, train, val, progress=False)[0][0]
        model = build_model(len(classes), params.model)
        phase = plan_phases(params.train.epochs, head_epochs(params))[-1]
        set_trainable(model, phase, params)
        compile_phase(model, model, params, setup, params.train.ema_momentum)
        model.train_on_batch(*batch)  # trace
        steppers[task] = (model, batch)
        print(f"{task}: {multiply_adds(model) / 1e6:.1f} M multiply-adds per image", flush=True)
    seconds: dict[str, list[float]] = {task: [] for task in steppers}
    for _ in range(rounds):
        for task, (model, batch) in steppers.items():
            started = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(*batch)
            seconds[task].append((time.perf_counter() - started) / steps)
    lines = [f"{task}: {np.median(s):.3f} s/step ({min(s):.3f}–{max(s):.3f})"
             for task, s in seconds.items()]  # fmt: skip
    if set(TASKS) <= set(seconds):
        ratio = np.median(seconds["detect"]) / np.median(seconds["localize"])
        lines.append(f"detect / localize step: {ratio:.2f}")
    return "\n".join(lines)


def table(results: dict[str, list[dict]], split: str) -> str:
    """One row per metric, one column per task (median (min–max) over the seeds)."""
    seeds = max(len(runs) for runs in results.values())
    first = next(iter(results.values()))[0]
    lines = [
        f"### {split} split: {int(first['images'])} images, {seeds} seed(s), median (min–max)",
        "",
        "| metric | " + " | ".join(results) + " |",
        "|---" * (len(results) + 1) + "|",
    ]
    for row in (*ROWS, "train_seconds"):
        cells = [cell([run[row] for run in runs], row) for runs in results.values()]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if set(TASKS) <= set(results):
        pairs = zip(results["localize"], results["detect"], strict=False)
        ratio = [d["map50"] / max(lo["map50"], 1e-9) for lo, d in pairs]
        lines += ["", f"detector mAP@.5 / one-box mAP@.5, per seed: {np.round(ratio, 2).tolist()}"]
    return "\n".join(lines)


def dataset(args: argparse.Namespace) -> dict:
    """The data params: --data as it is, or --photos imported into the workdir once."""
    if args.photos is None:
        if not (args.data / "annotations-train.csv").is_file():
            sys.exit(f"no {args.data}/annotations-train.csv: run `make data` first")
        return {"root": str(args.data.resolve())}
    if not args.photos.is_dir():
        sys.exit(f"{args.photos}: no such folder (--photos)")
    data = args.workdir / "data"
    if not (data / "annotations-train.csv").is_file():
        snackloc("data", "import", str(args.photos.resolve()), "--format", "voc",
                 "--out", str(data), cwd=args.workdir, log=args.workdir / "import.log")  # fmt: skip
    return {"root": str(data), "classes": "auto"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".snackloc" / "bench-detect")
    parser.add_argument("--epochs", type=int, default=None, help="default: params.yaml's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7])
    parser.add_argument("--split", default="test", choices=["test", "val", BOTH])
    parser.add_argument(
        "--photos",
        type=Path,
        default=None,
        help="a Pascal VOC folder, imported into the workdir (instead of --data)",
    )
    parser.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        help="a Keras MobileNetV2 file (alpha 1.0, 160 px): the transfer recipe",
    )
    parser.add_argument("--step-time", type=int, default=0, metavar="N",
                        help="measure the training step only: N steps per round")  # fmt: skip
    parser.add_argument("--nms", action="append", default=[], metavar="KEY=VALUE,...",
                        help="rescore the workdir's trained detectors with these model.detect "
                        "decoding params, e.g. iou_threshold=0.6 (no training)")  # fmt: skip
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--set", dest="changes", action="append", default=[],
                        help="a param of both tasks, e.g. train.batch_size=16")  # fmt: skip
    args = parser.parse_args()
    args.changes = parse_set(args.changes)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.data_params = dataset(args)
    if args.pretrained and not args.pretrained.is_file():
        sys.exit(f"{args.pretrained}: pretrained weights not found")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.workdir / 'mlflow.db'}")
    if args.nms:  # the detectors trained before: no stage runs
        print(rescore(args))
        return
    prepare = args.workdir / "params-prepare.yaml"
    prepare.write_text(yaml.safe_dump(task_params("localize", args, 0, None)))
    for stage in ("validate", "dedup"):
        snackloc(stage, "-q", "-p", str(prepare), "--outputs", str(args.workdir / "outputs"),
                 cwd=args.workdir, log=args.workdir / "stages.log")  # fmt: skip
    if args.step_time:
        print(step_times(args, args.step_time))
        return
    results: dict[str, list[dict]] = {task: [] for task in args.tasks}
    for seed in args.seeds:  # seed by seed: each finished seed is a complete comparison
        for task in args.tasks:
            results[task].append(run_task(task, seed, args))
            (args.workdir / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results, args.split)
    (args.workdir / "results.md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
