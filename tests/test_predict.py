"""`snackloc predict` on every kind of image a user may have, with a real (tiny) model."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_data import ann, noise_image, write_csv_rows, write_image
from helpers_model import save_tiny_detector, save_tiny_model
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core import env
from pipeline.core.errors import UserError
from pipeline.data.boxes import to_pixels
from pipeline.ops import inputs, predict

CLASSES = ["apple", "banana", "cake"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model.keras, classes.json) of an untrained tiny model."""
    return save_tiny_model(tmp_path_factory.mktemp("model"), CLASSES)


@pytest.fixture
def images(tmp_path):
    """One file per case, keyed by what it is: (path, displayed width × height or None)."""
    folder = tmp_path / "in"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display: stored 60×40, shown 40×60
    truncated = io.BytesIO()
    noise_image("t", (64, 48)).save(truncated, "JPEG")
    corrupt = folder / "corrupt.jpg"
    cases = {
        "rgb": (write_image(folder / "rgb.jpg", noise_image("a", (60, 40))), (60, 40)),
        "gray": (write_image(folder / "gray.jpg", noise_image("b", (50, 70), "L")), (50, 70)),
        "png": (
            write_image(folder / "png.jpg", noise_image("c", (33, 21), "RGBA"), "PNG"),
            (33, 21),
        ),
        "cmyk": (write_image(folder / "cmyk.jpg", noise_image("d", (45, 45), "CMYK")), (45, 45)),
        "exif": (write_image(folder / "exif.jpg", noise_image("e", (60, 40)), exif=exif), (40, 60)),
        "big": (write_image(folder / "big.jpg", noise_image("f", (1200, 300))), (1200, 300)),
        "corrupt": (corrupt, None),
        "missing": (folder / "missing.jpg", None),
    }
    corrupt.write_bytes(truncated.getvalue()[:300])
    return cases


def test_predicts_every_readable_image_and_reports_the_bad_ones(tiny, images, tmp_path):
    model, classes = tiny
    predictor = predict.load_predictor(str(model), classes)
    assert predictor.image_size == 32 and predictor.classes == CLASSES
    paths = [path for path, _ in images.values()]
    results = {r.image: r for r in predict.predict_images(predictor, paths, tmp_path / "out")}
    for name, (path, size) in images.items():
        result = results[str(path)]
        if size is None:
            assert result.error and result.class_name is None, name
            continue
        assert result.error is None, (name, result.error)
        assert (result.width, result.height) == size, name
        assert result.class_name in CLASSES and 0 < result.probability <= 1
        x0, x1, y0, y1 = result.box
        assert 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1
        px0, px1, py0, py1 = result.box_pixels
        assert 0 <= px0 <= px1 <= size[0] and 0 <= py0 <= py1 <= size[1]
        with Image.open(result.drawn) as drawn:
            assert drawn.size == size and drawn.format == "JPEG"
    assert results[str(images["missing"][0])].error == "file not found"
    assert "truncated" in results[str(images["corrupt"][0])].error.lower()


def test_cli_json_output_and_exit_status(tiny, images, tmp_path):
    model, classes = tiny
    good = [str(images["rgb"][0]), str(images["gray"][0])]
    args = ["predict", *good, "--model", str(model), "--classes", str(classes)]
    runner = CliRunner()
    done = runner.invoke(app, [*args, "--out", str(tmp_path / "o"), "--json"])
    assert done.exit_code == 0, done.output
    rows = json.loads(done.stdout)
    assert [r["image"] for r in rows] == good and all(r["error"] is None for r in rows)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["gray.jpg", "rgb.jpg"]

    done = runner.invoke(app, [*args, str(images["corrupt"][0]), "--out", str(tmp_path / "o2")])
    assert done.exit_code == 1
    assert "corrupt.jpg: cannot decode the image" in done.stderr
    assert "rgb.jpg" in done.stdout and "x_min, x_max, y_min, y_max" in done.stdout


def test_folders_globs_and_annotation_csvs_name_their_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    a, b = (write_image(data / "test" / "cake" / f"{i}.jpg") for i in ("a", "b"))
    nested = write_image(tmp_path / "photos" / "x" / "n.PNG", fmt="PNG")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    csv = write_csv_rows(
        data, "test", [ann("a"), ann("a", "ice cream", "cake"), ann("b"), ann("..")]
    )
    assert inputs.collect_images([csv]) == [a, b]  # once each, traversal ids never read
    moved = tmp_path / "elsewhere" / "annotations-test.csv"  # no test/ beside it: data/
    moved.parent.mkdir()
    moved.write_text(csv.read_text())
    assert [p.resolve() for p in inputs.collect_images([moved])] == [a, b]
    found = inputs.collect_images([Path("photos"), Path("data/**/*.jpg"), a, Path("gone.jpg")])
    assert found == [Path("photos/x/n.PNG"), Path("data/test/cake/a.jpg"),
                     Path("data/test/cake/b.jpg"), a, Path("gone.jpg")]  # fmt: skip
    assert nested.is_file()
    with pytest.raises(UserError, match="matches no file"):
        inputs.collect_images([Path("nowhere/*.jpg")])
    with pytest.raises(UserError, match="not an annotation CSV"):
        (tmp_path / "list.csv").write_text("image_id\n")
        inputs.collect_images([tmp_path / "list.csv"])


def test_a_batch_predicts_what_single_images_do_and_csv_output_lists_every_image(
    tiny, images, tmp_path
):
    model, classes = tiny
    predictor = predict.load_predictor(str(model), classes)
    paths = [path for path, _ in images.values()]
    batched = predict.predict_images(predictor, paths, batch=3, top_k=2)
    for one in paths:
        (alone,) = predict.predict_images(predictor, [one], batch=1, top_k=2)
        same = next(r for r in batched if r.image == alone.image)
        assert (same.class_name, same.box_pixels, same.error) == (
            alone.class_name, alone.box_pixels, alone.error,
        ), one  # fmt: skip
        if same.box:
            np.testing.assert_allclose(same.box, alone.box, atol=1e-4)
            assert same.top[0]["class_name"] == same.class_name
            assert len(same.top) == 2 and same.drawn is None

    done = CliRunner().invoke(
        app,
        ["predict", str(paths[0].parent), "-m", str(model), "--classes", str(classes),
         "-o", str(tmp_path / "r.csv"), "-q"],
    )  # fmt: skip
    assert done.exit_code == 1, done.output  # the corrupt image; the rest predicted
    import pandas as pd

    rows = pd.read_csv(tmp_path / "r.csv", keep_default_na=False)
    assert len(rows) == 7  # every image file of the folder (the missing one is not there)
    bad = rows[rows.image.str.endswith("corrupt.jpg")].iloc[0]
    assert "truncated" in bad.error.lower() and bad.class_name == ""
    good = rows[rows.error == ""].astype({c: float for c in predict.CSV_COLUMNS[3:13]})
    assert len(good) == 6 and set(good.class_name) <= set(CLASSES)
    assert (good.x_min <= good.x_max).all() and (good.x_max_px <= good.width).all()
    assert "6 predictions, 1 failed" in done.stdout


def test_a_detectors_csv_has_a_row_per_detection_within_the_limits(tiny, images, tmp_path):
    import pandas as pd

    model, classes = save_tiny_detector(tmp_path / "detector", CLASSES, max_detections=8)
    predictor = predict.load_predictor(str(model), classes)
    assert predictor.limits == predict.Limits(0.05, 8)  # the model's model.detect values
    paths = [images[name][0] for name in ("rgb", "gray", "big", "corrupt")]
    everything = predict.predict_images(predictor, paths)
    scores = [d["score"] for r in everything for d in r.detections or []]
    threshold = float(np.median(scores))  # half of them go
    args = ["predict", *map(str, paths), "-m", str(model), "--classes", str(classes), "-q"]
    limits = ["--score-threshold", str(threshold), "--max-detections", "3"]
    done = CliRunner().invoke(
        app, [*args, *limits, "-o", str(tmp_path / "d.csv"), "--out", str(tmp_path / "drawn")]
    )
    assert done.exit_code == 1, done.output  # the corrupt image; the rest predicted
    rows = pd.read_csv(tmp_path / "d.csv")  # empty cells: NaN
    assert list(rows.columns) == predict.DETECTION_CSV_COLUMNS
    kept = predict.predict_images(predictor, paths, limits=predict.Limits(threshold, 3))
    for result in kept:
        mine = rows[rows.image == result.image]
        if result.error:
            (row,) = mine.itertuples()
            assert np.isnan(row.rank) and "truncated" in row.error.lower()
            continue
        expected = [d for d in next(r for r in everything if r.image == result.image).detections
                    if d["score"] >= threshold][:3]  # fmt: skip
        assert result.detections == expected and 0 < len(expected) <= 3
        assert mine["rank"].tolist() == list(range(1, len(expected) + 1))
        assert mine.class_name.tolist() == [d["class_name"] for d in expected]
        assert mine.score.tolist() == sorted(mine.score, reverse=True)
        assert (mine.score >= threshold).all()
        for column, values in (("x_min", "box"), ("x_min_px", "box_pixels")):
            assert mine[column].tolist() == [d[values][0] for d in expected]
        assert (mine.x_max_px <= result.width).all() and Path(mine.drawn.iloc[0]).is_file()
    assert len(scores) > sum(len(r.detections or []) for r in kept)  # the limits took some
    done = CliRunner().invoke(app, ["predict", str(paths[0]), "-m", str(tiny[0]), "--classes",
                                    str(tiny[1]), "--max-detections", "3"])  # fmt: skip
    # a UserError: `snackloc` prints it as one line and exits with status 2
    assert isinstance(done.exception, UserError), done.output
    assert "answers one box per image" in done.exception.message


def test_same_names_in_two_folders_do_not_overwrite(tiny, tmp_path):
    model, classes = tiny
    paths = [write_image(tmp_path / d / "x.jpg") for d in ("a", "b")]
    predictor = predict.load_predictor(str(model), classes)
    drawn = [r.drawn for r in predict.predict_images(predictor, paths, tmp_path / "out")]
    assert drawn == [str(tmp_path / "out" / "x.jpg"), str(tmp_path / "out" / "x-2.jpg")]


def test_wrong_class_list_and_missing_registry_model_are_clear_errors(tiny, tmp_path, monkeypatch):
    model, _ = tiny
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"classes": ["a", "b"]}))
    with pytest.raises(UserError, match=r"predicts 3 classes but .* lists 2"):
        predict.load_predictor(str(model), two)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(UserError, match="cannot load model models:/nothing@champion"):
        predict.load_predictor("models:/nothing@champion")


def test_pixel_boxes_follow_the_contract_order():
    assert to_pixels([0.1, 0.5, 0.25, 1.0], 200, 100) == [20, 100, 25, 100]


def snackloc_predict(*args: str, cwd) -> subprocess.CompletedProcess:
    """`snackloc predict` in a new process, as a user runs it (the environment of a shell:
    no TF_CPP_MIN_LOG_LEVEL set by anyone else), reporting whether TensorFlow was loaded."""
    code = (
        "import sys; from pipeline.cli import main\n"
        "try:\n    main()\n"
        "finally:\n    print('tensorflow loaded:', 'tensorflow' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-c", code, "predict", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_missing_images_are_said_before_the_model_loads(tmp_path):
    done = snackloc_predict("missing.jpg", "gone.jpg", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: missing.jpg: no such file (and 1 more missing)"
    assert "tensorflow loaded: False" in done.stdout
    (tmp_path / "photos").mkdir()
    done = snackloc_predict("photos", cwd=tmp_path)
    assert "error: photos: no image in this folder" in done.stderr


@pytest.mark.skipif(env.NVIDIA_DRIVER.exists(), reason="the host has an NVIDIA driver")
def test_no_cuda_lines_on_a_host_without_a_gpu(tiny, tmp_path):
    model, classes = tiny
    image = write_image(tmp_path / "a.jpg", noise_image("a", (60, 40)))
    done = snackloc_predict(
        str(image), "--model", str(model), "--classes", str(classes), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "tensorflow loaded: True" in done.stdout
    assert "cuInit" not in done.stderr and "CUDA error" not in done.stderr
    # TensorFlow's load-time notices (printed before any log level applies) are held back.
    assert "absl::InitializeLog" not in done.stderr and "cudart_stub" not in done.stderr


def test_native_startup_notices_are_held_back_and_the_rest_passed_on(capfd):
    with env.quiet_native_startup():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are\n")
        os.write(2, b"I0000 00:00:1796530688.564422    2238 port.cc:153] oneDNN custom ops\n")
        os.write(2, b"W0000 00:00:1796530688.564724    2238 cudart_stub.cc:31] no cuda\n")
        os.write(2, b"a real error from C++\n")
        print("a Python warning", file=sys.stderr)
    # (pytest holds sys.stderr apart from fd 2, so only the set of lines is comparable here)
    lines = sorted(capfd.readouterr().err.splitlines())
    assert lines == ["a Python warning", "a real error from C++"]
