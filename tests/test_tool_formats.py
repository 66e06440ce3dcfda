"""`snackloc data import` for the labeling tools the book names: Create ML, Simple Image
Annotator, Sloth, Labelbox (v2 and v1) and RectLabel; `--format auto` on every format; image
paths that leave the source refused in every format. Fixtures follow each tool's published
examples and are written by the tests themselves (tiny noise JPEGs in tmp_path)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from helpers_formats import (
    SPEC,
    WRITERS,
    assert_same_boxes,
    expected_rows,
    imported_rows,
    jpeg,
    kinds,
    run_import,
)
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.errors import UserError
from pipeline.data.formats.detect import detect_format

BAD_SPEC = [*SPEC, ("pic_e", (40, 40), [("cake", 50, 50, 60, 60)])]  # a box outside the image


# --------------------------------------------------------------------------------------
# Fixture writers, as each tool writes its files
# --------------------------------------------------------------------------------------


def write_createml(root: Path, spec: list = SPEC) -> Path:
    """Apple's object detection JSON: pixel centre, width and height, beside the images."""
    records = []
    for stem, size, boxes in spec:
        jpeg(root / f"{stem}.jpg", size)
        annotations = [
            {
                "label": c,
                "coordinates": {
                    "x": (x0 + x1) / 2,
                    "y": (y0 + y1) / 2,
                    "width": x1 - x0,
                    "height": y1 - y0,
                },
            }
            for c, x0, y0, x1, y1 in boxes
        ]
        records.append({"image": f"{stem}.jpg", "annotations": annotations})
    (root / "annotations.json").write_text(json.dumps(records, indent=4))
    return root


def sia_rows(spec: list) -> list[str]:
    return [
        f"{stem}.jpg,{n},{c},{float(x0)},{float(x1)},{float(y0)},{float(y1)}"
        for stem, _, boxes in spec
        for n, (c, x0, y0, x1, y1) in enumerate(boxes, start=1)
    ]


def write_sia(root: Path, spec: list = SPEC) -> Path:
    """Simple Image Annotator's CSV (x values first, then y), with its header."""
    for stem, size, _ in spec:
        jpeg(root / "images" / f"{stem}.jpg", size)
    lines = ["image,id,name,xMin,xMax,yMin,yMax", *sia_rows(spec)]
    (root / "out.csv").write_text("\n".join(lines) + "\n")
    return root


def sloth_items(spec: list) -> list[dict]:
    return [
        {
            "annotations": [
                {
                    "class": c,
                    "height": float(y1 - y0),
                    "width": float(x1 - x0),
                    "x": float(x0),
                    "y": float(y0),
                }
                for c, x0, y0, x1, y1 in boxes
            ],
            "class": "image",
            "filename": f"images/{stem}.jpg",
        }
        for stem, _, boxes in spec
    ]


def write_sloth(root: Path, spec: list = SPEC) -> Path:
    """Sloth's JSON container: file names relative to the label file."""
    for stem, size, _ in spec:
        jpeg(root / "images" / f"{stem}.jpg", size)
    (root / "labels.json").write_text(json.dumps(sloth_items(spec), indent=4))
    return root


def labelbox_row(stem: str, size: tuple[int, int], labels: list[list]) -> dict:
    """One data row of a Labelbox export v2 (NDJSON), one project with ``labels``."""
    return {
        "data_row": {
            "id": f"clrow{stem}",
            "global_key": f"{stem}.jpg",
            "external_id": f"{stem}.jpg",
            "row_data": f"https://storage.example.com/snacks/{stem}.jpg?sig=abc",
            "details": {"dataset_id": "clds1", "dataset_name": "snacks"},
        },
        "media_attributes": {"height": size[1], "width": size[0], "mime_type": "image/jpeg"},
        "attachments": [],
        "metadata_fields": [],
        "projects": {
            "clproj1": {
                "name": "snacks",
                "labels": [
                    {
                        "id": f"cllabel{number}",
                        "annotations": {
                            "objects": [labelbox_object(*box) for box in boxes],
                            "classifications": [],
                            "relationships": [],
                        },
                    }
                    for number, boxes in enumerate(labels)
                ],
                "project_details": {"workflow_status": "DONE"},
            }
        },
    }


def labelbox_object(c: str, x0: float, y0: float, x1: float, y1: float) -> dict:
    return {
        "feature_id": f"clf{c}{x0}",
        "feature_schema_id": f"cls{c}",
        "name": c,
        "value": c.replace(" ", "_"),
        "annotation_kind": "ImageBoundingBox",
        "classifications": [],
        "bounding_box": {"top": y0, "left": x0, "height": y1 - y0, "width": x1 - x0},
    }


def write_labelbox(root: Path, spec: list = SPEC) -> Path:
    for stem, size, _ in spec:
        jpeg(root / "images" / f"{stem}.jpg", size)
    rows = [json.dumps(labelbox_row(stem, size, [boxes])) for stem, size, boxes in spec]
    (root / "export.ndjson").write_text("\n".join(rows) + "\n")
    return root


def write_labelbox_v1(root: Path, spec: list = SPEC) -> Path:
    """The legacy v1 JSON export: one row per label, boxes as ``bbox`` in pixels."""
    rows = []
    for stem, size, boxes in spec:
        jpeg(root / f"{stem}.jpg", size)
        objects = [
            {
                "title": c,
                "value": c,
                "bbox": {"top": y0, "left": x0, "height": y1 - y0, "width": x1 - x0},
            }
            for c, x0, y0, x1, y1 in boxes
        ]
        rows.append(
            {
                "ID": f"ck{stem}",
                "DataRow ID": f"ckrow{stem}",
                "Labeled Data": f"https://storage.example.com/{stem}.jpg",
                "Label": {"objects": objects, "classifications": []},
                "External ID": f"{stem}.jpg",
                "Skipped": False,
            }
        )
    (root / "export.json").write_text(json.dumps(rows))
    return root


def rectlabel_xml(stem: str, size: tuple[int, int], objects: str) -> str:
    w, h = size
    return (
        f"<annotation><folder>images</folder><filename>{stem}.jpg</filename>"
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"
    )


def rectlabel_object(c: str, x0: float, y0: float, x1: float, y1: float, shape: str = "") -> str:
    """RectLabel counts pixels from (1, 1): the left edge x0 is written as x0 + 1."""
    return (
        f"<object><name>{c}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<occluded>0</occluded><difficult>0</difficult>{shape}<bndbox><xmin>{x0 + 1}</xmin>"
        f"<ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
    )


def write_rectlabel(root: Path, spec: list = SPEC) -> Path:
    """Images in a folder, XML in its annotations/ subfolder."""
    for stem, size, boxes in spec:
        jpeg(root / "images" / f"{stem}.jpg", size)
        objects = "".join(rectlabel_object(*box) for box in boxes)
        (root / "images" / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "images" / "annotations" / f"{stem}.xml").write_text(
            rectlabel_xml(stem, size, objects)
        )
    return root


NEW_WRITERS = {
    "createml": write_createml,
    "sia": write_sia,
    "sloth": write_sloth,
    "labelbox": write_labelbox,
    "labelbox-v1": write_labelbox_v1,
    "rectlabel": write_rectlabel,
}
ALL_WRITERS = {**WRITERS, **NEW_WRITERS}


def format_of(case: str) -> str:
    return case.split("-")[0]


# --------------------------------------------------------------------------------------
# Every new format, and --format auto on every format
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(NEW_WRITERS))
def test_each_tool_format_imports_exact_boxes(tmp_path, case):
    src = NEW_WRITERS[case](tmp_path / "src")
    report = run_import(src, tmp_path / "data", format_of(case))
    assert report["problems"] == [] and sum(report["rows"].values()) == 7
    assert_same_boxes(imported_rows(tmp_path / "data"), expected_rows())


@pytest.mark.parametrize("case", list(ALL_WRITERS))
def test_auto_chooses_the_format_from_the_content(tmp_path, case):
    src = ALL_WRITERS[case](tmp_path / "src")
    assert detect_format(src) == format_of(case)
    report = run_import(src, tmp_path / "data", "auto")
    assert report["format"] == format_of(case) and report["format_detected"]
    assert_same_boxes(imported_rows(tmp_path / "data"), expected_rows())


def test_auto_says_what_it_saw_when_nothing_fits(tmp_path):
    src = tmp_path / "src"
    jpeg(src / "a.jpg", (20, 20))
    (src / "labels.json").write_text(json.dumps([{"file": "a.jpg", "boxes": [[1, 2, 3, 4]]}]))
    (src / "notes.txt").write_text("apple on a plate\n")
    with pytest.raises(UserError) as error:
        run_import(src, tmp_path / "data", "auto")
    text = str(error.value)
    assert "labels.json: a JSON list of objects with keys file, boxes" in text
    assert "notes.txt: first line 'apple on a plate'" in text


# --------------------------------------------------------------------------------------
# No file outside the source is read, in any format
# --------------------------------------------------------------------------------------


def point_outside(src: Path, case: str, name: str) -> None:
    """Make every annotation naming pic_b name ``name`` instead."""
    old = {"openimages": "pic_b", "sloth": "images/pic_b.jpg"}.get(case, "pic_b.jpg")
    for path in src.rglob("*"):
        if path.is_file() and path.suffix in {".xml", ".json", ".ndjson", ".csv"}:
            path.write_text(path.read_text().replace(old, name))


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
@pytest.mark.parametrize("case", list(ALL_WRITERS))
def test_image_paths_leaving_the_source_are_refused(tmp_path, case, how):
    secret = jpeg(tmp_path / "secret.jpg", (50, 60))
    src = ALL_WRITERS[case](tmp_path / "src")
    folder = tmp_path / "src"  # COCO and CVAT writers return their one file
    if how == "symlink":
        image = next(folder.rglob("pic_b.jpg"))
        image.unlink()
        os.symlink(secret, image)
    elif case == "yolo":
        pytest.skip("YOLO names an image by its label file's stem: only a link can lead out")
    else:
        name = "../secret" if how == "dotdot" else str(secret.with_suffix(""))
        point_outside(folder, case, name if case == "openimages" else f"{name}.jpg")

    report = run_import(src, tmp_path / "data", format_of(case))

    refused = kinds(report)["outside_source"]
    assert len(refused) == 1 and refused[0]["action"] == "skipped image"
    assert "refused" in refused[0]["detail"] and "\n" not in refused[0]["detail"]
    assert "pic_b" not in set(imported_rows(tmp_path / "data")["image_id"])
    copied = [p.read_bytes() for p in (tmp_path / "data").rglob("*.jpg")]
    assert secret.read_bytes() not in copied and len(copied) == 3


def test_urls_are_refused_and_an_annotation_file_linked_from_outside_is_not_read(tmp_path):
    src = WRITERS["labelme"](tmp_path / "src")
    (src / "pic_b.json").write_text(
        (src / "pic_b.json").read_text().replace("pic_b.jpg", "https://x.org/pic_b.jpg")
    )
    outside = tmp_path / "elsewhere.json"
    outside.write_text((src / "pic_a.json").read_text())
    os.symlink(outside, src / "linked.json")
    report = run_import(src, tmp_path / "data", "labelme")
    refused = {p["source"]: p["detail"] for p in kinds(report)["outside_source"]}
    assert "a URL" in refused["pic_b.json"] and "a link to" in refused["linked.json"]
    assert report["images"]["train"] + report["images"]["val"] + report["images"]["test"] == 3


# --------------------------------------------------------------------------------------
# Malformed files: one line naming the cause, the rest imported
# --------------------------------------------------------------------------------------

BROKEN = {
    "createml": ("broken.json", '[{"image": "x.jpg", "annotations": ['),
    "sia": ("broken.csv", "image,id,name,xMin,xMax,yMin,yMax\nx.jpg,1,apple,1.0,oops\n"),
    "sloth": ("broken.json", "[{"),
    "labelbox": ("broken.ndjson", '{"data_row": {"external_id": "x.jpg"\n'),
    "labelbox-v1": ("broken.json", '[{"External ID": "x.jpg", '),
    "rectlabel": ("images/annotations/broken.xml", "<annotation><filename>x.jpg"),
}


@pytest.mark.parametrize("case", list(NEW_WRITERS))
def test_malformed_files_missing_images_and_outside_boxes_are_named(tmp_path, case):
    src = NEW_WRITERS[case](tmp_path / "src", BAD_SPEC)
    next(src.rglob("pic_d.jpg")).unlink()
    name, text = BROKEN[case]
    (src / name).write_text(text)

    report = run_import(src, tmp_path / "data", format_of(case))

    found = kinds(report)
    problem = next(p for p in report["problems"] if p["source"] == name)
    if case == "sia":  # a CSV row costs only itself
        assert problem["kind"] == "bad_box" and problem["item"] == "line 2"
    else:
        assert problem["kind"] == "unreadable_file" and "not valid" in problem["detail"]
    assert "pic_d.jpg" in found["missing_image"][0]["detail"]
    assert found["outside_image"][0]["item"].startswith(("pic_e", "images/pic_e"))
    assert all("\n" not in p["detail"] for p in report["problems"])
    assert set(imported_rows(tmp_path / "data")["image_id"]) == {"pic_a", "pic_b", "pic_c"}


# --------------------------------------------------------------------------------------
# Each tool's own habits
# --------------------------------------------------------------------------------------


def test_rectlabel_skips_non_rectangles_counts_them_and_can_cut_name_attributes(tmp_path):
    src = tmp_path / "src"
    jpeg(src / "images" / "trays" / "t1.jpg", (80, 60))
    objects = "".join(
        [
            rectlabel_object("apple-red-whole", 9.5, 10, 40.25, 50),
            rectlabel_object(
                "cake",
                1,
                1,
                9,
                9,
                "<polygon><x1>2</x1><y1>2</y1><x2>9</x2><y2>2</y2><x3>5</x3><y3>9</y3></polygon>",
            ),
            rectlabel_object(
                "cake", 1, 1, 9, 9, "<cubic_bezier><x1>2</x1><y1>2</y1></cubic_bezier>"
            ),
            rectlabel_object(
                "cake", 1, 1, 9, 9, "<keypoints><x1>2</x1><y1>2</y1><v1>2</v1></keypoints>"
            ),
        ]
    )
    (src / "images" / "annotations" / "trays").mkdir(parents=True)
    (src / "images" / "annotations" / "trays" / "t1.xml").write_text(
        rectlabel_xml("t1", (80, 60), objects)
    )

    report = run_import(src, tmp_path / "data", "auto", name_attr="first")

    assert report["format"] == "rectlabel"
    skipped = kinds(report)["not_a_box"]
    assert sorted(p["detail"].split()[1] for p in skipped) == [
        "cubic_bezier",
        "keypoints",
        "polygon",
    ]
    rows = imported_rows(tmp_path / "data")
    assert rows["class_name"].tolist() == ["apple"]
    expected = [9.5 / 80, 40.25 / 80, 10 / 60, 50 / 60]
    assert rows[["x_min", "x_max", "y_min", "y_max"]].iloc[0].tolist() == pytest.approx(
        expected, abs=1e-6
    )


def test_sloth_points_polygons_and_videos_are_counted_yaml_and_label_key(tmp_path):
    src = tmp_path / "src"
    items = sloth_items(SPEC[:2])
    items[0]["annotations"] += [
        {"class": "stem", "x": 3.0, "y": 4.0},
        {"class": "leaf", "xn": "1;5;9", "yn": "1;9;1"},
    ]
    items.append({"class": "video", "filename": "clip.avi", "frames": []})
    for item in items:
        for annotation in item.get("annotations", []):
            annotation["id"] = annotation.pop("class")
    for stem, size, _ in SPEC[:2]:
        jpeg(src / "images" / f"{stem}.jpg", size)
    (src / "labels.yaml").write_text(yaml.safe_dump(items))

    report = run_import(src, tmp_path / "data", "sloth", label_key="id")

    found = kinds(report)
    assert sorted(p["detail"] for p in found["not_a_box"]) == ["a point", "a polygon"]
    assert found["unsupported_item"][0]["item"] == "clip.avi"
    assert_same_boxes(imported_rows(tmp_path / "data"), expected_rows(SPEC[:2]))


def test_labelbox_uses_the_first_label_reports_the_others_and_skips_other_kinds(tmp_path):
    src = tmp_path / "src"
    stem, size, boxes = SPEC[0]
    jpeg(src / "photos" / "from_url.jpg", size)
    row = labelbox_row(stem, size, [boxes, [("cake", 1, 1, 9, 9)]])
    row["data_row"].update(
        external_id=None, global_key=None, row_data="https://cdn.example.com/a/from_url.jpg?x=1"
    )
    del row["media_attributes"]  # the size then comes from the image
    polygon = {"name": "apple", "annotation_kind": "ImagePolygon", "polygon": [{"x": 1, "y": 1}]}
    row["projects"]["clproj1"]["labels"][0]["annotations"]["objects"].append(polygon)
    (src / "export.ndjson").write_text(json.dumps(row) + "\n\n" + "{oops\n")

    report = run_import(src, tmp_path / "data", "auto")

    found = kinds(report)
    assert report["format"] == "labelbox"
    assert "the first label" in found["label_conflict"][0]["detail"]
    assert "ImagePolygon" in found["not_a_box"][0]["detail"]
    assert found["bad_record"][0]["item"] == "line 3"
    rows = imported_rows(tmp_path / "data")
    assert set(rows["image_id"]) == {"from_url"} and len(rows) == 2


def test_labelbox_v1_skipped_rows_are_reported(tmp_path):
    src = write_labelbox_v1(tmp_path / "src", SPEC[:2])
    content = json.loads((src / "export.json").read_text())
    content[1].update(Skipped=True, Label="Skip")
    (src / "export.json").write_text(json.dumps(content))
    report = run_import(src, tmp_path / "data", "labelbox")
    assert kinds(report)["skipped_in_tool"][0]["item"] == "pic_b.jpg"
    assert set(imported_rows(tmp_path / "data")["image_id"]) == {"pic_a"}


def test_sia_without_header_and_with_an_empty_name(tmp_path):
    src = tmp_path / "src"
    for stem, size, _ in SPEC:
        jpeg(src / f"{stem}.jpg", size)
    rows = sia_rows(SPEC)
    rows.append("pic_a.jpg,3,,1.0,5.0,1.0,5.0")
    (src / "boxes.csv").write_text("\n".join(rows) + "\n")
    report = run_import(src, tmp_path / "data", "auto")
    assert report["format"] == "sia"
    bad = kinds(report)["bad_box"]
    assert [(p["item"], p["detail"]) for p in bad] == [("line 8", "pic_a.jpg: empty name")]
    assert_same_boxes(imported_rows(tmp_path / "data"), expected_rows())


def test_cli_lists_every_format_and_exports_createml(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "import", "--help"])
    for name in ("auto", "rectlabel", "createml", "sloth", "labelbox", "sia"):
        assert name in result.output
    src = write_createml(tmp_path / "src")
    out = tmp_path / "data"
    result = runner.invoke(app, ["data", "import", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        ["data", "export", "-f", "createml", "--out", str(tmp_path / "cml"), "--data", str(out)],
    )
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "cml" / "train" / "annotations.json").read_text())
    assert {r["image"] for r in records} <= {f"{stem}.jpg" for stem, _, _ in SPEC}
