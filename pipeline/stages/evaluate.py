"""Stage "evaluate": score the trained model on the held-out splits (metrics.py definitions).

Writes, under outputs/evaluate/:
- metrics.json: headline metrics (the book's and COCO's, coco.py) of each split and of the
  trivial baseline on it
  (``test``, ``test_baseline``, ``val``, ``val_baseline``) — the DVC metrics file;
- predictions.csv: one row per image and split, with target, prediction and IoU;
- per_class.csv: accuracy, mean IoU, IoU≥0.5 rate, CorLoc, boxes and COCO AP per split and
  class;
- splits.json: images and a data fingerprint per split (the promotion gate compares them);
- plots/: confusion matrix, IoU histogram, per-class bars, training curves, COCO's
  precision-recall curves and galleries of the best, worst and random predictions of the
  primary split (``evaluate.split``); a detector's every object in one more gallery;
- summary.md: a markdown summary (also a Prefect artifact).

Everything is also attached to the training run in MLflow.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.config import EvaluateParams, Params
from pipeline.core.errors import UserError
from pipeline.core.files import read_json, write_csv, write_json, write_text
from pipeline.core.paths import Outputs
from pipeline.data.boxes import clip_and_order
from pipeline.data.contract import BOX_COLUMNS, read_clean_annotations
from pipeline.evaluation import coco
from pipeline.evaluation import metrics as scoring
from pipeline.integrations import tracking
from pipeline.model.detect_head import is_detector
from pipeline.model.loader import SnackDataset, sample_table
from pipeline.model.model import input_size, load_model

log = logging.getLogger(__name__)


def splits_to_score(params: EvaluateParams) -> list[str]:
    """The primary split first, then the extra ones (without repeats)."""
    return list(dict.fromkeys([params.split, *params.extra_splits]))


def load_split(
    params: Params, outputs: Outputs, split: str, classes: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A split's deduplicated annotation rows and its samples (one per image)."""
    rows = read_clean_annotations(outputs.deduped(split))
    samples = sample_table({split: rows}, classes, params.data.root, "image")
    if samples.empty:
        raise UserError(f"no {split} images left to evaluate after validate and dedup")
    return rows, samples


def fingerprint(samples: pd.DataFrame) -> str:
    """A hash of the evaluated images' targets and bytes: equal means "the same test set"."""
    digest = hashlib.sha256()
    columns = ["folder", "image_id", "class_name", *BOX_COLUMNS]
    digest.update(samples[columns].to_csv(index=False, float_format="%.6f").encode())
    for path in samples.path:
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()[:16]


def predict(model, samples: pd.DataFrame, size: int, batch_size: int) -> dict[str, np.ndarray]:
    """Every output of the model for every sample, in order: ``class`` probabilities and the
    raw ``box``; a detector's lists as well (coco.model_detections reads them)."""
    data = SnackDataset(samples, image_size=size, batch_size=batch_size, workers=2)
    return {name: np.asarray(v) for name, v in model.predict(data, verbose=0).items()}


@dataclass(frozen=True)
class SplitScores:
    """One model on one split: headline metrics, one prediction row per image (the book's
    answer), COCO AP per class, the precision-recall curves, and per image (in the rows'
    order) every ground-truth box and every detection (``coco.Detections``)."""

    metrics: dict[str, float]
    predictions: pd.DataFrame
    per_class_ap: pd.DataFrame
    curves: pd.DataFrame
    truth: list
    detections: list


def evaluate_split(
    model,
    samples: pd.DataFrame,
    rows: pd.DataFrame,
    classes: list[str],
    image_size: int,
    batch_size: int,
) -> SplitScores:
    """Headline metrics (the book's and COCO's), predictions, per-class AP and curves of one
    model on one split."""
    out = predict(model, samples, image_size, batch_size)
    probs, boxes = out["class"].astype("float64"), out["box"].astype("float64")
    same = scoring.best_iou_same_class(samples, rows, probs.argmax(axis=1), boxes, classes)
    labels, targets = samples.label.to_numpy(), samples[BOX_COLUMNS].to_numpy()
    scores = scoring.score(labels, targets, probs, clip_and_order(boxes), same)
    truth, detections = coco.ground_truth(samples, rows, classes), coco.model_detections(out)
    detection, per_class_ap, curves = coco.coco_scores(truth, detections, len(classes))
    table = scoring.prediction_table(samples, classes, probs, boxes, same)
    return SplitScores(scores | detection, table, per_class_ap, curves, truth, detections)


def baseline_scores(
    train: pd.DataFrame, samples: pd.DataFrame, rows: pd.DataFrame, classes: list[str]
) -> dict[str, float]:
    """The trivial baseline on a split: the book's metrics and COCO's (one box per image)."""
    probs, boxes = scoring.baseline_answer(train, len(samples), len(classes))
    truth = coco.ground_truth(samples, rows, classes)
    detection, _, _ = coco.coco_scores(truth, coco.one_box_detections(probs, boxes), len(classes))
    return scoring.baseline(train, samples, rows, classes) | detection


def score_splits(
    params: Params, outputs: Outputs, model, classes: list[str]
) -> tuple[dict[str, dict], dict[str, dict], dict[str, SplitScores]]:
    """Metrics and baseline of every configured split, their fingerprints, and each split's
    ``SplitScores``."""
    train_rows = read_clean_annotations(outputs.deduped("train"))
    train = sample_table({"train": train_rows}, classes, params.data.root, params.train.target)
    size, batch = input_size(model), params.evaluate.batch_size
    results, splits, scored = {}, {}, {}
    for split in splits_to_score(params.evaluate):
        rows, samples = load_split(params, outputs, split, classes)
        scored[split] = evaluate_split(model, samples, rows, classes, size, batch)
        results[split] = scored[split].metrics
        base = results[f"{split}_baseline"] = baseline_scores(train, samples, rows, classes)
        for name in params.evaluate.baseline_margin:  # into metrics.json and MLflow
            results[split][f"{name}_over_baseline"] = results[split][name] - base[name]
        splits[split] = {"images": len(samples), "fingerprint": fingerprint(samples)}
    return results, splits, scored


def per_class_table(
    scored: dict[str, SplitScores], predictions: pd.DataFrame, classes: list[str]
) -> pd.DataFrame:
    """The book's metrics per split and class (from ``predictions``) beside COCO's AP."""
    aps = [
        s.per_class_ap.assign(split=split, class_name=[classes[c] for c in s.per_class_ap["class"]])
        for split, s in scored.items()
    ]
    per_class_ap = pd.concat(aps, ignore_index=True).drop(columns="class")
    return scoring.per_class_table(predictions, classes).merge(
        per_class_ap, on=["split", "class_name"], how="left"
    )


def run(params: Params, outputs: Outputs, progress: bool = True) -> dict[str, Any]:
    """Evaluate every configured split; write metrics, tables, plots and the summary."""
    from pipeline.evaluation import plots

    classes = read_json(outputs.classes)["classes"]
    model = load_model(outputs.model)
    results, splits, scored = score_splits(params, outputs, model, classes)
    predictions = pd.concat([s.predictions for s in scored.values()], ignore_index=True)
    per_class = per_class_table(scored, predictions, classes)

    primary = params.evaluate.split
    history = pd.read_csv(outputs.history) if outputs.history.is_file() else None
    plot_files = plots.evaluation_plots(
        scored[primary].predictions,
        per_class[per_class.split == primary],
        classes,
        history,
        params.data.root,
        outputs.plots_dir,
        params.evaluate.gallery_images,
        scored[primary].curves,
        # a detector: a gallery of every object too (the one-box model's is gallery_random)
        (scored[primary].truth, scored[primary].detections) if is_detector(model) else None,
    )
    run_id = read_json(outputs.mlflow_run)["run_id"]
    margins = params.evaluate.baseline_margin
    markdown = summary_markdown(results, per_class, primary, plot_files, run_id, margins)
    write_csv(outputs.predictions, predictions)
    write_csv(outputs.per_class, per_class)
    write_json(outputs.eval_splits, splits)
    write_text(outputs.eval_summary, markdown)
    write_json(outputs.eval_metrics, results)
    log_to_mlflow(params, outputs, results, plot_files)
    for line in baseline_warnings(results, params.evaluate.baseline_margin):
        log.warning("%s", line)
    scores, base = results[primary], results[f"{primary}_baseline"]
    log.info(
        "%s: accuracy %.3f, mean IoU %.3f, CorLoc %.3f (baseline %.3f / %.3f / %.3f)",
        primary,
        *(scores[k] for k in ("accuracy", "mean_iou", "corloc")),
        *(base[k] for k in ("accuracy", "mean_iou", "corloc")),
    )
    return {**results, "markdown": markdown}


def log_to_mlflow(params: Params, outputs: Outputs, results: dict, plot_files) -> None:
    """Attach metrics, tables, summary and plots to the training run."""
    metrics = {
        f"{group}_{k}": float(v) for group, values in results.items() for k, v in values.items()
    }
    tables = (
        outputs.predictions,
        outputs.per_class,
        outputs.eval_metrics,
        outputs.eval_splits,
        outputs.eval_summary,
    )
    files = [(path, "evaluation") for path in tables]
    files += [(path, "evaluation/plots") for path in plot_files]
    run_id = read_json(outputs.mlflow_run)["run_id"]
    tracking.log_to_training_run(params.mlflow.experiment, run_id, "evaluate", metrics, files)


def baseline_warnings(results: dict, margins: dict[str, float]) -> list[str]:
    """One line per split on which the model does not clear the trivial baseline by
    ``evaluate.baseline_margin``."""
    lines = []
    for split in (k for k in results if not k.endswith("_baseline")):
        scores, base = results[split], results[f"{split}_baseline"]
        if short := scoring.short_of_baseline(scores, base, margins):
            figures = ", ".join(
                f"{k} {scores[k]:.3f} vs {base[k]:.3f} (needs +{margins[k]:g} and more than 0)"
                for k in short
            )
            lines.append(f"NOT ABOVE THE TRIVIAL BASELINE on {split}: {figures}")
    return lines


def _metrics_rows(results: dict) -> list[str]:
    """Markdown table rows: one per metric, a model and a baseline column per split."""
    splits = [k for k in results if not k.endswith("_baseline")]
    header = ["metric"] + [f"{s} {kind}" for s in splits for kind in ("model", "baseline")]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    names = ("images", *scoring.HEADLINE, *coco.DETECTION)
    for name in (n for n in names if all(n in values for values in results.values())):
        cells = [name]
        for s in splits:
            for key in (s, f"{s}_baseline"):
                value = results[key][name]
                cells.append(str(int(value)) if name == "images" else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary_markdown(
    results: dict,
    per_class: pd.DataFrame,
    primary: str,
    plot_files,
    run_id: str,
    margins: dict[str, float],
) -> str:
    """A short human summary: headline metrics, weakest and strongest classes, plots."""
    table = per_class[(per_class.split == primary) & (per_class.images > 0)]
    ranked = table.sort_values(["corloc", "accuracy"], kind="stable")
    warnings = baseline_warnings(results, margins)
    lines = ["# snackloc evaluation", ""]
    if warnings:
        # First thing a reader sees: this model is worse than guessing the mean box.
        lines += [f"> **Warning: {w}.**" for w in warnings]
        lines += [
            "> It is no clear improvement on always answering the majority class and the mean",
            "> training box (evaluate.baseline_margin). The registry gate keeps it from",
            "> @champion (register.gate.beat_baseline).",
            "",
        ]
    lines += [*_metrics_rows(results), ""]
    lines += [f"MLflow run `{run_id}`, artifacts `evaluation/plots/`:", ""]
    lines += [f"- {Path(p).name}" for p in plot_files]
    lines += ["", f"## Classes on {primary} (weakest first, by CorLoc)", ""]
    lines += ["| class | images | accuracy | mean IoU | CorLoc |", "|---|---|---|---|---|"]
    for row in ranked.itertuples():
        lines.append(
            f"| {row.class_name} | {row.images} | {row.accuracy:.3f} "
            f"| {row.mean_iou:.3f} | {row.corloc:.3f} |"
        )
    return "\n".join(lines) + "\n"
