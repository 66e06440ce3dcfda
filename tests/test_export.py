"""`snackloc export`: a TFLite file whose outputs match the Keras model's, checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_data import scene_image, write_image
from helpers_model import save_tiny_model
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.ops import export, predict

CLASSES = ["apple", "banana", "cake", "donut"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model whose heads give distinct answers per image (an untrained one says
    1/N for every class, which any export would match)."""
    import keras

    folder = tmp_path_factory.mktemp("model")
    model_path, classes = save_tiny_model(folder, CLASSES)
    model = keras.saving.load_model(model_path, compile=False)
    rng = np.random.default_rng(0)
    for weight in model.weights:  # as if trained a little: outputs differ between images
        value = weight.numpy()
        noise = rng.normal(0, 0.3, value.shape).astype("float32")
        weight.assign(np.abs(value + noise) + 0.5 if "variance" in weight.path else value + noise)
    model.save(model_path)
    return model_path, classes


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    return [write_image(folder / f"{i}.jpg", scene_image(str(i), (48, 40))) for i in range(12)]


def test_float32_tflite_matches_keras_and_says_so(tiny, photos, tmp_path):
    predictor = predict.load_predictor(str(tiny[0]), tiny[1])
    out = tmp_path / "m.tflite"
    check = export.export_tflite(predictor, out, "float32", photos, None)
    assert check.passed and check.images == 12 and check.tolerance == 1e-3
    assert check.max_abs_diff_class < 1e-3 and check.max_abs_diff_box < 1e-3
    images, _ = export.check_images(predictor, photos)
    keras_probs, keras_boxes = predictor.infer(images)
    assert keras_probs.std(axis=0).max() > 1e-6  # not the same answer for every image
    probs, boxes = export.run_tflite(out.read_bytes(), images)
    np.testing.assert_allclose(probs, keras_probs, atol=1e-3)
    np.testing.assert_allclose(boxes, keras_boxes, atol=1e-3)
    report = json.loads((tmp_path / "m.tflite.check.json").read_text())
    assert report["passed"] is True and report["quantize"] == "float32"


def test_cli_quantized_export_fails_when_over_the_tolerance(tiny, photos, tmp_path):
    model, classes = tiny
    args = ["export", "-m", str(model), "--classes", str(classes), "--check", str(photos[0].parent)]
    runner = CliRunner()
    done = runner.invoke(app, [*args, "-o", str(tmp_path / "h.tflite"), "--quantize", "float16"])
    assert done.exit_code == 0, done.output
    assert "within the tolerance 0.01" in done.stdout
    done = runner.invoke(app, [*args, "-o", str(tmp_path / "s.tflite"), "--quantize", "float16",
                               "--tolerance", "1e-9"])  # fmt: skip
    assert done.exit_code == 1 and "OVER the tolerance" in done.stdout
    done = runner.invoke(app, [*args, "-o", str(tmp_path / "x"), "--format", "onnx"])
    assert done.exit_code == 2 and "unknown --format 'onnx'" in done.stderr
