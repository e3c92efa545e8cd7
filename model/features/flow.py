"""Flow features: one vector per conn.log record.

`FlowFeatureSchema.fit` learns, from training records only, the category
vocabularies and the centring of the numeric fields; `transform` then maps
any batch of conn.log records (Arrow, fields by name) to a (N, D) float32
matrix, and `to_dict`/`from_dict` store the schema in a model artifact.

What goes in:

- numeric fields, as log1p: `duration` (seconds), `orig_bytes`,
  `resp_bytes`, `orig_pkts`, `resp_pkts`, `orig_ip_bytes`,
  `resp_ip_bytes`, `missed_bytes`, plus bytes per packet each way; then
  centred and scaled with the training mean and standard deviation;
- one-hot categories with an "other" slot for values not seen in training:
  `proto`, `service`, `conn_state`, the responder port (for TCP/UDP) and
  the ICMP type (for ICMP, where Zeek puts type and code in the port
  fields: they never feed the port features);
- port classes of both ports (well-known, registered, ephemeral; none for
  ICMP and `unknown_transport`);
- `history`: log1p of the count of each history letter, and its length;
- with ``use_direction`` only, `local_orig` and `local_resp` (true / false
  / unset). In the CTU captures these two alone separate the attacks,
  which is why they can be left out.

Unset values and absent fields (older Zeek, site filters) are handled in
one place, `_numeric`: a numeric field that is unset takes its training
median and sets the field's "was missing" indicator; an unset category is
its own "missing" slot. Nothing is read as 0 unless Zeek logged 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from sensor.errors import ConfigError, LogFormatError

log = structlog.get_logger(__name__)

SCHEMA_VERSION: Final = 1
NUMERIC_FIELDS: Final = (
    "duration",
    "orig_bytes",
    "resp_bytes",
    "orig_pkts",
    "resp_pkts",
    "orig_ip_bytes",
    "resp_ip_bytes",
    "missed_bytes",
)
# Derived from the fields above: bytes per packet, each direction.
RATIO_FIELDS: Final = (
    ("orig_ip_bytes", "orig_pkts"),
    ("resp_ip_bytes", "resp_pkts"),
)
CATEGORY_FIELDS: Final = ("proto", "service", "conn_state")
DIRECTION_FIELDS: Final = ("local_orig", "local_resp")
HISTORY_LETTERS: Final = "ShADadFfRrCcGgIiQqTtWw^"
REQUIRED_FIELDS: Final = ("proto",)
_PORT_PROTOS: Final = ("tcp", "udp")
_PORT_CLASS_EDGES: Final = (1024, 49152)
_OTHER: Final = "<other>"
_MISSING: Final = "<unset>"


def _column(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array | None:
    if name not in batch.schema.names:
        return None
    col = batch.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()

    return col


def _as_float(col: pa.Array) -> npt.NDArray[np.float64]:
    """Values as float64 with NaN for unset; durations in seconds."""
    if pa.types.is_duration(col.type):
        scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[col.type.unit]
        values = pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)
        out = np.asarray(values, dtype=np.float64) * scale
    else:
        out = np.asarray(
            pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
        )
    if col.null_count:
        out = np.where(pc.is_null(col).to_numpy(zero_copy_only=False), np.nan, out)

    return out


def _as_text(col: pa.Array | None, n: int) -> pa.Array:
    if col is None:
        return pa.nulls(n, pa.string())
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        col = pc.cast(col, pa.string())

    return col


def _vocab(values: pa.Array, max_size: int, min_count: int) -> list[str]:
    counts = Counter(v for v in values.to_pylist() if v is not None)
    common = [v for v, c in counts.most_common(max_size) if c >= min_count]

    return sorted(common)


def _one_hot(values: pa.Array, vocab: Sequence[str]) -> npt.NDArray[np.float32]:
    """(N, len(vocab) + 2): the vocabulary, then "other", then "unset"."""
    n = len(values)
    out = np.zeros((n, len(vocab) + 2), dtype=np.float32)
    index = pc.index_in(values, value_set=pa.array(list(vocab), pa.string()))
    idx = index.to_numpy(zero_copy_only=False)
    missing = pc.is_null(values).to_numpy(zero_copy_only=False)
    unknown = pc.is_null(index).to_numpy(zero_copy_only=False) & ~missing
    idx = np.where(pc.is_null(index).to_numpy(zero_copy_only=False), 0, idx)
    slot = np.where(missing, len(vocab) + 1, np.where(unknown, len(vocab), idx))
    out[np.arange(n), slot.astype(np.int64)] = 1.0

    return out


@dataclass
class FlowFeatureSchema:
    """The flow feature schema: vocabularies and numeric centring.

    Build it with `fit` on training records; an unfitted schema cannot
    transform.
    """

    use_direction: bool = False
    max_vocab: int = 32
    min_count: int = 2
    vocab: dict[str, list[str]] = field(default_factory=dict)
    medians: dict[str, float] = field(default_factory=dict)
    means: list[float] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)

    @property
    def fitted(self) -> bool:
        """Whether `fit` (or `from_dict`) has set the learned values."""
        return bool(self.means)

    @property
    def columns(self) -> list[str]:
        """Name of every output column, in order."""
        names = [f"log.{f}" for f in NUMERIC_FIELDS]
        names += [f"log.{a}_per_{b}" for a, b in RATIO_FIELDS]
        names += [f"missing.{f}" for f in NUMERIC_FIELDS]
        for name in (*CATEGORY_FIELDS, "resp_port", "icmp_type"):
            vocab = self.vocab.get(name, [])
            names += [f"{name}={v}" for v in (*vocab, _OTHER, _MISSING)]
        for side in ("orig", "resp"):
            names += [
                f"{side}_port_class={c}"
                for c in ("well_known", "registered", "ephemeral")
            ]
        names += [f"history.{c}" for c in HISTORY_LETTERS] + ["history.len"]
        if self.use_direction:
            for name in DIRECTION_FIELDS:
                names += [f"{name}=T", f"{name}=F", f"{name}={_MISSING}"]

        return names

    def fit(self, batch: pa.RecordBatch | pa.Table) -> FlowFeatureSchema:
        """Learn vocabularies, medians and scaling from training records."""
        _check_required(batch)
        n = batch.num_rows
        for name in CATEGORY_FIELDS:
            self.vocab[name] = _vocab(
                _as_text(_column(batch, name), n), self.max_vocab, self.min_count
            )
        resp_port, icmp_type = _port_texts(batch)
        self.vocab["resp_port"] = _vocab(resp_port, self.max_vocab, self.min_count)
        self.vocab["icmp_type"] = _vocab(icmp_type, self.max_vocab, self.min_count)

        raw = _raw_numeric(batch)
        self.medians = {
            f: float(np.nanmedian(raw[:, i])) if np.isfinite(raw[:, i]).any() else 0.0
            for i, f in enumerate(NUMERIC_FIELDS)
        }
        numeric = self._numeric(batch)[0]
        self.means = numeric.mean(axis=0).astype(float).tolist()
        self.stds = np.maximum(numeric.std(axis=0), 1e-3).astype(float).tolist()
        log.info("flow_schema.fitted", records=n, features=len(self.columns))

        return self

    def _numeric(
        self, batch: pa.RecordBatch | pa.Table
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
        """Log-scaled numeric block and its "was missing" indicators.

        The one place where unset or absent numeric values are imputed: the
        training median of the field, flagged in the indicator column.
        """
        raw = _raw_numeric(batch)
        missing = ~np.isfinite(raw)
        medians = np.array([self.medians.get(f, 0.0) for f in NUMERIC_FIELDS])
        filled = np.where(missing, medians[None, :], np.maximum(raw, 0.0))
        ratios = [
            filled[:, NUMERIC_FIELDS.index(a)]
            / np.maximum(filled[:, NUMERIC_FIELDS.index(b)], 1.0)
            for a, b in RATIO_FIELDS
        ]
        values = np.log1p(np.column_stack([filled, *ratios]))

        return values, missing.astype(np.float32)

    def transform(self, batch: pa.RecordBatch | pa.Table) -> npt.NDArray[np.float32]:
        """Features of conn.log records: (N, len(columns)) float32.

        Raises:
            ConfigError: the schema has not been fitted.
            LogFormatError: a field the features cannot do without is absent.
        """
        if not self.fitted:
            raise ConfigError(
                "flow feature schema is not fitted; call fit() on training "
                "records first"
            )
        _check_required(batch)
        n = batch.num_rows
        numeric, missing = self._numeric(batch)
        scaled = (numeric - np.array(self.means)) / np.array(self.stds)
        blocks: list[npt.NDArray[np.float32]] = [scaled.astype(np.float32), missing]

        for name in CATEGORY_FIELDS:
            blocks.append(_one_hot(_as_text(_column(batch, name), n), self.vocab[name]))
        resp_port, icmp_type = _port_texts(batch)
        blocks.append(_one_hot(resp_port, self.vocab["resp_port"]))
        blocks.append(_one_hot(icmp_type, self.vocab["icmp_type"]))
        blocks.append(_port_classes(batch, "id.orig_p"))
        blocks.append(_port_classes(batch, "id.resp_p"))
        blocks.append(_history(_as_text(_column(batch, "history"), n)))
        if self.use_direction:
            for name in DIRECTION_FIELDS:
                blocks.append(_bool_one_hot(_column(batch, name), n))

        return np.concatenate(blocks, axis=1)

    def to_dict(self) -> dict[str, Any]:
        """The feature schema as stored in a model artifact."""
        return {
            "kind": "flow",
            "version": SCHEMA_VERSION,
            "use_direction": self.use_direction,
            "max_vocab": self.max_vocab,
            "min_count": self.min_count,
            "vocab": {k: list(v) for k, v in self.vocab.items()},
            "medians": dict(self.medians),
            "means": list(self.means),
            "stds": list(self.stds),
            "columns": self.columns,
            "n_features": len(self.columns),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlowFeatureSchema:
        """Rebuild a fitted schema from `to_dict` output.

        Raises:
            ConfigError: not a flow schema, or one from another version.
        """
        if data.get("kind") != "flow" or data.get("version") != SCHEMA_VERSION:
            raise ConfigError(
                f"feature schema kind={data.get('kind')!r} "
                f"version={data.get('version')!r}; expected a flow schema of "
                f"version {SCHEMA_VERSION}: retrain the model with this version"
            )
        schema = cls(
            use_direction=bool(data["use_direction"]),
            max_vocab=int(data["max_vocab"]),
            min_count=int(data["min_count"]),
            vocab={k: list(v) for k, v in data["vocab"].items()},
            medians={k: float(v) for k, v in data["medians"].items()},
            means=[float(v) for v in data["means"]],
            stds=[float(v) for v in data["stds"]],
        )
        if schema.columns != data.get("columns", schema.columns):
            raise ConfigError(
                "flow feature schema columns do not match what this code "
                "builds from it; retrain the model with this version"
            )

        return schema


def _check_required(batch: pa.RecordBatch | pa.Table) -> None:
    absent = [f for f in REQUIRED_FIELDS if f not in batch.schema.names]
    if absent:
        raise LogFormatError(
            f"conn.log records lack the field(s) {absent}; flow features "
            "need them (is this a conn.log?)"
        )


def _raw_numeric(batch: pa.RecordBatch | pa.Table) -> npt.NDArray[np.float64]:
    n = batch.num_rows
    out = np.full((n, len(NUMERIC_FIELDS)), np.nan)
    for i, name in enumerate(NUMERIC_FIELDS):
        col = _column(batch, name)
        if col is not None:
            out[:, i] = _as_float(col)

    return out


def _ports(batch: pa.RecordBatch | pa.Table, name: str) -> npt.NDArray[np.float64]:
    col = _column(batch, name)
    if col is None:
        return np.full(batch.num_rows, np.nan)

    return _as_float(col)


def _port_texts(batch: pa.RecordBatch | pa.Table) -> tuple[pa.Array, pa.Array]:
    """Responder port (TCP/UDP only) and ICMP type, as category text."""
    n = batch.num_rows
    proto = _as_text(_column(batch, "proto"), n)
    is_port = pc.is_in(proto, value_set=pa.array(list(_PORT_PROTOS)))
    is_icmp = pc.equal(proto, "icmp")
    texts = []
    for name, keep in (("id.resp_p", is_port), ("id.orig_p", is_icmp)):
        col = _column(batch, name)
        if col is None:
            texts.append(pa.nulls(n, pa.string()))
            continue
        text = pc.cast(pc.cast(col, pa.int64()), pa.string())
        texts.append(pc.if_else(pc.fill_null(keep, False), text, None))

    return texts[0], texts[1]


def _port_classes(
    batch: pa.RecordBatch | pa.Table, name: str
) -> npt.NDArray[np.float32]:
    n = batch.num_rows
    proto = _as_text(_column(batch, "proto"), n)
    is_port = pc.is_in(proto, value_set=pa.array(list(_PORT_PROTOS))).to_numpy(
        zero_copy_only=False
    )
    port = _ports(batch, name)
    valid = is_port & np.isfinite(port)
    low, high = _PORT_CLASS_EDGES
    out = np.zeros((n, 3), dtype=np.float32)
    out[:, 0] = valid & (port < low)
    out[:, 1] = valid & (port >= low) & (port < high)
    out[:, 2] = valid & (port >= high)

    return out


def _history(history: pa.Array) -> npt.NDArray[np.float32]:
    cols = [
        pc.count_substring(history, pattern=c).to_numpy(zero_copy_only=False)
        for c in HISTORY_LETTERS
    ]
    cols.append(pc.utf8_length(history).to_numpy(zero_copy_only=False))
    counts = np.column_stack(
        [np.nan_to_num(np.asarray(c, dtype=np.float64)) for c in cols]
    )

    return np.log1p(counts).astype(np.float32)


def _bool_one_hot(col: pa.Array | None, n: int) -> npt.NDArray[np.float32]:
    out = np.zeros((n, 3), dtype=np.float32)
    if col is None:
        out[:, 2] = 1.0
        return out
    if not pa.types.is_boolean(col.type):
        text = _as_text(col, n)
        col = pc.is_in(text, value_set=pa.array(["T", "true", "True"]))
        col = pc.if_else(pc.is_null(text), None, col)
    values = col.to_numpy(zero_copy_only=False)
    missing = pc.is_null(col).to_numpy(zero_copy_only=False)
    out[:, 0] = ~missing & (values == True)  # noqa: E712
    out[:, 1] = ~missing & (values == False)  # noqa: E712
    out[:, 2] = missing

    return out
