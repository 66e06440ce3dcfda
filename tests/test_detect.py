"""The detector (model.task: detect): targets, loss, decoding, loader and COCO metrics."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from helpers_model import save_tiny_backbone
from helpers_tiny import NO_AUGMENT, TINY_MODEL
from PIL import Image

from pipeline.core.config import (
    AugmentParams,
    DetectParams,
    GateParams,
    Params,
    TrainParams,
    TransferParams,
)
from pipeline.data.boxes import iou
from pipeline.evaluation import coco, gate
from pipeline.model import hardware
from pipeline.model.augment import augment_boxes, crop_resize, visible_fraction
from pipeline.model.detect_decode import DetectionDecoder
from pipeline.model.detect_head import decode_shares, encode_shares, grid_of
from pipeline.model.detect_loss import detection_loss
from pipeline.model.detect_targets import aligned_assign, assign, pad_boxes
from pipeline.model.loader import SnackDataset, every_box, sample_table
from pipeline.model.model import backbone_of, build_model, cell_centres, load_model
from pipeline.ops.predict import load_predictor, predict_images

DETECT_MODEL = TINY_MODEL.model_copy(update={"task": "detect", "image_size": 64})
COLUMNS = ["image_id", "x_min", "x_max", "y_min", "y_max", "class_name", "folder"]


def detect_data(root: Path, n: int = 8) -> tuple[pd.DataFrame, list[str]]:
    """Noise images, each with a large "x" box and a small "y" box."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = root / "train" / "x" / f"im{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
        rows += [
            (f"im{i}", 0.05, 0.55, 0.1, 0.6, "x", "x"),
            (f"im{i}", 0.7, 0.9, 0.7, 0.95, "y", "x"),
        ]
    return pd.DataFrame(rows, columns=COLUMNS), ["x", "y"]


def detect_dataset(root: Path, augment: AugmentParams | None = None, max_boxes: int = 4):
    frame, classes = detect_data(root)
    samples = sample_table({"train": frame}, classes, root, "image")
    objects = every_box(samples, frame, classes)
    return SnackDataset(
        samples, 64, 4, augment=augment, objects=objects, max_boxes=max_boxes, seed=3
    )


def test_box_shares_round_trip_for_boxes_around_their_cells():
    centres = np.stack(cell_centres(4, 4), axis=1)
    rng = np.random.default_rng(0)
    # Boxes that hold their cell's centre: each edge a random part of the way to the border.
    parts = rng.uniform(0.05, 1.0, (16, 4))
    cx, cy = centres[:, 0], centres[:, 1]
    boxes = np.stack(
        [cx - parts[:, 0] * cx, cx + parts[:, 1] * (1 - cx), cy - parts[:, 2] * cy,
         cy + parts[:, 3] * (1 - cy)], axis=1,
    )  # fmt: skip
    shares = encode_shares(boxes, centres)
    np.testing.assert_allclose(shares, parts, atol=1e-12)
    np.testing.assert_allclose(np.asarray(decode_shares(shares, centres)), boxes, atol=1e-6)


def test_cells_learn_the_smallest_box_whose_centre_region_they_are_in():
    # 4 x 4 grid, cell centres at 0.125, 0.375, 0.625, 0.875. A big box of class 0 over the
    # left half, a small box of class 1 inside it around cell (row 1, col 1), padding.
    gt = pad_boxes(np.array([[0.0, 0.5, 0.0, 1.0], [0.3, 0.45, 0.3, 0.45]]), np.array([0, 1]), 3)
    boxes, classes, positive = (np.asarray(t)[0] for t in assign(gt[None], (4, 4), 1.5, 2))
    cell = lambda row, col: row * 4 + col  # noqa: E731
    assert positive[cell(1, 1)] == 1 and classes[cell(1, 1)].tolist() == [0, 1]
    np.testing.assert_allclose(boxes[cell(1, 1)], [0.3, 0.45, 0.3, 0.45])
    assert positive[cell(2, 0)] == 1 and classes[cell(2, 0)].tolist() == [1, 0]
    np.testing.assert_allclose(boxes[cell(2, 0)], [0.0, 0.5, 0.0, 1.0])
    assert positive[cell(1, 3)] == 0 and classes[cell(1, 3)].tolist() == [0, 0]  # right half
    assert gt[2, 4] == -1  # the padding row is nobody's target


def test_aligned_cells_are_those_whose_predictions_fit_not_those_nearest_the_centre():
    # 4 x 4 grid. A box over the whole image (class 0), a small one (class 1) around cell
    # (0, 0), padding. Every cell predicts a box around itself, the larger the later the cell,
    # except cell (3, 3), whose prediction is the whole image, and cell (0, 0), which fits the
    # small box exactly.
    gt = pad_boxes(np.array([[0.0, 1.0, 0.0, 1.0], [0.05, 0.2, 0.05, 0.2]]), np.array([0, 1]), 3)
    cx, cy = cell_centres(4, 4)
    half = 0.05 + 0.01 * np.arange(16)
    pred = np.clip(np.stack([cx - half, cx + half, cy - half, cy + half], axis=1), 0, 1)
    pred[15], pred[0] = [0.0, 1.0, 0.0, 1.0], [0.05, 0.2, 0.05, 0.2]
    logits = np.zeros((1, 16, 2), dtype="float32")
    out = aligned_assign(gt[None], pred[None].astype("float32"), logits, (4, 4), 2)
    boxes, classes, positive = (np.asarray(t)[0] for t in out)
    # The whole-image box: its best-fitting cell (3, 3) and the next, (3, 2), not the central
    # ones; (0, 0) learns the small box it fits, not the big one it also lies in.
    assert np.flatnonzero(positive).tolist() == [0, 14, 15]
    np.testing.assert_allclose(boxes[15], [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(boxes[0], [0.05, 0.2, 0.05, 0.2])
    # The best cell of each box is asked for the best IoU among its cells (1 here), the
    # others for less, in their alignment's proportion; a background cell for nothing.
    assert classes[15].tolist() == pytest.approx([1.0, 0.0])
    assert classes[0].tolist() == pytest.approx([0.0, 1.0])
    assert 0 < classes[14, 0] < 0.1 and classes[14, 1] == 0
    assert classes[positive == 0].sum() == 0


def test_the_quality_target_asks_a_half_fitting_box_for_a_half_score():
    # One box over the whole image: all 4 cells of a 2 x 2 grid learn it, and all predict
    # its left half (IoU 0.5). The loss over the class-0 logit of every cell:
    gt = pad_boxes(np.array([[0.0, 1.0, 0.0, 1.0]]), np.array([0]), 2)[None]
    logits = np.linspace(-4, 4, 81)

    def losses(target: str) -> np.ndarray:
        cells = np.zeros((len(logits), 4, 6), dtype="float32")
        cells[:, :, :4] = [0.0, 0.5, 0.0, 1.0]
        cells[:, :, 4], cells[:, :, 5] = logits[:, None], -9.0
        loss = detection_loss((2, 2), 1.5, 0.0, target)  # class terms only
        return np.asarray(loss(np.repeat(gt, len(logits), 0), cells))

    assert logits[losses("iou").argmin()] == pytest.approx(0.0)  # sigmoid(0) = IoU 0.5
    assert np.all(np.diff(losses("onehot")) < 0)  # focal loss: the higher the better


def test_the_detector_weighs_its_box_loss_by_its_own_param_not_the_two_heads():
    from pipeline.model.fit import compile_phase

    model = build_model(2, DETECT_MODEL)
    gt = pad_boxes(np.array([[0.0, 1.0, 0.0, 1.0]]), np.array([0]), 2)[None]
    cells = np.zeros((1, 16, 6), dtype="float32")
    cells[..., :4] = [0.0, 0.5, 0.0, 1.0]  # every cell's box half wrong: a box loss above 0

    def loss(detect_weight: float, two_heads_weight: float) -> float:
        detect = DetectParams(box_loss_weight=detect_weight)
        params = Params(
            model=DETECT_MODEL.model_copy(update={"detect": detect}),
            train=TrainParams(box_loss_weight=two_heads_weight),
        )
        compile_phase(model, model, params, hardware.configure(params.train), ema=0.0)
        return float(np.mean(model.loss["cells"](gt, cells)))

    class_only, box = loss(0.0, 2.0), loss(1.0, 2.0) - loss(0.0, 2.0)
    assert box > 0
    assert loss(3.0, 2.0) == pytest.approx(class_only + 3 * box, rel=1e-5)
    assert loss(1.0, 10.0) == pytest.approx(loss(1.0, 2.0), rel=1e-6)


def test_the_detector_learns_at_its_own_rate_from_random_init_else_at_trains():
    from pipeline.model.fit import compile_phase
    from pipeline.model.recipe import learning_rate_for, peak_learning_rate

    train = TrainParams(learning_rate=0.003, epochs=10)
    for task, expected in (("detect", 0.007), ("localize", 0.003)):
        model_params = DETECT_MODEL.model_copy(
            update={"task": task, "detect": DetectParams(learning_rate=0.007)}
        )
        params = Params(model=model_params, train=train)
        model = build_model(2, model_params)
        compile_phase(model, model, params, hardware.configure(train), ema=0.0)
        assert float(model.optimizer.learning_rate) == pytest.approx(expected)
        assert learning_rate_for(1, params) == pytest.approx(expected)  # the cosine's peak
    # A pretrained backbone (the transfer recipe): train's rate for the detector too.
    pretrained = params.model_copy(
        update={"model": DETECT_MODEL.model_copy(update={"weights": "imagenet"})}
    )
    assert peak_learning_rate(pretrained) == pytest.approx(0.003)


def test_the_conv_stride_keeps_the_grid_and_moves_the_conv():
    def built(**detect):
        model = DETECT_MODEL.model_copy(update={"detect": DetectParams(**detect)})
        return build_model(2, model)

    at16, at32 = built(conv_stride=16), built(conv_stride=32)
    for model in (at16, at32):
        assert grid_of(model) == (4, 4) and model.output["cells"].shape[1:] == (16, 6)
    assert at16.get_layer("detect_conv").output.shape[1:3] == (4, 4)
    assert at32.get_layer("detect_conv").output.shape[1:3] == (2, 2)  # before the upsampling


def test_the_lateral_connection_adds_the_backbones_stride16_map_to_the_head():
    def built(**detect):
        return build_model(2, DETECT_MODEL.model_copy(update={"detect": DetectParams(**detect)}))

    plain, model = built(lateral=False), built(lateral=True)
    assert len(backbone_of(plain).outputs) == 1
    final, stride16 = backbone_of(model).outputs  # one nested backbone, one more output
    assert final.shape[1:3] == (2, 2) and stride16.shape[1:3] == (4, 4) == grid_of(model)
    assert model.get_layer("detect_lateral").input.shape == stride16.shape
    assert model.output["cells"].shape == plain.output["cells"].shape
    # the same backbone weights: a pretrained file or a frozen phase treats both alike
    assert [w.shape for w in backbone_of(model).weights] == [
        w.shape for w in backbone_of(plain).weights
    ]


def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    cells = np.full((1, 3, 4 + 2), logit(0.001), dtype="float32")
    cells[0, :, :4] = [[0.1, 0.5, 0.1, 0.5], [0.12, 0.5, 0.1, 0.5], [0.6, 0.9, 0.6, 0.9]]
    cells[0, 0, 4], cells[0, 1, 4], cells[0, 2, 5] = logit(0.9), logit(0.8), logit(0.7)
    out = DetectionDecoder(5, 0.05, 0.5)(cells)
    assert int(out["num_detections"][0]) == 2
    np.testing.assert_allclose(np.asarray(out["scores"])[0, :2], [0.9, 0.7], atol=1e-5)
    assert np.asarray(out["classes"])[0].tolist() == [0, 1, -1, -1, -1]
    np.testing.assert_allclose(np.asarray(out["boxes"])[0, :2], cells[0, [0, 2], :4], atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["box"])[0], cells[0, 0, :4])  # the one-box view
    assert np.asarray(out["class"])[0].argmax() == 0


@pytest.mark.parametrize("max_detections", [5, 60])
def test_nms_per_class_in_one_call_is_tensorflows_combined_nms(max_detections):
    """Classes shifted apart, one NMS per image (what exports to TFLite builtins and ONNX)
    lists what tf.image.combined_non_max_suppression does, as a set per image."""
    import tensorflow as tf

    from pipeline.ops.export import compare_detections

    rng = np.random.default_rng(4)
    corner = rng.uniform(0, 0.7, (6, 40, 2))
    size = rng.uniform(0.05, 0.3, (6, 40, 2))
    cells = np.concatenate(
        [corner[..., :1], corner[..., :1] + size[..., :1], corner[..., 1:],
         corner[..., 1:] + size[..., 1:], rng.normal(-1, 2, (6, 40, 3))], axis=-1,
    ).astype("float32")  # fmt: skip
    got = {k: np.asarray(v) for k, v in DetectionDecoder(max_detections, 0.1, 0.4)(cells).items()}
    yxyx = cells[..., [2, 0, 3, 1]][:, :, None, :]
    ref = tf.image.combined_non_max_suppression(
        yxyx, tf.sigmoid(cells[..., 4:]), max_detections, max_detections, 0.4, 0.1,
        clip_boxes=False,
    )  # fmt: skip
    expected = {
        "boxes": np.asarray(ref.nmsed_boxes)[..., [1, 3, 0, 2]],
        "scores": np.asarray(ref.nmsed_scores),
        "classes": np.asarray(ref.nmsed_classes).astype(int),
        "num_detections": np.asarray(ref.valid_detections),
    }
    assert expected["num_detections"].min() > 0
    diffs, total, unmatched = compare_detections(expected, got)
    assert unmatched == 0 and total == expected["num_detections"].sum()
    assert max(diffs.values()) < 1e-6, diffs


def test_the_loader_yields_every_box_of_an_image_padded(tmp_path):
    images, targets = detect_dataset(tmp_path)[0]
    assert images.shape == (4, 64, 64, 3)
    rows = targets["cells"]
    assert rows.shape == (4, 4, 5)
    np.testing.assert_allclose(rows[0, :2, :4], [[0.05, 0.55, 0.1, 0.6], [0.7, 0.9, 0.7, 0.95]])
    assert rows[0, :, 4].tolist() == [0, 1, -1, -1]  # largest first, then padding


def test_augmentation_moves_every_box_and_keeps_the_main_one(tmp_path):
    flip = NO_AUGMENT.model_copy(update={"hflip": True})
    flipped = detect_dataset(tmp_path, flip)[0][1]["cells"]
    for row in flipped:  # each image either as given or mirrored, both boxes alike
        mirrored = np.isclose(row[0, 0], 1 - 0.55)
        expected = [0.45, 0.95] if mirrored else [0.05, 0.55]
        np.testing.assert_allclose(row[0, :2], expected, atol=1e-6)
        np.testing.assert_allclose(row[1, :2], [0.1, 0.3] if mirrored else [0.7, 0.9], atol=1e-6)
    crop = AugmentParams(hflip=False, crop_scale=(0.3, 0.5), color_jitter=0.0, zoom_out=1.0)
    image = np.zeros((48, 48, 3), dtype=np.uint8)
    boxes = np.array([[0.05, 0.55, 0.1, 0.6], [0.7, 0.9, 0.7, 0.95]], dtype="float32")
    for seed in range(20):
        _, moved, keep = augment_boxes(image, boxes, crop, np.random.default_rng(seed))
        assert keep[0]  # the crop keeps min_visible of the main box: it is never dropped
        assert ((moved >= 0) & (moved <= 1)).all()


def test_crop_resize_moves_many_boxes_as_it_moves_one():
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    boxes = np.array([[0.1, 0.5, 0.2, 0.6], [0.4, 0.9, 0.3, 0.8]], dtype="float32")
    crop = np.array([0.2, 0.8, 0.1, 0.9])
    _, together = crop_resize(image, boxes, crop)
    for box, moved in zip(boxes, together, strict=True):
        np.testing.assert_array_equal(crop_resize(image, box, crop)[1], moved)
    assert visible_fraction(boxes[0], crop) == pytest.approx(0.75)


def test_the_detector_trains_and_its_saved_model_returns_final_boxes(tmp_path):
    from pipeline.model import fit as engine

    params = Params(
        model=DETECT_MODEL.model_copy(update={"detect": DetectParams(max_detections=7)}),
        train=TrainParams(epochs=1, batch_size=4, augment=NO_AUGMENT),
    )
    setup = dataclasses.replace(hardware.configure(params.train), run_eagerly=True)
    train_ds = detect_dataset(tmp_path / "data")
    result = engine.fit(params, 2, train_ds, train_ds, tmp_path / "backup", setup, verbose=0)
    assert np.isfinite(result.history.loss).all()
    result.model.save(tmp_path / "model.keras")
    out = load_model(tmp_path / "model.keras").predict(train_ds[0][0], verbose=0)
    assert out["boxes"].shape == (4, 7, 4) and out["scores"].shape == (4, 7)
    assert out["class"].shape == (4, 2) and out["box"].shape == (4, 4)
    counts = out["num_detections"]
    assert ((counts >= 0) & (counts <= 7)).all()
    for i, n in enumerate(counts):
        assert set(out["classes"][i, n:].tolist()) <= {-1}
        assert ((out["boxes"][i, :n] >= 0) & (out["boxes"][i, :n] <= 1)).all()
    # `snackloc predict` lists every detection beside the one-box answer.
    (tmp_path / "classes.json").write_text('{"classes": ["x", "y"]}')
    predictor = load_predictor(str(tmp_path / "model.keras"), tmp_path / "classes.json")
    images = sorted((tmp_path / "data").rglob("*.jpg"))[:2]
    results = predict_images(predictor, images)
    for result in results:
        assert result.class_name in {"x", "y"} and isinstance(result.detections, list)
        assert all(
            set(d) == {"class_name", "score", "box", "box_pixels"} for d in result.detections
        )
    # The registered model (what `mlflow models serve` runs) lists the same detections.
    import mlflow

    from pipeline.integrations.served_model import CLASSES, KERAS, ImageModel

    artifacts = {KERAS: str(tmp_path / "model.keras"), CLASSES: str(tmp_path / "classes.json")}
    mlflow.pyfunc.save_model(tmp_path / "pyfunc", python_model=ImageModel(), artifacts=artifacts)
    encoded = [base64.b64encode(path.read_bytes()).decode() for path in images]
    answers = mlflow.pyfunc.load_model(tmp_path / "pyfunc").predict(
        pd.DataFrame({"image": encoded})
    )
    assert [a["detections"] for a in answers] == [r.detections for r in results]


class BackboneAtPhaseStart(keras.callbacks.Callback):
    """The backbone's weights (BatchNorm statistics included) as each phase starts."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshots: list[list[np.ndarray]] = []

    def on_train_begin(self, logs=None):
        self.snapshots.append(backbone_of(self.model).get_weights())


def test_the_detector_follows_the_transfer_recipe_on_a_pretrained_backbone(tmp_path):
    # Real photos take this path: heads on the frozen pretrained backbone, then fine-tuning
    # with the backbone's BatchNorm statistics kept (docs/training.md).
    pretrained = save_tiny_backbone(tmp_path / "pretrained")
    params = Params(
        model=pretrained.model_copy(update={"task": "detect", "image_size": 64}),
        train=TrainParams(
            epochs=2, batch_size=4, augment=NO_AUGMENT, transfer=TransferParams(head_epochs=1)
        ),
    )
    setup = dataclasses.replace(hardware.configure(params.train), run_eagerly=True)
    train_ds, probe = detect_dataset(tmp_path / "data"), BackboneAtPhaseStart()
    from pipeline.model import fit as engine

    result = engine.fit(params, 2, train_ds, train_ds, tmp_path / "b", setup, [probe], verbose=0)
    built = backbone_of(build_model(2, params.model))  # the file's weights
    assert len(probe.snapshots) == 2  # two phases
    for snapshot in probe.snapshots:  # the frozen phase left the backbone as it was loaded
        assert all(np.array_equal(a, b) for a, b in zip(built.get_weights(), snapshot, strict=True))
    tuned = backbone_of(result.model)
    assert not np.array_equal(tuned.layers[1].get_weights()[0], built.layers[1].get_weights()[0])
    for layer in tuned.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            np.testing.assert_array_equal(
                layer.moving_mean, built.get_layer(layer.name).moving_mean
            )
    assert np.isfinite(result.history.loss).all()


def test_coco_metrics_on_hand_made_boxes():
    truth = [
        (np.array([[0.1, 0.5, 0.1, 0.5]]), np.array([0])),
        (np.array([[0.2, 0.6, 0.2, 0.6]]), np.array([1])),
    ]
    # Image 0: a perfect box. Image 1: a box of IoU 0.62 (matches at IoU .50, .55, .60 of
    # COCO's ten thresholds) and a wrong-class box that only the class-agnostic recall sees.
    shifted = np.array([[0.2, 0.6, 0.352, 0.6]])  # inside the truth: IoU = 0.248 / 0.4
    assert iou(shifted[0], truth[1][0][0]) == pytest.approx(0.62, abs=1e-3)
    detections = [
        (truth[0][0], np.array([0.9]), np.array([0])),
        (np.concatenate([shifted, truth[1][0]]), np.array([0.8, 0.3]), np.array([1, 0])),
    ]
    scores, per_class, curves = coco.coco_scores(truth, detections, 2)
    assert scores["map50"] == pytest.approx(1.0)
    assert scores["map"] == pytest.approx((1.0 + 0.3) / 2)
    assert scores["ar100"] == pytest.approx((1.0 + 0.3) / 2)
    assert scores["agnostic_recall50"] == pytest.approx(1.0)
    assert per_class.ap.tolist() == pytest.approx([1.0, 0.3])
    # The curves of the precision-recall plot: the area under each is its AP.
    assert len(curves) == 101 and curves.recall.iloc[-1] == 1.0
    assert curves.precision_50.mean() == pytest.approx(scores["map50"])
    assert curves.precision_75.mean() == pytest.approx((1.0 + 0.0) / 2)  # IoU 0.62 < 0.75
    assert curves.precision_50_95.mean() == pytest.approx(scores["map"])


def test_the_one_box_model_is_one_detection_per_image():
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    boxes = np.array([[0.5, 0.1, 0.1, 0.5], [0.2, 0.6, 0.2, 0.6]])  # first one inverted
    found = coco.model_detections({"class": probs, "box": boxes})
    assert [len(b) for b, _, _ in found] == [1, 1]
    np.testing.assert_allclose(found[0][0], [[0.1, 0.5, 0.1, 0.5]])
    assert found[0][1].tolist() == [0.8] and found[1][2].tolist() == [0]
    truth = [(np.array([[0.1, 0.5, 0.1, 0.5], [0.6, 0.9, 0.6, 0.9]]), np.array([1, 1]))]
    truth.append((np.zeros((0, 4)), np.zeros(0, dtype=int)))
    assert coco.agnostic_recall(truth, found) == pytest.approx(0.5)


def test_a_detector_is_gated_on_map50_the_two_heads_on_their_metric():
    rules = GateParams()
    assert gate.for_task(rules, "localize") is rules
    assert gate.for_task(rules, "detect").metric == "map50"
    assert Params().model.task == "localize"
    with pytest.raises(ValueError, match="detect supports neither"):
        Params(
            model=DETECT_MODEL.model_copy(update={"weights": "x.h5"}),
            train=TrainParams(cache_features=True, augment=NO_AUGMENT),
        )


def test_an_import_of_many_multi_object_images_suggests_the_detector():
    from pipeline.data.formats import importing

    counts = {"train": 8, "val": 1, "test": 1}
    report = {
        "images": counts, "rows": counts, "split": {"from": "source"}, "source": "src",
        "format": "voc", "out": "data", "folder_from": "largest", "jpeg_copied": 10,
        "converted_to_jpeg": 0, "warnings": [], "problems": [], "multi_object_share": 0.5,
    }  # fmt: skip
    assert "model.task: detect" in importing.import_summary(report)
    report["multi_object_share"] = 0.1
    assert "model.task: detect" not in importing.import_summary(report)
