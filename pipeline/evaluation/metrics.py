"""Evaluation metrics, as defined below, as plain functions of arrays and tables.

Each evaluated image has one target box (the rule of ``loader.select_targets``). Predicted
boxes are clipped to [0, 1] and re-ordered before scoring.

- accuracy / top3_accuracy: predicted class vs the target's class;
- mean_iou / median_iou: IoU of the predicted box with the target box (the book's metric);
- iou50_rate / iou75_rate: share of images whose predicted box reaches IoU ≥ 0.5 / ≥ 0.75
  with the target box;
- corloc: share of images whose predicted class is right AND whose box reaches IoU ≥ 0.5
  with a ground-truth box of that class in the image (the best-matching one when there are
  several);
- baseline: the same figures for always predicting the training set's majority class and
  mean target box, so every number has a reference.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.data.boxes import clip_and_order, iou
from pipeline.data.contract import BOX_COLUMNS

HEADLINE = (
    "accuracy", "top3_accuracy", "mean_iou", "median_iou", "iou50_rate", "iou75_rate", "corloc",
)  # fmt: skip


def best_iou_same_class(
    samples: pd.DataFrame,
    rows: pd.DataFrame,
    pred_class: np.ndarray,
    pred_box: np.ndarray,
    classes: list[str],
) -> np.ndarray:
    """Per sample: best IoU of the predicted box with any ground-truth box of the predicted
    class on the same image (0 if the image has none of that class)."""
    groups = {
        key: g[BOX_COLUMNS].to_numpy()
        for key, g in rows.groupby(["folder", "image_id", "class_name"], sort=False)
    }
    pred_box = clip_and_order(pred_box)
    best = np.zeros(len(samples))
    for i, (folder, image_id) in enumerate(zip(samples.folder, samples.image_id, strict=True)):
        boxes = groups.get((folder, image_id, classes[pred_class[i]]))
        if boxes is not None:
            best[i] = iou(pred_box[i], boxes).max()
    return best


def score(
    labels: np.ndarray,
    target_boxes: np.ndarray,
    probs: np.ndarray,
    pred_boxes: np.ndarray,
    same_class_iou: np.ndarray,
) -> dict[str, float]:
    """The headline metrics (module docstring) for one set of predictions."""
    labels = np.asarray(labels)
    pred_class = probs.argmax(axis=1)
    top3 = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    ious = iou(clip_and_order(pred_boxes), target_boxes)
    correct = pred_class == labels
    return {
        "images": len(labels),
        "accuracy": float(correct.mean()),
        "top3_accuracy": float((top3 == labels[:, None]).any(axis=1).mean()),
        "mean_iou": float(ious.mean()),
        "median_iou": float(np.median(ious)),
        "iou50_rate": float((ious >= 0.5).mean()),
        "iou75_rate": float((ious >= 0.75).mean()),
        "corloc": float((correct & (np.asarray(same_class_iou) >= 0.5)).mean()),
    }


def baseline(
    train: pd.DataFrame, samples: pd.DataFrame, rows: pd.DataFrame, classes: list[str]
) -> dict[str, float]:
    """Majority class and mean target box of the training set, scored like the model."""
    n = len(samples)
    probs, boxes = baseline_answer(train, n, len(classes))
    same = best_iou_same_class(samples, rows, probs.argmax(axis=1), boxes, classes)
    return score(samples.label.to_numpy(), samples[BOX_COLUMNS].to_numpy(), probs, boxes, same)


def baseline_answer(train: pd.DataFrame, n: int, num_classes: int) -> tuple[np.ndarray, ...]:
    """The trivial baseline's class probabilities and boxes for ``n`` images: the training
    set's majority class (probability 1) and mean target box."""
    probs = np.zeros((n, num_classes))
    probs[:, int(train.label.mode().iloc[0])] = 1.0
    boxes = np.repeat(train[BOX_COLUMNS].to_numpy().mean(axis=0, keepdims=True), n, axis=0)
    return probs, boxes


def clears(value: float, reference: float, margin: float) -> bool:
    """Whether ``value`` beats ``reference`` by more than 0 and by at least ``margin``
    (the rule for the baseline and for the champion alike)."""
    delta = value - reference
    return delta > 0 and delta >= margin


def short_of_baseline(
    scores: dict[str, float], base: dict[str, float], margins: dict[str, float]
) -> list[str]:
    """Metrics of ``margins`` on which a model does not clear the trivial baseline.

    A model that cannot clearly beat "always the majority class and the mean box" has learnt
    nothing usable, whatever its absolute figures; a tie does not count as beating it.
    """
    return [
        name for name, margin in margins.items() if not clears(scores[name], base[name], margin)
    ]


def prediction_table(
    samples: pd.DataFrame,
    classes: list[str],
    probs: np.ndarray,
    pred_boxes: np.ndarray,
    same_class_iou: np.ndarray,
) -> pd.DataFrame:
    """One row per image: target, prediction (box clipped and ordered) and its scores."""
    table = samples[["split", "folder", "image_id", "class_name", *BOX_COLUMNS]].copy()
    pred_class = probs.argmax(axis=1)
    boxes = clip_and_order(pred_boxes)
    table["pred_class"] = [classes[i] for i in pred_class]
    table["pred_prob"] = probs.max(axis=1)
    for j, col in enumerate(BOX_COLUMNS):
        table[f"pred_{col}"] = boxes[:, j]
    table["iou"] = iou(boxes, samples[BOX_COLUMNS].to_numpy())
    table["same_class_iou"] = same_class_iou
    table["correct"] = table.pred_class == table.class_name
    return table.reset_index(drop=True)


def per_class_table(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per split and true class: images, accuracy, mean IoU, IoU≥0.5 rate and CorLoc.

    Classes without images in a split are listed with 0 images and empty figures.
    """
    frame = predictions.assign(
        hit50=predictions.iou >= 0.5,
        corloc=predictions.correct & (predictions.same_class_iou >= 0.5),
    )
    tables = []
    for split, group in frame.groupby("split", sort=False):
        table = group.groupby("class_name").agg(
            images=("image_id", "size"),
            accuracy=("correct", "mean"),
            mean_iou=("iou", "mean"),
            iou50_rate=("hit50", "mean"),
            corloc=("corloc", "mean"),
        )
        table = table.reindex(classes).fillna({"images": 0}).astype({"images": "int64"})
        tables.append(table.rename_axis("class_name").reset_index().assign(split=split))
    table = pd.concat(tables, ignore_index=True)
    return table[["split", "class_name", "images", "accuracy", "mean_iou", "iou50_rate", "corloc"]]
