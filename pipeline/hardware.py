"""Pick the fastest safe settings for the hardware at hand.

On a GPU: memory growth, mixed precision (float16 compute, float32 heads) and, with several
GPUs, a MirroredStrategy. On a CPU: float32 and the default strategy. XLA is left to Keras'
``jit_compile="auto"``, which turns it on only where it helps (it made CPU training slower).
"""

from __future__ import annotations

import contextlib
import logging

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


def configure() -> tf.distribute.Strategy:
    """Configure TensorFlow for the visible devices and return the distribution strategy."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised
            tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    log.info(
        "devices: %d GPU(s), %s, precision %s",
        len(gpus),
        type(strategy).__name__,
        keras.mixed_precision.global_policy().name,
    )
    return strategy
