"""Stage "validate": every named check, conservation of rows, image edge cases, bad input
files, threshold, report, Data Docs and contact sheets.

A stage run costs a few seconds (Great Expectations), so the many small cases of one kind
share one dataset and one run (module fixtures); each case is then asserted on its own row.
"""

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
    write_csv_rows,
    write_image,
)
from PIL import Image

from pipeline.core.errors import UserError
from pipeline.core.paths import Outputs
from pipeline.data.contract import ANNOTATION_COLUMNS, SPLITS, read_clean_annotations
from pipeline.data.quality import imagecheck
from pipeline.data.quality.checks import CHECKS, WARNINGS
from pipeline.stages import dedup, validate

GOOD_TRAIN = [ann("t0", "cake"), ann("t1", "apple"), ann("t2", "banana")]


def run_stage(tmp_path: Path, splits: dict, **kwargs) -> tuple[dict, Outputs]:
    """Build a dataset, run validate quietly, return (report, outputs)."""
    root = make_dataset(tmp_path / "data", splits, skip_images=kwargs.pop("skip_images", ()))
    outputs = Outputs(tmp_path / "outputs")
    return validate.run(make_params(root, **kwargs), outputs, progress=False), outputs


def quarantine(outputs: Outputs) -> list[dict[str, str]]:
    return read_text_csv(outputs.quarantine).to_dict("records")


def record_of(outputs: Outputs, split: str, row: int) -> dict[str, str] | None:
    for record in quarantine(outputs):
        if record["split"] == split and int(record["row"]) == row:
            return record
    return None


def reasons_of(outputs: Outputs, split: str, row: int) -> set[str]:
    record = record_of(outputs, split, row)
    return set(record["reasons"].split(";")) if record else set()


def assert_conserved(report: dict, outputs: Outputs) -> None:
    """rows in == clean + quarantined, per split, and the row numbers partition the input."""
    bad = quarantine(outputs)
    for split in SPLITS:
        clean = read_clean_annotations(outputs.validated(split))
        out_rows = {int(r["row"]) for r in bad if r["split"] == split}
        rows = report["per_split"][split]["rows"]
        assert len(clean) + len(out_rows) == rows
        assert set(clean["row"]) | out_rows == set(range(rows))
    assert report["rows_total"] == report["rows_clean"] + report["rows_quarantined"]


def test_clean_dataset_passes_and_writes_every_output(tmp_path):
    splits = {"train": GOOD_TRAIN, "val": [ann("v0", "cake")], "test": [ann("s0", "apple")]}
    report, outputs = run_stage(tmp_path, splits, data_docs=True)

    assert report["rows_total"] == report["rows_clean"] == 5
    assert report["rows_quarantined"] == 0 and report["bad_fraction"] == 0.0
    assert set(report["per_check"]) == set(CHECKS)
    assert not any(report["per_check"].values())
    assert report["per_split"]["train"] == {"rows": 3, "clean": 3, "quarantined": 0}
    assert report["warnings"] == dict.fromkeys(WARNINGS, 0)
    assert quarantine(outputs) == []
    clean = read_clean_annotations(outputs.validated("train"))
    assert list(clean.columns) == [*ANNOTATION_COLUMNS, "row"]
    assert clean["row"].tolist() == [0, 1, 2]
    assert clean["x_min"].tolist() == [0.1, 0.1, 0.1]
    assert json.loads(outputs.classes.read_text())["classes"][:3] == ["apple", "banana", "cake"]
    assert json.loads(outputs.validate_report.read_text())["rows_total"] == 5
    # Great Expectations: both suites ran on every split, and nothing failed.
    gx = report["expectations"]
    assert gx["failed"] == 0 and gx["evaluated"] == 3 * len(report["details"]["expectations"])
    assert {e["suite"] for e in report["details"]["expectations"]} == {"annotations", "classes"}
    index = outputs.data_docs / "index.html"
    assert index.is_file() and "snackloc.annotations" in index.read_text()
    assert len(list(outputs.data_docs.rglob("*annotations-val.html"))) == 2  # 2 suites
    # Contact sheets: one per split and one of the quarantine, real PNGs.
    sheets = sorted(p.name for p in outputs.contact_sheets.iterdir())
    assert sheets == ["quarantine.png", "test.png", "train.png", "val.png"]
    with Image.open(outputs.contact_sheets / "train.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 400
    assert "| train | 3 | 3 | 0 |" in report["markdown"]


def test_data_docs_off_leaves_a_placeholder(tmp_path):
    _, outputs = run_stage(tmp_path, {"train": GOOD_TRAIN}, data_docs=False)
    index = outputs.data_docs / "index.html"
    assert "validate.data_docs: false" in index.read_text()
    assert list(outputs.data_docs.iterdir()) == [index]


# --- one row per named check, all in one run --------------------------------------------

ROW_CASES = {
    "empty-coord": (ann("b", box=("", "0.9", "0.2", "0.8")), {"missing_value"}),
    "blank-coord": (ann("b", box=("0.1", "  ", "0.2", "0.8")), {"missing_value"}),
    "empty-class": (ann("b", cls="", folder="cake"), {"missing_value"}),
    "empty-id": (ann("", cls="cake"), {"missing_value"}),
    "text": (ann("b", box=("abc", "0.9", "0.2", "0.8")), {"not_a_number"}),
    "nan": (ann("b", box=("nan", "0.9", "0.2", "0.8")), {"not_a_number"}),
    "inf": (ann("b", box=("0.1", "inf", "0.2", "0.8")), {"not_a_number"}),
    "decimal-comma": (ann("b", box=("0,1", "0.9", "0.2", "0.8")), {"not_a_number"}),
    "underscore": (ann("b", box=("0.1", "0.9", "0.2", "0_8")), {"not_a_number"}),
    "hex": (ann("b", box=("0x1", "0.9", "0.2", "0.8")), {"not_a_number"}),
    "overflow": (ann("b", box=("0.1", "1e999", "0.2", "0.8")), {"out_of_range"}),
    "above-1": (ann("b", box=("0.1", "1.2", "0.2", "0.8")), {"out_of_range"}),
    "below-0": (ann("b", box=("-0.1", "0.9", "0.2", "0.8")), {"out_of_range"}),
    "inverted": (ann("b", box=("0.6", "0.4", "0.2", "0.8")), {"inverted_box"}),
    "flat": (ann("b", box=("0.1", "0.9", "0.5", "0.5")), {"inverted_box"}),
    "tiny": (ann("b", box=("0.5", "0.505", "0.2", "0.8")), {"box_too_small"}),
    "class": (ann("b", cls="pizza", folder="cake"), {"unknown_class"}),
    "folder": (ann("b", cls="cake", folder="pizza"), {"unknown_folder"}),
    "traversal-id": (ann("../b"), {"unsafe_path"}),
    "backslash-id": (ann("a\\b"), {"unsafe_path"}),
    "nul-id": (ann("a\x00b"), {"unsafe_path"}),
    "dot-dot-id": (ann(".."), {"unsafe_path"}),
    "traversal-folder": (ann("b", cls="cake", folder=".."), {"unsafe_path", "unknown_folder"}),
    "missing-image": (ann("gone"), {"missing_image"}),
    "several-problems": (
        ann("gone", cls="pizza", folder="cake", box=("abc", "1.5", "0.8", "0.2")),
        {"not_a_number", "out_of_range", "inverted_box", "unknown_class", "missing_image"},
    ),
}


@pytest.fixture(scope="module")
def row_cases(tmp_path_factory) -> tuple[dict, Outputs]:
    """val row 0 is clean; row i + 1 is the i-th case of ROW_CASES."""
    tmp = tmp_path_factory.mktemp("row_cases")
    val = [ann("v0"), *(row for row, _ in ROW_CASES.values())]
    return run_stage(tmp, {"train": GOOD_TRAIN, "val": val}, skip_images=("val/cake/gone",))


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_each_row_check_catches_its_case(row_cases, case):
    _, outputs = row_cases
    row = list(ROW_CASES).index(case) + 1
    expected = ROW_CASES[case][1]
    assert reasons_of(outputs, "val", row) == expected
    detail = record_of(outputs, "val", row)["detail"]
    assert all(f"{check}:" in detail for check in expected)


def test_row_cases_counts_and_the_clean_neighbour(row_cases):
    report, outputs = row_cases
    assert reasons_of(outputs, "val", 0) == set()
    assert report["rows_quarantined"] == len(ROW_CASES)
    for check in CHECKS:
        expected = sum(check in reasons for _, reasons in ROW_CASES.values())
        assert report["per_check"][check] == expected, check
    assert_conserved(report, outputs)


def test_details_say_what_is_wrong(row_cases):
    _, outputs = row_cases
    detail = {case: record_of(outputs, "val", n + 1)["detail"] for n, case in enumerate(ROW_CASES)}
    assert detail["empty-coord"] == "missing_value: empty x_min"
    assert detail["text"] == "not_a_number: x_min='abc'"
    assert detail["above-1"] == "out_of_range: x_max=1.2"
    assert detail["overflow"] == "out_of_range: x_max=inf"
    assert detail["inverted"] == "inverted_box: x_min 0.6 >= x_max 0.4"
    assert detail["tiny"] == "box_too_small: width 0.005 < 0.01"
    assert detail["class"] == "unknown_class: class_name 'pizza' not in the class list"
    assert detail["traversal-id"] == "unsafe_path: image_id='../b'"
    assert "not found" in detail["missing-image"]


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

    assert_conserved(report, outputs)
    assert report["rows_total"] == 9
    assert list(read_text_csv(outputs.quarantine).columns) == [
        "split",
        "row",
        *ANNOTATION_COLUMNS,
        "note",
        "reasons",
        "detail",
    ]
    kept = record_of(outputs, "val", 1)
    assert (kept["x_min"], kept["x_max"], kept["note"]) == ("0.50", " 1.5e0 ", "keep me")
    assert kept["reasons"] == "out_of_range"
    assert reasons_of(outputs, "val", 2) == {"unknown_class"}  # case matters, not altered


def test_repeated_rows_are_a_warning_for_dedup_not_a_quarantine(tmp_path):
    rows = [ann("a"), ann("a"), ann("a", box=("0.10", "0.90", "0.2", "0.8")), ann("b")]
    report, _ = run_stage(tmp_path, {"train": rows})
    assert report["rows_quarantined"] == 0
    assert report["warnings"]["repeated_row"] == 3  # every copy, spelled either way


# --- images: one image per case, all in one run -------------------------------------------


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


@pytest.fixture(scope="module")
def image_cases(tmp_path_factory) -> tuple[dict, Outputs, Path, list[Path]]:
    """val row i is an image made by the i-th case of IMAGE_CASES; records decoded files."""
    tmp = tmp_path_factory.mktemp("image_cases")
    root = make_dataset(
        tmp / "data", {"train": GOOD_TRAIN, "val": [ann(case) for case in IMAGE_CASES]}
    )
    for case, (make_file, _, _) in IMAGE_CASES.items():
        target = root / "val" / "cake" / f"{case}.jpg"
        target.unlink()
        make_file(target)
    decoded: list[Path] = []
    real_open = imagecheck.open_image_rgb
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            imagecheck,
            "open_image_rgb",
            lambda path, **kw: decoded.append(path) or real_open(path, **kw),
        )
        outputs = Outputs(tmp / "outputs")
        report = validate.run(make_params(root), outputs, progress=False)
    return report, outputs, root, decoded


def test_dedup_hashes_every_readable_image_case(image_cases):
    """PNG-as-jpg, grayscale, CMYK, palette, alpha and EXIF-rotated files all fingerprint."""
    report, outputs, root, _ = image_cases
    result = dedup.run(make_params(root), outputs, progress=False)
    assert result["images_hashed"] == len(GOOD_TRAIN) + report["per_split"]["val"]["clean"]
    assert result["rows_removed"] == 0


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_cases(image_cases, case):
    report, outputs, root, decoded = image_cases
    _, expected, notes = IMAGE_CASES[case]
    name = f"val/cake/{case}.jpg"
    assert reasons_of(outputs, "val", list(IMAGE_CASES).index(case)) == expected
    for note in notes:
        assert note in report["details"]["noted_images"][name]
    if not notes:
        assert name not in report["details"]["noted_images"]
    if expected == {"image_too_large"}:
        assert root / name not in decoded  # refused from the header alone


def test_image_notes_are_counted(image_cases):
    report, outputs, _, _ = image_cases
    expected: dict[str, int] = {}
    for _, _, notes in IMAGE_CASES.values():
        for note in notes:
            expected[note] = expected.get(note, 0) + 1
    assert report["notes"] == dict(sorted(expected.items()))
    assert report["images_checked"] == len(GOOD_TRAIN) + len(IMAGE_CASES)
    assert_conserved(report, outputs)


def test_image_over_configured_pixel_limit_is_refused_undecoded(tmp_path, monkeypatch):
    decoded: list[Path] = []
    real_open = imagecheck.open_image_rgb
    monkeypatch.setattr(
        imagecheck,
        "open_image_rgb",
        lambda path, **kw: decoded.append(path) or real_open(path, **kw),
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
    real_inspect = imagecheck.inspect_image
    monkeypatch.setattr(
        imagecheck,
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
    assert "outside the data root" in quarantine(outputs)[0]["detail"]
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


# --- hand-made input files, through both stages ------------------------------------------


HEADER = ",".join(ANNOTATION_COLUMNS)


def write_raw(root: Path, split: str, text: str, encoding: str = "utf-8") -> None:
    """Write a CSV byte for byte (newline="" keeps CRLF as given)."""
    with open(root / f"annotations-{split}.csv", "w", encoding=encoding, newline="") as handle:
        handle.write(text)


def csv_text(rows: list[dict[str, str]], columns: list[str], newline: str = "\n") -> str:
    lines = [",".join(columns), *(",".join(row[col] for col in columns) for row in rows)]
    return newline.join(lines) + newline


def test_bom_crlf_reordered_header_and_empty_split_go_through_both_stages(tmp_path):
    rows = {
        "train": [*GOOD_TRAIN, ann("t3", box=("0.6", "0.4", "0.2", "0.8"))],
        "val": [ann("v0"), ann("v1", "apple")],
        "test": [ann("s0", "banana")],
    }
    root = make_dataset(tmp_path / "data", rows)
    swapped = ["image_id", "x_min", "y_min", "x_max", "y_max", "folder", "class_name"]
    # train: UTF-8 with a BOM; val: CRLF line ends; test: header in another (xyxy) order.
    write_raw(root, "train", csv_text(rows["train"], ANNOTATION_COLUMNS), "utf-8-sig")
    write_raw(root, "val", csv_text(rows["val"], ANNOTATION_COLUMNS, "\r\n"))
    write_raw(root, "test", csv_text(rows["test"], swapped))
    outputs = Outputs(tmp_path / "outputs")
    params = make_params(root)

    report = validate.run(params, outputs, progress=False)

    assert report["rows_total"] == 7 and report["rows_quarantined"] == 1
    assert reasons_of(outputs, "train", 3) == {"inverted_box"}
    assert report["warnings"]["column_order"] == 1
    val = read_clean_annotations(outputs.validated("val"))
    assert val["folder"].tolist() == ["cake", "apple"]  # no "\r" left on the last column
    test = read_clean_annotations(outputs.validated("test")).iloc[0]
    assert (test["x_max"], test["y_min"], test["class_name"]) == (0.9, 0.2, "banana")
    assert_conserved(report, outputs)

    result = dedup.run(params, outputs, progress=False)
    assert result["rows_in"] == result["rows_out"] == 6


def test_header_only_csv_is_an_empty_split(tmp_path):
    root = make_dataset(tmp_path / "data", {"train": GOOD_TRAIN})
    write_raw(root, "val", ",".join(ANNOTATION_COLUMNS) + "\n")
    outputs = Outputs(tmp_path / "outputs")
    report = validate.run(make_params(root), outputs, progress=False)
    assert report["per_split"]["val"] == {"rows": 0, "clean": 0, "quarantined": 0}
    result = dedup.run(make_params(root), outputs, progress=False)
    assert result["per_split"]["val"] == {"rows_in": 0, "rows_out": 0, "removed": 0}


def test_short_row_is_quarantined_not_fatal(tmp_path):
    root = make_dataset(tmp_path / "data", {"train": GOOD_TRAIN, "val": [ann("v0")]})
    write_raw(root, "val", HEADER + "\nv0,0.1,0.9\n" + "v0,0.1,0.9,0.2,0.8,cake,cake\n")
    outputs = Outputs(tmp_path)
    report = validate.run(make_params(root), outputs, progress=False)
    assert report["per_split"]["val"] == {"rows": 2, "clean": 1, "quarantined": 1}
    assert record_of(outputs, "val", 0)["detail"] == (
        "missing_value: empty y_min, empty y_max, empty class_name, empty folder"
    )


def test_values_written_in_another_column_order_are_caught(tmp_path):
    """A header in the contract order over xyxy values: boxes come out inverted."""
    root = make_dataset(tmp_path / "data", {"train": [ann("t0"), ann("t1"), ann("t2")]})
    write_csv_rows(
        root, "train", [ann(f"t{i}", box=("0.1", "0.2", "0.9", "0.8")) for i in range(3)]
    )
    with pytest.raises(UserError, match=r"3 of 3 boxes are valid read as .*Pascal VOC"):
        validate.run(make_params(root, max_bad_fraction=0.5), Outputs(tmp_path), progress=False)


@pytest.mark.parametrize(
    ("text", "encoding", "message"),
    [
        pytest.param("", "utf-8", "empty file", id="empty-csv"),
        pytest.param(HEADER.replace("x_min", "xmin") + "\n", "utf-8", "missing.*x_min", id="typo"),
        pytest.param(
            "a,0.1,0.9,0.2,0.8,cake,cake\n", "utf-8", "first line is a row", id="no-header"
        ),
        pytest.param(HEADER + "\nçà,0.1,0.9,0.2,0.8,cake,cake\n", "latin-1", "not a readable CSV"),
        pytest.param(HEADER + '\n"a,0.1\n', "utf-8", "not a readable CSV", id="open-quote"),
    ],
)
def test_unusable_csv_is_a_user_error(tmp_path, text, encoding, message):
    root = make_dataset(tmp_path / "data", {"train": GOOD_TRAIN})
    write_raw(root, "val", text, encoding)
    with pytest.raises(UserError, match=message):
        validate.run(make_params(root), Outputs(tmp_path / "outputs"), progress=False)


def test_missing_csv_is_a_user_error(tmp_path):
    root = make_dataset(tmp_path / "data", {"train": GOOD_TRAIN})
    (root / "annotations-test.csv").unlink()
    with pytest.raises(UserError, match=r"annotations-test\.csv"):
        validate.run(make_params(root), Outputs(tmp_path / "outputs"), progress=False)


# --- threshold and classes ----------------------------------------------------------------


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
    assert (outputs.contact_sheets / "quarantine.png").is_file()


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
