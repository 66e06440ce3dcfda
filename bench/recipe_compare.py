"""Training recipes side by side, on real photos and on the synthetic set, through the stages.

For each dataset the script runs validate and dedup once, then for each recipe `train` and
`evaluate` into a folder of its own (so every recipe sees exactly the same images), and
prints one table: the trivial baseline (majority class, mean training box), random init
with the defaults, a pretrained backbone with the transfer recipe, and the book's recipe
(params-book.yaml) from the same pretrained file. Scores are over the val and test splits
together (more images, steadier figures); training seconds come from the train stage.

    python bench/recipe_compare.py                              # both datasets, every recipe
    python bench/recipe_compare.py --datasets photos --epochs 20   # a quicker look
    python bench/recipe_compare.py --datasets photos --recipes transfer --seeds 42 7 1

With several seeds every trained recipe runs once per seed, and each cell reads
"median (min–max)": one run says little when the CPU's rounding and the seed alone move a
small real set's mean IoU by 0.09. ``--set train.batch_size=16`` changes a param of every
trained recipe (to try a change side by side with the defaults, use two workdirs).

Real photos: a Pascal VOC folder (default ../shared/real-photos/raccoon-voc), imported with
`snackloc data import` as a user would. Pretrained weights: a Keras MobileNetV2 file
(default ../shared/pretrained/mobilenet_v2_1.0_160_dogs.h5, alpha 1.0, 160 px), the offline
stand-in for `model.weights: imagenet`. A dataset whose files are missing is skipped with a
message. Everything is written under --workdir, MLflow runs included.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.files import read_json  # noqa: E402
from pipeline.core.paths import Outputs  # noqa: E402
from pipeline.data.contract import read_clean_annotations  # noqa: E402

SHARED = ROOT.parent / "shared"
EVAL_SPLITS = ("val", "test")
# The pretrained file's backbone: the four model params that select and load it.
PRETRAINED_MODEL = {"backbone": "mobilenet_v2", "alpha": 1.0, "image_size": 160}
RECIPES = (
    "random init (defaults)",
    "pretrained, transfer recipe",
    "pretrained, transfer recipe, pooled head",  # the grid head's alternative (real photos)
    "book recipe, pretrained",
)
SHORT_NAMES = dict(zip(("random", "transfer", "pooled", "book"), RECIPES, strict=True))
# Asked of real photos only: the synthetic set would add half an hour of CPU for it.
PHOTOS_ONLY = {"pretrained, transfer recipe, pooled head"}
ROWS = (
    "accuracy", "top3_accuracy", "mean_iou", "median_iou", "iou50_rate", "iou75_rate", "corloc",
    "train_box_iou",
)  # fmt: skip


def merge(params: dict, changes: dict) -> dict:
    """``params`` with nested ``changes`` applied (a copy)."""
    out = copy.deepcopy(params)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set(items: list[str]) -> dict:
    """``--set a.b=value`` pairs as nested params changes (values read as YAML)."""
    changes: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--set {item}: expected key=value, e.g. train.batch_size=16")
        *parents, leaf = key.split(".")
        node = changes
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return changes


def recipe_params(name: str, data: dict, pretrained: Path, epochs: int | None) -> dict:
    """Full params of one recipe: params.yaml (or the book's overrides) plus the dataset."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    model = {**PRETRAINED_MODEL, "weights": str(pretrained)}
    if name == "random init (defaults)":
        params = merge(base, {"data": data})
    elif name == "pretrained, transfer recipe":
        params = merge(base, {"data": data, "model": model})
    elif name == "pretrained, transfer recipe, pooled head":
        params = merge(base, {"data": data, "model": {**model, "box_head": "pooled"}})
    else:  # the book's settings, on the pretrained file's backbone
        book = yaml.safe_load((ROOT / "params-book.yaml").read_text())
        params = merge(merge(base, book), {"data": data, "model": model})
    if epochs and name != "book recipe, pretrained":  # the book's schedule is its 15 epochs
        params["train"]["epochs"] = epochs
    return params


def snackloc(*args: str, cwd: Path, log: Path) -> None:
    """Run one `snackloc` command with this interpreter; stop the benchmark if it fails."""
    with log.open("a") as out:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", *args], cwd=cwd, stdout=out, stderr=out
        )
    if done.returncode:
        sys.exit(f"snackloc {' '.join(args)} failed, see {log}")


def prepare(name: str, args: argparse.Namespace, work: Path) -> dict | None:
    """The dataset's data params, its data imported if need be; None when it is missing."""
    if name == "synthetic":
        if not (args.synthetic / "annotations-train.csv").is_file():
            print(f"skipping synthetic: no {args.synthetic}/annotations-train.csv (make data)")
            return None
        return {"root": str(args.synthetic.resolve()), "classes": "snacks"}
    if not args.photos.is_dir():
        print(f"skipping photos: {args.photos} not found")
        return None
    data = work / "data"
    if not (data / "annotations-train.csv").is_file():
        work.mkdir(parents=True, exist_ok=True)
        snackloc(
            "data", "import", str(args.photos.resolve()), "--format", "voc", "--out", str(data),
            cwd=work, log=work / "import.log",
        )  # fmt: skip
    return {"root": str(data.resolve()), "classes": "auto"}


def scores(folder: Path, data: dict) -> dict[str, float]:
    """Headline metrics over the val and test splits together, from the per-image table.

    Top-3 accuracy is not in that table: it is the image-weighted mean of the two splits."""
    predictions = pd.read_csv(folder / "evaluate" / "predictions.csv")
    predictions = predictions[predictions.split.isin(EVAL_SPLITS)]
    split_metrics = read_json(folder / "evaluate" / "metrics.json")
    weights = [split_metrics[s]["images"] for s in EVAL_SPLITS]
    top3 = np.average([split_metrics[s]["top3_accuracy"] for s in EVAL_SPLITS], weights=weights)
    iou = predictions.iou.to_numpy()
    correct = predictions.correct.to_numpy(dtype=bool)
    return {
        "images": len(predictions),
        "accuracy": float(correct.mean()),
        "top3_accuracy": float(top3),
        "mean_iou": float(iou.mean()),
        "median_iou": float(np.median(iou)),
        "iou50_rate": float((iou >= 0.5).mean()),
        "iou75_rate": float((iou >= 0.75).mean()),
        "corloc": float((correct & (predictions.same_class_iou >= 0.5)).mean()),
        # how well the box head fits its own (augmented) training photos, last epoch
        "train_box_iou": float(
            pd.read_csv(folder / "train" / "history.csv")["box_mean_iou"].iloc[-1]
        ),
        "train_seconds": read_json(folder / "train" / "metrics.json")["train_seconds"],
    }


def baseline_scores(params_file: Path, outputs: Outputs) -> dict[str, float]:
    """The trivial baseline on the same val and test images (as the evaluate stage scores it
    on each split)."""
    from pipeline.core.config import load_params
    from pipeline.evaluation import metrics
    from pipeline.model.loader import sample_table  # imports Keras: not for --help

    params = load_params(params_file)
    classes = read_json(outputs.classes)["classes"]
    train_rows = {"train": read_clean_annotations(outputs.deduped("train"))}
    train = sample_table(train_rows, classes, params.data.root, params.train.target)
    rows = {split: read_clean_annotations(outputs.deduped(split)) for split in EVAL_SPLITS}
    evaluated = sample_table(rows, classes, params.data.root, "image")
    all_rows = pd.concat(rows.values(), ignore_index=True)
    base = metrics.baseline(train, evaluated, all_rows, classes)
    return {**base, "train_box_iou": float("nan"), "train_seconds": 0.0}


def finished(folder: Path, params_text: str) -> bool:
    """Whether ``folder`` holds an evaluated run of exactly these params."""
    params_file = folder / "params.yaml"
    evaluated = folder / "outputs" / "evaluate" / "metrics.json"
    return evaluated.is_file() and params_file.is_file() and params_file.read_text() == params_text


def run_recipe(recipe: str, seed: int, name: str, data: dict, args, shared: Outputs) -> dict:
    """Train and evaluate one recipe with one seed in a folder of its own; its scores."""
    slug = re.sub(r"[^a-z0-9]+", "-", recipe).strip("-")
    folder = args.workdir / name / f"{slug}-seed{seed}"
    outputs = folder / "outputs"
    params = merge(recipe_params(recipe, data, args.pretrained, args.epochs), args.changes)
    params["train"]["seed"] = seed
    params["mlflow"] = {"experiment": f"bench-{name}"}
    text = yaml.safe_dump(params, sort_keys=False)
    if args.resume and finished(folder, text):
        print(f"{name}: {recipe}, seed {seed} kept from an earlier run", flush=True)
        return scores(outputs, data)
    shutil.rmtree(folder, ignore_errors=True)
    for stage in ("validate", "dedup"):
        shutil.copytree(shared.root / stage, outputs / stage)
    (folder / "params.yaml").write_text(text)
    started = time.perf_counter()
    for stage in ("train", "evaluate"):
        snackloc(stage, "-q", "-p", str(folder / "params.yaml"), "--outputs", str(outputs),
                 cwd=folder, log=folder / f"{stage}.log")  # fmt: skip
    print(f"{name}: {recipe}, seed {seed} done in {time.perf_counter() - started:.0f} s",
          flush=True)  # fmt: skip
    return scores(outputs, data)


def run_dataset(name: str, args: argparse.Namespace) -> dict[str, list[dict]] | None:
    """Every recipe on one dataset, once per seed; their scores by recipe name."""
    work = args.workdir / name
    data = prepare(name, args, work)
    if data is None:
        return None
    work.mkdir(parents=True, exist_ok=True)
    shared = Outputs(work / "outputs")
    first = work / "params-prepare.yaml"
    first.write_text(yaml.safe_dump(recipe_params(RECIPES[0], data, args.pretrained, args.epochs)))
    for stage in ("validate", "dedup"):
        snackloc(stage, "-q", "-p", str(first), "--outputs", str(shared.root), cwd=work,
                 log=work / "stages.log")  # fmt: skip
    results = {"trivial baseline": [baseline_scores(first, shared)]}
    for recipe in (r for r in args.recipes if name == "photos" or r not in PHOTOS_ONLY):
        results[recipe] = [
            run_recipe(recipe, seed, name, data, args, shared) for seed in args.seeds
        ]
    return results


def cell(values: list[float], row: str) -> str:
    """One figure, or "median (min–max)" over seeds."""
    digits = 0 if row == "train_seconds" else 3
    if len(values) == 1:
        return "—" if np.isnan(values[0]) else f"{values[0]:.{digits}f}"
    low, mid, high = np.min(values), np.median(values), np.max(values)
    return f"{mid:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def table(name: str, results: dict[str, dict]) -> str:
    """A markdown table: one row per metric, one column per recipe."""
    names = list(results)
    images = results[names[0]][0]["images"]
    seeds = max(len(runs) for runs in results.values())
    spread = f", {seeds} seeds: median (min–max)" if seeds > 1 else ""
    lines = [
        f"### {name} (val + test: {images} images{spread})",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for row in (*ROWS, "train_seconds"):
        cells = [cell([run[row] for run in results[n]], row) for n in names]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["photos", "synthetic"],
                        choices=["photos", "synthetic"])  # fmt: skip
    parser.add_argument("--photos", type=Path, default=SHARED / "real-photos" / "raccoon-voc")
    parser.add_argument(
        "--pretrained", type=Path,
        default=SHARED / "pretrained" / "mobilenet_v2_1.0_160_dogs.h5",
    )  # fmt: skip
    parser.add_argument("--synthetic", type=Path, default=ROOT / "data")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".snackloc" / "bench-recipes")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the trained recipes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="train.seed values")
    parser.add_argument(
        "--recipes", nargs="+", choices=list(SHORT_NAMES), default=list(SHORT_NAMES)
    )
    parser.add_argument(
        "--set", dest="changes", action="append", default=[],
        help="a param of every trained recipe, e.g. train.batch_size=16",
    )  # fmt: skip
    parser.add_argument(
        "--resume", action="store_true",
        help="keep recipes this workdir already trained and evaluated with the same params",
    )  # fmt: skip
    args = parser.parse_args()
    args.recipes = [SHORT_NAMES[short] for short in args.recipes]
    args.changes = parse_set(args.changes)
    if not args.pretrained.is_file():
        sys.exit(f"{args.pretrained}: pretrained weights not found (see --pretrained)")
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.workdir / 'mlflow.db'}")
    for name in args.datasets:
        results = run_dataset(name, args)
        if results is None:
            continue
        (args.workdir / f"{name}.json").write_text(json.dumps(results, indent=1))
        (args.workdir / f"{name}.md").write_text(table(name, results) + "\n")
        print("\n" + table(name, results) + "\n", flush=True)
    # Every dataset measured so far in this workdir (a run may have done only one).
    tables = [args.workdir / f"{n}.md" for n in ("photos", "synthetic")]
    report = "\n".join(t.read_text() for t in tables if t.is_file())
    (args.workdir / "results.md").write_text(report)
    print(f"tables: {args.workdir / 'results.md'}")


if __name__ == "__main__":
    main()
