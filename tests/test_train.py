"""Training phases, schedules, feature caching, backups and resuming (tiny model, CPU)."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pandas as pd
import pytest
from helpers_env import ROOT
from helpers_model import save_tiny_backbone
from helpers_tiny import NO_AUGMENT, TINY_MODEL
from helpers_train import EpochsSeen, Interrupt, tiny_datasets, tiny_setup, tiny_train_params

from pipeline.core.config import TrainParams, TransferParams, load_params
from pipeline.core.errors import UserError
from pipeline.model import fit as engine
from pipeline.model import hardware, recipe
from pipeline.model.callbacks import EpochMetricsLogger, read_history
from pipeline.model.model import backbone_of, build_model
from pipeline.model.recipe import Phase, learning_rate_for, plan_phases
from pipeline.stages import train
from pipeline.stages.train import open_backup


def test_phases_freeze_first_then_fine_tune():
    assert plan_phases(5, 0) == [Phase(0, 5, frozen=False)]
    assert plan_phases(5, 2) == [Phase(0, 2, frozen=True), Phase(2, 5, frozen=False)]
    assert plan_phases(5, 5) == [Phase(0, 5, frozen=True)]


def test_weight_averaging_window_fits_the_run():
    from pipeline.model.recipe import ema_momentum_for

    assert ema_momentum_for(0.99, 46 * 45) == 0.99  # the default run keeps its momentum
    short = ema_momentum_for(0.99, 200)  # a short run: window capped at 20 steps
    assert short == pytest.approx(0.95)
    assert short**200 < np.exp(-9.9)  # the random init is averaged away
    assert ema_momentum_for(0.99, 5) == 0.0  # too short to average at all
    assert ema_momentum_for(0.0, 10_000) == 0.0  # off stays off


def test_fine_tuning_divides_the_schedule_by_the_factor():
    pretrained = TINY_MODEL.model_copy(update={"weights": "backbone.weights.h5"})
    params = tiny_train_params(
        pretrained,
        epochs=6,
        learning_rate=1e-3,
        lr_schedule="step",
        lr_drop_epochs=[3, 5],
        transfer=TransferParams(head_epochs=2, fine_tune_lr_factor=0.1),
    )
    rates = [learning_rate_for(e, params) for e in range(6)]
    assert rates == pytest.approx([1e-3, 1e-3, 1e-5, 1e-5, 1e-6, 1e-6])
    no_heads_first = tiny_train_params(
        pretrained, **{**dict(params.train), "transfer": TransferParams(head_epochs=0)}
    )
    assert learning_rate_for(2, no_heads_first) == pytest.approx(1e-4)
    short = tiny_train_params(pretrained, epochs=3, transfer=TransferParams(head_epochs=10))
    assert recipe.head_epochs(short) == 3  # heads only, as the book trains
    assert "fine-tuning" not in recipe.describe_recipe(short)
    from_scratch = params.model_copy(update={"model": TINY_MODEL})  # the transfer recipe is off
    assert recipe.head_epochs(from_scratch) == 0
    assert learning_rate_for(2, from_scratch) == pytest.approx(1e-4)


def test_imagenet_and_a_weights_file_get_the_same_transfer_recipe():
    def described(weights: str) -> str:
        model = TINY_MODEL.model_copy(update={"weights": weights})
        return recipe.describe_recipe(tiny_train_params(model, epochs=45))

    file = described("/models/mobilenet_v2.h5")
    assert described("imagenet") == file.replace("/models/mobilenet_v2.h5", "imagenet")
    assert "10 epochs of heads on the frozen backbone, then fine-tuning" in file
    assert "BatchNorm frozen" in file
    assert described("none").startswith("from random init")


def test_feature_caching_needs_a_frozen_backbone_and_no_augmentation(tmp_path):
    heads_first = TransferParams(head_epochs=1)
    with pytest.raises(ValueError, match="cache_features needs a frozen backbone"):
        TrainParams(cache_features=True, transfer=heads_first)  # augmentation is on
    with pytest.raises(ValueError, match="cache_features"):
        TrainParams(cache_features=True, augment=NO_AUGMENT, transfer=TransferParams(head_epochs=0))
    TrainParams(cache_features=True, transfer=heads_first, augment=NO_AUGMENT)
    with pytest.raises(ValueError, match=r"needs pretrained model\.weights"):
        tiny_train_params(cache_features=True, transfer=heads_first)  # random init: nothing frozen
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  cache_features: true\n  transfer:\n    head_epochs: 1\n")
    with pytest.raises(UserError, match=r"train: .*augmentation off"):
        load_params(path)


def test_a_key_that_moved_is_named_with_its_new_place(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  freeze_backbone_epochs: 3\n")
    with pytest.raises(
        UserError, match=r"train.freeze_backbone_epochs: now train.transfer.head_epochs"
    ):
        load_params(path)


def test_book_settings_load_and_say_what_the_book_did():
    params = load_params(ROOT / "params-book.yaml")
    m, t = params.model, params.train
    assert (m.backbone, m.alpha, m.image_size, m.weights) == ("mobilenet", 1.0, 224, "imagenet")
    assert (t.target, t.box_loss, t.box_loss_weight, t.weight_decay) == ("rows", "mse", 10.0, 0.0)
    assert (t.learning_rate, t.lr_schedule, t.epochs, t.lr_drop_epochs) == (
        1e-3,
        "step",
        15,
        [6, 11],
    )


def test_frozen_on_cached_features_then_fine_tuned(tmp_path):
    """Frozen epochs leave the backbone (BatchNorm statistics included) as it was built."""

    class BackboneAtPhaseStart(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.snapshots: list[list[np.ndarray]] = []

        def on_train_begin(self, logs=None):
            if any(isinstance(layer, keras.Model) for layer in self.model.layers):
                self.snapshots.append(backbone_of(self.model).get_weights())

    train_ds, val_ds = tiny_datasets(tmp_path / "data")
    params = tiny_train_params(
        save_tiny_backbone(tmp_path / "pretrained"),
        epochs=2,
        transfer=TransferParams(head_epochs=1),
        cache_features=True,
    )
    setup = tiny_setup(params)
    probe = BackboneAtPhaseStart()
    result = engine.fit(params, 2, train_ds, val_ds, tmp_path / "b", setup, [probe], verbose=0)
    built = backbone_of(build_model(2, params.model)).get_weights()  # the file's weights
    (after_frozen,) = probe.snapshots  # phase 1 fits the heads model: no backbone in it
    assert all(np.array_equal(a, b) for a, b in zip(built, after_frozen, strict=True))
    final = backbone_of(result.model).get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(built, final, strict=True))
    assert backbone_of(result.model).trainable
    assert list(result.history.epoch) == [1, 2]
    rates = result.history.learning_rate.tolist()
    assert rates[1] == pytest.approx(learning_rate_for(1, params))


def test_interrupted_training_resumes_from_the_backup(tmp_path):
    train_ds, val_ds = tiny_datasets(tmp_path / "data")
    params = tiny_train_params(epochs=2)
    backup = tmp_path / "backup"
    setup = tiny_setup(params)
    with pytest.raises(KeyboardInterrupt):
        engine.fit(params, 2, train_ds, val_ds, backup, setup, callbacks=[Interrupt(0)], verbose=0)
    assert list(read_history(backup / "history.jsonl").epoch) == [1]

    seen = EpochsSeen()
    result = engine.fit(params, 2, train_ds, val_ds, backup, setup, callbacks=[seen], verbose=0)
    assert seen.epochs == [1]  # only the second epoch ran again
    assert result.epochs_run == 1
    assert list(result.history.epoch) == [1, 2]  # the history continues


def test_backup_of_other_params_is_discarded(tmp_path):
    backup = tmp_path / "backup"
    assert open_backup(backup, "aaa") is None
    (backup / "state.json").write_text('{"fingerprint": "aaa", "mlflow_run_id": "r1"}')
    (backup / "history.jsonl").write_text('{"epoch": 1}\n')
    assert open_backup(backup, "aaa") == "r1"  # same training: resume
    assert open_backup(backup, "bbb") is None  # other params or data: start afresh
    assert not (backup / "history.jsonl").exists()


def test_the_stage_resumes_in_the_same_mlflow_run(tmp_path, monkeypatch):
    """train.run interrupted after epoch 1, run again: same MLflow run, history 1..2."""
    import mlflow

    from pipeline.core.paths import Outputs
    from pipeline.integrations import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    configure = hardware.configure
    monkeypatch.setattr(
        hardware, "configure", lambda t: dataclasses.replace(configure(t), run_eagerly=True)
    )
    tiny_datasets(tmp_path / "data")  # writes the images
    outputs = Outputs(tmp_path / "outputs")
    (outputs.validate_dir).mkdir(parents=True)
    (outputs.classes).write_text('{"classes": ["x", "y"]}')
    frame = pd.DataFrame(
        {
            "image_id": [f"im{i}" for i in range(16)],
            **dict(zip(["x_min", "x_max", "y_min", "y_max"], [0.1, 0.6, 0.2, 0.7], strict=True)),
            "class_name": ["xy"[i % 2] for i in range(16)],
            "folder": "x",
        }
    )
    outputs.dedup_dir.mkdir(parents=True)
    for split in ("train", "val"):
        frame.to_csv(outputs.deduped(split), index=False)
    (tmp_path / "data" / "val").symlink_to(tmp_path / "data" / "train")
    params = tiny_train_params(epochs=2, cache_images=False)
    params = params.model_copy(
        update={"data": params.data.model_copy(update={"root": tmp_path / "data"})}
    )

    logger_end = EpochMetricsLogger.on_epoch_end

    def fail_after_first_epoch(self, epoch, logs=None):
        logger_end(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt("simulated interruption")

    with monkeypatch.context() as patch:
        patch.setattr(EpochMetricsLogger, "on_epoch_end", fail_after_first_epoch)
        with pytest.raises(KeyboardInterrupt):
            train.run(params, outputs, progress=False)
    first_run = read_history(outputs.train_backup / "history.jsonl")
    assert list(first_run.epoch) == [1]

    metrics = train.run(params, outputs, progress=False)
    assert metrics["epochs"] == 2
    assert list(pd.read_csv(outputs.history).epoch) == [1, 2]
    assert not (outputs.train_backup).exists()
    run_id = json.loads(outputs.mlflow_run.read_text())["run_id"]
    client = mlflow.MlflowClient(tracking.tracking_uri())  # the store the stage logged to
    steps = [m.step for m in client.get_metric_history(run_id, "val_class_accuracy")]
    assert steps == [0, 1]  # one MLflow run holds both epochs
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    # The runs list names the run by what it trained and shows its data: the data folder as
    # the run's dataset input, its digest the DVC hash (logged once across the resume).
    run = client.get_run(run_id)
    assert run.info.run_name == "mobilenet 0.25 32px 2 epochs"
    inputs = run.inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("data", "untracked")]
    assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context", "train")]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
