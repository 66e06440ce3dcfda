"""Seeds, determinism, precision, XLA and the distribution strategy for the devices at hand.

Each is a ``train`` param. With ``auto`` (the default), mixed precision (float16 compute,
float32 heads) and XLA (``jit_compile``) switch on only when a GPU is present: on this CPU
XLA made training 4-7x slower and bfloat16 brought nothing (docs/training.md). The strategy
``auto`` mirrors the model across GPUs when there are several; ``mirrored`` always does,
across all GPUs, or across the logical CPU devices when there is no GPU (that is how the
multi-replica path is tested on a CPU).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import keras
import tensorflow as tf

from pipeline.config import TrainParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setup:
    """What ``configure`` chose; train.py builds and compiles the model with it."""

    strategy: tf.distribute.Strategy
    mixed_precision: bool
    jit_compile: bool
    gpus: int
    # Step by step in Python, no graph tracing: for debugging, and for tiny test models whose
    # graph takes longer to trace than to train.
    run_eagerly: bool = False

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def describe(self) -> dict[str, str]:
        """One-line facts for logs and MLflow tags."""
        return {
            "hardware.gpus": str(self.gpus),
            "hardware.strategy": type(self.strategy).__name__,
            "hardware.replicas": str(self.replicas),
            "hardware.precision": keras.mixed_precision.global_policy().name,
            "hardware.jit_compile": str(self.jit_compile),
        }


def switch(value: str, gpu: bool) -> bool:
    """An auto|on|off param: "auto" means on exactly when a GPU is present."""
    return gpu if value == "auto" else value == "on"


def make_strategy(kind: str, gpus: int) -> tf.distribute.Strategy:
    """The tf.distribute strategy for ``train.strategy`` (auto | default | mirrored)."""
    if kind == "mirrored" or (kind == "auto" and gpus > 1):
        device_type = "GPU" if gpus else "CPU"
        devices = [device.name for device in tf.config.list_logical_devices(device_type)]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def configure(params: TrainParams) -> Setup:
    """Apply the seed, determinism, precision and strategy params; return what was chosen.

    Call before building the model: the precision policy applies to layers built after it.
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised
            tf.config.experimental.set_memory_growth(gpu, True)
    keras.utils.set_random_seed(params.seed)
    if params.deterministic:
        tf.config.experimental.enable_op_determinism()
    mixed = switch(params.mixed_precision, bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    setup = Setup(
        strategy=make_strategy(params.strategy, len(gpus)),
        mixed_precision=mixed,
        jit_compile=switch(params.jit_compile, bool(gpus)),
        gpus=len(gpus),
    )
    log.info("hardware: %s", ", ".join(f"{k[9:]} {v}" for k, v in setup.describe().items()))
    return setup
