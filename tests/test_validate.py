"""Stage "validate": every named check, conservation of rows, image edge cases, threshold."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers_data import (
    ann,
    make_dataset,
    make_params,
    noise_image,
    png_header_only,
    read_text_csv,
    write_image,
)
from PIL import Image

from pipeline import validate
from pipeline.config import SPLITS
from pipeline.dataio import ANNOTATION_COLUMNS, read_clean_annotations
from pipeline.errors import UserError
from pipeline.paths import Outputs

GOOD_TRAIN = [ann("t0", "cake"), ann("t1", "apple"), ann("t2", "banana")]


def run_stage(tmp_path: Path, splits: dict, **kwargs) -> tuple[dict, Outputs]:
    """Build a dataset, run validate quietly, return (report, outputs)."""
    root = make_dataset(tmp_path / "data", splits, skip_images=kwargs.pop("skip_images", ()))
    outputs = Outputs(tmp_path / "outputs")
    return validate.run(make_params(root, **kwargs), outputs, progress=False), outputs


def quarantine(outputs: Outputs) -> list[dict[str, str]]:
    return read_text_csv(outputs.quarantine).to_dict("records")


def reasons_of(outputs: Outputs, split: str, row: int) -> set[str]:
    for record in quarantine(outputs):
        if record["split"] == split and int(record["row"]) == row:
            return set(record["reasons"].split(";"))
    return set()


def test_clean_dataset_passes_and_writes_every_output(tmp_path):
    splits = {"train": GOOD_TRAIN, "val": [ann("v0", "cake")], "test": [ann("s0", "apple")]}
    report, outputs = run_stage(tmp_path, splits)

    assert report["rows_total"] == report["rows_clean"] == 5
    assert report["rows_quarantined"] == 0 and report["bad_fraction"] == 0.0
    assert set(report["per_check"]) == set(validate.CHECKS)
    assert not any(report["per_check"].values())
    assert report["per_split"]["train"] == {"rows": 3, "clean": 3, "quarantined": 0}
    assert quarantine(outputs) == []
    clean = read_clean_annotations(outputs.validated("train"))
    assert list(clean.columns) == [*ANNOTATION_COLUMNS, "row"]
    assert clean["row"].tolist() == [0, 1, 2]
    assert clean["x_min"].tolist() == [0.1, 0.1, 0.1]
    assert json.loads(outputs.classes.read_text())["classes"][:3] == ["apple", "banana", "cake"]
    assert json.loads(outputs.validate_report.read_text())["rows_total"] == 5


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        pytest.param(ann("b", box=("", "0.9", "0.2", "0.8")), {"missing_value"}, id="empty-coord"),
        pytest.param(ann("b", cls="", folder="cake"), {"missing_value"}, id="empty-class"),
        pytest.param(ann("b", box=("abc", "0.9", "0.2", "0.8")), {"not_a_number"}, id="text"),
        pytest.param(ann("b", box=("nan", "0.9", "0.2", "0.8")), {"not_a_number"}, id="nan"),
        pytest.param(ann("b", box=("0.1", "inf", "0.2", "0.8")), {"not_a_number"}, id="inf"),
        pytest.param(ann("b", box=("0.1", "1.2", "0.2", "0.8")), {"out_of_range"}, id="above-1"),
        pytest.param(ann("b", box=("-0.1", "0.9", "0.2", "0.8")), {"out_of_range"}, id="below-0"),
        pytest.param(ann("b", box=("0.6", "0.4", "0.2", "0.8")), {"inverted_box"}, id="inverted"),
        pytest.param(ann("b", box=("0.1", "0.9", "0.5", "0.5")), {"inverted_box"}, id="flat"),
        pytest.param(ann("b", box=("0.5", "0.505", "0.2", "0.8")), {"box_too_small"}, id="tiny"),
        pytest.param(ann("b", cls="pizza", folder="cake"), {"unknown_class"}, id="class"),
        pytest.param(ann("b", cls="cake", folder="pizza"), {"unknown_folder"}, id="folder"),
        pytest.param(ann("../b"), {"unsafe_path"}, id="traversal-id"),
        pytest.param(ann("a\\b"), {"unsafe_path"}, id="backslash-id"),
        pytest.param(
            ann("b", cls="cake", folder=".."),
            {"unsafe_path", "unknown_folder"},
            id="traversal-folder",
        ),
        pytest.param(ann("gone"), {"missing_image"}, id="missing-image"),
        pytest.param(
            ann("gone", cls="pizza", folder="cake", box=("abc", "1.5", "0.8", "0.2")),
            {"not_a_number", "out_of_range", "inverted_box", "unknown_class", "missing_image"},
            id="several-problems",
        ),
    ],
)
def test_each_row_check_catches_its_case(tmp_path, row, expected):
    report, outputs = run_stage(
        tmp_path, {"train": GOOD_TRAIN, "val": [ann("v0"), row]}, skip_images=("val/cake/gone",)
    )
    assert reasons_of(outputs, "val", 1) == expected
    assert reasons_of(outputs, "val", 0) == set()  # the clean neighbour passes
    assert report["rows_quarantined"] == 1
    for check in expected:
        assert report["per_check"][check] == 1
    record = quarantine(outputs)[0]
    assert all(f"{check}:" in record["detail"] for check in expected)


def test_rows_are_conserved_and_quarantine_keeps_original_text(tmp_path):
    weird = ann("v1", box=("0.50", " 1.5e0 ", "0.2", "0.8"), note="keep me")
    splits = {
        "train": [*GOOD_TRAIN, ann("t3", box=("x", "y", "z", "w"))],
        "val": [ann("v0"), weird, ann("v2", cls="Cake", folder="cake")],
        "test": [ann("s0"), ann("s1", box=("1", "0", "1", "0"))],
    }
    for rows in splits.values():
        for row in rows:
            row.setdefault("note", "")
    report, outputs = run_stage(tmp_path, splits)

    bad = quarantine(outputs)
    for split in SPLITS:
        clean = read_clean_annotations(outputs.validated(split))
        in_quarantine = [r for r in bad if r["split"] == split]
        assert len(clean) + len(in_quarantine) == len(splits[split])
        assert report["per_split"][split]["rows"] == len(splits[split])
    assert report["rows_total"] == report["rows_clean"] + report["rows_quarantined"] == 9
    assert list(read_text_csv(outputs.quarantine).columns) == [
        "split",
        "row",
        *ANNOTATION_COLUMNS,
        "note",
        "reasons",
        "detail",
    ]
    kept = next(r for r in bad if r["split"] == "val" and r["row"] == "1")
    assert (kept["x_min"], kept["x_max"], kept["note"]) == ("0.50", " 1.5e0 ", "keep me")
    assert kept["reasons"] == "out_of_range"
    assert reasons_of(outputs, "val", 2) == {"unknown_class"}  # case matters, not altered


# --- images ---------------------------------------------------------------------------


def _truncated_jpeg(path: Path) -> None:
    write_image(path, noise_image("big", (128, 128)), quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    write_image(path, exif=exif)


IMAGE_CASES = {
    "truncated-jpeg": (_truncated_jpeg, {"unreadable_image"}, []),
    "zero-bytes": (lambda p: p.write_bytes(b""), {"unreadable_image"}, []),
    "text-as-jpg": (lambda p: p.write_text("not an image\n"), {"unreadable_image"}, []),
    "png-as-jpg": (lambda p: write_image(p, fmt="PNG"), set(), ["format_PNG_as_jpg"]),
    "grayscale": (lambda p: write_image(p, noise_image("g", mode="L")), set(), ["mode_L"]),
    "cmyk": (lambda p: write_image(p, noise_image("c", mode="CMYK")), set(), ["mode_CMYK"]),
    "palette": (
        lambda p: write_image(p, noise_image("p", mode="P"), fmt="PNG"),
        set(),
        ["format_PNG_as_jpg", "mode_P"],
    ),
    "rgba": (
        lambda p: write_image(p, noise_image("a", mode="RGBA"), fmt="PNG"),
        set(),
        ["format_PNG_as_jpg", "mode_RGBA"],
    ),
    "exif-rotated": (_exif_rotated, set(), ["exif_orientation"]),
    "one-pixel": (lambda p: write_image(p, noise_image("1", (1, 1))), {"image_too_small"}, []),
    "bomb-header": (lambda p: png_header_only(p, 30000, 30000), {"image_too_large"}, []),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_cases(tmp_path, monkeypatch, case):
    make_file, expected, notes = IMAGE_CASES[case]
    decoded: list[Path] = []
    real_open = validate.open_image_rgb
    monkeypatch.setattr(
        validate, "open_image_rgb", lambda path, **kw: decoded.append(path) or real_open(path, **kw)
    )
    root = make_dataset(tmp_path / "data", {"train": GOOD_TRAIN, "val": [ann("img")]})
    target = root / "val" / "cake" / "img.jpg"
    target.unlink()
    make_file(target)
    outputs = Outputs(tmp_path / "outputs")

    report = validate.run(make_params(root), outputs, progress=False)

    assert reasons_of(outputs, "val", 0) == expected
    for note in notes:
        assert report["notes"][note] == 1
        assert note in report["details"]["noted_images"]["val/cake/img.jpg"]
    if not notes:
        assert "val/cake/img.jpg" not in report["details"]["noted_images"]
    if expected == {"image_too_large"}:
        assert target not in decoded  # refused from the header alone


def test_image_over_configured_pixel_limit_is_refused_undecoded(tmp_path, monkeypatch):
    decoded: list[Path] = []
    real_open = validate.open_image_rgb
    monkeypatch.setattr(
        validate, "open_image_rgb", lambda path, **kw: decoded.append(path) or real_open(path, **kw)
    )
    root = make_dataset(tmp_path / "data", {"train": GOOD_TRAIN, "val": [ann("big")]})
    write_image(root / "val" / "cake" / "big.jpg", noise_image("big", (200, 100)))
    outputs = Outputs(tmp_path / "outputs")

    validate.run(make_params(root, max_image_pixels=10_000), outputs, progress=False)

    assert reasons_of(outputs, "val", 0) == {"image_too_large"}
    assert "200x100 = 20000 pixels" in quarantine(outputs)[0]["detail"]
    assert root / "val" / "cake" / "big.jpg" not in decoded


def test_each_image_is_inspected_once(tmp_path, monkeypatch):
    calls: list[Path] = []
    real_inspect = validate.inspect_image
    monkeypatch.setattr(
        validate,
        "inspect_image",
        lambda path, limit: calls.append(path) or real_inspect(path, limit),
    )
    rows = [
        ann("same", box=box)
        for box in [("0.1", "0.5", "0.1", "0.5"), ("0.5", "0.9", "0.5", "0.9")] * 3
    ]
    report, _ = run_stage(tmp_path, {"train": [*GOOD_TRAIN, *rows]})
    assert report["rows_clean"] == 9
    assert len(calls) == len(set(calls)) == 4


def test_symlink_outside_data_root_is_unsafe(tmp_path):
    outside = write_image(tmp_path / "elsewhere" / "secret.jpg")
    root = make_dataset(
        tmp_path / "data",
        {"train": GOOD_TRAIN, "val": [ann("link")]},
        skip_images=("val/cake/link",),
    )
    (root / "val" / "cake").mkdir(parents=True)
    os.symlink(outside, root / "val" / "cake" / "link.jpg")
    outputs = Outputs(tmp_path / "outputs")

    report = validate.run(make_params(root), outputs, progress=False)

    assert reasons_of(outputs, "val", 0) == {"unsafe_path"}
    assert report["images_checked"] == 3  # the link's target is never opened
    assert report["unreferenced_images"] == 0  # the row does reference the link


def test_unreferenced_images_are_reported_not_fatal(tmp_path):
    root = make_dataset(tmp_path / "data", {"train": GOOD_TRAIN})
    write_image(root / "train" / "cake" / "orphan.jpg")
    (root / "train" / "cake" / "notes.txt").write_text("not an image file")
    report = validate.run(make_params(root), Outputs(tmp_path / "outputs"), progress=False)

    assert report["unreferenced_images"] == 1
    assert report["details"]["unreferenced_images"] == ["train/cake/orphan.jpg"]
    assert report["rows_quarantined"] == 0


# --- threshold, classes, inputs -------------------------------------------------------


def test_too_many_bad_rows_fails_after_writing_outputs(tmp_path):
    splits = {"train": GOOD_TRAIN, "val": [ann("v0", box=("2", "3", "0", "1")), ann("gone")]}
    with pytest.raises(UserError) as failure:
        run_stage(tmp_path, splits, max_bad_fraction=0.15, skip_images=("val/cake/gone",))

    outputs = Outputs(tmp_path / "outputs")
    message = str(failure.value)
    assert "2 of 5 rows" in message and "40.0%" in message
    assert str(outputs.quarantine) in message
    assert "out_of_range (1)" in message and "missing_image (1)" in message
    assert len(quarantine(outputs)) == 2
    assert json.loads(outputs.validate_report.read_text())["rows_quarantined"] == 2
    assert all(outputs.validated(split).is_file() for split in SPLITS)


def test_bad_fraction_at_the_threshold_passes(tmp_path):
    splits = {"train": [*GOOD_TRAIN, ann("t3")], "val": [ann("gone")]}
    report, _ = run_stage(tmp_path, splits, max_bad_fraction=0.2, skip_images=("val/cake/gone",))
    assert report["bad_fraction"] == 0.2


def test_auto_classes_come_from_clean_train_rows(tmp_path):
    splits = {
        "train": [
            ann("t0", "pear"),
            ann("t1", "fig"),
            ann("t2", "pear"),
            ann("t3", "zzz", box=("0.5", "0.1", "0.2", "0.8")),
        ],
        "val": [ann("v0", "fig"), ann("v1", "kiwi")],
    }
    report, outputs = run_stage(tmp_path, splits, classes="auto")

    assert json.loads(outputs.classes.read_text()) == {"classes": ["fig", "pear"]}
    assert report["details"]["classes"] == ["fig", "pear"]
    assert reasons_of(outputs, "val", 1) == {"unknown_class", "unknown_folder"}
    assert reasons_of(outputs, "train", 3) == {"inverted_box", "unknown_class", "unknown_folder"}


def test_auto_classes_without_any_clean_train_row_is_a_user_error(tmp_path):
    splits = {"train": [ann("t0", box=("2", "3", "0", "1"))]}
    with pytest.raises(UserError, match="no train row passed validation"):
        run_stage(tmp_path, splits, classes="auto")
    assert len(quarantine(Outputs(tmp_path / "outputs"))) == 1


def test_missing_csv_is_a_user_error(tmp_path):
    root = make_dataset(tmp_path / "data", {"train": GOOD_TRAIN})
    (root / "annotations-test.csv").unlink()
    with pytest.raises(UserError, match=r"annotations-test\.csv"):
        validate.run(make_params(root), Outputs(tmp_path / "outputs"), progress=False)


def test_missing_column_is_a_user_error(tmp_path):
    root = make_dataset(tmp_path / "data", {"train": GOOD_TRAIN})
    (root / "annotations-val.csv").write_text("image_id,x_min,x_max,y_min,y_max,class_name\n")
    with pytest.raises(UserError, match=r"missing column.*folder"):
        validate.run(make_params(root), Outputs(tmp_path / "outputs"), progress=False)
