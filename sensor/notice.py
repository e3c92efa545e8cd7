"""The notice log: what the daemon found, in a file Zeek's Input framework reads.

`NoticeWriter` appends one Zeek ASCII line per notice to `bflow_notice.log`
(fields in `sensor.contract.NOTICE_LOG_FIELDS`). Zeek reads it with the
ASCII reader in STREAM mode, which keeps its file open, re-reads the whole
file when Zeek starts, and takes a line without its newline at end of file as
a whole line. So the writer:

- creates each file with its header and an `open` control record in one
  atomic step (written beside it, fsynced, renamed), before any notice.
  Control records carry the versions of the models the daemon runs (the
  `model_version` field), so an operator can tell which models wrote a file;
- on start, appends to an existing file whose `#fields` match and never
  writes a second header; a file with other fields is archived instead;
- writes each line with one `os.write` on an `O_APPEND` descriptor and
  fsyncs before `write_many` returns, so the daemon may commit its read
  positions afterwards; never truncates;
- skips notices whose `notice_id` is already in the file (or the archived
  file before it), so records scored again after a crash raise nothing
  twice. The check is exact, and its memory is bounded by the rotation
  size: `NoticeIds` holds an id in 11 bytes, so the two files of the
  default 64 MiB size (~250-byte lines) take about 6 MiB at most;
- rotates with the Zeek script taking part: every file is a numbered
  generation that starts with an `open` control record. Past `max_bytes`
  the current file is archived as `bflow_notice.<generation>.log` (a hard
  link, then the next generation is renamed over the name) and a `rotate`
  record is appended to the archived file. The script, still reading the
  old file through its open descriptor, reaches that record and goes on
  with the next generation. The `rotate` record and a `#close` footer go
  out in one write: an archived file is finished, like a log Zeek rotated.
  Archived files beyond `keep_files` are deleted; that is safe once the
  `rotate` record is durable, because a reader that has the file open keeps
  reading it to that record (the space is freed when Zeek closes it).
  zeek_scripts/README.md has the procedure.
- notices the file being deleted or moved away under it (a clean-up job):
  the old file gets a `rotate` record and `#close`, and the name a new
  generation, so a running Zeek follows and a restarted one finds the file.

The current file gets no `#close` when the daemon stops: the next start
appends to it (case 18), and readers that honour `#close` as the end of a
file (`bflow read`, log shippers) would drop every notice after a footer
left in the middle. Taking the footer off again would mean truncating a
file Zeek holds open, which leaves Zeek's reader past the end (case 18).
Zeek's reader skips `#` lines other than `#fields`, so the footer of an
archived file is no record to it.

A full disk or an I/O error raises `BFlowError`. A line cut short by it can
never read as a notice: `kind` is the last field and no kind is a prefix of
another, so the script ignores the fragment; the next write starts on a
fresh line.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import structlog

from sensor.contract import (
    NOTICE_CONTROL_KINDS,
    NOTICE_KINDS,
    NOTICE_LOG_FIELDS,
    NOTICE_LOG_OPTIONAL,
    NOTICE_LOG_PATH,
)
from sensor.errors import BFlowError
from sensor.zeekwriter import LogFormat, ValueRejected, epoch_us

log = structlog.get_logger(__name__)

MSG_MAX_BYTES: Final = 2000
LINE_MAX_BYTES: Final = 3000
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_KEEP_FILES: Final = 8
# `model_version` of control records when the caller names no models.
UNKNOWN_MODELS: Final = "unknown"

NOTICE_FORMAT: Final = LogFormat.from_fields(
    NOTICE_LOG_PATH,
    NOTICE_LOG_FIELDS,
    optional=NOTICE_LOG_OPTIONAL,
    max_bytes={"msg": MSG_MAX_BYTES},
    max_line=LINE_MAX_BYTES,
)

_OPEN_ID: Final = re.compile(r"open-(\d+)-\d+")
_TAIL_BYTES: Final = 16 * 1024
# The form of every id `Notice` makes: kind, "-", 80 bits of a hash in hex.
_NOTICE_ID: Final = re.compile("(" + "|".join(NOTICE_KINDS) + ")-([0-9a-f]{20})")
_KEY_BYTES: Final = 11
_UPDATE_STEP: Final = 65536


@dataclass(frozen=True)
class Notice:
    """One suspicious connection, as the daemon hands it to Zeek.

    `ts` is epoch microseconds (floats, decimal text and aware datetimes are
    converted). The identity `notice_id` is derived from kind, uid and model
    version only, so scoring the same connection again with the same model
    (after a crash, or with other batch boundaries) gives the same id.
    """

    ts: int
    uid: str
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    proto: str
    kind: str
    score: float
    threshold: float
    model_version: str
    msg: str
    notice_id: str = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in NOTICE_KINDS:
            raise ValueRejected(
                f"notice kind {self.kind!r} is not one of {NOTICE_KINDS}"
            )
        if not self.uid or not self.model_version:
            raise ValueRejected(
                f"notice for uid {self.uid!r} needs a uid and a model version "
                f"(got model_version {self.model_version!r})"
            )
        for name in ("score", "threshold"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueRejected(
                    f"notice {name} {value!r} for uid {self.uid} is not a finite number"
                )
        object.__setattr__(self, "ts", epoch_us(self.ts))
        key = f"{self.kind}\0{self.uid}\0{self.model_version}".encode()
        digest = hashlib.sha256(key).hexdigest()[:20]
        object.__setattr__(self, "notice_id", f"{self.kind}-{digest}")

    def record(self) -> dict[str, object]:
        """The values of its notice log line, by field name."""
        return {
            "ts": self.ts,
            "notice_id": self.notice_id,
            "uid": self.uid,
            "id.orig_h": self.orig_h,
            "id.orig_p": (self.orig_p, self.proto),
            "id.resp_h": self.resp_h,
            "id.resp_p": (self.resp_p, self.proto),
            "model_version": self.model_version,
            "msg": self.msg,
            "threshold": float(self.threshold),
            "score": float(self.score),
            "kind": self.kind,
        }


class NoticeIds:
    """A set of notice ids that holds each id in about 11 bytes, exactly.

    An id of the form `Notice` makes is kept as its 10 hash bytes followed
    by one byte for its kind. That encoding is one-to-one, so membership is
    exact: no collision to rule out, no file to read again. Keys live in a
    sorted numpy array searched by bisection; keys added since the last
    merge wait in a small set (at most `merge_every`), merged in one pass.
    Ids of any other form (a hand-edited file) are kept as they are.

    The writer used to keep the id strings in a Python set, ~180 bytes per
    notice (tracemalloc), which grew the daemon by megabytes a minute at
    the notice rate of a busy sensor.
    """

    def __init__(self, ids: Iterable[str] = (), *, merge_every: int = 1024):
        self.merge_every = merge_every
        self._sorted = np.empty(0, dtype=f"S{_KEY_BYTES}")
        self._pending: set[bytes] = set()
        self._other: set[str] = set()
        self.update(ids)

    def __len__(self) -> int:
        return len(self._sorted) + len(self._pending) + len(self._other)

    def __contains__(self, notice_id: object) -> bool:
        if not isinstance(notice_id, str):
            return False
        key = _id_key(notice_id)
        if key is None:
            return notice_id in self._other

        return key in self._pending or self._in_sorted(key)

    def add(self, notice_id: str) -> None:
        """Add one id."""
        key = _id_key(notice_id)
        if key is None:
            self._other.add(notice_id)
            return
        if self._in_sorted(key):
            return
        self._pending.add(key)
        if len(self._pending) >= self.merge_every:
            self._merge(list(self._pending))
            self._pending.clear()

    def update(self, ids: Iterable[str]) -> None:
        """Add many ids (a whole file's), merged in large steps."""
        keys: list[bytes] = []
        for notice_id in ids:
            key = _id_key(notice_id)
            if key is None:
                self._other.add(notice_id)
                continue
            keys.append(key)
            if len(keys) == _UPDATE_STEP:
                self._merge(keys)
                keys.clear()
        self._merge(keys)

    def union(self, other: NoticeIds) -> NoticeIds:
        """A new set holding the ids of both."""
        out = NoticeIds(merge_every=self.merge_every)
        out._sorted = np.union1d(self._sorted, other._sorted)
        out._merge(list(self._pending | other._pending))
        out._other = self._other | other._other

        return out

    def _in_sorted(self, key: bytes) -> bool:
        at = int(np.searchsorted(self._sorted, key))

        return at < len(self._sorted) and bool(self._sorted[at] == key)

    def _merge(self, keys: list[bytes]) -> None:
        if not keys:
            return
        new = np.unique(np.array(keys, dtype=self._sorted.dtype))
        at = np.searchsorted(self._sorted, new)
        inside = at < len(self._sorted)
        known = np.zeros(len(new), dtype=bool)
        known[inside] = self._sorted[at[inside]] == new[inside]
        self._sorted = np.insert(self._sorted, at[~known], new[~known])


def _id_key(notice_id: str) -> bytes | None:
    match = _NOTICE_ID.fullmatch(notice_id)
    if match is None:
        return None
    # The kind byte goes last and is never 0: numpy's bytes type drops
    # trailing NUL bytes when it hands an item back, so a key ending in one
    # would no longer equal itself when looked up.
    kind = NOTICE_KINDS.index(match[1]) + 1

    return bytes.fromhex(match[2]) + bytes([kind])


class NoticeWriter:
    """Appends notices durably to the notice log Zeek reads.

    Args:
        path: the notice log, e.g. `/var/lib/bflow/notices/bflow_notice.log`.
        max_bytes: rotate when a write would take the file past this size.
        keep_files: archived files to keep; older ones are deleted.
        model_version: the models the daemon runs, e.g.
            `flow=<version>,packet=<version>`; written in the `model_version`
            field of control records. Set the attribute after a model swap.

    Raises:
        BFlowError: the file cannot be created or read.
        ValueRejected: `model_version` is empty.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep_files: int = DEFAULT_KEEP_FILES,
        model_version: str = UNKNOWN_MODELS,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep_files = keep_files
        self.model_version = model_version
        self.written = 0
        self.duplicates = 0
        self.rejected = 0
        self._ids = NoticeIds()
        self._previous_ids = NoticeIds()
        self._fd = -1
        self._size = 0
        self._generation = 0
        self._needs_newline = False
        self._pending_rotate: int | None = None
        self._unsynced = False
        self._base_size = 0
        self._open()

    @property
    def model_version(self) -> str:
        """What control records name in their `model_version` field."""
        return self._model_version

    @model_version.setter
    def model_version(self, value: str) -> None:
        # Zeek's script reads the field as a string that is never unset, and
        # an empty one tells an operator nothing.
        if not isinstance(value, str) or not value.strip():
            raise ValueRejected(
                f"notice log model_version {value!r} is empty; name the models "
                f"in use (e.g. 'flow=<version>') or leave the default "
                f"{UNKNOWN_MODELS!r}"
            )
        self._model_version = value

    @property
    def generation(self) -> int:
        """The number of the current file; archived files carry theirs."""
        return self._generation

    @property
    def remembered(self) -> int:
        """Notice ids held for duplicate suppression (current + previous file)."""
        return len(self._ids) + len(self._previous_ids)

    def archived_path(self, generation: int) -> Path:
        """Where the file of `generation` lives once archived."""
        stem = self.path.name.removesuffix(".log")
        return self.path.with_name(f"{stem}.{generation:06d}.log")

    def archived(self) -> list[tuple[int, Path]]:
        """Archived files present, oldest first, as (generation, path)."""
        stem = re.escape(self.path.name.removesuffix(".log"))
        pattern = re.compile(stem + r"\.(\d{6,})\.log")
        found = []
        for entry in self.path.parent.iterdir():
            match = pattern.fullmatch(entry.name)
            if match:
                found.append((int(match[1]), entry))

        return sorted(found)

    def write(self, notice: Notice) -> bool:
        """Write one notice durably; False if its id was already written."""
        return self.write_many([notice]) == 1

    def write_many(self, notices: Iterable[Notice]) -> int:
        """Write notices durably (fsynced before returning).

        Notices already in the log are skipped and counted in `duplicates`;
        notices with values that cannot be written are skipped, logged and
        counted in `rejected`.

        Returns:
            How many notices were written.

        Raises:
            BFlowError: the disk is full or failed; nothing the daemon has
                not been told about is durable, so it must retry later.
        """
        written = 0
        rejected: list[str] = []
        try:
            try:
                self._follow_name()
            except OSError as exc:
                raise _disk_error(self.path, exc) from exc
            if self._pending_rotate is not None:
                try:
                    self._finish_pending_rotate()
                except OSError as exc:
                    raise _disk_error(self.path, exc) from exc
            for notice in notices:
                notice_id = notice.notice_id
                if notice_id in self._ids or notice_id in self._previous_ids:
                    self.duplicates += 1
                    continue
                try:
                    line = NOTICE_FORMAT.line(notice.record())
                except ValueRejected as exc:
                    rejected.append(f"{notice.uid}: {exc}")
                    continue
                full = self._size + len(line) > self.max_bytes
                if full and self._size > self._base_size:
                    self._rotate()
                self._append(line)
                self._ids.add(notice_id)
                written += 1
            # Lines of an earlier call that failed before its fsync are made
            # durable here, even when this call adds nothing new.
            if self._unsynced:
                self._sync(self._fd)
                self._unsynced = False
        finally:
            self.rejected += len(rejected)
            if rejected:
                log.warning("notices.rejected", count=len(rejected), first=rejected[0])
        self.written += written

        return written

    def close(self) -> None:
        """Close the file; the writer cannot be used afterwards."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> NoticeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp_path().unlink(missing_ok=True)
            self._undo_half_rotation()
            if not self.path.exists():
                self._generation = self._last_archived() + 1
                self._create_current()
                self._finish_old_rotation()
            else:
                self._attach()
        except OSError as exc:
            raise _disk_error(self.path, exc) from exc

    def _attach(self) -> None:
        head = _read_head(self.path).split(b"\n")
        fields = [line for line in head if line.startswith(b"#fields\t")]
        # Zeek's reader takes the first #fields line: it must be ours.
        if fields[:1] != [NOTICE_FORMAT.fields_line()]:
            log.warning(
                "notice_log.schema_changed",
                path=str(self.path),
                action="archived; Zeek must be restarted with the new scripts",
            )
            self._generation = self._last_archived() + 1
            old = self.archived_path(self._generation)
            os.link(self.path, old)
            self._generation += 1
            self._create_current()
            self._prune()
            return

        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size
        self._needs_newline = self._size > 0 and _last_byte(self.path) != b"\n"
        self._ids, opened = _scan(self.path)
        match = _OPEN_ID.fullmatch(opened) if opened else None
        self._generation = int(match[1]) if match else self._last_archived() + 1
        self._finish_old_rotation()
        log.info(
            "notice_log.attached",
            path=str(self.path),
            generation=self._generation,
            notices=len(self._ids),
        )

    def _create_current(self) -> None:
        now = time.time_ns() // 1000
        tmp = self._tmp_path()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            content = NOTICE_FORMAT.header(now) + self._control_line(
                "open",
                now,
                f"open-{self._generation}-{now}",
                f"bflow notice log generation {self._generation} opened",
            )
            _write_all(fd, content)
            self._sync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._sync_dir()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = self._base_size = os.fstat(self._fd).st_size
        self._needs_newline = False
        log.info("notice_log.created", path=str(self.path), generation=self._generation)

    def _rotate(self) -> None:
        old_fd, old_generation = self._fd, self._generation
        archived = self.archived_path(old_generation)
        try:
            os.link(self.path, archived)
            try:
                self._generation += 1
                self._create_current()
            except OSError:
                self._generation = old_generation
                self._fd = old_fd
                archived.unlink(missing_ok=True)
                raise
            os.close(old_fd)
            self._previous_ids, self._ids = self._ids, NoticeIds()
            self._pending_rotate = old_generation
            self._finish_pending_rotate()
        except OSError as exc:
            raise _disk_error(self.path, exc) from exc
        log.info(
            "file.rotated",
            path=str(self.path),
            archived=str(archived),
            generation=self._generation,
        )
        self._prune()

    def _follow_name(self) -> None:
        """Start a new file if the notice log's name no longer leads to ours.

        Someone deleted or moved the file (a clean-up job, a careless
        logrotate). A Zeek that has it open reads on to a `rotate` record
        and reopens the name; a Zeek that starts later opens the name. So
        the old file gets that record and the name a file of its own again;
        notices already written still count as written.
        """
        if self._fd >= 0:
            mine = os.fstat(self._fd)
            try:
                named: os.stat_result | None = os.stat(self.path)
            except FileNotFoundError:
                named = None
            if named is not None and os.path.samestat(mine, named):
                return
            log.warning(
                "notice_log.replaced",
                path=str(self.path),
                deleted=mine.st_nlink == 0,
                action="rotate record appended; notices go on in a new file",
            )
            fate = "was deleted" if mine.st_nlink == 0 else "was moved away"
            self._append(self._closing_lines(self._generation, fate))
            self._sync(self._fd)
            self._unsynced = False
            os.close(self._fd)
            self._fd = -1
            self._previous_ids = self._previous_ids.union(self._ids)
            self._ids = NoticeIds()

        # Here too after a failure part way through, with the fd closed.
        written = self._previous_ids
        if self.path.exists():
            self._attach()
        else:
            self._generation += 1
            self._create_current()
        self._previous_ids = self._previous_ids.union(written)

    def _finish_pending_rotate(self) -> None:
        if self._pending_rotate is None:
            return
        fd = os.open(self.archived_path(self._pending_rotate), os.O_RDWR | os.O_APPEND)
        try:
            self._write_rotate_record(fd, self._pending_rotate)
        finally:
            os.close(fd)
        self._pending_rotate = None

    def _write_rotate_record(self, fd: int, generation: int) -> None:
        archived = self.archived_path(generation).name
        lines = self._closing_lines(generation, f"was archived as {archived}")
        tail = _last_byte_fd(fd)
        _write_all(fd, lines if tail in (b"", b"\n") else b"\n" + lines)
        self._sync(fd)

    def _closing_lines(self, generation: int, fate: str) -> bytes:
        """The `rotate` record and `#close` footer that end a generation."""
        now = time.time_ns() // 1000
        rotate = self._control_line(
            "rotate",
            now,
            f"rotate-{generation}-{now}",
            f"bflow notice log generation {generation} ends here and {fate}; "
            f"notices continue in {self.path.name}",
        )

        return rotate + NOTICE_FORMAT.close_line(now)

    def _finish_old_rotation(self) -> None:
        # A crash between archiving the old file and appending its rotate
        # record leaves a Zeek that still reads the old file stuck there.
        previous = self.archived_path(self._generation - 1)
        if not previous.exists():
            return
        if any(r["kind"] == "rotate" for r in _tail_records(previous)):
            self._previous_ids = _scan(previous)[0]
            return
        fd = os.open(previous, os.O_RDWR | os.O_APPEND)
        try:
            self._write_rotate_record(fd, self._generation - 1)
        finally:
            os.close(fd)
        self._previous_ids = _scan(previous)[0]
        log.warning("notice_log.rotation_finished", archived=str(previous))

    def _undo_half_rotation(self) -> None:
        # Crash after the hard link but before the new file took the name:
        # both names point at the current file; drop the archive name.
        if not self.path.exists():
            return
        for _, path in self.archived():
            if os.path.samefile(path, self.path):
                path.unlink()
                log.warning("notice_log.rotation_undone", archived=str(path))

    def _append(self, line: bytes) -> None:
        if self._needs_newline:
            line = b"\n" + line
        try:
            _write_all(self._fd, line)
        except OSError as exc:
            self._needs_newline = True
            self._size = os.fstat(self._fd).st_size
            raise _disk_error(self.path, exc) from exc
        self._needs_newline = False
        self._unsynced = True
        self._size += len(line)

    def _control_line(self, kind: str, now: int, notice_id: str, msg: str) -> bytes:
        assert kind in NOTICE_CONTROL_KINDS
        values: Mapping[str, object] = {
            "ts": now,
            "notice_id": notice_id,
            "model_version": self.model_version,
            "msg": msg,
            "threshold": 0.0,
            "score": 0.0,
            "kind": kind,
        }

        return NOTICE_FORMAT.line(values)

    def _prune(self) -> None:
        archived = self.archived()
        for generation, path in archived[: max(0, len(archived) - self.keep_files)]:
            path.unlink(missing_ok=True)
            log.info("notice_log.pruned", archived=str(path), generation=generation)

    def _last_archived(self) -> int:
        archived = self.archived()
        return archived[-1][0] if archived else 0

    def _tmp_path(self) -> Path:
        return self.path.with_name(self.path.name + ".tmp")

    def _sync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _disk_error(self.path, exc) from exc

    def _sync_dir(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_notices(path: str | os.PathLike[str]) -> list[dict[str, object]]:
    """The records of a notice log (notices and control records), in order.

    Lines Zeek's reader would drop are skipped, as Zeek skips them.
    """
    return list(_records(Path(path)))


def _records(path: Path) -> Iterable[dict[str, object]]:
    names: list[str] | None = None
    with open(path, "rb") as src:
        for line in src:
            if line.startswith(b"#"):
                # Like Zeek's reader: the first #fields line names the fields
                # and later ones are no header (case 18).
                if names is None and line.startswith(b"#fields\t"):
                    fields = line.rstrip(b"\n").split(b"\t")[1:]
                    names = [f.decode("utf-8", "backslashreplace") for f in fields]
                continue
            if names is None:
                continue
            try:
                yield NOTICE_FORMAT.decode(line, names)
            except (ValueRejected, ValueError, ArithmeticError):
                continue


def _tail_records(path: Path) -> list[dict[str, object]]:
    names = [f.name for f in NOTICE_FORMAT.columns]
    size = path.stat().st_size
    with open(path, "rb") as src:
        src.seek(max(0, size - _TAIL_BYTES))
        lines = src.read().split(b"\n")[1:]
    out = []
    for line in lines:
        if line and not line.startswith(b"#"):
            try:
                out.append(NOTICE_FORMAT.decode(line, names))
            except (ValueRejected, ValueError, ArithmeticError):
                continue

    return out


def _scan(path: Path) -> tuple[NoticeIds, str | None]:
    """The ids of a file's notices, and the id of its first `open` record.

    Records are read one at a time: a full 64 MiB file held as a list of
    records took 380 MiB at start-up, and the daemon kept that RSS.
    """
    opened: list[str] = []

    def ids() -> Iterator[str]:
        for record in _records(path):
            if record["kind"] in NOTICE_KINDS:
                yield str(record["notice_id"])
            elif record["kind"] == "open" and not opened:
                opened.append(str(record["notice_id"]))

    found = NoticeIds(ids())

    return found, (opened[0] if opened else None)


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as src:
        return src.read(_TAIL_BYTES)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as src:
        src.seek(0, os.SEEK_END)
        if src.tell() == 0:
            return b""
        src.seek(-1, os.SEEK_END)
        return src.read(1)


def _last_byte_fd(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, 1, size - 1) if size else b""


def _write_all(fd: int, data: bytes) -> None:
    # One write is the normal case; a short write happens only when the disk
    # is full or a file size limit is hit, and then the loop ends in OSError.
    view = memoryview(data)
    while view:
        done = os.write(fd, view)
        if done == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[done:]


def _disk_error(path: Path, exc: OSError) -> BFlowError:
    return BFlowError(
        f"cannot write the notice log {path}: {exc.strerror or exc} "
        f"(errno {exc.errno}); free space or fix the disk. Notices not yet "
        "written are kept by the daemon and retried; any cut-short line is "
        "ignored by Zeek"
    )
