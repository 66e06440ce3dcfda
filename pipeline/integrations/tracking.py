"""MLflow at the edge: where runs are stored and how stages find the training run.

By default runs go to a sqlite store ``mlflow.db`` and artifacts to ``mlartifacts/`` in the
project root (what `snackloc ui` opens). Set MLFLOW_TRACKING_URI to use a tracking server.

One API style: every call about experiments and runs goes through an ``MlflowClient`` of
``tracking_uri()`` with an explicit run id; a stage passes ``Params`` and the run id, and
``Params`` becomes a plain dict here (``params_dict``). MLflow's model functions
(``mlflow.<flavor>.log_model``, ``load_model``, ``models.get_model_info``) have no client
form: they read the process's store and log to its active run, so pipeline/integrations/
registry.py calls them through ``use_store`` and ``model_logging_run`` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core.config import Params
from pipeline.core.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_STORE = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
# MLflow 3's experiment type: a model-training experiment, not a GenAI one (traces, judges).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# The MLflow UI (3.x) shows every experiment in its GenAI view unless the page is asked for
# the model-training view: this query does.
TRAINING_VIEW = "workflowType=machine_learning"
# The params sections of a training run: logged as its params, hashed into its fingerprint.
TRAINING_SECTIONS = ("data", "model", "train")
# Files the pipeline itself rewrites (DVC's lock and pointers): not code changes.
DVC_WRITTEN = (":(top,exclude,glob)**/dvc.lock", ":(top,exclude,glob)**/*.dvc")


def local_store_uri(project: Path | None = None) -> str:
    """The project's own sqlite store of runs and registered models."""
    return f"sqlite:///{(Path(project or '.') / DEFAULT_STORE).resolve()}"


def local_artifacts_uri(project: Path | None = None) -> str:
    """The project's own artifact folder (beside the sqlite store), as a file URI."""
    return (Path(project or ".") / DEFAULT_ARTIFACTS).resolve().as_uri()


def tracking_uri(project: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else the sqlite store of ``project`` (default: here)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri(project)


def use_store(uri: str) -> None:
    """Point MLflow's model functions (see the module docstring) at ``uri``, for this
    process only.

    ``mlflow.set_tracking_uri`` also writes MLFLOW_TRACKING_URI into the environment, where
    ``tracking_uri`` would take it for the user's choice: every later project in this
    process (a scheduler retraining two projects, a test suite) and every stage subprocess
    would then use the first project's store. The variable is put back as it was.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def store_exists(project: Path | None = None) -> bool:
    """Whether there can be runs to read: a tracking URI is set or the local store exists."""
    local = Path(project or ".") / DEFAULT_STORE
    return bool(os.environ.get("MLFLOW_TRACKING_URI")) or local.exists()


def setup_experiment(name: str) -> str:
    """The id of experiment ``name`` in the store (created if new), typed as a
    model-training experiment."""
    uri = tracking_uri()
    client = _client()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return experiment.experiment_id
    # A local store keeps artifacts beside it; a server decides its own artifact root.
    location = local_artifacts_uri() if uri.startswith("sqlite") else None
    return client.create_experiment(
        name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
    )


def experiment_url(ui_url: str, name: str, uri: str | None = None) -> str:
    """Where the MLflow UI at ``ui_url`` shows experiment ``name``'s training runs (its list
    of experiments when the store holds no such experiment yet, or cannot be reached)."""
    import mlflow

    try:
        experiment = mlflow.MlflowClient(uri or tracking_uri()).get_experiment_by_name(name)
    except Exception as exc:
        if not is_transient(exc):
            raise
        experiment = None
    base = ui_url.rstrip("/")
    if experiment is None:
        return f"{base}/#/experiments?{TRAINING_VIEW}"
    return f"{base}/#/experiments/{experiment.experiment_id}/runs?{TRAINING_VIEW}"


def params_dict(params: Params) -> dict[str, Any]:
    """``params`` as MLflow takes them: plain JSON values under params.yaml's key names."""
    return params.model_dump(mode="json", by_alias=True)


def training_params(params: Params) -> dict[str, Any]:
    """The sections that make a training run: data, model and train (nested)."""
    dump = params_dict(params)
    return {k: dump[k] for k in TRAINING_SECTIONS}


def run_name(params: Params) -> str:
    """A training run's name in the runs list: what was trained, how long, on which data."""
    dump = training_params(params)
    model, train = dump["model"], dump["train"]
    weights = "" if model["weights"] == "none" else f" {Path(str(model['weights'])).stem}"
    return (
        f"{model['backbone']} {model['alpha']:g} {model['image_size']}px{weights} "
        f"{train['epochs']} epochs"
    )


def run_params(params: Params) -> dict[str, Any]:
    """The params a training run logs: the data, model and train sections, flattened."""
    return flatten(training_params(params))


def data_input(root: Path, version: str) -> Any:
    """The data folder as an MLflow dataset input of a run (the UI's Dataset column): named
    after the folder, its digest the DVC hash of data.dvc, used for training."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": it is a folder
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(root).resolve()))
    dataset = MetaDataset(source, name=Path(root).name, digest=version[:36])
    return DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, "train")])


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


def lineage(params: Params) -> dict[str, str]:
    """The lineage tags of a run or a model version: code, data and params."""
    return {
        "git_commit": git_commit(),
        "data_version": data_version(),
        "params_hash": params_hash(params_dict(params)),
    }


def git_commit() -> str:
    """The current git commit (with a '-dirty' suffix for uncommitted changes), or 'unknown'.

    Changes to dvc.lock and .dvc files do not count: the pipeline writes them itself while
    it runs (the data version is a tag of its own).
    """
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", *DVC_WRITTEN],
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


@contextlib.contextmanager
def resumed_training_run(experiment: str, run_id: str, stage: str) -> Iterator[Any]:
    """Re-open the training run ``run_id`` (the train stage's), to add a later stage's
    results; yields the run to log to (an MLflow ``Run``) and ends it (FAILED if the block
    raises).

    If that run is not in the current store (say, the train output came from a DVC cache
    filled elsewhere), a new run is started in ``experiment`` and tagged so the gap is
    visible in the UI.
    """
    from mlflow.exceptions import MlflowException

    client = _client()
    experiment_id = setup_experiment(experiment)
    try:
        run = client.get_run(run_id)
        client.update_run(run_id, status="RUNNING")
    except MlflowException as exc:
        if is_transient(exc):  # the server is away, not the run: let the caller retry
            raise
        run = client.create_run(experiment_id, tags={"snackloc.missing_train_run": run_id})
    client.set_tag(run.info.run_id, f"snackloc.{stage}", "done")
    try:
        yield run
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


@contextlib.contextmanager
def model_logging_run(run_id: str) -> Iterator[None]:
    """Make ``run_id`` the process's active MLflow run for the block: ``mlflow.<flavor>
    .log_model`` has no client form and puts the logged model in the active run's
    experiment (without one, in MLflow's Default experiment). Ends the run as
    ``resumed_training_run`` does."""
    import mlflow

    use_store(tracking_uri())
    with mlflow.start_run(run_id=run_id):
        yield


def log_to_training_run(
    experiment: str,
    run_id: str,
    stage: str,
    metrics: dict[str, float],
    artifacts: Sequence[tuple[Path, str]] = (),
) -> None:
    """Add a later stage's ``metrics`` and ``artifacts`` (path, artifact folder) to the
    training run ``run_id`` (``resumed_training_run``), retried while the tracking server is
    away."""

    def send() -> None:
        from mlflow.entities import Metric

        client = _client()
        with resumed_training_run(experiment, run_id, stage) as run:
            active, now = run.info.run_id, int(time.time() * 1000)
            # A model logged to the run (register's) gets these metrics too, in its page.
            logged = run.outputs.model_outputs if run.outputs else []
            models = [output.model_id for output in logged if output.step == 0] or [None]
            batch = [Metric(k, v, now, 0, model_id=m) for k, v in metrics.items() for m in models]
            client.log_batch(active, metrics=batch)
            for path, folder in artifacts:
                client.log_artifact(active, str(path), artifact_path=folder)

    retrying(f"log the {stage} results", send)


# --- A tracking server that is down or failing -------------------------------------------
# MLflow's own HTTP retries (MLFLOW_HTTP_REQUEST_*) are bounded in pipeline/core/env.py, so one
# call against a stopped server fails in ~3 s instead of ~4 min; the retries below add a
# short, visible backoff on top. Error codes of a server that is down, overloaded or
# failing; anything else (a missing model, a bad value) is not worth another try.
TRANSIENT_CODES = frozenset(
    {
        "INTERNAL_ERROR",
        "TEMPORARILY_UNAVAILABLE",
        "SERVICE_UNDER_MAINTENANCE",
        "DEADLINE_EXCEEDED",
        "REQUEST_LIMIT_EXCEEDED",
        "RESOURCE_EXHAUSTED",
    }
)
ATTEMPTS = 4  # tries of one operation before giving up
FIRST_DELAY = 1.0  # seconds before the second try, doubled each time (1, 2, 4)
RETRY_INTERVAL = 60.0  # seconds between tries while training goes on without the server


class TrackingUnavailable(UserError):
    """The tracking server could not be reached (or kept failing) after the retries."""


def is_transient(exc: BaseException) -> bool:
    """True for errors of an unreachable or failing tracking server (worth a retry)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code in TRANSIENT_CODES
    return isinstance(exc, requests.RequestException | ConnectionError | TimeoutError)


def short_reason(exc: BaseException) -> str:
    """The gist of a (long) MLflow connection error, for a one-line message."""
    text = str(exc)
    for needle, gist in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "unknown host"),
        ("timed out", "timed out"),
        ("Timeout", "timed out"),
        ("too many 5", "the server answers with errors"),
        ("Max retries exceeded", "no answer"),
    ):
        if needle in text:
            return gist
    return text.splitlines()[0][:160] if text else type(exc).__name__


def retrying(
    what: str, call: Callable[[], T], attempts: int | None = None, first_delay: float | None = None
) -> T:
    """Run ``call``; on a transient tracking error wait (exponential backoff) and try again.

    After ``attempts`` tries raise TrackingUnavailable naming the server and ``what`` was
    being done. Other errors propagate at once.
    """
    attempts = attempts or ATTEMPTS
    delay = FIRST_DELAY if first_delay is None else first_delay
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            reason = short_reason(exc)
            if attempt == attempts:
                raise TrackingUnavailable(
                    f"MLflow tracking server {tracking_uri()} unreachable: could not {what} "
                    f"({reason}; {attempts} tries in {time.monotonic() - started:.0f} s)",
                    hint="start the server or fix MLFLOW_TRACKING_URI, then run the stage again",
                ) from None
            log.warning(
                "MLflow: could not %s (%s); try %d of %d in %.0f s",
                what,
                reason,
                attempt + 1,
                attempts,
                delay,
            )
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # the loop returns or raises


class TrainingRun:
    """The training stage's MLflow run, kept going through tracking-server outages.

    Training never stops for the tracking server. A call that fails because the server is
    unreachable or failing logs one warning; params and tags are then kept in memory, and
    the per-epoch metrics stay in the backup's history file (which is written every epoch
    anyway). While the server is away a call is tried again at most every
    ``retry_interval`` seconds. ``finish`` sends whatever is missing, with retries, and ends
    the run; if the server is still unreachable then, it raises TrackingUnavailable: the
    stage fails at the end, with the trained state kept for a rerun.
    """

    def __init__(
        self,
        experiment: str,
        resume_id: str | None,
        remember: Callable[[str | None], None] = lambda run_id: None,
        retry_interval: float | None = None,
    ) -> None:
        self.experiment = experiment
        self.run_id = resume_id
        self.experiment_id: str | None = None
        self.remember = remember  # called with the run id as soon as it is known
        self.retry_interval = RETRY_INTERVAL if retry_interval is None else retry_interval
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.name: str | None = None  # pending until sent, like params and tags
        self.dataset: Any = None
        self.online = True
        self._opened = False  # the run exists (created or reopened) in this process
        self._last_failure = -math.inf
        self._client = None

    # -- calls during training: never raise for an unreachable server --
    def start(self) -> str | None:
        """Open the run (the interrupted one when resuming, else a new one) if possible."""
        self._attempt("start the run", lambda: None)
        self.remember(self.run_id)
        return self.run_id

    def log_inputs(
        self,
        params: dict[str, Any],
        tags: dict[str, Any],
        name: str | None = None,
        dataset: Any = None,
    ) -> None:
        """Params and tags of the run, its ``name`` and its input ``dataset`` (a
        ``DatasetInput``, see ``data_input``): sent now if possible, else at ``finish``."""
        self.params.update({k: str(v) for k, v in params.items()})
        self.tags.update({k: str(v) for k, v in tags.items()})
        self.name = name or self.name
        self.dataset = dataset or self.dataset
        self._attempt("log params and tags", lambda: None)

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        """One epoch's metrics (at ``finish`` from the history file if the server is away)."""
        self._attempt(f"log epoch {step + 1}", lambda: self._log_metrics(metrics, step))

    def end_failed(self) -> None:
        """Mark the run FAILED if the server answers (training crashed or was stopped)."""
        if self._opened and self.online:
            with contextlib.suppress(Exception):
                self._client.set_terminated(self.run_id, "FAILED")

    # -- the end of training: retried, then a clear failure --
    def finish(
        self,
        history: list[dict[str, float]],
        metrics: dict[str, float],
        artifacts: Sequence[tuple[Path, str]] = (),
    ) -> str:
        """Send what is missing (params, tags, epochs of ``history``), final ``metrics`` and
        ``artifacts`` (path, artifact folder); end the run. Returns the run id."""

        def send() -> None:
            self._ensure_run()
            self._sync_history(history)
            self._log_metrics(metrics, 0)
            for path, folder in artifacts:
                self._client.log_artifact(self.run_id, str(path), artifact_path=folder)
            self._client.set_terminated(self.run_id, "FINISHED")

        was_offline = not self.online
        retrying("log the training run", send)
        if was_offline:
            log.info("MLflow: run %s is complete (logged after the outage)", self.run_id)
        return self.run_id

    # -- internals --
    def _attempt(self, what: str, call: Callable[[], None]) -> None:
        """Run ``call`` after making sure the run is open; on a transient error go offline.

        While offline, nothing is tried until ``retry_interval`` has passed.
        """
        if not self.online and time.monotonic() - self._last_failure < self.retry_interval:
            return
        try:
            self._ensure_run()
            call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._last_failure = time.monotonic()
            if self.online:
                log.warning(
                    "MLflow tracking server %s unreachable (%s) while trying to %s: training "
                    "goes on; the run is logged at the end of training",
                    tracking_uri(),
                    short_reason(exc),
                    what,
                )
            self.online = False
        else:
            if not self.online:
                log.info("MLflow tracking server %s is reachable again", tracking_uri())
            self.online = True

    def _ensure_run(self) -> None:
        """Create or reopen the run, and send pending params and tags (idempotent)."""
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        if self._client is None:
            self._client = _client()
        if not self._opened:
            experiment_id = setup_experiment(self.experiment)
            if self.run_id:
                try:
                    self._client.update_run(self.run_id, status="RUNNING")
                    experiment_id = self._client.get_run(self.run_id).info.experiment_id
                except MlflowException as exc:
                    if is_transient(exc):
                        raise
                    log.warning("cannot resume MLflow run %s (%s): new run", self.run_id, exc)
                    self.run_id = None
            if not self.run_id:
                self.run_id = self._client.create_run(experiment_id).info.run_id
                self.remember(self.run_id)
            self.experiment_id = experiment_id
            self._opened = True
        if self.params or self.tags:
            params = [Param(k, v) for k, v in self.params.items()]
            tags = [RunTag(k, v) for k, v in self.tags.items()]
            self._client.log_batch(self.run_id, params=params, tags=tags)
            self.params, self.tags = {}, {}
        if self.name:
            self._client.update_run(self.run_id, name=self.name)
            self.name = None
        if self.dataset is not None:
            self._client.log_inputs(self.run_id, datasets=[self.dataset])
            self.dataset = None

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))
        ]
        for start in range(0, len(batch), 1000):  # MLflow's limit per batch
            self._client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def _sync_history(self, history: list[dict[str, float]]) -> None:
        """Log the epochs of ``history`` (rows with 1-based "epoch") the run does not hold."""
        logged = {m.step for m in self._client.get_metric_history(self.run_id, "loss")}
        for row in history:
            step = int(row["epoch"]) - 1
            if step not in logged:
                self._log_metrics({k: v for k, v in row.items() if k != "epoch"}, step)


def _client():
    """An MlflowClient of the current tracking URI."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri())
