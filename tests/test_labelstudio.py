"""Label Studio: its JSON export read into the snacks layout, review tasks written for it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers_labelstudio import sdk_errors
from PIL import Image

from pipeline.core.errors import UserError
from pipeline.data.contract import SPLITS, annotations_path
from pipeline.data.formats import importing, labelstudio
from pipeline.data.formats.base import ReadContext

# (file name, (width, height), [(class, left, top, right, bottom) in pixels])
SPEC = [
    ("pic_a.jpg", (64, 48), [("apple", 4, 4, 40, 30), ("banana", 30, 20, 60, 44)]),
    ("pic_b.jpg", (50, 60), [("banana", 5, 5, 45, 55)]),
    ("pic_c.jpg", (40, 40), [("cake", 2, 3, 30, 33)]),
]


def region(label: str, box: tuple, size: tuple, rotation: float = 0) -> dict:
    """A rectanglelabels region exactly as Label Studio exports it (percent, top-left)."""
    (w, h), (left, top, right, bottom) = size, box
    return {
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {
            "x": 100 * left / w,
            "y": 100 * top / h,
            "width": 100 * (right - left) / w,
            "height": 100 * (bottom - top) / h,
            "rotation": rotation,
            "rectanglelabels": [label],
        },
        "id": f"r{left}{top}",
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
    }


def annotation(result: list, cancelled: bool = False) -> dict:
    return {
        "id": 7,
        "completed_by": 1,
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": "2026-12-06T20:01:02.345678Z",
        "updated_at": "2026-12-06T20:01:02.345678Z",
        "lead_time": 4.2,
        "task": 1,
    }


def write_export(root: Path) -> Path:
    """Images as Label Studio stores uploads (8 hex digits and a dash before the name) and a
    JSON export: one task cancelled then redone, one only pre-annotated, one rotated box."""
    tasks = []
    for number, (name, size, boxes) in enumerate(SPEC, start=1):
        upload = f"{number:08x}-{name}"
        Image.new("RGB", size, (90, 120, 150)).save(root / upload)
        results = [region(c, tuple(b), size) for c, *b in boxes]
        tasks.append(
            {
                "id": number,
                "data": {"image": f"/data/upload/1/{upload}"},
                "annotations": [annotation([], cancelled=True), annotation(results)],
                "predictions": [],
                "meta": {},
                "created_at": "2026-12-06T20:00:00.000000Z",
                "updated_at": "2026-12-06T20:01:02.345678Z",
                "inner_id": number,
                "total_annotations": 1,
                "cancelled_annotations": 1,
                "project": 1,
            }
        )
    Image.new("RGB", (30, 30)).save(root / "0000000a-pic_d.jpg")
    tasks.append(  # nobody annotated it: only the model's pre-annotation
        {
            "id": 4,
            "data": {"image": "/data/upload/1/0000000a-pic_d.jpg"},
            "annotations": [],
            "predictions": [{"result": [region("apple", (1, 1, 20, 20), (30, 30))]}],
        }
    )
    tasks[1]["annotations"][1]["result"].append(region("cake", (1, 1, 9, 9), (50, 60), 30))
    path = root / "export.json"
    path.write_text(json.dumps(tasks, indent=2))
    return path


def read_rows(out: Path) -> pd.DataFrame:
    frames = [pd.read_csv(annotations_path(out, s), dtype={"image_id": str}) for s in SPLITS]
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("fmt", ["labelstudio", "label-studio", "auto"])
def test_a_label_studio_export_becomes_the_snacks_layout(tmp_path, fmt):
    source = tmp_path / "ls"
    source.mkdir()
    export = write_export(source)
    options = importing.ImportOptions(fmt=fmt, ratios=(0.34, 0.33, 0.33))
    report = importing.import_dataset(export, tmp_path / "data", options)
    assert report["format"] == "labelstudio"
    rows = read_rows(tmp_path / "data").sort_values(["class_name", "x_min"])
    expected = sorted(
        (c, round(x0 / w, 4), round(x1 / w, 4), round(y0 / h, 4), round(y1 / h, 4))
        for _, (w, h), boxes in SPEC
        for c, x0, y0, x1, y1 in boxes
    )
    got = sorted(
        (r.class_name, round(r.x_min, 4), round(r.x_max, 4), round(r.y_min, 4), round(r.y_max, 4))
        for r in rows.itertuples()
    )
    assert got == expected  # the cancelled annotation and the rotated box are not used
    kinds = {p["kind"] for p in report["problems"]}
    assert {"not_annotated", "rotated_box"} <= kinds


def test_review_tasks_round_trip_through_a_label_studio_export(tmp_path):
    """Export suspects, accept the suggestion in Label Studio, read the export back."""
    (tmp_path / "val" / "apple").mkdir(parents=True)
    Image.new("RGB", (80, 40)).save(tmp_path / "val" / "apple" / "abc.jpg")
    key = ("val", "apple", "abc")
    rows = [
        {"row": 3, "class_name": "apple", "x_min": 0.1, "x_max": 0.5, "y_min": 0.2, "y_max": 0.6},
        {"row": 4, "class_name": "cake", "x_min": 0.6, "x_max": 0.9, "y_min": 0.1, "y_max": 0.9},
    ]
    suspect = {
        "split": "val", "folder": "apple", "image_id": "abc", "row": 3, "kind": "box",
        "score": 0.12, "suggest_class": "banana", "suggest_x_min": 0.05, "suggest_x_max": 0.45,
        "suggest_y_min": 0.25, "suggest_y_max": 0.75,
    }  # fmt: skip
    tasks = labelstudio.review_tasks([suspect, suspect], {key: rows}, {key: (80, 40)}, "")
    assert len(tasks) == 1  # one task per image
    task = tasks[0]
    assert task["data"]["rows"] == [3, 4] and task["data"]["suspect_row"] == 3
    given = task["annotations"][0]["result"]
    assert [r["value"]["rectanglelabels"] for r in given] == [["apple"], ["cake"]]
    assert given[0]["value"]["x"] == pytest.approx(10) and given[0]["value"]["height"] == 40
    # The reviewer replaces the suspect row by the suggestion and submits.
    task["annotations"] = [annotation([task["predictions"][0]["result"][0], given[1]])]
    task["id"] = 1
    export = tmp_path / "export.json"
    export.write_text(json.dumps([task]))
    ctx = ReadContext(tmp_path)
    (entry,) = labelstudio.read_labelstudio(export, ctx)
    assert entry.name == "val/apple/abc.jpg" and not ctx.problems
    boxes = [(b.label, *(round(v, 6) for v in b.ltrb)) for b in entry.boxes]
    assert boxes == [("banana", 0.05, 0.25, 0.45, 0.75), ("cake", 0.6, 0.1, 0.9, 0.9)]


def test_label_studio_s_sdk_accepts_every_exported_task_under_the_exported_config():
    """label-studio-sdk's LabelInterface checks the tasks as Label Studio's import would:
    regions naming the config's tags and labels, percent geometry, a score within 0-1."""
    classes = ["apple", "banana", "cake"]
    rows_of, sizes, suspects = {}, {}, []
    for number, (kind, score, suggest) in enumerate(
        [("box", 0.0, "apple"), ("class", 0.4, "cake"), ("overlooked", 1.09, "banana")]
    ):
        key = ("test", classes[number], f"img{number}")
        rows_of[key] = [
            {"row": 2 * number, "class_name": classes[number], "x_min": 0.0, "x_max": 1.0,
             "y_min": 0.0, "y_max": 1.0},
            {"row": 2 * number + 1, "class_name": "banana", "x_min": 0.25, "x_max": 0.5,
             "y_min": 0.1, "y_max": 0.3},
        ]  # fmt: skip
        sizes[key] = (640, 427)
        suspects.append(
            {"split": "test", "folder": key[1], "image_id": key[2], "row": -1 if number == 2
             else 2 * number, "kind": kind, "score": score, "suggest_class": suggest,
             "suggest_x_min": 0.1, "suggest_x_max": 0.7, "suggest_y_min": 0.2,
             "suggest_y_max": 1.0}
        )  # fmt: skip
    tasks = labelstudio.review_tasks(suspects, rows_of, sizes, "/data/local-files/?d=")
    config = labelstudio.label_config(classes)
    assert len(tasks) == 3 and sdk_errors(config, tasks) == []
    assert tasks[2]["predictions"][0]["score"] == 1.0 and tasks[2]["data"]["score"] == 1.09
    # The check can fail: a class the config lacks, a box past the edge, no image.
    tasks[0]["predictions"][0]["result"][0]["value"]["rectanglelabels"] = ["pear"]
    tasks[1]["annotations"][0]["result"][0]["value"]["width"] = 120.0
    del tasks[2]["data"]["image"]
    errors = sdk_errors(config, tasks)
    assert len(errors) == 3, errors
    assert "pear" in errors[0] and "width" in errors[1] and "no data.image" in errors[2]


def test_image_urls_are_percent_encoded_and_read_back_decoded(tmp_path):
    key = ("val", "ice cream", "abc")
    rows = [{"row": 0, "class_name": "cake", "x_min": 0, "x_max": 1, "y_min": 0, "y_max": 1}]
    suspect = {
        "split": "val", "folder": "ice cream", "image_id": "abc", "row": 0, "kind": "class",
        "score": 0.1, "suggest_class": "cake", "suggest_x_min": 0.0, "suggest_x_max": 1.0,
        "suggest_y_min": 0.0, "suggest_y_max": 1.0,
    }  # fmt: skip
    prefix = "/data/local-files/?d="
    (task,) = labelstudio.review_tasks([suspect], {key: rows}, {key: (8, 8)}, prefix)
    assert task["data"]["image"] == prefix + "val/ice%20cream/abc.jpg"
    del task["data"]["snackloc_image"]  # found from the URL alone, as Label Studio's own tasks
    export = tmp_path / "export.json"
    export.write_text(json.dumps([task]))
    (entry,) = labelstudio.read_labelstudio(export, ReadContext(tmp_path))
    assert entry.name == "val/ice cream/abc.jpg"


def test_a_file_that_is_not_a_label_studio_export_is_refused_with_its_cause(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"image": "a.jpg", "annotations": []}]))
    assert not labelstudio.sniff_labelstudio(path)
    with pytest.raises(ValueError, match="not a Label Studio export"):
        labelstudio.read_labelstudio(path, ReadContext(tmp_path))


def test_apply_writes_the_corrections_into_the_dataset_and_keeps_every_other_line(tmp_path):
    header = "image_id,x_min,x_max,y_min,y_max,class_name,folder\n"
    lines = [
        "aaa,0.100000,0.500000,0.200000,0.600000,apple,apple\n",
        "bbb,0.100000,0.900000,0.100000,0.900000,cake,banana\n",  # the wrong label
        "bbb,0.600000,0.900000,0.100000,0.900000,apple,banana\n",
        "ccc,0.200000,0.400000,0.200000,0.400000,cake,cake\n",
    ]
    csv_path = tmp_path / "annotations-val.csv"
    csv_path.write_text(header + "".join(lines))
    (tmp_path / "annotations-test.csv").write_text(header + lines[0])
    rows = pd.read_csv(csv_path, dtype={"image_id": str}).assign(row=range(4))
    rows_of = {
        ("val", f, i): g.to_dict("records") for (f, i), g in rows.groupby(["folder", "image_id"])
    }
    suspects = [
        {"split": "val", "folder": f, "image_id": i, "row": r, "kind": "class", "score": 0.1,
         "suggest_class": "banana", "suggest_x_min": 0.1, "suggest_x_max": 0.9,
         "suggest_y_min": 0.1, "suggest_y_max": 0.9}
        for f, i, r in (("banana", "bbb", 1), ("cake", "ccc", 3), ("apple", "aaa", 0))
    ]  # fmt: skip
    sizes = dict.fromkeys(rows_of, (100, 50))
    tasks = labelstudio.review_tasks(suspects, rows_of, sizes, "")
    first = tasks[0]["annotations"][0]["result"]
    first[0]["value"]["rectanglelabels"] = ["banana"]  # the reviewer fixes the class
    tasks[1]["annotations"] = []  # nobody looked at ccc
    tasks[2]["data"]["rows"] = [7]  # aaa's rows moved since the export
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    (tmp_path / "import-report.json").write_text(json.dumps({"images": 3}))

    summary = labelstudio.apply_export(tmp_path, export)
    assert summary["applied"] == 1 and summary["rows_before"] == summary["rows_after"] == 2
    assert len(summary["skipped"]) == 2
    assert "not annotated" in summary["skipped"][0] and "changed" in summary["skipped"][1]
    assert csv_path.read_text() == header + "".join(
        [lines[0], lines[1].replace(",cake,", ",banana,"), lines[2], lines[3]]
    )
    with pytest.raises(UserError, match=r"annotations-val\.csv: cannot be read .not valid JSON"):
        labelstudio.apply_export(tmp_path, csv_path)
    with pytest.raises(UserError, match="not a Label Studio export"):
        labelstudio.apply_export(tmp_path, tmp_path / "import-report.json")
