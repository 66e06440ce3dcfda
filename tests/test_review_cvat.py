"""CVAT for images 1.1 out of the review (suspect images, their rows, the model's suggestion)
and back in through `snackloc data import --format cvat`."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
from globox import AnnotationSet
from helpers_data import noise_image, write_image

from pipeline.data.contract import SPLITS, annotations_path
from pipeline.data.formats import cvat, importing

CLASSES = ["apple", "banana", "cake"]
A1, C1 = ("val", "apple", "a1"), ("test", "cake", "c1")
ROWS = {
    A1: [
        {"row": 0, "class_name": "cake", "x_min": 0.1, "x_max": 0.5, "y_min": 0.2, "y_max": 0.6},
        {"row": 1, "class_name": "banana", "x_min": 0.6, "x_max": 0.9, "y_min": 0.1, "y_max": 0.9},
    ],
    C1: [{"row": 0, "class_name": "cake", "x_min": 0.2, "x_max": 0.8, "y_min": 0.2, "y_max": 0.8}],
}
SIZES = {A1: (80, 40), C1: (50, 50)}
SUSPECTS = [  # a wrong class (row 0 of a1), then an object nobody boxed in c1
    {"split": "val", "folder": "apple", "image_id": "a1", "row": 0, "kind": "class",
     "score": 0.01, "suggest_class": "apple", "suggest_x_min": 0.05, "suggest_x_max": 0.45,
     "suggest_y_min": 0.25, "suggest_y_max": 0.75},
    {"split": "test", "folder": "cake", "image_id": "c1", "row": -1, "kind": "overlooked",
     "score": 0.2, "suggest_class": "banana", "suggest_x_min": 0.0, "suggest_x_max": 0.2,
     "suggest_y_min": 0.0, "suggest_y_max": 0.3},
    {**ROWS[A1][1], "split": "val", "folder": "apple", "image_id": "a1", "kind": "box",
     "score": 0.3, "suggest_class": "banana", "suggest_x_min": 0.5, "suggest_x_max": 0.9,
     "suggest_y_min": 0.1, "suggest_y_max": 0.9},  # a1 again: exported once
]  # fmt: skip


def boxes_of(image: ET.Element) -> list[tuple[str, ...]]:
    """(label, xtl, ytl, xbr, ybr, occluded, review) of each <box>, as written."""
    return [
        (*(b.get(k) for k in ("label", "xtl", "ytl", "xbr", "ybr", "occluded")),
         b.find("attribute[@name='review']").text)
        for b in image.iter("box")
    ]  # fmt: skip


def test_the_review_s_cvat_xml_is_in_cvat_s_own_layout(tmp_path):
    text = cvat.review_annotations(SUSPECTS, ROWS, SIZES, CLASSES)
    root = ET.fromstring(text)
    assert root.findtext("version") == "1.1" and root.findtext("meta/task/size") == "2"
    labels = root.findall("meta/task/labels/label")
    assert [label.findtext("name") for label in labels] == CLASSES
    attribute = labels[0].find("attributes/attribute")
    assert attribute.findtext("name") == "review" and attribute.findtext("input_type") == "select"
    assert attribute.findtext("values").split("\n") == ["label", "suggestion"]
    a1, c1 = root.findall("image")
    assert a1.attrib == {"id": "0", "name": "val/apple/a1.jpg", "width": "80", "height": "40"}
    assert boxes_of(a1) == [
        ("cake", "8.00", "8.00", "40.00", "24.00", "0", "label"),
        ("banana", "48.00", "4.00", "72.00", "36.00", "0", "label"),
        ("apple", "4.00", "10.00", "36.00", "30.00", "0", "suggestion"),
    ]
    assert boxes_of(c1) == [
        ("cake", "10.00", "10.00", "40.00", "40.00", "0", "label"),
        ("banana", "0.00", "0.00", "10.00", "15.00", "0", "suggestion"),
    ]
    (tmp_path / "a.xml").write_text(text)  # another CVAT reader takes it as well
    assert len(AnnotationSet.from_cvat(tmp_path / "a.xml")) == 2
    assert [spec["name"] for spec in cvat.review_labels(CLASSES)] == CLASSES


def test_a_cvat_review_edited_by_hand_imports_its_accepted_boxes_only(tmp_path):
    export = tmp_path / "export"
    for key, size in SIZES.items():
        path = export / "images" / Path(*key).with_suffix(".jpg")
        write_image(path, noise_image(str(path), size))
    root = ET.fromstring(cvat.review_annotations(SUSPECTS, ROWS, SIZES, CLASSES))
    a1, _ = root.findall("image")
    wrong, _, suggested = a1.findall("box")
    a1.remove(wrong)  # the reviewer deletes the cake row and accepts the suggestion;
    suggested.find("attribute").text = "label"  # c1's suggestion is left as it was
    (export / "annotations.xml").write_text(ET.tostring(root, "unicode"))

    options = importing.ImportOptions(fmt="cvat", ratios=(0.5, 0.5, 0.0))
    report = importing.import_dataset(export / "annotations.xml", tmp_path / "data", options)
    frames = [pd.read_csv(annotations_path(tmp_path / "data", s)) for s in SPLITS]
    rows = pd.concat(frames)[["class_name", "x_min", "x_max", "y_min", "y_max"]].round(6)
    assert sorted(map(tuple, rows.to_numpy().tolist())) == [
        ("apple", 0.05, 0.45, 0.25, 0.75),
        ("banana", 0.6, 0.9, 0.1, 0.9),
        ("cake", 0.2, 0.8, 0.2, 0.8),
    ]
    skipped = [p for p in report["problems"] if p["kind"] == "suggestion"]
    assert len(skipped) == 1 and "not accepted" in skipped[0]["detail"], report["problems"]
    assert {p["kind"] for p in report["problems"]} == {"suggestion"}
