"""The alert threshold, chosen from normal validation scores only.

A record raises a notice when its score is at or above the threshold. For a
target false-positive rate `a` and `n` normal validation scores, at most
`k = floor(a * n)` of them may reach the threshold, so the threshold is put
just above the `(k + 1)`-th highest score: the validation FPR is then at most
`a` and, without ties, at least `a - 1/n` (the resolution of a quantile on
`n` points).

Limit for small `n`: when `a * n < 1`, `k = 0` and the threshold sits just
above the highest validation score. The validation FPR is then 0, which
says only that the true FPR is probably below about `3 / n` (the "rule of
three"), not that it meets `a`. `calibrate_threshold` logs a warning in that
case; `min_samples_for(a)` gives the `n` needed to resolve `a` at all.
"""

from __future__ import annotations

import math

import numpy as np
import structlog

from sensor.errors import ConfigError

log = structlog.get_logger(__name__)


def min_samples_for(target_fpr: float) -> int:
    """Smallest number of validation scores for which `target_fpr` is resolved."""
    return math.ceil(1.0 / target_fpr)


def calibrate_threshold(val_scores: np.ndarray, target_fpr: float) -> float:
    """Threshold whose false-positive rate on `val_scores` is at most the target.

    Args:
        val_scores: scores `(n,)` of normal validation records (no anomaly
            labels are involved).
        target_fpr: wanted fraction of normal records at or above the
            threshold, in (0, 1).

    Returns:
        The threshold (float); `score >= threshold` raises a notice.

    Raises:
        ConfigError: no finite scores, or `target_fpr` outside (0, 1).
    """
    if not 0 < target_fpr < 1:
        raise ConfigError(f"target_fpr={target_fpr} must lie strictly between 0 and 1")
    scores = np.asarray(val_scores, dtype=np.float64).ravel()
    finite = scores[np.isfinite(scores)]
    if len(finite) == 0:
        raise ConfigError(
            f"no finite validation scores among {len(scores)}; "
            "check the validation features and the model"
        )
    if len(finite) < len(scores):
        log.warning("calibrate.nonfinite_dropped", dropped=len(scores) - len(finite))

    n = len(finite)
    allowed = math.floor(target_fpr * n)
    if allowed == 0:
        log.warning(
            "calibrate.unresolved",
            n=n,
            target_fpr=target_fpr,
            needed=min_samples_for(target_fpr),
        )
    ranked = np.sort(finite)[::-1]
    cut = float(ranked[allowed]) if allowed < n else float(ranked[-1])
    threshold = float(np.nextafter(cut, np.inf))

    return threshold


def false_positive_rate(scores: np.ndarray, threshold: float) -> float:
    """Fraction of `scores` at or above `threshold` (NaN for no scores)."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    if len(values) == 0:
        return math.nan

    return float(np.mean(values >= threshold))
