"""`snackloc promote` and `snackloc rollback`: move @champion by hand, outside the pipeline.

Each action goes through the model registry (pipeline/integrations/registry.py): it writes
the versions' tags first and moves the alias last. A rollback follows the champion's
``previous_champion`` tag back one step and does not rewrite it, so repeated rollbacks walk
back through the champions. Each action's JSON record is appended to
``outputs/register/history.jsonl`` beside the register stage's.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.core.config import Params
from pipeline.core.errors import UserError
from pipeline.core.paths import Outputs
from pipeline.integrations import registry, tracking
from pipeline.integrations.registry import CHAMPION, PREVIOUS_TAG

log = logging.getLogger(__name__)


def promote_version(client, name: str, version: str, reason: str = "") -> dict[str, Any]:
    """Make ``version`` the champion by hand, whatever the gate said; return the record."""
    target = registry.get_version(client, name, version)
    user, now = registry.user(), registry.now()
    why = f"manual promotion by {user}" + (f": {reason}" if reason else "")
    tags = {"promoted_at": now, "promoted_by": user, "promotion_reason": why}
    number = str(target.version)
    before = registry.make_champion(client, name, number, tags)
    return registry.action_record("promote", name, number, before, number, [why])


def roll_back(client, name: str, reason: str = "") -> dict[str, Any]:
    """Give the champion alias back to the version the current champion replaced."""
    current = registry.version_by_alias(client, name, CHAMPION)
    if current is None:
        raise UserError(f"model {name!r} has no @{CHAMPION} to roll back")
    number, previous = str(current.version), current.tags.get(PREVIOUS_TAG)
    if not previous:
        raise UserError(
            f"{name} v{number} is @{CHAMPION} but records no previous champion",
            hint="choose a version by hand: `snackloc promote VERSION`",
        )
    target = str(registry.get_version(client, name, previous).version)
    user, now = registry.user(), registry.now()
    why = f"rollback by {user} from v{number}" + (f": {reason}" if reason else "")
    registry.set_tags(client, name, number, {"rolled_back_at": now, "rolled_back_by": user})
    tags = {"promoted_at": now, "promoted_by": user, "promotion_reason": why}
    registry.make_champion(client, name, target, tags, record_previous=False)
    return registry.action_record("rollback", name, target, number, target, [why])


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
        lambda: promote_version(registry.connect(uri), name, version, reason),
    )
    return _keep(record, uri, outputs)


def rollback(params: Params, outputs: Outputs, reason: str = "") -> dict[str, Any]:
    """`snackloc rollback`: give @champion back to the previous champion."""
    uri = tracking.tracking_uri()
    name = params.register_.model_name
    # One try only: a rollback whose answer was lost but which took effect would, if
    # repeated, roll back one version further.
    record = tracking.retrying(
        "roll back", lambda: roll_back(registry.connect(uri), name, reason), attempts=1
    )
    return _keep(record, uri, outputs)
