"""Matplotlib figures written as PNG files (they render offline, unlike Vega HTML)."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix(predictions: pd.DataFrame, classes: list[str], path: Path) -> Path:
    """Row-normalized confusion matrix (true class in rows)."""
    index = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)))
    for true, pred in zip(predictions.class_name, predictions.pred_class, strict=True):
        matrix[index[true], index[pred]] += 1
    totals = matrix.sum(axis=1, keepdims=True)
    normalized = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    size = max(6.0, 0.38 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, j in zip(*np.nonzero(matrix), strict=True):
        color = "white" if normalized[i, j] > 0.5 else "black"
        ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_title("confusion matrix (counts; colour = share of the true class)")
    return _save(fig, path)


def iou_histogram(predictions: pd.DataFrame, path: Path) -> Path:
    """Distribution of the IoU between predicted and target boxes."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(predictions.iou, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    ax.axvline(
        predictions.iou.mean(),
        color="black",
        linestyle="--",
        label=f"mean {predictions.iou.mean():.3f}",
    )
    ax.axvline(0.5, color="tab:red", linestyle=":", label="IoU 0.5")
    ax.set_xlabel("IoU with the target box")
    ax.set_ylabel("images")
    ax.legend()
    return _save(fig, path)


def per_class(predictions: pd.DataFrame, classes: list[str], path: Path) -> Path:
    """Accuracy and mean IoU per true class."""
    frame = predictions.assign(correct=predictions.class_name == predictions.pred_class)
    table = frame.groupby("class_name").agg(accuracy=("correct", "mean"), iou=("iou", "mean"))
    table = table.reindex(classes)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.4 * len(classes) + 2), 4))
    x = np.arange(len(classes))
    ax.bar(x - 0.2, table.accuracy, width=0.4, label="accuracy")
    ax.bar(x + 0.2, table.iou, width=0.4, label="mean IoU")
    ax.set_xticks(x, classes, rotation=90)
    ax.set_ylim(0, 1)
    ax.legend()
    return _save(fig, path)


def evaluation_plots(predictions: pd.DataFrame, classes: list[str], out_dir: Path) -> list[Path]:
    """Write every evaluation plot into ``out_dir`` (replaced as a whole when done)."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    confusion_matrix(predictions, classes, tmp / "confusion_matrix.png")
    iou_histogram(predictions, tmp / "iou_histogram.png")
    per_class(predictions, classes, tmp / "per_class.png")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return sorted(out_dir.glob("*.png"))
