"""Compare training recipes on the same data, side by side, through the real stages.

Each recipe is a set of params overrides. For each, the script runs `snackloc train` and
`snackloc evaluate` into its own output folder (reusing the validate and dedup outputs of
the workspace, so every recipe sees exactly the same samples) and prints one table.

    python bench/recipe_compare.py                      # ours vs the book, default params
    python bench/recipe_compare.py --epochs 10 --workdir /tmp/compare

Run it from a project where `dvc repro` (or at least validate + dedup) has run.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

# The book's recipe (chapter 9) on the default backbone and size, so only the recipe
# differs: one sample per CSV row, linear box output and a 512-filter box head, MSE x10, Adam,
# /10 twice, no augmentation. From random init there is nothing to freeze.
RECIPES: dict[str, dict] = {
    "snackloc default": {},
    "book recipe": {
        "train.target": "rows",
        "model.box_output": "linear",
        "model.box_head_filters": 512,
        "train.box_loss": "mse",
        "train.box_loss_weight": 10.0,
        "train.weight_decay": 0.0,
        "train.label_smoothing": 0.0,
        "train.ema_momentum": 0.0,
        "train.learning_rate": 0.001,
        "train.lr_schedule": "step",
        "train.augment.hflip": False,
        "train.augment.crop_scale": [1.0, 1.0],
        "train.augment.color_jitter": 0.0,
        "train.augment.zoom_out": 1.0,
    },
}
HEADLINE = ["accuracy", "top3_accuracy", "mean_iou", "iou50_rate", "iou75_rate", "corloc"]


def override(params: dict, key: str, value) -> None:
    """Set a dotted key (train.augment.hflip) in a nested params dict."""
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[part]
    node[last] = value


def run_recipe(name: str, changes: dict, base: dict, workdir: Path, epochs: int | None) -> dict:
    """Train and evaluate one recipe; return its test metrics and timings."""
    folder = workdir / name.replace(" ", "_")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "outputs").mkdir(parents=True)
    for stage in ("validate", "dedup"):
        shutil.copytree(Path("outputs") / stage, folder / "outputs" / stage)
    params = copy.deepcopy(base)
    for key, value in changes.items():
        override(params, key, value)
    if epochs:
        params["train"]["epochs"] = epochs
        drops = [max(1, epochs // 3 + 1), max(2, 2 * epochs // 3 + 1)]
        params["train"]["lr_drop_epochs"] = drops
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.perf_counter()
    for stage in ("train", "evaluate"):
        log = (folder / f"{stage}.log").open("w")
        command = [  # this interpreter's snackloc, with or without an activated venv
            sys.executable,
            "-m",
            "pipeline",
            stage,
            "-q",
            "-p",
            str(params_file),
            "--outputs",
            str(folder / "outputs"),
        ]
        if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"{name}: {stage} failed, see {folder / f'{stage}.log'}")
    metrics = json.loads((folder / "outputs/evaluate/metrics.json").read_text())
    train = json.loads((folder / "outputs/train/metrics.json").read_text())
    return {
        **metrics["test"],
        "train_seconds": train.get("train_seconds"),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--workdir", type=Path, default=Path(".snackloc/compare"))
    parser.add_argument("--epochs", type=int, default=None, help="same epochs for all")
    args = parser.parse_args()
    base = yaml.safe_load(args.params.read_text())
    results = {
        name: run_recipe(name, changes, base, args.workdir, args.epochs)
        for name, changes in RECIPES.items()
    }
    names = list(results)
    print(f"{'metric (test split)':<22}" + "".join(f"{n:>20}" for n in names))
    for key in [*HEADLINE, "train_seconds", "wall_seconds"]:
        print(f"{key:<22}" + "".join(f"{results[n][key]:>20.3f}" for n in names))
    ours, book = results[names[0]], results[names[1]]
    ratios = ", ".join(f"{k} {ours[k] / book[k]:.2f}x" for k in HEADLINE if book[k])
    print(f"ratios ours/book: {ratios}")


if __name__ == "__main__":
    main()
