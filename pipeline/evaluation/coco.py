"""COCO detection metrics (every object of every image), computed by pycocotools.

Definitions are COCO's: ``map`` is AP averaged over IoU 0.50:0.05:0.95 and the classes,
``map50`` AP at IoU 0.5, ``ar100`` recall with up to 100 detections per image averaged over
the same IoUs, and per-class AP at [.5:.95] and .5. Ground truth is every box of the split's
images (``rows``), not the one target box of the book's metrics. Boxes are normalized; they
are scored on a nominal 1000 x 1000 canvas (IoU does not depend on the scale; only COCO's
small/medium/large areas would, and they are not reported).

Also ``agnostic_recall50``: the share of all ground-truth boxes that some detection matches
at IoU >= 0.5 whatever its class, each detection matching at most one box (greedy, best
score first).

A *detection list* per image is (boxes (n, 4) as x_min, x_max, y_min, y_max; scores (n,);
class indices (n,)). The one-box model is scored as a detector with one detection per image:
its box, its predicted class, the class probability as score (``one_box_detections``).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd

from pipeline.data.boxes import clip_and_order, iou
from pipeline.data.contract import BOX_COLUMNS

CANVAS = 1000.0
DETECTION = ("map", "map50", "ar100", "agnostic_recall50")
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCOeval's recThrs
CURVES = ("precision_50", "precision_75", "precision_50_95")


def one_box_detections(probs: np.ndarray, boxes: np.ndarray) -> list[Detections]:
    """The two-head model's answer as one detection per image."""
    boxes = clip_and_order(boxes)
    classes = probs.argmax(axis=1)
    return [
        (boxes[i : i + 1], probs[i, classes[i] : classes[i] + 1], classes[i : i + 1])
        for i in range(len(probs))
    ]


def model_detections(out: dict[str, np.ndarray]) -> list[Detections]:
    """The detections of a model's predict() output: the detector's lists when it has them,
    else the one-box answer."""
    if "boxes" not in out:
        return one_box_detections(np.asarray(out["class"]), np.asarray(out["box"]))
    boxes, scores, classes = (np.asarray(out[k]) for k in ("boxes", "scores", "classes"))
    counts = np.asarray(out["num_detections"]).astype(int)
    return [
        (clip_and_order(boxes[i, :n]), scores[i, :n], classes[i, :n].astype(int))
        for i, n in enumerate(counts)
    ]


def ground_truth(samples: pd.DataFrame, rows: pd.DataFrame, classes: list[str]) -> list:
    """Per sample (image): every box of its image and their class indices."""
    index = {name: i for i, name in enumerate(classes)}
    known = rows[rows.class_name.isin(classes)]
    groups = {key: g for key, g in known.groupby(["folder", "image_id"], sort=False)}
    truth = []
    for key in zip(samples.folder, samples.image_id, strict=True):
        group = groups.get(key)
        if group is None:
            truth.append((np.zeros((0, 4)), np.zeros(0, dtype=int)))
        else:
            labels = group.class_name.map(index).to_numpy(dtype=int)
            truth.append((group[BOX_COLUMNS].to_numpy(dtype="float64"), labels))
    return truth


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    """COCO's [x, y, width, height] on the nominal canvas."""
    b = np.asarray(boxes, dtype="float64") * CANVAS
    return np.stack([b[:, 0], b[:, 2], b[:, 1] - b[:, 0], b[:, 3] - b[:, 2]], 1).tolist()


def _coco_eval(truth: list, detections: list[Detections], num_classes: int):
    """A run pycocotools COCOeval (evaluate + accumulate) of these lists."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image, ((boxes, labels), (dboxes, scores, dlabels)) in enumerate(
        zip(truth, detections, strict=True)
    ):
        images.append({"id": image, "width": CANVAS, "height": CANVAS})
        for box, label in zip(_xywh(boxes), labels, strict=True):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image, "category_id": int(label),
                 "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            )  # fmt: skip
        for box, score, label in zip(_xywh(dboxes), scores, dlabels, strict=True):
            results.append(
                {"image_id": image, "category_id": int(label), "bbox": box, "score": float(score)}
            )
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c} for c in range(num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt.createIndex()
        dt = gt.loadRes(results) if results else COCO()
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def _mean_valid(values: np.ndarray) -> float:
    """Mean over the entries COCO filled in (-1 marks a class without ground truth)."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else 0.0


def coco_scores(
    truth: list, detections: list[Detections], num_classes: int
) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame]:
    """The module's metrics; per class: boxes, AP at [.5:.95] and at .5 (NaN: no box); and
    the precision-recall curves (``precision_recall``)."""
    if not detections or not any(len(d[0]) for d in detections):
        scores = dict.fromkeys(DETECTION, 0.0)
        per_class = pd.DataFrame({"class": range(num_classes), "ap": 0.0, "ap50": 0.0})
        curves = pd.DataFrame({"recall": RECALL_POINTS} | dict.fromkeys(CURVES, 0.0))
        return scores, per_class.assign(boxes=_boxes_per_class(truth, num_classes)), curves
    evaluator = _coco_eval(truth, detections, num_classes)
    # precision: (iou thresholds, recall points, classes, area ranges, max dets); "all", 100
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    recall = evaluator.eval["recall"][:, :, 0, -1]  # (iou thresholds, classes)
    scores = {
        "map": _mean_valid(precision),
        "map50": _mean_valid(precision[0]),
        "ar100": _mean_valid(recall),
        "agnostic_recall50": agnostic_recall(truth, detections),
    }
    per_class = pd.DataFrame(
        {
            "class": range(num_classes),
            "boxes": _boxes_per_class(truth, num_classes),
            "ap": [_mean_valid(precision[:, :, c]) for c in range(num_classes)],
            "ap50": [_mean_valid(precision[0, :, c]) for c in range(num_classes)],
        }
    )
    per_class.loc[per_class.boxes == 0, ["ap", "ap50"]] = np.nan
    return scores, per_class, precision_recall(precision)


def precision_recall(precision: np.ndarray) -> pd.DataFrame:
    """COCO's interpolated precision at its 101 recall points, averaged over the classes:
    at IoU 0.5, at 0.75, and averaged over 0.50:0.95 (the curves under mAP@.5, AP75, mAP)."""
    return pd.DataFrame(
        {
            "recall": RECALL_POINTS,
            "precision_50": [_mean_valid(precision[0, r]) for r in range(len(RECALL_POINTS))],
            "precision_75": [_mean_valid(precision[5, r]) for r in range(len(RECALL_POINTS))],
            "precision_50_95": [_mean_valid(precision[:, r]) for r in range(len(RECALL_POINTS))],
        }
    )


def _boxes_per_class(truth: list, num_classes: int) -> np.ndarray:
    labels = np.concatenate([labels for _, labels in truth]) if truth else np.zeros(0, int)
    return np.bincount(labels.astype(int), minlength=num_classes)


def agnostic_recall(truth: list, detections: list[Detections], threshold: float = 0.5) -> float:
    """Share of ground-truth boxes matched at IoU >= threshold by a detection of any class
    (one box per detection, best score first)."""
    total = sum(len(boxes) for boxes, _ in truth)
    matched = 0
    for (boxes, _), (dboxes, scores, _) in zip(truth, detections, strict=True):
        free = np.ones(len(boxes), dtype=bool)
        for d in np.argsort(-np.asarray(scores), kind="stable"):
            if not free.any():
                break
            overlaps = np.where(free, iou(dboxes[d], boxes), -1.0)
            best = int(np.argmax(overlaps))
            if overlaps[best] >= threshold:
                free[best] = False
                matched += 1
    return matched / total if total else 0.0
