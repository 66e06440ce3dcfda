"""The synthetic snacks dataset (pipeline/data/synth.py): determinism, format, boxes and defects."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from pipeline.core.config import SNACK_CLASSES, SynthParams
from pipeline.core.errors import UserError
from pipeline.data import synth
from pipeline.data.boxes import iou
from pipeline.data.contract import (
    ANNOTATION_COLUMNS,
    SPLITS,
    annotations_path,
    image_path,
    open_image_rgb,
)
from pipeline.data.synth import images, scenes, snacks
from pipeline.data.synth.defects import DEFECT_SPECS

SMALL = SynthParams(seed=7, train_images=24, val_images=8, test_images=8, min_side=64, max_side=128)
BOX = ["x_min", "x_max", "y_min", "y_max"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("synth") / "data"
    return root, synth.generate(root, SMALL, progress=False)


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same seed without defects: the same rendered images, untouched."""
    root = tmp_path_factory.mktemp("synth_clean") / "data"
    synth.generate(root, SMALL.model_copy(update={"inject_defects": False}), progress=False)
    return root


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file, by path relative to ``root``."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def read_rows(root: Path, split: str) -> list[dict[str, str]]:
    with annotations_path(root, split).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def defects(manifest: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [d for d in manifest["defects"] if d["kind"] == kind]


def decodes(path: Path) -> bool:
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:
        return False


def as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def quarantined_rows(manifest: dict[str, Any], split: str) -> set[int]:
    return {
        row
        for d in manifest["defects"]
        if d["split"] == split and d["expect"] == "quarantine"
        for row in d["rows"]
    }


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_identical_files_serial_or_in_processes(dataset, tmp_path):
    root, manifest = dataset
    again = synth.generate(tmp_path / "data", SMALL, progress=False, workers=2)
    assert digest(tmp_path / "data") == digest(root)
    assert again == manifest


def test_another_seed_gives_other_files(dataset, tmp_path):
    root, manifest = dataset
    other = synth.generate(tmp_path / "data", SMALL.model_copy(update={"seed": 8}), progress=False)
    ours, theirs = digest(root), digest(tmp_path / "data")
    assert ours["annotations-train.csv"] != theirs["annotations-train.csv"]
    # only corrupt files (an empty file, the same HTML page) may be equal across seeds
    corrupt = {
        digest_of
        for m, files in ((manifest, ours), (other, theirs))
        for d in defects(m, "corrupt_file")
        for name, digest_of in files.items()
        if name.endswith(f"/{d['image_id']}.jpg")
    }
    assert set(ours.values()) & set(theirs.values()) <= corrupt


# --- the data contract ------------------------------------------------------------------------


def test_layout_header_and_counts(dataset):
    root, manifest = dataset
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [*SPLITS, *(f"annotations-{s}.csv" for s in SPLITS), "defects.json"]
    )
    for split in SPLITS:
        header = annotations_path(root, split).read_text(encoding="utf-8").splitlines()[0]
        assert header == "image_id,x_min,x_max,y_min,y_max,class_name,folder"
        assert header.split(",") == ANNOTATION_COLUMNS
        files = [p for p in (root / split).rglob("*") if p.is_file()]
        assert manifest["counts"][split] == {
            "images": len(files),
            "rows": len(read_rows(root, split)),
        }
        assert {p.parent.name for p in files} <= set(SNACK_CLASSES)
    assert manifest["seed"] == SMALL.seed
    # the noise params only when set, so that the default dataset's manifest keeps its bytes
    noise = {"label_noise", "label_noise_objects"}
    assert manifest["params"] == SMALL.model_dump(mode="json", exclude=noise)


def test_clean_rows_are_valid_and_their_images_decode(dataset):
    root, manifest = dataset
    checked = 0
    for split in SPLITS:
        bad = quarantined_rows(manifest, split)
        for index, row in enumerate(read_rows(root, split)):
            if index in bad:
                continue
            x0, x1, y0, y1 = (float(row[c]) for c in BOX)
            assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0, row
            assert row["class_name"] in SNACK_CLASSES and row["folder"] in SNACK_CLASSES
            assert re.fullmatch(r"[0-9a-f]{16}", row["image_id"])
            path = image_path(root, split, row["folder"], row["image_id"])
            assert open_image_rgb(path).size[0] > 0
            checked += 1
    assert checked > 30


def test_folder_is_the_class_of_the_first_row(clean_root):
    for split in SPLITS:
        first: dict[str, dict[str, str]] = {}
        for row in read_rows(clean_root, split):
            first.setdefault(row["image_id"], row)
            assert row["folder"] == first[row["image_id"]]["folder"]
        assert all(row["class_name"] == row["folder"] for row in first.values())


def test_rows_match_a_fresh_rendering(dataset):
    """A clean image on disk is exactly what render_image gives for its task."""
    root, manifest = dataset
    touched = {d["image_id"] for d in manifest["defects"]}
    touched |= {d.get("source_image_id") for d in manifest["defects"]}
    rows = {split: read_rows(root, split) for split in SPLITS}
    compared = 0
    for task in images.image_tasks(SMALL)[::3]:
        record, data = images.render_image(task, SMALL)
        if record.image_id in touched:
            continue
        path = image_path(root, task.split, record.folder, record.image_id)
        assert path.read_bytes() == data
        written = [r for r in rows[task.split] if r["image_id"] == record.image_id]
        expected = [
            [name, *(f"{v:.6f}" for v in box)] for name, *box in record.boxes
        ]  # main object first
        assert [[r["class_name"], *(r[c] for c in BOX)] for r in written] == expected
        compared += 1
    assert compared >= 3


# --- boxes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("class_name", SNACK_CLASSES)
def test_boxes_are_tight_around_the_visible_object(class_name):
    rng = np.random.default_rng([11, SNACK_CLASSES.index(class_name)])
    scene = scenes.render_scene(rng, 160, 120, class_name, with_background=True)
    assert scene.objects[0].class_name == class_name
    areas = [obj.mask.sum() for obj in scene.objects]
    assert areas[0] == max(areas)
    diff = np.abs(scene.image.astype(int) - scene.background.astype(int)).mean(axis=2)
    union = np.zeros((120, 160), dtype=bool)
    for obj in scene.objects:
        ys, xs = np.nonzero(obj.mask)
        x0, x1, y0, y1 = obj.box
        # tight: the mask touches all four edges of its box
        assert (xs.min(), xs.max() + 1) == (round(x0 * 160), round(x1 * 160))
        assert (ys.min(), ys.max() + 1) == (round(y0 * 120), round(y1 * 120))
        assert diff[obj.mask].mean() > 8.0, "the object is drawn where its mask says"
        union |= obj.mask
    for a, b in zip(scene.objects, scene.objects[1:], strict=False):
        assert not (a.mask & b.mask).any(), "visible masks do not overlap"
    assert diff[union].mean() > 3 * diff[~union].mean()


def test_every_class_has_a_drawer():
    assert tuple(snacks.CLASS_SPECS) == SNACK_CLASSES


# --- defects ----------------------------------------------------------------------------------


def test_every_defect_kind_is_injected_and_described(dataset):
    _, manifest = dataset
    assert {d["kind"] for d in manifest["defects"]} == set(DEFECT_SPECS)
    assert set(manifest["kinds"]) == set(DEFECT_SPECS)
    for d in manifest["defects"]:
        assert d["split"] in SPLITS and d["folder"] in SNACK_CLASSES and d["description"]
        assert d["expect"] == DEFECT_SPECS[d["kind"]].expect
        assert d["row"] is None or d["row"] in d["rows"]
    touched = [d["image_id"] for d in manifest["defects"]]
    assert len(touched) == len(set(touched)), "each defect has an image of its own"
    for kind in ("exact_duplicate_image", "near_duplicate_image"):
        assert {d["cross_split"] for d in defects(manifest, kind)} == {True, False}


def test_row_defects_are_really_there(dataset):
    root, manifest = dataset
    rows = {split: read_rows(root, split) for split in SPLITS}
    for d in manifest["defects"]:
        split_rows = rows[d["split"]]
        row = split_rows[d["row"]] if d["row"] is not None else None
        kind = d["kind"]
        if kind == "duplicate_row":
            assert row == split_rows[d["duplicate_of"]]
        elif kind == "duplicate_box":
            original = split_rows[d["duplicate_of"]]
            assert row["image_id"] == original["image_id"] == d["image_id"]
            assert row["class_name"] == original["class_name"] and row != original
            assert iou([float(row[c]) for c in BOX], [float(original[c]) for c in BOX]) > 0.95
        elif kind == "box_out_of_range":
            assert any(not 0.0 <= float(row[c]) <= 1.0 for c in BOX)
        elif kind == "box_inverted":
            x0, x1, y0, y1 = (float(row[c]) for c in BOX)
            assert x0 > x1 or y0 > y1
        elif kind == "unknown_class":
            assert row["class_name"] not in SNACK_CLASSES
        elif kind == "text_in_number":
            assert as_float(row[d["column"]]) is None and row[d["column"]] != ""
        elif kind == "empty_value":
            assert row[d["column"]] == ""
        elif kind == "path_traversal":
            assert "../" in row["image_id"] == d["image_id"]
            target = image_path(root, d["split"], row["folder"], row["image_id"]).resolve()
            assert not target.is_relative_to(root.resolve())
        if row is not None and kind != "path_traversal":
            assert row["image_id"] == d["image_id"]


def test_file_defects_are_really_there(dataset):
    root, manifest = dataset
    referenced = {s: {r["image_id"] for r in read_rows(root, s)} for s in SPLITS}

    def path_of(d: dict[str, Any]) -> Path:
        return image_path(root, d["split"], d["folder"], d["image_id"])

    for d in defects(manifest, "missing_file"):
        assert not path_of(d).exists() and d["image_id"] in referenced[d["split"]] and d["rows"]
    for d in defects(manifest, "truncated_jpeg"):
        assert path_of(d).read_bytes()[:2] == b"\xff\xd8" and not decodes(path_of(d))
    for d in defects(manifest, "corrupt_file"):
        assert path_of(d).exists() and not decodes(path_of(d))
    for d in defects(manifest, "unreferenced_image"):
        assert decodes(path_of(d)) and d["image_id"] not in referenced[d["split"]]
    for kind in ("missing_file", "truncated_jpeg", "corrupt_file"):
        for d in defects(manifest, kind):
            rows = read_rows(root, d["split"])
            assert {rows[i]["image_id"] for i in d["rows"]} == {d["image_id"]}


def test_odd_but_valid_images_show_the_same_scene(dataset, clean_root):
    """Grayscale, CMYK, PNG-as-.jpg and EXIF-rotated files decode to the annotated scene."""
    root, manifest = dataset
    expected_mode = {"grayscale_image": "L", "cmyk_image": "CMYK", "png_as_jpg": "RGB"}
    for kind in ("grayscale_image", "cmyk_image", "png_as_jpg", "exif_rotated"):
        for d in defects(manifest, kind):
            path = image_path(root, d["split"], d["folder"], d["image_id"])
            with Image.open(path) as image:
                if kind == "exif_rotated":
                    assert image.getexif().get(0x0112, 1) != 1
                else:
                    assert image.mode == expected_mode[kind]
                assert image.format == ("PNG" if kind == "png_as_jpg" else "JPEG")
            original = open_image_rgb(
                image_path(clean_root, d["split"], d["folder"], d["image_id"])
            )
            shown = open_image_rgb(path)  # EXIF orientation applied, converted to RGB
            assert shown.size == original.size
            a = np.asarray(shown.convert("L"), dtype=float)
            b = np.asarray(original.convert("L"), dtype=float)
            assert np.abs(a - b).mean() < 6.0
            if kind == "png_as_jpg":
                assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if kind == "exif_rotated":
                with Image.open(path) as image:
                    raw = np.asarray(image.convert("L"), dtype=float)
                    assert raw.shape != a.shape or np.abs(raw - a).mean() > 6.0


def test_duplicate_images_copy_their_source(dataset):
    root, manifest = dataset
    for kind in ("exact_duplicate_image", "near_duplicate_image"):
        for d in defects(manifest, kind):
            copy = image_path(root, d["split"], d["folder"], d["image_id"])
            source = image_path(root, d["source_split"], d["folder"], d["source_image_id"])
            assert d["cross_split"] == (d["split"] != d["source_split"])
            if kind == "exact_duplicate_image":
                assert copy.read_bytes() == source.read_bytes()
            else:
                assert copy.read_bytes() != source.read_bytes()
                small = [
                    np.asarray(ImageOps.fit(open_image_rgb(p).convert("L"), (32, 32)), dtype=float)
                    for p in (copy, source)
                ]
                assert np.abs(small[0] - small[1]).mean() < 12.0
            copied = [read_rows(root, d["split"])[i] for i in d["rows"]]
            originals = [
                r
                for r in read_rows(root, d["source_split"])
                if r["image_id"] == d["source_image_id"]
            ]
            assert [[r[c] for c in BOX] for r in copied] == [[r[c] for c in BOX] for r in originals]


def test_defect_rates_at_the_default_size():
    """Around 0.5-1 % of images per kind at full size; the quarantined share stays small."""
    total = sum(images.split_sizes(SynthParams()).values())
    counts = {k: max(s.minimum, round(s.rate * total)) for k, s in DEFECT_SPECS.items()}
    assert all(2 <= n <= 0.02 * total for n in counts.values())
    quarantined = sum(n for k, n in counts.items() if DEFECT_SPECS[k].expect == "quarantine")
    assert quarantined < 0.06 * total


# --- safety -----------------------------------------------------------------------------------


def test_refuses_to_replace_a_non_empty_folder_unless_asked(tmp_path):
    params = SynthParams(train_images=2, val_images=1, test_images=1, min_side=48, max_side=64,
                         inject_defects=False)  # fmt: skip
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("the real dataset")
    with pytest.raises(UserError, match="not empty"):
        synth.generate(tmp_path / "data", params, progress=False)
    assert (tmp_path / "data" / "mine.txt").exists()
    synth.generate(tmp_path / "data", params, progress=False, overwrite=True)
    assert not (tmp_path / "data" / "mine.txt").exists()
    assert (tmp_path / "data" / "defects.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["data"], "no temporary folders left behind"
