"""dvc.yaml lists, for every stage, exactly the project modules the stage runs, and every
params key it reads.

A module or a param a stage uses but does not list is a change DVC would not rerun the stage
for: cached outputs would silently go stale. The modules are computed from the imports of
``pipeline/stages/<name>.py``, the params from what its functions read of ``Params``
(pipeline/ops/stage_deps.py).
"""

from __future__ import annotations

import shutil

import yaml
from helpers_env import ROOT

from pipeline.ops import stage_deps
from pipeline.stages import NAMES, STAGES


def test_dvc_yaml_has_the_registered_stages_in_order_each_running_its_command():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert list(dvc["stages"]) == list(NAMES)
    for stage in STAGES:
        assert dvc["stages"][stage.name]["cmd"] == f"snackloc {stage.name}"
        assert (ROOT / "pipeline" / "stages" / f"{stage.name}.py").is_file()


def test_every_stage_lists_exactly_the_modules_it_runs():
    problems = stage_deps.differences(ROOT, ROOT / "dvc.yaml", NAMES)
    assert not problems, "\n".join([*problems, "fix: python -m pipeline.ops.stage_deps --write"])


def test_a_module_run_but_not_listed_or_listed_but_not_run_is_reported(tmp_path):
    dvc_file = tmp_path / "dvc.yaml"
    text = (ROOT / "dvc.yaml").read_text()
    train = text.index("  train:")
    config = text.index("      - pipeline/core/config.py\n", train)
    stale = text[:config] + text[config:].replace("      - pipeline/core/config.py\n", "", 1)
    stale = stale.replace(
        "      - pipeline/stages/dedup.py\n",
        "      - pipeline/stages/dedup.py\n      - pipeline/model/model.py\n",
        1,
    )
    dvc_file.write_text(stale)
    problems = stage_deps.differences(ROOT, dvc_file, NAMES)
    assert problems == [
        "dedup: lists but does not run pipeline/model/model.py",
        "train: runs but does not list pipeline/core/config.py",
    ]


def test_write_puts_back_the_computed_deps_and_keeps_everything_else(tmp_path):
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    dvc_file = tmp_path / "dvc.yaml"
    original = dvc_file.read_text()
    scrambled = original.replace("      - pipeline/core/config.py\n", "")
    dvc_file.write_text(scrambled)
    assert stage_deps.differences(ROOT, dvc_file, NAMES)
    assert stage_deps.rewrite(ROOT, dvc_file, NAMES)
    assert dvc_file.read_text() == original
    assert not stage_deps.rewrite(ROOT, dvc_file, NAMES)


def test_imports_inside_functions_and_packages_with_code_count(tmp_path):
    package = tmp_path / "pipeline"
    (package / "stages").mkdir(parents=True)
    (package / "__init__.py").write_text('"""Docstring only: runs nothing."""\n')
    (package / "stages" / "__init__.py").write_text("REGISTRY = {}\n")
    (package / "stages" / "one.py").write_text(
        "from pipeline import helper\n\n\ndef run():\n    from pipeline.lazy import thing\n"
    )
    (package / "helper.py").write_text("import numpy\n")
    (package / "lazy.py").write_text("thing = 1\n")
    (package / "unused.py").write_text("")
    assert stage_deps.code_deps(tmp_path, "pipeline.stages.one") == {
        "pipeline/stages/__init__.py",
        "pipeline/stages/one.py",
        "pipeline/helper.py",
        "pipeline/lazy.py",
    }


def test_every_stage_lists_the_params_it_reads():
    problems = stage_deps.missing_params(ROOT, ROOT / "dvc.yaml", NAMES)
    assert not problems, "\n".join([*problems, "fix: add them to the stage's params in dvc.yaml"])


def test_a_params_key_read_but_not_listed_is_reported(tmp_path):
    dvc_file = tmp_path / "dvc.yaml"
    text = (ROOT / "dvc.yaml").read_text()
    evaluate = text.index("  evaluate:")
    key = text.index("      - train.target\n", evaluate)
    dvc_file.write_text(text[:key] + text[key:].replace("      - train.target\n", "", 1))
    assert stage_deps.missing_params(ROOT, dvc_file, NAMES) == [
        "evaluate: reads but does not list params train.target"
    ]


def test_reads_through_a_section_alias_or_a_whole_section_are_found(tmp_path):
    stages = tmp_path / "pipeline" / "stages"
    stages.mkdir(parents=True)
    (stages / "demo.py").write_text(
        "def run(params: Params, outputs) -> None:\n"
        "    train = params.train\n"
        "    print(params.data.root, train.epochs, params.model_dump())\n"
        "    helper(params.dedup)\n"
    )
    dvc_file = tmp_path / "dvc.yaml"
    dvc_file.write_text("stages:\n  demo:\n    params:\n      - data.root\n      - train.seed\n")
    assert stage_deps.params_read(tmp_path, "demo", ["demo"]) == {
        "data.root",
        "train.epochs",
        "dedup",
    }
    assert stage_deps.missing_params(tmp_path, dvc_file, ["demo"]) == [
        "demo: reads but does not list params dedup, train.epochs"
    ]
