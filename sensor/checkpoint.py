"""Where the live tail has got to, kept on disk across restarts.

The tail records, per log file, how far into the file's decompressed byte
stream the daemon has safely processed. A file is named by its *file key*, a
hash of its first bytes (the header block, which holds `#open`, and the first
record), so a file keeps its key when Zeek renames it, when zeekctl gzips it
into the archive, and it gets a new key when a new file reuses an old inode.

The state file is JSON, replaced atomically (temporary file, fsync, rename,
fsync of the directory), so a crash at any instant leaves either the old or
the new state, never a mix. A state file that cannot be parsed is therefore
not a normal event: loading it raises `CheckpointError` instead of starting
over from zero, which would read every current log again and repeat its
notices. The message says how to start over on purpose.

Entries of files that were read to their end are dropped after
`keep_done_s` (30 days by default); an archived file older than that is no
longer recognised as read and `read_archive` would read it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from sensor.errors import BFlowError

log = structlog.get_logger(__name__)

STATE_FORMAT: Final = "bflow-tail-state"
STATE_VERSION: Final = 1
KEEP_DONE_S: Final = 30 * 24 * 3600.0


class CheckpointError(BFlowError):
    """The state file is unreadable, corrupt, or held by another daemon."""


@dataclass
class FileState:
    """What is known of one log file.

    Attributes:
        offset: bytes of the decompressed stream whose records are processed.
        path: where the file was last seen (for people; never used to match).
        dev: device number when last seen, 0 if unknown.
        ino: inode number when last seen, 0 if unknown.
        done: the file was read to its end and will not grow again.
        updated: wall-clock time of the last change, seconds since the epoch.
    """

    offset: int
    path: str = ""
    dev: int = 0
    ino: int = 0
    done: bool = False
    updated: float = 0.0


class CheckpointStore:
    """The on-disk state of the tail: file key -> `FileState`.

    Only one process may use a state file at a time; the store holds an
    exclusive lock on `<state_file>.lock` until `close()`.
    """

    def __init__(self, state_file: Path, *, keep_done_s: float = KEEP_DONE_S):
        self.path = Path(state_file)
        self.keep_done_s = keep_done_s
        self.files: dict[str, FileState] = {}
        # Wall-clock time of the last save, None before the first one.
        self.saved_at: float | None = None
        # Wall-clock time of the last directory scan whose files the state
        # covers: a file changed after it may hold records never seen.
        self.scanned_at: float | None = None
        self._lock_fd: int | None = None

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as exc:
            raise CheckpointError(
                f"cannot use state file {self.path}: {exc.strerror or exc} "
                f"({exc.filename}); give a state_file in a writable folder"
            ) from exc
        try:
            self.files, self.saved_at, self.scanned_at = self._load()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        lock_path = f"{self.path}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointError(
                f"state file {self.path} is in use by another process "
                f"(lock {lock_path} is held); run one daemon per state file"
            ) from None
        self._lock_fd = fd

    def _load(self) -> tuple[dict[str, FileState], float | None, float | None]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            log.info("checkpoint.new", state_file=str(self.path))
            return {}, None, None
        except OSError as exc:
            raise CheckpointError(
                f"cannot read state file {self.path}: {exc.strerror}; "
                "fix its permissions or point state_file elsewhere"
            ) from exc

        try:
            doc = json.loads(raw)
            files = _parse_state(doc)
            saved_at = float(doc["saved_at"])
            scanned = doc.get("scanned_at")
            scanned_at = None if scanned is None else float(scanned)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise CheckpointError(
                f"state file {self.path} is corrupt ({exc}); it is written "
                "atomically, so this means the disk or another program changed "
                "it. To start over, move it aside: every current log is then "
                "read again from its start and may repeat notices"
            ) from exc

        log.info("checkpoint.loaded", state_file=str(self.path), files=len(files))
        return files, saved_at, scanned_at

    def get(self, key: str) -> FileState | None:
        """The state of the file with this key, or None if never committed."""
        return self.files.get(key)

    def update(self, key: str, state: FileState) -> None:
        """Set the state of one file in memory; `save()` makes it durable."""
        state.updated = time.time()
        self.files[key] = state

    def save(self) -> None:
        """Write the whole state atomically and durably."""
        self._prune()
        self.saved_at = time.time()
        doc = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "saved_at": self.saved_at,
            "scanned_at": self.scanned_at,
            "files": {key: asdict(st) for key, st in sorted(self.files.items())},
        }
        data = json.dumps(doc, indent=1).encode()

        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            with _open_dir(self.path.parent) as dir_fd:
                os.fsync(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise CheckpointError(
                f"cannot write state file {self.path}: {exc.strerror or exc}; "
                "the read positions on disk were not advanced (records since "
                "the last save will be read again). Free space or fix the "
                "state directory, then restart"
            ) from exc

    def _prune(self) -> None:
        cutoff = time.time() - self.keep_done_s
        stale = [k for k, st in self.files.items() if st.done and st.updated < cutoff]
        for key in stale:
            del self.files[key]

    def close(self) -> None:
        """Release the lock; the store must not be used afterwards."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _parse_state(doc: Any) -> dict[str, FileState]:
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise ValueError(f"not a {STATE_FORMAT} document")
    if doc.get("version") != STATE_VERSION:
        raise ValueError(
            f"version {doc.get('version')!r}, this build reads {STATE_VERSION}"
        )
    files = doc["files"]
    if not isinstance(files, dict):
        raise TypeError("'files' is not an object")

    out: dict[str, FileState] = {}
    for key, entry in files.items():
        if not isinstance(entry, dict):
            raise TypeError(f"entry of file {key} is not an object")
        state = FileState(
            offset=_typed(entry, "offset", int, None),
            path=_typed(entry, "path", str, ""),
            dev=_typed(entry, "dev", int, 0),
            ino=_typed(entry, "ino", int, 0),
            done=_typed(entry, "done", bool, False),
            updated=_typed(entry, "updated", float, 0.0),
        )
        if state.offset < 0:
            raise ValueError(f"negative offset {state.offset} for file {key}")
        if not math.isfinite(state.updated):
            raise ValueError(f"updated {state.updated} of file {key} is not finite")
        out[str(key)] = state

    return out


def _typed(entry: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """One value of a state entry, of the type the state writes, or its default.

    Nothing is converted: "false" is not False and 1.7 is not an offset, so
    a hand edit or damage is an error rather than a silent change of meaning.
    """
    value = entry.get(name, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # bool is an int to Python, but never an offset or an inode.
    if isinstance(value, bool) is not (kind is bool) or not isinstance(value, kind):
        raise TypeError(f"{name} {value!r} is not of type {kind.__name__}")

    return value


@contextlib.contextmanager
def _open_dir(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)
