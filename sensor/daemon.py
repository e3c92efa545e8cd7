"""`bflow run`: watch a Zeek log directory and write notices, unattended.

One thread does all the work in a loop, so there is one order of events to
reason about::

    poll the tailer -> score each batch -> write the notices (fsync)
        -> [debug ledger] -> commit the read positions

Exactly once. The read positions move only after the notices of those
records are on disk. A kill at any instant leaves the records after the
last commit to be read and scored again on restart; their notices may
already be in the file, and the notice writer skips ids already present
(a notice's id is its kind, uid and model version, whatever the batch
boundaries), so nothing is lost and no notice is repeated. With the debug
ledger on, even the scoring is not repeated: the records of the last
ledger line are skipped when they come back (see `Ledger`).

Backpressure. The tailer hands out at most `batch_size` records per log
per poll and nothing is read ahead, so memory stays bounded. When scoring
is slower than Zeek, the unread part of the logs grows on disk and shows as
lag (`lag_s`, `lag_bytes`); no record is dropped. Lines the reader cannot
use are counted (`lines_skipped`, `dropped`, `bad_files`) in every summary.

A full or failing disk under the notice directory stops the pipeline where
it is: the notices in hand are retried with back-off (1 s doubling to 30 s),
nothing is read or committed meanwhile, an error event says what to do, and
the loop goes on by itself once space is back. Stopping while it waits exits
with status 75 and commits nothing.

Signals: SIGTERM and SIGINT finish the batch in hand, commit, and exit 0.
SIGHUP reloads the model files; so does a model file replaced on disk. A
new model is loaded and probed first and swapped in only if it passes; a
bad one is refused with an error event and the old one keeps scoring.

systemd: READY once the models are loaded and the tailer is open, WATCHDOG
at most once a second while the loop turns (a scoring call that hangs stops
the pings), STATUS every five seconds and while waiting on the disk.
"""

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Final

import structlog

from sensor.config import (
    HELP,
    PARSERS,
    Config,
    build_config,
    check_paths,
    settings_toml,
)
from sensor.errors import BFlowError, ConfigError, ModelError
from sensor.metrics import Metrics, PrometheusExporter
from sensor.pipeline import LOG_OF_KIND, Pipeline, Scorer, file_identity, load_scorer
from sensor.sdnotify import Notifier

log = structlog.get_logger(__name__)

# Exit status when notices cannot be written (EX_TEMPFAIL): systemd restarts
# the unit after RestartSec and the unread records are read again then.
EXIT_NOTICE_WRITE = 75


class NoticeWriteError(BFlowError):
    """The notice log cannot be written (disk full, permissions, ...)."""


class Ledger:
    """Debug record of every committed record key, one commit per line.

    Tests use it to show that no record is scored twice: each key must
    appear in exactly one line. It is written after the notices and before
    the read positions are committed. If the daemon dies between the two,
    the records of the last line are read again on restart; the daemon then
    skips the ones already in the last line instead of scoring them again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.redo: set[str] = set()
        self._txn = 0
        if path.exists():
            self._recover()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _recover(self) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            # A line cut by a crash was never a commit: drop it.
            with open(self.path, "r+b") as stream:
                stream.truncate(len(complete))
        lines = complete.splitlines()
        if lines:
            last = json.loads(lines[-1])
            self._txn = int(last["txn"])
            self.redo = set(last["keys"])

    def append(self, keys: list[str]) -> None:
        """Record one commit's keys durably."""
        self._txn += 1
        line = json.dumps({"txn": self._txn, "pid": os.getpid(), "keys": keys})
        os.write(self._fd, line.encode() + b"\n")
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


_ABSENT_HINT: Final = {
    "conn": "Zeek writes conn.log once it sees traffic; check log_dir",
    "bflow_packet": (
        "packet scoring stays idle until Zeek writes it: load the scripts "
        "in zeek_scripts/ (zkg install), or unset packet_model"
    ),
}


def absent_logs(log_dir: Path, logs: Iterable[str]) -> list[str]:
    """The logs to score that `log_dir` does not hold yet (plain or gzip)."""
    return [name for name in logs if not any(log_dir.glob(f"{name}.*"))]


class Daemon:
    """Owns the tailer, the models, the notice writer and the main loop."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None):
        self.config = config
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        _limit_threads(config.threads)
        self.pipeline = Pipeline(self._load_models())
        self._stop_reason: str | None = None
        self._reload_requested = False
        self._baseline_saved = False
        self._refused: dict[str, tuple[int, int, int, int]] = {}

    def _load_models(self) -> list[Scorer]:
        scorers = []
        for kind in LOG_OF_KIND:
            path: Path | None = getattr(self.config, f"{kind}_model")
            if path is None:
                continue
            threshold = getattr(self.config, f"{kind}_threshold")
            scorer = load_scorer(kind, path, threshold=threshold)
            log.info(
                "model.active",
                kind=kind,
                path=str(path),
                model_version=scorer.model_version,
                threshold=scorer.threshold,
            )
            scorers.append(scorer)

        return scorers

    def model_versions(self) -> str:
        """The models scoring now, as `flow=<version>,packet=<version>`."""
        scorers = sorted(self.pipeline.scorers.values(), key=lambda s: s.kind)

        return ",".join(f"{s.kind}={s.model_version}" for s in scorers)

    def request_stop(self, reason: str) -> None:
        """Finish the batch in hand, commit, and leave the loop."""
        self._stop_reason = self._stop_reason or reason

    def request_reload(self) -> None:
        """Reload the model files before the next batch."""
        self._reload_requested = True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.request_reload()
        else:
            self.request_stop(signal.Signals(signum).name)

    def reload_models(self, *, forced: bool) -> None:
        """Swap in model files that changed (all of them when `forced`)."""
        for kind in LOG_OF_KIND:
            path: Path | None = getattr(self.config, f"{kind}_model")
            current = self.pipeline.scorers.get(LOG_OF_KIND[kind])
            if path is None or current is None:
                continue
            try:
                identity = file_identity(path)
            except OSError as exc:
                log.error(
                    "model.reload_refused",
                    kind=kind,
                    path=str(path),
                    error=f"cannot stat the model file: {exc.strerror}",
                    keeps=current.model_version,
                )
                self.metrics.reloads_refused += 1
                continue
            unchanged = identity == current.identity
            if not forced and (unchanged or self._refused.get(kind) == identity):
                continue

            threshold = getattr(self.config, f"{kind}_threshold")
            try:
                scorer = load_scorer(kind, path, threshold=threshold)
            except (ModelError, OSError) as exc:
                self._refused[kind] = identity
                self.metrics.reloads_refused += 1
                log.error(
                    "model.reload_refused",
                    kind=kind,
                    path=str(path),
                    error=str(exc),
                    keeps=current.model_version,
                )
                continue
            self.pipeline.swap(scorer)
            self._refused.pop(kind, None)
            self.metrics.reloads += 1
            log.info(
                "model.reloaded",
                kind=kind,
                path=str(path),
                old_version=current.model_version,
                model_version=scorer.model_version,
                threshold=scorer.threshold,
            )

    def run(self) -> int:
        """Run until stopped; returns the exit status."""
        from sensor.notice import NoticeWriter
        from sensor.tail import LogTailer

        config = self.config
        exporter = None
        if config.metrics_port:
            try:
                exporter = PrometheusExporter(
                    self.metrics,
                    address=config.metrics_address,
                    port=config.metrics_port,
                )
            except OSError as exc:
                raise ConfigError(
                    f"metrics endpoint {config.metrics_address}:"
                    f"{config.metrics_port} cannot be opened ({exc.strerror}); "
                    "pick a free metrics_port or set it to 0"
                ) from None
        writer = NoticeWriter(config.notice_log, model_version=self.model_versions())
        ledger = Ledger(config.ledger) if config.ledger else None
        try:
            tailer = LogTailer(
                config.log_dir,
                state_file=config.tail_state,
                log_paths=self.pipeline.logs,
                batch_size=config.batch_size,
                poll_interval=config.poll_interval,
                finish_grace=config.finish_grace,
            )
        except BaseException:
            _close(writer)
            if exporter is not None:
                exporter.close()
            raise

        try:
            with _signals(self._on_signal):
                self._loop(tailer, writer, ledger)
        except NoticeWriteError as exc:
            log.error(
                "notices.write_failed", path=str(config.notice_log), error=str(exc)
            )
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_NOTICE_WRITE
        finally:
            self.notifier.stopping()
            self._update_lag(tailer)
            tailer.close()
            _close(writer)
            if ledger is not None:
                ledger.close()
            if exporter is not None:
                exporter.close()
            log.info("daemon.stopped", reason=self._stop_reason, **self._totals())
            self.notifier.close()

        return 0

    def _totals(self) -> dict[str, Any]:
        """Figures for `daemon.stopped`: the whole run, idle time included.

        The summary's `records_per_s` covers the time since the last
        `daemon.summary`, which says nothing about a run that has ended, so
        it is left out. The rate over the run is named for what it is: the
        daemon spends most of an ordinary run waiting for Zeek, and cannot
        tell waiting from reading inside the tailer's poll, so it reports no
        rate over busy time (`bench/daemon` measures the capacity, and
        `batch_p50_s`/`batch_p99_s` the cost of a batch).
        """
        figures = self.metrics.summary()
        del figures["records_per_s"]
        uptime = max(time.monotonic() - self.metrics.started, 1e-9)
        total = sum(self.metrics.records.values())

        return {
            "uptime_s": round(uptime, 1),
            "records_per_s_over_uptime": round(total / uptime, 1),
            **figures,
        }

    def _loop(self, tailer: Any, writer: Any, ledger: Ledger | None) -> None:
        config = self.config
        started = time.monotonic()
        last_summary = last_model_check = last_status = started
        last_ping = 0.0
        last_data = started
        kinds = ",".join(self.pipeline.logs)
        self.notifier.ready(f"scoring {kinds} from {config.log_dir}")
        log.info(
            "daemon.started",
            log_dir=str(config.log_dir),
            notice_log=str(config.notice_log),
            logs=list(self.pipeline.logs),
            watchdog_s=self.notifier.watchdog_interval,
        )
        for missing in absent_logs(config.log_dir, self.pipeline.logs):
            log.warning(
                "log.absent",
                log=missing,
                log_dir=str(config.log_dir),
                hint=_ABSENT_HINT.get(missing, ""),
            )

        while self._stop_reason is None:
            now = time.monotonic()
            if self._reload_requested:
                self._reload_requested = False
                self.reload_models(forced=True)
                writer.model_version = self.model_versions()
            elif (
                config.model_check_interval
                and now - last_model_check >= config.model_check_interval
            ):
                last_model_check = now
                self.reload_models(forced=False)
                writer.model_version = self.model_versions()

            got = self._step(tailer, writer, ledger)
            now = time.monotonic()
            if got:
                last_data = now

            if now - last_ping >= 1.0:
                self.notifier.watchdog()
                last_ping = now
            if now - last_status >= 5.0:
                last_status = now
                self._update_lag(tailer)
                m = self.metrics
                self.notifier.status(
                    f"{sum(m.records.values())} records, "
                    f"{sum(m.notices.values())} notices, lag {m.lag_seconds:.1f} s"
                )
            if now - last_summary >= config.summary_interval:
                last_summary = now
                self._update_lag(tailer)
                log.info("daemon.summary", **self.metrics.summary())

            if config.duration and now - started >= config.duration:
                self.request_stop("duration")
            if config.stop_when_idle and now - last_data >= config.stop_when_idle:
                self.request_stop("idle")

    def _step(self, tailer: Any, writer: Any, ledger: Ledger | None) -> int:
        """One poll: score, write notices, commit. Returns records read."""
        polled = tailer.poll(self.config.poll_interval)
        if not self._baseline_saved:
            # Before the first batch is scored, have the tailer write down
            # the files it has opened (at offset 0) and when it looked: if
            # this run dies before its first real commit and the logs then
            # rotate, the next run still reads the rotated files.
            tailer.commit([])
            self._baseline_saved = True
        if not polled:
            return 0

        notices: list[Any] = []
        keys: list[str] = []
        results = []
        for item in polled:
            batch, log_name = item.batch.records, _log_name(item.batch)
            t0 = time.perf_counter()
            if ledger is not None and ledger.redo:
                batch = self._without_redone(batch, log_name, ledger)
            result = self.pipeline.process(batch, log_name, keys=ledger is not None)
            result.records = item.batch.records.num_rows
            results.append((result, time.perf_counter() - t0))
            notices.extend(result.notices)
            keys.extend(result.keys)

        written = self._write_notices(writer, notices) if notices else 0
        if ledger is not None:
            ledger.append(keys)
            ledger.redo = set()
        tailer.commit([item.cursor for item in polled])

        m = self.metrics
        for result, seconds in results:
            m.add(m.records, result.log, result.records)
            m.add(m.scored, result.log, result.scored)
            m.add(m.skipped, result.log, result.skipped)
            m.notices_rejected += result.rejected
            m.batch_done(seconds)
        for notice in notices:
            m.add(m.notices, str(getattr(notice, "kind", "?")), 1)
        m.duplicates += len(notices) - written
        log.debug(
            "batch.scored",
            records=sum(r.records for r, _ in results),
            notices=written,
            duplicates=len(notices) - written,
        )

        return sum(r.records for r, _ in results)

    def _write_notices(self, writer: Any, notices: list[Any]) -> int:
        """Write notices durably, waiting out a full or failing disk.

        Nothing is committed while this waits, and memory does not grow:
        the loop reads nothing new until the notices in hand are written.
        The wait keeps pinging the watchdog (the daemon is alive and says
        why it waits in its status), so systemd does not restart it into
        the same full disk over and over.
        """
        delay = 1.0
        while True:
            try:
                written: int = writer.write_many(notices)
                if delay > 1.0:
                    log.info(
                        "notices.write_recovered", path=str(self.config.notice_log)
                    )
                return written
            except (BFlowError, OSError) as exc:
                self.metrics.errors += 1
                log.error(
                    "notices.write_failed",
                    path=str(self.config.notice_log),
                    notices=len(notices),
                    error=str(exc),
                    retry_in_s=delay,
                    todo="free space or fix permissions under the notice "
                    "directory; no read position is advanced until then",
                )
                self.notifier.status(f"cannot write notices: {exc}")
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if self._stop_reason is not None:
                    raise NoticeWriteError(
                        f"stopped while {len(notices)} notices could not be "
                        f"written to {str(self.config.notice_log)!r}; no read "
                        "position was advanced, they are scored again on the "
                        "next start"
                    )
                self.notifier.watchdog()
                time.sleep(0.1)
            delay = min(delay * 2, 30.0)

    def _without_redone(self, batch: Any, log_name: str, ledger: Ledger) -> Any:
        """Leave out records the ledger's last commit already holds."""
        import pyarrow as pa

        from sensor.pipeline import record_keys

        keys = record_keys(batch, log_name)
        mask = pa.array([k not in ledger.redo for k in keys])
        skipped = batch.num_rows - sum(mask.to_pylist())
        if skipped:
            log.info("ledger.redo_skipped", log=log_name, records=skipped)

        return batch.filter(mask)

    def _update_lag(self, tailer: Any) -> None:
        stats = getattr(tailer, "lag", None)
        if stats is None:
            return
        value = stats() if callable(stats) else stats
        seconds = getattr(value, "seconds", None)
        if seconds is None and isinstance(value, dict):
            seconds = value.get("seconds", value.get("lag_s"))
        if isinstance(seconds, int | float):
            self.metrics.lag_seconds = float(seconds)
        lag_bytes = getattr(value, "bytes", None)
        if lag_bytes is None and isinstance(value, dict):
            lag_bytes = value.get("bytes")
        if isinstance(lag_bytes, int):
            self.metrics.lag_bytes = lag_bytes

        counts = getattr(tailer, "stats", None)
        m = self.metrics
        m.dropped = int(getattr(counts, "fragments_dropped", m.dropped))
        m.lines_skipped = int(getattr(counts, "lines_skipped", m.lines_skipped))
        m.bad_files = int(getattr(counts, "bad_files", m.bad_files))


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    # Inter-op threads can be set only once per process (demo, tests).
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def _log_name(batch: Any) -> str:
    """conn or bflow_packet, from the batch's #path (or its file name)."""
    for value in (getattr(batch, "log_path", None), getattr(batch, "source", None)):
        if not value:
            continue
        name = Path(str(value)).name
        for log_name in LOG_OF_KIND.values():
            if name == log_name or name.startswith(log_name + "."):
                return log_name

    return str(getattr(batch, "log_path", "") or "")


def _close(thing: Any) -> None:
    close = getattr(thing, "close", None)
    if callable(close):
        close()


@contextlib.contextmanager
def _signals(handler: Any) -> Iterator[None]:
    wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bflow run",
        description=(
            "Watch a Zeek log directory, score conn.log and the packet log "
            "with the configured models, and append a notice for every "
            "connection at or above the threshold. Settings come from "
            "--config, then BFLOW_<SETTING> variables, then these flags."
        ),
    )
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the settings, directories and models, then exit",
    )
    for name in PARSERS:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar="V",
            help=HELP[name],
        )

    return parser


def _setting_notes(config: Config, daemon: Daemon) -> dict[str, str]:
    """What `--check-config` adds to the lines of some settings."""
    notes = {"notice_dir": f"the notice log is {config.notice_log}"}
    for kind, log_name in LOG_OF_KIND.items():
        scorer = daemon.pipeline.scorers.get(log_name)
        if scorer is None:
            notes[f"{kind}_model"] = f"{log_name}.log is not scored"
            continue
        notes[f"{kind}_model"] = (
            f"model_version {scorer.model_version}, threshold {scorer.threshold:g}"
        )
        if getattr(config, f"{kind}_threshold") is None:
            notes[f"{kind}_threshold"] = (
                f"the model's own threshold, {scorer.threshold:g}, is used"
            )

    return notes


def main(argv: list[str]) -> int:
    """Entry point of `bflow run`."""
    args = _parser().parse_args(argv)
    flags = {name: getattr(args, name) for name in PARSERS}
    config = build_config(file=args.config, flags=flags)
    check_paths(config, create=not args.check_config)

    daemon = Daemon(config)
    if args.check_config:
        print("config OK; the settings in effect:")
        for line in settings_toml(config, _setting_notes(config, daemon)):
            print(line)
        for missing in absent_logs(config.log_dir, daemon.pipeline.logs):
            hint = _ABSENT_HINT.get(missing, "")
            print(f"note: no {missing}.log in {config.log_dir} yet: {hint}")
        return 0

    return daemon.run()
