"""Seconds the validate stage spends on 100k annotation rows.

Builds snacks-format tables (train/val/test 80/10/10) with about 3 % bad rows of every tabular
kind (text and empty coordinates, out-of-range, inverted and tiny boxes, unknown classes,
path traversal, repeated rows), then times, in one process:

  (a) importing Great Expectations and creating its ephemeral context (once per stage run);
  (b) the tabular path: table_frame, both GX suites with COMPLETE results (every failing row
      index comes back), the findings and the clean and quarantine frames;
  (c) building the Data Docs HTML;
  (d) the whole stage (``validate.run``) on the same rows pointing at --images small JPEGs:
      image checks on both cores, Data Docs, contact sheets, every file written.

Usage (~1 min on 2 cores):
  .venv/bin/python bench/validate_bench.py [--rows 100000] [--images 1000] [--bad 0.03]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.config import SNACK_CLASSES, DataParams, Params, ValidateParams
from pipeline.core.paths import Outputs
from pipeline.data.contract import ANNOTATION_COLUMNS, SPLITS
from pipeline.data.quality import expectations
from pipeline.data.quality.checks import Findings, clean_frame, quarantine_frame
from pipeline.stages import validate

SHARES = {"train": 0.8, "val": 0.1, "test": 0.1}
BAD_KINDS = ("text", "empty", "range", "inverted", "tiny", "class", "traversal", "repeat")


def make_rows(n: int, images: int, bad: float, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` annotation rows as text over ``images`` image ids; a share ``bad`` damaged."""
    x0, y0 = rng.uniform(0.0, 0.5, n), rng.uniform(0.0, 0.5, n)
    x1, y1 = x0 + rng.uniform(0.1, 0.5, n), y0 + rng.uniform(0.1, 0.5, n)
    image = rng.integers(0, images, n)
    classes = np.array(SNACK_CLASSES)[image % len(SNACK_CLASSES)]
    frame = pd.DataFrame(
        {
            "image_id": [f"{i:016x}" for i in image],
            "x_min": [f"{v:.4f}" for v in x0],
            "x_max": [f"{v:.4f}" for v in x1],
            "y_min": [f"{v:.4f}" for v in y0],
            "y_max": [f"{v:.4f}" for v in y1],
            "class_name": classes,
            "folder": classes,
        },
        columns=ANNOTATION_COLUMNS,
    )
    damaged = rng.choice(n, int(n * bad), replace=False)
    for kind, rows in zip(BAD_KINDS, np.array_split(damaged, len(BAD_KINDS)), strict=True):
        damage(frame, kind, rows)
    return frame


def damage(frame: pd.DataFrame, kind: str, rows: np.ndarray) -> None:
    if kind == "text":
        frame.loc[rows, "x_min"] = "n/a"
    elif kind == "empty":
        frame.loc[rows, "y_max"] = ""
    elif kind == "range":
        frame.loc[rows, "x_max"] = "1.25"
    elif kind == "inverted":
        frame.loc[rows, ["y_min", "y_max"]] = frame.loc[rows, ["y_max", "y_min"]].to_numpy()
    elif kind == "tiny":
        frame.loc[rows, "x_max"] = (
            frame.loc[rows, "x_min"].astype(float).add(0.001).map("{:.4f}".format)
        )
    elif kind == "class":
        frame.loc[rows, "class_name"] = "sandwich"
    elif kind == "traversal":
        frame.loc[rows, "image_id"] = "../../etc/passwd"
    elif kind == "repeat":
        frame.loc[rows, :] = frame.loc[rows - 1 if rows.min() > 0 else rows].to_numpy()


def split_rows(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    bounds = np.cumsum([0, *(int(len(frame) * SHARES[s]) for s in SPLITS)])
    bounds[-1] = len(frame)
    return {
        split: frame.iloc[lo:hi].reset_index(drop=True)
        for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:], strict=True)
    }


def timed(label: str, results: list, func, *args):
    start = time.perf_counter()
    value = func(*args)
    results.append((label, time.perf_counter() - start))
    return value


def tabular(raw: dict[str, pd.DataFrame]) -> tuple[int, expectations.SuiteRunner]:
    """What validate.run does with the tables (no images): the bad row count, the runner."""
    tables = {split: expectations.table_frame(frame) for split, frame in raw.items()}
    # a fresh context: suite names are unique per context
    runner = expectations.SuiteRunner(expectations.run_identity(tables, "bench"))
    findings = Findings()
    findings.add_gx(
        runner.run("annotations", expectations.annotation_rules(ValidateParams()), tables)
    )
    findings.add_gx(runner.run("classes", expectations.class_rules(list(SNACK_CLASSES)), tables))
    for split in SPLITS:
        clean_frame(tables[split], findings.bad_rows(split))
    quarantine_frame(raw, findings, list(ANNOTATION_COLUMNS))
    return len(findings.rows), runner


def write_dataset(root: Path, raw: dict[str, pd.DataFrame], rng: np.random.Generator) -> None:
    """The CSVs, and one small JPEG per distinct (split, folder, image_id)."""
    root.mkdir(parents=True)
    for split, frame in raw.items():
        frame.to_csv(root / f"annotations-{split}.csv", index=False)
        for folder, image_id in (
            frame[["folder", "image_id"]].drop_duplicates().itertuples(index=False)
        ):
            if "/" in image_id or not folder:
                continue
            path = root / split / folder / f"{image_id}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).resize((160, 120), Image.Resampling.BILINEAR).save(
                path, quality=85
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--bad", type=float, default=0.03)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    raw = split_rows(make_rows(args.rows, args.images, args.bad, rng))
    results: list[tuple[str, float]] = []

    timed("(a) import GX + ephemeral context", results, expectations.SuiteRunner)
    warm_up = {split: frame.head(10) for split, frame in raw.items()}
    timed("    first tabular run, 10 rows (GX warms up)", results, tabular, warm_up)
    bad, runner = timed(f"(b) tabular checks, {args.rows} rows", results, tabular, raw)
    with tempfile.TemporaryDirectory() as tmp:
        timed("(c) Data Docs HTML of (b)", results, runner.build_docs, Path(tmp) / "docs")
        root = Path(tmp) / "data"
        write_dataset(root, raw, rng)
        params = Params(data=DataParams(root=root), validate=ValidateParams(max_bad_fraction=1.0))
        report = timed(
            f"(d) validate.run: {args.rows} rows, {args.images} images x 3 splits",
            results,
            validate.run,
            params,
            Outputs(Path(tmp) / "outputs"),
            False,
        )

    share = bad / args.rows
    print(f"validate benchmark: {args.rows} rows, {bad} bad ({share:.1%}), {os.cpu_count()} cpus")
    for label, seconds in results:
        print(f"  {label:<58} {seconds:7.2f} s")
    print(f"  rows/s through (b): {args.rows / results[2][1]:,.0f}")
    quarantined, images = report["rows_quarantined"], report["images_checked"]
    print(f"  (d) quarantined {quarantined} rows, checked {images} images")


if __name__ == "__main__":
    main()
