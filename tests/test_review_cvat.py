"""CVAT for images 1.1 out of the review (suspect images, their rows, the model's suggestion)
and back in through `snackloc data import --format cvat`."""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from globox import AnnotationSet
from helpers_data import noise_image, write_image
from helpers_venv import throwaway_venv

from pipeline.core.errors import UserError
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


def write_export(export: Path) -> Path:
    """The folder `review export --format cvat` writes: annotations.xml and images/."""
    for key, size in SIZES.items():
        path = export / "images" / key[0] / key[1] / f"{key[2]}.jpg"
        write_image(path, noise_image(str(path), size))
    (export / "annotations.xml").write_text(cvat.review_annotations(SUSPECTS, ROWS, SIZES, CLASSES))
    return export


def imported_rows(source: Path, out: Path) -> tuple[list[tuple], dict]:
    """`data import --format cvat` of ``source``: its (class, box) rows and its report."""
    options = importing.ImportOptions(fmt="cvat", ratios=(0.5, 0.5, 0.0))
    report = importing.import_dataset(source, out, options)
    frames = [pd.read_csv(annotations_path(out, s)) for s in SPLITS]
    rows = pd.concat(frames)[["class_name", "x_min", "x_max", "y_min", "y_max"]].round(6)
    return sorted(map(tuple, rows.to_numpy().tolist())), report


def test_a_cvat_review_edited_by_hand_imports_its_accepted_boxes_only(tmp_path):
    export = write_export(tmp_path / "export")
    root = ET.parse(export / "annotations.xml").getroot()
    a1, _ = root.findall("image")
    wrong, _, suggested = a1.findall("box")
    a1.remove(wrong)  # the reviewer deletes the cake row and accepts the suggestion;
    suggested.find("attribute").text = "label"  # c1's suggestion is left as it was
    (export / "annotations.xml").write_text(ET.tostring(root, "unicode"))

    rows, report = imported_rows(export / "annotations.xml", tmp_path / "data")
    assert rows == [
        ("apple", 0.05, 0.45, 0.25, 0.75),
        ("banana", 0.6, 0.9, 0.1, 0.9),
        ("cake", 0.2, 0.8, 0.2, 0.8),
    ]
    skipped = [p for p in report["problems"] if p["kind"] == "suggestion"]
    assert len(skipped) == 1 and "not accepted" in skipped[0]["detail"], report["problems"]
    assert {p["kind"] for p in report["problems"]} == {"suggestion"}


def test_a_rotated_cvat_box_is_reported_not_read_as_upright(tmp_path):
    export = write_export(tmp_path / "export")
    root = ET.parse(export / "annotations.xml").getroot()
    wrong, right, _ = root.findall("image")[0].findall("box")
    wrong.set("rotation", "30.5")
    right.set("rotation", "360")  # a full turn is upright
    (export / "annotations.xml").write_text(ET.tostring(root, "unicode"))

    rows, report = imported_rows(export / "annotations.xml", tmp_path / "data")
    assert rows == [("banana", 0.6, 0.9, 0.1, 0.9), ("cake", 0.2, 0.8, 0.2, 0.8)]
    rotated = [p for p in report["problems"] if p["kind"] == "rotated_box"]
    assert len(rotated) == 1 and "30.5 degrees" in rotated[0]["detail"], report["problems"]


HEADER = "image_id,x_min,x_max,y_min,y_max,class_name,folder\n"
VAL = [
    "a1,0.100000,0.500000,0.200000,0.600000,cake,apple\n",
    "a1,0.600000,0.900000,0.100000,0.900000,banana,apple\n",
    "zz,0.100000,0.200000,0.100000,0.200000,cake,cake\n",
]
TEST = ["c1,0.200000,0.800000,0.200000,0.800000,cake,cake\n"]


def write_reviewed_csvs(root: Path) -> tuple[str, list[str], list[str]]:
    """The dataset's CSVs that ROWS come from (a1: val rows 0 and 1, c1: test row 0)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, lines in (("train", []), ("val", VAL), ("test", TEST)):
        annotations_path(root, split).write_text(HEADER + "".join(lines))
    return HEADER, VAL, TEST


def test_apply_writes_a_cvat_review_into_the_dataset_in_place(tmp_path):
    """The export edited as a reviewer would, then `snackloc review apply annotations.xml`:
    the reviewed images' rows replaced where they stood, every other line as it was."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    header, val, test = write_reviewed_csvs(tmp_path)
    export = tmp_path / "export"
    export.mkdir()
    root = ET.fromstring(cvat.review_annotations(SUSPECTS, ROWS, SIZES, CLASSES))
    a1, _ = root.findall("image")
    wrong, _, suggested = a1.findall("box")
    a1.remove(wrong)  # the cake row deleted, the suggestion accepted; c1 left as it was
    suggested.find("attribute").text = "label"
    (export / "annotations.xml").write_text(ET.tostring(root, "unicode"))
    rows = export / "rows.json"
    rows.write_text(json.dumps(cvat.review_row_ids(ROWS, [A1, C1])))
    assert json.loads(rows.read_text()) == {"val/apple/a1.jpg": [0, 1], "test/cake/c1.jpg": [0]}

    args = ["review", "apply", str(export / "annotations.xml"), "--data", str(tmp_path)]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert done.output.startswith("2 images corrected in") and "3 rows replaced by 3" in done.output
    accepted = "a1,0.050000,0.450000,0.250000,0.750000,apple,apple\n"
    assert annotations_path(tmp_path, "val").read_text() == header + val[1] + accepted + val[2]
    assert annotations_path(tmp_path, "test").read_text() == header + test[0]

    rows.write_text(json.dumps({"val/apple/a1.jpg": [0]}))  # a1 has rows 0 and 1: changed
    summary = cvat.apply_cvat(tmp_path, export / "annotations.xml", rows)
    assert summary["applied"] == 0 and len(summary["skipped"]) == 2
    assert "rows changed" in summary["skipped"][0]
    assert "not a snackloc review task" in summary["skipped"][1]  # c1: not in rows.json
    rows.unlink()
    done = CliRunner().invoke(app, args)
    assert isinstance(done.exception, UserError)  # the CLI's main: one line, exit 2
    assert "rows.json not found (CVAT keeps no row ids)" in str(done.exception)


DATUMARO = ("datumaro==1.13.12",)
READ_AND_REWRITE = """
import json, sys
from datumaro.components.annotation import AnnotationType
from datumaro.components.dataset import Dataset
dataset = Dataset.import_from(sys.argv[1], "cvat")
labels = dataset.categories()[AnnotationType.label]
items = {
    item.id: [item.media.size, [
        [labels[a.label].name, [round(v, 2) for v in a.get_bbox()], a.attributes["review"]]
        for a in item.annotations]]
    for item in dataset
}
print(json.dumps({"labels": [[l.name, sorted(l.attributes)] for l in labels], "items": items}))
dataset.export(sys.argv[2], "cvat", save_media=True)
"""


@pytest.mark.scale
def test_datumaro_reads_the_cvat_export_and_its_rewrite_imports(tmp_path):
    """Datumaro, the library CVAT's own CVAT XML import and export build on (CVAT's server
    needs Docker: not run here), reads the export with its labels, attributes and images,
    and writes it again as CVAT does; that rewrite imports, suggestions skipped, and applies
    to the dataset leaving it byte-identical (nobody changed anything). Opt-in
    (marker scale): datumaro pip-installed into a throwaway venv; skipped when it cannot
    be. The whole test took 5 s with a warm uv cache (noisy, 2 shared cores)."""
    venv = throwaway_venv(tmp_path / "venv", DATUMARO, "SNACKLOC_DATUMARO_VENV")
    export = write_export(tmp_path / "export")
    args = [
        str(venv / "bin" / "python"),
        "-c",
        READ_AND_REWRITE,
        str(export),
        str(tmp_path / "again"),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    shutil.rmtree(tmp_path / "venv", ignore_errors=True)  # about 450 MB; a reused one is kept
    assert done.returncode == 0, done.stderr[-3000:]
    read = json.loads(done.stdout.splitlines()[-1])
    assert read["labels"] == [[name, ["review"]] for name in CLASSES]
    assert read["items"] == {
        "val/apple/a1": [[40, 80], [
            ["cake", [8.0, 8.0, 32.0, 16.0], "label"],
            ["banana", [48.0, 4.0, 24.0, 32.0], "label"],
            ["apple", [4.0, 10.0, 32.0, 20.0], "suggestion"]]],
        "test/cake/c1": [[50, 50], [
            ["cake", [10.0, 10.0, 30.0, 30.0], "label"],
            ["banana", [0.0, 0.0, 10.0, 15.0], "suggestion"]]],
    }  # fmt: skip
    rows, report = imported_rows(tmp_path / "again" / "annotations.xml", tmp_path / "data")
    assert rows == [
        ("banana", 0.6, 0.9, 0.1, 0.9),
        ("cake", 0.1, 0.5, 0.2, 0.6),
        ("cake", 0.2, 0.8, 0.2, 0.8),
    ]
    assert [p["kind"] for p in report["problems"]] == ["suggestion", "suggestion"]
    # Nobody changed anything: applied, the CSVs stay byte-identical (CVAT's 0.01 px suffice).
    header, val, test = write_reviewed_csvs(tmp_path / "dataset")
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(cvat.review_row_ids(ROWS, [A1, C1])))
    summary = cvat.apply_cvat(tmp_path / "dataset", tmp_path / "again" / "annotations.xml", rows)
    assert (summary["applied"], summary["rows_after"], summary["skipped"]) == (2, 3, [])
    assert annotations_path(tmp_path / "dataset", "val").read_text() == header + "".join(val)
    assert annotations_path(tmp_path / "dataset", "test").read_text() == header + "".join(test)
