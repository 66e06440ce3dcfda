"""Stage "register": log the trained model to MLflow and register a new version.

The version carries a signature, an input example, the class list and lineage tags (git
commit, data version, params hash, metrics); it gets the alias ``challenger``.
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import Any

import numpy as np

from pipeline import tracking
from pipeline.config import Params
from pipeline.dataio import read_json, write_json
from pipeline.model import load_model
from pipeline.paths import Outputs

log = logging.getLogger(__name__)

CHALLENGER = "challenger"


def pip_requirements() -> list[str]:
    """Exact versions for serving; inferring them is slow and lists both TF builds."""
    return [f"{name}=={version(name)}" for name in ("tensorflow", "keras", "mlflow", "numpy")]


def input_example(size: int) -> np.ndarray:
    """A small deterministic image batch (one mid-grey image with a gradient)."""
    ramp = np.linspace(0, 255, size, dtype="float32")
    image = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.float32(128)), -1)
    return image[None].astype("float32")


def lineage_tags(params: Params, metrics: dict[str, Any]) -> dict[str, str]:
    """Tags that say where a version came from and how good it was."""
    split = params.evaluate.split
    dump = params.model_dump(mode="json", by_alias=True)
    tags = {
        "git_commit": tracking.git_commit(),
        "data_version": tracking.data_version(),
        "params_hash": tracking.params_hash(dump),
        "eval_split": split,
    }
    tags.update({f"metric.{k}": f"{v:.6g}" for k, v in metrics.get(split, {}).items()})
    return tags


def run(params: Params, outputs: Outputs, progress: bool = True) -> dict[str, Any]:
    """Log the model with signature and register it; write the registry record."""
    import mlflow
    from mlflow.models import infer_signature

    model = load_model(outputs.model)
    classes = read_json(outputs.classes)["classes"]
    metrics = read_json(outputs.eval_metrics)
    example = input_example(params.model.image_size)
    prediction = {k: np.asarray(v) for k, v in model.predict(example, verbose=0).items()}
    name = params.register_.model_name
    tags = lineage_tags(params, metrics)

    with tracking.resume_run(params, outputs, stage="register") as run:
        info = mlflow.tensorflow.log_model(
            model,
            name="model",
            signature=infer_signature(example, prediction),
            input_example=example,
            pip_requirements=pip_requirements(),
            metadata={"classes": classes, "image_size": params.model.image_size},
            registered_model_name=name,
        )
    client = mlflow.MlflowClient()
    model_version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, model_version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, model_version)

    record = {
        "model_name": name,
        "version": model_version,
        "alias": CHALLENGER,
        "model_uri": f"models:/{name}/{model_version}",
        "run_id": run.info.run_id,
        "tracking_uri": tracking.tracking_uri(),
        "tags": tags,
    }
    write_json(outputs.registry_record, record)
    log.info("registered %s version %s as @%s", name, model_version, CHALLENGER)
    return record
