"""Put a model file in service atomically, keep the last few, restore one.

The daemon watches its model path and reloads when the file there is
replaced, so a new model must appear there in one step: it is written to a
temporary file in the same directory, flushed to disk, renamed over the old
one with `os.replace`, and the directory itself is flushed so the rename
survives a power cut. A reader sees the old file or the new one, never half
of either.

Beside the live model, `history/` keeps the last N models that were put in
service, each with its gate report (JSON) and training report (PNG)::

    models/flow.pt
    models/history/flow-20261209T171500Z.pt
    models/history/flow-20261209T171500Z.json
    models/history/flow-20261209T171500Z.png
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from sensor.errors import ConfigError

log = structlog.get_logger(__name__)

HISTORY_DIR = "history"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class HistoryEntry:
    """One model kept in history, with its reports."""

    version: str
    model: Path
    report: Path
    png: Path
    sha256: str
    promoted_at: str


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)

    return digest.hexdigest()


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry change (a rename) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def temp_beside(target: Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path in the target's directory, removed unless renamed."""
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix, dir=target.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def model_lock(live: Path) -> Iterator[None]:
    """Hold the lock of one live model path for a retraining or a rollback.

    Two of them at once (the timer and a person) would race to replace the
    model; the second one fails at once instead of waiting.

    Raises:
        ConfigError: another process holds the lock, or the model directory
            is missing or read-only.
    """
    path = live.with_name(f".{live.name}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {str(path)!r} ({exc.strerror}); the model "
            f"directory {str(live.parent)!r} must exist and be writable by "
            "this user"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another `bflow retrain` or `bflow rollback` is working on "
                f"{str(live)!r} (it holds {str(path)!r}); wait for it to end"
            ) from None
        yield
    finally:
        os.close(fd)


def install(source: Path, target: Path) -> None:
    """Replace `target` with a copy of `source` in one atomic step.

    `source` is left as it is. The copy is written and flushed beside the
    target first, so the rename never crosses a file system.
    """
    with temp_beside(target) as tmp:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    fsync_dir(target.parent)


def write_json(data: dict[str, Any], target: Path) -> None:
    """Write a JSON document atomically (temp file, fsync, rename)."""
    with temp_beside(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2, sort_keys=True, default=str)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    fsync_dir(target.parent)


def safe_version(version: str) -> str:
    """A model version made safe to use in a file name."""
    cleaned = _UNSAFE.sub("_", version).strip("._") or "unnamed"

    return cleaned[:100]


class History:
    """The models kept beside one live model path."""

    def __init__(self, live: Path, *, keep: int = 5) -> None:
        if keep < 1:
            raise ConfigError(
                f"keep = {keep} models in history; keep at least 1 so the "
                "model in service can always be restored"
            )
        self.live = live
        self.keep = keep
        self.dir = live.parent / HISTORY_DIR
        self.stem = live.stem

    def _base(self, version: str) -> Path:
        return self.dir / f"{self.stem}-{safe_version(version)}"

    def entries(self) -> list[HistoryEntry]:
        """Kept models, oldest first (by the time they were put in service)."""
        if not self.dir.is_dir():
            return []
        found = []
        for report in self.dir.glob(f"{self.stem}-*.json"):
            try:
                data = json.loads(report.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("history.unreadable", path=str(report))
                continue
            model = report.with_suffix(".pt")
            if not model.is_file() or not isinstance(data, dict):
                continue
            found.append(
                HistoryEntry(
                    version=str(data.get("version", report.stem)),
                    model=model,
                    report=report,
                    png=report.with_suffix(".png"),
                    sha256=str(data.get("sha256", "")),
                    promoted_at=str(data.get("promoted_at", "")),
                )
            )
        found.sort(key=lambda e: (e.promoted_at, e.version))

        return found

    def find(self, version: str) -> HistoryEntry | None:
        """The kept model with this version, if any."""
        for entry in self.entries():
            if entry.version == version:
                return entry

        return None

    def live_entry(self) -> HistoryEntry | None:
        """The kept model whose bytes are the live model's, if any."""
        if not self.live.is_file():
            return None
        digest = file_sha256(self.live)
        for entry in reversed(self.entries()):
            if entry.sha256 == digest:
                return entry

        return None

    def add(
        self,
        model: Path,
        report: dict[str, Any],
        *,
        png: Path | None = None,
    ) -> HistoryEntry:
        """Keep a copy of a model with its reports.

        `report` must hold `version` and `promoted_at`; the model's SHA-256
        is added to it.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        base = self._base(str(report["version"]))
        kept_model = base.with_suffix(".pt")
        install(model, kept_model)
        if png is not None and png.is_file():
            install(png, base.with_suffix(".png"))
        report = dict(report, sha256=file_sha256(kept_model))
        write_json(report, base.with_suffix(".json"))

        return HistoryEntry(
            version=str(report["version"]),
            model=kept_model,
            report=base.with_suffix(".json"),
            png=base.with_suffix(".png"),
            sha256=str(report["sha256"]),
            promoted_at=str(report["promoted_at"]),
        )

    def prune(self) -> list[str]:
        """Drop the oldest kept models beyond `keep`; never the live one."""
        entries = self.entries()
        live = self.live_entry()
        dropped = []
        while len(entries) > self.keep:
            victim = entries.pop(0)
            if live is not None and victim.model == live.model:
                continue
            for path in (victim.model, victim.report, victim.png):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            dropped.append(victim.version)
        if dropped:
            log.info("history.pruned", dropped=dropped, kept=len(entries))

        return dropped
