"""`snackloc data import` as a new user meets it: a split left empty is a warning naming the
fix (not a later training error), and a source in another format says what it holds."""

from __future__ import annotations

import json

import pytest
from helpers_data import ann, make_dataset, make_params, write_validated
from helpers_env import BIN
from helpers_formats import SPEC, write_voc
from helpers_project import sh

from pipeline.core.errors import UserError
from pipeline.core.paths import Outputs
from pipeline.data.formats.importing import split_warnings


def test_a_voc_folder_without_val_images_warns_and_names_resplit(tmp_path):
    write_voc(tmp_path / "src" / "train")  # the source's own split: train only
    done = sh(BIN / "snackloc", "data", "import", "src", "--format", "voc", cwd=tmp_path)
    assert "val 0 images" in done.stdout
    assert "warning: val has 0 images (train needs it): the source's own split was kept" in (
        done.stdout
    )
    assert "pass --resplit to split all 4 images by --split-ratios" in done.stdout

    again = ("data", "import", "src", "--format", "voc", "--resplit", "--split-ratios", "0.5,0.5,0")
    done = sh(BIN / "snackloc", *again, "--out", "other", cwd=tmp_path)
    assert "warning: val" not in done.stdout
    assert "warning: test has 0 images (evaluate needs it): --split-ratios gives test a share" in (
        done.stdout
    )


def test_another_format_says_what_the_source_holds(tmp_path):
    write_voc(tmp_path / "src", SPEC[:3])
    done = sh(BIN / "snackloc", "data", "import", "src", "-f", "coco", cwd=tmp_path, check=False)
    assert done.returncode == 2
    assert "no .json annotation file found" in done.stderr
    assert (
        "hint: --format coco reads .json files; src holds 3 .jpg, 3 .xml "
        "(--format voc|rectlabel|cvat); --format auto detects it" in done.stderr
    )


def test_tiny_splits_warn_only_in_a_large_import():
    assert split_warnings({"train": 5, "val": 1, "test": 1}, "stratified", (0.8, 0.1, 0.1)) == []
    (line,) = split_warnings({"train": 190, "val": 3, "test": 10}, "stratified", (0.9, 0.02, 0.08))
    assert line == (
        "val has 3 images (train needs it): a share of 0.02 of 203 images: raise it in "
        "--split-ratios"
    )


def test_training_without_val_images_names_the_missing_split(tmp_path):
    from pipeline.stages import train

    root = make_dataset(tmp_path / "data", {"train": [ann(f"t{i}") for i in range(3)]})
    outputs = Outputs(tmp_path / "outputs")
    write_validated(outputs.root, {"train": [ann(f"t{i}") for i in range(3)]})
    outputs.dedup_dir.mkdir(parents=True)
    for split in ("train", "val"):
        outputs.deduped(split).write_bytes(outputs.validated(split).read_bytes())
    outputs.classes.write_text(json.dumps({"classes": ["cake", "apple"]}))
    with pytest.raises(UserError) as failure:
        train.load_samples(make_params(root, classes=["cake", "apple"]), outputs)
    assert "no val images: " in failure.value.message and "annotations-val.csv has no rows" in (
        failure.value.message
    )
    assert failure.value.hint.startswith("make a val split: `snackloc data import SRC --resplit`")
