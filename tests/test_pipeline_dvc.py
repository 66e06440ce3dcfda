"""The real pipeline end to end: `dvc repro` in a temporary git repo, tiny synthetic data,
real MLflow sqlite store and registry; and the same stages as one Prefect flow run
(`snackloc pipeline`) against a real Prefect server."""

from __future__ import annotations

import hashlib
import json
import shutil

import pandas as pd
import pytest
import yaml
from helpers_project import make_project, sh

from pipeline.integrations import tracking
from pipeline.stages import NAMES as STAGES


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server):
    """A fresh project repo with tiny data, after one full `dvc repro`."""
    root = tmp_path_factory.mktemp("project")
    env = make_project(root, prefect_server)
    first = sh("dvc", "repro", cwd=root, env=env)
    return root, env, first.stdout + first.stderr


def test_every_stage_ran_and_wrote_its_outputs(project):
    root, _, log = project
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log
    # each stage is the plain function: no Prefect flow run, no temporary server
    assert "Flow run" not in log and "temporary server" not in log
    outputs = root / "outputs"
    for path in (
        "validate/quarantine.csv",
        "dedup/duplicates.csv",
        "train/model.keras",
        "train/history.csv",
        "evaluate/metrics.json",
        "register/record.json",
        "evaluate/plots/confusion_matrix.png",
        "evaluate/plots/gallery_worst.png",
        "evaluate/plots/training_curves.png",
        "evaluate/per_class.csv",
        "evaluate/summary.md",
    ):
        assert (outputs / path).is_file(), path
    history = pd.read_csv(outputs / "train/history.csv")
    assert list(history.epoch) == [1, 2]
    assert {"val_class_accuracy", "val_box_mean_iou"} <= set(history.columns)


def test_bad_rows_are_quarantined_with_reasons(project):
    root, _, _ = project
    manifest = json.loads((root / "data" / "defects.json").read_text())
    quarantine = pd.read_csv(root / "outputs/validate/quarantine.csv", dtype=str)
    assert len(quarantine) > 0 and quarantine.reasons.str.len().min() > 0
    quarantined = set(zip(quarantine.split, quarantine.row.astype(int), strict=True))
    for defect in manifest["defects"]:
        if defect["kind"] in {"missing_file", "box_inverted", "unknown_class", "path_traversal"}:
            for row in defect["rows"]:
                assert (defect["split"], row) in quarantined, defect


def test_metrics_are_shown_by_dvc(project):
    root, env, _ = project
    shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=root, env=env).stdout)
    files = next(iter(shown.values()))["data"]
    test_metrics = files["outputs/evaluate/metrics.json"]["data"]["test"]
    assert 0.0 <= test_metrics["accuracy"] <= 1.0
    assert 0.0 <= test_metrics["mean_iou"] <= 1.0
    assert files["outputs/validate/report.json"]["data"]["rows_quarantined"] > 0


def test_mlflow_run_and_registered_version(project):
    import mlflow

    root, _, _ = project
    client = mlflow.MlflowClient(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        registry_uri=f"sqlite:///{root / 'mlflow.db'}",
    )
    record = json.loads((root / "outputs/register/record.json").read_text())
    version = client.get_model_version_by_alias("snackloc", "challenger")
    assert str(version.version) == record["version"] == "1"
    assert version.tags["data_version"] != "untracked"
    run = client.get_run(version.run_id)
    assert run.data.params["train.epochs"] == "2"
    assert "test_accuracy" in run.data.metrics and "test_mean_iou" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "val_class_accuracy")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation/plots")}
    assert "evaluation/plots/confusion_matrix.png" in artifacts
    tracking.use_store(f"sqlite:///{root / 'mlflow.db'}")
    info = mlflow.models.get_model_info("models:/snackloc@challenger")
    # The pyfunc model that answers images (no signature: it takes images or pixel arrays).
    assert set(info.flavors) == {"python_function"} and info.signature is None
    assert (
        info.metadata["classes"]
        == json.loads((root / "outputs/validate/classes.json").read_text())["classes"]
    )


def test_second_repro_is_a_noop_and_a_param_reruns_only_its_stages(project):
    root, env, _ = project
    assert "up to date" in sh("dvc", "status", cwd=root, env=env).stdout
    again = sh("dvc", "repro", cwd=root, env=env).stdout
    assert "Running stage" not in again

    model_mtime = (root / "outputs/train/model.keras").stat().st_mtime_ns
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["gallery_images"] = 4  # read by evaluate alone
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(sh("dvc", "status", "--json", cwd=root, env=env).stdout)
    assert set(status) == {"evaluate"}
    rerun = sh("dvc", "repro", cwd=root, env=env).stdout
    assert "Running stage 'evaluate'" in rerun
    for stage in ("validate", "dedup", "train"):
        assert f"Running stage '{stage}'" not in rerun
    assert (root / "outputs/train/model.keras").stat().st_mtime_ns == model_mtime


def test_a_typo_in_dvc_exp_run_costs_no_training(project):
    """`dvc exp run -S +train.epoch=3`: DVC deletes the train outputs before the stage refuses
    the key; with the typo undone, `dvc repro` restores them instead of training again."""
    root, env, _ = project
    sh("dvc", "repro", cwd=root, env=env)
    outputs = root / "outputs" / "train"
    before = {name: (outputs / name).read_bytes() for name in ("metrics.json", "history.csv")}
    params = (root / "params.yaml").read_text()
    typo = sh("dvc", "exp", "run", "-S", "+train.epoch=3", cwd=root, env=env, check=False)
    assert typo.returncode != 0 and "train.epoch" in typo.stdout + typo.stderr

    (root / "params.yaml").write_text(params)
    restored = sh("dvc", "repro", cwd=root, env=env)
    assert "Running stage 'train'" not in restored.stdout, restored.stdout
    for name, content in before.items():
        assert (outputs / name).read_bytes() == content, name
    assert (outputs / "model.keras").is_file() and (outputs / "mlflow_run.json").is_file()


def _digests(folder):
    return {
        path.relative_to(folder).as_posix(): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "data_docs" not in path.parts  # the GX site embeds run times
    }


def test_a_prefect_run_shows_every_stage_as_a_task_running_the_same_code(
    project, tmp_path, prefect_server
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root, env, _ = project
    copy = tmp_path / "flow-project"
    shutil.copytree(
        root, copy, ignore=shutil.ignore_patterns("outputs", "mlflow.db", "mlartifacts")
    )
    sh("snackloc", "pipeline", "-q", cwd=copy, env=env)

    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_server}),
        get_client(sync_client=True) as client,
    ):
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["snackloc-pipeline"]))
        )
        run = max(runs, key=lambda r: r.created)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
    assert run.state.is_completed()
    tasks.sort(key=lambda task: task.start_time)
    assert [task.name for task in tasks] == list(STAGES)
    assert all(task.state.is_completed() for task in tasks)
    for stage in ("validate", "dedup"):  # no training involved: byte-identical outputs
        assert _digests(copy / "outputs" / stage) == _digests(root / "outputs" / stage), stage


def _out_hashes(lock: dict, stages: tuple[str, ...]) -> dict[str, str]:
    """Every output hash dvc.lock records for ``stages`` (folders: their .dir hash)."""
    return {out["path"]: out["md5"] for stage in stages for out in lock["stages"][stage]["outs"]}


@pytest.mark.slow  # a second project and three more stage runs: CI runs it (make test-all)
def test_data_stages_write_the_same_bytes_in_another_copy_of_the_project(
    project, tmp_path, prefect_server
):
    """validate and dedup are pure functions of the data and params: a second copy of the
    project (another folder, another process, another hash salt) records the same hashes,
    Data Docs included."""
    root, _, _ = project
    env = make_project(tmp_path, prefect_server)
    sh("dvc", "repro", "validate", "dedup", cwd=tmp_path, env=env)
    first = yaml.safe_load((root / "dvc.lock").read_text())
    second = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    stages = ("validate", "dedup")
    assert _out_hashes(second, stages) == _out_hashes(first, stages)
    assert "outputs/validate/data_docs" in _out_hashes(first, stages)


@pytest.mark.slow
def test_evaluate_again_with_the_same_model_writes_the_same_bytes(project):
    root, env, _ = project
    recorded = _out_hashes(yaml.safe_load((root / "dvc.lock").read_text()), ("evaluate",))
    sh("dvc", "repro", "--force", "--single-item", "evaluate", cwd=root, env=env)
    again = _out_hashes(yaml.safe_load((root / "dvc.lock").read_text()), ("evaluate",))
    assert again == recorded
