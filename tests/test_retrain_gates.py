"""The gates a retrained model must pass before it goes into service."""

import math

import numpy as np
from sklearn.metrics import roc_auc_score

from model.retrain import (
    GateLimits,
    auroc,
    binomial_upper,
    gate_holdout_fpr,
    gate_schema,
    gate_separation,
    gate_vs_current,
)

LIMITS = GateLimits()


def _binomial_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def test_binomial_upper_is_the_exact_quantile() -> None:
    """The FPR allowance is the smallest k whose binomial CDF reaches the level."""
    for n, p in ((100, 0.02), (562, 0.02), (50, 0.2), (1000, 0.002)):
        k = binomial_upper(n, p, 0.999)
        assert _binomial_cdf(k, n, p) >= 0.999
        assert k == 0 or _binomial_cdf(k - 1, n, p) < 0.999


def test_auroc_agrees_with_sklearn_including_ties() -> None:
    """Our AUROC equals scikit-learn's, with tied scores counted half."""
    rng = np.random.default_rng(1)
    normal = np.round(rng.normal(0, 1, 300), 1)
    bad = np.round(rng.normal(0.7, 1, 120), 1)
    labels = np.r_[np.zeros(300), np.ones(120)]

    assert math.isclose(
        auroc(normal, bad), roc_auc_score(labels, np.r_[normal, bad]), rel_tol=1e-12
    )


def test_fpr_gate_passes_a_kept_promise_and_fails_a_broken_one() -> None:
    """A threshold with 1% FPR passes a 1% target; one with 10% fails it."""
    scores = np.linspace(0, 1, 1000, endpoint=False)

    kept = gate_holdout_fpr(scores, 0.99, 0.01, LIMITS)
    broken = gate_holdout_fpr(scores, 0.90, 0.01, LIMITS)

    assert kept.passed is True and kept.value["false_positives"] == 10
    assert broken.passed is False and broken.value["false_positives"] == 100
    assert "above" in broken.reason


def test_fpr_gate_refuses_to_judge_a_tiny_slice() -> None:
    """Too few held-out records is a failure that says how to get more."""
    gate = gate_holdout_fpr(np.zeros(10), 1.0, 0.01, LIMITS)

    assert gate.passed is False
    assert "--window" in gate.reason


def test_separation_gate_fails_a_collapsed_model() -> None:
    """Constant scores cannot tell pseudo-anomalies apart, so the gate fails."""
    rng = np.random.default_rng(0)

    collapsed = gate_separation(np.zeros(500), np.zeros(500), LIMITS)
    working = gate_separation(rng.normal(0, 1, 500), rng.normal(3, 1, 500), LIMITS)

    assert collapsed.passed is False and collapsed.value["auroc"] == 0.5
    assert working.passed is True


def test_schema_gate_allows_refits_but_not_new_settings() -> None:
    """New vocabularies are fine; a changed schema setting needs a migration."""
    old = {
        "kind": "flow",
        "feature_schema": {"version": 1, "use_direction": False, "vocab": ["a"]},
    }
    refit = {
        "kind": "flow",
        "feature_schema": {"version": 1, "use_direction": False, "vocab": ["b"]},
    }
    changed = {
        "kind": "flow",
        "feature_schema": {"version": 2, "use_direction": False, "vocab": ["b"]},
    }

    assert gate_schema(refit, old, migrate=False).passed is True
    assert gate_schema(changed, old, migrate=False).passed is False
    assert gate_schema(changed, old, migrate=True).passed is True
    assert gate_schema({"kind": "packet"}, old, migrate=True).passed is False
    assert gate_schema(refit, None, migrate=False).passed is None


def test_vs_current_gate_catches_a_model_blind_to_past_attacks() -> None:
    """A candidate that no longer flags noticed records is rejected."""
    rng = np.random.default_rng(2)
    normal = rng.normal(0, 1, 500)
    bad = rng.normal(4, 1, 100)

    same = gate_vs_current(normal, bad, 2.5, normal, bad, 2.5, LIMITS)
    blind = gate_vs_current(
        normal, rng.normal(0, 1, 100), 2.5, normal, bad, 2.5, LIMITS
    )
    first = gate_vs_current(normal, bad, 2.5, None, None, None, LIMITS)

    assert same.passed is True
    assert blind.passed is False and "raised notices" in blind.reason
    assert first.passed is None


def test_vs_current_gate_needs_a_reference_that_detects() -> None:
    """A model in service at chance on noticed records is no yardstick."""
    rng = np.random.default_rng(3)
    normal = rng.normal(0, 1, 500)
    chance = rng.normal(0, 1, 100)

    gate = gate_vs_current(normal, chance, 2.5, normal, chance, 2.5, LIMITS)

    assert gate.passed is True
    assert "not compared" in gate.value["known_bad_note"]


def test_vs_current_gate_compares_false_positives_beyond_chance() -> None:
    """Many more false positives than the model in service fail the gate."""
    normal = np.linspace(0, 1, 1000, endpoint=False)
    bad = np.ones(5)

    close = gate_vs_current(normal, bad, 0.985, normal, bad, 0.99, LIMITS)
    worse = gate_vs_current(normal, bad, 0.9, normal, bad, 0.99, LIMITS)

    assert close.passed is True
    assert worse.passed is False and "false positives" in worse.reason


def test_a_passing_gate_says_what_it_could_not_judge() -> None:
    """A pass on too few records or without a detection check says so."""
    normal = np.linspace(0, 1, 76, endpoint=False)
    few_bad = np.ones(3)

    fpr = gate_holdout_fpr(normal, 2.0, 0.001, LIMITS)
    versus = gate_vs_current(normal, few_bad, 2.0, normal, few_bad, 2.0, LIMITS)

    assert fpr.passed is True
    assert "76 records cannot show a rate of 0.001 (that needs 1000)" in fpr.reason
    assert versus.passed is True
    assert "detection not compared" in versus.reason
