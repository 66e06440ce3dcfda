"""The promotion gate: better, worse, equal, no champion, floors, baseline, comparability."""

from __future__ import annotations

from pipeline.core.config import GateParams
from pipeline.evaluation.gate import Champion, decide

OPEN = GateParams(margin=0.01, floors={}, beat_baseline=False)
BASELINE = {"accuracy": 0.05, "corloc": 0.02}


def metrics(corloc: float, accuracy: float = 0.8) -> dict[str, float]:
    return {"accuracy": accuracy, "corloc": corloc, "mean_iou": 0.5}


def test_no_champion_yet_promotes():
    decision = decide(metrics(0.3), BASELINE, None, GateParams())
    assert decision.promote
    assert "no champion yet" in decision.reasons
    assert decision.as_dict()["champion_version"] is None


def test_better_by_the_margin_promotes():
    decision = decide(metrics(0.42), BASELINE, Champion("3", metrics(0.40)), OPEN)
    assert decision.promote
    assert decision.champion == 0.40 and decision.champion_version == "3"
    assert "beats champion v3 on corloc: 0.4200 vs 0.4000 (+0.0200" in decision.reasons[-1]


def test_better_but_within_the_margin_stays_challenger():
    decision = decide(metrics(0.405), BASELINE, Champion("3", metrics(0.40)), OPEN)
    assert not decision.promote
    assert decision.reasons[-1].startswith("does not beat champion v3")


def test_worse_and_equal_stay_challenger_even_with_zero_margin():
    zero = GateParams(margin=0.0, floors={}, beat_baseline=False)
    assert not decide(metrics(0.30), BASELINE, Champion("1", metrics(0.40)), zero).promote
    assert not decide(metrics(0.40), BASELINE, Champion("1", metrics(0.40)), zero).promote
    assert decide(metrics(0.4001), BASELINE, Champion("1", metrics(0.40)), zero).promote


def test_floors_block_a_better_model():
    gate = GateParams(margin=0.0, floors={"accuracy": 0.5, "corloc": 0.1}, beat_baseline=False)
    decision = decide(metrics(0.9, accuracy=0.45), BASELINE, None, gate)
    assert not decision.promote
    assert "fails floor accuracy >= 0.5 (0.4500)" in decision.reasons
    assert "passes floor corloc >= 0.1 (0.9000)" in decision.reasons


def test_a_floor_on_a_missing_metric_fails():
    gate = GateParams(floors={"iou75_rate": 0.1}, beat_baseline=False)
    decision = decide(metrics(0.5), BASELINE, None, gate)
    assert not decision.promote and "metric missing" in decision.reasons[0]


def test_must_beat_the_baseline():
    gate = GateParams(floors={}, beat_baseline=True)
    assert decide(metrics(0.03), BASELINE, None, gate).promote
    decision = decide(metrics(0.02), BASELINE, None, gate)
    assert not decision.promote
    assert "does not beat the baseline corloc (0.0200 vs 0.0200, margin 0)" in decision.reasons
    assert not decide(metrics(0.5), None, None, gate).promote  # no baseline to compare


def test_a_model_inside_the_baseline_margin_stays_a_challenger_and_says_why():
    gate = GateParams(floors={}, beat_baseline=True)
    margins = {"mean_iou": 0.05, "corloc": 0.0}
    base = {"mean_iou": 0.577, "corloc": 0.655}
    inside = decide({"mean_iou": 0.60, "corloc": 0.70}, base, None, gate, margins)
    assert not inside.promote
    assert "does not beat the baseline mean_iou (0.6000 vs 0.5770, margin 0.05)" in inside.reasons
    assert "beats the baseline corloc (0.7000 vs 0.6550, margin 0)" in inside.reasons
    clear = decide({"mean_iou": 0.70, "corloc": 0.70}, base, None, gate, margins)
    assert clear.promote
    tie = decide({"mean_iou": 0.70, "corloc": 0.655}, base, None, gate, margins)
    assert not tie.promote  # CorLoc equal to the mean box's is not above it


def test_champion_without_comparable_metrics_is_kept():
    champion = Champion("2", None, "it predicts a different class list")
    decision = decide(metrics(0.9), BASELINE, champion, OPEN)
    assert not decision.promote
    assert "champion v2 has no comparable corloc (it predicts" in decision.reasons[-1]


def test_gate_metric_is_a_param_and_a_missing_one_never_promotes():
    gate = GateParams(metric="mean_iou", margin=0.0, floors={}, beat_baseline=False)
    decision = decide(metrics(0.1), BASELINE, Champion("1", {"mean_iou": 0.4}), gate)
    assert decision.promote and decision.metric == "mean_iou"
    gate = GateParams(metric="iou75_rate", floors={}, beat_baseline=False)
    decision = decide(metrics(0.1), BASELINE, None, gate)
    assert not decision.promote and decision.reasons == ["candidate has no iou75_rate metric"]
