"""Matplotlib figures written as PNG files (they render offline, unlike Vega HTML).

The galleries draw their boxes with pipeline/evaluation/drawing.py (the book's
``plot_image`` style, as `snackloc predict` does): the prediction solid, the ground truth
dashed.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import ticker

from pipeline.core.files import replaced_dir
from pipeline.data.boxes import to_pixels
from pipeline.data.contract import BOX_COLUMNS, image_path, open_image_rgb
from pipeline.evaluation.drawing import draw_box

PRED_COLUMNS = [f"pred_{col}" for col in BOX_COLUMNS]
GALLERY_SEED = 0  # the "random" gallery is the same on every run
GALLERY_COLUMNS = 4
THUMBNAIL = 320  # longest side of a gallery image, in pixels
SHOWN_SCORE = 0.3  # detections drawn in the gallery of every object (all of them are scored)


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
    mean = predictions.iou.mean()
    ax.axvline(mean, color="black", linestyle="--", label=f"mean {mean:.3f}")
    ax.axvline(0.5, color="tab:red", linestyle=":", label="IoU 0.5")
    ax.axvline(0.75, color="tab:purple", linestyle=":", label="IoU 0.75")
    ax.set_xlabel("IoU with the target box")
    ax.set_ylabel("images")
    ax.set_title(f"IoU of {len(predictions)} {predictions.split.iloc[0]} images")
    ax.legend()
    return _save(fig, path)


def per_class(table: pd.DataFrame, path: Path) -> Path:
    """Accuracy, mean IoU and CorLoc per true class (one split of ``metrics.per_class_table``)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(table) + 2), 4.5))
    x = np.arange(len(table))
    for offset, column in zip((-0.27, 0.0, 0.27), ("accuracy", "mean_iou", "corloc"), strict=True):
        ax.bar(x + offset, table[column].fillna(0), width=0.27, label=column)
    labels = [f"{name} ({n})" for name, n in zip(table.class_name, table.images, strict=True)]
    ax.set_xticks(x, labels, rotation=90)
    ax.set_ylim(0, 1)
    ax.set_title("per class (images in brackets)")
    ax.legend(ncols=3, loc="upper right")
    return _save(fig, path)


CURVE_ORDER = ("loss", "class_loss", "box_loss", "class_accuracy", "box_mean_iou")


def training_curves(history: pd.DataFrame, path: Path) -> Path:
    """Training and validation curves of every metric in the history, one panel each."""
    names = [c for c in history.columns if c != "epoch" and not c.startswith("val_")]
    rank = {name: i for i, name in enumerate(CURVE_ORDER)}
    # Losses first, then the metrics, anything else, and the learning rate last.
    names.sort(key=lambda n: (n == "learning_rate", rank.get(n, len(rank))))
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        ax.plot(history.epoch, history[name], marker=".", label="train")
        if f"val_{name}" in history:
            ax.plot(history.epoch, history[f"val_{name}"], marker=".", label="val")
            ax.legend()
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        if name == "learning_rate":
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    return _save(fig, path)


def pick_gallery(predictions: pd.DataFrame, count: int) -> dict[str, pd.DataFrame]:
    """Best, worst and random predictions; quality = IoU, plus 1 when the class is right."""
    quality = predictions.iou + predictions.correct.astype(float)
    order = quality.sort_values(kind="stable").index
    count = min(count, len(predictions))
    rng = np.random.default_rng(GALLERY_SEED)
    return {
        "best": predictions.loc[order[::-1][:count]],
        "worst": predictions.loc[order[:count]],
        "random": predictions.loc[np.sort(rng.choice(predictions.index, count, replace=False))],
    }


def _thumbnails(picks: pd.DataFrame, data_root: Path):
    """A grid figure with a slot per pick, and (axes, index, row, thumbnail) per pick."""
    cols = min(GALLERY_COLUMNS, len(picks))
    rows = math.ceil(len(picks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.5 * rows), squeeze=False)

    def slots():
        for ax, (index, row) in zip(axes.flat, picks.iterrows(), strict=False):
            image = open_image_rgb(image_path(data_root, row.split, row.folder, row.image_id))
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            yield ax, index, row, image

    return fig, slots()


def _save_grid(fig, title: str, path: Path) -> Path:
    for ax in fig.axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def gallery(picks: pd.DataFrame, data_root: Path, title: str, path: Path) -> Path:
    """A grid of images with their ground-truth (dashed) and predicted (solid) boxes."""
    fig, slots = _thumbnails(picks, data_root)
    for ax, _, row, image in slots:
        truth = to_pixels(row[BOX_COLUMNS].to_numpy(float), *image.size)
        draw_box(image, truth, row.class_name, dashed=True)
        guess = to_pixels(row[PRED_COLUMNS].to_numpy(float), *image.size)
        draw_box(image, guess, f"{row.pred_class} {row.pred_prob:.2f}", label_below=True)
        ax.imshow(image)
        mark = "right" if row.correct else "wrong"
        ax.set_title(f"{row.image_id}\nIoU {row.iou:.2f}, class {mark}", fontsize=9)
    return _save_grid(fig, f"{title} — dashed: ground truth, solid: prediction", path)


def evaluation_plots(
    predictions: pd.DataFrame,
    per_class_table: pd.DataFrame,
    classes: list[str],
    history: pd.DataFrame | None,
    data_root: Path,
    out_dir: Path,
    gallery_images: int = 8,
    curves: pd.DataFrame | None = None,
    objects: tuple[list, list] | None = None,
) -> list[Path]:
    """Write every evaluation plot of one split into ``out_dir`` (replaced as a whole):
    with ``curves`` (coco.precision_recall) the precision-recall plot, with ``objects`` (per
    prediction row: every ground-truth box, every detection) a gallery of every object."""
    split = predictions.split.iloc[0]
    with replaced_dir(out_dir) as tmp:
        confusion_matrix(predictions, classes, tmp / "confusion_matrix.png")
        iou_histogram(predictions, tmp / "iou_histogram.png")
        per_class(per_class_table, tmp / "per_class.png")
        if history is not None and len(history):
            training_curves(history, tmp / "training_curves.png")
        if curves is not None:
            precision_recall(curves, f"{split} split", tmp / "precision_recall.png")
        picks = pick_gallery(predictions, gallery_images)
        for kind, rows in picks.items():
            gallery(rows, data_root, f"{kind} {split} predictions", tmp / f"gallery_{kind}.png")
        if objects is not None:
            title = f"every object, random {split} images"
            object_gallery(picks["random"], *objects, classes, data_root, title,
                           tmp / "gallery_objects.png")  # fmt: skip
    return sorted(out_dir.glob("*.png"))


def precision_recall(curves: pd.DataFrame, title: str, path: Path) -> Path:
    """COCO's precision-recall curves (class-averaged) at IoU 0.5, 0.75 and 0.5:0.95; the
    area under each is its mAP."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for column, label in (("precision_50", "IoU 0.50"), ("precision_75", "IoU 0.75"),
                          ("precision_50_95", "IoU 0.50:0.95")):  # fmt: skip
        area = curves[column].mean()  # COCO's AP: the mean over its 101 recall points
        ax.plot(curves.recall, curves[column], label=f"{label} (AP {area:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"precision-recall, {title} (mean over classes)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    return _save(fig, path)


def object_gallery(
    picks: pd.DataFrame,
    truth: list,
    detections: list,
    classes: list[str],
    data_root: Path,
    title: str,
    path: Path,
) -> Path:
    """A grid of images with every ground-truth box (dashed) and every detection scored at
    least ``SHOWN_SCORE`` (solid, the weakest drawn first); ``truth`` and ``detections`` are
    indexed like the rows."""
    fig, slots = _thumbnails(picks, data_root)
    for ax, index, row, image in slots:
        boxes, labels = truth[index]
        for box, label in zip(boxes, labels, strict=True):
            draw_box(image, to_pixels(box, *image.size), classes[label], dashed=True)
        found, scores, found_labels = (
            d[detections[index][1] >= SHOWN_SCORE] for d in detections[index]
        )
        for box, score, label in list(zip(found, scores, found_labels, strict=True))[::-1]:
            draw_box(image, to_pixels(box, *image.size), f"{classes[label]} {score:.2f}",
                     label_below=True)  # fmt: skip
        ax.imshow(image)
        ax.set_title(f"{row.image_id}\nobjects: {len(boxes)}, detections: {len(found)}", fontsize=9)
    shown = f"solid: detections with score ≥ {SHOWN_SCORE}"
    return _save_grid(fig, f"{title} — dashed: ground truth, {shown}", path)
