"""Stage "register": log the trained model to MLflow, register a version and run the gate.

The version carries a signature, an input example, the class list and image size (model
metadata), lineage tags (git commit, data version, params hash), its metrics on the
evaluation split, and the gate's decision with its reasons. It always gets the alias
``challenger``; it gets ``champion`` only when pipeline/evaluation/gate.py decides to promote
it (the aliases are named in pipeline/integrations/registry.py). A model file is
registered once per training run (tag ``model_md5``): when the stage reruns for the same
model (new gate params, a retry after a lost answer), that version is reused and decided
again; if it is already the champion, it stays.

Comparing with the champion on the same test split: each version is tagged with the
fingerprint of the split it was scored on (pipeline/stages/evaluate.py). When the champion's
fingerprint matches, its tagged metrics are compared. When it does not (the test data
changed, or ``evaluate.split`` did), the champion is re-scored here on the current split, so
both numbers come from the same images; if that is impossible (it predicts other classes or
cannot be loaded), the candidate is not promoted and the reason says why.
"""

from __future__ import annotations

import hashlib
import logging
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pipeline.core.config import Params
from pipeline.core.files import read_json, write_json
from pipeline.core.paths import Outputs
from pipeline.evaluation import gate
from pipeline.integrations import registry, tracking
from pipeline.model.model import input_size, load_model

log = logging.getLogger(__name__)


def pip_requirements() -> list[str]:
    """Exact versions for serving; inferring them is slow and lists both TF builds."""
    return [f"{name}=={version(name)}" for name in ("tensorflow", "keras", "mlflow", "numpy")]


def lineage_tags(params: Params, metrics: dict[str, Any], fingerprint: str) -> dict[str, str]:
    """Tags that say where a version came from and how good it was."""
    split = params.evaluate.split
    tags = {
        **tracking.lineage(params),
        "eval_split": split,
        "eval_fingerprint": fingerprint,
    }
    prefix = registry.METRIC_PREFIX
    tags.update({f"{prefix}{k}": f"{v:.6g}" for k, v in metrics.get(split, {}).items()})
    return tags


def decision_tags(decision: gate.Decision) -> dict[str, str]:
    """The gate's verdict as version tags."""
    return {
        "gate.decision": registry.earned_alias(decision.promote),
        "gate.metric": decision.metric,
        "gate.reasons": "; ".join(decision.reasons),
        "gate.champion_version": decision.champion_version or "none",
    }


def model_md5(path: Path) -> str:
    """The md5 of the model file (as DVC records it in dvc.lock)."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "md5").hexdigest()


def log_and_register(client, model, params: Params, outputs: Outputs, classes: list[str], md5: str):
    """Log the model (a pyfunc model that answers images) to the training run and register
    it as a new version.

    A model already registered from the same run and file is not registered again (the
    stage rerun for new gate params, or a retry after a lost answer): its version is reused.
    """
    name = params.register_.model_name
    run_id = read_json(outputs.mlflow_run)["run_id"]
    existing = registry.version_of_run(client, name, run_id, md5)
    if existing is not None:
        log.info("%s v%s already holds this model (run %s): reused", name, existing, run_id)
        registry.set_tags(client, name, existing, {registry.MODEL_MD5_TAG: md5})
        return existing, run_id
    size = input_size(model)
    number, run_id = registry.log_model_version(
        params.mlflow.experiment,
        run_id,
        name,
        outputs.model,
        outputs.classes,
        metadata={"classes": classes, "image_size": size},
        requirements=pip_requirements(),
    )
    registry.set_tags(client, name, number, {registry.MODEL_MD5_TAG: md5})
    return number, run_id


def rescore(params: Params, outputs: Outputs, name: str, number: str, classes: list[str]):
    """The champion's metrics on the current evaluation split (None, why) if impossible."""
    from pipeline.stages import evaluate

    try:
        model, meta = registry.load_version(f"models:/{name}/{number}")
        if meta.get("classes") != classes:
            return None, "it predicts a different class list"
        rows, samples = evaluate.load_split(params, outputs, params.evaluate.split, classes)
        size, batch = input_size(model), params.evaluate.batch_size
        metrics = evaluate.evaluate_split(model, samples, rows, classes, size, batch).metrics
    except Exception as exc:  # any failure means "not comparable", never a crash of the stage
        if tracking.is_transient(exc):
            raise  # the server is away: retried by run(), not a verdict on the champion
        log.warning("could not re-score champion v%s: %s", number, exc)
        return None, f"re-scoring failed: {exc}"
    return metrics, "re-scored on the current split"


def champion_for_gate(
    client, params: Params, outputs: Outputs, classes: list[str], fingerprint: str
) -> gate.Champion | None:
    """The current champion with metrics comparable to the candidate's (see module doc)."""
    name = params.register_.model_name
    current = registry.version_by_alias(client, name, registry.CHAMPION)
    if current is None:
        return None
    same_split = current.tags.get("eval_split") == params.evaluate.split
    if same_split and current.tags.get("eval_fingerprint") == fingerprint:
        metrics = registry.tag_numbers(current.tags, registry.METRIC_PREFIX)
        return gate.Champion(str(current.version), metrics, "same test split")
    metrics, note = rescore(params, outputs, name, str(current.version), classes)
    return gate.Champion(str(current.version), metrics, f"other test data; {note}")


def apply_decision(client, name: str, number: str, tags: dict, decision: gate.Decision) -> None:
    """Tags first, aliases last: a failure before the end leaves the old champion in place."""
    registry.set_tags(client, name, number, tags)
    registry.set_alias(client, name, registry.CHALLENGER, number)
    if decision.promote and decision.champion_version != number:
        promoted = {"promoted_at": registry.now(), "promoted_by": "gate"}
        registry.make_champion(client, name, number, promoted)


def run(params: Params, outputs: Outputs, progress: bool = True) -> dict[str, Any]:
    """Register the model, decide champion vs challenger, write the registry record."""
    model = load_model(outputs.model)
    classes = read_json(outputs.classes)["classes"]
    metrics = read_json(outputs.eval_metrics)
    fingerprint = read_json(outputs.eval_splits)[params.evaluate.split]["fingerprint"]
    name = params.register_.model_name

    # Each step is retried with backoff while the tracking server is unreachable, then the
    # stage fails with one clear message; the aliases move last, so @champion is unchanged.
    md5 = model_md5(outputs.model)
    client = registry.connect(tracking.tracking_uri())
    number, run_id = tracking.retrying(
        "log and register the model",
        lambda: log_and_register(client, model, params, outputs, classes, md5),
    )
    champion = tracking.retrying(
        "read the champion",
        lambda: champion_for_gate(client, params, outputs, classes, fingerprint),
    )
    decision = decide(params, metrics, champion, number)
    tags = {**lineage_tags(params, metrics, fingerprint), **decision_tags(decision)}
    tracking.retrying(
        f"tag v{number} and move the aliases",
        lambda: apply_decision(client, name, number, tags, decision),
    )
    record = registry_record(name, number, run_id, champion, decision, tags)
    write_json(outputs.registry_record, record)
    registry.append_history(outputs.registry_history, record)
    alias = registry.earned_alias(decision.promote)
    log.info("registered %s v%s as @%s: %s", name, number, alias, decision.reasons)
    return record


def decide(
    params: Params, metrics: dict[str, Any], champion: gate.Champion | None, number: str
) -> gate.Decision:
    """The gate's decision on version ``number``, scored by ``metrics`` (evaluate's)."""
    split = params.evaluate.split
    rules = gate.for_task(params.register_.gate, params.model.task)
    if champion is not None and champion.version == number:
        return gate.already_champion(number, metrics[split], rules)
    return gate.decide(
        metrics[split],
        metrics.get(f"{split}_baseline"),
        champion,
        rules,
        params.evaluate.baseline_margin,
    )


def registry_record(
    name: str,
    number: str,
    run_id: str,
    champion: gate.Champion | None,
    decision: gate.Decision,
    tags: dict[str, str],
) -> dict[str, Any]:
    """The register stage's record: the action, the aliases, the decision and the tags."""
    before = champion.version if champion else None
    aliases = registry.earned_aliases(decision.promote)
    record = registry.action_record(
        "register", name, number, before, number if decision.promote else before, decision.reasons
    )
    return record | {
        "aliases": aliases,
        "model_uri": f"models:/{name}/{number}",
        "run_id": run_id,
        "tracking_uri": tracking.tracking_uri(),
        "decision": {"promote": decision.promote, "alias": aliases[-1]} | decision.as_dict(),
        "tags": tags,
    }
