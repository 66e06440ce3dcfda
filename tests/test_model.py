"""The two-head model: shapes, the IoU metric, and both backbone initialisations offline."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.boxes import iou
from pipeline.config import ModelParams
from pipeline.errors import UserError
from pipeline.model import BoxMeanIoU, build_model
from pipeline.train import learning_rate_at

TINY = ModelParams(alpha=0.25, image_size=32, box_head_filters=16)


def test_two_heads_with_the_right_shapes():
    model = build_model(5, TINY)
    out = model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0)
    assert out["class"].shape == (2, 5) and out["box"].shape == (2, 4)
    assert np.allclose(out["class"].sum(axis=1), 1.0, atol=1e-5)  # softmax


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
    """`weights: imagenet` reads ~/.keras/models when the file is there: no download."""
    script = textwrap.dedent("""
        import numpy as np, keras
        from pipeline.config import ModelParams
        from pipeline.model import build_backbone
        ref = keras.applications.MobileNet(input_shape=(128, 128, 3), alpha=0.25,
                                           include_top=False, weights=None)
        rng = np.random.default_rng(0)
        ref.set_weights([rng.standard_normal(w.shape).astype("float32")
                         for w in ref.get_weights()])
        # Keras' ImageNet files use the legacy HDF5 weights layout.
        import os, h5py
        from keras.src.legacy.saving import legacy_h5_format
        path = os.environ["KERAS_HOME"] + "/models/mobilenet_2_5_128_tf_no_top.h5"
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, ref)
        got = build_backbone(ModelParams(alpha=0.25, image_size=128, weights="imagenet"))
        assert all(np.array_equal(a, b) for a, b in zip(ref.get_weights(), got.get_weights()))
        print("loaded")
    """)
    (tmp_path / "models").mkdir()
    env = {**os.environ, "KERAS_HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded" in done.stdout
