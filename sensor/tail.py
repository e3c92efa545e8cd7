"""Follow the logs Zeek is writing, across rotations, without loss or repeats.

`LogTailer` watches one Zeek log directory (often zeekctl's `logs/current`
symlink, resolved again on every rescan) and hands out record batches of the
live logs (`conn.log`, `bflow_packet.log` by default), each with a `Cursor`
the daemon passes back to `commit()` once the notices for those records are
durable. Only committed cursors reach the state file, so after a crash or a
restart reading resumes exactly after the last record whose notices were
written.

How files are followed:

- A file is opened once and read through that descriptor until it is
  finished, so a rename (Zeek's `conn.<time>.log`, zeekctl's archive) never
  cuts it short. A file that is no longer the live one is drained to its end
  and kept open for `finish_grace` seconds of silence in case a writer still
  appends, then finished: a last line without a newline is dropped and
  counted. While a file is live, such a line only means "wait".
- A file is known by its *file key*, a hash of its header and first record
  (see `sensor.checkpoint`), not by its inode, so a reused inode is a new
  file, and the later `.gz` copy of a file already read is skipped.
- A live file seen for the first time is read from its first byte.
- A rotated or archived file whose key was never committed is read when
  `read_archive=True` (oldest first), when it first appears while the tail
  runs, or when it was written to after the last scan the previous run
  saved (rotated while the daemon was down); the copy of a file already read
  is recognised by its key and skipped. Other such files are history and
  are not even opened; a history file that zeekctl archives while the tail
  runs looks new, though, and is read. Rotated and archived files are read
  once their size has not changed for `finish_grace` seconds, oldest first
  by the time in their names.
- Gzip is recognised by its magic bytes and decompressed as a stream, so a
  live log that Zeek compresses while writing is followed like any other.
- Filesystem events (watchdog) only wake the loop early. A `stat` rescan every
  `poll_interval` finds growth and rotation on its own, so lost events delay
  nothing by more than one interval. If the observer cannot start (inotify
  limits) the tail polls, with one warning; if it dies it is restarted.
- A bad file (not a Zeek log, unreadable, corrupt gzip) gives one error event
  and is skipped; the loop goes on.

Known limits: a file truncated and rewritten in place with byte-for-byte the
same header and first record is taken for the same file. Records of the old
file still being drained and of the new live file may interleave in time.
Records appended to a rotated file after `finish_grace` seconds of silence
are not read (Zeek never does this; raise `finish_grace` for writers that
do). A file that had no complete record yet has no key, so it is not named
in the state; if it is rotated away while the daemon is down, the mtime rule
above is what brings it back. A gzip file is read 16 KiB of compressed bytes
at a time and the read budget counts what they expand to, so a file made
to expand a thousandfold (a gzip bomb) costs at most one poll's budget
plus ~16 MiB, like any other file. The rule about
files rotated while the daemon was down compares modification times with
the wall clock of the last saved scan, so a clock set back by more than
`MTIME_SLACK_S` can make such a file look like history.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat as stat_mod
import threading
import time
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from sensor.checkpoint import CheckpointStore, FileState
from sensor.errors import BFlowError, ConfigError
from sensor.reader import Batch, Gunzip, LogDecoder

# What bad file content or a failing disk can raise while a file is read. A
# file that raises one of these is reported and skipped; anything else is a
# defect in bflow and stops the process (systemd restarts it) rather than
# silently dropping a whole log.
FILE_ERRORS: Final = (
    BFlowError,
    OSError,
    ValueError,
    EOFError,
    zlib.error,
    pa.ArrowException,
)

log = structlog.get_logger(__name__)

GZIP_MAGIC: Final = b"\x1f\x8b"
READ_CHUNK: Final = 1 << 20
# Deflate expands at most ~1032:1, so 16 KiB of gzip is at most ~16 MiB.
GZIP_READ_CHUNK: Final = 16 << 10
POLL_READ_BUDGET: Final = 16 << 20
# A header longer than this is not waited for: the key is its first bytes.
HEAD_LIMIT: Final = 1 << 20
# Rescans asked for by events are spaced at least this far apart (seconds).
MIN_RESCAN_GAP: Final = 0.05
# File-system clocks are coarse: a file changed up to this long before the
# last saved scan still counts as changed after it.
MTIME_SLACK_S: Final = 1.0
# After a watch error that is not a kernel limit, try again this much later.
WATCH_RETRY_S: Final = 30.0

_DATE_DIR = re.compile(r"\d{4}-\d\d-\d\d")
_ROTATED_SUFFIX = re.compile(
    r"\.(?P<stamp>\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d"
    r"|(?P<start>\d\d:\d\d:\d\d)[-_]\d\d:\d\d:\d\d)"
)
_NEVER = ("stderr.log", "stdout.log")


@dataclass(frozen=True)
class Cursor:
    """Where a batch ends, to be handed back to `LogTailer.commit()`.

    Attributes:
        file_key: identity of the file (hash of its header and first record).
        offset: decompressed byte offset just past the batch's last line.
    """

    file_key: str
    offset: int


@dataclass(frozen=True)
class TailBatch:
    """One batch of records and the cursor that marks it as done."""

    batch: Batch
    cursor: Cursor


@dataclass(frozen=True)
class Lag:
    """How far the tail is behind the writers.

    Attributes:
        bytes: bytes written to open files and not read yet (compressed
            bytes for gzip files).
        seconds: how old the oldest unread data can be at most (time since
            that file was last read to its end); 0 when all is read.
    """

    bytes: int
    seconds: float


@dataclass
class TailStats:
    """Counters since the tailer started."""

    batches: int = 0
    records: int = 0
    rescans: int = 0
    files_opened: int = 0
    files_finished: int = 0
    rotations: int = 0
    replacements: int = 0
    truncations: int = 0
    duplicates_skipped: int = 0
    archives_ignored: int = 0
    bad_files: int = 0
    gzip_errors: int = 0
    fragments_dropped: int = 0
    # Lines the decoder skipped (wrong field count, bad value, ...).
    lines_skipped: int = 0
    handler_errors: int = 0
    rescan_errors: int = 0
    observer_restarts: int = 0
    polling_only: bool = False


@dataclass
class _File:
    """One open log file and how far it has been read."""

    path: str
    log_name: str
    fd: int
    dev: int
    ino: int
    live: bool
    # Read it even if its key was never committed (False: resume only).
    read_unknown: bool
    archive: bool = False
    # Time stamp from a rotated name, for reading in time order; "" for a
    # file that was live (drained before anything else).
    stamp: str = ""
    # Bytes read through the descriptor (compressed ones for gzip).
    raw_pos: int = 0
    is_gzip: bool | None = None
    raw_head: bytes = b""
    gunzip: Gunzip | None = None
    # Decompressed bytes held back until the file's key is known.
    head: bytearray = field(default_factory=bytearray)
    key: str | None = None
    head_len: int = 0
    decoder: LogDecoder | None = None
    skip_until: int = 0
    # End offset of the last batch handed out (or where reading resumed).
    emitted_end: int = 0
    # Decompressed bytes given to the decoder, and up to the last newline.
    fed: int = 0
    fed_to_newline: int = 0
    last_data: float = field(default_factory=time.monotonic)
    # When all that the file held was last read (its open time at first).
    caught_up_at: float = field(default_factory=time.monotonic)
    behind: bool = False
    skipped_seen: int = 0
    closed: bool = False


class _Wakeup(FileSystemEventHandler):
    """Turns watchdog events into a wake-up of the poll loop.

    Runs in watchdog's thread; nothing may escape from it, or the observer
    thread dies (watchdog issues 427, 793).
    """

    def __init__(self, tailer: LogTailer):
        self._tailer = tailer

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._tailer._on_event(event)
        except Exception:
            self._tailer.stats.handler_errors += 1
            log.exception("watch.handler_failed", fs_event=repr(event))


class LogTailer:
    """Follows the live logs of one Zeek log directory.

    Args:
        directory: the directory Zeek writes to (a symlink is resolved on
            every rescan).
        state_file: where committed positions are kept.
        log_paths: log names to follow (`conn` follows `conn.log`).
        batch_size: most records per batch.
        poll_interval: seconds between two rescans of the directory.
        finish_grace: seconds a file that is no longer live must stay
            unchanged before it is finished; also how long a rotated or
            archived file found by a rescan must keep its size before it is
            read.
        read_archive: also read rotated and archived files found at start-up
            that were never read, oldest first.
        archive_dirs: folders holding zeekctl's `YYYY-MM-DD/` archive; by
            default `<directory>/logs` and, when `directory` is a symlink
            named `current`, the folder that holds it.
        watch: use filesystem events as wake-ups (rescans run regardless).

    Raises:
        ConfigError: a number is out of range.
        CheckpointError: the state file is corrupt or in use.
    """

    def __init__(
        self,
        directory: Path,
        *,
        state_file: Path,
        log_paths: Collection[str] = ("conn", "bflow_packet"),
        batch_size: int = 65536,
        poll_interval: float = 1.0,
        finish_grace: float = 5.0,
        read_archive: bool = False,
        archive_dirs: Collection[Path] | None = None,
        watch: bool = True,
    ):
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("poll_interval", poll_interval, 0.01),
            ("finish_grace", finish_grace, 0.0),
        ):
            if value < low:
                raise ConfigError(
                    f"{name} is {value}, must be at least {low}; "
                    "fix it in the configuration"
                )
        self.directory = Path(directory)
        self.log_paths = tuple(log_paths)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.finish_grace = finish_grace
        self.read_archive = read_archive
        self.stats = TailStats()

        if archive_dirs is None:
            found = [self.directory / "logs"]
            if self.directory.name == "current" and self.directory.is_symlink():
                found.append(self.directory.parent)
            archive_dirs = found
        self.archive_dirs = tuple(Path(p) for p in archive_dirs)

        self._store = CheckpointStore(Path(state_file))
        scanned = self._store.scanned_at
        # Coarse file-system clocks: lean towards reading a file once more.
        self._resume_after = None if scanned is None else scanned - MTIME_SLACK_S
        self._scan_wall = 0.0
        # Inodes of files the state has not seen to their end. Device
        # numbers can change across a reboot; a false match costs one probe.
        self._resumable = {st.ino for st in self._store.files.values() if not st.done}
        self._files: list[_File] = []
        self._live: dict[str, _File] = {}
        self._keys_seen: set[str] = set()
        self._finished_keys: dict[str, int] = {}
        self._dirty = False
        self._key_where: dict[str, tuple[str, int, int]] = {}
        self._passed: dict[tuple[int, int], tuple[int, int]] = {}
        self._bad: set[tuple[int, int]] = set()
        self._settling: dict[str, tuple[tuple[int, int], float]] = {}
        self._startup_files: set[tuple[int, int]] = set()
        self._first_scan = True
        self._root: str | None = None
        self._dir_missing_logged = False

        self._wake = threading.Event()
        self._rescan_asked = False
        self._last_rescan = float("-inf")
        self._watch = watch
        self._watch_retry_at = 0.0
        self._observer: Any = None
        self._watched: tuple[str, ...] = ()
        if not watch:
            self.stats.polling_only = True

    # -- public API --------------------------------------------------------

    def poll(self, timeout: float) -> list[TailBatch]:
        """Return new batches, waiting up to `timeout` seconds for some.

        Returns an empty list when nothing arrived in time.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            # Cleared before looking, so an event during the look is kept.
            self._wake.clear()
            now = time.monotonic()
            due = now - self._last_rescan >= self.poll_interval
            asked = self._rescan_asked and now - self._last_rescan >= MIN_RESCAN_GAP
            try:
                self._keep_observer()
                if due or asked:
                    self._rescan()
            except Exception:
                # A bug here must not stop reading what is already open.
                self.stats.rescan_errors += 1
                self._last_rescan = now
                log.exception("tail.rescan_failed")

            out = self._pump_all()
            out.extend(self._finish_quiet())
            if out or time.monotonic() >= deadline:
                self._count(out)
                return out

            self._wake.wait(max(0.0, self._next_wake(deadline) - time.monotonic()))

    def commit(self, cursors: Iterable[Cursor]) -> None:
        """Make the given positions durable; call only once their notices are.

        Args:
            cursors: cursors of batches whose results are safely written, in
                any order; the furthest one per file counts.
        """
        furthest: dict[str, int] = {}
        for cursor in cursors:
            furthest[cursor.file_key] = max(
                cursor.offset, furthest.get(cursor.file_key, -1)
            )

        # Files being read whose records are not committed yet are named in
        # the state too (from offset 0), so a restart after they rotate
        # away still reads them.
        for f in self._files:
            if f.decoder is None or f.key is None or f.key in furthest:
                continue
            if self._store.get(f.key) is None:
                furthest[f.key] = 0
        for key, offset in furthest.items():
            known = self._store.get(key)
            if known is not None and known.offset == offset:
                continue
            path, dev, ino = self._key_where.get(key, ("", 0, 0))
            self._store.update(key, FileState(offset, path=path, dev=dev, ino=ino))
            self._dirty = True
        self._mark_done()
        if self._dirty or self._store.scanned_at != self._scan_wall:
            self._store.scanned_at = self._scan_wall
            self._store.save()
            self._dirty = False

    def _mark_done(self) -> None:
        """Finished files whose last batch is committed will not be opened."""
        for key, end in list(self._finished_keys.items()):
            state = self._store.get(key)
            if state is not None and state.offset >= end:
                if not state.done:
                    state.done = True
                    self._store.update(key, state)
                    self._dirty = True
                del self._finished_keys[key]

    def lag(self) -> Lag:
        """Unread bytes of the open files and how old the oldest can be.

        The age is an upper bound: the time since the tail last had read
        everything of a file that now holds unread bytes.
        """
        now = time.monotonic()
        behind, oldest = 0, 0.0
        for f in self._files:
            try:
                unread = os.fstat(f.fd).st_size - f.raw_pos
            except OSError:
                continue
            if unread > 0:
                behind += unread
                oldest = max(oldest, now - f.caught_up_at)

        return Lag(bytes=behind, seconds=oldest)

    def close(self) -> None:
        """Stop the observer, close every file and release the state file."""
        self._stop_observer()
        # A partial last line stays in the file; the next run reads it
        # from the committed offset once it is whole.
        open_files = len(self._files)
        for f in list(self._files):
            self._close_file(f)
        if self._dirty:
            # Only "done" marks can be pending here; offsets are saved by
            # commit() alone.
            self._store.save()
        self._store.close()
        log.info("tail.closed", records=self.stats.records, open_files=open_files)

    def __enter__(self) -> LogTailer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- watching ----------------------------------------------------------

    def _on_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            # Our own opens; nothing was written.
            return
        if kind in ("created", "moved", "deleted", "closed"):
            self._rescan_asked = True
        self._wake.set()

    def _keep_observer(self) -> None:
        if not self._watch or time.monotonic() < self._watch_retry_at:
            return
        if self._observer is not None and not self._observer.is_alive():
            log.warning("watch.observer_died", restarts=self.stats.observer_restarts)
            self.stats.observer_restarts += 1
            self._observer = None
        wanted = self._watch_dirs()
        if self._observer is not None and wanted == self._watched:
            return

        self._stop_observer()
        observer = Observer()
        try:
            for path in wanted:
                observer.schedule(_Wakeup(self), path, recursive=False)
            observer.start()
        except OSError as exc:
            with contextlib.suppress(Exception):
                observer.stop()
            limit = {
                errno.ENOSPC: "fs.inotify.max_user_watches",
                errno.EMFILE: "fs.inotify.max_user_instances",
            }.get(exc.errno or 0)
            if limit is not None:
                # A kernel limit will not lift by itself: poll from now on.
                self._watch = False
                self.stats.polling_only = True
            else:
                self._watch_retry_at = time.monotonic() + WATCH_RETRY_S
            log.warning(
                "watch.unavailable",
                error=str(exc),
                limit=limit,
                fallback="rescan",
                interval_s=self.poll_interval,
                retry_s=None if limit else WATCH_RETRY_S,
            )
            return
        self._observer = observer
        self._watched = wanted
        # Whatever happened while nothing watched is found by a rescan.
        self._rescan_asked = True

    def _watch_dirs(self) -> tuple[str, ...]:
        # Only the live folder: archive files must hold still for
        # finish_grace before they are read, so the rescan is soon enough
        # for them, and a years-deep archive would cost one inotify watch
        # per folder.
        root = os.path.realpath(self.directory)

        return (root,) if os.path.isdir(root) else ()

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        self._watched = ()
        if observer is None:
            return
        try:
            observer.stop()
            observer.join(timeout=5.0)
        except Exception:
            log.exception("watch.stop_failed")

    def _next_wake(self, deadline: float) -> float:
        wake = min(deadline, self._last_rescan + self.poll_interval)
        if self._rescan_asked:
            wake = min(wake, self._last_rescan + MIN_RESCAN_GAP)
        for f in self._files:
            if not f.live:
                wake = min(wake, f.last_data + self.finish_grace)

        return wake

    # -- discovery ---------------------------------------------------------

    def _rescan(self) -> None:
        self._rescan_asked = False
        self._last_rescan = time.monotonic()
        self._scan_wall = time.time()
        self.stats.rescans += 1
        root = os.path.realpath(self.directory)
        if root != self._root:
            if self._root is not None:
                log.info("dir.repointed", directory=str(self.directory), target=root)
            self._root = root
        try:
            names = os.listdir(root)
        except OSError as exc:
            if not self._dir_missing_logged:
                log.warning("dir.unreadable", directory=root, error=exc.strerror)
                self._dir_missing_logged = True
            names = []
        else:
            self._dir_missing_logged = False

        live_paths = {
            os.path.join(root, f"{name}{suffix}"): name
            for name in self.log_paths
            for suffix in (".log", ".log.gz")
        }
        for path, f in list(self._live.items()):
            if path not in live_paths:
                self._leave_live(f, replaced=False)
        for path, name in live_paths.items():
            self._check_live(name, path)

        candidates: list[tuple[str, str, str, bool]] = []
        for entry in names:
            found = self._rotated_name(entry)
            if found is not None:
                log_name, stamp = found
                candidates.append((stamp, os.path.join(root, entry), log_name, False))
        for archive in self.archive_dirs:
            candidates += self._archive_candidates(archive)
        candidates.sort()
        for stamp, path, log_name, is_archive in candidates:
            self._check_rotated(path, log_name, stamp, archive=is_archive)
        listed = {path for _, path, _, _ in candidates}
        for path in [p for p in self._settling if p not in listed]:
            del self._settling[path]

        self._first_scan = False

    def _rotated_name(self, entry: str) -> tuple[str, str] | None:
        """(log name, time stamp for ordering) of a rotated file name."""
        if entry.startswith(".") or entry.endswith(".tmp") or entry in _NEVER:
            return None
        for name in self.log_paths:
            if not entry.startswith(name + "."):
                continue
            rest = entry[len(name) :]
            if rest.endswith(".gz"):
                rest = rest[:-3]
            if not rest.endswith(".log"):
                continue
            suffix = _ROTATED_SUFFIX.fullmatch(rest[: -len(".log")])
            if suffix is None:
                continue
            stamp = suffix.group("stamp") or suffix.group("start") or ""
            return name, stamp

        return None

    def _archive_candidates(self, archive: Path) -> list[tuple[str, str, str, bool]]:
        try:
            days = sorted(d for d in os.listdir(archive) if _DATE_DIR.fullmatch(d))
        except OSError:
            return []
        if not self._first_scan:
            # Only the newest folders gain files; older ones are looked at
            # again only while a file there waits to settle.
            waiting = {os.path.basename(os.path.dirname(p)) for p in self._settling}
            days = [d for d in days[:-2] if d in waiting] + days[-2:]
        out = []
        for day in days:
            folder = os.path.join(archive, day)
            try:
                entries = os.listdir(folder)
            except OSError:
                continue
            for entry in entries:
                found = self._rotated_name(entry)
                if found is None and entry.endswith((".log", ".log.gz")):
                    # Plain `conn.log` inside a dated folder is also an archive.
                    base = entry.removesuffix(".gz").removesuffix(".log")
                    if base in self.log_paths:
                        found = (base, "")
                if found is None:
                    continue
                log_name, stamp = found
                if len(stamp) == 8:
                    stamp = f"{day}-{stamp.replace(':', '-')}"
                elif not stamp:
                    stamp = day
                out.append((stamp, os.path.join(folder, entry), log_name, True))

        return out

    def _check_live(self, log_name: str, path: str) -> None:
        current = self._live.get(path)
        try:
            st: os.stat_result | None = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            self._report_bad(path, None, f"cannot stat: {exc.strerror}")
            return

        if current is not None:
            if st is None or (st.st_dev, st.st_ino) != (current.dev, current.ino):
                self._leave_live(current, replaced=st is not None)
            elif st.st_size < current.raw_pos:
                self.stats.truncations += 1
                log.warning(
                    "file.truncated", path=path, size=st.st_size, offset=current.raw_pos
                )
                self._finish(current)
            elif self._head_changed(current):
                self.stats.replacements += 1
                log.warning("file.rewritten", path=path, offset=current.raw_pos)
                self._finish(current)
            else:
                return

        if st is None:
            return
        ident = (st.st_dev, st.st_ino)
        if ident in self._bad:
            return
        if not stat_mod.S_ISREG(st.st_mode):
            self._report_bad(path, None, "not a regular file")
            return
        for f in self._files:
            if (f.dev, f.ino) == ident:
                # Already open under another name (renamed back, a second
                # symlink): it is the live file again.
                f.live, f.path = True, path
                self._live[path] = f
                return

        opened = self._open(path, log_name, live=True, read_unknown=True)
        if opened is not None:
            self._live[path] = opened

    def _leave_live(self, f: _File, *, replaced: bool) -> None:
        """The live name no longer leads to `f`: drain it through its fd."""
        self._live.pop(f.path, None)
        f.live = False
        f.last_data = time.monotonic()
        try:
            deleted = os.fstat(f.fd).st_nlink == 0
        except OSError:
            deleted = False

        if deleted and replaced:
            self.stats.replacements += 1
            event = "file.replaced"
        elif deleted:
            event = "file.deleted"
        else:
            self.stats.rotations += 1
            event = "file.rotated" if replaced else "file.moved_away"
        log.info(event, path=f.path, offset=f.raw_pos, size=self._size(f))

    def _size(self, f: _File) -> int | None:
        try:
            return os.fstat(f.fd).st_size
        except OSError:
            return None

    def _head_changed(self, f: _File) -> bool:
        """True when the first bytes of a plain file are no longer its key's."""
        if f.is_gzip or f.key is None or not f.head_len:
            return False
        try:
            head = os.pread(f.fd, f.head_len, 0)
        except OSError:
            return False

        return _file_key(head) != f.key

    def _check_rotated(
        self, path: str, log_name: str, stamp: str, *, archive: bool
    ) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        if not stat_mod.S_ISREG(st.st_mode):
            return
        ident = (st.st_dev, st.st_ino)
        if self._first_scan:
            self._startup_files.add(ident)
        for f in self._files:
            if (f.dev, f.ino) == ident:
                if f.path != path and not f.live:
                    log.info("file.renamed", path=f.path, new_path=path)
                    f.path = path
                return
        signature = (st.st_size, st.st_mtime_ns)
        if ident in self._bad or self._passed.get(ident) == signature:
            return

        # An unknown rotated file is history unless it appeared while we
        # ran, or was written to after the last scan an earlier run saved.
        read_unknown = (
            self.read_archive
            or ident not in self._startup_files
            or (self._resume_after is not None and st.st_mtime > self._resume_after)
        )
        if not read_unknown and st.st_ino not in self._resumable:
            # History, and not a file the state knows under this inode:
            # leave it unopened (a years-old archive is not probed).
            self._passed[ident] = signature
            self.stats.archives_ignored += 1
            log.debug("file.not_read", path=path, why="history")
            return

        # A file still being written in place (an archiver's gzip) looks
        # cut short: wait until its size and mtime hold still. Waiting on
        # every file also lets all that is there be read in time order.
        now = time.monotonic()
        seen = self._settling.get(path)
        if seen is None or seen[0] != signature:
            self._settling[path] = (signature, now)
            return
        if now - seen[1] < self.finish_grace:
            return
        del self._settling[path]

        opened = self._open(path, log_name, live=False, read_unknown=read_unknown)
        if opened is not None:
            opened.archive = archive
            opened.stamp = stamp
            self._passed[ident] = signature

    def _open(
        self, path: str, log_name: str, *, live: bool, read_unknown: bool
    ) -> _File | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._report_bad(path, None, f"cannot open: {exc.strerror}")
            return None
        st = os.fstat(fd)
        f = _File(
            path=path,
            log_name=log_name,
            fd=fd,
            dev=st.st_dev,
            ino=st.st_ino,
            live=live,
            read_unknown=read_unknown,
        )
        self._files.append(f)
        self.stats.files_opened += 1
        log.debug("file.opened", path=path, live=live)

        return f

    # -- reading -----------------------------------------------------------

    def _pump_all(self) -> list[TailBatch]:
        """Read what the open files hold: drained files first, live last."""
        out: list[TailBatch] = []
        budget = POLL_READ_BUDGET
        order = sorted(self._files, key=lambda f: (f.live, f.stamp))
        for f in order:
            if f.closed:
                continue
            try:
                batches, used = self._pump(f, budget)
            except FILE_ERRORS as exc:
                self._report_bad(f.path, f, f"{type(exc).__name__}: {exc}")
                continue
            out += self._wrap(f, batches)
            budget -= used
            if budget <= 0:
                break

        return out

    def _pump(self, f: _File, budget: int) -> tuple[list[Batch], int]:
        batches: list[Batch] = []
        used = 0
        while used < budget and not f.closed:
            # A gzip file is read in small pieces and charged what they
            # expand to, so a file made to expand a thousandfold still
            # costs at most the budget plus one piece's expansion.
            chunk = GZIP_READ_CHUNK if f.is_gzip is not False else READ_CHUNK
            try:
                data = os.read(f.fd, chunk)
            except OSError as exc:
                self._report_bad(f.path, f, f"read failed: {exc.strerror}")
                return batches, used
            if not data:
                break
            before = f.fed + len(f.head)
            f.raw_pos += len(data)
            f.last_data = time.monotonic()
            batches += self._take(f, data)
            used += max(len(data), f.fed + len(f.head) - before)

        if f.decoder is not None and not f.closed:
            batches += f.decoder.flush()
            self._tally(f)
        if not f.closed:
            f.behind = os.fstat(f.fd).st_size > f.raw_pos
            if not f.behind:
                f.caught_up_at = time.monotonic()

        return batches, used

    def _take(self, f: _File, data: bytes) -> list[Batch]:
        """Raw bytes from the file: undo gzip, then on to the decoder."""
        if f.is_gzip is None:
            f.raw_head += data
            if len(f.raw_head) < 2:
                return []
            data, f.raw_head = f.raw_head, b""
            f.is_gzip = data[:2] == GZIP_MAGIC
            if f.is_gzip:
                f.gunzip = Gunzip()

        if not f.is_gzip:
            return self._feed(f, data)

        assert f.gunzip is not None
        batches = []
        for piece in f.gunzip.pieces(data):
            batches += self._feed(f, piece)
        if f.gunzip.error is not None:
            # Whole lines decoded before the damage are kept; the rest of
            # the file is given up.
            self.stats.gzip_errors += 1
            log.error(
                "gzip.corrupt", path=f.path, offset=f.raw_pos, error=f.gunzip.error
            )
            batches += self._finish(f)
            self._bad.add((f.dev, f.ino))

        return batches

    def _feed(self, f: _File, data: bytes) -> list[Batch]:
        """Decompressed bytes: find the file's key first, then decode."""
        if f.decoder is None:
            f.head += data
            end = _key_end(f.head)
            if end is None:
                return []
            f.head_len = end
            f.key = _file_key(bytes(f.head[:end]))
            if not self._start_decoder(f):
                return []
            data, f.head = bytes(f.head), bytearray()

        assert f.decoder is not None
        newline = data.rfind(b"\n")
        if newline >= 0:
            f.fed_to_newline = f.fed + newline + 1
        f.fed += len(data)

        return f.decoder.feed(data)

    def _start_decoder(self, f: _File) -> bool:
        """Decide from the file's key whether and where to read it."""
        key = f.key
        assert key is not None
        if key in self._keys_seen:
            self.stats.duplicates_skipped += 1
            log.info("file.already_read", path=f.path, file_key=key, why="this run")
            self._close_file(f)
            return False

        state = self._store.get(key)
        if state is not None and state.done:
            self.stats.duplicates_skipped += 1
            log.info("file.already_read", path=f.path, file_key=key, why="state")
            self._close_file(f)
            return False
        if state is None and not f.read_unknown:
            self.stats.archives_ignored += 1
            log.info("file.not_read", path=f.path, file_key=key, why="read_archive")
            self._close_file(f)
            return False

        self._keys_seen.add(key)
        self._key_where[key] = (f.path, f.dev, f.ino)
        f.skip_until = f.emitted_end = state.offset if state else 0
        f.decoder = LogDecoder(
            f.path,
            batch_size=self.batch_size,
            log_path=f.log_name,
            skip_until=f.skip_until,
            after_close=True,
        )
        log.info(
            "file.reading",
            path=f.path,
            file_key=key,
            resume_at=f.skip_until,
            live=f.live,
        )

        return True

    def _wrap(self, f: _File, batches: list[Batch]) -> list[TailBatch]:
        if not batches:
            return []
        assert f.key is not None
        f.emitted_end = max(f.emitted_end, batches[-1].end_offset)
        self._key_where[f.key] = (f.path, f.dev, f.ino)

        return [TailBatch(b, Cursor(f.key, b.end_offset)) for b in batches]

    # -- finishing ---------------------------------------------------------

    def _finish_quiet(self) -> list[TailBatch]:
        """Finish drained files that are no longer live and have gone quiet."""
        out: list[TailBatch] = []
        now = time.monotonic()
        for f in list(self._files):
            if f.live or f.closed or f.behind:
                continue
            if f.archive or now - f.last_data >= self.finish_grace:
                try:
                    out += self._wrap(f, self._finish(f))
                except FILE_ERRORS as exc:
                    self._report_bad(f.path, f, f"{type(exc).__name__}: {exc}")

        return out

    def _finish(self, f: _File) -> list[Batch]:
        """The file will not grow: emit the rest, drop a partial line, close."""
        batches: list[Batch] = []
        if f.is_gzip is None and f.raw_head:
            f.is_gzip = False
            batches += self._feed(f, f.raw_head)
        if f.gunzip is not None and f.gunzip.in_member:
            self.stats.gzip_errors += 1
            log.error("gzip.truncated", path=f.path, offset=f.raw_pos)
        if f.decoder is None and f.head and not f.head.endswith(b"\n"):
            # Not one whole record: a header and a fragment are all there is.
            self._dropped(f, len(f.head) - (f.head.rfind(b"\n") + 1))
        if f.decoder is not None and not f.closed:
            if f.fed > f.fed_to_newline:
                # The decoder logs the fragment itself.
                self.stats.fragments_dropped += 1
            batches += f.decoder.finish()
            self._tally(f)
            assert f.key is not None
            end = max([f.emitted_end] + [b.end_offset for b in batches])
            self._finished_keys[f.key] = end
            self._mark_done()

        self.stats.files_finished += 1
        log.info("file.finished", path=f.path, offset=f.raw_pos, file_key=f.key)
        with contextlib.suppress(OSError):
            st = os.fstat(f.fd)
            self._passed[(f.dev, f.ino)] = (st.st_size, st.st_mtime_ns)
        self._close_file(f)

        return batches

    def _tally(self, f: _File) -> None:
        """Add the lines the decoder skipped since the last look."""
        assert f.decoder is not None
        skipped = f.decoder.stats.skipped
        self.stats.lines_skipped += skipped - f.skipped_seen
        f.skipped_seen = skipped

    def _dropped(self, f: _File, size: int) -> None:
        self.stats.fragments_dropped += 1
        log.warning("fragment.dropped", path=f.path, size=size, file_key=f.key)

    def _close_file(self, f: _File) -> None:
        if f.closed:
            return
        f.closed = True
        if self._live.get(f.path) is f:
            del self._live[f.path]
        if f in self._files:
            self._files.remove(f)
        with contextlib.suppress(OSError):
            os.close(f.fd)

    def _report_bad(self, path: str, f: _File | None, reason: str) -> None:
        """One error event for a file that cannot be read; skip it."""
        if f is not None:
            ident = (f.dev, f.ino)
            self._close_file(f)
        else:
            try:
                st = os.stat(path)
                ident = (st.st_dev, st.st_ino)
            except OSError:
                ident = (0, 0)
        if ident in self._bad:
            return
        self._bad.add(ident)
        self.stats.bad_files += 1
        log.error("file.bad", path=path, reason=reason, action="skipped")

    def _count(self, out: list[TailBatch]) -> None:
        self.stats.batches += len(out)
        self.stats.records += sum(t.batch.records.num_rows for t in out)


def _key_end(head: bytearray) -> int | None:
    """Length of the head that names the file: header lines + first record.

    None while the first record is not complete yet.
    """
    start = 0
    while True:
        newline = head.find(b"\n", start)
        if newline < 0:
            break
        if head[start : start + 1] != b"#" and head[start:newline].strip():
            return newline + 1
        start = newline + 1
    if len(head) >= HEAD_LIMIT:
        return HEAD_LIMIT

    return None


def _file_key(head: bytes) -> str:
    return hashlib.sha256(head).hexdigest()[:32]
