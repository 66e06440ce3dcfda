"""params.yaml is loaded into a typed config; mistakes name the key."""

from pathlib import Path

import pytest
import yaml
from helpers_env import ROOT

from pipeline.core.config import SNACK_CLASSES, DataParams, Params, load_params, resolve_classes
from pipeline.core.errors import UserError


def write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_project_params_load_and_match_the_documented_defaults():
    params = load_params(ROOT / "params.yaml")
    assert params == Params()
    assert params.validate_.max_bad_fraction == 0.15
    assert params.register_.model_name == "snackloc"


def test_misspelled_key_is_named(tmp_path):
    with pytest.raises(UserError) as err:
        load_params(write(tmp_path, {"train": {"epoch": 3}}))
    assert "train.epoch: unknown key (did you mean train.epochs?)" in str(err.value)
    with pytest.raises(UserError) as err:  # nested, and under an alias (register_)
        load_params(write(tmp_path, {"register": {"gate": {"margn": 0.1}}, "modle": {}}))
    assert "register.gate.margn: unknown key (did you mean register.gate.margin?)" in str(err.value)
    assert "modle: unknown key (did you mean model?)" in str(err.value)
    with pytest.raises(UserError) as err:  # nothing close: no guess
        load_params(write(tmp_path, {"train": {"zzz": 1}}))
    assert "train.zzz: unknown key (misspelled?)" in str(err.value)


def test_out_of_range_value_is_named_with_its_value(tmp_path):
    with pytest.raises(UserError) as err:
        load_params(write(tmp_path, {"train": {"epochs": -1}, "model": {"image_size": 100}}))
    message = str(err.value)
    assert "train.epochs" in message and "-1" in message
    assert "model.image_size" in message  # not a multiple of 32


def test_unknown_section_and_wrong_type(tmp_path):
    with pytest.raises(UserError) as err:
        load_params(write(tmp_path, {"trian": {}, "validate": {"max_bad_fraction": "lots"}}))
    assert "trian: unknown key" in str(err.value)
    assert "validate.max_bad_fraction" in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(bad)


def test_partial_file_keeps_defaults(tmp_path):
    params = load_params(write(tmp_path, {"train": {"epochs": 3}}))
    assert params.train.epochs == 3
    assert params.train.batch_size == Params().train.batch_size


def test_class_list_choices():
    assert resolve_classes(DataParams()) == list(SNACK_CLASSES)
    assert resolve_classes(DataParams(classes="auto"), ["b", "a", "b"]) == ["a", "b"]
    assert resolve_classes(DataParams(classes=["x", "y"])) == ["x", "y"]
    with pytest.raises(UserError):
        resolve_classes(DataParams(classes="auto"), [])


def test_duplicate_class_names_rejected(tmp_path):
    with pytest.raises(UserError, match=r"data\.classes"):
        load_params(write(tmp_path, {"data": {"classes": ["a", "a"]}}))
