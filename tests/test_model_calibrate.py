"""Threshold calibration: the requested FPR on the data it was fit on."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.calibrate import calibrate_threshold, false_positive_rate, min_samples_for
from sensor.errors import ConfigError


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 5000),
    target=st.sampled_from([1e-3, 5e-3, 1e-2, 0.05, 0.2]),
    seed=st.integers(0, 10_000),
)
def test_validation_fpr_meets_the_target_within_quantile_resolution(
    n: int, target: float, seed: int
) -> None:
    """On distinct scores the fitted FPR lies in [target - 1/n, target]."""
    scores = np.random.default_rng(seed).standard_normal(n)
    threshold = calibrate_threshold(scores, target)
    fpr = false_positive_rate(scores, threshold)
    assert fpr <= target
    assert fpr >= target - 1.0 / n - 1e-12
    assert fpr == math.floor(target * n) / n


def test_ties_never_push_the_fpr_over_the_target() -> None:
    """Many equal scores at the cut are all kept below the threshold."""
    scores = np.concatenate([np.zeros(990), np.ones(10)])
    threshold = calibrate_threshold(scores, 0.005)
    assert false_positive_rate(scores, threshold) == 0.0
    assert threshold > 1.0


def test_too_few_scores_put_the_threshold_above_the_maximum() -> None:
    """With n * target < 1 no validation score reaches the threshold."""
    scores = np.linspace(0.0, 1.0, 200)
    threshold = calibrate_threshold(scores, 1e-3)
    assert threshold > scores.max()
    assert min_samples_for(1e-3) == 1000


def test_non_finite_scores_are_dropped_and_all_nan_refused() -> None:
    """NaN scores do not count; only NaN is a ConfigError."""
    scores = np.array([0.1, np.nan, 0.2, 0.3, np.inf] + [0.0] * 95)
    threshold = calibrate_threshold(scores, 0.02)
    assert 0.2 < threshold <= np.nextafter(0.2, 1)
    with pytest.raises(ConfigError, match="no finite validation scores"):
        calibrate_threshold(np.array([np.nan, np.nan]), 0.01)


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1])
def test_target_outside_zero_one_is_refused(target: float) -> None:
    """A target FPR of 0, 1 or below is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=str(target)):
        calibrate_threshold(np.zeros(10), target)
