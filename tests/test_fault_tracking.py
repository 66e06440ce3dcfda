"""Fault injection: the MLflow tracking server dies or is unreachable while `train` runs.

Training goes on; the run is completed when the server answers again, or the stage fails
clearly at the end with the trained state kept, and a rerun logs it without training again.
Real `mlflow server` processes on 127.0.0.1, killed with SIGKILL; real training (tiny).
"""

from __future__ import annotations

import dataclasses
import json
import logging

import mlflow
import pandas as pd
import pytest
from helpers_env import free_port
from helpers_mlflow import MlflowServer
from helpers_tiny import NO_AUGMENT, TINY_MODEL
from PIL import Image

from pipeline.core.config import Params, TrainParams
from pipeline.core.paths import Outputs
from pipeline.integrations import tracking
from pipeline.model import hardware
from pipeline.model.callbacks import EpochMetricsLogger, read_history
from pipeline.stages import train

EPOCHS = 4
CLASSES = ["x", "y"]


def tiny_stage(root, monkeypatch) -> tuple[Params, Outputs]:
    """Params and the validate/dedup outputs `train` reads: 16 noise images, two classes."""
    import numpy as np

    root.mkdir(parents=True)
    monkeypatch.chdir(root)
    # Eager steps: tracing the graph of this tiny model costs more than training it.
    configure = hardware.configure
    monkeypatch.setattr(
        hardware, "configure", lambda t: dataclasses.replace(configure(t), run_eagerly=True)
    )
    rng = np.random.default_rng(0)
    for i in range(16):
        path = root / "data" / "train" / "x" / f"im{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    (root / "data" / "val").symlink_to(root / "data" / "train")
    outputs = Outputs(root / "outputs")
    outputs.validate_dir.mkdir(parents=True)
    outputs.classes.write_text(json.dumps({"classes": CLASSES}))
    frame = pd.DataFrame(
        {
            "image_id": [f"im{i}" for i in range(16)],
            **dict(zip(["x_min", "x_max", "y_min", "y_max"], [0.1, 0.6, 0.2, 0.7], strict=True)),
            "class_name": [CLASSES[i % 2] for i in range(16)],
            "folder": "x",
        }
    )
    outputs.dedup_dir.mkdir(parents=True)
    for split in ("train", "val"):
        frame.to_csv(outputs.deduped(split), index=False)
    params = Params(
        model=TINY_MODEL,
        train=TrainParams(epochs=EPOCHS, batch_size=8, augment=NO_AUGMENT, cache_images=False),
    )
    data = params.data.model_copy(update={"root": root / "data"})
    return params.model_copy(update={"data": data}), outputs


def logged_run(url: str, outputs: Outputs):
    """The run that train recorded, read straight from the server, and its epoch steps."""
    run_id = json.loads(outputs.mlflow_run.read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=url)
    steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    return client, client.get_run(run_id), sorted(steps)


@pytest.mark.slow  # ~1-2 min on a busy 2-core machine: a real server started twice
def test_server_killed_mid_training_then_back(tmp_path, monkeypatch, caplog):
    """SIGKILL the server after epoch 1, start it again after epoch 3: training never stops,
    warns once, and the run holds every epoch exactly once, params, tags and artifacts."""
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        params, outputs = tiny_stage(tmp_path / "project", monkeypatch)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        monkeypatch.setattr(tracking, "RETRY_INTERVAL", 0.0)  # try again every epoch
        real_end = EpochMetricsLogger.on_epoch_end

        def inject(self, epoch, logs=None):
            if epoch == 1:
                server.kill()  # the server dies before this epoch is logged
            if epoch == 3:
                server.start()  # and is back before the last epoch is logged
            real_end(self, epoch, logs)

        monkeypatch.setattr(EpochMetricsLogger, "on_epoch_end", inject)
        with caplog.at_level(logging.INFO, logger="pipeline"):
            metrics = train.run(params, outputs, progress=False)

        assert metrics["epochs"] == EPOCHS and outputs.model.is_file()
        messages = [r.getMessage() for r in caplog.records]
        assert sum("unreachable" in m and "training goes on" in m for m in messages) == 1
        assert any("reachable again" in m for m in messages)
        client, run, steps = logged_run(server.url, outputs)
        assert steps == list(range(EPOCHS))  # the epochs of the outage were sent later, once
        assert run.info.status == "FINISHED"
        assert run.data.params["train.epochs"] == str(EPOCHS)
        assert run.data.tags["snackloc.stage"] == "train"
        assert "train_seconds" in run.data.metrics
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "training")]
        assert artifacts == ["training/history.csv"]
        assert not (outputs.train_dir / "backup").exists()
    finally:
        server.kill()


@pytest.mark.slow  # ~1-2 min: two trainings, a server start, the bounded retries
def test_server_unreachable_fails_at_the_end_and_a_rerun_logs(tmp_path, monkeypatch, caplog):
    """Nothing listens on the tracking port: every epoch trains, then the stage fails with one
    clear message and keeps its backup; once a server listens, the rerun trains nothing and
    logs the complete run."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    params, outputs = tiny_stage(tmp_path / "project", monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setattr(tracking, "FIRST_DELAY", 0.1)

    with pytest.raises(tracking.TrackingUnavailable) as failure:
        train.run(params, outputs, progress=False)
    message = str(failure.value)
    assert f"MLflow tracking server {url} unreachable" in message
    assert "connection refused" in message and "trained state is kept" in message
    assert "run `snackloc train` (or `dvc repro`) again" in message
    backup = outputs.train_dir / "backup"
    assert len(read_history(backup / "history.jsonl")) == EPOCHS
    assert not outputs.mlflow_run.exists()  # evaluate cannot pick up a run that is not there

    server = MlflowServer(tmp_path / "mlflow", port=port).start()
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pipeline"):
            metrics = train.run(params, outputs, progress=False)
        assert metrics["epochs"] == EPOCHS
        messages = [r.getMessage() for r in caplog.records]
        assert any(m.startswith(f"resuming after epoch {EPOCHS} ") for m in messages)
        history = pd.read_csv(outputs.history)
        assert list(history.epoch) == list(range(1, EPOCHS + 1))
        _, run, steps = logged_run(url, outputs)
        assert steps == list(range(EPOCHS))
        assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == str(EPOCHS)
        assert run.data.metrics["val_loss"] == pytest.approx(history.val_loss.iloc[-1])
        assert not backup.exists()
    finally:
        server.kill()
