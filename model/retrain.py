"""`bflow retrain` and `bflow rollback`: keep the model fresh, safely.

One retraining, top to bottom:

1. pick clean records from the log archive over a window (`model.baseline`);
2. fit the feature schema and train the three stages on the older part;
3. calibrate the threshold on a validation split of that part (packet
   scores standardised per slot first, as `bflow train` does);
4. score the newest slice (held out from training) and the records that
   raised notices with the candidate and with the model in service;
5. run the gates; write the gate report (JSON) and training report (PNG);
6. only if every gate passes: keep the candidate in `history/` and rename it
   over the live model file, which the daemon then reloads on its own.

The gates, each logged (`gate.checked`) and written to the report:

- `holdout_fpr`: on the held-out normal slice, the candidate's threshold
  keeps its false-positive promise (within `fpr_factor` x target, plus what
  chance gives on a slice that size);
- `separation`: its scores still tell held-out records from its own
  pseudo-anomalies (AUROC), i.e. the classifier has not collapsed;
- `schema`: same feature kind and schema settings, unless `--migrate-schema`;
- `vs_current`: not much worse than the model in service, on the held-out
  slice and on the records that raised notices (plus any `--known-bad` logs
  of past incidents). This one catches a candidate trained on attacks that
  went unnoticed: it no longer flags what the model in service flags.

Exit status: 0 promoted (or `--dry-run` passed), 1 a gate rejected the
candidate (the model in service is untouched), 2 an error a person must fix.
The reports: `<model>.retrain.json` beside the model (the latest run),
`history/<stem>-<version>.{pt,json,png}` for models put in service, and
`history/rejected/` for the reports of rejected candidates.
"""

import argparse
import contextlib
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import structlog

from model import baseline as bl
from model.calibrate import POOLED_SLOT, SlotNorm, calibrate_threshold, record_slots
from model.promote import (
    History,
    HistoryEntry,
    install,
    model_lock,
    safe_version,
    write_json,
)
from sensor.contract import PACKET_LOG_PATH
from sensor.errors import BFlowError, ConfigError, ModelError

log = structlog.get_logger(__name__)

# The log each feature kind is trained on.
LOG_OF_KIND = {"flow": "conn", "packet": PACKET_LOG_PATH}

EXIT_PROMOTED = 0
EXIT_REJECTED = 1


@dataclass(frozen=True)
class GateLimits:
    """How far a candidate may be from ideal and still go into service.

    The FPR gate allows `fpr_factor` times the target plus what chance alone
    gives on a small slice: it fails only when the false positives seen are
    above the `fpr_confidence` quantile of Binomial(n, fpr_factor x target).
    """

    fpr_factor: float = 2.0
    fpr_confidence: float = 0.999
    min_holdout: int = 50
    min_separation_auroc: float = 0.75
    pseudo_samples: int = 2000
    # Candidate vs the model in service, on records that raised notices.
    min_known_bad: int = 10
    max_detection_drop: float = 0.25
    max_auroc_drop: float = 0.10
    min_reference_auroc: float = 0.6
    # Candidate vs the model in service, on the held-out normal slice.
    max_fpr_ratio: float = 3.0


@dataclass
class Gate:
    """One check of the candidate: what was measured and the verdict.

    `passed` is None when the gate could not apply (no model in service, too
    few records that raised notices); a skipped gate does not block.
    """

    name: str
    passed: bool | None
    value: dict[str, Any]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the report."""
        verdict = {True: "pass", False: "fail", None: "skipped"}[self.passed]
        return {
            "name": self.name,
            "verdict": verdict,
            "reason": self.reason,
            **self.value,
        }


# --- gates -----------------------------------------------------------------


def binomial_upper(n: int, p: float, confidence: float) -> int:
    """Smallest k with P(X <= k) >= confidence for X ~ Binomial(n, p)."""
    if n <= 0 or p <= 0:
        return 0
    if p >= 1:
        return n
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for k in range(n + 1):
        log_pmf = (
            math.lgamma(n + 1)
            - math.lgamma(k + 1)
            - math.lgamma(n - k + 1)
            + k * log_p
            + (n - k) * log_q
        )
        total += math.exp(log_pmf)
        if total >= confidence:
            return k

    return n


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Probability that an anomalous score exceeds a normal one (ties: 1/2)."""
    normal = np.asarray(normal, dtype=np.float64)
    anomalous = np.asarray(anomalous, dtype=np.float64)
    if len(normal) == 0 or len(anomalous) == 0:
        return float("nan")
    both = np.concatenate([normal, anomalous])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both), dtype=np.float64)
    ranks[order] = np.arange(1, len(both) + 1)
    # Tied scores share the mean of their ranks.
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    rank_sum = ranks[len(normal) :].sum()
    m = len(anomalous)

    return float((rank_sum - m * (m + 1) / 2) / (m * len(normal)))


def gate_holdout_fpr(
    scores: np.ndarray, threshold: float, target: float, limits: GateLimits
) -> Gate:
    """The candidate's threshold must keep its promise on unseen normal data."""
    n = len(scores)
    hits = int(np.sum(scores >= threshold))
    allowed = binomial_upper(n, limits.fpr_factor * target, limits.fpr_confidence)
    value = {
        "n": n,
        "false_positives": hits,
        "fpr": hits / n if n else None,
        "target_fpr": target,
        "allowed_false_positives": allowed,
    }
    if n < limits.min_holdout:
        return Gate(
            "holdout_fpr",
            False,
            value,
            f"only {n} held-out records; need {limits.min_holdout} to judge "
            "the false-positive rate (widen --window or raise --holdout)",
        )
    passed = hits <= allowed
    verb = "within" if passed else "above"
    reason = (
        f"{hits} of {n} held-out normal records reach the threshold, {verb} "
        f"the {allowed} allowed for {limits.fpr_factor:g} x target {target:g}"
    )
    if passed and n * target < 1:
        reason += (
            f"; {n} records cannot show a rate of {target:g} (that needs "
            f"{math.ceil(1 / target)}), only rule out much higher ones"
        )

    return Gate("holdout_fpr", passed, value, reason)


def gate_separation(normal: np.ndarray, pseudo: np.ndarray, limits: GateLimits) -> Gate:
    """Normal records and pseudo-anomalies must still be told apart."""
    value = auroc(normal, pseudo)
    passed = bool(value >= limits.min_separation_auroc)
    reason = (
        f"AUROC {value:.3f} between held-out normal records and "
        f"{len(pseudo)} pseudo-anomalies; at least "
        f"{limits.min_separation_auroc:g} needed"
    )

    return Gate(
        "separation",
        passed,
        {"auroc": value, "min_auroc": limits.min_separation_auroc},
        reason,
    )


def gate_schema(
    candidate: dict[str, Any],
    current: dict[str, Any] | None,
    *,
    migrate: bool,
) -> Gate:
    """The feature kind and the schema's layout must match, or be declared."""
    if current is None:
        return Gate("schema", None, {}, "no model in service to compare with")
    old, new = _schema_shape(current), _schema_shape(candidate)
    value = {"current": old, "candidate": new, "migration_declared": migrate}
    if old == new:
        return Gate("schema", True, value, "feature kind and layout unchanged")
    if old["kind"] != new["kind"]:
        return Gate(
            "schema",
            False,
            value,
            f"feature kind changed from {old['kind']} to {new['kind']}; a "
            "retraining never changes kind (train a new model with bflow train)",
        )
    if migrate:
        return Gate("schema", True, value, "layout changed; migration declared")

    return Gate(
        "schema",
        False,
        value,
        "feature schema layout changed; if intended, rerun with "
        "--migrate-schema after checking the daemon reads the new layout",
    )


def _schema_shape(meta: dict[str, Any]) -> dict[str, Any]:
    """What must stay fixed between retrainings: kind and schema settings.

    The schema's scalar entries (version, options) are settings; its lists
    and tables (vocabularies, scales, column names) are fitted and expected
    to change, and so is the feature count that follows from them.
    """
    schema = meta.get("feature_schema") or {}
    shape: dict[str, Any] = {"kind": meta.get("kind")}
    if isinstance(schema, dict):
        for key, value in sorted(schema.items()):
            if key in _FITTED_SCALARS:
                continue
            if isinstance(value, str | int | float | bool):
                shape[key] = value

    return shape


_FITTED_SCALARS = frozenset({"n_features"})


def gate_vs_current(
    cand_normal: np.ndarray,
    cand_bad: np.ndarray,
    cand_threshold: float,
    cur_normal: np.ndarray | None,
    cur_bad: np.ndarray | None,
    cur_threshold: float | None,
    limits: GateLimits,
    *,
    target: float = 1e-3,
) -> Gate:
    """Not much worse than the model in service on the same records.

    On the held-out slice the candidate's false positives may exceed what
    `max_fpr_ratio` times the current model's rate (or the target, if
    higher) gives by chance. On the records that raised notices its
    detection rate and AUROC may drop only a little; that is what catches a
    candidate trained on poisoned data, which no longer flags the attack it
    learned as normal. A model in service that does not separate those
    records itself (AUROC below `min_reference_auroc`) is no reference, and
    that comparison is skipped.
    """
    if cur_normal is None or cur_threshold is None:
        return Gate("vs_current", None, {}, "no model in service to compare with")

    n = len(cand_normal)
    cand_fp = int(np.sum(cand_normal >= cand_threshold))
    cur_fp = int(np.sum(cur_normal >= cur_threshold))
    rate = max(cur_fp / n if n else 0.0, target) * limits.max_fpr_ratio
    allowed_fp = binomial_upper(n, min(rate, 1.0), limits.fpr_confidence)
    value: dict[str, Any] = {
        "holdout_n": n,
        "candidate_fp": cand_fp,
        "current_fp": cur_fp,
        "allowed_fp": allowed_fp,
        "known_bad_n": len(cand_bad),
    }
    problems = []
    if cand_fp > allowed_fp:
        problems.append(
            f"{cand_fp} false positives on the held-out slice against "
            f"{cur_fp} for the model in service ({allowed_fp} allowed)"
        )

    if cur_bad is not None and len(cand_bad) >= limits.min_known_bad:
        cand_rate = float(np.mean(cand_bad >= cand_threshold))
        cur_rate = float(np.mean(cur_bad >= cur_threshold))
        cand_auc = auroc(cand_normal, cand_bad)
        cur_auc = auroc(cur_normal, cur_bad)
        value |= {
            "candidate_detection": cand_rate,
            "current_detection": cur_rate,
            "candidate_auroc": cand_auc,
            "current_auroc": cur_auc,
        }
        if cur_auc < limits.min_reference_auroc:
            value["known_bad_note"] = (
                f"the model in service does not separate the {len(cand_bad)} "
                f"records that raised notices either (AUROC {cur_auc:.3f}); "
                "detection not compared"
            )
        else:
            if cand_rate < cur_rate - limits.max_detection_drop:
                problems.append(
                    f"it flags {cand_rate:.0%} of the {len(cand_bad)} records "
                    f"that raised notices, the model in service {cur_rate:.0%}"
                )
            if cand_auc < cur_auc - limits.max_auroc_drop:
                problems.append(
                    f"AUROC on records that raised notices fell from "
                    f"{cur_auc:.3f} to {cand_auc:.3f}"
                )
    else:
        value["known_bad_note"] = (
            f"fewer than {limits.min_known_bad} records raised notices; "
            "detection not compared"
        )

    if problems:
        return Gate("vs_current", False, value, "; ".join(problems))

    reason = "not worse than the model in service"
    if "known_bad_note" in value:
        reason += f" on false positives; {value['known_bad_note']}"

    return Gate("vs_current", True, value, reason)


# --- features ----------------------------------------------------------------


class Features:
    """Turns records into model input for one feature kind and schema."""

    def __init__(self, kind: str, schema: Any) -> None:
        self.kind = kind
        self.schema = schema

    @classmethod
    def fit(
        cls, kind: str, table: pa.Table, settings: dict[str, Any] | None
    ) -> "Features":
        """Fit a new schema on training records, keeping the old settings.

        Settings (flow: `use_direction`, `max_vocab`, `min_count`; packet:
        `input_len`, `neutralise`) come from the model in service so that a
        retraining never changes them by accident.
        """
        settings = settings or {}
        if kind == "flow":
            from model.features.flow import FlowFeatureSchema

            keys = ("use_direction", "max_vocab", "min_count")
            schema: Any = FlowFeatureSchema(
                **{k: settings[k] for k in keys if k in settings}
            ).fit(table)
        else:
            from model.features.packet import PacketFeatureConfig

            if settings:
                schema = PacketFeatureConfig.from_dict(settings)
            else:
                schema = PacketFeatureConfig()

        return cls(kind, schema)

    @classmethod
    def of_model(cls, kind: str, schema: dict[str, Any]) -> "Features":
        """The features a saved model was trained on."""
        if kind == "flow":
            from model.features.flow import FlowFeatureSchema

            return cls(kind, FlowFeatureSchema.from_dict(schema))
        from model.features.packet import PacketFeatureConfig

        return cls(kind, PacketFeatureConfig.from_dict(schema))

    def to_dict(self) -> dict[str, Any]:
        """The schema as stored in the model's metadata."""
        result: dict[str, Any] = self.schema.to_dict()
        return result

    def transform(self, table: pa.Table) -> np.ndarray:
        """`(K, D)` float32 features; packet records not eligible are dropped."""
        return self.featurise(table)[0]

    def featurise(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray | None]:
        """Features `(K, D)` and, for packets, the slot `(K,)` of each one.

        The slots (`model.calibrate.packet_slots`) are those of the packet
        records that became features; flow features have none (None).
        """
        if table.num_rows == 0:
            empty = np.zeros(0, dtype=np.int64) if self.kind == "packet" else None
            return np.zeros((0, 0), dtype=np.float32), empty
        if self.kind == "flow":
            x = np.asarray(self.schema.transform(table), dtype=np.float32)
            return x, None
        from model.features.packet import packet_features

        x, keep = packet_features(table, self.schema)

        return np.asarray(x, dtype=np.float32), record_slots(table)[keep]


@dataclass
class Calibration:
    """A candidate's threshold and the validation scores it was set on.

    For a packet model the scores are standardised per slot (`SlotNorm`,
    measured on the same normal validation packets) as `bflow train` does,
    so `threshold`, the metadata and every gate use one scale; a flow
    model's scores are the raw ones and `slot_norm` is None.
    """

    threshold: float
    val_scores: np.ndarray
    pseudo_scores: np.ndarray
    slot_norm: SlotNorm | None = None

    def scale(self, scores: np.ndarray, slots: np.ndarray | None) -> np.ndarray:
        """Raw eager scores in the threshold's units (slots None: pooled)."""
        if self.slot_norm is None:
            return np.asarray(scores, dtype=np.float64)
        if slots is None:
            slots = np.full(len(scores), POOLED_SLOT, dtype=np.int64)

        return self.slot_norm.apply(scores, slots)


def calibrate_candidate(
    trained: Any,
    x_val: np.ndarray,
    slot_val: np.ndarray | None,
    target: float,
    seed: int,
) -> Calibration:
    """Threshold of a trained candidate from its normal validation records.

    `slot_val` (packets) turns on the per-slot standardisation; pseudo-
    anomalies have no connection and take the pooled slot.
    """
    val_scores = trained.score(x_val)
    pseudo = trained.score_latents(
        trained.pseudo_anomalies(min(len(x_val), 5000), seed=seed)
    )
    slot_norm = None
    if slot_val is not None:
        slot_norm = SlotNorm.fit(val_scores, slot_val)
        val_scores = slot_norm.apply(val_scores, slot_val)
        pseudo = slot_norm.apply(pseudo, np.full(len(pseudo), POOLED_SLOT))
    threshold = calibrate_threshold(val_scores, target)

    return Calibration(threshold, val_scores, pseudo, slot_norm)


# --- one retraining ------------------------------------------------------------


@dataclass
class Options:
    """Everything one `bflow retrain` needs, already validated.

    `holdout` is the share of the newest clean records (by `ts`) kept out of
    training for the gates; `val_fraction` the share of the rest, by
    connection, that sets the threshold.
    """

    model: Path
    kind: str | None
    archives: list[Path]
    notice_logs: list[Path]
    known_bad_logs: list[Path]
    allow: bl.HostList
    deny: bl.HostList
    now: datetime
    window: timedelta
    holdout: float = 0.2
    val_fraction: float = 0.2
    target_fpr: float | None = None
    keep: int = 5
    max_records: int = 1_000_000
    min_records: int = 200
    train_overrides: dict[str, Any] = field(default_factory=dict)
    migrate_schema: bool = False
    dry_run: bool = False
    seed: int = 0
    limits: GateLimits = field(default_factory=GateLimits)
    progress: bool = False


@dataclass
class Outcome:
    """What one retraining decided, and where its report went."""

    promoted: bool
    report: dict[str, Any]
    report_path: Path


def retrain(opts: Options) -> Outcome:
    """Select, train, calibrate, gate and (maybe) promote one candidate.

    Raises:
        BFlowError: bad settings, too little clean data, another retraining
            of the same model running, or a model that cannot be written;
            the model in service is untouched.
    """
    with model_lock(opts.model):
        return _retrain(opts)


def _retrain(opts: Options) -> Outcome:
    started = time.monotonic()
    current = _load_current(opts.model)
    kind = opts.kind or (current.metadata.kind if current else None)
    if kind not in LOG_OF_KIND:
        raise ConfigError(
            f"feature kind {kind!r} is unknown and no model is in service at "
            f"{str(opts.model)!r} to take it from; pass --kind flow or "
            "--kind packet"
        )
    if current is not None and current.metadata.kind != kind:
        raise ConfigError(
            f"--kind {kind} but the model in service at {str(opts.model)!r} is "
            f"a {current.metadata.kind} model; retraining keeps the kind"
        )
    target = opts.target_fpr
    if target is None:
        target = float(current.metadata.target_fpr) if current else 1e-3
    log.info(
        "retrain.started",
        model=str(opts.model),
        kind=kind,
        current=current.metadata.model_version if current else None,
        now=opts.now.isoformat(),
        window_s=opts.window.total_seconds(),
    )

    sel = bl.select(
        opts.archives,
        log_path=LOG_OF_KIND[kind],
        now=opts.now,
        window=opts.window,
        notice_files=opts.notice_logs,
        allow=opts.allow,
        deny=opts.deny,
        holdout_fraction=opts.holdout,
        max_records=opts.max_records,
        seed=opts.seed,
        progress=opts.progress,
    )
    known_bad = _with_known_bad(sel.known_bad, opts.known_bad_logs)
    if sel.baseline.num_rows < opts.min_records:
        raise ConfigError(
            f"only {sel.baseline.num_rows} clean records to train on in "
            f"{sel.window[0]} .. {sel.window[1]} (need {opts.min_records}); "
            "check --archive and --now, or widen --window"
        )

    train_table, val_table = _split(sel.baseline, opts.val_fraction, opts.seed)
    settings = current.metadata.feature_schema if current else None
    features = Features.fit(kind, train_table, settings)
    x_train = features.transform(train_table)
    x_val, slot_val = features.featurise(val_table)
    hold = features.featurise(sel.holdout)
    bad = features.featurise(known_bad)

    cfg = _train_config(kind, x_train.shape[1], target, current, opts)
    from model.train import train_three_stage

    trained = train_three_stage(x_train, x_val, cfg)
    cal = calibrate_candidate(trained, x_val, slot_val, target, opts.seed)

    staging = Path(tempfile.mkdtemp(prefix=".retrain-", dir=opts.model.parent))
    try:
        candidate_path = staging / opts.model.name
        meta = _export(
            trained, candidate_path, features, cal, target, sel, len(x_train)
        )
        gates, scores = _run_gates(
            trained,
            cal,
            candidate_path,
            meta,
            current,
            hold,
            bad,
            sel.holdout,
            known_bad,
            opts,
        )
        promote = all(g.passed is not False for g in gates)
        report = _report(meta, current, sel, gates, scores, opts, promote)
        report["train_seconds"] = round(time.monotonic() - started, 1)
        png = _training_png(trained, scores, meta, report, staging / "report.png")
        outcome = _decide(opts, candidate_path, report, png, current, promote)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    return outcome


def _load_current(path: Path) -> Any:
    """The model in service, or None when there is none (first training)."""
    from model.artifact import load_model

    if not path.exists():
        log.info("retrain.no_current_model", path=str(path))
        return None
    try:
        return load_model(path)
    except ModelError as exc:
        # A broken model in service is no reason to keep it; compare nothing.
        log.warning("retrain.current_unusable", path=str(path), error=str(exc))
        return None


def _with_known_bad(table: pa.Table, files: Sequence[Path]) -> pa.Table:
    """Add the operator's regression set (logs of past attacks) to known-bad."""
    if not files:
        return table
    from sensor.reader import read_log

    tables = [table] if table.num_rows else []
    for path in files:
        try:
            tables += [pa.Table.from_batches([b.records]) for b in read_log(path)]
        except (OSError, BFlowError) as exc:
            raise ConfigError(
                f"known-bad log {str(path)!r} cannot be read ({exc}); fix or "
                "drop that --known-bad file"
            ) from None

    return bl.concat_tables(tables)


def _split(table: pa.Table, fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """A seeded random split into training and validation records.

    Whole connections (`uid`) fall on one side, so the packets of one
    connection never sit in both and the threshold is set on unseen ones.
    """
    n = table.num_rows
    if "uid" in table.schema.names:
        uids = table.column("uid").to_pylist()
        groups = np.unique(np.array([u or "" for u in uids]), return_inverse=True)[1]
    else:
        groups = np.arange(n)
    rng = np.random.default_rng(seed)
    in_val = rng.random(int(groups.max()) + 1 if n else 0) < fraction
    mask = in_val[groups] if n else np.zeros(0, dtype=bool)
    if n and not mask.any():
        mask[rng.integers(n)] = True
    val = np.flatnonzero(mask)
    train = np.flatnonzero(~mask)

    return table.take(pa.array(train)), table.take(pa.array(val))


def _train_config(
    kind: str, input_dim: int, target: float, current: Any, opts: Options
) -> Any:
    """Sizes and epochs: the current model's, then the operator's overrides."""
    from model.train import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    base: dict[str, Any] = {}
    if current is not None:
        saved = current.metadata.training.get("config")
        if isinstance(saved, dict):
            base = {k: v for k, v in saved.items() if k in known}
        # Files from before the config kept `score` say it in the metadata.
        base.setdefault("score", current.metadata.score)
    unknown = sorted(set(opts.train_overrides) - known)
    if unknown:
        raise ConfigError(
            f"unknown training settings {unknown} in --train-config; known: "
            f"{', '.join(sorted(known))}"
        )
    base |= opts.train_overrides
    base |= {"kind": kind, "input_dim": input_dim, "target_fpr": target}
    base.setdefault("seed", opts.seed)

    return TrainConfig(**base)


def _export(
    trained: Any,
    path: Path,
    features: Features,
    cal: Calibration,
    target: float,
    sel: bl.Selection,
    n_train: int,
) -> Any:
    """Export the candidate with metadata shaped like `bflow train` writes."""
    from model.artifact import ModelMetadata, export_model, read_metadata
    from model.calibrate import false_positive_rate
    from model.report import score_histograms

    val_scores, pseudo, threshold = cal.val_scores, cal.pseudo_scores, cal.threshold
    first, last = sel.time_range
    meta = ModelMetadata(
        kind=features.kind,
        input_dim=int(trained.cfg.input_dim),
        threshold=float(threshold),
        target_fpr=target,
        feature_schema=features.to_dict(),
        slot_norm=cal.slot_norm.to_dict() if cal.slot_norm else None,
        training={
            "config": trained.cfg.to_dict(),
            "history": trained.history,
            "noise_std": trained.noise_std,
            "records": {"train": int(n_train), "val": int(len(val_scores))},
            "time_range": {"first": first, "last": last},
            "sources": sel.files,
            "selection": {"window": list(sel.window), "counts": sel.counts},
            "by": "bflow retrain",
        },
        validation={
            "n": int(len(val_scores)),
            "fpr_at_threshold": false_positive_rate(val_scores, threshold),
            "pseudo_tpr_at_threshold": float(np.mean(pseudo >= threshold)),
            "histograms": score_histograms(
                {"normal_val": val_scores, "pseudo": pseudo}
            ),
        },
    )
    export_model(trained, path, meta)

    return read_metadata(path)


def _run_gates(
    trained: Any,
    cal: Calibration,
    candidate_path: Path,
    meta: Any,
    current: Any,
    hold: tuple[np.ndarray, np.ndarray | None],
    bad: tuple[np.ndarray, np.ndarray | None],
    holdout: pa.Table,
    known_bad: pa.Table,
    opts: Options,
) -> tuple[list[Gate], dict[str, np.ndarray]]:
    """Score the slices with both models and judge the candidate.

    Packet slices are scored with their slots: the candidate's scores are
    then on its standardised scale; a model in service without `slot_norm`
    ignores the slots and keeps its raw scale, matching its own threshold.
    """
    from model.artifact import load_model

    limits = opts.limits
    candidate = load_model(candidate_path, expect_kind=meta.kind)
    (x_hold, slot_hold), (x_bad, slot_bad) = hold, bad
    scores: dict[str, np.ndarray] = {
        "holdout": _score(candidate, x_hold, slot_hold),
        "known_bad": _score(candidate, x_bad, slot_bad),
    }
    pseudo_z = trained.pseudo_anomalies(limits.pseudo_samples, seed=opts.seed)
    scores["pseudo"] = cal.scale(trained.score_latents(pseudo_z), None)
    scores["holdout_eager"] = (
        cal.scale(trained.score(x_hold), slot_hold) if len(x_hold) else np.zeros(0)
    )

    gates = [
        gate_holdout_fpr(scores["holdout"], meta.threshold, meta.target_fpr, limits),
        gate_separation(scores["holdout_eager"], scores["pseudo"], limits),
        gate_schema(
            asdict(meta),
            asdict(current.metadata) if current else None,
            migrate=opts.migrate_schema,
        ),
    ]

    cur_hold = cur_bad = None
    cur_threshold = None
    if current is not None:
        try:
            old = Features.of_model(
                current.metadata.kind, current.metadata.feature_schema
            )
            cur_hold = _score(current, *old.featurise(holdout))
            cur_bad = _score(current, *old.featurise(known_bad))
            cur_threshold = current.threshold
            scores["current_holdout"] = cur_hold
            scores["current_known_bad"] = cur_bad
        except BFlowError as exc:
            log.warning("retrain.current_not_scored", error=str(exc))
    gates.append(
        gate_vs_current(
            scores["holdout"],
            scores["known_bad"],
            meta.threshold,
            cur_hold,
            cur_bad,
            cur_threshold,
            limits,
            target=meta.target_fpr,
        )
    )
    for gate in gates:
        log.info(
            "gate.checked",
            gate=gate.name,
            verdict={True: "pass", False: "fail", None: "skipped"}[gate.passed],
            reason=gate.reason,
            value=gate.value,
        )

    return gates, scores


def _score(model: Any, x: np.ndarray, slots: np.ndarray | None) -> np.ndarray:
    """A loaded model's scores, in the units of its own threshold."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.float64)

    return np.asarray(model.score(x, slots=slots), dtype=np.float64)


def _report(
    meta: Any,
    current: Any,
    sel: bl.Selection,
    gates: list[Gate],
    scores: dict[str, np.ndarray],
    opts: Options,
    promote: bool,
) -> dict[str, Any]:
    decided = datetime.now(UTC).isoformat(timespec="seconds")
    if opts.dry_run:
        decision = "dry-run: would promote" if promote else "dry-run: rejected"
    else:
        decision = "promoted" if promote else "rejected"

    return {
        "version": meta.model_version,
        "kind": meta.kind,
        "decision": decision,
        "decided_at": decided,
        "promoted_at": decided if promote and not opts.dry_run else None,
        "model_path": str(opts.model),
        "current_version": current.metadata.model_version if current else None,
        "threshold": meta.threshold,
        "target_fpr": meta.target_fpr,
        "gates": [g.to_dict() for g in gates],
        "data": sel.summary(),
        "score_quantiles": {
            name: _quantiles(values) for name, values in scores.items()
        },
        "known_bad": _known_bad_summary(scores, meta.threshold),
    }


def _known_bad_summary(
    scores: dict[str, np.ndarray], threshold: float
) -> dict[str, Any]:
    """How the candidate scores the records that raised notices."""
    bad, normal = scores["known_bad"], scores["holdout"]
    if len(bad) == 0:
        return {"n": 0}

    return {
        "n": int(len(bad)),
        "detection_at_threshold": float(np.mean(bad >= threshold)),
        "auroc_vs_holdout": auroc(normal, bad),
    }


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    qs = np.quantile(values, [0.0, 0.5, 0.9, 0.99, 1.0])

    return dict(zip(("min", "p50", "p90", "p99", "max"), map(float, qs), strict=True))


def _training_png(
    trained: Any,
    scores: dict[str, np.ndarray],
    meta: Any,
    report: dict[str, Any],
    path: Path,
) -> Path | None:
    """The training report PNG (`model.report`), kept beside the model.

    Normal scores are the held-out slice's, anomalous ones those of the
    records that raised notices. A failed plot is logged and never blocks a
    good model.
    """
    from model.report import write_report

    try:
        write_report(
            path,
            title=(
                f"bflow retrain: {meta.kind} model {meta.model_version} "
                f"({report['decision']})"
            ),
            history=trained.history,
            normal=scores["holdout"],
            anomalous=scores["known_bad"],
            pseudo=scores["pseudo"],
            threshold=meta.threshold,
        )
    except Exception as exc:  # matplotlib raises many kinds
        log.warning("retrain.no_png", reason=str(exc))
        return None

    return path


def _prune_rejected(folder: Path, stem: str, keep: int) -> None:
    """Keep the reports of the last `keep` rejected candidates only."""
    reports = sorted(folder.glob(f"{stem}-*.json"), key=lambda p: p.stat().st_mtime)
    for old in reports[: max(0, len(reports) - keep)]:
        for path in (old, old.with_suffix(".png")):
            path.unlink(missing_ok=True)


def _decide(
    opts: Options,
    candidate: Path,
    report: dict[str, Any],
    png: Path | None,
    current: Any,
    promote: bool,
) -> Outcome:
    """Write the reports; keep and install the candidate if it passed."""
    history = History(opts.model, keep=opts.keep)
    latest = opts.model.with_name(f"{opts.model.stem}.retrain.json")
    failed = [g["name"] for g in report["gates"] if g["verdict"] == "fail"]

    if not promote or opts.dry_run:
        rejected = history.dir / "rejected"
        rejected.mkdir(parents=True, exist_ok=True)
        base = rejected / f"{opts.model.stem}-{safe_version(report['version'])}"
        write_json(report, base.with_suffix(".json"))
        if png is not None:
            install(png, base.with_suffix(".png"))
        write_json(report, latest)
        _prune_rejected(rejected, opts.model.stem, opts.keep)
        event = "model.rejected" if not promote else "model.dry_run_passed"
        log.info(event, version=report["version"], failed=failed, report=str(latest))
        return Outcome(False, report, base.with_suffix(".json"))

    if current is not None and history.live_entry() is None:
        # Keep the model in service too, so `bflow rollback` can return to it.
        history.add(
            opts.model,
            {
                "version": current.metadata.model_version or "before-retrain",
                "promoted_at": "",
                "decision": "in service before this retraining",
            },
        )
    entry = history.add(candidate, report, png=png)
    install(entry.model, opts.model)
    history.prune()
    write_json(dict(report, sha256=entry.sha256), latest)
    log.info(
        "model.promoted",
        version=report["version"],
        previous=report["current_version"],
        path=str(opts.model),
        sha256=entry.sha256,
    )

    return Outcome(True, report, entry.report)


# --- rollback ----------------------------------------------------------------


def rollback(model: Path, *, to: str | None = None) -> HistoryEntry:
    """Put a kept model back in service, atomically.

    Without `to`, the newest kept model older than the one in service.

    Raises:
        ConfigError: nothing to roll back to, or no such version.
        ModelError: the kept file no longer loads (it is not installed).
    """
    with model_lock(model):
        return _rollback(model, to)


def _rollback(model: Path, to: str | None) -> HistoryEntry:
    from model.artifact import load_model

    history = History(model)
    entries = history.entries()
    live = history.live_entry()
    if to is not None:
        chosen = history.find(to)
        if chosen is None:
            known = ", ".join(e.version for e in entries) or "none"
            raise ConfigError(
                f"no kept model with version {to!r} in {str(history.dir)!r}; "
                f"kept versions: {known}"
            )
    else:
        older = entries
        if live is not None:
            older = [e for e in entries if e.model != live.model]
            older = [
                e
                for e in older
                if (e.promoted_at, e.version) < (live.promoted_at, live.version)
            ]
        if not older:
            raise ConfigError(
                f"no kept model older than the one in service in "
                f"{str(history.dir)!r}; name one with --to VERSION"
            )
        chosen = older[-1]

    expect = None
    if model.exists():
        with contextlib.suppress(ModelError):
            expect = load_model(model).metadata.kind
    load_model(chosen.model, expect_kind=expect)
    install(chosen.model, model)
    log.info(
        "model.rolled_back",
        path=str(model),
        version=chosen.version,
        previous=live.version if live else None,
    )

    return chosen


# --- command line ------------------------------------------------------------


def _retrain_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bflow retrain",
        description=(
            "Retrain the model on clean recent logs and put it in service if "
            "it passes the gates. Exit 0: promoted; 1: rejected (the model "
            "in service is kept); 2: error."
        ),
    )
    add = parser.add_argument
    add("--config", type=Path, help="the daemon's TOML file (model, notices)")
    add("--model", type=Path, help="model file in service (default: config's)")
    add("--kind", choices=sorted(LOG_OF_KIND), help="default: the model's kind")
    add(
        "--archive",
        type=Path,
        action="append",
        default=[],
        help="Zeek log archive folder; repeatable (default: config log_dir/..)",
    )
    add(
        "--notice-log",
        type=Path,
        action="append",
        default=[],
        help="extra notice log (ours or Zeek's); repeatable",
    )
    add(
        "--known-bad",
        type=Path,
        action="append",
        default=[],
        help="log of past attacks every candidate must still flag; repeatable",
    )
    add(
        "--allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="host never left out for raising notices; repeatable",
    )
    add(
        "--deny",
        action="append",
        default=[],
        metavar="CIDR",
        help="host whose connections are always left out; repeatable",
    )
    add("--allow-file", type=Path, help="file of allow CIDRs, one per line")
    add("--deny-file", type=Path, help="file of deny CIDRs, one per line")
    add("--window", default="7d", help="how far back to read (default 7d)")
    add("--now", help="end of the window, ISO 8601 (default: the clock)")
    add(
        "--holdout",
        type=float,
        default=0.2,
        help="share of the newest clean records held out (default 0.2)",
    )
    add("--target-fpr", type=float, help="default: the current model's")
    add("--keep", type=int, default=5, help="models kept in history (5)")
    add("--max-records", type=int, default=1_000_000)
    add("--min-records", type=int, default=200)
    add("--train-config", type=Path, help="JSON object of TrainConfig fields")
    add("--epochs", type=int, help="epochs of every stage")
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    add(
        "--migrate-schema",
        action="store_true",
        help="accept a changed feature schema layout",
    )
    add("--dry-run", action="store_true", help="train and gate, promote nothing")
    gates = parser.add_argument_group("gate limits (defaults in GateLimits)")
    defaults = GateLimits()
    gates.add_argument(
        "--fpr-factor",
        type=float,
        default=defaults.fpr_factor,
        help="held-out FPR may reach this many times the target",
    )
    gates.add_argument(
        "--min-separation",
        type=float,
        default=defaults.min_separation_auroc,
        help="least AUROC between held-out records and pseudo-anomalies",
    )
    gates.add_argument(
        "--max-detection-drop",
        type=float,
        default=defaults.max_detection_drop,
        help="largest fall in the share of noticed records flagged",
    )
    gates.add_argument(
        "--max-auroc-drop",
        type=float,
        default=defaults.max_auroc_drop,
        help="largest fall in AUROC on noticed records",
    )

    return parser


def retrain_main(argv: list[str]) -> int:
    """`bflow retrain`: 0 promoted, 1 rejected by a gate (errors raise).

    With `--config` and no `--model`/`--kind`, every model the daemon's
    config names is retrained in turn; the exit status is then 1 if any
    was rejected.
    """
    args = _retrain_parser().parse_args(argv)
    table = _config_table(args.config)
    targets = _targets(args, table)
    runs = [_options(args, table, model, kind) for model, kind in targets]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    status = EXIT_PROMOTED
    for opts in runs:
        outcome = retrain(opts)
        decision = outcome.report["decision"]
        print(f"{decision}: {outcome.report['version']}  ({outcome.report_path})")
        for gate in outcome.report["gates"]:
            print(f"  {gate['verdict']:<8} {gate['name']:<12} {gate['reason']}")
        if not outcome.promoted and "would promote" not in decision:
            status = EXIT_REJECTED

    return status


def _config_table(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    from sensor.config import read_toml

    return read_toml(path)


def _targets(
    args: argparse.Namespace, table: dict[str, Any]
) -> list[tuple[Path, str | None]]:
    """Which model files to retrain, with their kind when known."""
    if args.model is not None:
        return [(Path(args.model), args.kind)]
    kinds = [args.kind] if args.kind else list(LOG_OF_KIND)
    found = [(Path(table[f"{k}_model"]), k) for k in kinds if table.get(f"{k}_model")]
    if not found:
        raise ConfigError(
            "which model to retrain is unclear; pass --model FILE, or --config "
            "with the daemon's file that names flow_model or packet_model"
        )

    return found


def _options(
    args: argparse.Namespace,
    table: dict[str, Any],
    model: Path,
    kind: str | None,
) -> Options:
    """Merge flags with the daemon's config file into validated options."""
    model = Path(model).expanduser().absolute()
    if not model.parent.is_dir():
        raise ConfigError(
            f"model directory {str(model.parent)!r} does not exist; create it "
            "or fix --model"
        )

    archives = [Path(a) for a in args.archive]
    if not archives and table.get("log_dir"):
        # zeekctl: logs/current is the live folder (a symlink into the spool,
        # so not resolved), and logs/ beside it holds the dated archive.
        archives = [Path(table["log_dir"]).expanduser().absolute().parent]
    if not archives:
        raise ConfigError("no log archive given; pass --archive DIR")

    notice_logs = list(args.notice_log)
    if table.get("notice_dir"):
        # Ours: the current file and its archived generations.
        notice_dir = Path(table["notice_dir"])
        notice_logs += sorted(notice_dir.glob("bflow_notice.log"))
        notice_logs += sorted(notice_dir.glob("bflow_notice.[0-9]*.log"))

    allow = list(args.allow) + _lines(args.allow_file)
    deny = list(args.deny) + _lines(args.deny_file)

    overrides: dict[str, Any] = {}
    if args.train_config is not None:
        try:
            overrides = json.loads(args.train_config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"--train-config {str(args.train_config)!r} is not a readable "
                f"JSON object ({exc})"
            ) from None
        if not isinstance(overrides, dict):
            raise ConfigError("--train-config must hold a JSON object")
    if args.epochs is not None:
        overrides |= dict.fromkeys(
            ("epochs_ae", "epochs_flow", "epochs_clf"), args.epochs
        )

    if not 0 < args.holdout < 1:
        raise ConfigError(f"--holdout {args.holdout} must lie between 0 and 1")
    if args.target_fpr is not None and not 0 < args.target_fpr < 1:
        raise ConfigError(f"--target-fpr {args.target_fpr} must lie in (0, 1)")

    return Options(
        model=model,
        kind=kind,
        archives=archives,
        notice_logs=notice_logs,
        known_bad_logs=list(args.known_bad),
        allow=bl.HostList.parse(allow, origin="the allow list"),
        deny=bl.HostList.parse(deny, origin="the deny list"),
        now=bl.parse_now(args.now),
        window=bl.parse_window(args.window),
        holdout=args.holdout,
        target_fpr=args.target_fpr,
        keep=args.keep,
        max_records=args.max_records,
        min_records=args.min_records,
        train_overrides=overrides,
        migrate_schema=args.migrate_schema,
        dry_run=args.dry_run,
        seed=args.seed,
        limits=GateLimits(
            fpr_factor=args.fpr_factor,
            min_separation_auroc=args.min_separation,
            max_detection_drop=args.max_detection_drop,
            max_auroc_drop=args.max_auroc_drop,
        ),
        progress=sys.stderr.isatty(),
    )


def _lines(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(
            f"host list {str(path)!r} cannot be read ({exc.strerror})"
        ) from None


def rollback_main(argv: list[str]) -> int:
    """`bflow rollback`: put a kept model back in service."""
    parser = argparse.ArgumentParser(
        prog="bflow rollback",
        description="Restore a model kept in history/ beside the model file.",
    )
    parser.add_argument("--config", type=Path, help="the daemon's TOML file")
    parser.add_argument("--model", type=Path, help="model file in service")
    parser.add_argument("--kind", choices=sorted(LOG_OF_KIND))
    parser.add_argument("--to", metavar="VERSION", help="default: the previous")
    parser.add_argument("--list", action="store_true", help="list kept models")
    args = parser.parse_args(argv)

    model = args.model
    if model is None and args.config is not None:
        from sensor.config import read_toml

        table = read_toml(args.config)
        keys = [f"{args.kind}_model"] if args.kind else ["flow_model", "packet_model"]
        found = [table[k] for k in keys if table.get(k)]
        if len(found) == 1:
            model = Path(found[0])
    if model is None:
        raise ConfigError(
            "which model to roll back is unclear; pass --model FILE, or "
            "--config with --kind flow or --kind packet"
        )

    history = History(Path(model))
    if args.list:
        live = history.live_entry()
        for entry in history.entries():
            mark = "*" if live is not None and entry.model == live.model else " "
            print(f"{mark} {entry.version:<40} {entry.promoted_at or '-'}")
        return 0

    chosen = rollback(Path(model), to=args.to)
    print(f"restored {chosen.version} to {model}")

    return 0
