"""Threshold calibration and per-slot score scales, on normal data only."""

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.calibrate import (
    MIN_SLOT_SCORES,
    MIN_SLOT_SD_SHARE,
    POOLED_SLOT,
    SlotNorm,
    calibrate_threshold,
    false_positive_rate,
    min_samples_for,
    packet_slots,
)
from sensor.contract import PACKETS_PER_DIRECTION
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


def test_slot_norm_gives_every_slot_mean_zero_and_sd_one() -> None:
    """Each well-filled slot of the normal scores it was fit on reads 0 +- 1."""
    rng = np.random.default_rng(3)
    slots = rng.integers(0, POOLED_SLOT, size=3000)
    scores = rng.normal(10.0 * slots, 1.0 + slots)
    norm = SlotNorm.fit(scores, slots)
    out = norm.apply(scores, slots)
    for slot in range(POOLED_SLOT):
        own = out[slots == slot]
        assert abs(own.mean()) < 1e-9 and abs(own.std() - 1.0) < 1e-9


def test_sparse_and_unknown_slots_take_the_pooled_constants() -> None:
    """A slot with too few normal scores, or none known, uses all scores."""
    rng = np.random.default_rng(4)
    slots = np.r_[np.zeros(500, np.int64), np.ones(MIN_SLOT_SCORES - 1, np.int64)]
    scores = rng.normal(0.0, 1.0, slots.size) + 5.0 * slots
    norm = SlotNorm.fit(scores, slots)
    pooled = (scores - scores.mean()) / scores.std()
    probe = np.array([1.0, 2.0, 3.0])
    expect = (probe - scores.mean()) / scores.std()
    for slot in (1, POOLED_SLOT, 99, -1):
        np.testing.assert_allclose(norm.apply(probe, np.full(3, slot)), expect)
    assert norm.apply(scores, np.full(slots.size, POOLED_SLOT)) == pytest.approx(pooled)


def test_a_slot_of_copies_is_not_divided_by_its_near_zero_spread() -> None:
    """A slot whose normal scores are all one value (a repeated heartbeat)
    gets MIN_SLOT_SD_SHARE of the typical within-slot sd, so a small change
    in that slot stays a small standardised score."""
    rng = np.random.default_rng(6)
    slots = np.r_[np.zeros(300, np.int64), np.ones(300, np.int64)]
    scores = np.r_[np.full(300, -2.3), rng.normal(0.0, 1.5, 300)]
    norm = SlotNorm.fit(scores, slots)

    within = np.sqrt(scores[300:].var() / 2)
    assert norm.sd[0] == pytest.approx(MIN_SLOT_SD_SHARE * within)
    nudged = norm.apply(np.array([-2.3 + 0.05]), np.array([0]))
    assert 0 < nudged[0] < 1
    assert norm.sd[1] == pytest.approx(scores[300:].std())


def test_slot_norm_round_trips_and_refuses_bad_constants() -> None:
    """The stored form reads back equal; wrong lengths or sds are refused."""
    rng = np.random.default_rng(5)
    slots = rng.integers(0, POOLED_SLOT, size=600)
    norm = SlotNorm.fit(rng.normal(size=600), slots)
    assert SlotNorm.from_dict(norm.to_dict()) == norm
    bad = [
        {"mean": norm.mean[:-1], "sd": norm.sd[:-1]},
        {"mean": norm.mean, "sd": [0.0] * len(norm.sd)},
        {"mean": [math.nan] * len(norm.mean), "sd": norm.sd},
        {"mean": norm.mean},
        "not constants",
    ]
    for data in bad:
        with pytest.raises(ConfigError, match="re-export"):
            SlotNorm.from_dict(data)
    with pytest.raises(ConfigError, match="no finite"):
        SlotNorm.fit(np.array([math.nan, math.inf]), np.array([0, 1]))


def test_packet_slots_of_real_records_follow_direction_and_index(
    data_dir: Path,
) -> None:
    """Originator packets take slots 0-2, responder 3-5; unset ones pool."""
    from model.features.pcap import sample_pcap

    table = sample_pcap(data_dir / "lab/benign-2/benign-2.pcap")
    orig = table.column("is_orig").to_pylist()
    index = table.column("pkt_index").to_pylist()
    slots = packet_slots(orig, index)
    assert set(slots[np.array(orig)]) == set(range(PACKETS_PER_DIRECTION))
    assert set(slots[~np.array(orig)]) == set(range(PACKETS_PER_DIRECTION, POOLED_SLOT))
    odd = packet_slots([None, True, False, True], [0, None, 7, 2])
    assert odd.tolist() == [POOLED_SLOT, POOLED_SLOT, POOLED_SLOT, 2]
