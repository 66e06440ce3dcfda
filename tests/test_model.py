"""The two-head model: shapes, the IoU metric, backbone families and their starting weights
(random, ImageNet offline, reused from a model or weights file), heads on cached features."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers_env import ROOT
from helpers_tiny import TINY_MODEL
from pydantic import ValidationError

from pipeline.core.config import ModelParams
from pipeline.core.errors import UserError
from pipeline.data.boxes import iou
from pipeline.model.model import (
    BoxMeanIoU,
    backbone_of,
    build_backbone,
    build_model,
    feature_extractor,
    heads_model,
    load_model,
)
from pipeline.model.recipe import learning_rate_at

TINY = TINY_MODEL


def test_two_heads_with_the_right_shapes():
    model = build_model(5, TINY)
    out = model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0)
    assert out["class"].shape == (2, 5) and out["box"].shape == (2, 4)
    assert np.allclose(out["class"].sum(axis=1), 1.0, atol=1e-5)  # softmax


def test_the_grid_head_boxes_are_valid_the_weighted_proposals_of_its_cells(tmp_path):
    """Each cell proposes a box around its centre, inside the image by construction; the box
    is their softmax-weighted mean."""
    params = TINY.model_copy(update={"box_head": "grid", "image_size": 64})  # a 2x2 grid
    model = build_model(3, params)
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    boxes = model.predict(pixels, verbose=0)["box"]
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert (boxes[:, 0] <= boxes[:, 1]).all() and (boxes[:, 2] <= boxes[:, 3]).all()
    # By hand from the layer outputs: cell centres (0.25, 0.75) on each axis.
    probe = keras.Model(
        model.inputs,
        [model.get_layer(n).output for n in ("box_attention", "box_distances_flat")],
    )
    weights, distances = (np.asarray(a) for a in probe.predict(pixels, verbose=0))
    cx = np.array([0.25, 0.75, 0.25, 0.75])
    cy = np.array([0.25, 0.25, 0.75, 0.75])
    # each distance is a share of the room between the centre and that edge
    x_min = (weights * (cx - cx * distances[..., 0])).sum(axis=1)
    y_max = (weights * (cy + (1 - cy) * distances[..., 3])).sum(axis=1)
    np.testing.assert_allclose(boxes[:, 0], x_min, atol=1e-5)
    np.testing.assert_allclose(boxes[:, 3], y_max, atol=1e-5)
    model.save(tmp_path / "grid.keras")
    loaded = load_model(tmp_path / "grid.keras")  # safe mode: stock layers only
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0)["box"], boxes, atol=1e-5)


def test_box_head_auto_is_the_grid_on_pretrained_features_pooled_from_random_init():
    assert ModelParams().head == "pooled"
    assert ModelParams(weights="imagenet").head == "grid"
    assert ModelParams(weights="imagenet", box_head="pooled").head == "pooled"
    assert "box_pool" in [layer.name for layer in build_model(2, TINY).layers]


def test_keras_iou_metric_matches_the_numpy_definition():
    rng = np.random.default_rng(0)
    true = np.sort(rng.random((64, 2, 2)), axis=2).reshape(64, 4)  # x0<x1, y0<y1
    pred = rng.random((64, 4)) * 1.4 - 0.2  # out of range and unordered on purpose
    metric = BoxMeanIoU()
    metric.update_state(true, pred)
    ordered = np.clip(pred, 0, 1)
    ordered = np.stack(
        [
            ordered[:, :2].min(1),
            ordered[:, :2].max(1),
            ordered[:, 2:].min(1),
            ordered[:, 2:].max(1),
        ],
        axis=1,
    )
    assert float(metric.result()) == pytest.approx(iou(ordered, true).mean(), abs=1e-5)


def test_learning_rate_drops_tenfold_at_the_given_epochs():
    rates = [learning_rate_at(e, 1e-3, [3, 5]) for e in range(6)]
    assert rates == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])


def test_imagenet_weights_need_a_supported_size():
    with pytest.raises(UserError, match="no ImageNet"):
        build_model(3, ModelParams(weights="imagenet", image_size=96))


def test_imagenet_weights_load_from_the_keras_cache_offline(tmp_path):
    """`weights: imagenet` reads ~/.keras/models when the file is there: no download.

    MobileNetV3's ImageNet files are checked against a hash, so a stand-in cannot be tested.
    """
    script = textwrap.dedent("""
        import os, h5py, numpy as np, keras
        from keras.src.legacy.saving import legacy_h5_format
        from pipeline.core.config import ModelParams
        from pipeline.model.model import build_backbone

        def check(family, constructor, alpha, size, filename):
            ref = constructor(input_shape=(size, size, 3), alpha=alpha,
                              include_top=False, weights=None)
            rng = np.random.default_rng(0)
            ref.set_weights([rng.standard_normal(w.shape).astype("float32")
                             for w in ref.get_weights()])
            # Keras' ImageNet files use the legacy HDF5 weights layout.
            with h5py.File(os.environ["KERAS_HOME"] + "/models/" + filename, "w") as f:
                legacy_h5_format.save_weights_to_hdf5_group(f, ref)
            params = ModelParams(backbone=family, alpha=alpha, image_size=size,
                                 weights="imagenet")
            got = build_backbone(params)
            assert all(np.array_equal(a, b)
                       for a, b in zip(ref.get_weights(), got.get_weights()))
            print("loaded", family)

        check("mobilenet", keras.applications.MobileNet, 0.25, 128,
              "mobilenet_2_5_128_tf_no_top.h5")
        check("mobilenet_v2", keras.applications.MobileNetV2, 0.35, 96,
              "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5")
    """)
    (tmp_path / "models").mkdir()
    env = {**os.environ, "KERAS_HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded mobilenet\n" in done.stdout and "loaded mobilenet_v2" in done.stdout


@pytest.mark.parametrize(
    ("backbone", "alpha"),
    [
        ("mobilenet", 0.25),
        ("mobilenet_v2", 0.35),
        ("mobilenet_v3_small", 0.75),
        pytest.param("mobilenet_v3_large", 0.75, marks=pytest.mark.slow),
    ],
)
def test_every_family_takes_pixels_and_loads_in_safe_mode(tmp_path, backbone, alpha):
    params = ModelParams(backbone=backbone, alpha=alpha, image_size=32, box_head_filters=8)
    model = build_model(3, params)
    assert model.inputs[0].dtype == "float32"
    names = [layer.name for layer in model.layers]
    # Each family scales 0-255 pixels inside the model: v1/v2 in "preprocess", v3 itself.
    rescaling = [layer for layer in backbone_of(model).layers if "rescaling" in layer.name]
    assert ("preprocess" in names) != bool(rescaling)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")  # safe mode: no Lambda layers
    want, got = model.predict(pixels, verbose=0), loaded.predict(pixels, verbose=0)
    assert np.allclose(want["box"], got["box"], atol=1e-5)
    assert np.allclose(want["class"], got["class"], atol=1e-5)


def test_alpha_must_exist_for_the_family():
    with pytest.raises(ValidationError, match=r"alpha 0.25 does not exist for mobilenet_v3_small"):
        ModelParams(backbone="mobilenet_v3_small", alpha=0.25)
    with pytest.raises(ValidationError, match=r"alpha 0.35 does not exist for mobilenet:"):
        ModelParams(alpha=0.35)
    with pytest.raises(ValidationError, match="none, imagenet or a path"):
        ModelParams(weights="imagenet21k")
    assert ModelParams(backbone="mobilenet_v2", alpha=1.4).alpha == 1.4


def test_heads_on_cached_features_equal_the_whole_model():
    model = build_model(4, TINY)
    pixels = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    features = feature_extractor(model).predict(pixels, verbose=0)
    from_features = heads_model(model).predict(features, verbose=0)
    whole = model.predict(pixels, verbose=0)
    for name in ("class", "box"):
        assert np.allclose(from_features[name], whole[name], atol=1e-6)
    assert heads_model(model).get_layer("box_conv") is model.get_layer("box_conv")


@pytest.mark.parametrize("head", ["pooled", "grid"])
def test_mixed_precision_keeps_float32_outputs(head):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(3, TINY.model_copy(update={"box_head": head, "image_size": 64}))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("box_conv").compute_dtype == "float16"
    assert {tensor.dtype for tensor in model.outputs} == {"float32"}
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    boxes = model.predict(pixels, verbose=0)["box"]
    assert np.isfinite(boxes).all() and (boxes[:, 0] <= boxes[:, 1]).all()


# Starting from a backbone saved in a file (the book starts from its own classifier).


def tiny_classifier(tmp_path: Path, alpha: float = 0.25, size: int = 32):
    """A classifier in the book's shape (MobileNet sub-model first), saved three ways."""
    base = keras.applications.MobileNet(
        input_shape=(size, size, 3), alpha=alpha, include_top=False, weights=None
    )
    classifier = keras.Sequential(
        [base, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")]
    )
    classifier.build((None, size, size, 3))
    classifier.save(tmp_path / "classifier.keras")
    classifier.save(tmp_path / "classifier.h5")  # Keras 3's legacy HDF5 path
    base.save_weights(tmp_path / "backbone.weights.h5")
    return base


def same_weights(a: keras.Model, b: keras.Model) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))


def test_backbone_is_reused_from_a_model_or_weights_file(tmp_path):
    base = tiny_classifier(tmp_path)
    for name in ("classifier.keras", "classifier.h5", "backbone.weights.h5"):
        params = ModelParams(alpha=0.25, image_size=32, weights=str(tmp_path / name))
        assert same_weights(base, build_backbone(params)), name
    # A classifier built on base.output has the MobileNet layers at its own top level.
    flat = keras.Model(base.input, keras.layers.GlobalAveragePooling2D()(base.output))
    flat.save(tmp_path / "flat.keras")
    params = ModelParams(alpha=0.25, image_size=32, weights=str(tmp_path / "flat.keras"))
    assert same_weights(base, build_backbone(params))
    # An earlier snackloc model works as well: its backbone is nested the same way.
    model = build_model(3, ModelParams(alpha=0.25, image_size=32, box_head_filters=8))
    model.save(tmp_path / "snackloc.keras")
    again = build_backbone(
        ModelParams(alpha=0.25, image_size=32, weights=str(tmp_path / "snackloc.keras"))
    )
    assert same_weights(backbone_of(model), again)


@pytest.mark.parametrize(
    ("change", "message", "hint"),
    [
        ({"backbone": "mobilenet_v2", "alpha": 0.5}, "its backbone is mobilenet,", "backbone:"),
        ({"image_size": 64}, "takes 32 px images", "image_size: 32"),
        ({"alpha": 0.5}, "has weights of shape", "model.alpha"),
    ],
)
def test_a_backbone_that_does_not_fit_is_named(tmp_path, change, message, hint):
    tiny_classifier(tmp_path)
    values = {"alpha": 0.25, "image_size": 32, "weights": str(tmp_path / "classifier.h5")}
    with pytest.raises(UserError, match=message) as err:
        build_backbone(ModelParams(**{**values, **change}))
    assert hint in str(err.value)


def test_weights_files_that_do_not_fit_or_do_not_exist(tmp_path):
    tiny_classifier(tmp_path)
    wrong_alpha = ModelParams(
        alpha=0.5, image_size=32, weights=str(tmp_path / "backbone.weights.h5")
    )
    with pytest.raises(UserError, match=r"do not fit model.backbone=mobilenet alpha=0.5"):
        build_backbone(wrong_alpha)
    with pytest.raises(UserError, match="is not a file"):
        build_backbone(ModelParams(weights=str(tmp_path / "missing.keras")))
    no_mobilenet = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    no_mobilenet.save(tmp_path / "dense.keras")
    with pytest.raises(UserError, match="no MobileNet backbone found"):
        build_backbone(ModelParams(weights=str(tmp_path / "dense.keras")))


def test_giou_loss_hand_computed_cases():
    from pipeline.model.model import giou_loss

    true = np.array([[0.0, 0.5, 0.0, 0.5]] * 3, dtype="float32")
    pred = np.array(
        [
            [0.0, 0.5, 0.0, 0.5],  # identical: IoU 1, loss 0
            [0.5, 1.0, 0.0, 0.5],  # touching: IoU 0, hull 0.5, union 0.5 -> GIoU 0, loss 1
            [0.75, 1.0, 0.75, 1.0],  # apart: hull 1, union 0.3125 -> GIoU -0.6875
        ],
        dtype="float32",
    )
    loss = np.asarray(giou_loss(true, pred))
    assert loss == pytest.approx([0.0, 1.0, 1.6875], abs=1e-6)
    # Unordered predictions are scored as the box they describe.
    assert float(np.asarray(giou_loss(true[:1], pred[:1, [1, 0, 3, 2]]))[0]) == pytest.approx(0)


def test_label_smoothing_spreads_the_target_over_all_classes():
    from pipeline.model.model import class_loss

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype="float32")
    labels = np.array([0, 1])
    eps = 0.3
    loss = np.asarray(class_loss(eps)(labels, probs))
    target = np.full((2, 3), eps / 3) + (1 - eps) * np.eye(3)[labels]
    expected = -(target * np.log(probs)).sum(axis=1)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert class_loss(0.0) == "sparse_categorical_crossentropy"


def test_weight_averaging_keeps_the_averaged_weights():
    from pipeline.model.model import compile_model

    keras.utils.set_random_seed(0)
    model = build_model(3, TINY)
    compile_model(model, 0.05, 1.0, "giou_l1", ema_momentum=0.9)
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = {"class": np.arange(8) % 3, "box": np.tile([0.2, 0.6, 0.3, 0.7], (8, 1))}
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.fit(x, y, batch_size=4, epochs=3, verbose=0)
    averages = model.optimizer._model_variables_moving_average
    # At the end of fit Keras copies the averages into the model, which moved from its start.
    for var, avg in zip(model.trainable_variables, averages, strict=True):
        np.testing.assert_array_equal(var.numpy(), avg.numpy())
    moved = zip(before, model.trainable_variables, strict=True)
    assert any(not np.allclose(b, v.numpy()) for b, v in moved)


@pytest.mark.parametrize("task", ["localize", "detect"])
def test_train_clip_norm_reaches_the_optimizer_of_either_task(task):
    from pipeline.core.config import Params, TrainParams
    from pipeline.model import hardware
    from pipeline.model.fit import compile_phase

    model_params = TINY.model_copy(update={"task": task, "image_size": 64})
    model = build_model(3, model_params)
    for clip_norm, expected in ((10.0, 10.0), (0.0, None)):
        params = Params(model=model_params, train=TrainParams(clip_norm=clip_norm))
        compile_phase(model, model, params, hardware.configure(params.train), ema=0.0)
        assert model.optimizer.global_clipnorm == expected
