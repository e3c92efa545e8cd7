"""What the daemon counts, the periodic summary event, and Prometheus.

The counters live in one `Metrics` object updated by the pipeline after each
batch. Every `summary_interval` the daemon logs a `daemon.summary` event with
rates over the interval; with `metrics_port` set the same figures are served
for Prometheus on a loopback address.
"""

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LATENCY_WINDOW = 4096


@dataclass
class Metrics:
    """Running totals since start, plus a window of recent batch latencies."""

    records: dict[str, int] = field(default_factory=dict)
    scored: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    notices: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    notices_rejected: int = 0
    # From the tailer: a last line without newline in a finished file,
    # lines the reader could not decode, files it could not read at all.
    dropped: int = 0
    lines_skipped: int = 0
    bad_files: int = 0
    batches: int = 0
    errors: int = 0
    reloads: int = 0
    reloads_refused: int = 0
    lag_seconds: float = 0.0
    lag_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    _latencies: list[float] = field(default_factory=list)
    _last: dict[str, Any] = field(default_factory=dict)

    def add(self, table: dict[str, int], kind: str, n: int) -> None:
        """Add n to one counter of a per-log table."""
        table[kind] = table.get(kind, 0) + n

    def batch_done(self, seconds: float) -> None:
        """Record one batch's processing time (read to notices durable)."""
        self.batches += 1
        self._latencies.append(seconds)
        if len(self._latencies) > LATENCY_WINDOW:
            del self._latencies[: LATENCY_WINDOW // 2]

    def latency(self) -> dict[str, float]:
        """p50/p99/max of recent batch times in seconds (0 when none)."""
        if not self._latencies:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0}
        values = np.asarray(self._latencies)

        return {
            "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99)),
            "max": float(values.max()),
        }

    def summary(self) -> dict[str, Any]:
        """Figures for the `daemon.summary` event; rates since the last call."""
        now = time.monotonic()
        total = sum(self.records.values())
        last_t = self._last.get("t", self.started)
        last_total = self._last.get("records", 0)
        elapsed = max(now - last_t, 1e-9)
        self._last = {"t": now, "records": total}
        latency = self.latency()

        return {
            "records_per_s": round((total - last_total) / elapsed, 1),
            "records": dict(self.records),
            "scored": dict(self.scored),
            "skipped": dict(self.skipped),
            "notices": dict(self.notices),
            "duplicate_notices": self.duplicates,
            "notices_rejected": self.notices_rejected,
            "dropped": self.dropped,
            "lines_skipped": self.lines_skipped,
            "bad_files": self.bad_files,
            "lag_s": round(self.lag_seconds, 3),
            "lag_bytes": self.lag_bytes,
            "batch_p50_s": round(latency["p50"], 4),
            "batch_p99_s": round(latency["p99"], 4),
            "batches": self.batches,
            "errors": self.errors,
            "reloads": self.reloads,
            "reloads_refused": self.reloads_refused,
        }


class PrometheusExporter:
    """Serves `Metrics` on http://ADDRESS:PORT/metrics (loopback only)."""

    def __init__(self, metrics: Metrics, *, address: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        self.metrics = metrics
        registry = CollectorRegistry(auto_describe=False)

        outer = self

        class _Collector:
            def collect(self) -> Any:
                m = outer.metrics
                tables = (
                    ("bflow_records", "records read", m.records),
                    ("bflow_records_scored", "records scored", m.scored),
                    ("bflow_records_skipped", "records skipped", m.skipped),
                    ("bflow_notices", "notices written", m.notices),
                )
                for name, text, table in tables:
                    family = CounterMetricFamily(name, text, labels=["log"])
                    for log_name, value in sorted(table.items()):
                        family.add_metric([log_name], value)
                    yield family
                yield CounterMetricFamily(
                    "bflow_records_dropped",
                    "cut-off last lines of finished files",
                    value=m.dropped,
                )
                yield CounterMetricFamily(
                    "bflow_lines_skipped",
                    "log lines the reader could not decode",
                    value=m.lines_skipped,
                )
                yield CounterMetricFamily(
                    "bflow_bad_files",
                    "log files that could not be read",
                    value=m.bad_files,
                )
                yield CounterMetricFamily(
                    "bflow_batches", "batches processed", value=m.batches
                )
                yield CounterMetricFamily(
                    "bflow_model_reloads_refused",
                    "bad model files refused at reload",
                    value=m.reloads_refused,
                )
                yield GaugeMetricFamily(
                    "bflow_lag_seconds",
                    "age of the oldest unread log data",
                    value=m.lag_seconds,
                )
                yield GaugeMetricFamily(
                    "bflow_batch_p99_seconds",
                    "p99 time from batch read to notices durable",
                    value=m.latency()["p99"],
                )

        registry.register(_Collector())
        result = start_http_server(port, addr=address, registry=registry)
        # prometheus-client >= 0.20 returns (server, thread); keep the server.
        self._server: Any = result[0] if isinstance(result, tuple) else None

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
