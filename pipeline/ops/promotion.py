"""`snackloc promote` and `snackloc rollback`: move @champion by hand, outside the pipeline.

Each action goes through the model registry (pipeline/integrations/registry.py), which
records it on the versions' tags; its JSON record is appended to
``outputs/register/history.jsonl`` beside the register stage's.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.core.config import Params
from pipeline.core.paths import Outputs
from pipeline.evaluation.gate import CHAMPION
from pipeline.integrations import registry, tracking

log = logging.getLogger(__name__)


def _keep(record: dict[str, Any], uri: str, outputs: Outputs) -> dict[str, Any]:
    """Add the store to a manual action's record and append it to the history."""
    record["tracking_uri"] = uri
    registry.append_history(outputs.registry_history, record)
    log.info(
        "%s: %s v%s is @%s",
        record["action"],
        record["model_name"],
        record["champion_after"],
        CHAMPION,
    )
    return record


def promote(params: Params, outputs: Outputs, version: str, reason: str = "") -> dict[str, Any]:
    """`snackloc promote VERSION`: make a version the champion by hand."""
    uri = tracking.tracking_uri()
    name = params.register_.model_name
    record = tracking.retrying(
        f"make v{version} @{CHAMPION}",
        lambda: registry.promote(registry.connect(uri), name, version, reason),
    )
    return _keep(record, uri, outputs)


def rollback(params: Params, outputs: Outputs, reason: str = "") -> dict[str, Any]:
    """`snackloc rollback`: give @champion back to the previous champion."""
    uri = tracking.tracking_uri()
    name = params.register_.model_name
    # One try only: a rollback whose answer was lost but which took effect would, if
    # repeated, roll back one version further.
    record = tracking.retrying(
        "roll back", lambda: registry.rollback(registry.connect(uri), name, reason), attempts=1
    )
    return _keep(record, uri, outputs)
