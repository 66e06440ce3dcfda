"""The settings a snackloc process restarts with (pipeline/core/startup.py), in real
subprocesses: tcmalloc where the host has it, a fixed hash seed for the stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.core import startup

PROBE = (
    "import json, os; from pipeline.core import startup; "
    "startup.restart({command!r}, {{'validate'}}); "
    "print(json.dumps([startup.allocator(), os.environ.get('PYTHONHASHSEED'), hash('snack')]))"
)


def probe(command: str, **env: str) -> list:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONHASHSEED", "LD_PRELOAD")}
    base = {k: v for k, v in base.items() if not k.startswith("SNACKLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(command=command)],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(startup.tcmalloc_library() is None, reason="no tcmalloc on this host")
def test_a_process_restarts_on_tcmalloc_once():
    allocator, _, _ = probe("train")
    assert allocator == "tcmalloc"


def test_glibc_on_request_is_tuned_instead():
    allocator, seed, _ = probe("train", SNACKLOC_ALLOCATOR="glibc")
    assert allocator == "glibc (tuned)"
    assert seed is None  # only the stages that must be reproducible fix the seed


def test_a_stage_hashes_strings_the_same_in_every_process():
    first, second = probe("validate"), probe("validate", SNACKLOC_ALLOCATOR="glibc")
    assert first[1] == second[1] == "0"
    assert first[2] == second[2]  # set order of strings, as Great Expectations iterates them


FIT_PROBE = """
import json, resource, statistics
import numpy as np, keras
from pipeline.core import startup
from pipeline.model.callbacks import KeepFreedMemory
startup.tune_glibc()

class Batches(keras.utils.PyDataset):  # a fresh 6 MB batch per step, as the loader makes
    def __len__(self):
        return 1000
    def __getitem__(self, i):
        return np.random.rand(32, 128, 128, 3).astype("float32"), np.zeros((32, 1), "float32")

class StepFaults(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.counts = []
    def on_train_batch_end(self, batch, logs=None):
        self.counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

model = keras.Sequential([keras.Input((128, 128, 3)), keras.layers.Conv2D(4, 3, strides=4),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)])
model.compile("sgd", "mse")
faults = {}
for name, callbacks in (("without", []), ("with", [KeepFreedMemory()])):
    model.fit(Batches(), epochs=1, steps_per_epoch=2, verbose=0, callbacks=callbacks)
    steps = StepFaults()
    model.fit(Batches(), epochs=1, steps_per_epoch=16, verbose=0, callbacks=[*callbacks, steps])
    # the median step: a heap that grows now and then faults once, not at every step
    faults[name] = statistics.median(np.diff(steps.counts).tolist())
print(json.dumps(faults))
"""


def test_training_on_glibc_keeps_freed_memory_after_the_data_pipeline_starts():
    """TensorFlow's generator dataset resets glibc's trim threshold when it first runs; the
    train stage's ``KeepFreedMemory`` tunes it again, so a step stops re-faulting its pages."""
    base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    done = subprocess.run(
        [sys.executable, "-c", FIT_PROBE],
        env={**base, startup.CHOICE: "glibc", "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        check=True,
    )
    faults = json.loads(done.stdout.strip().splitlines()[-1])
    assert faults["with"] < faults["without"] / 10, faults
