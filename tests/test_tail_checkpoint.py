"""The tail's state file (`sensor.checkpoint`): durable, atomic, strict."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sensor.checkpoint import CheckpointError, CheckpointStore, FileState
from sensor.tail import LogTailer


def test_positions_saved_only_on_commit(tmp_path: Path, data_dir: Path) -> None:
    """Reading alone writes no state; commit writes the cursor's offset."""
    folder = tmp_path / "logs"
    folder.mkdir()
    source = data_dir / "lab" / "benign-2" / "zeek" / "conn.log"
    (folder / "conn.log").write_bytes(source.read_bytes())
    state = tmp_path / "state.json"

    with LogTailer(folder, state_file=state, log_paths=("conn",)) as t:
        got = []
        end = time.monotonic() + 5
        while not got and time.monotonic() < end:
            got = t.poll(0.2)
        assert got and not state.exists()
        t.commit([got[-1].cursor])

    doc = json.loads(state.read_text())
    entry = doc["files"][got[-1].cursor.file_key]
    assert entry["offset"] == got[-1].cursor.offset == got[-1].batch.end_offset
    assert entry["path"] == str(folder / "conn.log")
    assert not list(tmp_path.glob(".state.json.tmp"))


def test_round_trip(tmp_path: Path) -> None:
    """What is saved is what the next store loads."""
    state = tmp_path / "state.json"
    store = CheckpointStore(state)
    store.update("k1", FileState(123, path="/x/conn.log", dev=1, ino=2, done=True))
    store.save()
    store.close()

    again = CheckpointStore(state)
    loaded = again.get("k1")
    again.close()

    assert loaded is not None
    assert (loaded.offset, loaded.path, loaded.ino, loaded.done) == (
        123,
        "/x/conn.log",
        2,
        True,
    )
    assert again.saved_at is not None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"format": "something-else", "version": 1, "files": {}}',
        b'{"format": "bflow-tail-state", "version": 99, "files": {}}',
        b'{"format": "bflow-tail-state", "version": 1, "saved_at": 1.0,'
        b' "files": {"k": {"offset": -5}}}',
    ],
    ids=["empty", "cut", "foreign", "future", "negative"],
)
def test_bad_state_file_refused(tmp_path: Path, content: bytes) -> None:
    """A state file that is empty, cut, foreign or invalid stops start-up."""
    state = tmp_path / "state.json"
    state.write_bytes(content)

    with pytest.raises(CheckpointError, match=str(state)):
        CheckpointStore(state)
    assert state.read_bytes() == content


def test_old_done_entries_pruned(tmp_path: Path) -> None:
    """Finished files are forgotten after keep_done_s; unfinished ones never."""
    state = tmp_path / "state.json"
    store = CheckpointStore(state, keep_done_s=0.0)
    store.update("done", FileState(10, done=True))
    store.update("open", FileState(10))
    time.sleep(0.01)
    store.save()
    store.close()

    assert set(json.loads(state.read_text())["files"]) == {"open"}


def test_failed_save_is_a_clear_error_and_keeps_old_state(tmp_path: Path) -> None:
    """A save the OS refuses raises CheckpointError; the old state stays whole."""
    state = tmp_path / "state.json"
    store = CheckpointStore(state)
    store.update("k", FileState(100))
    store.save()
    before = state.read_bytes()
    # The temporary file's name taken by a folder: the OS refuses the write.
    (tmp_path / ".state.json.tmp").mkdir()
    store.update("k", FileState(200))

    with pytest.raises(CheckpointError, match="cannot write state file"):
        store.save()
    store.close()

    assert state.read_bytes() == before


def test_out_of_range_settings_refused(tmp_path: Path) -> None:
    """A zero poll interval or batch size is a ConfigError naming the setting."""
    from sensor.errors import ConfigError

    with pytest.raises(ConfigError, match="poll_interval is 0"):
        LogTailer(tmp_path, state_file=tmp_path / "s.json", poll_interval=0)
    with pytest.raises(ConfigError, match="batch_size is 0"):
        LogTailer(tmp_path, state_file=tmp_path / "s.json", batch_size=0)
