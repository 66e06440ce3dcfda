"""`snackloc data import` / `data export`: every source format, the layout rules, round trips
and bad inputs (reported, never fatal). Fixtures are written by the tests themselves."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers_data import make_params, noise_image
from helpers_formats import (
    BOXES,
    CLASSES,
    FOLDERS,
    HEADER,
    SPEC,
    WRITERS,
    assert_same_boxes,
    coco_json,
    expected_rows,
    imported_rows,
    jpeg,
    kinds,
    labelme_json,
    run_import,
    voc_xml,
    write_cvat,
    write_labelme,
    write_voc,
    write_yolo,
    yolo_line,
)
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.errors import UserError
from pipeline.core.paths import Outputs
from pipeline.data.contract import ANNOTATION_COLUMNS, SPLITS, annotations_path, image_path
from pipeline.data.formats import exporting, importing
from pipeline.data.formats.base import Entry, split_of
from pipeline.data.formats.images import ImageIndex
from pipeline.stages import validate

# --------------------------------------------------------------------------------------
# Every format
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_each_format_imports_to_the_snacks_layout(tmp_path, fmt):
    src = WRITERS[fmt](tmp_path / "src")
    report = run_import(src, tmp_path / "data", fmt)

    out = tmp_path / "data"
    for split in SPLITS:
        assert annotations_path(out, split).read_text().splitlines()[0] == HEADER
    rows = imported_rows(out)
    assert_same_boxes(rows, expected_rows())
    for row in rows.itertuples():
        assert image_path(out, row.split, row.folder, row.image_id).is_file()
    assert report["problems"] == [] and sum(report["rows"].values()) == 7
    assert json.loads((out / importing.IMPORT_REPORT).read_text())["format"] == fmt


def test_imported_data_passes_the_validate_stage(tmp_path):
    run_import(write_labelme(tmp_path / "src"), tmp_path / "data", "labelme")
    params = make_params(tmp_path / "data", classes=CLASSES, max_bad_fraction=0.0)
    report = validate.run(params, Outputs(tmp_path / "outputs"), progress=False)
    assert report["rows_quarantined"] == 0 and report["rows_clean"] == 7


# --------------------------------------------------------------------------------------
# Images: byte-for-byte copies, conversions, sizes
# --------------------------------------------------------------------------------------


def test_jpeg_copied_byte_for_byte_other_formats_converted(tmp_path):
    src = tmp_path / "src"
    jpeg(src / "as_png.png", (40, 30))  # a JPEG named .png: copied as is
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # fully transparent red
    rgba.save(src / "alpha.jpg", format="PNG")  # a PNG named .jpg: converted
    noise_image("bmp", (40, 30)).save(src / "bitmap.bmp", format="BMP")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    for stem in ("as_png", "alpha", "bitmap"):
        name = next(p.name for p in src.iterdir() if p.stem == stem)
        labelme = labelme_json(stem, (40, 30), [("apple", 2, 2, 30, 20)], path=name)
        (src / f"{stem}.json").write_text(json.dumps(labelme))

    report = run_import(src, tmp_path / "data", "labelme", jpeg_quality=90)

    assert {p.name: p.read_bytes() for p in src.iterdir() if p.suffix != ".json"} == before
    out = tmp_path / "data" / "train" / "apple"
    assert (out / "as_png.jpg").read_bytes() == before["as_png.png"]
    for stem in ("alpha", "bitmap"):
        with Image.open(out / f"{stem}.jpg") as image:
            assert image.format == "JPEG" and image.size == (40, 30)
    with Image.open(out / "alpha.jpg") as image:
        assert min(image.convert("RGB").getpixel((20, 15))) > 245  # alpha flattened on white
    assert report["jpeg_copied"] == 1 and report["converted_to_jpeg"] == 2


def test_size_from_the_image_when_missing_or_zero(tmp_path):
    src = tmp_path / "src"
    jpeg(src / "zero.jpg", (50, 40))
    jpeg(src / "none.jpg", (50, 40))
    (src / "zero.xml").write_text(voc_xml("zero.jpg", (0, 0), [("cake", 5, 4, 45, 36)]))
    (src / "none.xml").write_text(voc_xml("none.jpg", None, [("cake", 5, 4, 45, 36)]))
    report = run_import(src, tmp_path / "data", "voc")

    rows = imported_rows(tmp_path / "data")
    np.testing.assert_allclose(rows[BOXES], [[0.1, 0.9, 0.1, 0.9]] * 2)
    assert report["problems"] == []


def test_exif_rotated_jpeg_uses_its_displayed_size(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 60x40, displayed 40x60
    noise_image("r", (60, 40)).save(src / "rot.jpg", format="JPEG", exif=exif)
    (src / "rot.xml").write_text(voc_xml("rot.jpg", None, [("cake", 4, 6, 36, 54)]))
    run_import(src, tmp_path / "data", "voc")
    rows = imported_rows(tmp_path / "data")
    np.testing.assert_allclose(rows[BOXES], [[0.1, 0.9, 0.1, 0.9]])
    copied = tmp_path / "data" / "train" / "cake" / "rot.jpg"
    assert copied.read_bytes() == (src / "rot.jpg").read_bytes()


# --------------------------------------------------------------------------------------
# Layout rules: image_id, folder, split
# --------------------------------------------------------------------------------------


def test_clashing_or_unsafe_stems_get_a_stable_hash_id(tmp_path):
    src = tmp_path / "src"
    spec = [
        ("a/x", (40, 40), [("apple", 1, 1, 30, 30)]),
        ("b/x", (40, 40), [("cake", 1, 1, 30, 30)]),
        (" y", (40, 40), [("apple", 2, 2, 30, 30)]),
    ]
    for stem, size, _ in spec:
        jpeg(src / f"{stem}.jpg", size)
    (src / "coco.json").write_text(json.dumps(coco_json(spec)))

    run_import(src, tmp_path / "one", "coco")
    run_import(src, tmp_path / "two", "coco")
    ids = imported_rows(tmp_path / "one")["image_id"].tolist()
    assert ids == imported_rows(tmp_path / "two")["image_id"].tolist()
    for key in ("a/x.jpg", "b/x.jpg", " y.jpg"):
        assert "img_" + hashlib.sha256(key.encode()).hexdigest()[:16] in ids


def test_folder_is_the_largest_box_class_or_the_first(tmp_path):
    src = write_voc(tmp_path / "src")
    run_import(src, tmp_path / "largest", "voc")
    run_import(src, tmp_path / "first", "voc", folder_from="first")
    largest = imported_rows(tmp_path / "largest").groupby("image_id")["folder"].first()
    first = imported_rows(tmp_path / "first").groupby("image_id")["folder"].first()
    assert largest.to_dict() == FOLDERS
    assert first.to_dict() == {stem: boxes[0][0] for stem, _, boxes in SPEC}


def many_images(count: int) -> list:
    """``count`` images alternating apple / banana, boxes varying with the index."""
    return [
        (f"img{i:02d}", (40 + i, 40), [(CLASSES[i % 2], 1 + i % 5, 2, 30, 20 + i % 7)])
        for i in range(count)
    ]


def test_stratified_split_is_deterministic_and_keeps_duplicates_together(tmp_path):
    src = write_labelme(tmp_path / "src", many_images(40))
    for copy in ("dup1", "dup2"):  # byte-identical copies of img03, annotated separately
        shutil.copyfile(src / "img03.jpg", src / f"{copy}.jpg")
        labelme = labelme_json(copy, (43, 40), [("banana", 2, 2, 30, 30)])
        (src / f"{copy}.json").write_text(json.dumps(labelme))

    splits = []
    for run in ("a", "b"):
        run_import(src, tmp_path / run, "labelme", ratios=(0.6, 0.2, 0.2), seed=7)
        rows = imported_rows(tmp_path / run)
        splits.append(rows.groupby("image_id")["split"].first().to_dict())
    assert splits[0] == splits[1]
    assert splits[0]["img03"] == splits[0]["dup1"] == splits[0]["dup2"]
    per_class = imported_rows(tmp_path / "a").groupby(["folder", "split"])["image_id"].nunique()
    for folder in ("apple", "banana"):
        assert per_class[folder].to_dict().keys() == set(SPLITS)  # every class in every split
        assert per_class[folder]["train"] >= 12


def test_source_splits_are_kept(tmp_path):
    src = tmp_path / "src"
    for split, part in (("train", SPEC[:2]), ("val", SPEC[2:3]), ("test", SPEC[3:])):
        for stem, size, _ in part:
            jpeg(src / "images" / split / f"{stem}.jpg", size)
        (src / "annotations").mkdir(parents=True, exist_ok=True)
        (src / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps(coco_json(part))
        )
    report = run_import(src, tmp_path / "data", "coco")

    assert report["split"] == {"from": "source"}
    assert report["images"] == {"train": 2, "val": 1, "test": 1}
    assert set(imported_rows(tmp_path / "data").query("split == 'val'")["image_id"]) == {"pic_c"}


def test_yolo_ultralytics_layout_finds_images_of_the_same_stem_per_split(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.yaml").write_text("names:\n  0: apple\n  1: banana\n  2: cake\n")
    for split, cls in (("train", "apple"), ("val", "cake")):
        jpeg(src / "images" / split / "same.jpg", (40, 40))
        (src / "labels" / split).mkdir(parents=True)
        (src / "labels" / split / "same.txt").write_text(yolo_line(cls, 4, 4, 36, 36, 40, 40))
    report = run_import(src, tmp_path / "data", "yolo")

    assert report["split"] == {"from": "source"} and report["problems"] == []
    rows = imported_rows(tmp_path / "data")
    assert dict(zip(rows["split"], rows["class_name"], strict=True)) == {
        "train": "apple",
        "val": "cake",
    }


def test_split_words_in_names():
    assert split_of(["annotations", "instances_val2017"]) == "val"
    assert split_of(["labels", "train"]) == "train"
    assert split_of(["contest", "trainval"]) is None
    assert importing.allocate(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert importing.allocate(3, (0.8, 0.1, 0.1)) == [3, 0, 0]


# --------------------------------------------------------------------------------------
# Bad inputs: reported, not fatal
# --------------------------------------------------------------------------------------


def test_bad_inputs_are_reported_and_the_rest_imported(tmp_path):
    src = write_voc(tmp_path / "src", SPEC[:2])
    ann = src / "Annotations"
    (ann / "missing.xml").write_text(voc_xml("nowhere.jpg", (40, 40), [("apple", 1, 1, 30, 30)]))
    jpeg(src / "JPEGImages" / "edge.jpg", (40, 40))
    edge_boxes = [("apple", -4, 2, 30, 30), ("cake", 50, 50, 60, 60), ("banana", 2, 2, 20, 20)]
    (ann / "edge.xml").write_text(voc_xml("edge.jpg", (40, 40), edge_boxes))
    jpeg(src / "JPEGImages" / "odd.jpg", (40, 40))
    odd_boxes = [("durian", 1, 1, 30, 30), ("apple", 30, 2, 10, 20), ("cake", 1, 1, 39, 39)]
    (ann / "odd.xml").write_text(voc_xml("odd.jpg", (40, 40), odd_boxes))
    (ann / "empty.xml").write_text("")
    (ann / "broken.xml").write_text("<annotation><filename>")
    (ann / "wrong.xml").write_text("<html/>")

    report = run_import(src, tmp_path / "data", "voc", classes=tuple(CLASSES))

    found = kinds(report)
    assert found["missing_image"][0]["source"] == "Annotations/missing.xml"
    assert "nowhere.jpg" in found["missing_image"][0]["detail"]
    assert [p["action"] for p in found["clipped_box"]] == ["clipped box"]
    assert found["outside_image"][0]["action"] == "skipped box"
    assert "durian" in found["unknown_class"][0]["detail"]
    assert "xmax" in found["bad_box"][0]["detail"]  # globox: `xmax` must be greater than `xmin`
    assert found["empty_file"][0]["source"] == "Annotations/empty.xml"
    assert {p["source"] for p in found["unreadable_file"]} == {
        "Annotations/broken.xml",
        "Annotations/wrong.xml",
    }
    assert all(p["detail"] for p in report["problems"])
    assert json.loads((tmp_path / "data" / importing.IMPORT_REPORT).read_text()) == report

    rows = imported_rows(tmp_path / "data")
    assert set(rows["image_id"]) == {"pic_a", "pic_b", "edge", "odd"}
    edge = rows.query("image_id == 'edge'").set_index("class_name")
    assert edge.loc["apple", "x_min"] == 0.0 and set(edge.index) == {"apple", "banana"}
    assert set(rows.query("image_id == 'odd'")["class_name"]) == {"cake"}


def test_outside_skip_drops_boxes_crossing_the_border(tmp_path):
    src = tmp_path / "src"
    jpeg(src / "edge.jpg", (40, 40))
    boxes = [("apple", -4, 2, 30, 30), ("banana", 2, 2, 20, 20)]
    (src / "edge.xml").write_text(voc_xml("edge.jpg", (40, 40), boxes))
    report = run_import(src, tmp_path / "data", "voc", outside="skip")
    assert [p["kind"] for p in report["problems"]] == ["outside_image"]
    assert imported_rows(tmp_path / "data")["class_name"].tolist() == ["banana"]


def test_single_file_formats_report_bad_records(tmp_path):
    src = tmp_path / "src"
    jpeg(src / "ok.jpg", (40, 40))
    content = coco_json([("ok", (40, 40), [("apple", 1, 1, 30, 30)]), ("gone", (40, 40), [])])
    content["annotations"] += [
        {"id": 8, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]},
        {"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 1, -5, 5]},
        {"id": 10, "image_id": 42, "category_id": 1, "bbox": [1, 1, 5, 5]},
    ]
    (src / "coco.json").write_text(json.dumps(content))
    report = run_import(src, tmp_path / "data", "coco")
    found = kinds(report)
    assert "category_id 99" in found["unknown_class"][0]["detail"]
    assert len(found["bad_box"]) == 2 and "image_id 42" in found["bad_box"][1]["detail"]
    assert found["no_boxes"][0]["item"] == "gone.jpg"
    assert report["rows"]["train"] == 1


def test_merges_size_mismatches_odd_shapes_and_partial_splits_are_reported(tmp_path):
    src = tmp_path / "src"
    jpeg(src / "a.jpg", (40, 40))
    jpeg(src / "train" / "b.jpg", (40, 40))
    a = labelme_json("a", (80, 80), [("apple", 8, 8, 40, 40), ("a/b", 1, 1, 9, 9)])
    a["shapes"].append(
        {"label": "apple", "points": [[1, 1], [5, 9], [9, 1]], "shape_type": "polygon"}
    )
    (src / "a.json").write_text(json.dumps(a))
    again = labelme_json("a", (40, 40), [("cake", 0, 0, 40, 20)])  # names a.jpg again
    (src / "again.json").write_text(json.dumps(again))
    (src / "train" / "b.json").write_text(
        json.dumps(labelme_json("b", (40, 40), [("cake", 1, 1, 30, 30)]))
    )

    report = run_import(src, tmp_path / "data", "labelme")

    found = kinds(report)
    assert "80x80" in found["size_mismatch"][0]["detail"]
    assert found["bad_class_name"][0]["item"] == "a.jpg box 1"
    assert "polygon" in found["not_a_box"][0]["detail"]
    assert found["listed_twice"][0]["source"] == "again.json"
    assert "1 of 2" in found["partial_source_split"][0]["detail"]
    assert report["split"]["from"] == "stratified"
    a_rows = imported_rows(tmp_path / "data").query("image_id == 'a'").set_index("class_name")
    assert a_rows.loc["apple", BOXES].tolist() == [0.1, 0.5, 0.1, 0.5]  # by the annotated 80x80
    assert a_rows.loc["cake", BOXES].tolist() == [0.0, 1.0, 0.0, 0.5]


def test_nothing_importable_is_an_error_and_out_is_left_untouched(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.xml").write_text("")
    with pytest.raises(UserError, match="empty_file"):
        run_import(src, tmp_path / "nothing", "voc")
    assert not (tmp_path / "nothing").exists()
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        run_import(write_voc(tmp_path / "good"), out, "voc")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_refuses_to_write_over_the_source(tmp_path):
    src = write_voc(tmp_path / "src")
    with pytest.raises(UserError, match="source"):
        importing.import_dataset(src, src, importing.ImportOptions("voc"), overwrite=True)
    with pytest.raises(UserError, match="source"):
        importing.import_dataset(
            src / "Annotations", src, importing.ImportOptions("voc"), overwrite=True
        )


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="format"):
        importing.ImportOptions("pascal")
    with pytest.raises(UserError, match="sum to 1"):
        importing.parse_ratios("0.5,0.1,0.1")
    with pytest.raises(UserError, match="three numbers"):
        importing.parse_ratios("0.8,x,0.1")
    with pytest.raises(UserError, match="--outside"):
        importing.ImportOptions("voc", outside="wrap")


def test_yolo_without_class_names_is_a_clear_error(tmp_path):
    src = write_yolo(tmp_path / "src")
    (src / "classes.txt").unlink()
    with pytest.raises(UserError, match="--classes"):
        run_import(src, tmp_path / "data", "yolo")


def test_image_index_reports_ambiguous_names(tmp_path):
    jpeg(tmp_path / "a" / "x.jpg", (20, 20))
    jpeg(tmp_path / "b" / "x.jpg", (20, 20))
    found = ImageIndex(tmp_path).find(Entry("x.jpg", tmp_path / "ann" / "f.xml"))
    assert found[0] is None and found[1] == "ambiguous_image"


# --------------------------------------------------------------------------------------
# Export and round trips
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", exporting.EXPORT_FORMATS)
def test_round_trip_import_export_import(tmp_path, fmt):
    src = write_cvat(tmp_path / "src", SPEC + many_images(12))
    run_import(src, tmp_path / "data", "cvat", ratios=(0.5, 0.25, 0.25))
    first = imported_rows(tmp_path / "data")
    assert set(first["split"]) == set(SPLITS)

    report = exporting.export_dataset(tmp_path / "data", tmp_path / "exported", fmt)
    assert report["problems"] == [] and sum(report["images"].values()) == 16
    again = run_import(tmp_path / "exported", tmp_path / "again", fmt)

    assert again["problems"] == [] and again["split"] == {"from": "source"}
    second = imported_rows(tmp_path / "again")
    keys = ["image_id", "class_name", "folder", "split"]
    assert second[keys].to_dict("records") == first[keys].to_dict("records")
    np.testing.assert_allclose(second[BOXES], first[BOXES], atol=1e-6)
    for row in second.itertuples():  # the JPEGs went through both ways untouched
        a = image_path(tmp_path / "data", row.split, row.folder, row.image_id).read_bytes()
        assert a == image_path(tmp_path / "again", row.split, row.folder, row.image_id).read_bytes()


def test_export_reports_bad_rows_and_missing_images(tmp_path):
    run_import(write_voc(tmp_path / "src"), tmp_path / "data", "voc")
    data = tmp_path / "data"
    rows = pd.read_csv(annotations_path(data, "train"), dtype=str)
    bad = rows.iloc[0].copy()
    bad["x_min"] = "oops"
    pd.concat([rows, bad.to_frame().T]).to_csv(annotations_path(data, "train"), index=False)
    image_path(data, "train", "banana", "pic_b").unlink()

    report = exporting.export_dataset(data, tmp_path / "coco", "coco")

    assert sorted(kinds(report)) == ["bad_box", "missing_image"]
    assert report["images"]["train"] == 3
    content = json.loads((tmp_path / "coco" / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in content["categories"]] == CLASSES


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def test_cli_import_and_export(tmp_path):
    runner = CliRunner()
    src = write_yolo(tmp_path / "src")
    out = tmp_path / "data"
    command = ["data", "import", str(src), "--format", "yolo", "--out", str(out)]
    result = runner.invoke(app, [*command, "--split-ratios", "1,0,0", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "imported 4 images / 7 rows" in result.output
    assert HEADER.split(",") == ANNOTATION_COLUMNS

    result = runner.invoke(
        app,
        ["data", "export", "--format", "voc", "--out", str(tmp_path / "voc"), "--data", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "voc" / "train" / "Annotations" / "pic_a.xml").is_file()

    result = runner.invoke(app, ["data", "import", str(src), "--format", "nope", "--out", str(out)])
    assert isinstance(result.exception, UserError)
