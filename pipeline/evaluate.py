"""Stage "evaluate": score the trained model on a held-out split (DESIGN.md metrics).

Each evaluated image has one target (the rule of ``loader.select_targets``). Predicted boxes
are clipped to [0, 1] and re-ordered before scoring. Metrics:

- accuracy / top3_accuracy: predicted class vs the target's class;
- mean_iou / median_iou: IoU of the predicted box with the target box (the book's metric);
- iou50_rate: share of images whose predicted box reaches IoU ≥ 0.5 with the target box;
- corloc: share of images whose predicted class is right AND whose box reaches IoU ≥ 0.5 with
  some ground-truth box of that class in the image (the best-matching one);
- baseline: the same figures for always predicting the training set's majority class and
  mean target box, so every number has a reference.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from pipeline import tracking
from pipeline.boxes import clip_and_order, iou
from pipeline.config import Params
from pipeline.dataio import BOX_COLUMNS, read_clean_annotations, read_json, write_csv, write_json
from pipeline.loader import SnackDataset, sample_table
from pipeline.model import load_model
from pipeline.paths import Outputs

log = logging.getLogger(__name__)


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
    best = np.zeros(len(samples))
    for i, (folder, image_id) in enumerate(zip(samples.folder, samples.image_id, strict=True)):
        boxes = groups.get((folder, image_id, classes[pred_class[i]]))
        if boxes is not None:
            best[i] = iou(np.repeat(pred_box[i : i + 1], len(boxes), axis=0), boxes).max()
    return best


def score(
    labels: np.ndarray,
    target_boxes: np.ndarray,
    probs: np.ndarray,
    pred_boxes: np.ndarray,
    same_class_iou: np.ndarray,
) -> dict[str, float]:
    """The headline metrics for one set of predictions."""
    pred_class = probs.argmax(axis=1)
    top3 = np.argsort(-probs, axis=1)[:, :3]
    ious = iou(clip_and_order(pred_boxes), target_boxes)
    correct = pred_class == labels
    return {
        "images": len(labels),
        "accuracy": float(correct.mean()),
        "top3_accuracy": float((top3 == labels[:, None]).any(axis=1).mean()),
        "mean_iou": float(ious.mean()),
        "median_iou": float(np.median(ious)),
        "iou50_rate": float((ious >= 0.5).mean()),
        "corloc": float((correct & (same_class_iou >= 0.5)).mean()),
    }


def predict(model, samples: pd.DataFrame, size: int, batch_size: int):
    """Class probabilities and raw boxes for every sample, in order."""
    data = SnackDataset(samples, image_size=size, batch_size=batch_size, workers=2)
    out = model.predict(data, verbose=0)
    return np.asarray(out["class"], dtype="float64"), np.asarray(out["box"], dtype="float64")


def baseline(
    train: pd.DataFrame, samples: pd.DataFrame, rows: pd.DataFrame, classes: list[str]
) -> dict[str, float]:
    """Majority class and mean target box of the training set, scored like the model."""
    n = len(samples)
    majority = int(train.label.mode().iloc[0])
    probs = np.zeros((n, len(classes)))
    probs[:, majority] = 1.0
    boxes = np.repeat(train[BOX_COLUMNS].to_numpy().mean(axis=0, keepdims=True), n, axis=0)
    same = best_iou_same_class(samples, rows, np.full(n, majority), boxes, classes)
    return score(samples.label.to_numpy(), samples[BOX_COLUMNS].to_numpy(), probs, boxes, same)


def run(params: Params, outputs: Outputs, progress: bool = True) -> dict[str, Any]:
    """Evaluate on ``params.evaluate.split``; write metrics, predictions and plots."""
    from pipeline import plots

    split = params.evaluate.split
    classes = read_json(outputs.classes)["classes"]
    root = params.data.root
    rows = read_clean_annotations(outputs.deduped(split))
    samples = sample_table({split: rows}, classes, root, "image")
    train = sample_table(
        {"train": read_clean_annotations(outputs.deduped("train"))},
        classes,
        root,
        params.train.target,
    )

    model = load_model(outputs.model)
    probs, boxes = predict(model, samples, params.model.image_size, params.evaluate.batch_size)
    pred_class = probs.argmax(axis=1)
    same = best_iou_same_class(samples, rows, pred_class, clip_and_order(boxes), classes)
    labels, targets = samples.label.to_numpy(), samples[BOX_COLUMNS].to_numpy()
    metrics = {
        split: score(labels, targets, probs, boxes, same),
        "baseline": baseline(train, samples, rows, classes),
    }

    predictions = samples[["split", "folder", "image_id", "class_name", *BOX_COLUMNS]].copy()
    predictions["pred_class"] = [classes[i] for i in pred_class]
    predictions["pred_prob"] = probs.max(axis=1)
    for j, col in enumerate(BOX_COLUMNS):
        predictions[f"pred_{col}"] = clip_and_order(boxes)[:, j]
    predictions["iou"] = iou(clip_and_order(boxes), targets)
    write_csv(outputs.predictions, predictions)
    plot_files = plots.evaluation_plots(predictions, classes, outputs.plots_dir)
    write_json(outputs.eval_metrics, metrics)
    log_to_mlflow(params, outputs, metrics, plot_files)
    log.info(
        "%s: accuracy %.3f, mean IoU %.3f, CorLoc %.3f (baseline %.3f / %.3f / %.3f)",
        split,
        metrics[split]["accuracy"],
        metrics[split]["mean_iou"],
        metrics[split]["corloc"],
        metrics["baseline"]["accuracy"],
        metrics["baseline"]["mean_iou"],
        metrics["baseline"]["corloc"],
    )
    return metrics


def log_to_mlflow(params: Params, outputs: Outputs, metrics: dict, plot_files) -> None:
    """Attach metrics, predictions and plots to the training run."""
    import mlflow

    with tracking.resume_run(params, outputs, stage="evaluate"):
        for group, values in metrics.items():
            mlflow.log_metrics({f"{group}_{k}": float(v) for k, v in values.items()})
        mlflow.log_artifact(str(outputs.predictions), artifact_path="evaluation")
        mlflow.log_artifact(str(outputs.eval_metrics), artifact_path="evaluation")
        for path in plot_files:
            mlflow.log_artifact(str(path), artifact_path="evaluation/plots")
