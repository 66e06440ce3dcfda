"""Stage "review": rank every annotation row of the held-out splits by how likely it is wrong.

The trained model did not train on ``review.splits`` (val and test), so its class
probabilities and box there are honest evidence against a label; they are scored together in
one pool (pipeline/evaluation/review.py explains the scores and which rows the model can
judge). The train split's own predictions would agree with its mistakes: with
``review.folds``, it is scored in a pool of its own from out-of-fold heads on the trained
backbone's features (pipeline/model/crossval.py).

Writes, under outputs/review/:
- review.csv: every row (and every image whose object looks unboxed), most suspect first,
  with ``kind`` (class | box | overlooked | not_judged), ``score`` and the suggested class/box;
- gallery.png: the top suspects, given box dashed, suggested box solid;
- report.json: counts per kind among the top suspects, and, when data/defects.json records
  injected label noise, the share of each kind found in twice as many suspects as injected
  and the precision at that cut (the DVC metrics file).

Everything is also attached to the training run in MLflow.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.config import Params
from pipeline.core.errors import UserError
from pipeline.core.files import read_json, write_csv, write_json
from pipeline.core.paths import Outputs
from pipeline.data.boxes import iou
from pipeline.data.contract import BOX_COLUMNS, MANIFEST_NAME, read_clean_annotations
from pipeline.evaluation import coco, review
from pipeline.integrations import tracking
from pipeline.model import crossval
from pipeline.model.detect_head import is_detector
from pipeline.model.loader import SnackDataset, sample_table, select_targets
from pipeline.model.model import input_size, load_model

log = logging.getLogger(__name__)


def load_rows(outputs: Outputs, classes: list[str], splits: list[str]) -> pd.DataFrame:
    """The deduplicated rows of ``splits``, with ``split`` and ``target`` columns."""
    frames = []
    for split in splits:
        frame = read_clean_annotations(outputs.deduped(split))
        frames.append(frame[frame.class_name.isin(classes)].assign(split=split))
    rows = pd.concat(frames, ignore_index=True)
    if rows.empty:
        raise UserError(f"no rows left to review in {', '.join(splits)}")
    chosen = select_targets(rows.assign(_at=rows.index))["_at"]
    return rows.assign(target=rows.index.isin(chosen))


def predict(
    params: Params, model: keras.Model, rows: pd.DataFrame, classes: list[str], folds: int = 0
):
    """One sample per image (with its pixel size), class probabilities and boxes: the
    model's own, or with ``folds`` out-of-fold heads' (pipeline/model/crossval.py); and a
    detector's every object (``coco.model_detections``; None for the two heads)."""
    parts = {
        s: rows[rows.split == s].drop(columns=["split", "target"]) for s in rows.split.unique()
    }
    samples = sample_table(parts, classes, params.data.root, "image")
    data = SnackDataset(
        samples, image_size=input_size(model), batch_size=params.review.batch_size, workers=2
    )
    if folds:
        train = params.train
        loss = {
            "learning_rate": train.learning_rate,
            "box_loss_weight": train.box_loss_weight,
            "box_loss": train.box_loss,
        }
        out = crossval.out_of_fold(model, data, folds, params.review.fold_epochs, train.seed, loss)
    else:
        out = model.predict(data, verbose=0)
    sizes = [Image.open(path).size for path in samples.path]  # the header only
    images = samples[["split", "folder", "image_id"]].assign(
        width=[w for w, _ in sizes], height=[h for _, h in sizes]
    )
    probs = np.asarray(out["class"], dtype="float64")
    detections = coco.model_detections(out) if is_detector(model) else None
    return images.reset_index(drop=True), probs, np.asarray(out["box"], "float64"), detections


def noise_figures(ranked: pd.DataFrame, root: Path) -> dict[str, Any]:
    """Recall per injected noise kind at twice the injected count, and precision there."""
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        return {}
    splits = set(ranked.split)
    noise = [
        entry
        for entry in read_json(manifest_path).get("defects", [])
        if entry.get("expect") == "review" and entry["split"] in splits
    ]
    if not noise:
        return {}
    cut = 2 * len(noise)
    recall = review.recall_by_kind(ranked, noise, cut)
    return {
        "injected": len(noise),
        "cut": cut,
        "precision": review.precision_at(ranked, noise, cut),
        **{f"recall_{kind}": figures["recall"] for kind, figures in recall.items()},
    }


def gallery(ranked: pd.DataFrame, params: Params, path: Path) -> Path:
    """The top suspects: the given box dashed, the suggested one solid (evaluate's gallery)."""
    from pipeline.evaluation import plots

    top = ranked[ranked.kind != "not_judged"].head(params.review.gallery_images).copy()
    unboxed = top[BOX_COLUMNS].isna().any(axis=1)  # an overlooked object: no given box
    top.loc[unboxed, BOX_COLUMNS] = 0.0
    top.loc[unboxed, "class_name"] = "(none)"
    for column in BOX_COLUMNS:
        top[f"pred_{column}"] = top[f"suggest_{column}"]
    top["pred_class"] = top.suggest_class
    top["pred_prob"] = top.score
    top["iou"] = iou(top[BOX_COLUMNS].to_numpy(float), top[review.SUGGEST_COLUMNS].to_numpy(float))
    top["correct"] = top.class_name == top.suggest_class
    return plots.gallery(top, params.data.root, "Most suspect labels", path)


def run(params: Params, outputs: Outputs, progress: bool = True) -> dict[str, Any]:
    """Rank the reviewed splits' rows; write the table, gallery and report; log to MLflow."""
    classes = read_json(outputs.classes)["classes"]
    model = load_model(outputs.model)
    pools = [(list(params.review.splits), 0)]  # (splits scored together, folds)
    if params.review.folds and not is_detector(model):
        pools.append((["train"], params.review.folds))
    elif params.review.folds:  # the folds refit the two heads; a detector has other heads
        log.warning("review: train is not ranked for a detector (review.folds needs two heads)")
    scored, suspects = [], []
    for splits, folds in pools:
        rows = load_rows(outputs, classes, splits)
        images, probs, boxes, detections = predict(params, model, rows, classes, folds)
        pool_rows, pool_images = review.score_rows(rows, images, probs, boxes, classes, detections)
        scored.append(pool_rows)
        suspects.append(pool_images)
    rows = pd.concat(scored, ignore_index=True)
    ranked = review.rank(rows, pd.concat(suspects, ignore_index=True))
    outputs.review_dir.mkdir(parents=True, exist_ok=True)
    write_csv(outputs.review_table, ranked)
    picture = gallery(ranked, params, outputs.review_gallery)
    top = ranked.head(max(1, len(rows) // 20))  # the top 5 %: what a person would check
    report = {
        "rows": len(rows),
        "judged": int((ranked.kind.isin(["class", "box"])).sum()),
        "top": len(top),
        **{f"top_{kind}": int((top.kind == kind).sum()) for kind in review.KINDS},
        **noise_figures(ranked, params.data.root),
    }
    write_json(outputs.review_report, report)
    files = [(outputs.review_table, "review"), (outputs.review_report, "review")]
    tracking.log_to_training_run(
        params.mlflow.experiment,
        read_json(outputs.mlflow_run)["run_id"],
        "review",
        {f"review_{k}": float(v) for k, v in report.items()},
        [*files, (picture, "review")],
    )
    log.info(
        "review: %d rows, %d judged; top %d: %s",
        report["rows"],
        report["judged"],
        report["top"],
        ", ".join(f"{kind} {report[f'top_{kind}']}" for kind in review.KINDS),
    )
    return report
