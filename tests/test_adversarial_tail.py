"""Hostile input for the live tail and its state file.

Each test is a defect found by attacking the tail: a damaged archive lost
records that were whole, and a damaged or hand-edited state file crashed the
start-up or silently changed what would be read.
"""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from sensor.checkpoint import CheckpointError, CheckpointStore, FileState
from sensor.tail import LogTailer

CONN = "01-unset-vs-empty/conn.log"
STATE = '{"format": "bflow-tail-state", "version": 1, "saved_at": 1.0, "files": '


def test_archive_with_bad_gzip_trailer_gives_every_record(
    tmp_path: Path, cases_dir: Path
) -> None:
    """An archived gzip whose CRC is wrong still gives all its records once."""
    day = tmp_path / "spool" / "logs" / "2026-12-04"
    day.mkdir(parents=True)
    packed = bytearray(gzip.compress((cases_dir / CONN).read_bytes()))
    packed[-8:-4] = b"\x01\x02\x03\x04"
    (day / "conn.09:00:00-10:00:00.log.gz").write_bytes(bytes(packed))

    uids: Counter[str] = Counter()
    with LogTailer(
        tmp_path / "spool",
        state_file=tmp_path / "state.json",
        log_paths=("conn",),
        poll_interval=0.05,
        finish_grace=0.1,
        read_archive=True,
        watch=False,
    ) as tail:
        end = time.monotonic() + 10
        while sum(uids.values()) < 4 and time.monotonic() < end:
            for item in tail.poll(0.1):
                uids.update(item.batch.records.column("uid").to_pylist())
        assert tail.stats.gzip_errors == 1
    assert len(uids) == 4 and set(uids.values()) == {1}


@pytest.mark.parametrize(
    "files",
    [
        '{"k": {"offset": Infinity}}',
        '{"k": {"offset": 1e400}}',
        '{"k": {"offset": 1.7}}',
        '{"k": {"offset": true}}',
        '{"k": {"offset": "12"}}',
        '{"k": {"offset": 5, "done": "false"}}',
        '{"k": {"offset": 5, "ino": null}}',
        '{"k": {"offset": 5, "updated": NaN}}',
        '{"k": [5]}',
        "[" * 100_000,
    ],
)
def test_damaged_state_values_are_a_checkpoint_error(
    tmp_path: Path, files: str
) -> None:
    """A state value of the wrong type is a CheckpointError, never a guess."""
    state = tmp_path / "state.json"
    state.write_text(STATE + files + "}")
    with pytest.raises(CheckpointError, match="corrupt"):
        CheckpointStore(state)


def test_state_written_is_read_back(tmp_path: Path) -> None:
    """What save() writes passes the strict reading, value for value."""
    store = CheckpointStore(tmp_path / "state.json")
    store.update("k", FileState(7, path="/x/conn.log", dev=3, ino=9, done=True))
    store.save()
    store.close()
    again = CheckpointStore(tmp_path / "state.json")
    state = again.get("k")
    again.close()
    assert state is not None
    assert (state.offset, state.path, state.dev, state.ino, state.done) == (
        7,
        "/x/conn.log",
        3,
        9,
        True,
    )
    assert json.loads((tmp_path / "state.json").read_text())["files"]["k"]["done"]


def test_raw_byte_on_a_wide_line_does_not_lose_the_live_file(
    tmp_path: Path, cases_dir: Path
) -> None:
    """A live line with a raw 0x92 byte and an extra field is one skipped line."""
    raw = (cases_dir / "14-watchdog-event-loss/conn_raw_non_utf8_byte.log").read_bytes()
    lines = raw.splitlines(keepends=True)
    widened = lines[8].replace(b"\n", b"\textra\n")
    folder = tmp_path / "spool"
    folder.mkdir()
    (folder / "conn.log").write_bytes(b"".join(lines[:8]) + widened)

    uids: Counter[str] = Counter()
    with LogTailer(
        folder,
        state_file=tmp_path / "state.json",
        log_paths=("conn",),
        poll_interval=0.05,
        watch=False,
    ) as tail:
        tail.poll(0.2)
        with open(folder / "conn.log", "ab") as out:
            out.write(b"".join(lines[9:]))
        end = time.monotonic() + 10
        while not uids and time.monotonic() < end:
            for item in tail.poll(0.1):
                uids.update(item.batch.records.column("uid").to_pylist())
        assert tail.stats.bad_files == 0
        assert tail.stats.lines_skipped == 1
    assert uids == Counter({"Cwd1oo0000000000o2": 1})


def test_state_file_under_a_regular_file_is_a_checkpoint_error(
    tmp_path: Path,
) -> None:
    """A state_file whose folder is a file is a CheckpointError naming it."""
    blocker = tmp_path / "state"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="writable folder"):
        LogTailer(tmp_path, state_file=blocker / "state.json", watch=False)
