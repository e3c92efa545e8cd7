"""One batch of a log in, the notices it raises out.

    batch -> features -> scores -> per-connection score -> notices

A `Scorer` holds one loaded model with its feature schema and threshold:
the flow model scores conn.log records, the packet model scores packet-log
records. `Pipeline.process` turns one record batch into notices and counts;
it writes nothing, so the daemon can make the notices durable before it
commits the read position.

When a connection's notice is emitted:

- flow: a conn.log record is a whole connection, so a record at or above the
  threshold raises the notice at once (several records of one uid in a
  batch: the highest score).
- packet: a model file with per-slot constants (`slot_norm`) gets each
  record's direction and index (`is_orig`, `pkt_index`) with its features,
  so its score is in the units its threshold was calibrated in.
  A connection's sampled packets may arrive in different batches.
  The notice is raised in the batch holding the connection's first packet at
  or above the threshold, with the highest score among that connection's
  packets in the batch; later packets of the same connection raise nothing
  more. Its identity (uid, kind, model version) does not depend on where the
  batch boundaries fall, so a restart that cuts batches differently repeats
  the same notice id and the notice writer drops the copy. Waiting for the
  conn.log record to close the connection would give the maximum over all
  its packets, but would hold read positions open for as long as
  connections last; the first crossing is what an operator wants to see.
"""

import base64
import binascii
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import structlog

from sensor.errors import BFlowError, LogFormatError, ModelError

log = structlog.get_logger(__name__)

# Which log each kind of model scores.
LOG_OF_KIND = {"flow": "conn", "packet": "bflow_packet"}
# Connections whose packet notice was raised, remembered so their later
# packets raise nothing more. Only an economy: a forgotten connection's
# repeat has the same notice id and the notice writer drops it. conn.log
# needs no memory, as a connection has one record there. A connection's
# sampled packets come within its first seconds, so a few thousand is
# plenty; each entry costs ~130 bytes, and 20,000 of them filled slowly
# enough (12 minutes at 27 packet notices/s) to show as RSS growth.
NOTIFIED_MEMORY = 2048


def meta_get(meta: Any, key: str, default: Any = None) -> Any:
    """Read one metadata item whether the artifact gives a dict or an object."""
    if isinstance(meta, dict):
        return meta.get(key, default)

    return getattr(meta, key, default)


@dataclass
class Scorer:
    """One model, ready to score one log.

    Attributes:
        kind: "flow" or "packet".
        featurize: record batch -> ((N', D) float32 features, (N,) bool mask
            of the records that the features are for).
    """

    kind: str
    path: Path
    model: Any
    featurize: Callable[[pa.RecordBatch], tuple[np.ndarray, np.ndarray]]
    threshold: float
    model_version: str
    identity: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def log(self) -> str:
        """The log this scorer reads."""
        return LOG_OF_KIND[self.kind]

    def score(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        """Score every eligible record of a batch.

        Returns:
            (N,) bool mask of the records scored and the (N',) float scores
            of those records, higher = more anomalous.
        """
        x, keep = self.featurize(batch)
        keep = np.asarray(keep, dtype=bool)
        if x.shape[0] == 0:
            return keep, np.zeros(0, dtype=np.float64)
        if getattr(self.model, "slot_norm", None) is not None:
            from model.calibrate import packet_slots

            # The model's threshold is in per-slot standardised units.
            kept = batch.filter(pa.array(keep))
            slots = packet_slots(_column(kept, "is_orig"), _column(kept, "pkt_index"))
            raw = self.model.score(x, slots=slots)
        else:
            raw = self.model.score(x)
        scores = np.asarray(raw, dtype=np.float64).reshape(-1)
        if scores.shape[0] != x.shape[0]:
            raise ModelError(
                f"model {str(self.path)!r} returned {scores.shape[0]} scores "
                f"for {x.shape[0]} records; the model file is broken, "
                "re-export it"
            )

        return keep, scores


def file_identity(path: Path) -> tuple[int, int, int, int]:
    """(device, inode, size, mtime in ns): changes when a file is replaced."""
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load_scorer(kind: str, path: Path, *, threshold: float | None = None) -> Scorer:
    """Load a model file, check it is a model of this kind, and probe it.

    The probe runs features built from an empty batch through nothing, and a
    fixed all-zero sample through the model: a model that cannot produce one
    finite score per sample is refused here, not on the first live batch.

    Raises:
        ModelError: naming the file and what is wrong with it.
    """
    from model.artifact import load_model

    identity = file_identity(path)
    model = load_model(path, expect_kind=kind)
    meta = model.metadata
    schema = meta_get(meta, "feature_schema")
    featurize = _featurizer(kind, schema, path)

    chosen = meta_get(meta, "threshold") if threshold is None else threshold
    if chosen is None or not np.isfinite(float(chosen)):
        raise ModelError(
            f"model {str(path)!r} has no usable threshold ({chosen!r}); "
            "calibrate it (bflow train) or set the threshold in the config"
        )
    version = str(meta_get(meta, "model_version", "") or "")
    if not version:
        raise ModelError(
            f"model {str(path)!r} has no model_version in its metadata; "
            "re-export it with bflow train"
        )

    width = _input_width(meta, schema)
    if width is not None:
        probe = np.zeros((2, width), dtype=np.float32)
        try:
            out = np.asarray(model.score(probe), dtype=np.float64).reshape(-1)
        except Exception as exc:
            raise ModelError(
                f"model {str(path)!r} fails on a probe batch of shape "
                f"{probe.shape}: {exc}; re-export it with bflow train"
            ) from exc
        if out.shape[0] != 2 or not np.isfinite(out).all():
            raise ModelError(
                f"model {str(path)!r} gave {out!r} for a probe batch of 2 "
                "samples; expected 2 finite scores. Re-export the model"
            )

    return Scorer(
        kind=kind,
        path=path,
        model=model,
        featurize=featurize,
        threshold=float(chosen),
        model_version=version,
        identity=identity,
    )


def _input_width(meta: Any, schema: Any) -> int | None:
    for key in ("input_dim", "input_len", "n_features"):
        value = meta_get(meta, key)
        if value is None and isinstance(schema, dict):
            value = schema.get(key)
        if isinstance(value, int) and value > 0:
            return value
    if isinstance(schema, dict) and isinstance(schema.get("columns"), list):
        return len(schema["columns"]) or None

    return None


def _featurizer(
    kind: str, schema: Any, path: Path
) -> Callable[[pa.RecordBatch], tuple[np.ndarray, np.ndarray]]:
    if not isinstance(schema, dict):
        raise ModelError(
            f"model {str(path)!r} has no feature schema in its metadata; "
            "re-export it with bflow train"
        )
    try:
        if kind == "packet":
            from model.features.packet import PacketFeatureConfig, packet_features

            config = PacketFeatureConfig.from_dict(schema)

            def packet(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
                x, keep = packet_features(batch, config)
                return np.asarray(x, dtype=np.float32), np.asarray(keep)

            return packet

        from model.features.flow import FlowFeatureSchema

        flow_schema = FlowFeatureSchema.from_dict(schema)

        def flow(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
            x = np.asarray(flow_schema.transform(batch), dtype=np.float32)
            return x, np.ones(batch.num_rows, dtype=bool)

        return flow
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"model {str(path)!r} has a {kind} feature schema this version "
            f"cannot use ({exc}); re-export the model with this version"
        ) from exc


@dataclass
class BatchResult:
    """What one batch gave: notices to write and counts to report."""

    log: str
    notices: list[Any] = field(default_factory=list)
    records: int = 0
    scored: int = 0
    skipped: int = 0
    # Connections at or above the threshold whose notice could not be made
    # (an empty uid, say); each is logged.
    rejected: int = 0
    keys: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Pipeline:
    """Scores batches with the current models; swaps models on reload."""

    def __init__(self, scorers: Iterable[Scorer]) -> None:
        self.scorers: dict[str, Scorer] = {s.log: s for s in scorers}
        self._notified: dict[str, OrderedDict[str, None]] = {
            kind: OrderedDict() for kind in LOG_OF_KIND
        }

    @property
    def logs(self) -> tuple[str, ...]:
        """The logs some model scores."""
        return tuple(self.scorers)

    def swap(self, scorer: Scorer) -> None:
        """Put a new, already validated model in place of the old one."""
        self.scorers[scorer.log] = scorer

    def process(
        self, batch: pa.RecordBatch, log_name: str, *, keys: bool = False
    ) -> BatchResult:
        """Score one batch of `log_name` and build its notices.

        Args:
            keys: also list a key per record (for the debug ledger).
        """
        started = time.perf_counter()
        result = BatchResult(log=log_name, records=batch.num_rows)
        scorer = self.scorers.get(log_name)
        if scorer is None or batch.num_rows == 0:
            result.skipped = batch.num_rows
            return result

        keep, scores, unusable = _score_tolerant(scorer, batch)
        if unusable:
            log.warning(
                "records.unusable",
                log=log_name,
                records=len(unusable),
                reason=unusable[0],
                action="skipped",
            )
        finite = np.isfinite(scores)
        if not finite.all():
            log.warning(
                "records.unscorable",
                log=log_name,
                records=int((~finite).sum()),
                reason="the model gave a score that is not a finite number",
                action="skipped",
            )
            keep = keep.copy()
            keep[np.flatnonzero(keep)[~finite]] = False
            scores = scores[finite]
        has_uid = _present(batch, "uid")
        kept = np.flatnonzero(keep)
        result.scored = int(has_uid[kept].sum())
        result.skipped = batch.num_rows - result.scored
        if keys:
            result.keys = record_keys(batch, log_name)

        # Only connections with a record at or above the threshold need the
        # per-connection maximum; most batches have none.
        crossing = kept[(scores >= scorer.threshold) & has_uid[kept]]
        best: dict[str, list[Any]] = {}
        if crossing.size:
            uids = _column(batch, "uid")
            wanted = {uids[i] for i in crossing}
            for j, i in enumerate(kept):
                uid = uids[i]
                if uid not in wanted:
                    continue
                s = float(scores[j])
                entry = best.setdefault(uid, [s, -1])
                entry[0] = max(entry[0], s)
                if entry[1] < 0 and s >= scorer.threshold:
                    entry[1] = int(i)

        remembered = self._notified[scorer.kind]
        for uid, (s, row) in best.items():
            if uid in remembered:
                continue
            try:
                result.notices.append(_notice(batch, row, scorer, s))
            except BFlowError as exc:
                result.rejected += 1
                log.warning("notice.unusable", log=log_name, uid=uid, error=str(exc))
                continue
            if scorer.kind == "packet":
                remembered[uid] = None
                if len(remembered) > NOTIFIED_MEMORY:
                    remembered.popitem(last=False)

        result.seconds = time.perf_counter() - started

        return result


def _score_tolerant(
    scorer: Scorer, batch: pa.RecordBatch
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Score a batch; records the features refuse are left out, not fatal.

    One bad record (a frame that is not base64, an unknown link type) makes
    the feature code refuse its whole batch. The batch is then split in
    halves until the refused records are alone, so only they are skipped.

    Returns:
        The keep mask and scores of `Scorer.score`, and the reason each
        refused record was refused.
    """
    try:
        keep, scores = scorer.score(batch)
        return keep, scores, []
    except LogFormatError as exc:
        if batch.num_rows <= 1:
            return np.zeros(batch.num_rows, dtype=bool), np.zeros(0), [str(exc)]

    middle = batch.num_rows // 2
    parts = [
        _score_tolerant(scorer, batch.slice(0, middle)),
        _score_tolerant(scorer, batch.slice(middle)),
    ]

    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        parts[0][2] + parts[1][2],
    )


def _column(batch: pa.RecordBatch, name: str) -> list[Any]:
    index = batch.schema.get_field_index(name)
    if index < 0:
        return [None] * batch.num_rows

    return batch.column(index).to_pylist()


def _present(batch: pa.RecordBatch, name: str) -> np.ndarray:
    index = batch.schema.get_field_index(name)
    if index < 0:
        return np.zeros(batch.num_rows, dtype=bool)
    column = batch.column(index)

    return ~np.asarray(column.is_null().to_numpy(zero_copy_only=False))


def record_keys(batch: pa.RecordBatch, log_name: str) -> list[str]:
    """A key per record that is the same however the log is cut into batches.

    conn.log: the uid. Packet log: uid, direction and packet index.
    """
    uids = _column(batch, "uid")
    if log_name != "bflow_packet":
        return [f"{log_name}:{u}" for u in uids]
    origs = _column(batch, "is_orig")
    indexes = _column(batch, "pkt_index")

    return [
        f"{log_name}:{u}:{'o' if o else 'r'}:{n}"
        for u, o, n in zip(uids, origs, indexes, strict=True)
    ]


def _when(value: Any) -> Any:
    """A record's `ts` as the notice takes it: an aware datetime or seconds."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if value is None:
        return 0.0

    return float(value)


def _proto_from_frame(frame: Any, link_type: Any) -> str:
    """The transport protocol of a packet-log frame, read from its IP header."""
    try:
        data = base64.b64decode(frame or "", validate=False)
    except (binascii.Error, ValueError):
        return "unknown"
    offset = 0
    if link_type in (None, "LINK_ETHERNET", "LINK_UNKNOWN"):
        offset = 12
        ethertype = int.from_bytes(data[offset : offset + 2], "big")
        offset += 2
        while ethertype in (0x8100, 0x88A8) and len(data) >= offset + 4:
            ethertype = int.from_bytes(data[offset + 2 : offset + 4], "big")
            offset += 4
    if len(data) <= offset:
        return "unknown"
    version = data[offset] >> 4
    if version == 4 and len(data) > offset + 9:
        number = data[offset + 9]
    elif version == 6 and len(data) > offset + 6:
        number = data[offset + 6]
    else:
        return "unknown"

    return {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}.get(number, "unknown")


def _notice(batch: pa.RecordBatch, row: int, scorer: Scorer, score: float) -> Any:
    from sensor.notice import Notice

    record = {
        name: batch.column(i)[row].as_py() for i, name in enumerate(batch.schema.names)
    }
    if scorer.kind == "flow":
        proto = str(record.get("proto") or "unknown")
        what = "connection"
    else:
        proto = _proto_from_frame(record.get("frame"), record.get("link_type"))
        what = "payload packet"
    orig_h, orig_p = record.get("id.orig_h"), record.get("id.orig_p")
    resp_h, resp_p = record.get("id.resp_h"), record.get("id.resp_p")
    msg = (
        f"{scorer.kind} model {scorer.model_version} scored a {what} "
        f"{orig_h}:{orig_p} -> {resp_h}:{resp_p}/{proto} at {score:.4g}, "
        f"threshold {scorer.threshold:.4g}"
    )

    return Notice(
        ts=_when(record.get("ts")),
        uid=str(record.get("uid")),
        orig_h=str(orig_h),
        orig_p=int(orig_p or 0),
        resp_h=str(resp_h),
        resp_p=int(resp_p or 0),
        proto=proto,
        kind=scorer.kind,
        score=score,
        threshold=scorer.threshold,
        model_version=scorer.model_version,
        msg=msg,
    )
