"""Stage "dedup": duplicate rows, merged boxes, exact and near-duplicate images, leakage.

Most cases write the validated CSVs directly (``write_validated``) and run dedup alone, which
keeps them fast; one case runs validate first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_data import (
    ann,
    make_dataset,
    make_params,
    read_text_csv,
    scene_image,
    write_image,
    write_validated,
)
from PIL import Image

from pipeline.core.config import DedupParams, Params
from pipeline.core.errors import UserError
from pipeline.core.paths import Outputs
from pipeline.data.contract import SPLITS, read_clean_annotations
from pipeline.data.quality import duplicates, fingerprints
from pipeline.stages import dedup, validate

BOX_A = ("0.1", "0.5", "0.1", "0.5")
BOX_B = ("0.5", "0.9", "0.5", "0.9")
BOX_A_SHIFTED = ("0.1", "0.5", "0.1", "0.505")  # IoU with BOX_A = 0.4 / 0.405 ≈ 0.988


def run_dedup(
    tmp_path: Path,
    splits: dict,
    copies: dict[str, str] | None = None,
    **dedup_params: object,
) -> tuple[dict, Outputs]:
    """Build a dataset, make byte copies (dst <- src, paths relative to data/), run dedup."""
    root = make_dataset(tmp_path / "data", splits)
    for dst, src in (copies or {}).items():
        shutil.copyfile(root / src, root / dst)
    outputs = Outputs(tmp_path / "outputs")
    write_validated(outputs.root, splits)
    params = Params(data=make_params(root).data, dedup=DedupParams(**dedup_params))
    return dedup.run(params, outputs, progress=False), outputs


def removed(outputs: Outputs) -> list[dict[str, str]]:
    return read_text_csv(outputs.duplicates).to_dict("records")


def groups(outputs: Outputs) -> dict:
    return json.loads(outputs.dedup_groups.read_text())


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
    report, outputs = run_dedup(tmp_path, {"train": [ann("a"), ann("b")], "val": [ann("c")]})
    assert report["rows_in"] == report["rows_out"] == 3
    assert report["removed"] == dict.fromkeys(duplicates.KINDS, 0)
    assert report["duplicate_image_groups"] == report["leaked_images"] == 0
    assert removed(outputs) == []
    assert read_text_csv(outputs.deduped("train")).equals(read_text_csv(outputs.validated("train")))
    assert json.loads(outputs.dedup_report.read_text())["rows_out"] == 3
    assert groups(outputs) == {"box_merges": [], "image_groups": [], "leaks": []}
    assert "| rows out | 3 |" in report["markdown"]


# --- rows and boxes -----------------------------------------------------------------------


def test_duplicate_rows_keep_the_first(tmp_path):
    train = [
        ann("a", box=BOX_A),
        ann("a", box=BOX_A),
        ann("a", box=BOX_B),
        ann("a", box=("0.10", "0.5", "0.1", "0.50")),  # same numbers, other spelling
        ann("b", box=BOX_A),  # another image: not a duplicate
        ann("a", "apple", folder="cake", box=BOX_A),  # another class: not a duplicate
    ]
    report, outputs = run_dedup(tmp_path, {"train": train})

    assert report["removed"]["duplicate_row"] == 2
    assert [(r["row"], r["kind"], r["kept_row"]) for r in removed(outputs)] == [
        ("1", "duplicate_row", "0"),
        ("3", "duplicate_row", "0"),
    ]
    assert read_clean_annotations(outputs.deduped("train"))["row"].tolist() == [0, 2, 4, 5]
    assert_conserved(outputs)


def test_same_rows_in_different_splits_are_not_duplicate_rows(tmp_path):
    report, _ = run_dedup(tmp_path, {"train": [ann("a")], "val": [ann("a")]})
    assert report["removed"]["duplicate_row"] == 0


BOX_CASE = [
    ann("a", box=BOX_A),
    ann("a", box=BOX_A_SHIFTED),
    ann("a", box=BOX_B),
    ann("a", "apple", folder="cake", box=BOX_A_SHIFTED),  # other class: kept
    ann("a", box=("0.1", "0.5", "0.1", "0.6")),  # IoU 0.8 with BOX_A: kept
]


def test_duplicate_boxes_are_merged_into_the_first_row(tmp_path):
    report, outputs = run_dedup(tmp_path, {"train": BOX_CASE})

    assert report["removed"] == {**dict.fromkeys(duplicates.KINDS, 0), "duplicate_box": 1}
    assert report["boxes_merged"] == 1
    [record] = removed(outputs)
    assert (record["row"], record["kept_row"], record["kind"]) == ("1", "0", "duplicate_box")
    assert "IoU 0.988" in record["detail"] and "merged" in record["detail"]
    kept = read_clean_annotations(outputs.deduped("train")).set_index("row")
    assert kept.loc[0, ["x_min", "x_max", "y_min", "y_max"]].tolist() == [0.1, 0.5, 0.1, 0.5025]
    assert kept.loc[4, "y_max"] == 0.6  # rows not merged are untouched
    [merge] = groups(outputs)["box_merges"]
    assert merge["rows"] == [0, 1] and merge["image"] == "train/cake/a.jpg"
    assert merge["boxes"] == [[0.1, 0.5, 0.1, 0.5], [0.1, 0.5, 0.1, 0.505]]
    assert merge["result"] == [0.1, 0.5, 0.1, 0.5025] and merge["ious"] == [0.9877]
    assert_conserved(outputs)


def test_box_merge_first_keeps_the_first_box_as_written(tmp_path):
    report, outputs = run_dedup(tmp_path, {"train": BOX_CASE}, box_merge="first")
    assert report["removed"]["duplicate_box"] == 1
    kept = read_clean_annotations(outputs.deduped("train")).set_index("row")
    assert kept.loc[0, "y_max"] == 0.5
    assert groups(outputs)["box_merges"][0]["result"] == [0.1, 0.5, 0.1, 0.5]


def test_box_pair_iou_distribution_is_reported(tmp_path):
    report, _ = run_dedup(tmp_path, {"train": BOX_CASE}, box_iou_threshold=0.5)
    # cake boxes on image a: A, A', B, A(y 0.6) -> 6 pairs; the apple box has no pair.
    histogram = report["details"]["box_pair_iou_histogram"]
    assert report["box_pairs"] == sum(histogram["counts"]) == 6
    assert report["box_pairs_overlapping"] == 3  # B touches A only at a corner: IoU 0
    assert report["box_pairs_above_threshold"] == 3
    assert histogram["edges"][0] == 0.0 and histogram["edges"][-1] == 1.0
    assert histogram["counts"][0] == 3 and histogram["counts"][-1] == 1  # 0.988
    assert report["removed"]["duplicate_box"] == 2  # A' and A(y 0.6) both join A's cluster


def test_cluster_boxes_is_greedy_against_first_members():
    boxes = np.array([[0.1, 0.5, 0.1, 0.5], [0.5, 0.9, 0.5, 0.9], [0.1, 0.5, 0.1, 0.505]])
    clusters = duplicates.cluster_boxes(boxes, 0.9)
    assert [members for members, _ in clusters] == [[0, 2], [1]]
    assert clusters[0][1][1] == pytest.approx(0.4 / 0.405)


# --- images ---------------------------------------------------------------------------------


def test_byte_identical_images_within_a_split(tmp_path):
    train = [ann("a"), ann("b"), ann("b", box=BOX_A), ann("c")]
    report, outputs = run_dedup(
        tmp_path, {"train": train}, copies={"train/cake/b.jpg": "train/cake/a.jpg"}
    )

    assert report["removed"]["duplicate_image"] == 2
    assert {(r["row"], r["kind"], r["kept_image_id"], r["kept_row"]) for r in removed(outputs)} == {
        ("1", "duplicate_image", "a", "0"),
        ("2", "duplicate_image", "a", "0"),
    }
    assert "same bytes as train/cake/a.jpg" in removed(outputs)[0]["detail"]
    assert report["duplicate_image_groups"] == 1
    [group] = groups(outputs)["image_groups"]
    assert group["kept"] == "train/cake/a.jpg"
    assert [(m["image"], m["action"], m["distance_to_kept"]) for m in group["members"]] == [
        ("train/cake/a.jpg", "kept", 0),
        ("train/cake/b.jpg", "removed", 0),
    ]
    assert group["members"][0]["sha256"] == group["members"][1]["sha256"]
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
    report, outputs = run_dedup(tmp_path, splits, copies)

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
    assert report["removed"]["leaked_image"] == 3 and report["leaked_images"] == 3
    leaks = {
        (leak["image"], leak["duplicates"], leak["removed"]) for leak in groups(outputs)["leaks"]
    }
    assert ("test/cake/s1.jpg", "val/cake/v0.jpg", True) in leaks
    assert_conserved(outputs)


def near_duplicate_dataset(root: Path) -> dict[str, list[dict[str, str]]]:
    """train: a, b (a resized and re-encoded), c (distinct); val: v (a brightened),
    w (a stored rotated with an EXIF tag: displays like a); test: s (distinct)."""
    splits = {
        "train": [ann("a"), ann("b"), ann("c")],
        "val": [ann("v"), ann("w", box=BOX_A)],
        "test": [ann("s")],
    }
    make_dataset(root, splits)
    scene = scene_image("scene", (120, 90))
    write_image(root / "train/cake/a.jpg", scene, quality=90)
    write_image(root / "train/cake/b.jpg", scene.resize((96, 72)), quality=70)
    write_image(root / "train/cake/c.jpg", scene_image("other", (120, 90)))
    bright = Image.fromarray(np.clip(np.asarray(scene) * 1.08, 0, 255).astype(np.uint8))
    write_image(root / "val/cake/v.jpg", bright)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: store it rotated the other way
    write_image(root / "val/cake/w.jpg", scene.transpose(Image.Transpose.ROTATE_90), exif=exif)
    write_image(root / "test/cake/s.jpg", scene_image("third", (120, 90)))
    return splits


def test_near_duplicates_within_and_across_splits(tmp_path):
    splits = near_duplicate_dataset(tmp_path / "data")
    report, outputs = run_dedup(tmp_path, splits)

    got = {(r["split"], r["image_id"], r["kind"], r["kept_image_id"]) for r in removed(outputs)}
    assert got == {
        ("train", "b", "near_duplicate_image", "a"),
        ("val", "v", "leaked_image", "a"),
        ("val", "w", "leaked_image", "a"),
    }
    assert all("pHash distance" in r["detail"] for r in removed(outputs))
    [group] = groups(outputs)["image_groups"]
    members = {m["image"]: m for m in group["members"]}
    assert set(members) == {
        "train/cake/a.jpg",
        "train/cake/b.jpg",
        "val/cake/v.jpg",
        "val/cake/w.jpg",
    }
    assert all(m["distance_to_kept"] <= 4 for m in members.values())
    assert report["images_hashed"] == 6 and report["leaked_images"] == 2
    assert_conserved(outputs)


def test_near_duplicate_distance_zero_finds_only_identical_hashes(tmp_path):
    splits = near_duplicate_dataset(tmp_path / "data")
    report, _ = run_dedup(tmp_path, splits, near_duplicate_distance=0)
    assert report["removed"]["near_duplicate_image"] + report["removed"]["leaked_image"] <= 3
    assert report["images_hashed"] == 6


def test_leakage_keep_reports_but_keeps_the_eval_copies(tmp_path):
    splits = {"train": [ann("t0")], "val": [ann("v0"), ann("v1")], "test": [ann("s0")]}
    copies = {"val/cake/v0.jpg": "train/cake/t0.jpg", "val/cake/v1.jpg": "train/cake/t0.jpg"}
    report, outputs = run_dedup(tmp_path, splits, copies, leakage="keep")

    # v0 is kept (a reported leak); v1 copies v0 inside val: an ordinary duplicate.
    assert {(r["image_id"], r["kind"], r["kept_image_id"]) for r in removed(outputs)} == {
        ("v1", "duplicate_image", "v0")
    }
    assert groups(outputs)["leaks"] == [
        {
            "image": "val/cake/v0.jpg",
            "duplicates": "train/cake/t0.jpg",
            "distance": 0,
            "exact": True,
            "removed": False,
        }
    ]
    assert report["leaked_images"] == 1 and report["removed"]["leaked_image"] == 0
    assert_conserved(outputs)


def test_leakage_fail_stops_after_writing_every_output(tmp_path):
    splits = {"train": [ann("t0")], "test": [ann("s0")]}
    with pytest.raises(UserError) as failure:
        run_dedup(tmp_path, splits, {"test/cake/s0.jpg": "train/cake/t0.jpg"}, leakage="fail")
    message = str(failure.value)
    assert "test/cake/s0.jpg = train/cake/t0.jpg" in message and "leakage" in message
    outputs = Outputs(tmp_path / "outputs")
    assert groups(outputs)["leaks"][0]["removed"] is False
    assert json.loads(outputs.dedup_report.read_text())["leaked_images"] == 1


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
    report, outputs = run_dedup(tmp_path, splits, copies)

    assert report["removed"] == {
        "duplicate_row": 2,
        "duplicate_box": 1,
        "duplicate_image": 1,
        "near_duplicate_image": 0,
        "leaked_image": 1,
    }
    assert report["rows_in"] == report["rows_out"] + report["rows_removed"] == 6
    assert_conserved(outputs)


# --- grouping rules (plain functions) ----------------------------------------------------


def test_plan_group_keeps_one_per_split_only_when_leaks_are_kept():
    splits = ["train", "train", "val", "val", "test"]
    drop = duplicates.plan_group([0, 1, 2, 3, 4], splits, drop_leaks=True)
    assert [(d.image, d.kept, d.leak, d.removed) for d in drop] == [
        (1, 0, False, True),
        (2, 0, True, True),
        (3, 0, True, True),
        (4, 0, True, True),
    ]
    keep = duplicates.plan_group([0, 1, 2, 3, 4], splits, drop_leaks=False)
    assert [(d.image, d.kept, d.leak, d.removed) for d in keep] == [
        (1, 0, False, True),
        (2, 0, True, False),
        (3, 2, False, True),
        (4, 0, True, False),
    ]


def test_image_groups_chain_and_link_equal_hashes():
    prints = [
        fingerprints.Fingerprint("x", 0b0000),
        fingerprints.Fingerprint("y", 0b0011),  # 2 bits from 0
        fingerprints.Fingerprint("z", 0b1111),  # 2 bits from 1, 4 from 0: chained
        fingerprints.Fingerprint("w", 0x5555_5555_5555_5555),  # far from everything
        fingerprints.Fingerprint("x", 0xF0F0F0F0 << 32),  # same bytes as 0, whatever its hash
        fingerprints.Fingerprint("v", 0x5555_5555_5555_5555),  # same hash as 3
    ]
    assert fingerprints.image_groups(prints, radius=2) == [[0, 1, 2, 4], [3, 5]]
    assert fingerprints.image_groups(prints, radius=0) == [[0, 4], [3, 5]]
    assert fingerprints.image_groups(prints[:1], radius=2) == []


# --- inputs ---------------------------------------------------------------------------------


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
