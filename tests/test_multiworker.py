"""Multi-worker training: TF_CONFIG, the per-replica data split, and two real workers (CPU)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers_env import ROOT
from helpers_project import tiny_params
from helpers_tiny import TINY
from helpers_train import tiny_datasets

from pipeline.core.config import Params, SynthParams, TrainParams, load_params
from pipeline.core.errors import UserError
from pipeline.model import hardware
from pipeline.ops import multiworker

TWO_WORKERS = {"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}}


def tf_config(value) -> dict[str, str]:
    return {"TF_CONFIG": value if isinstance(value, str) else json.dumps(value)}


def test_tf_config_of_a_worker_and_of_a_chief():
    second = hardware.read_tf_config(
        tf_config({**TWO_WORKERS, "task": {"type": "worker", "index": 1}})
    )
    assert (second.workers, second.rank, second.is_chief) == (
        ("127.0.0.1:2222", "127.0.0.1:2223"),
        1,
        False,
    )
    first = hardware.read_tf_config(
        tf_config({**TWO_WORKERS, "task": {"type": "worker", "index": 0}})
    )
    assert first.is_chief
    # With a "chief" task, it is rank 0 and worker 0 comes second (TensorFlow's order).
    cluster = {"chief": ["a:1"], "worker": ["b:2", "c:3"]}
    chief = hardware.read_tf_config(tf_config({"cluster": cluster, "task": {"type": "chief"}}))
    worker = hardware.read_tf_config(
        tf_config({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    )
    assert (chief.rank, chief.is_chief, worker.rank, worker.is_chief) == (0, True, 1, False)
    assert worker.workers == ("a:1", "b:2", "c:3")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "TF_CONFIG environment variable is not set"),
        ("{cluster: 1", "not valid JSON"),
        ({"task": {"type": "worker", "index": 0}}, 'needs a "cluster" and a "task"'),
        ({**TWO_WORKERS, "task": {"type": "worker", "index": 2}}, "task index 2 is not one of"),
        ({**TWO_WORKERS, "task": {"type": "worker", "index": "0"}}, "task index '0'"),
        ({**TWO_WORKERS, "task": {"type": "chief", "index": 0}}, "'chief' is not in its cluster"),
        (
            {"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker"}},
            'must be a list of "host:port"',
        ),
        (
            {"cluster": {**TWO_WORKERS["cluster"], "ps": ["h:1"]}, "task": {"type": "worker"}},
            "lists ['ps'] tasks",
        ),
    ],
)
def test_a_missing_or_wrong_tf_config_is_a_clear_user_error(value, message):
    with pytest.raises(UserError, match=r"train\.strategy is multi_worker") as error:
        hardware.read_tf_config(tf_config(value))
    assert message in str(error.value)
    assert "hint: set TF_CONFIG on every worker" in str(error.value)


def test_configure_refuses_multi_worker_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match="TF_CONFIG environment variable is not set"):
        hardware.configure(TrainParams(strategy="multi_worker"))


def test_the_launcher_gives_each_worker_the_cluster_and_its_index():
    ports = multiworker.free_ports(3)
    assert len(set(ports)) == 3
    tasks = [hardware.read_tf_config(tf_config(c)) for c in multiworker.tf_configs(ports)]
    assert [t.rank for t in tasks] == [0, 1, 2]
    assert {t.workers for t in tasks} == {tuple(f"127.0.0.1:{p}" for p in ports)}
    assert [t.is_chief for t in tasks] == [True, False, False]


def test_the_launcher_needs_the_multi_worker_strategy(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  strategy: auto\n")
    with pytest.raises(UserError, match=r"train\.strategy is 'auto', not multi_worker"):
        multiworker.start(2, path, tmp_path / "outputs", tmp_path / "logs")


def test_feature_caching_is_refused_with_multi_worker():
    no_augment = {"hflip": False, "crop_scale": (1.0, 1.0), "color_jitter": 0.0, "zoom_out": 1.0}
    with pytest.raises(ValueError, match="not supported with strategy multi_worker"):
        TrainParams(
            strategy="multi_worker",
            cache_features=True,
            transfer={"head_epochs": 1},
            augment=no_augment,
        )


@pytest.mark.parametrize("parts", [2, 3])
def test_the_replicas_parts_together_are_the_global_batch(tmp_path, parts):
    train_ds, _ = tiny_datasets(tmp_path / "data", n=19)  # batches of 8: 8, 8, 3
    train_ds.set_epoch(1)
    assert train_ds.batches_in_parts(parts) == 3  # the last batch (3 samples) splits in 2 or 3
    assert train_ds.batches_in_parts(4) == 2  # ... not in 4: no replica gets an empty batch
    for batch in range(3):
        whole_images, whole = train_ds[batch]
        split = [train_ds.part(batch, index, parts) for index in range(parts)]
        sizes = [len(labels["class"]) for _, labels in split]
        assert sum(sizes) == len(whole["class"]) and max(sizes) - min(sizes) <= 1
        np.testing.assert_array_equal(np.concatenate([x for x, _ in split]), whole_images)
        for key in ("class", "box"):
            np.testing.assert_array_equal(np.concatenate([y[key] for _, y in split]), whole[key])
    # An epoch other than the current one is drawn as set_epoch would draw it.
    earlier = train_ds.part(0, 0, parts, epoch=0)[1]["box"]
    train_ds.set_epoch(0)
    np.testing.assert_array_equal(earlier, train_ds.part(0, 0, parts)[1]["box"])


def prepare_project(root, params: dict) -> Params:
    """The tiny project's data (tests/helpers_project.py), validated and deduplicated."""
    from pipeline.core.paths import Outputs
    from pipeline.data import synth
    from pipeline.stages import dedup, validate

    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    synth.generate(root / "data", SynthParams(**TINY["synth"]), progress=False)
    loaded = load_params(root / "params.yaml")
    loaded = loaded.model_copy(
        update={"data": loaded.data.model_copy(update={"root": root / "data"})}
    )
    validate.run(loaded, Outputs(root / "outputs"), progress=False)
    dedup.run(loaded, Outputs(root / "outputs"), progress=False)
    return loaded


@pytest.mark.slow  # two TensorFlow processes tracing the model's graph: 2-5 min on 2 busy cores
def test_two_workers_train_one_model_and_only_the_chief_writes(tmp_path, monkeypatch):
    from pipeline.core.paths import Outputs
    from pipeline.stages.train import load_samples

    project = tmp_path / "project"
    project.mkdir()
    params = tiny_params()
    params["train"] |= {"strategy": "multi_worker", "epochs": 2}
    monkeypatch.chdir(project)  # data.root and the MLflow store are relative to the project
    loaded = prepare_project(project, params)
    _, train_samples, _ = load_samples(loaded, Outputs(project / "outputs"))
    before = {p for p in project.rglob("*") if p.is_file()}
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()

    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir)}
    command = [sys.executable, "-m", "pipeline.ops.multiworker", "--workers", "2"]
    done = subprocess.run(
        [*command, "--log-dir", str(tmp_path / "logs")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    worker_log = (tmp_path / "logs" / "worker-1.log").read_text()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + worker_log[-3000:]
    chief_log = done.stdout + done.stderr

    # The chief's model loads and predicts; its metrics are finite.
    train_dir = project / "outputs" / "train"
    model = keras.saving.load_model(train_dir / "model.keras", compile=False, safe_mode=True)
    size = TINY["model"]["image_size"]
    predicted = model.predict(np.zeros((1, size, size, 3), "float32"), verbose=0)
    assert predicted["box"].shape == (1, 4)
    metrics = json.loads((train_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float | int))
    assert list(pd.read_csv(train_dir / "history.csv").epoch) == [1, 2]

    # Only the chief wrote: the stage's outputs, its MLflow run, the lock; no worker backup
    # left, and the other worker's temporary save folder is gone.
    new = {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()} - {
        p.relative_to(project).as_posix() for p in before
    }
    stage = {f"outputs/train/{n}" for n in ("model.keras", "history.csv", "metrics.json")}
    stage.add("outputs/train/mlflow_run.json")
    others = {
        p for p in new - stage if not p.startswith(("mlartifacts/", "mlflow.db", ".snackloc/"))
    }
    assert stage <= new and not others, others
    assert not list(tmpdir.glob("snackloc-worker-*"))
    import mlflow

    run_id = json.loads((train_dir / "mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert run.data.tags["hardware.workers"] == "2"
    assert run.data.tags["hardware.replicas"] == "2"
    assert run.data.tags["hardware.strategy"] == "KerasMultiWorkerStrategy"

    # The global batch stays train.batch_size (8), split 4 + 4, so an epoch has the steps
    # of one worker: ceil(n / 8), less a last batch of one sample (no replica gets none).
    n = len(train_samples)
    steps = n // 8 + (n % 8 >= 2)
    assert steps == math.ceil(n / 8) or n % 8 == 1
    for log in (chief_log, worker_log):
        assert f"{steps}/{steps} - " in log  # Keras' per-epoch line: the steps it ran
        assert "worker done" in log
    assert f"global batch 8, {steps} steps an epoch" in chief_log
    assert "worker 1 of 2" in worker_log
