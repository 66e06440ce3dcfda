"""The bad-input corpus of issue 7: every kind of malformed file a user may hand snackloc.

The corpus is built by code in tmp folders (nothing is downloaded) and goes through the real
entry points:

- one dataset whose CSVs hold every malformed row and every odd image file, validated by
  ``pipeline.stages.validate.run`` once (module fixture); each case then asserts its own row:
  bad rows are quarantined with a named reason and a detail, good rows (odd but readable images
  included) are kept, and no row is lost;
- CSV files unusable as a whole (empty, missing columns...): a UserError naming the file;
- params.yaml mistakes through the ``snackloc`` console script (a subprocess): exit 2, one
  ``error:`` line naming the key, no traceback;
- ``snackloc predict`` on files that are not images: a clear message, exit 1, no traceback.

``CASE_COUNT`` at the bottom counts the cases (the README quotes it).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers_data import (
    ann,
    make_params,
    noise_image,
    png_header_only,
    read_text_csv,
    write_image,
)
from PIL import Image
from typer.testing import CliRunner

from pipeline.core.errors import UserError
from pipeline.core.paths import Outputs
from pipeline.data.contract import (
    ANNOTATION_COLUMNS,
    SPLITS,
    read_clean_annotations,
    read_raw_annotations,
)
from pipeline.data.quality import imagecheck
from pipeline.stages import dedup, validate

SNACKLOC = Path(sys.executable).parent / "snackloc"
EXTRA = "note"  # an extra column in the train CSV: kept in the quarantine, ignored otherwise
HUGE = 1_000_000  # characters in the "huge line" cell


# --- images -------------------------------------------------------------------------------


def _truncated(path: Path) -> None:
    buffer = io.BytesIO()
    noise_image("truncated", (128, 128)).save(buffer, "JPEG", quality=95)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _sixteen_bit(path: Path) -> None:
    pixels = np.random.default_rng(16).integers(0, 65536, size=(32, 40), dtype=np.uint16)
    write_image(path, Image.fromarray(pixels), fmt="PNG")


def _exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    write_image(path, noise_image("exif", (40, 32)), exif=exif)


def _symlink_outside(path: Path) -> None:
    outside = write_image(path.parents[3] / "elsewhere" / "secret.jpg")
    os.symlink(outside, path)


# --- the corpus: one train row per case ---------------------------------------------------
# case id -> (cells as written in the CSV, or a row dict; the file to make at the row's image
# path, or None for a plain JPEG; the quarantine reasons expected, empty = kept clean).

CELLS = ["image_id", "x_min", "x_max", "y_min", "y_max", "class_name", "folder", EXTRA]


def line(*cells: str) -> str:
    return ",".join(cells)


ROW_CASES: dict[str, tuple[dict[str, str] | str, object, set[str]]] = {
    # tabular
    "csv-good-row": (ann("good0", note="fine"), None, set()),
    "csv-huge-line-1MB-cell": (ann("huge", note="x" * HUGE), None, set()),
    "csv-text-in-number": (ann("text", box=("abc", "0.9", "0.2", "0.8")), None, {"not_a_number"}),
    "csv-nan": (ann("nan", box=("0.1", "NaN", "0.2", "0.8")), None, {"not_a_number"}),
    "csv-inf": (ann("inf", box=("0.1", "0.9", "inf", "0.8")), None, {"not_a_number"}),
    "csv-minus-inf": (ann("minf", box=("-inf", "0.9", "0.2", "0.8")), None, {"not_a_number"}),
    "csv-swapped-coordinate-order": (  # x_min,y_min,x_max,y_max values under the xxyy header
        ann("swapped", box=("0.1", "0.2", "0.9", "0.8")),
        None,
        {"inverted_box"},
    ),
    "csv-missing-cells": (line("short", "0.1", "0.9"), None, {"missing_value"}),
    "csv-empty-class": (ann("noclass", cls="", folder="cake"), None, {"missing_value"}),
    "csv-unknown-class": (ann("pizza", cls="pizza", folder="cake"), None, {"unknown_class"}),
    # images (folder "cake"; the file is made at train/cake/<image_id>.jpg)
    "img-truncated": (ann("truncated"), _truncated, {"unreadable_image"}),
    "img-zero-bytes": (ann("zero"), lambda p: p.write_bytes(b""), {"unreadable_image"}),
    "img-text-named-jpg": (ann("text-jpg"), lambda p: p.write_text("hi\n"), {"unreadable_image"}),
    "img-png-named-jpg": (ann("png"), lambda p: write_image(p, fmt="PNG"), set()),
    "img-bmp-named-jpg": (ann("bmp"), lambda p: write_image(p, fmt="BMP"), set()),
    "img-cmyk": (ann("cmyk"), lambda p: write_image(p, noise_image("c", mode="CMYK")), set()),
    "img-16-bit": (ann("sixteen"), _sixteen_bit, set()),
    "img-palette": (
        ann("palette"),
        lambda p: write_image(p, noise_image("p", mode="P"), fmt="PNG"),
        set(),
    ),
    "img-alpha": (
        ann("alpha"),
        lambda p: write_image(p, noise_image("a", mode="RGBA"), fmt="PNG"),
        set(),
    ),
    "img-gray-alpha": (
        ann("gray-alpha"),
        lambda p: write_image(p, noise_image("la", mode="LA"), fmt="PNG"),
        set(),
    ),
    "img-exif-rotated": (ann("exif"), _exif_rotated, set()),
    "img-1x1": (
        ann("tiny"),
        lambda p: write_image(p, noise_image("1", (1, 1))),
        {"image_too_small"},
    ),
    "img-decompression-bomb-header": (
        ann("bomb"),
        lambda p: png_header_only(p, 40_000, 40_000),
        {"image_too_large"},
    ),
    "img-symlink-outside-data": (ann("link"), _symlink_outside, {"unsafe_path"}),
    "img-missing-file": (ann("gone"), "missing", {"missing_image"}),
    "img-id-dot-dot-slash": (ann("../../../elsewhere/secret"), "none", {"unsafe_path"}),
    "img-id-too-long-for-the-filesystem": (ann("n" * 300), "none", {"missing_image"}),
}
DECODED_FINE = [case for case, (_, _, bad) in ROW_CASES.items() if not bad]


def _cells(row: dict[str, str] | str) -> str:
    if isinstance(row, str):
        return row
    return line(*(row.get(column, "") for column in CELLS))


def build_corpus(root: Path) -> None:
    """train: every ROW_CASES row, UTF-8 with BOM, CRLF, an extra column; val: header only;
    test: the coordinate columns in another (x_min,y_min,x_max,y_max) header order."""
    train = [line(*CELLS), *(_cells(row) for row, _, _ in ROW_CASES.values())]
    (root / "annotations-train.csv").write_bytes("\r\n".join(train).encode("utf-8-sig") + b"\r\n")
    (root / "annotations-val.csv").write_text(line(*ANNOTATION_COLUMNS) + "\n")
    reordered = ["image_id", "x_min", "y_min", "x_max", "y_max", "class_name", "folder"]
    test = [line(*reordered), line("s0", "0.1", "0.2", "0.7", "0.8", "apple", "apple")]
    (root / "annotations-test.csv").write_text("\n".join(test) + "\n")
    write_image(root / "test" / "apple" / "s0.jpg")
    for row, make, _ in ROW_CASES.values():
        if isinstance(row, str) or make in ("missing", "none"):
            continue
        path = root / "train" / row["folder"] / f"{row['image_id']}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        (make or write_image)(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(report, outputs, root, decoded paths) of one validate run over the whole corpus."""
    tmp = tmp_path_factory.mktemp("corpus")
    root = tmp / "data" / "snacks"
    root.mkdir(parents=True)
    build_corpus(root)
    decoded: list[Path] = []
    real_open = imagecheck.open_image_rgb
    outputs = Outputs(tmp / "outputs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            imagecheck,
            "open_image_rgb",
            lambda path, **kw: decoded.append(path) or real_open(path, **kw),
        )
        report = validate.run(make_params(root), outputs, progress=False)
    return report, outputs, root, decoded


def _quarantined(outputs: Outputs) -> dict[tuple[str, int], dict[str, str]]:
    return {
        (r["split"], int(r["row"])): r for r in read_text_csv(outputs.quarantine).to_dict("records")
    }


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_corpus_row(corpus, case):
    """Each bad row is quarantined with its reason and a detail; each good one is kept."""
    _, outputs, _, _ = corpus
    row = list(ROW_CASES).index(case)
    expected = ROW_CASES[case][2]
    record = _quarantined(outputs).get(("train", row))
    clean_rows = read_clean_annotations(outputs.validated("train"))["row"].tolist()
    if not expected:
        assert record is None, record and record["detail"]
        assert row in clean_rows
        return
    assert record is not None and row not in clean_rows
    assert set(record["reasons"].split(";")) == expected
    assert all(f"{check}:" in record["detail"] for check in expected), record["detail"]


def test_corpus_conserves_every_row_and_keeps_the_original_text(corpus):
    report, outputs, _, _ = corpus
    quarantined = _quarantined(outputs)
    for split in SPLITS:
        rows = report["per_split"][split]["rows"]
        clean = set(read_clean_annotations(outputs.validated(split))["row"])
        bad = {row for where, row in quarantined if where == split}
        assert clean | bad == set(range(rows)) and not clean & bad, split
    assert report["per_split"]["train"]["rows"] == len(ROW_CASES)
    assert report["per_split"]["train"]["quarantined"] == sum(
        bool(c[2]) for c in ROW_CASES.values()
    )
    # the extra column is kept as written in the quarantine; the BOM and CR are not in any name
    frame = read_text_csv(outputs.quarantine)
    assert EXTRA in frame.columns and "\ufeffimage_id" not in frame.columns
    assert not any(value.endswith("\r") for value in frame[EXTRA])
    clean = read_text_csv(outputs.validated("train"))
    assert not any("\r" in value for value in clean["folder"]), "CRLF left a CR in the cells"


def test_corpus_header_only_and_reordered_header(corpus):
    report, outputs, _, _ = corpus
    assert report["per_split"]["val"] == {"rows": 0, "clean": 0, "quarantined": 0}
    test = read_clean_annotations(outputs.validated("test")).iloc[0]
    assert (test["x_min"], test["x_max"], test["y_min"], test["y_max"]) == (0.1, 0.7, 0.2, 0.8)
    assert report["warnings"]["column_order"] == 1


def test_corpus_huge_cell_is_kept_whole(corpus):
    _, outputs, root, _ = corpus
    # the stage's reader takes the 1 MB cell whole, and its row is kept
    raw = read_raw_annotations(root / "annotations-train.csv")
    row = list(ROW_CASES).index("csv-huge-line-1MB-cell")
    assert len(raw.at[row, EXTRA]) == HUGE and raw.at[row, "image_id"] == "huge"
    assert row in read_clean_annotations(outputs.validated("train"))["row"].tolist()


def test_corpus_bomb_is_refused_unread_and_odd_images_are_noted(corpus):
    report, outputs, root, decoded = corpus
    assert root / "train" / "cake" / "bomb.jpg" not in decoded
    row = list(ROW_CASES).index("img-decompression-bomb-header")
    assert "1600000000 pixels" in _quarantined(outputs)[("train", row)]["detail"]
    noted = report["details"]["noted_images"]
    assert "mode_CMYK" in noted["train/cake/cmyk.jpg"]
    assert "exif_orientation" in noted["train/cake/exif.jpg"]
    assert "mode_I;16" in noted["train/cake/sixteen.jpg"]


def test_corpus_goes_on_through_dedup(corpus):
    """The next stage reads the clean files and hashes every kept image (CMYK, 16-bit...)."""
    report, outputs, root, _ = corpus
    result = dedup.run(make_params(root), outputs, progress=False)
    assert result["rows_in"] == report["rows_clean"]
    assert result["images_hashed"] >= len(DECODED_FINE)


# --- CSV files unusable as a whole --------------------------------------------------------

HEADER = line(*ANNOTATION_COLUMNS)
GOOD = line("v0", "0.1", "0.9", "0.2", "0.8", "cake", "cake")
FILE_CASES = [
    pytest.param("", "empty file", id="csv-empty-file"),
    pytest.param(
        line(*ANNOTATION_COLUMNS[:-1]) + "\nv0,0.1,0.9,0.2,0.8,cake\n",
        "missing column.*folder",
        id="csv-missing-column",
    ),
    pytest.param(
        "id,xmin,xmax,ymin,ymax,label,dir\n" + GOOD + "\n",
        "missing column.*image_id",
        id="csv-wrong-column-names",
    ),
    pytest.param(
        HEADER + "\n" + GOOD + "\n" + GOOD + ",surprise\n",
        "Expected 7 fields in line 3, saw 8",
        id="csv-extra-cell-in-a-row",
    ),
    pytest.param(
        HEADER + "\n" + GOOD + ",surprise\n",
        "more cells than",
        id="csv-extra-cell-in-every-row",
    ),
]


@pytest.mark.parametrize(("text", "message"), FILE_CASES)
def test_unusable_csv_file_is_a_user_error_naming_it(tmp_path, text, message):
    root = tmp_path / "data"
    for split in SPLITS:
        (root / split / "cake").mkdir(parents=True)
        (root / f"annotations-{split}.csv").write_text(HEADER + "\n")
    path = root / "annotations-val.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        validate.run(make_params(root), Outputs(tmp_path / "outputs"), progress=False)
    assert str(path) in err.value.message
    assert err.value.hint, "every user error carries a hint"


# --- params.yaml through the console script -----------------------------------------------

PARAMS_CASES = {
    "params-unknown-key": ({"train": {"epoch": 3}}, "train.epoch"),
    "params-unknown-section": ({"trian": {"epochs": 3}}, "trian"),
    "params-wrong-type-text": ({"train": {"epochs": "three"}}, "train.epochs"),
    "params-wrong-type-list": ({"validate": {"min_image_side": [1, 2]}}, "validate.min_image_side"),
    "params-out-of-range-fraction": ({"validate": {"max_bad_fraction": 1.5}}, "max_bad_fraction"),
    "params-out-of-range-negative": ({"train": {"epochs": -1}}, "train.epochs"),
    "params-not-a-mapping": ([1, 2, 3], "expected a mapping"),
    "params-not-yaml": ("train: [unclosed", "not valid YAML"),
}


@pytest.mark.parametrize("case", list(PARAMS_CASES))
def test_bad_params_through_the_cli(tmp_path, case):
    tree, named = PARAMS_CASES[case]
    path = tmp_path / "params.yaml"
    path.write_text(tree if isinstance(tree, str) else yaml.safe_dump(tree))
    done = subprocess.run(
        [str(SNACKLOC), "validate", "--params", str(path), "--outputs", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: "), done.stderr
    assert str(path) in done.stderr and named in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "o").exists()  # refused before any stage ran


# --- snackloc predict on files that are not images -----------------------------------------

PREDICT_CASES = {
    "predict-text-file": ("notes.txt", lambda p: p.write_text("not an image\n")),
    "predict-text-named-jpg": ("fake.jpg", lambda p: p.write_text("not an image\n")),
    "predict-zero-bytes": ("empty.jpg", lambda p: p.write_bytes(b"")),
    "predict-directory": ("folder.jpg", lambda p: p.mkdir()),
}


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """One `snackloc predict` call over every PREDICT_CASES file and one good image."""
    from helpers_model import save_tiny_model

    from pipeline.cli import app

    tmp = tmp_path_factory.mktemp("predict")
    model, classes = save_tiny_model(tmp / "model", ["apple", "banana", "cake"])
    paths = []
    for name, make in PREDICT_CASES.values():
        paths.append(tmp / name)
        make(paths[-1])
    good = write_image(tmp / "good.jpg")
    args = ["predict", *map(str, paths), str(good), "--model", str(model)]
    done = CliRunner().invoke(app, [*args, "--classes", str(classes), "--out", str(tmp / "out")])
    done_json = CliRunner().invoke(app, [*args, "--classes", str(classes), "--json"])
    return done, done_json, tmp, good


@pytest.mark.parametrize("case", list(PREDICT_CASES))
def test_predict_on_a_non_image(predicted, case):
    done, done_json, tmp, good = predicted
    bad = tmp / PREDICT_CASES[case][0]
    for run in (done, done_json):
        assert run.exit_code == 1, run.output
        assert isinstance(run.exception, SystemExit)  # typer.Exit, not an uncaught error
        assert "Traceback" not in run.output
        messages = [m for m in run.stderr.splitlines() if m.startswith(f"error: {bad}: ")]
        assert len(messages) == 1, run.stderr
    assert all(m.startswith("error: ") for m in done.stderr.splitlines())
    results = {r["image"]: r for r in json.loads(done_json.stdout)}
    assert results[str(bad)]["error"] and results[str(bad)]["class_name"] is None
    assert results[str(good)]["error"] is None  # the good image is still predicted
    assert (tmp / "out" / "good.jpg").is_file()


CASE_COUNT = len(ROW_CASES) + 3 + len(FILE_CASES) + len(PARAMS_CASES) + len(PREDICT_CASES)
# 3 = the split-level CSV cases: UTF-8 BOM + CRLF + extra column (train), header only (val),
# reordered header (test), asserted by the corpus tests above.
