"""Pick a clean baseline of records from a Zeek log archive for retraining.

The archive is what zeekctl or a standalone Zeek leaves behind: dated folders
(`2026-12-04/conn.09:00:00-10:00:00.log.gz`), standalone rotated names
(`conn.2026-12-04-09-00-00.log`) and plain `conn.log` files, gzip or not
(decided by content). File names are only a coarse pre-filter: they are
in the sensor's local time, so a file is read when its name lies within a
day of the window, and each record is then kept or dropped by its own `ts`.
`#open` is not used to skip files: `zeek -r` writes the time it ran, not the
time of the traffic, and a live file opened before the window can still
hold records inside it.

What is left out of the baseline, and counted:

- records outside the window;
- connections named by a notice (their `uid`), from our notice log and from
  Zeek's `notice.log`; these become the *known-bad* set the gate checks the
  candidate against;
- every connection touching a host that raised a notice (the notice's `src`,
  or the originator of the noticed connection), unless the host is on the
  operator's allow list; also known-bad;
- every connection touching a host on the operator's deny list (neither
  baseline nor known-bad: a deny list says "not normal", not "attack").

Memory: clean records are sampled uniformly while the archive is read
(`max_records`), so a long window costs time, not memory. Records that
raised notices are all kept; known shortcoming: a window full of noticed
scans can make that set large.
"""

import gzip
import hashlib
import ipaddress
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from sensor.contract import NOTICE_KINDS
from sensor.errors import BFlowError, ConfigError
from sensor.reader import read_log

log = structlog.get_logger(__name__)

# Zeek writes rotated names in the sensor's local time; a day either side
# covers every time zone, and the record `ts` decides in the end.
NAME_MARGIN = timedelta(days=1)

_RANGE_NAME = re.compile(
    r"^(?P<path>[A-Za-z0-9_]+)\.(?P<start>\d\d:\d\d:\d\d)[-_]"
    r"(?P<end>\d\d:\d\d:\d\d)\.log(?:\.gz)?$"
)
_STAMP_NAME = re.compile(
    r"^(?P<path>[A-Za-z0-9_]+)\.(?P<stamp>\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d)"
    r"\.log(?:\.gz)?$"
)
_PLAIN_NAME = re.compile(r"^(?P<path>[A-Za-z0-9_]+)\.log(?:\.gz)?$")
_DAY_DIR = re.compile(r"^\d{4}-\d\d-\d\d$")

NOTICE_PATHS = ("notice", "bflow_notice")


@dataclass(frozen=True)
class ArchivedLog:
    """One log file found in the archive.

    `start`/`end` come from the file name (or `#open`) and are only a hint:
    local time, possibly None when the name carries no time.
    """

    path: Path
    log_path: str
    start: datetime | None
    end: datetime | None

    def may_overlap(self, start: datetime, end: datetime) -> bool:
        """Whether the file may hold records in [start, end)."""
        if self.start is None:
            return True
        last = self.end if self.end is not None else self.start + NAME_MARGIN
        return self.start - NAME_MARGIN < end and last + NAME_MARGIN > start


@dataclass(frozen=True)
class Notices:
    """Who raised notices: connection uids and offending hosts, with times."""

    uids: frozenset[str]
    hosts: frozenset[str]
    times: tuple[float, ...]
    files: tuple[str, ...]


@dataclass
class HostList:
    """An operator list of networks (CIDRs), matched against addresses."""

    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list
    )

    @classmethod
    def parse(cls, entries: Iterable[str], *, origin: str) -> "HostList":
        """Parse CIDRs or addresses; blank entries and `#` comments are skipped.

        Raises:
            ConfigError: naming the bad entry and where it came from.
        """
        networks = []
        for raw in entries:
            entry = raw.split("#", 1)[0].strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ConfigError(
                    f"{entry!r} in {origin} is not an address or CIDR network; "
                    "write one per line, such as 192.0.2.0/24 or 2001:db8::1"
                ) from None

        return cls(networks)

    def contains(self, addresses: Sequence[str | None]) -> np.ndarray:
        """A bool mask: which addresses fall in one of the networks."""
        mask = np.zeros(len(addresses), dtype=bool)
        if not self.networks:
            return mask
        cache: dict[str, bool] = {}
        for i, text in enumerate(addresses):
            if text is None:
                continue
            hit = cache.get(text)
            if hit is None:
                hit = self._match(text)
                cache[text] = hit
            mask[i] = hit

        return mask

    def _match(self, text: str) -> bool:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return False
        return any(address in net for net in self.networks)


@dataclass
class Selection:
    """The records picked for one retraining, and how they were picked.

    `baseline` and `holdout` are clean records in time order (holdout is
    the most recent slice); `known_bad` are records that raised notices.
    """

    baseline: pa.Table
    holdout: pa.Table
    known_bad: pa.Table
    counts: dict[str, int]
    files: list[dict[str, Any]]
    window: tuple[str, str]
    time_range: tuple[float | None, float | None]

    def summary(self) -> dict[str, Any]:
        """What went in, for the report and the model's metadata."""
        return {
            "window": list(self.window),
            "time_range": list(self.time_range),
            "counts": dict(self.counts),
            "files": list(self.files),
        }


def parse_name(path: Path) -> ArchivedLog | None:
    """Recognise a rotated or live Zeek log by its name; None if it is not.

    Dot-files (Zeek's `.shadow.*` markers), `conn-summary` reports and
    `stdout.log`/`stderr.log` are not logs.
    """
    name = path.name
    if name.startswith("."):
        return None

    match = _RANGE_NAME.match(name)
    if match:
        day = path.parent.name
        if not _DAY_DIR.match(day):
            return ArchivedLog(path, match["path"], None, None)
        start = _local(f"{day} {match['start']}", "%Y-%m-%d %H:%M:%S")
        end = _local(f"{day} {match['end']}", "%Y-%m-%d %H:%M:%S")
        if start is not None and end is not None and end <= start:
            end += timedelta(days=1)
        return ArchivedLog(path, match["path"], start, end)

    match = _STAMP_NAME.match(name)
    if match:
        start = _local(match["stamp"], "%Y-%m-%d-%H-%M-%S")
        return ArchivedLog(path, match["path"], start, None)

    match = _PLAIN_NAME.match(name)
    if match and match["path"] not in ("stdout", "stderr"):
        return ArchivedLog(path, match["path"], None, None)

    return None


def _local(text: str, fmt: str) -> datetime | None:
    try:
        return datetime.strptime(text, fmt).replace(tzinfo=UTC)
    except ValueError:
        return None


def discover(roots: Sequence[Path], log_paths: Sequence[str]) -> list[ArchivedLog]:
    """Every log under the roots whose name says it is one of `log_paths`.

    Raises:
        ConfigError: a root that does not exist.
    """
    found = []
    for root in roots:
        if not root.is_dir():
            raise ConfigError(
                f"log archive {str(root)!r} is not a directory; pass the "
                "folder holding zeekctl's dated folders (<prefix>/logs) or "
                "the folder a standalone Zeek rotates into"
            )
        for path in sorted(root.rglob("*")):
            if not path.is_file():
                continue
            entry = parse_name(path)
            if entry is not None and entry.log_path in log_paths:
                found.append(entry)

    return found


def sniff(path: Path) -> tuple[dict[str, str], str]:
    """The header fields of a TSV log, and a key naming its content.

    The key hashes the header and the first record, so one rotated file
    seen under two names (the spool copy and the archived gzip) is read once.
    """
    header: dict[str, str] = {}
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
        opener: Any = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rb") as stream:
            for _ in range(64):
                line = stream.readline(65536)
                if not line:
                    break
                digest.update(line)
                if not line.startswith(b"#"):
                    break
                text = line.decode("utf-8", "replace").rstrip("\n")
                key, _, value = text[1:].partition("\t")
                if " " in key and not value:
                    key, _, value = text[1:].partition(" ")
                header[key] = value
    except (OSError, EOFError, zlib.error):
        pass

    return header, digest.hexdigest()


def read_notices(files: Sequence[Path], *, allow: HostList) -> Notices:
    """Collect uids and offending hosts from notice logs.

    Reads our notice log (`uid`, `id.orig_h`) and Zeek's `notice.log`
    (`uid`, `src`, `id.orig_h`). The offending host is `src` where set, else
    the originator of the noticed connection. Allow-listed hosts are never
    offending hosts; their noticed connections are still left out.
    """
    uids: set[str] = set()
    hosts: set[str] = set()
    times: list[float] = []
    for path in files:
        try:
            batches = list(read_log(path))
        except (OSError, BFlowError) as exc:
            # Without it we cannot tell which hosts to leave out: stop.
            raise ConfigError(
                f"notice log {str(path)!r} cannot be read ({exc}); retraining "
                "without it could learn attacks as normal. Fix or move the file"
            ) from None
        for batch in batches:
            records = _notices_only(batch.records)
            n = records.num_rows
            uid = _strings(records, "uid", n)
            src = _strings(records, "src", n)
            orig = _strings(records, "id.orig_h", n)
            uids.update(u for u in uid if u)
            offenders = [s if s else o for s, o in zip(src, orig, strict=True)]
            allowed = allow.contains(offenders)
            hosts.update(
                h for h, ok in zip(offenders, allowed, strict=True) if h and not ok
            )
            times.extend(_seconds(records, n).tolist())

    log.info(
        "notices.read",
        files=len(files),
        uids=len(uids),
        hosts=len(hosts),
    )

    return Notices(
        frozenset(uids),
        frozenset(hosts),
        tuple(t for t in times if t == t),
        tuple(str(p) for p in files),
    )


def _notices_only(records: pa.RecordBatch) -> pa.RecordBatch:
    """Drop our notice log's control records (file open, rotate)."""
    kind = _column(records, "kind")
    if kind is None or "notice_id" not in records.schema.names:
        return records
    keep = pc.is_in(pc.cast(kind, pa.string()), pa.array(list(NOTICE_KINDS)))

    return records.filter(pc.fill_null(keep, False))


def _column(records: pa.RecordBatch, name: str) -> pa.Array | None:
    index = records.schema.get_field_index(name)
    if index < 0:
        return None
    return records.column(index)


def _strings(records: pa.RecordBatch, name: str, n: int) -> list[str | None]:
    column = _column(records, name)
    if column is None:
        return [None] * n
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(
        column.type
    ):
        column = pc.cast(column, pa.string())

    return column.to_pylist()


def _seconds(records: pa.RecordBatch, n: int) -> np.ndarray:
    """The `ts` field as float seconds since the epoch; NaN where unset."""
    column = _column(records, "ts")
    if column is None:
        return np.full(n, np.nan)
    if pa.types.is_timestamp(column.type):
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[column.type.unit]
        ints = pc.cast(column, pa.int64())
        values = ints.to_numpy(zero_copy_only=False).astype(np.float64) / scale
    else:
        values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    values = np.asarray(values, dtype=np.float64)
    nulls = column.is_null().to_numpy(zero_copy_only=False)

    return np.where(nulls, np.nan, values)


def select(
    roots: Sequence[Path],
    *,
    log_path: str,
    now: datetime,
    window: timedelta,
    notice_files: Sequence[Path] = (),
    allow: HostList | None = None,
    deny: HostList | None = None,
    holdout_fraction: float = 0.2,
    max_records: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> Selection:
    """Read the archive and split it into baseline, holdout and known-bad.

    Args:
        roots: archive folders to search (recursively).
        log_path: which log to read (`conn`, or the packet log's path).
        now: end of the window (UTC).
        window: how far back from `now` to read.
        notice_files: notice logs beyond those found in the roots.
        holdout_fraction: share of the newest clean records held out.
        max_records: subsample the clean records to this many (0 = all).
        progress: show a progress bar (a person at a terminal).

    Raises:
        ConfigError: a root is missing, or too little data is left.
    """
    allow = allow or HostList()
    deny = deny or HostList()
    start = now - window
    lo, hi = start.timestamp(), now.timestamp()

    entries = discover(roots, (log_path, *NOTICE_PATHS))
    notice_logs = [e.path for e in entries if e.log_path in NOTICE_PATHS]
    notice_logs += [Path(p) for p in notice_files]
    notices = read_notices(notice_logs, allow=allow)

    logs = [e for e in entries if e.log_path == log_path and e.may_overlap(start, now)]
    counts = dict.fromkeys(
        (
            "files",
            "files_duplicate",
            "files_wrong_path",
            "files_unreadable",
            "records_read",
            "records_outside_window",
            "records_no_ts",
            "records_noticed_uid",
            "records_noticed_host",
            "records_denied",
            "records_subsampled_out",
        ),
        0,
    )
    sample = _Sample(max_records, seed)
    bad: list[pa.Table] = []
    files: list[dict[str, Any]] = []
    seen: set[str] = set()

    for entry in _progress(logs, progress, "reading logs"):
        header, key = sniff(entry.path)
        if key in seen:
            counts["files_duplicate"] += 1
            log.info("file.duplicate", path=str(entry.path))
            continue
        seen.add(key)
        declared = header.get("path")
        if declared is not None and declared != log_path:
            counts["files_wrong_path"] += 1
            log.warning("file.wrong_path", path=str(entry.path), declared=declared)
            continue

        file_kept: list[pa.Table] = []
        file_bad: list[pa.Table] = []
        file_stats = dict.fromkeys(counts, 0)
        try:
            file_counts = _read_one(
                entry.path, lo, hi, notices, deny, file_kept, file_bad, file_stats
            )
        except (OSError, BFlowError) as exc:
            # One bad file costs its records, not the retraining.
            counts["files_unreadable"] += 1
            log.warning("file.unreadable", path=str(entry.path), error=str(exc))
            continue
        for table in file_kept:
            sample.add(table)
        bad += file_bad
        for key, value in file_stats.items():
            counts[key] += value
        counts["files"] += 1
        files.append(
            {"path": str(entry.path), "sha256": _file_hash(entry.path)} | file_counts
        )

    clean = _sort_by_ts(sample.result())
    counts["records_subsampled_out"] = sample.dropped

    n_hold = int(round(clean.num_rows * holdout_fraction))
    baseline = clean.slice(0, clean.num_rows - n_hold)
    holdout = clean.slice(clean.num_rows - n_hold)
    known_bad = concat_tables(bad)
    counts["records_baseline"] = baseline.num_rows
    counts["records_holdout"] = holdout.num_rows
    counts["records_known_bad"] = known_bad.num_rows

    time_range: tuple[float | None, float | None] = (None, None)
    if clean.num_rows:
        ts = _seconds(clean.combine_chunks().to_batches()[0], clean.num_rows)
        time_range = (float(np.nanmin(ts)), float(np.nanmax(ts)))
    log.info("baseline.selected", log_path=log_path, **counts)

    return Selection(
        baseline=baseline,
        holdout=holdout,
        known_bad=known_bad,
        counts=counts,
        files=files,
        window=(start.isoformat(), now.isoformat()),
        time_range=time_range,
    )


class _Sample:
    """A uniform sample of at most `cap` records, kept while reading.

    Each record draws a random key and the `cap` smallest keys win (a
    bottom-k sample), so memory stays near twice `cap` however long the
    window is, and every record has the same chance. `cap` 0 keeps all.
    """

    _KEY = "__sample_key"

    def __init__(self, cap: int, seed: int) -> None:
        self.cap = cap
        self.rng = np.random.default_rng(seed)
        self.tables: list[pa.Table] = []
        self.rows = 0
        self.dropped = 0

    def add(self, table: pa.Table) -> None:
        if self.cap:
            keys = self.rng.random(table.num_rows)
            table = table.append_column(self._KEY, pa.array(keys))
        self.tables.append(table)
        self.rows += table.num_rows
        if self.cap and self.rows > 2 * self.cap:
            self._shrink()

    def _shrink(self) -> None:
        table = concat_tables(self.tables)
        keys = table.column(self._KEY).to_numpy()
        cut = np.partition(keys, self.cap - 1)[self.cap - 1]
        kept = table.filter(pa.array(keys <= cut))
        self.dropped += table.num_rows - kept.num_rows
        self.tables = [kept]
        self.rows = kept.num_rows

    def result(self) -> pa.Table:
        """The sample, without its keys."""
        if self.cap and self.rows > self.cap:
            self._shrink()
        table = concat_tables(self.tables)
        if self._KEY in table.schema.names:
            table = table.drop_columns([self._KEY])

        return table


def _read_one(
    path: Path,
    lo: float,
    hi: float,
    notices: Notices,
    deny: HostList,
    kept: list[pa.Table],
    bad: list[pa.Table],
    counts: dict[str, int],
) -> dict[str, int]:
    """Read one log and sort its records into kept / known-bad / dropped."""
    file_counts = {"records": 0, "kept": 0}
    for batch in read_log(path):
        records = batch.records
        n = records.num_rows
        ts = _seconds(records, n)
        in_window = (ts >= lo) & (ts < hi)
        no_ts = np.isnan(ts)

        uid = _strings(records, "uid", n)
        orig = _strings(records, "id.orig_h", n)
        resp = _strings(records, "id.resp_h", n)
        by_uid = np.fromiter((u in notices.uids for u in uid), dtype=bool, count=n)
        by_host = np.fromiter(
            (
                o in notices.hosts or r in notices.hosts
                for o, r in zip(orig, resp, strict=True)
            ),
            dtype=bool,
            count=n,
        )
        denied = deny.contains(orig) | deny.contains(resp)

        noticed = (by_uid | by_host) & ~denied & in_window
        clean = in_window & ~by_uid & ~by_host & ~denied

        counts["records_read"] += n
        counts["records_no_ts"] += int(no_ts.sum())
        counts["records_outside_window"] += int((~in_window & ~no_ts).sum())
        counts["records_noticed_uid"] += int((by_uid & in_window).sum())
        counts["records_noticed_host"] += int((by_host & ~by_uid & in_window).sum())
        counts["records_denied"] += int((denied & in_window).sum())
        file_counts["records"] += n
        file_counts["kept"] += int(clean.sum())

        table = pa.Table.from_batches([records])
        if clean.any():
            kept.append(table.filter(pa.array(clean)))
        if noticed.any():
            bad.append(table.filter(pa.array(noticed)))

    return file_counts


def concat_tables(tables: list[pa.Table]) -> pa.Table:
    """Join tables whose schemas may differ (files from several Zeek versions)."""
    if not tables:
        return pa.table({"ts": pa.array([], pa.float64())})

    return pa.concat_tables(tables, promote_options="permissive")


def _sort_by_ts(table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        return table

    return table.sort_by([("ts", "ascending")])


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)

    return digest.hexdigest()


def _progress(items: list[ArchivedLog], show: bool, what: str) -> Iterator[Any]:
    if not show:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=what, unit="file")


def parse_window(text: str) -> timedelta:
    """Parse a duration such as `7d`, `36h`, `90m` or `3600s`.

    Raises:
        ConfigError: naming the text and the expected form.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms])\s*", text)
    if not match:
        raise ConfigError(
            f"window {text!r} is not a duration; write a number and a unit, "
            "such as 7d, 36h, 90m or 3600s"
        )
    value = float(match[1])
    unit = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[match[2]]
    span = timedelta(**{unit: value})
    if span <= timedelta(0):
        raise ConfigError(f"window {text!r} must be longer than zero")

    return span


def parse_now(text: str | None) -> datetime:
    """`--now`: an ISO 8601 time (UTC if no zone given), or the clock.

    Raises:
        ConfigError: naming the text and the expected form.
    """
    if text is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"time {text!r} is not ISO 8601; write it like 2026-12-04T17:30:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)

    return moment.astimezone(UTC)
