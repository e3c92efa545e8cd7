"""The live tail (`sensor.tail`): real files in temporary folders.

Each test writes real Zeek conn.log content (from `shared/data` or the fault
cases) with ordinary file operations while a `LogTailer` follows the folder,
and checks which records come out, and how often.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from watchdog.observers import Observer

from sensor.checkpoint import CheckpointError
from sensor.tail import LogTailer, TailBatch

POLL = 0.1
GRACE = 0.4


class Follower:
    """Polls a tailer like the daemon does: take batches, commit them."""

    def __init__(self, tailer: LogTailer, *, commit: bool = True):
        self.tailer = tailer
        self.commit = commit
        self.uids: Counter[str] = Counter()
        self.batches: list[TailBatch] = []

    def poll_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._take(self.tailer.poll(POLL))

    def until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < end, f"timed out; have {dict(self.uids)}"
            self._take(self.tailer.poll(POLL))

    def _take(self, got: list[TailBatch]) -> None:
        for item in got:
            self.batches.append(item)
            self.uids.update(item.batch.records.column("uid").to_pylist())
        if got and self.commit:
            self.tailer.commit([item.cursor for item in got])

    def records(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for item in self.batches:
            out += item.batch.records.to_pylist()
        return out


def tailer(folder: Path, state: Path, **options: object) -> LogTailer:
    settings: dict[str, object] = {
        "poll_interval": POLL,
        "finish_grace": GRACE,
        "log_paths": ("conn",),
    }
    settings.update(options)
    return LogTailer(folder, state_file=state, **settings)  # type: ignore[arg-type]


def split_log(path: Path) -> tuple[bytes, list[bytes]]:
    """The first header block of a real log and its data lines."""
    header, lines = b"", []
    for line in path.read_bytes().splitlines(keepends=True):
        if line.startswith(b"#"):
            if not lines and not line.startswith(b"#close"):
                header += line
        else:
            lines.append(line)
    return header, lines


def uid_of(line: bytes) -> str:
    return line.split(b"\t")[1].decode()


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as out:
        out.write(data)


@pytest.fixture()
def lab(data_dir: Path) -> tuple[bytes, list[bytes]]:
    return split_log(data_dir / "lab" / "benign-1" / "zeek" / "conn.log")


@pytest.fixture()
def ssh(data_dir: Path) -> tuple[bytes, list[bytes]]:
    older = "zeek-btest/Baseline-history/v2.5-383/scripts.base.protocols.ssh.basic"
    return split_log(data_dir / older / "conn.log")


def test_split_line_is_one_record(tmp_path: Path, cases_dir: Path) -> None:
    """A row written in two pieces is one record, never a fragment (case 04)."""
    case = cases_dir / "04-close-footer-truncated-line"
    lines = (case / "conn_complete.log").read_bytes().splitlines(keepends=True)
    live = tmp_path / "logs" / "conn.log"
    live.parent.mkdir()
    live.write_bytes(b"".join(lines[:10]))

    with tailer(live.parent, tmp_path / "state.json") as t:
        f = Follower(t)
        f.until(lambda: sum(f.uids.values()) == 2)

        append(live, (case / "append_chunks" / "part_a.txt").read_bytes())
        f.poll_for(1.0)
        assert sum(f.uids.values()) == 2

        append(live, (case / "append_chunks" / "part_b.txt").read_bytes())
        f.until(lambda: sum(f.uids.values()) == 3)
        append(live, b"#close\t2026-12-04-10-59-59\n")
        f.poll_for(1.0)

    records = f.records()
    assert len(records) == 3
    last = [r for r in records if r["uid"] == "CcF4ee0000000000e3"]
    assert len(last) == 1
    assert (last[0]["orig_bytes"], last[0]["resp_bytes"]) == (12345, 67890)
    assert all(r["orig_bytes"] != 12 for r in records)


def test_closed_file_left_in_place_is_not_read_again(
    tmp_path: Path, cases_dir: Path
) -> None:
    """A `conn.log` that ends in #close and stays is read once, restarts too."""
    case = cases_dir / "04-close-footer-truncated-line"
    folder = tmp_path / "logs"
    folder.mkdir()
    shutil.copy(case / "conn_complete.log", folder / "conn.log")
    state = tmp_path / "state.json"

    with tailer(folder, state) as t:
        f = Follower(t)
        f.until(lambda: sum(f.uids.values()) == 3)
        f.poll_for(1.0)
    with tailer(folder, state) as t:
        again = Follower(t)
        again.poll_for(0.6)

    assert sum(f.uids.values()) == 3
    assert not again.uids


def test_fragment_of_finished_file_dropped(tmp_path: Path, cases_dir: Path) -> None:
    """A rotated file whose last line never ended gives its whole records only."""
    case = cases_dir / "04-close-footer-truncated-line"
    folder = tmp_path / "logs"
    folder.mkdir()
    shutil.copy(case / "conn_truncated_tail.log", folder / "conn.log")

    with tailer(folder, tmp_path / "state.json") as t:
        f = Follower(t)
        f.until(lambda: sum(f.uids.values()) == 2)
        os.rename(folder / "conn.log", folder / "conn.2026-12-04-10-00-00.log")
        f.until(lambda: t.stats.files_finished == 1)
        f.poll_for(0.3)

    assert set(f.uids) == {"CcF4ee0000000000e1", "CcF4ee0000000000e2"}
    assert max(f.uids.values()) == 1
    assert t.stats.fragments_dropped == 1


def test_restart_resumes_after_second_header_block(
    tmp_path: Path, lab: tuple[bytes, list[bytes]], ssh: tuple[bytes, list[bytes]]
) -> None:
    """After a restart reading resumes at the commit, under the right header."""
    lab_header, lab_rows = lab
    ssh_header, ssh_rows = ssh
    folder = tmp_path / "logs"
    folder.mkdir()
    live = folder / "conn.log"
    state = tmp_path / "state.json"
    live.write_bytes(lab_header + b"".join(lab_rows[:30]))
    # Zeek restarted onto the same file: an older field list follows.
    append(live, ssh_header + b"".join(ssh_rows[:5]))

    with tailer(folder, state) as t:
        first = Follower(t)
        first.until(lambda: sum(first.uids.values()) == 35)
    append(live, b"".join(ssh_rows[5:12]))
    with tailer(folder, state) as t:
        second = Follower(t)
        second.until(lambda: sum(second.uids.values()) == 7)
        second.poll_for(0.5)

    assert set(second.uids) == {uid_of(r) for r in ssh_rows[5:12]}
    assert max(second.uids.values()) == 1
    names = second.batches[0].batch.records.schema.names
    assert "ip_proto" in names and "tunnel_parents" in names
    assert all(r["ip_proto"] is None for r in second.records())


def test_uncommitted_batches_come_again(
    tmp_path: Path, lab: tuple[bytes, list[bytes]]
) -> None:
    """Records handed out but never committed are handed out after a restart."""
    header, rows = lab
    folder = tmp_path / "logs"
    folder.mkdir()
    live = folder / "conn.log"
    state = tmp_path / "state.json"
    live.write_bytes(header + b"".join(rows[:20]))

    with tailer(folder, state, batch_size=10) as t:
        f = Follower(t, commit=False)
        f.until(lambda: sum(f.uids.values()) == 20)
        t.commit([f.batches[0].cursor])
    with tailer(folder, state, batch_size=10) as t:
        again = Follower(t)
        again.until(lambda: sum(again.uids.values()) == 10)
        again.poll_for(0.4)

    assert set(again.uids) == {uid_of(r) for r in rows[10:20]}
    assert sum(again.uids.values()) == 10


def test_rotation_while_stopped_drains_old_file(
    tmp_path: Path, lab: tuple[bytes, list[bytes]]
) -> None:
    """A file rotated while the daemon was down is finished from its commit."""
    header, rows = lab
    folder = tmp_path / "logs"
    folder.mkdir()
    live = folder / "conn.log"
    state = tmp_path / "state.json"
    live.write_bytes(header + b"".join(rows[:40]))

    with tailer(folder, state) as t:
        f = Follower(t)
        f.until(lambda: sum(f.uids.values()) == 40)
    append(live, b"".join(rows[40:60]) + b"#close\t2026-12-04-18-00-00\n")
    rotated = folder / "conn.2026-12-04-17-00-00.log"
    os.rename(live, rotated)
    new_header = header.replace(b"#open\t", b"#open\t2026-12-04-18-00-00 was ")
    live.write_bytes(new_header + b"".join(rows[60:80]))

    with tailer(folder, state) as t:
        f2 = Follower(t)
        f2.until(lambda: sum(f2.uids.values()) == 40)
        f2.poll_for(0.8)

    assert f2.uids == Counter(uid_of(r) for r in rows[40:80])


def test_rewritten_file_with_same_inode_read_from_start(
    tmp_path: Path, lab: tuple[bytes, list[bytes]], ssh: tuple[bytes, list[bytes]]
) -> None:
    """The same inode with new content is a new file: read from byte 0."""
    header, rows = lab
    folder = tmp_path / "logs"
    folder.mkdir()
    live = folder / "conn.log"
    state = tmp_path / "state.json"
    live.write_bytes(header + b"".join(rows[:10]))
    inode = live.stat().st_ino

    with tailer(folder, state) as t:
        f = Follower(t)
        f.until(lambda: sum(f.uids.values()) == 10)
    ssh_header, ssh_rows = ssh
    with open(live, "wb") as out:
        out.write(ssh_header + b"".join(ssh_rows))
    assert live.stat().st_ino == inode
    assert live.stat().st_size > len(header + b"".join(rows[:10]))

    with tailer(folder, state) as t:
        f2 = Follower(t)
        f2.until(lambda: sum(f2.uids.values()) == len(ssh_rows))
        f2.poll_for(0.3)

    assert f2.uids == Counter(uid_of(r) for r in ssh_rows)


def test_reused_inode_after_delete_read_from_start(
    tmp_path: Path, lab: tuple[bytes, list[bytes]], ssh: tuple[bytes, list[bytes]]
) -> None:
    """A deleted log whose inode a new log reuses is read again from byte 0."""
    header, rows = lab
    folder = tmp_path / "logs"
    folder.mkdir()
    live = folder / "conn.log"
    live.write_bytes(header + b"".join(rows[:10]))
    inode = live.stat().st_ino
    ssh_header, ssh_rows = ssh

    with tailer(folder, tmp_path / "state.json") as t:
        # No commits here: the state file's writes would take the inode.
        f = Follower(t, commit=False)
        f.until(lambda: sum(f.uids.values()) == 10)
        live.unlink()
        f.until(lambda: t.stats.files_finished == 1)
        # ext4 hands a freed inode to the next file most of the time.
        for attempt in range(500):
            spare = folder / f"spare{attempt}"
            spare.touch()
            if spare.stat().st_ino == inode:
                spare.write_bytes(ssh_header + b"".join(ssh_rows))
                os.rename(spare, live)
                break
            spare.unlink()
        else:
            pytest.skip("this file system did not reuse the inode")
        f.until(lambda: sum(f.uids.values()) == 10 + len(ssh_rows))
        f.poll_for(0.3)

    assert f.uids == Counter(uid_of(r) for r in rows[:10] + ssh_rows)


def test_truncation_noticed_and_read_from_start(
    tmp_path: Path, lab: tuple[bytes, list[bytes]]
) -> None:
    """A live file cut shorter is noticed and its new content read from 0."""
    header, rows = lab
    folder = tmp_path / "logs"
    folder.mkdir()
    live = folder / "conn.log"
    live.write_bytes(header + b"".join(rows[:50]))

    with tailer(folder, tmp_path / "state.json") as t:
        f = Follower(t)
        f.until(lambda: sum(f.uids.values()) == 50)
        with open(live, "r+b") as out:
            out.truncate(0)
            out.write(header.replace(b"#open\t", b"#open\tagain ") + rows[60])
        f.until(lambda: sum(f.uids.values()) == 51)
        f.poll_for(0.3)

    assert t.stats.truncations == 1
    assert f.uids == Counter(uid_of(r) for r in rows[:50] + [rows[60]])


def test_rewrite_in_place_longer_is_noticed(
    tmp_path: Path, lab: tuple[bytes, list[bytes]], ssh: tuple[bytes, list[bytes]]
) -> None:
    """A live file rewritten between two rescans, longer than before, is new."""
    header, rows = lab
    folder = tmp_path / "logs"
    folder.mkdir()
    live = folder / "conn.log"
    live.write_bytes(header + b"".join(rows[:3]))
    ssh_header, ssh_rows = ssh

    with tailer(folder, tmp_path / "state.json") as t:
        f = Follower(t)
        f.until(lambda: sum(f.uids.values()) == 3)
        with open(live, "r+b") as out:
            out.write(ssh_header + b"".join(ssh_rows))
        f.until(lambda: sum(f.uids.values()) == 3 + len(ssh_rows))
        f.poll_for(0.3)

    assert t.stats.replacements == 1
    assert f.uids == Counter(uid_of(r) for r in rows[:3] + ssh_rows)


def test_raw_non_utf8_byte_keeps_tail_running(tmp_path: Path, cases_dir: Path) -> None:
    """A raw 0x92 byte kills nothing; the next record still arrives (case 14)."""
    case = cases_dir / "14-watchdog-event-loss" / "conn_raw_non_utf8_byte.log"
    folder = tmp_path / "logs"
    folder.mkdir()

    with tailer(folder, tmp_path / "state.json") as t:
        f = Follower(t)
        f.poll_for(0.2)
        shutil.copy(case, folder / "conn.log")
        f.until(lambda: "Cwd1oo0000000000o2" in f.uids)
        append(folder / "conn.log", case.read_bytes().splitlines(keepends=True)[-1])
        f.until(lambda: f.uids["Cwd1oo0000000000o2"] == 2)
        assert t._observer is not None and t._observer.is_alive()

    assert t.stats.handler_errors == 0


def test_rescan_alone_finds_rotation_and_growth(
    tmp_path: Path, cases_dir: Path, lab: tuple[bytes, list[bytes]]
) -> None:
    """With no events at all, rescans still follow a flood and a rotation."""
    header, rows = lab
    folder = tmp_path / "logs"
    folder.mkdir()
    live = folder / "conn.log"
    case = cases_dir / "14-watchdog-event-loss"
    live.write_bytes(case.joinpath("conn_raw_non_utf8_byte.log").read_bytes())

    with tailer(folder, tmp_path / "state.json", watch=False) as t:
        f = Follower(t)
        f.until(lambda: "Cwd1oo0000000000o2" in f.uids)
        import subprocess
        import sys

        script = case / "flood_events.py"
        subprocess.run(
            [sys.executable, str(script), "--dir", str(folder), "--files", "300"],
            check=True,
            capture_output=True,
        )
        # flood_events.py left the new conn.log with its first header line.
        append(live, header.split(b"\n", 1)[1] + b"".join(rows[:5]))
        f.until(lambda: "Cflood0000000000p1" in f.uids and len(f.uids) >= 7)
        f.poll_for(0.6)

    assert t._observer is None and t.stats.polling_only
    assert f.uids["Cflood0000000000p1"] == 1
    assert all(f.uids[uid_of(r)] == 1 for r in rows[:5])


def test_watch_limit_falls_back_to_polling(
    tmp_path: Path, lab: tuple[bytes, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An inotify limit at start gives one warning and polling, not a crash."""

    # Raising the kernel's limit error for real would starve other processes
    # of this host of inotify instances, so the error is injected here.
    def no_watches(self: Observer) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(Observer, "start", no_watches)
    header, rows = lab
    folder = tmp_path / "logs"
    folder.mkdir()

    with tailer(folder, tmp_path / "state.json") as t:
        f = Follower(t)
        f.poll_for(0.2)
        (folder / "conn.log").write_bytes(header + b"".join(rows[:5]))
        f.until(lambda: sum(f.uids.values()) == 5)

    assert t.stats.polling_only


def test_dead_observer_is_restarted(
    tmp_path: Path, lab: tuple[bytes, list[bytes]]
) -> None:
    """An observer thread that ended is noticed and started again."""
    header, rows = lab
    folder = tmp_path / "logs"
    folder.mkdir()

    with tailer(folder, tmp_path / "state.json", poll_interval=30.0) as t:
        f = Follower(t)
        f.poll_for(0.2)
        first = t._observer
        assert first is not None
        first.stop()
        first.join()
        (folder / "conn.log").write_bytes(header + b"".join(rows[:5]))
        f.until(lambda: sum(f.uids.values()) == 5, timeout=5.0)
        assert t._observer is not None and t._observer is not first
        assert t._observer.is_alive()

    assert t.stats.observer_restarts == 1


def test_handler_error_is_counted_not_raised(tmp_path: Path) -> None:
    """An exception inside the event handler is caught, logged and counted."""
    from sensor.tail import _Wakeup

    folder = tmp_path / "logs"
    folder.mkdir()
    with tailer(folder, tmp_path / "state.json") as t:
        _Wakeup(t).on_any_event(object())  # type: ignore[arg-type]
        t.poll(0.1)

    assert t.stats.handler_errors == 1


def test_bad_file_skipped_then_replacement_read(
    tmp_path: Path, lab: tuple[bytes, list[bytes]]
) -> None:
    """A non-Zeek `conn.log` gives one error; a real one that replaces it is read."""
    header, rows = lab
    folder = tmp_path / "logs"
    folder.mkdir()
    live = folder / "conn.log"
    live.write_bytes(b"this is not a zeek log\nat all\n")

    with tailer(folder, tmp_path / "state.json") as t:
        f = Follower(t)
        f.poll_for(0.5)
        append(live, b"more junk\n")
        f.poll_for(0.3)
        fresh = folder / "conn.log.new"
        fresh.write_bytes(header + b"".join(rows[:4]))
        os.rename(fresh, live)
        f.until(lambda: sum(f.uids.values()) == 4)

    assert t.stats.bad_files == 1
    assert f.uids == Counter(uid_of(r) for r in rows[:4])


def test_current_symlink_repointed(
    tmp_path: Path, lab: tuple[bytes, list[bytes]]
) -> None:
    """A re-pointed `logs/current` is followed; the old target is drained."""
    header, rows = lab
    spool_a, spool_b = tmp_path / "spool" / "a", tmp_path / "spool" / "b"
    spool_a.mkdir(parents=True)
    spool_b.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    current = logs / "current"
    current.symlink_to(spool_a)
    (spool_a / "conn.log").write_bytes(header + b"".join(rows[:5]))

    with tailer(current, tmp_path / "state.json") as t:
        f = Follower(t)
        f.until(lambda: sum(f.uids.values()) == 5)
        other = header.replace(b"#open\t", b"#open\tb-")
        (spool_b / "conn.log").write_bytes(other + b"".join(rows[10:15]))
        tmp_link = logs / "current.new"
        tmp_link.symlink_to(spool_b)
        os.rename(tmp_link, current)
        append(spool_a / "conn.log", b"".join(rows[5:7]))
        f.until(lambda: sum(f.uids.values()) == 12)
        f.poll_for(0.6)

    assert f.uids == Counter(uid_of(r) for r in rows[:7] + rows[10:15])


def test_corrupt_state_file_is_a_clear_error(tmp_path: Path) -> None:
    """A state file that does not parse stops start-up with a clear message."""
    state = tmp_path / "state.json"
    state.write_text('{"format": "bflow-tail-state", "version": 1, "files": {')

    with pytest.raises(CheckpointError, match="corrupt.*move it aside"):
        tailer(tmp_path, state)


def test_state_file_used_by_one_tailer_only(tmp_path: Path) -> None:
    """A second tailer on the same state file is refused while the first runs."""
    state = tmp_path / "state.json"
    with tailer(tmp_path, state), pytest.raises(CheckpointError, match="in use"):
        tailer(tmp_path, state)


def test_packet_and_conn_logs_followed_together(tmp_path: Path) -> None:
    """Both logs are followed, each batch named by its #path, none repeated."""
    sample = Path(__file__).resolve().parent.parent / "sensor" / "samples"
    folder = tmp_path / "logs"
    folder.mkdir()
    sources = {
        name: (sample / "benign-wikipedia" / f"{name}.log").read_bytes()
        for name in ("conn", "bflow_packet")
    }
    expected = {
        name: sum(1 for line in data.splitlines() if not line.startswith(b"#"))
        for name, data in sources.items()
    }

    with tailer(
        folder, tmp_path / "state.json", log_paths=("conn", "bflow_packet")
    ) as t:
        f = Follower(t)
        # Written in uneven pieces, as Zeek's buffered writer does.
        for start in range(0, max(len(d) for d in sources.values()), 7000):
            for name, data in sources.items():
                append(folder / f"{name}.log", data[start : start + 7000])
            f.poll_for(0.05)
        f.until(lambda: sum(f.uids.values()) == sum(expected.values()))
        f.poll_for(0.3)

    got = Counter()
    for item in f.batches:
        got[item.batch.log_path] += item.batch.records.num_rows
    assert got == Counter(expected)


def test_json_log_followed(tmp_path: Path, data_dir: Path) -> None:
    """A JSON-lines conn.log is followed like a TSV one."""
    path = data_dir / "zat" / "data" / "json" / "conn.log"
    lines_list = path.read_bytes().splitlines(keepends=True)
    folder = tmp_path / "logs"
    folder.mkdir()

    with tailer(folder, tmp_path / "state.json") as t:
        f = Follower(t)
        (folder / "conn.log").write_bytes(b"".join(lines_list[:20]))
        f.until(lambda: sum(f.uids.values()) == 20)
        append(folder / "conn.log", b"".join(lines_list[20:]))
        f.until(lambda: sum(f.uids.values()) == len(lines_list))

    assert all(item.batch.log_path == "conn" for item in f.batches)
    assert f.uids == Counter(json.loads(line)["uid"] for line in lines_list)


def test_archive_file_read_only_once_stable(
    tmp_path: Path, lab: tuple[bytes, list[bytes]]
) -> None:
    """A gzip still being written into the archive is read only when complete."""
    import gzip

    header, rows = lab
    folder = tmp_path / "spool"
    day = folder / "logs" / "2026-12-04"
    day.mkdir(parents=True)
    packed = gzip.compress(header + b"".join(rows[:100]))
    target = day / "conn.10:00:00-11:00:00.log.gz"

    # The pauses between pieces (0.25 s) are well inside finish_grace.
    state = tmp_path / "state.json"
    with tailer(folder, state, read_archive=True, finish_grace=1.5) as t:
        f = Follower(t)
        for start in range(0, len(packed), len(packed) // 4 + 1):
            append(target, packed[start : start + len(packed) // 4 + 1])
            f.poll_for(0.25)
            if start + len(packed) // 4 + 1 < len(packed):
                assert not f.uids
        f.until(lambda: sum(f.uids.values()) == 100)
        f.poll_for(0.3)

    assert t.stats.gzip_errors == 0
    assert f.uids == Counter(uid_of(r) for r in rows[:100])


def test_lag_counts_unread_bytes(
    tmp_path: Path, lab: tuple[bytes, list[bytes]]
) -> None:
    """Bytes appended and not yet read show as lag, with a growing age."""
    header, rows = lab
    folder = tmp_path / "logs"
    folder.mkdir()
    live = folder / "conn.log"
    live.write_bytes(header + rows[0])

    with tailer(folder, tmp_path / "state.json") as t:
        f = Follower(t)
        f.until(lambda: sum(f.uids.values()) == 1)
        assert t.lag().bytes == 0 and t.lag().seconds == 0
        more = b"".join(rows[1:50])
        append(live, more)
        time.sleep(0.3)
        lag = t.lag()
        f.until(lambda: sum(f.uids.values()) == 50)
        after = t.lag()

    assert lag.bytes == len(more)
    assert lag.seconds >= 0.3
    assert after.bytes == 0 and after.seconds == 0


def test_fifo_and_corrupt_gzip_reported_and_skipped(
    tmp_path: Path, data_dir: Path, lab: tuple[bytes, list[bytes]]
) -> None:
    """A FIFO and a corrupt gzip each give one error; other logs go on."""
    packed = bytearray((data_dir / "zat" / "data" / "http.log.gz").read_bytes())
    # Flip bytes in the middle of the deflate stream.
    middle = len(packed) // 2
    packed[middle : middle + 16] = bytes(b ^ 0xFF for b in packed[middle : middle + 16])
    header, rows = lab
    folder = tmp_path / "logs"
    folder.mkdir()
    os.mkfifo(folder / "dns.log")
    (folder / "http.log").write_bytes(bytes(packed))

    with tailer(
        folder, tmp_path / "state.json", log_paths=("conn", "http", "dns")
    ) as t:
        f = Follower(t)
        f.poll_for(0.5)
        (folder / "conn.log").write_bytes(header + b"".join(rows[:5]))
        f.until(lambda: len([u for u in f.uids if u in {uid_of(r) for r in rows}]) == 5)
        f.poll_for(0.5)

    http = [item for item in f.batches if item.batch.log_path == "http"]
    assert 0 < sum(item.batch.records.num_rows for item in http) < 150
    assert t.stats.gzip_errors == 1
    assert t.stats.bad_files == 1


def test_replaced_file_noticed_and_both_read(
    tmp_path: Path, lab: tuple[bytes, list[bytes]], ssh: tuple[bytes, list[bytes]]
) -> None:
    """A new file renamed over the live one is a replacement: old drained, new read."""
    header, rows = lab
    ssh_header, ssh_rows = ssh
    folder = tmp_path / "logs"
    folder.mkdir()
    live = folder / "conn.log"
    live.write_bytes(header + b"".join(rows[:5]))

    with tailer(folder, tmp_path / "state.json") as t:
        f = Follower(t)
        f.until(lambda: sum(f.uids.values()) == 5)
        with open(live, "ab") as old:
            fresh = folder / "conn.log.new"
            fresh.write_bytes(ssh_header + b"".join(ssh_rows))
            os.rename(fresh, live)
            # Written through the old descriptor after the replacement.
            old.write(b"".join(rows[5:8]))
        f.until(lambda: sum(f.uids.values()) == 8 + len(ssh_rows))
        f.poll_for(0.6)

    assert t.stats.replacements == 1 and t.stats.rotations == 0
    assert f.uids == Counter(uid_of(r) for r in rows[:8] + ssh_rows)


def test_folder_created_later_and_bad_lines_counted(
    tmp_path: Path, lab: tuple[bytes, list[bytes]]
) -> None:
    """A log folder that does not exist yet is waited for; bad lines are counted."""
    header, rows = lab
    folder = tmp_path / "not-yet"

    with tailer(folder, tmp_path / "state.json") as t:
        f = Follower(t)
        f.poll_for(0.3)
        folder.mkdir()
        short = b"\t".join(rows[1].split(b"\t")[:5]) + b"\n"
        (folder / "conn.log").write_bytes(header + rows[0] + short + rows[2])
        f.until(lambda: sum(f.uids.values()) == 2)
        f.poll_for(0.3)

    assert f.uids == Counter(uid_of(r) for r in (rows[0], rows[2]))
    assert t.stats.lines_skipped == 1


def test_live_gzip_followed_as_it_grows(
    tmp_path: Path, lab: tuple[bytes, list[bytes]]
) -> None:
    """A live log Zeek gzips while writing is followed piece by piece (case 11)."""
    import zlib

    header, rows = lab
    folder = tmp_path / "logs"
    folder.mkdir()
    live = folder / "conn.log.gz"
    packer = zlib.compressobj(wbits=31)

    def write(data: bytes, mode: int = zlib.Z_SYNC_FLUSH) -> None:
        append(live, packer.compress(data) + packer.flush(mode))

    with tailer(folder, tmp_path / "state.json") as t:
        f = Follower(t)
        write(header + b"".join(rows[:10]))
        f.until(lambda: sum(f.uids.values()) == 10)
        write(b"".join(rows[10:25]))
        f.until(lambda: sum(f.uids.values()) == 25)
        write(b"".join(rows[25:30]) + b"#close\t2026-12-04-11-00-00\n", zlib.Z_FINISH)
        os.rename(live, folder / "conn.2026-12-04-10-00-00.log.gz")
        f.until(lambda: t.stats.files_finished == 1)

    assert f.uids == Counter(uid_of(r) for r in rows[:30])
    assert t.stats.gzip_errors == 0 and t.stats.bad_files == 0


def test_uncommitted_rest_of_file_renamed_while_down(
    tmp_path: Path, lab: tuple[bytes, list[bytes]]
) -> None:
    """A file renamed while down, unchanged since, resumes at its commit."""
    header, rows = lab
    folder = tmp_path / "logs"
    folder.mkdir()
    live = folder / "conn.log"
    state = tmp_path / "state.json"
    live.write_bytes(header + b"".join(rows[:40]))
    # Old enough that only the state's inode, not the mtime, can bring it back.
    old = time.time() - 60
    os.utime(live, (old, old))

    with tailer(folder, state, batch_size=10) as t:
        f = Follower(t, commit=False)
        f.until(lambda: sum(f.uids.values()) == 40)
        t.commit([f.batches[0].cursor])
    os.rename(live, folder / "conn.2026-12-04-10-00-00.log")
    (folder / "conn.log").write_bytes(
        header.replace(b"#open\t", b"#open\tnew ") + rows[40]
    )

    with tailer(folder, state, batch_size=10) as t:
        again = Follower(t)
        again.until(lambda: sum(again.uids.values()) == 31)
        again.poll_for(0.6)

    assert again.uids == Counter(uid_of(r) for r in rows[10:41])


def test_gzip_that_expands_a_lot_is_read_within_the_poll_budget(
    tmp_path: Path, lab: tuple[bytes, list[bytes]]
) -> None:
    """A gzip expanding ~40 MiB is charged decompressed bytes: many polls, no loss."""
    import zlib

    from sensor.tail import GZIP_READ_CHUNK, POLL_READ_BUDGET

    header, rows = lab
    body = b"".join(rows[:200])
    repeats = (40 << 20) // len(body) + 1
    folder = tmp_path / "logs"
    folder.mkdir()
    packer = zlib.compressobj(level=9, wbits=31)
    with open(folder / "conn.log.gz", "wb") as out:
        out.write(packer.compress(header))
        for _ in range(repeats):
            out.write(packer.compress(body))
        out.write(packer.flush())
    assert (folder / "conn.log.gz").stat().st_size < (4 << 20)

    with tailer(folder, tmp_path / "state.json") as t:
        f = Follower(t)
        per_poll = []
        while sum(f.uids.values()) < 200 * repeats and len(per_poll) < 200:
            got = t.poll(POLL)
            per_poll.append(sum(item.batch.records.num_rows for item in got))
            f._take(got)

    largest = max(per_poll) * (len(body) / 200)
    assert largest <= POLL_READ_BUDGET + 1100 * GZIP_READ_CHUNK
    assert f.uids == Counter({uid_of(r): repeats for r in rows[:200]})
