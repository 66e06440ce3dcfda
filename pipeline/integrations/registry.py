"""The MLflow Model Registry as the source of truth for which model is in use.

Aliases: ``challenger`` marks the newest registered version, ``champion`` the one in use
(`snackloc predict` and serving load ``models:/<name>@champion``).

Every MLflow call about models goes through here: logging and registering a version,
loading one, reading and moving aliases, tags; the alias names are defined here too. Every
change writes its tags first and moves an alias last, so a failure part-way leaves the
previous champion in place. A version that becomes champion records the version it replaced
in its ``previous_champion`` tag; `snackloc rollback` (pipeline/ops/promotion.py) follows
that tag back (repeatedly, one step at a time), and a rollback does not rewrite it. Each
action (register, promote, rollback) is also a JSON record: one line of
``outputs/register/history.jsonl``.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError
from pipeline.integrations import tracking

CHAMPION = "champion"  # the version in use
CHALLENGER = "challenger"  # the newest registered version
PREVIOUS_TAG = "previous_champion"
MODEL_MD5_TAG = "model_md5"  # the registered model file, to register it only once
METRIC_PREFIX = "metric."


def connect(uri: str):
    """An MlflowClient whose tracking and registry both use ``uri``."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def earned_aliases(promote: bool) -> list[str]:
    """The aliases a newly registered version gets from the gate's decision ``promote``:
    always @challenger, and @champion when promoted."""
    return [CHALLENGER, CHAMPION] if promote else [CHALLENGER]


def earned_alias(promote: bool) -> str:
    """The highest alias the gate's decision ``promote`` earns (the ``gate.decision`` tag)."""
    return earned_aliases(promote)[-1]


def version_by_alias(client, name: str, alias: str):
    """The model version holding ``alias``, or None (no such alias or model yet).

    An unreachable server raises: taking it for "no champion" would promote blindly.
    """
    # Looked up in the registered model's alias map: asking the server for an alias that
    # does not exist (the champion of a first registration) answers 400 Bad Request.
    registered = registered_model(client, name)
    version = registered.aliases.get(alias) if registered else None
    return None if version is None else client.get_model_version(name, str(version))


def registered_model(client, name: str):
    """The registered model ``name``, or None: a search, which answers 200 either way."""
    found = client.search_registered_models(filter_string=f"name = '{name}'", max_results=1)
    return found[0] if found else None


def alias_versions(uri: str, name: str, aliases: Sequence[str]) -> dict[str, dict | None]:
    """For each alias: its version, data version and metric tags and run id (None if unset)."""
    client = connect(uri)
    found: dict[str, dict | None] = {}
    for alias in aliases:
        version = version_by_alias(client, name, alias)
        found[alias] = (
            None
            if version is None
            else {
                "version": str(version.version),
                "data_version": version.tags.get("data_version"),
                "metrics": tag_numbers(version.tags, METRIC_PREFIX),
                "run_id": version.run_id,
            }
        )
    return found


def log_model_version(
    experiment: str,
    train_run_id: str,
    name: str,
    model_file: Path,
    classes_file: Path,
    metadata: dict[str, Any],
    requirements: list[str],
) -> tuple[str, str]:
    """Log the trained ``model_file`` (``.keras``) and its ``classes_file`` (validate's
    classes.json) as a pyfunc model that answers images (pipeline/integrations/
    served_model.py) to the training run and register it as a new version of ``name``;
    return (version, run id)."""
    import mlflow

    from pipeline.integrations.served_model import CLASSES, KERAS, ImageModel

    with tracking.resumed_training_run(experiment, train_run_id, "register") as run:
        run_id = run.info.run_id
        with tracking.model_logging_run(run_id):
            # No signature: it takes encoded images or pixel arrays (served_model.py). The
            # class list is an artifact, not a model_config: MLflow would log that as params
            # of the training run, which has a "classes" param already.
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=ImageModel(),
                artifacts={KERAS: str(model_file), CLASSES: str(classes_file)},
                pip_requirements=requirements,
                metadata=metadata,
            )
    client = connect(tracking.tracking_uri())
    version = create_version(client, name, info, run_id)
    return version, run_id


def create_version(client, name: str, info, run_id: str) -> str:
    """Register the logged model ``info`` as a new version of ``name``; return the version.

    What ``registered_model_name=`` would do, without its create-and-catch of the registered
    model, which the server logs as a 400 Bad Request on every registration but the first.
    """
    if registered_model(client, name) is None:
        client.create_registered_model(name)
    # With model_id, the store also links the logged model's page to this version.
    version = client.create_model_version(
        name, source=info.model_uri, run_id=run_id, model_id=info.model_id
    )
    return str(version.version)


class ModelNotLoaded(UserError):
    """A model URI that names no loadable model (no such model, version or alias)."""


def load_version(uri: str) -> tuple[Any, dict[str, Any]]:
    """The Keras model at ``uri`` (``models:/name@alias``, ``models:/name/version``...) and
    the metadata it was logged with. An unreachable server raises as it is (retry it);
    anything else that stops the load is a ModelNotLoaded naming the first line of why."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.model import detect_decode  # noqa: F401  registers the detector's layers

    tracking.use_store(tracking.tracking_uri())
    try:
        info = mlflow.models.get_model_info(uri)
        if "tensorflow" in info.flavors:  # a version registered before the pyfunc model
            return mlflow.tensorflow.load_model(uri), info.metadata or {}
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().model, info.metadata or {}
    except (MlflowException, OSError) as exc:
        if tracking.is_transient(exc):
            raise
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise ModelNotLoaded(f"cannot load model {uri}: {reason}") from None


def log_export(uri: str, files: list[Path], metrics: dict[str, float]) -> str | None:
    """Attach exported files (under ``exports/``) and their check's ``metrics`` to the
    training run of the model at ``uri``; return the run id (None: the model has no run)."""
    import mlflow

    store = tracking.tracking_uri()
    tracking.use_store(store)  # for get_model_info; leaves MLFLOW_TRACKING_URI as it was
    run_id = mlflow.models.get_model_info(uri).run_id
    if run_id:
        client = connect(store)
        for path in files:
            if path.is_dir():  # a Core ML package is a folder
                client.log_artifacts(run_id, str(path), f"exports/{path.name}")
            else:
                client.log_artifact(run_id, str(path), "exports")
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
    return run_id


def version_of_run(client, name: str, run_id: str, model_md5: str) -> str | None:
    """The version already registered from ``run_id`` for this model file, or None.

    A version of the run without the md5 tag counts too: it was registered, but the
    answer (or the tagging) was lost, as when the server fails mid-call.
    """
    for version in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if version.tags.get(MODEL_MD5_TAG, model_md5) == model_md5:
            return str(version.version)
    return None


def get_version(client, name: str, version: str):
    """A model version; a clear UserError if it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise UserError(f"model {name!r} has no version {version!r}") from None


def tag_numbers(tags: dict[str, str], prefix: str) -> dict[str, float]:
    """Numeric tags under ``prefix`` (e.g. metric.corloc → corloc), as floats."""
    numbers = {}
    for key, value in tags.items():
        if key.startswith(prefix):
            try:
                numbers[key[len(prefix) :]] = float(value)
            except ValueError:
                continue
    return numbers


def set_tags(client, name: str, version: str, tags: dict[str, Any]) -> None:
    """Set several tags on one model version."""
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def set_alias(client, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` (moving it from the version that held it)."""
    client.set_registered_model_alias(name, alias, str(version))


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def user() -> str:
    """Who is acting, for the records."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def make_champion(
    client, name: str, version: str, tags: dict[str, Any], record_previous: bool = True
) -> str | None:
    """Make ``version`` the champion; return the version it replaced (or None).

    Tags first (with ``previous_champion`` unless ``record_previous`` is off, as for a
    rollback), then the alias: if anything fails, the old champion stays.
    """
    before = version_by_alias(client, name, CHAMPION)
    previous = str(before.version) if before is not None else None
    extra = dict(tags)
    if record_previous and previous is not None and previous != str(version):
        extra[PREVIOUS_TAG] = previous
    set_tags(client, name, version, extra)
    set_alias(client, name, CHAMPION, version)
    return previous


def action_record(
    action: str,
    name: str,
    version: str,
    champion_before: str | None,
    champion_after: str | None,
    reasons: list[str],
) -> dict[str, Any]:
    """The JSON record of one registry action (same keys for every action)."""
    return {
        "action": action,
        "time": now(),
        "user": user(),
        "model_name": name,
        "version": str(version),
        "champion_before": champion_before,
        "champion_after": champion_after,
        "reasons": reasons,
    }


def append_history(path: Path, record: dict[str, Any]) -> None:
    """Add one record to the JSON-lines history (append-only, one line per action)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
