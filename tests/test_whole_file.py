"""A whole annotation file wrong in one way: the validate stage's one error line says what
the file looks like and how to fix it (pipeline/data/quality/diagnose.py), not only how
many rows failed, and never blames something else (the class list) for it."""

from __future__ import annotations

import logging
import shutil

import pytest
from helpers_data import ann, make_dataset, make_params, write_csv_rows

from pipeline.core.errors import UserError
from pipeline.core.paths import Outputs
from pipeline.stages import validate

CLASSES = ("cake", "apple", "banana")


def rows(count: int = 6, **changes) -> list[dict[str, str]]:
    return [ann(f"t{i}", CLASSES[i % 3], **changes) for i in range(count)]


def fails(tmp_path, splits, classes="snacks", **options) -> UserError:
    root = make_dataset(tmp_path / "data", splits)
    params = make_params(root, classes=classes, max_bad_fraction=0.15, **options)
    with pytest.raises(UserError) as failure:
        validate.run(params, Outputs(tmp_path / "outputs"), progress=False)
    assert "\n" not in failure.value.hint or "hint" not in failure.value.hint
    return failure.value


def test_pixel_coordinates_are_named_as_such_not_as_a_class_list_problem(tmp_path):
    error = fails(tmp_path, {"train": rows(box=("12", "200", "30", "180"))}, classes="auto")
    assert "6 of 6 rows of annotations-train.csv have coordinates above 1 (up to 200)" in str(error)
    assert "look like pixels" in str(error)
    assert "no class names" not in str(error)
    assert error.hint.startswith("divide x_min and x_max by the image's width")


def test_own_class_names_with_the_default_snacks_list_point_to_auto(tmp_path):
    photos = [ann(f"p{i}", ("cat", "dog", "bird")[i % 3]) for i in range(6)]
    error = fails(tmp_path, {"train": photos})
    assert "have a class_name that is not in data.classes (the book's 20 snacks)" in str(error)
    assert "cat, dog, bird" in str(error) or "cat" in str(error)
    assert "data.classes: auto" in error.hint
    assert "max_bad_fraction" not in error.hint


@pytest.mark.parametrize(
    ("box", "looks_like", "fix"),
    [
        pytest.param(
            ("0.1", "0.2", "0.9", "0.8"), "x_min, y_min, x_max, y_max", "swap the x_max", id="voc"
        ),
        pytest.param(
            ("0.5", "0.3", "0.4", "0.2"),  # x 0.5, y 0.3, width 0.4, height 0.2
            "width and height (COCO",
            "x_max = x_min + width",
            id="coco",
        ),
    ],
)
def test_another_column_order_is_named(tmp_path, box, looks_like, fix):
    error = fails(tmp_path, {"train": rows(box=box)})
    assert looks_like in str(error) and fix in error.hint


def test_images_outside_their_class_folders_are_found(tmp_path):
    root = make_dataset(tmp_path / "data", {"train": rows()})
    for image in list((root / "train").rglob("*.jpg")):
        shutil.move(image, root / "train" / image.name)
    with pytest.raises(UserError) as failure:
        validate.run(make_params(root, max_bad_fraction=0.15), Outputs(tmp_path), progress=False)
    error = failure.value
    assert "the images are in" in str(error) and "not in one folder per class" in str(error)
    assert "move each image into" in error.hint


def test_image_ids_with_their_extension_are_named(tmp_path):
    root = make_dataset(tmp_path / "data", {"train": rows()})
    write_csv_rows(root, "train", [{**row, "image_id": row["image_id"] + ".jpg"} for row in rows()])
    with pytest.raises(UserError) as failure:
        validate.run(
            make_params(root, max_bad_fraction=0.15), Outputs(tmp_path / "o"), progress=False
        )
    assert "image_id ends in a file extension" in str(failure.value)
    assert failure.value.hint == "write image_id without the extension"


def test_class_names_in_another_case_are_named(tmp_path):
    error = fails(
        tmp_path, {"train": [{**row, "class_name": row["class_name"].title()} for row in rows()]}
    )
    assert "other letter case" in str(error)


def test_a_semicolon_separated_file_is_named(tmp_path):
    root = make_dataset(tmp_path / "data", {"train": rows()})
    text = (root / "annotations-train.csv").read_text().replace(",", ";")
    (root / "annotations-train.csv").write_text(text)
    with pytest.raises(UserError) as failure:
        validate.run(make_params(root), Outputs(tmp_path / "o"), progress=False)
    assert "looks separated by ';'" in str(failure.value)
    assert failure.value.hint == "save it comma-separated"


def test_a_few_snack_classes_with_the_whole_snacks_list_warn(tmp_path, caplog):
    root = make_dataset(tmp_path / "data", {"train": rows(), "val": rows(3), "test": rows(3)})
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        validate.run(make_params(root), Outputs(tmp_path / "outputs"), progress=False)
    warning = "17 of the 20 classes of data.classes (the book's 20 snacks) have no train row"
    assert warning in caplog.text
    assert "`data.classes: auto` to train on the 3 classes" in caplog.text


def test_yolo_center_and_size_are_named(tmp_path):
    error = fails(tmp_path, {"train": rows(box=("0.6", "0.5", "0.6", "0.4"))})  # COCO: x_max 1.2
    assert "x_center, y_center, width and height (YOLO order)" in str(error)
    assert "--format yolo" in error.hint


def test_images_with_another_extension_are_named(tmp_path):
    root = make_dataset(tmp_path / "data", {"train": rows()})
    for image in list((root / "train").rglob("*.jpg")):
        image.rename(image.with_suffix(".jpeg"))
    with pytest.raises(UserError) as failure:
        validate.run(make_params(root, max_bad_fraction=0.15), Outputs(tmp_path), progress=False)
    assert "the images are named <image_id>.jpeg, not <image_id>.jpg" in str(failure.value)
    assert failure.value.hint.startswith("rename each image to <image_id>.jpg")


def test_an_empty_folder_column_is_named(tmp_path):
    error = fails(tmp_path, {"train": rows(folder="")})
    assert "6 of 6 rows of annotations-train.csv have an empty folder" in str(error)
    assert error.hint.startswith("fill in folder: the class folder")


def test_one_odd_row_is_no_whole_file_pattern(tmp_path):
    """Below MIN_ROWS the threshold error stays: one row in pixels says nothing of the file."""
    error = fails(tmp_path, {"train": [ann("t0", box=("2", "30", "4", "50")), ann("t1")]})
    assert "validate.max_bad_fraction" in str(error) and "pixels" not in str(error)


def test_a_whole_val_file_in_pixels_warns_below_the_threshold(tmp_path, caplog):
    train = [ann(f"t{i}", CLASSES[i % 3]) for i in range(40)]
    val = [ann(f"v{i}", CLASSES[i % 3], box=("12", "200", "30", "180")) for i in range(4)]
    root = make_dataset(tmp_path / "data", {"train": train, "val": val})
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        validate.run(make_params(root, "auto", max_bad_fraction=0.15), Outputs(tmp_path))
    assert "4 of 4 rows of annotations-val.csv have coordinates above 1" in caplog.text


@pytest.mark.parametrize(
    ("header", "says", "fix"),
    [
        pytest.param(
            "filename,width,height,class,xmin,ymin,xmax,ymax",
            "missing column(s) image_id, x_min",
            "rename filename to image_id, xmin to x_min",
            id="tensorflow-csv",
        ),
        pytest.param(
            "t0\t0.1\t0.9", "looks separated by tabs", "save it comma-separated", id="tab"
        ),
        pytest.param(
            "t0,0.1,0.9,0.2,0.8,cake,cake",
            "first line is a row of data",
            "add the header",
            id="no-header",
        ),
    ],
)
def test_a_header_of_another_shape_is_named(tmp_path, header, says, fix):
    root = make_dataset(tmp_path / "data", {"train": rows()})
    (root / "annotations-train.csv").write_text(header + "\n")
    with pytest.raises(UserError) as failure:
        validate.run(make_params(root), Outputs(tmp_path / "o"), progress=False)
    assert says in str(failure.value) and fix in failure.value.hint


def _xywh_rows() -> list[dict[str, str]]:
    """x, y, width, height written into x_min, x_max, y_min, y_max: 27 of 30 rows still
    look valid (x < y, width < height), 3 look inverted (10 %, under max_bad_fraction)."""
    boxes = []
    for i in range(30):
        x, y, w, h = 0.05 + 0.01 * (i % 10), 0.30 + 0.01 * i, 0.20, 0.40
        if i % 8 == 7:  # x > y or width > height: read as written, inverted
            x, y, w, h = (0.50, 0.10, 0.30, 0.60) if i % 16 == 7 else (0.10, 0.30, 0.45, 0.40)
        boxes.append(tuple(f"{v:.2f}" for v in (x, y, w, h)))
    return [ann(f"t{i}", CLASSES[i % 3], box=box) for i, box in enumerate(boxes)]


def test_x_y_width_height_fails_even_when_few_rows_look_inverted(tmp_path):
    error = fails(tmp_path, {"train": _xywh_rows()})  # max_bad_fraction 0.15
    assert "3 of 30 rows of annotations-train.csv have x_min >= x_max" in str(error)
    assert "valid read as x_min, y_min, width and height (COCO order)" in str(error)
    assert "x_max = x_min + width" in error.hint
    assert not (tmp_path / "outputs/validate/classes.json").exists()  # nothing to train on


def test_a_few_inverted_rows_among_right_boxes_are_no_box_order_mistake(tmp_path):
    train = [ann(f"t{i}", CLASSES[i % 3], box=("0.3", "0.8", "0.25", "0.9")) for i in range(26)]
    train += [ann(f"x{i}", "cake", box=("0.8", "0.3", "0.25", "0.9")) for i in range(4)]
    root = make_dataset(tmp_path / "data", {"train": train})
    report = validate.run(make_params(root, "auto", max_bad_fraction=0.15), Outputs(tmp_path))
    assert report["rows_quarantined"] == 4  # quarantined as inverted; the file is not named
