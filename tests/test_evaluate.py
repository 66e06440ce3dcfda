"""Evaluation metrics against hand-computed cases, and the plots and summary they feed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_data import write_image
from PIL import Image

from pipeline.core.config import EvaluateParams
from pipeline.evaluation import metrics as m
from pipeline.evaluation import plots
from pipeline.stages import evaluate

CLASSES = ["apple", "banana", "cake"]
BOX = ["x_min", "x_max", "y_min", "y_max"]
FULL = [0.0, 1.0, 0.0, 1.0]


def one_hot(labels: list[int], n: int = 3) -> np.ndarray:
    probs = np.full((len(labels), n), 0.1)
    probs[np.arange(len(labels)), labels] = 0.8
    return probs


def test_score_identical_nested_disjoint_and_inverted_boxes():
    targets = np.array([FULL, FULL, [0.0, 0.5, 0.0, 0.5], [0.2, 0.6, 0.1, 0.9]])
    preds = np.array(
        [
            FULL,  # identical: IoU 1
            [0.25, 0.75, 0.25, 0.75],  # nested: area 0.25 inside 1.0 → IoU 0.25
            [0.5, 1.0, 0.5, 1.0],  # disjoint (touching corner): IoU 0
            [0.6, 0.2, 0.9, 0.1],  # inverted: re-ordered to the target → IoU 1
        ]
    )
    labels = np.array([0, 1, 2, 0])
    probs = one_hot([0, 1, 0, 0])  # third one wrong
    same = np.array([1.0, 0.25, 0.0, 1.0])
    scores = m.score(labels, targets, probs, preds, same)
    assert scores["images"] == 4
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["mean_iou"] == pytest.approx((1 + 0.25 + 0 + 1) / 4)
    assert scores["median_iou"] == pytest.approx((0.25 + 1) / 2)
    assert scores["iou50_rate"] == pytest.approx(0.5)
    assert scores["iou75_rate"] == pytest.approx(0.5)
    assert scores["corloc"] == pytest.approx(0.5)  # right class and same-class IoU ≥ 0.5


def test_partial_overlap_and_iou_thresholds():
    targets = np.array([FULL])
    # Shifted a quarter out of the image: clipped to x 0.25-1.0 first, so IoU 0.75
    # (unclipped it would be 0.75 / 1.25 = 0.6).
    preds = np.array([[0.25, 1.25, 0.0, 1.0]])
    scores = m.score(np.array([0]), targets, one_hot([0]), preds, np.array([0.75]))
    assert scores["mean_iou"] == pytest.approx(0.75)
    assert scores["iou50_rate"] == 1.0 and scores["iou75_rate"] == 1.0
    preds = np.array([[0.0, 0.6, 0.0, 1.0]])  # inside: IoU 0.6
    scores = m.score(np.array([0]), targets, one_hot([0]), preds, np.array([0.6]))
    assert scores["mean_iou"] == pytest.approx(0.6)
    assert scores["iou50_rate"] == 1.0 and scores["iou75_rate"] == 0.0


def test_top3_accuracy_counts_the_true_class_among_the_three_best():
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    scores = m.score(
        np.array([0, 0]), np.array([FULL, FULL]), probs, np.array([FULL, FULL]), [1, 1]
    )
    assert scores["accuracy"] == 0.5
    assert scores["top3_accuracy"] == 0.5  # class 0 is 4th of 4 in the first row


def samples_and_rows():
    """Two images: img1 has two cake boxes and an apple box; img2 one banana box."""
    rows = pd.DataFrame(
        [
            ("img1", 0.0, 0.5, 0.0, 0.5, "cake", "cake"),
            ("img1", 0.5, 1.0, 0.5, 1.0, "cake", "cake"),
            ("img1", 0.0, 1.0, 0.0, 1.0, "apple", "cake"),
            ("img2", 0.1, 0.9, 0.1, 0.9, "banana", "banana"),
        ],
        columns=["image_id", "x_min", "x_max", "y_min", "y_max", "class_name", "folder"],
    )
    samples = pd.DataFrame(
        {
            "split": "test",
            "folder": ["cake", "banana"],
            "image_id": ["img1", "img2"],
            "class_name": ["cake", "banana"],
            "x_min": [0.0, 0.1],
            "x_max": [0.5, 0.9],
            "y_min": [0.0, 0.1],
            "y_max": [0.5, 0.9],
            "label": [2, 1],
        }
    )
    return samples, rows


def test_corloc_matches_the_best_box_of_the_predicted_class():
    samples, rows = samples_and_rows()
    # img1: predicted cake on the SECOND cake box (IoU 0 with the target, 1 with that box).
    boxes = np.array([[0.5, 1.0, 0.5, 1.0], [0.1, 0.9, 0.1, 0.9]])
    same = m.best_iou_same_class(samples, rows, np.array([2, 1]), boxes, CLASSES)
    assert same == pytest.approx([1.0, 1.0])
    # Predicted apple on img1: only the apple box counts (IoU 0.25); banana absent from img1.
    same = m.best_iou_same_class(samples, rows, np.array([0, 0]), boxes, CLASSES)
    assert same == pytest.approx([0.25, 0.0])
    targets = samples[BOX].to_numpy()
    scores = m.score(
        samples.label.to_numpy(), targets, one_hot([2, 1]), boxes, np.array([1.0, 1.0])
    )
    assert scores["iou50_rate"] == 0.5  # the box missed the target of img1...
    assert scores["corloc"] == 1.0  # ...but found another cake: CorLoc counts it


def test_baseline_predicts_majority_class_and_mean_box():
    samples, rows = samples_and_rows()
    train = pd.DataFrame(
        {"label": [1, 1, 2], "x_min": [0.1, 0.1, 0.1], "x_max": [0.9, 0.9, 0.9],
         "y_min": [0.1, 0.1, 0.1], "y_max": [0.9, 0.9, 0.9]}
    )  # fmt: skip
    scores = m.baseline(train, samples, rows, CLASSES)
    assert scores["accuracy"] == 0.5  # banana is right on img2 only
    assert scores["corloc"] == 0.5  # img2: banana with IoU 1
    assert scores["iou75_rate"] == 0.5


def prediction_frame() -> pd.DataFrame:
    samples, rows = samples_and_rows()
    probs = one_hot([2, 0])
    boxes = np.array([[0.0, 0.5, 0.0, 0.5], [0.1, 0.5, 0.1, 0.9]])
    same = m.best_iou_same_class(samples, rows, probs.argmax(1), boxes, CLASSES)
    return m.prediction_table(samples, CLASSES, probs, boxes, same)


def test_prediction_and_per_class_tables():
    table = prediction_frame()
    assert list(table.pred_class) == ["cake", "apple"]
    assert table.iou.tolist() == pytest.approx([1.0, 0.5])
    per_class = m.per_class_table(table, CLASSES).set_index("class_name")
    assert per_class.loc["apple", "images"] == 0 and np.isnan(per_class.loc["apple", "accuracy"])
    assert per_class.loc["cake", "corloc"] == 1.0
    assert per_class.loc["banana", "accuracy"] == 0.0
    assert per_class.loc["banana", "iou50_rate"] == 1.0


def test_splits_to_score_puts_the_primary_first_without_repeats():
    assert evaluate.splits_to_score(EvaluateParams()) == ["test", "val"]
    assert evaluate.splits_to_score(EvaluateParams(split="val", extra_splits=["val"])) == ["val"]


def test_fingerprint_changes_with_image_bytes_and_targets(tmp_path):
    samples, _ = samples_and_rows()
    paths = [write_image(tmp_path / f"{i}.jpg") for i in samples.image_id]
    samples = samples.assign(path=[str(p) for p in paths])
    first = evaluate.fingerprint(samples)
    assert evaluate.fingerprint(samples) == first
    assert evaluate.fingerprint(samples.assign(x_min=[0.01, 0.1])) != first
    write_image(paths[0], Image.new("RGB", (40, 32), "red"))
    assert evaluate.fingerprint(samples) != first


def test_plots_and_summary_are_written(tmp_path):
    table = prediction_frame()
    for _, row in table.iterrows():
        write_image(tmp_path / "data" / "test" / row.folder / f"{row.image_id}.jpg")
    per_class = m.per_class_table(table, CLASSES)
    history = pd.DataFrame(
        {"epoch": [1, 2], "loss": [2.0, 1.0], "val_loss": [2.5, 1.5], "learning_rate": [1e-3, 1e-4]}
    )
    curves = pd.DataFrame({"recall": np.linspace(0, 1, 101)}).assign(
        precision_50=0.9, precision_75=0.5, precision_50_95=0.4
    )
    boxes = table[BOX].to_numpy()
    truth = [(boxes[i : i + 1], np.array([0])) for i in range(len(table))]
    found = [(boxes[i : i + 1], np.array([0.7]), np.array([1])) for i in range(len(table))]
    files = plots.evaluation_plots(
        table, per_class, CLASSES, history, tmp_path / "data", tmp_path / "plots", 2,
        curves, (truth, found),
    )  # fmt: skip
    names = {p.name for p in files}
    assert names == {
        "confusion_matrix.png", "iou_histogram.png", "per_class.png", "training_curves.png",
        "gallery_best.png", "gallery_worst.png", "gallery_random.png",
        "precision_recall.png", "gallery_objects.png",
    }  # fmt: skip
    assert all(Image.open(p).size[0] > 100 for p in files)
    targets, preds = table[BOX].to_numpy(), table[[f"pred_{c}" for c in BOX]].to_numpy()
    scores = m.score(np.array([2, 1]), targets, one_hot([2, 0]), preds, np.array([1.0, 0.0]))
    results = {"test": scores, "test_baseline": scores}
    text = evaluate.summary_markdown(results, per_class, "test", files, "run123", {})
    assert "| corloc | 0.500 | 0.500 |" in text and "run123" in text
    assert "gallery_worst.png" in text and "| banana | 1 |" in text
    assert "BASELINE" not in text  # no margin asked of it


def test_a_model_below_the_baseline_is_reported_first_in_the_summary():
    model = {name: 0.5 for name in m.HEADLINE} | {"images": 40, "mean_iou": 0.39, "corloc": 0.09}
    base = {name: 0.5 for name in m.HEADLINE} | {"images": 40, "mean_iou": 0.46, "corloc": 0.18}
    margins = {"mean_iou": 0.05, "corloc": 0.0}
    assert m.short_of_baseline(model, base, margins) == ["mean_iou", "corloc"]
    assert m.short_of_baseline(base, base, margins) == ["mean_iou", "corloc"]  # a tie is not above
    better = base | {"mean_iou": 0.52, "corloc": 0.19}
    assert m.short_of_baseline(better, base, margins) == []
    assert m.short_of_baseline(better | {"mean_iou": 0.49}, base, margins) == ["mean_iou"]
    results = {"test": model, "test_baseline": base, "val": better, "val_baseline": base}
    per_class = pd.DataFrame(columns=["split", "class_name", "images", "accuracy", "corloc"])
    text = evaluate.summary_markdown(results, per_class, "test", [], "run123", margins)
    warning = (
        "NOT ABOVE THE TRIVIAL BASELINE on test: mean_iou 0.390 vs 0.460 (needs +0.05 and more "
        "than 0), corloc 0.090 vs 0.180 (needs +0 and more than 0)"
    )
    assert warning in text.split("| metric")[0]  # above the metrics table
    assert "on val" not in text


def test_gallery_picks_best_worst_and_random():
    table = prediction_frame()
    picks = plots.pick_gallery(table, 1)
    assert picks["best"].image_id.tolist() == ["img1"]  # right class, IoU 1
    assert picks["worst"].image_id.tolist() == ["img2"]
    assert len(picks["random"]) == 1
    assert len(plots.pick_gallery(table, 5)["best"]) == 2


@pytest.mark.parametrize("dashed", [False, True])
def test_a_collapsed_box_is_drawn_not_refused(dashed):
    from PIL import Image

    from pipeline.evaluation.drawing import draw_box

    image = Image.new("RGB", (64, 48), "gray")
    for pixels in [(10, 11, 5, 30), (10, 10, 5, 5), (3, 40, 20, 21)]:  # under 2 px across
        draw_box(image, pixels, "cake 0.10", dashed=dashed)
    assert image.getcolors(64 * 48) != [(64 * 48, (128, 128, 128))]  # something was drawn
