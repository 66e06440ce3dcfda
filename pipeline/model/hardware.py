"""Seeds, determinism, precision, XLA and the distribution strategy for the devices at hand.

Each is a ``train`` param. With ``auto`` (the default), mixed precision (float16 compute,
float32 heads) and XLA (``jit_compile``) switch on only when a GPU is present: on this CPU
XLA made training 4-7x slower and bfloat16 brought nothing (docs/training.md). The strategy
``auto`` mirrors the model across GPUs when there are several; ``mirrored`` always does,
across all GPUs, or across the logical CPU devices when there is no GPU (that is how the
multi-replica path is tested on a CPU). ``multi_worker`` trains one model across processes
or hosts with ``MultiWorkerMirroredStrategy``: the cluster and this process's place in it come
from the ``TF_CONFIG`` environment variable, as TensorFlow defines it (``read_tf_config``;
docs/scaling.md, "Multi-worker training").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import keras
import tensorflow as tf

from pipeline.core import startup
from pipeline.core.config import TrainParams
from pipeline.core.errors import UserError

log = logging.getLogger(__name__)

TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a multi-worker cluster (from ``TF_CONFIG``)."""

    workers: tuple[str, ...]  # host:port of every training task, the chief first
    task_type: str  # "chief" or "worker"
    task_index: int
    rank: int  # 0 for the chief (the "chief" task, else worker 0), then 1, 2, ...

    @property
    def is_chief(self) -> bool:
        """The task that writes the outputs."""
        return self.rank == 0


def _tf_config_error(problem: str) -> UserError:
    return UserError(
        f"train.strategy is multi_worker but {problem}",
        hint=f"set TF_CONFIG on every worker, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' (this "
        "worker's index in task), or start local workers with `python -m pipeline.ops.multiworker "
        "--workers 2`",
    )


def read_tf_config(environ: Mapping[str, str] = os.environ) -> ClusterTask:
    """Parse and check ``TF_CONFIG``; raise UserError saying what is missing or wrong.

    Only "chief" and "worker" tasks train under MultiWorkerMirroredStrategy: a cluster with
    parameter servers ("ps") or an "evaluator" task is refused rather than half-used.
    """
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        raise _tf_config_error("the TF_CONFIG environment variable is not set")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _tf_config_error(f"TF_CONFIG is not valid JSON ({exc})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise _tf_config_error('TF_CONFIG needs a "cluster" and a "task" object')
    other = sorted(set(cluster) - {"chief", "worker"})
    if other:
        raise _tf_config_error(f"TF_CONFIG lists {other} tasks: only chief and worker train")
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(
            isinstance(a, str) and a.rpartition(":")[2].isdigit() and a.rpartition(":")[0]
            for a in addresses
        ):
            raise _tf_config_error(f'TF_CONFIG cluster "{kind}" must be a list of "host:port"')
    if len(cluster.get("chief", [])) > 1:
        raise _tf_config_error("TF_CONFIG lists more than one chief")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in cluster:
        raise _tf_config_error(f"TF_CONFIG task type {kind!r} is not in its cluster")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[kind]):
        raise _tf_config_error(
            f"TF_CONFIG task index {index!r} is not one of the {len(cluster[kind])} "
            f"{kind} addresses"
        )
    workers = (*cluster.get("chief", []), *cluster.get("worker", []))
    # TensorFlow's order (multi_worker_util.id_in_cluster): the chief, then the workers.
    rank = index + (len(cluster.get("chief", [])) if kind == "worker" else 0)
    return ClusterTask(workers, kind, index, rank)


class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose ``reduce`` accepts what Keras 3 passes it.

    Keras 3.15's TF trainer, in multi-worker mode, reduces a whole (x, y) batch structure at
    once (``_maybe_symbolic_build``) and per-replica scalars with ``axis=0``
    (``reduce_per_replica``): plain MultiWorkerMirroredStrategy fails on both (a
    ``PerReplica`` "with an unsupported type", then "Invalid reduction dimension 0"; the
    first is the error reported in ray-project/ray#47464, see also keras-team/keras#20585).
    Reducing leaf by leaf, scalars without an axis, is what those calls mean; every worker
    makes the same calls in the same order.
    """

    def reduce(self, reduce_op, value, axis=None):
        def one(leaf):
            if not isinstance(leaf, tf.distribute.DistributedValues):
                leaf = tf.convert_to_tensor(leaf)  # e.g. a metric returning its variable
            rank = self.experimental_local_results(leaf)[0].shape.rank
            return super(KerasMultiWorkerStrategy, self).reduce(
                reduce_op, leaf, axis if rank else None
            )

        return tf.nest.map_structure(one, value)


# One MultiWorkerMirroredStrategy per process: TensorFlow configures its collective ops
# once, at start-up; a second configure() in the same process reuses it.
_multi_worker: tuple[ClusterTask, KerasMultiWorkerStrategy] | None = None


def multi_worker_strategy(cluster: ClusterTask, gpus: int = 0) -> KerasMultiWorkerStrategy:
    """The process's MultiWorkerMirroredStrategy for ``cluster`` (created on first call).

    All-reduce with NCCL when the worker has GPUs (TensorFlow's advice for GPUs), else with
    TensorFlow's ring algorithm over gRPC (NCCL does not run on CPUs).
    """
    global _multi_worker
    if _multi_worker is not None:
        if _multi_worker[0] != cluster:
            raise UserError("TF_CONFIG changed after the multi-worker strategy was created")
        return _multi_worker[1]
    implementation = tf.distribute.experimental.CommunicationImplementation
    try:
        strategy = KerasMultiWorkerStrategy(
            cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver(),
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=implementation.NCCL if gpus else implementation.RING
            ),
        )
    except (RuntimeError, ValueError) as exc:
        raise UserError(
            f"cannot start the multi-worker strategy: {exc}",
            hint="it must be created before TensorFlow runs anything in the process: run "
            "the train stage in its own process (`snackloc train`, or python -m "
            "pipeline.ops.multiworker)",
        ) from None
    _multi_worker = (cluster, strategy)
    return strategy


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
    # Set with train.strategy multi_worker: this process's place in the cluster.
    cluster: ClusterTask | None = None

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def workers(self) -> int:
        return len(self.cluster.workers) if self.cluster else 1

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the outputs (always, unless multi-worker)."""
        return self.cluster is None or self.cluster.is_chief

    def describe(self) -> dict[str, str]:
        """One-line facts for logs and MLflow tags."""
        return {
            "hardware.gpus": str(self.gpus),
            "hardware.strategy": type(self.strategy).__name__,
            "hardware.replicas": str(self.replicas),
            "hardware.workers": str(self.workers),
            "hardware.precision": keras.mixed_precision.global_policy().name,
            "hardware.jit_compile": str(self.jit_compile),
            "hardware.allocator": startup.allocator(),
        }


def switch(value: str, gpu: bool) -> bool:
    """An auto|on|off param: "auto" means on exactly when a GPU is present."""
    return gpu if value == "auto" else value == "on"


def make_strategy(kind: str, gpus: int) -> tf.distribute.Strategy:
    """The tf.distribute strategy for ``train.strategy`` (auto | default | mirrored).

    ``multi_worker`` is made by ``configure`` (``multi_worker_strategy``): it needs the cluster.
    """
    if kind == "mirrored" or (kind == "auto" and gpus > 1):
        device_type = "GPU" if gpus else "CPU"
        devices = [device.name for device in tf.config.list_logical_devices(device_type)]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def configure(params: TrainParams) -> Setup:
    """Apply the seed, determinism, precision and strategy params; return what was chosen.

    Call before building the model: the precision policy applies to layers built after it.
    With ``multi_worker``, call it first thing in the process: the strategy is created here
    before any TensorFlow op runs (listing devices and memory growth only set configuration).
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised
            tf.config.experimental.set_memory_growth(gpu, True)
    cluster, strategy = None, None
    if params.strategy == "multi_worker":
        cluster = read_tf_config()
        strategy = multi_worker_strategy(cluster, len(gpus))
    keras.utils.set_random_seed(params.seed)
    if params.deterministic:
        tf.config.experimental.enable_op_determinism()
    mixed = switch(params.mixed_precision, bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    setup = Setup(
        strategy=strategy or make_strategy(params.strategy, len(gpus)),
        mixed_precision=mixed,
        jit_compile=switch(params.jit_compile, bool(gpus)),
        gpus=len(gpus),
        cluster=cluster,
    )
    log.info("hardware: %s", ", ".join(f"{k[9:]} {v}" for k, v in setup.describe().items()))
    return setup
