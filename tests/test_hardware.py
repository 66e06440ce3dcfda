"""Hardware switches: precision, XLA and the distribution strategy (CPU, two logical devices)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import pytest
from helpers_env import ROOT

from pipeline.core.config import TrainParams
from pipeline.model import hardware


@pytest.mark.parametrize(
    ("value", "gpu", "expected"),
    [("auto", False, False), ("auto", True, True), ("on", False, True), ("off", True, False)],
)
def test_auto_means_on_exactly_with_a_gpu(value, gpu, expected):
    assert hardware.switch(value, gpu) is expected


def test_cpu_defaults_keep_float32_no_xla_one_replica():
    setup = hardware.configure(TrainParams())  # the tests hide any GPU
    assert (setup.gpus, setup.mixed_precision, setup.jit_compile) == (0, False, False)
    assert setup.replicas == 1
    assert keras.mixed_precision.global_policy().name == "float32"
    try:
        forced = hardware.configure(TrainParams(mixed_precision="on", jit_compile="on"))
        assert forced.mixed_precision and forced.jit_compile
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


MIRRORED = textwrap.dedent("""
    import dataclasses, sys, tempfile
    from pathlib import Path
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    import keras
    from keras import ops
    sys.path.insert(0, "tests")
    from helpers_train import tiny_datasets, tiny_train_params
    from pipeline.model import hardware
    from pipeline.model import fit as engine
    from pipeline.model.model import BOX_LOSSES, build_model

    class RowsPerReplica(keras.metrics.Metric):
        # Summed over replicas: rows / calls = the batch one replica sees.
        def __init__(self, name="rows_per_replica"):
            super().__init__(name=name)
            self.rows = self.add_variable(shape=(), initializer="zeros", name="rows")
            self.calls = self.add_variable(shape=(), initializer="zeros", name="calls")

        def update_state(self, y_true, y_pred, sample_weight=None):
            self.rows.assign_add(ops.cast(ops.shape(y_true)[0], "float32"))
            self.calls.assign_add(1.0)

        def result(self):
            return self.rows / self.calls

    eager = sys.argv[1] == "eager"
    params = tiny_train_params(epochs=1, strategy="mirrored", deterministic=True)
    setup = dataclasses.replace(hardware.configure(params.train), run_eagerly=eager)
    print("replicas", setup.replicas, type(setup.strategy).__name__)
    tmp = Path(tempfile.mkdtemp())
    train_ds, val_ds = tiny_datasets(tmp / "data")  # 16 samples, global batch 8
    result = engine.fit(params, 2, train_ds, val_ds, tmp / "backup", setup, verbose=0)
    print("epochs", list(result.history.epoch))

    with setup.strategy.scope():
        model = build_model(2, params.model)
        model.compile(
            optimizer="adam",
            loss={"class": "sparse_categorical_crossentropy", "box": BOX_LOSSES["giou_l1"]},
            metrics={"box": [RowsPerReplica()]},
            run_eagerly=eager,
        )
    logs = model.fit(train_ds, epochs=1, verbose=0).history
    print("rows_per_replica", logs["box_rows_per_replica"][-1])
""")


@pytest.mark.parametrize(
    "mode", ["eager", pytest.param("graph", marks=pytest.mark.slow)]
)  # tracing the graph of each replica takes ~60 s on 2 busy cores; eager ~15 s
def test_mirrored_strategy_splits_the_global_batch_over_two_cpu_devices(mode):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "replicas 2 MirroredStrategy" in done.stdout
    assert "epochs [1]" in done.stdout
    assert "rows_per_replica 4.0" in done.stdout  # the global batch of 8, split in two
