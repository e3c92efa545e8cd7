"""Notices reach Zeek across rotations and restarts, simulated without Zeek.

`AsciiStream` behaves like Zeek's ASCII Input reader in STREAM mode as
DESIGN.md section 4.3 and case 18 describe it: it opens the file by name
(retrying while it is missing), keeps that file open and never follows a
rename, takes a line without its newline at end of file as a whole line,
uses only the `#fields` header line, and drops lines it cannot convert.
`ScriptModel` does what zeek_scripts/scripts/notices.zeek does with those
lines: control records, the saved position, and identifier suppression.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from sensor.errors import BFlowError
from sensor.notice import NOTICE_FORMAT, NoticeWriter
from sensor.zeekwriter import ValueRejected
from tests.test_notice import make_notice


class AsciiStream:
    """Zeek's ASCII reader in STREAM mode, for one file name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: BinaryIO | None = None
        self.names: list[str] | None = None
        self.dropped = 0
        self._open()

    def _open(self) -> None:
        try:
            self.file = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            self.file = None

    def poll(self) -> list[dict]:
        """The records that the reader's next heartbeat would raise."""
        if self.file is None:
            self._open()
        if self.file is None:
            return []
        data = self.file.read()
        lines = data.split(b"\n")
        if data.endswith(b"\n") or not data:
            lines.pop()
        records = []
        for line in lines:
            if line.startswith(b"#"):
                if line.startswith(b"#fields\t"):
                    self.names = line.decode().split("\t")[1:]
                continue
            try:
                records.append(NOTICE_FORMAT.decode(line, self.names))
            except (ValueRejected, ValueError):
                self.dropped += 1

        return records

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def generation_of(control_id: str) -> int:
    """The file generation a control record's id names (`open-3-<us>`)."""
    return int(control_id.split("-")[1])


class ScriptModel:
    """The notice ingestion of notices.zeek, driven by `AsciiStream`."""

    def __init__(self, notice_log: Path, state_file: Path) -> None:
        self.notice_log = notice_log
        self.state_file = state_file
        self.raised: list[str] = []
        self.suppressed: set[str] = set()
        self.warnings: list[str] = []
        self.resume = ("", 0)
        self.expected = 0
        start = notice_log
        if state_file.exists():
            file_id, lines = state_file.read_text().splitlines()[1].split("\t")
            self.resume = (file_id, int(lines))
            self.expected = generation_of(file_id)
            if self.archived(self.expected).exists():
                start = self.archived(self.expected)
        self._start(start)

    def archived(self, generation: int) -> Path:
        stem = self.notice_log.name.removesuffix(".log")
        return self.notice_log.with_name(f"{stem}.{generation:06d}.log")

    def _start(self, path: Path) -> None:
        self.stream = AsciiStream(path)
        self.file_id = ""
        self.lines = 0
        self.skip = 0

    def _switch(self, path: Path) -> None:
        self.stream.close()
        self._start(path)
        self.poll()

    def poll(self) -> None:
        """Handle every line the reader has for us now."""
        for r in self.stream.poll():
            self.lines += 1
            if r["kind"] == "rotate":
                self.expected = generation_of(str(r["notice_id"])) + 1
                following = self.archived(self.expected)
                return self._switch(
                    following if following.exists() else self.notice_log
                )
            if r["kind"] == "open":
                generation = generation_of(str(r["notice_id"]))
                if self.expected and generation > self.expected:
                    if self.archived(self.expected).exists():
                        return self._switch(self.archived(self.expected))
                    self.warnings.append(f"generation {self.expected} deleted")
                self.expected = generation
                self.file_id = str(r["notice_id"])
                same = self.file_id == self.resume[0]
                self.skip = self.resume[1] if same else 0
            elif self.lines <= self.skip:
                continue
            elif r["kind"] in ("packet", "flow"):
                self._notice(str(r["notice_id"]))
            else:
                self.warnings.append(str(r["kind"]))
            if self.lines > self.skip:
                self._save()
        return None

    def _notice(self, identifier: str) -> None:
        if identifier in self.suppressed:
            return
        self.suppressed.add(identifier)
        self.raised.append(identifier)

    def _save(self) -> None:
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(f"#fields\tfile_id\tlines\n{self.file_id}\t{self.lines}\n")
        os.replace(tmp, self.state_file)

    def stop(self) -> None:
        self.stream.close()


def test_notices_arrive_across_rotations(tmp_path: Path) -> None:
    """Every notice is raised once while the daemon rotates files under Zeek."""
    path = tmp_path / "bflow_notice.log"
    writer = NoticeWriter(path, max_bytes=4096, keep_files=1)
    zeek = ScriptModel(path, tmp_path / "zeek.state")
    notices = [make_notice(i) for i in range(150)]

    for i in range(0, 150, 5):
        writer.write_many(notices[i : i + 5])
        if i % 15 == 0:
            zeek.poll()
    zeek.poll()

    assert writer.generation > 5
    assert len(writer.archived()) == 1
    assert zeek.raised == [n.notice_id for n in notices]
    assert zeek.warnings == [] and zeek.stream.dropped == 0
    writer.close()
    zeek.stop()


def test_zeek_restart_raises_no_duplicates(tmp_path: Path) -> None:
    """A restarted Zeek re-reads the file but raises only what is new."""
    path = tmp_path / "bflow_notice.log"
    state = tmp_path / "zeek.state"
    writer = NoticeWriter(path)
    writer.write_many([make_notice(i) for i in range(120)])
    first = ScriptModel(path, state)
    first.poll()
    first.stop()
    writer.write_many([make_notice(i) for i in range(120, 130)])

    second = ScriptModel(path, state)
    second.poll()
    writer.write_many([make_notice(i) for i in range(130, 135)])
    second.poll()

    assert len(first.raised) == 120
    expected = [make_notice(i).notice_id for i in range(120, 135)]
    assert second.raised == expected
    writer.close()
    second.stop()


def test_file_created_after_zeek_starts(tmp_path: Path) -> None:
    """Zeek started before the daemon gets the notices once the file appears."""
    path = tmp_path / "bflow_notice.log"
    zeek = ScriptModel(path, tmp_path / "zeek.state")
    zeek.poll()

    with NoticeWriter(path) as writer:
        writer.write(make_notice(1))
    zeek.poll()

    assert zeek.raised == [make_notice(1).notice_id]
    zeek.stop()


def test_daemon_restart_and_rewrite(tmp_path: Path) -> None:
    """A daemon that crashes and scores the same records again adds nothing."""
    path = tmp_path / "bflow_notice.log"
    zeek = ScriptModel(path, tmp_path / "zeek.state")
    with NoticeWriter(path, max_bytes=4096) as writer:
        writer.write_many([make_notice(i) for i in range(20)])
    zeek.poll()

    with NoticeWriter(path, max_bytes=4096) as writer:
        written = writer.write_many([make_notice(i) for i in range(15, 25)])
    zeek.poll()

    assert written == 5
    assert zeek.raised == [make_notice(i).notice_id for i in range(25)]
    zeek.stop()


def test_unfinished_rotation_is_finished_on_restart(tmp_path: Path) -> None:
    """A crash before the rotate record is repaired, so Zeek still follows."""
    path = tmp_path / "bflow_notice.log"
    writer = NoticeWriter(path)
    zeek = ScriptModel(path, tmp_path / "zeek.state")
    writer.write(make_notice(1))
    zeek.poll()
    # What a crash between the rename and the rotate record leaves behind:
    # the old file archived without its last record, a new current file.
    os.link(path, writer.archived_path(writer.generation))
    writer.close()
    path.unlink()

    with NoticeWriter(path) as restarted:
        restarted.write(make_notice(2))
    zeek.poll()

    assert zeek.raised == [make_notice(1).notice_id, make_notice(2).notice_id]
    zeek.stop()


def test_rename_without_the_script_loses_notices(tmp_path: Path) -> None:
    """The reader keeps the renamed file, which is why rotation is coordinated."""
    path = tmp_path / "bflow_notice.log"
    with NoticeWriter(path) as writer:
        writer.write(make_notice(1))
    zeek = ScriptModel(path, tmp_path / "zeek.state")
    zeek.poll()

    path.rename(tmp_path / "moved.log")
    with NoticeWriter(path) as writer:
        writer.write(make_notice(2))
    zeek.poll()

    assert zeek.raised == [make_notice(1).notice_id]
    zeek.stop()


def test_failed_rotate_record_is_retried(tmp_path: Path, monkeypatch) -> None:
    """A rotate record that could not be written is written by the next call."""
    path = tmp_path / "bflow_notice.log"
    writer = NoticeWriter(path, max_bytes=1024)
    zeek = ScriptModel(path, tmp_path / "zeek.state")
    writer.write_many([make_notice(i) for i in range(3)])
    zeek.poll()
    real = NoticeWriter._write_rotate_record
    calls = []

    def full_disk_once(self: NoticeWriter, fd: int, generation: int) -> None:
        calls.append(generation)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, fd, generation)

    monkeypatch.setattr(NoticeWriter, "_write_rotate_record", full_disk_once)
    with pytest.raises(BFlowError, match="No space left"):
        writer.write_many([make_notice(i) for i in range(3, 10)])
    zeek.poll()
    writer.write_many([make_notice(i) for i in range(3, 10)])
    zeek.poll()

    assert zeek.raised == [make_notice(i).notice_id for i in range(10)]
    writer.close()
    zeek.stop()


def test_zeek_down_across_rotations_catches_up(tmp_path: Path) -> None:
    """Notices written while Zeek was down, across rotations, arrive once."""
    path = tmp_path / "bflow_notice.log"
    state = tmp_path / "zeek.state"
    writer = NoticeWriter(path, max_bytes=2048, keep_files=20)
    first = ScriptModel(path, state)
    writer.write_many([make_notice(i) for i in range(10)])
    first.poll()
    first.stop()

    start_generation = writer.generation
    writer.write_many([make_notice(i) for i in range(10, 60)])
    second = ScriptModel(path, state)
    second.poll()

    assert writer.generation >= start_generation + 3
    assert first.raised + second.raised == [make_notice(i).notice_id for i in range(60)]
    writer.close()
    second.stop()


def test_lagging_zeek_reports_deleted_files(tmp_path: Path) -> None:
    """If files were deleted before a lagging Zeek read them, it says so."""
    path = tmp_path / "bflow_notice.log"
    writer = NoticeWriter(path, max_bytes=2048, keep_files=0)
    zeek = ScriptModel(path, tmp_path / "zeek.state")
    writer.write_many([make_notice(i) for i in range(3)])
    zeek.poll()

    writer.write_many([make_notice(i) for i in range(3, 60)])
    zeek.poll()

    assert any("deleted" in w for w in zeek.warnings)
    assert zeek.raised[:3] == [make_notice(i).notice_id for i in range(3)]
    assert zeek.raised[-1] == make_notice(59).notice_id
    writer.close()
    zeek.stop()


def test_two_restarts_in_a_row_raise_nothing(tmp_path: Path) -> None:
    """A restart that only re-reads old lines keeps the saved position."""
    path = tmp_path / "bflow_notice.log"
    state = tmp_path / "zeek.state"
    with NoticeWriter(path) as writer:
        writer.write_many([make_notice(i) for i in range(100)])
    runs = []

    for _ in range(3):
        zeek = ScriptModel(path, state)
        zeek.poll()
        zeek.stop()
        runs.append(len(zeek.raised))

    assert runs == [100, 0, 0]
