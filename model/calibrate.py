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

Packet scores can be standardised per slot (`SlotNorm`: direction and
index of the packet within its connection) before the threshold, with
constants measured on the same normal validation packets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from sensor.contract import PACKETS_PER_DIRECTION
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


# Slot `2 * PACKETS_PER_DIRECTION` pools every packet whose slot is unknown
# (unset `is_orig` / `pkt_index`) or beyond the sampled ones.
POOLED_SLOT = 2 * PACKETS_PER_DIRECTION
# A slot with fewer normal validation scores than this uses the pooled
# constants: a mean and sd of a handful of packets would be noise.
MIN_SLOT_SCORES = 20
# A slot's sd is never below this share of the typical within-slot sd (the
# root mean within-slot variance of the well-filled slots). A slot whose
# normal packets are copies of one packet (a heartbeat) has almost no
# spread, and dividing by it would turn a one-byte change, or float32
# noise, into thousands of standard deviations and a notice per packet.
MIN_SLOT_SD_SHARE = 0.1


def packet_slots(is_orig: Sequence[Any], pkt_index: Sequence[Any]) -> np.ndarray:
    """Slot `(N,)` int64 of packet-log records: direction times index.

    Originator packets 0, 1, 2 are slots 0-2, responder packets 3-5; a
    record with an unset direction or index, or an index past
    `PACKETS_PER_DIRECTION` (a site that samples more), is `POOLED_SLOT`.
    """
    if len(is_orig) != len(pkt_index):
        raise ValueError(
            f"{len(is_orig)} is_orig values for {len(pkt_index)} pkt_index values"
        )
    slots = np.full(len(is_orig), POOLED_SLOT, dtype=np.int64)
    for i, (orig, index) in enumerate(zip(is_orig, pkt_index, strict=True)):
        if orig is None or index is None or not 0 <= int(index) < POOLED_SLOT // 2:
            continue
        slots[i] = int(index) + (0 if orig else PACKETS_PER_DIRECTION)

    return slots


def record_slots(records: Any) -> np.ndarray:
    """`packet_slots` of a pyarrow table of packet records.

    A log without the `is_orig` or `pkt_index` field pools its records.
    """
    columns = [
        records.column(name).to_pylist()
        if name in records.column_names
        else [None] * records.num_rows
        for name in ("is_orig", "pkt_index")
    ]

    return packet_slots(*columns)


@dataclass
class SlotNorm:
    """Per-slot standardisation of packet scores, measured on normal packets.

    The first payload packet of a connection and its later data packets have
    different typical scores (later ones carry more varied payload), so the
    raw maximum over a connection's packets is set by its busiest slot, not
    by how unusual any packet is. `apply` turns a score into how many
    standard deviations it lies above the normal scores of its own slot.
    The constants come from normal validation scores only; no anomaly label
    is involved.

    Attributes:
        mean: per slot, `POOLED_SLOT + 1` values (the last is all slots).
        sd: per slot, the same length; never below `MIN_SLOT_SD_SHARE` of
            the typical within-slot sd, nor below a small positive floor.
    """

    mean: list[float]
    sd: list[float]

    @classmethod
    def fit(cls, scores: np.ndarray, slots: np.ndarray) -> SlotNorm:
        """Constants from normal validation `scores` `(n,)` and their `slots`.

        Raises:
            ConfigError: no finite scores, or scores and slots of other lengths.
        """
        values = np.asarray(scores, dtype=np.float64).ravel()
        where = np.asarray(slots, dtype=np.int64).ravel()
        if values.shape != where.shape:
            raise ConfigError(
                f"{values.size} scores for {where.size} slots; pass one slot per "
                "validation score"
            )
        finite = np.isfinite(values)
        if not finite.any():
            raise ConfigError(
                f"no finite validation scores among {values.size} to measure the "
                "per-slot score scale from"
            )
        values, where = values[finite], where[finite]
        pooled = (float(values.mean()), max(float(values.std()), 1e-6))
        filled = {
            slot: own
            for slot in range(POOLED_SLOT)
            if (own := values[where == slot]).size >= MIN_SLOT_SCORES
        }
        floor = 1e-6
        if filled:
            within = sum(float(own.var()) * own.size for own in filled.values())
            within /= sum(own.size for own in filled.values())
            floor = max(MIN_SLOT_SD_SHARE * within**0.5, 1e-6)
        mean, sd = [], []
        for slot in range(POOLED_SLOT):
            if slot not in filled:
                mean.append(pooled[0])
                sd.append(pooled[1])
                continue
            mean.append(float(filled[slot].mean()))
            sd.append(max(float(filled[slot].std()), floor))
        mean.append(pooled[0])
        sd.append(pooled[1])
        log.info("calibrate.slot_norm", n=int(values.size), mean=mean, sd=sd)

        return cls(mean=mean, sd=sd)

    def apply(self, scores: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Standardised scores `(N,)` float64; slots out of range pool."""
        values = np.asarray(scores, dtype=np.float64).ravel()
        where = np.asarray(slots, dtype=np.int64).ravel()
        where = np.where((where >= 0) & (where < len(self.mean)), where, POOLED_SLOT)
        mean = np.asarray(self.mean, dtype=np.float64)[where]
        sd = np.asarray(self.sd, dtype=np.float64)[where]

        return (values - mean) / sd

    def to_dict(self) -> dict[str, list[float]]:
        """Plain JSON form, as stored in a model file's metadata."""
        return {"mean": list(self.mean), "sd": list(self.sd)}

    @classmethod
    def from_dict(cls, data: Any) -> SlotNorm:
        """Read `to_dict()`'s form back.

        Raises:
            ConfigError: not two equal-length lists of `POOLED_SLOT + 1`
                finite numbers with positive sds.
        """
        want = POOLED_SLOT + 1
        try:
            mean = [float(v) for v in data["mean"]]
            sd = [float(v) for v in data["sd"]]
        except (TypeError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"slot_norm {data!r} is not {{'mean': [...], 'sd': [...]}} "
                f"({exc}); re-export the model with bflow train"
            ) from exc
        ok = len(mean) == len(sd) == want
        ok = ok and all(math.isfinite(v) for v in mean + sd) and min(sd) > 0
        if not ok:
            raise ConfigError(
                f"slot_norm {data!r}: expected {want} finite means and {want} "
                "positive sds; re-export the model with bflow train"
            )

        return cls(mean=mean, sd=sd)
