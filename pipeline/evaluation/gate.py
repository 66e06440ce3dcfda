"""The promotion gate: may a new model version replace the champion?

A pure function of numbers, so every rule is testable without a registry. The candidate
becomes ``champion`` only when all of these hold (params ``register.gate``):

1. it reaches every absolute floor (e.g. accuracy >= 0.25);
2. it clears the trivial baseline (``beat_baseline``): by more than 0 on the gate metric,
   and by ``evaluate.baseline_margin`` on each metric listed there (mean IoU at least
   0.05 above the mean box by default): a model at the baseline is no model;
3. it beats the current champion on the gate metric (``metric``; for a detector
   ``detect_metric``, see ``for_task``) by at least ``margin`` (and by more
   than 0: a tie keeps the champion), both scored on the same test split. With no champion
   yet, this check passes; with a champion whose metrics are not comparable, it fails.

Every check adds a human-readable reason, passed or not; the registry stores them. The
gate only decides (promote or not); which registry alias that earns is named in
pipeline/integrations/registry.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.core.config import GateParams
from pipeline.evaluation.metrics import clears


@dataclass(frozen=True)
class Champion:
    """The current champion as the gate sees it.

    ``metrics`` is None when its figures are not comparable with the candidate's (scored on
    another split or data and not re-scored); ``note`` says how they were obtained.
    """

    version: str
    metrics: Mapping[str, float] | None
    note: str = ""


@dataclass(frozen=True)
class Decision:
    """The gate's verdict: whether the candidate replaces the champion, and why."""

    promote: bool
    metric: str
    candidate: float | None
    champion: float | None
    champion_version: str | None
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-ready form for the registry record."""
        return {
            "promote": self.promote,
            "metric": self.metric,
            "candidate": self.candidate,
            "champion": self.champion,
            "champion_version": self.champion_version,
            "reasons": list(self.reasons),
        }


def _check_floors(candidate: Mapping[str, float], floors: Mapping[str, float]) -> list[tuple]:
    """(passed, reason) for every absolute floor."""
    checks = []
    for name, floor in sorted(floors.items()):
        value = candidate.get(name)
        if value is None:
            checks.append((False, f"floor {name} >= {floor:g}: metric missing"))
        else:
            verdict = "passes" if value >= floor else "fails"
            checks.append((value >= floor, f"{verdict} floor {name} >= {floor:g} ({value:.4f})"))
    return checks


def _check_baseline(
    metric: str,
    candidate: Mapping[str, float],
    baseline: Mapping[str, float] | None,
    margins: Mapping[str, float],
) -> list[tuple]:
    """(passed, reason) for clearing the trivial baseline on each margin metric and the
    gate metric."""
    wanted = {metric: 0.0, **margins}
    if missing := [name for name in wanted if baseline is None or name not in baseline]:
        return [(False, f"no baseline {', '.join(missing)} to compare with")]
    checks = []
    for name, margin in wanted.items():
        value, reference = candidate.get(name), baseline[name]
        if value is None:
            checks.append((False, f"baseline check {name}: metric missing"))
            continue
        passed = clears(value, reference, margin)
        verdict = "beats" if passed else "does not beat"
        checks.append(
            (passed, f"{verdict} the baseline {name} ({value:.4f} vs {reference:.4f}, "
             f"margin {margin:g})")
        )  # fmt: skip
    return checks


def _check_champion(metric: str, value: float, champion: Champion | None, margin: float):
    """(passed, reason, champion value) for beating the current champion by the margin."""
    if champion is None:
        return True, "no champion yet", None
    note = f"; {champion.note}" if champion.note else ""
    if champion.metrics is None or metric not in champion.metrics:
        reason = f"champion v{champion.version} has no comparable {metric} ({champion.note})"
        return False, reason, None
    reference = float(champion.metrics[metric])
    delta = value - reference
    passed = clears(value, reference, margin)
    verdict = "beats" if passed else "does not beat"
    reason = (
        f"{verdict} champion v{champion.version} on {metric}: {value:.4f} vs {reference:.4f} "
        f"({delta:+.4f}, margin {margin:g}{note})"
    )
    return passed, reason, reference


def for_task(gate: GateParams, task: str) -> GateParams:
    """The gate that judges a model of ``task`` (``model.task``): a detector is compared on
    ``detect_metric`` (COCO mAP@.5), the two-head model on ``metric``."""
    if task == "detect":
        return gate.model_copy(update={"metric": gate.detect_metric})
    return gate


def decide(
    candidate: Mapping[str, float],
    baseline: Mapping[str, float] | None,
    champion: Champion | None,
    gate: GateParams,
    baseline_margin: Mapping[str, float] | None = None,
) -> Decision:
    """Apply the gate's rules (module docstring) to the candidate's metrics;
    ``baseline_margin`` is ``evaluate.baseline_margin``."""
    metric = gate.metric
    value = candidate.get(metric)
    if value is None:
        reason = f"candidate has no {metric} metric"
        version = champion.version if champion else None
        return Decision(False, metric, None, None, version, [reason])
    checks = _check_floors(candidate, gate.floors)
    if gate.beat_baseline:
        checks += _check_baseline(metric, candidate, baseline, baseline_margin or {})
    passed, reason, reference = _check_champion(metric, value, champion, gate.margin)
    checks.append((passed, reason))
    return Decision(
        promote=all(ok for ok, _ in checks),
        metric=metric,
        candidate=float(value),
        champion=reference,
        champion_version=champion.version if champion else None,
        reasons=[reason for _, reason in checks],
    )


def already_champion(version: str, candidate: Mapping[str, float], gate: GateParams) -> Decision:
    """The verdict when the candidate is the champion itself (the same model registered
    before): it stays champion, with nothing to compare."""
    value = candidate.get(gate.metric)
    value = None if value is None else float(value)
    reason = f"v{version} is already the champion (the same model, registered before)"
    return Decision(True, gate.metric, value, value, version, [reason])
