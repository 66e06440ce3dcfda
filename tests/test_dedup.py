"""Stage "dedup": duplicate rows, duplicate boxes, byte-identical images and cross-split leaks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers_data import ann, make_dataset, make_params, read_text_csv

from pipeline import dedup, validate
from pipeline.config import SPLITS
from pipeline.dataio import read_clean_annotations
from pipeline.errors import UserError
from pipeline.paths import Outputs

BOX_A = ("0.1", "0.5", "0.1", "0.5")
BOX_B = ("0.5", "0.9", "0.5", "0.9")
BOX_A_SHIFTED = ("0.1", "0.5", "0.1", "0.505")  # IoU with BOX_A = 0.4 / 0.405 ≈ 0.988


def run_both(tmp_path: Path, splits: dict, copies: dict[str, str] | None = None):
    """Build a dataset, make byte copies (dst <- src, paths relative to data/), run both stages."""
    root = make_dataset(tmp_path / "data", splits)
    for dst, src in (copies or {}).items():
        shutil.copyfile(root / src, root / dst)
    outputs = Outputs(tmp_path / "outputs")
    params = make_params(root)
    validate.run(params, outputs, progress=False)
    return dedup.run(params, outputs, progress=False), outputs


def removed(outputs: Outputs) -> list[dict[str, str]]:
    return read_text_csv(outputs.duplicates).to_dict("records")


def assert_conserved(outputs: Outputs) -> None:
    """validated rows == deduped rows + removed rows, per split, and no row in both."""
    gone = removed(outputs)
    for split in SPLITS:
        before = read_clean_annotations(outputs.validated(split))
        after = read_clean_annotations(outputs.deduped(split))
        out_rows = {int(r["row"]) for r in gone if r["split"] == split}
        assert len(before) == len(after) + len(out_rows)
        assert set(after["row"]) | out_rows == set(before["row"])
        assert not set(after["row"]) & out_rows


def test_nothing_to_remove_passes_everything_through(tmp_path):
    report, outputs = run_both(tmp_path, {"train": [ann("a"), ann("b")], "val": [ann("c")]})
    assert report["rows_in"] == report["rows_out"] == 3
    assert report["removed"] == dict.fromkeys(dedup.KINDS, 0)
    assert removed(outputs) == []
    assert read_text_csv(outputs.deduped("train")).equals(read_text_csv(outputs.validated("train")))
    assert json.loads(outputs.dedup_report.read_text())["rows_out"] == 3


def test_duplicate_rows_keep_the_first(tmp_path):
    train = [
        ann("a", box=BOX_A),
        ann("a", box=BOX_A),
        ann("a", box=BOX_B),
        ann("a", box=("0.10", "0.5", "0.1", "0.50")),  # same numbers, other spelling
        ann("b", box=BOX_A),  # another image: not a duplicate
        ann("a", "apple", folder="cake", box=BOX_A),
    ]  # another class: not a duplicate
    report, outputs = run_both(tmp_path, {"train": train})

    assert report["removed"]["duplicate_row"] == 2
    assert [(r["row"], r["kind"], r["kept_row"]) for r in removed(outputs)] == [
        ("1", "duplicate_row", "0"),
        ("3", "duplicate_row", "0"),
    ]
    assert read_clean_annotations(outputs.deduped("train"))["row"].tolist() == [0, 2, 4, 5]
    assert_conserved(outputs)


def test_same_rows_in_different_splits_are_not_duplicate_rows(tmp_path):
    report, _ = run_both(tmp_path, {"train": [ann("a")], "val": [ann("a")]})
    assert report["removed"]["duplicate_row"] == 0


def test_duplicate_boxes_above_threshold(tmp_path):
    train = [
        ann("a", box=BOX_A),
        ann("a", box=BOX_A_SHIFTED),
        ann("a", box=BOX_B),
        ann("a", "apple", folder="cake", box=BOX_A_SHIFTED),  # other class: kept
        ann("a", box=("0.1", "0.5", "0.1", "0.6")),
    ]  # IoU 0.8 with BOX_A: kept
    report, outputs = run_both(tmp_path, {"train": train})

    assert report["removed"] == {**dict.fromkeys(dedup.KINDS, 0), "duplicate_box": 1}
    [record] = removed(outputs)
    assert (record["row"], record["kept_row"], record["kind"]) == ("1", "0", "duplicate_box")
    assert "IoU 0.988" in record["detail"]
    assert_conserved(outputs)


def test_byte_identical_images_within_a_split(tmp_path):
    train = [ann("a"), ann("b"), ann("b", box=BOX_A), ann("c")]
    report, outputs = run_both(
        tmp_path, {"train": train}, copies={"train/cake/b.jpg": "train/cake/a.jpg"}
    )

    assert report["removed"]["duplicate_image"] == 2
    assert {(r["row"], r["kind"], r["kept_image_id"], r["kept_row"]) for r in removed(outputs)} == {
        ("1", "duplicate_image", "a", "0"),
        ("2", "duplicate_image", "a", "0"),
    }
    assert report["duplicate_image_groups"] == 1
    [group] = report["details"]["image_groups"]
    assert group["kept"] == "train/cake/a.jpg" and group["copies"] == ["train/cake/b.jpg"]
    assert_conserved(outputs)


def test_leaked_images_are_removed_from_val_and_test_keeping_train(tmp_path):
    splits = {
        "train": [ann("t0"), ann("t1")],
        "val": [ann("v0"), ann("v1")],
        "test": [ann("s0"), ann("s1")],
    }
    copies = {
        "val/cake/v1.jpg": "train/cake/t1.jpg",
        "test/cake/s0.jpg": "train/cake/t1.jpg",
        "test/cake/s1.jpg": "val/cake/v0.jpg",
    }  # val<->test leak, no train copy
    report, outputs = run_both(tmp_path, splits, copies)

    got = {
        (r["split"], r["image_id"], r["kind"], r["kept_split"], r["kept_image_id"])
        for r in removed(outputs)
    }
    assert got == {
        ("val", "v1", "leaked_image", "train", "t1"),
        ("test", "s0", "leaked_image", "train", "t1"),
        ("test", "s1", "leaked_image", "val", "v0"),
    }
    assert report["per_split"]["train"] == {"rows_in": 2, "rows_out": 2, "removed": 0}
    assert report["per_split"]["test"] == {"rows_in": 2, "rows_out": 0, "removed": 2}
    assert report["removed"]["leaked_image"] == 3
    assert_conserved(outputs)


def test_every_kind_at_once_counts_each_row_once(tmp_path):
    splits = {
        "train": [
            ann("a", box=BOX_A),
            ann("a", box=BOX_A),
            ann("a", box=BOX_A_SHIFTED),
            ann("b", box=BOX_A),
        ],
        "val": [ann("c", box=BOX_A), ann("c", box=BOX_A)],
    }
    copies = {"train/cake/b.jpg": "train/cake/a.jpg", "val/cake/c.jpg": "train/cake/a.jpg"}
    report, outputs = run_both(tmp_path, splits, copies)

    assert report["removed"] == {
        "duplicate_row": 2,
        "duplicate_box": 1,
        "duplicate_image": 1,
        "leaked_image": 1,
    }
    assert report["rows_in"] == report["rows_out"] + report["rows_removed"] == 6
    assert_conserved(outputs)


def test_missing_validated_input_is_a_user_error(tmp_path):
    root = make_dataset(tmp_path / "data", {"train": [ann("a")]})
    with pytest.raises(UserError, match="validate"):
        dedup.run(make_params(root), Outputs(tmp_path / "outputs"), progress=False)


def test_image_deleted_after_validation_is_a_user_error(tmp_path):
    root = make_dataset(tmp_path / "data", {"train": [ann("a")]})
    outputs = Outputs(tmp_path / "outputs")
    validate.run(make_params(root), outputs, progress=False)
    (root / "train" / "cake" / "a.jpg").unlink()
    with pytest.raises(UserError, match="no longer exist"):
        dedup.run(make_params(root), outputs, progress=False)
