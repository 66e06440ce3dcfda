"""MLflow at the edge: where runs are stored and how stages find the training run.

By default runs go to a sqlite store ``mlflow.db`` and artifacts to ``mlartifacts/`` in the
project root (what `snackloc ui` opens). Set MLFLOW_TRACKING_URI to use a tracking server.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

DEFAULT_STORE = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the project's sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_STORE).resolve()}"


def setup_experiment(name: str) -> str:
    """Point MLflow at the store and return the id of experiment ``name`` (created if new)."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A local store keeps artifacts beside it; a server decides its own artifact root.
    location = Path(DEFAULT_ARTIFACTS).resolve().as_uri() if uri.startswith("sqlite") else None
    return mlflow.create_experiment(name, artifact_location=location)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}: MLflow params and tags are flat."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def params_hash(params_dump: dict[str, Any]) -> str:
    """A short stable hash of the parameters, for lineage tags."""
    blob = json.dumps(params_dump, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def git_commit() -> str:
    """The current git commit (with a '-dirty' suffix for uncommitted changes), or 'unknown'."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty.strip() else head


def data_version(dvc_file: Path = Path("data.dvc")) -> str:
    """The md5 of the data folder as pinned by data.dvc, or 'untracked'."""
    import yaml

    try:
        outs = yaml.safe_load(dvc_file.read_text())["outs"]
        return str(outs[0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return "untracked"


class resume_run:
    """Re-open the training run recorded by the train stage, to add a later stage's results.

    If that run is not in the current store (say, the train output came from a DVC cache
    filled elsewhere), a new run is started and tagged so the gap is visible in the UI.
    """

    def __init__(self, params, outputs, stage: str) -> None:
        self.params, self.outputs, self.stage = params, outputs, stage
        self._ctx = None

    def __enter__(self):
        import mlflow
        from mlflow.exceptions import MlflowException

        from pipeline.dataio import read_json

        experiment_id = setup_experiment(self.params.mlflow.experiment)
        run_id = read_json(self.outputs.mlflow_run)["run_id"]
        try:
            mlflow.get_run(run_id)
            self._ctx = mlflow.start_run(run_id=run_id)
        except MlflowException:
            self._ctx = mlflow.start_run(experiment_id=experiment_id)
            mlflow.set_tags({"snackloc.missing_train_run": run_id})
        run = self._ctx.__enter__()
        mlflow.set_tag(f"snackloc.{self.stage}", "done")
        return run

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
