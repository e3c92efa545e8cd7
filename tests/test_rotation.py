"""Rotation while the tail reads: every record exactly once (cases 11, 12).

Case 12's `simulate_rotation.py` rotates `conn.log` the way Zeek and zeekctl
do, in a temporary folder, while a `LogTailer` follows it; the uids that come
out are compared with the uids the simulator wrote. Case 11's archive tree
(copied to a temporary folder) checks back-fill: naming variants, gzip by
content, a truncated gzip, and the same hour under two names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sensor.tail import LogTailer, TailBatch

POLL = 0.1
GRACE = 0.4


def follow(
    tailer: LogTailer,
    uids: Counter[str],
    seconds: float,
    order: list[str] | None = None,
) -> None:
    """Poll and commit for `seconds`, counting the uids handed out."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got: list[TailBatch] = tailer.poll(POLL)
        for item in got:
            batch_uids = item.batch.records.column("uid").to_pylist()
            uids.update(batch_uids)
            if order is not None:
                order += batch_uids
        if got:
            tailer.commit([item.cursor for item in got])


def simulate(
    cases_dir: Path, folder: Path, state: Path, *options: str, restart_at: float = 0
) -> tuple[Counter[str], list[str], LogTailer]:
    """Run case 12's simulator against a tailer; return what it handed out."""
    script = cases_dir / "12-rotation-while-reading" / "simulate_rotation.py"
    folder.mkdir(exist_ok=True)
    args = ["--dir", str(folder), "--files", "3", "--rows", "15"]
    args += ["--interval", "0.01", "--archive-delay", "0.5", *options]
    uids: Counter[str] = Counter()

    def start() -> LogTailer:
        return LogTailer(
            folder,
            state_file=state,
            log_paths=("conn",),
            poll_interval=POLL,
            finish_grace=GRACE,
        )

    tailer = start()
    writer = subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.DEVNULL
    )
    try:
        if restart_at:
            follow(tailer, uids, restart_at)
            tailer.close()
            time.sleep(0.3)
            tailer = start()
        while writer.poll() is None:
            follow(tailer, uids, POLL)
        expected = (folder / "expected_uids.txt").read_text().split()
        deadline = time.monotonic() + 10
        while not set(uids) >= set(expected) and time.monotonic() < deadline:
            follow(tailer, uids, POLL)
        # Long enough to finish the last file, for anything that would come
        # twice to come, and to see the archive copies settle.
        archives = 3 if "--archive" in options else 0
        deadline = time.monotonic() + 3 * GRACE + 1.0
        while time.monotonic() < deadline and (
            tailer.stats.files_finished < 3
            or tailer.stats.duplicates_skipped + tailer.stats.archives_ignored
            < archives
        ):
            follow(tailer, uids, POLL)
        follow(tailer, uids, GRACE)
    finally:
        writer.wait()
        tailer.close()

    return uids, expected, tailer


VARIANTS = {
    "plain": (),
    "split_lines": ("--split-lines",),
    "gap": ("--gap", "0.5"),
    "late_writes": ("--late-writes", "2"),
    "no_close": ("--no-close",),
    "archive": ("--archive",),
    "everything": ("--split-lines", "--late-writes", "2", "--no-close", "--archive"),
}


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_rotation_reads_every_record_once(
    tmp_path: Path, cases_dir: Path, variant: str
) -> None:
    """Under each rotation variant of case 12, every uid comes out exactly once."""
    uids, expected, tailer = simulate(
        cases_dir, tmp_path / "spool", tmp_path / "state.json", *VARIANTS[variant]
    )

    assert len(expected) == len(set(expected)) >= 45
    assert uids == Counter(expected)
    assert tailer.stats.files_finished == 3
    if "--archive" in VARIANTS[variant]:
        assert tailer.stats.duplicates_skipped == 3


def test_restart_during_rotations(tmp_path: Path, cases_dir: Path) -> None:
    """A restart in the middle of rotations loses and repeats nothing."""
    uids, expected, _ = simulate(
        cases_dir,
        tmp_path / "spool",
        tmp_path / "state.json",
        "--archive",
        "--split-lines",
        restart_at=0.35,
    )

    assert uids == Counter(expected)


def test_archive_of_read_file_skipped_after_restart(
    tmp_path: Path, cases_dir: Path
) -> None:
    """The later gzip copy of a file read in an earlier run is not read again."""
    folder, state = tmp_path / "spool", tmp_path / "state.json"
    uids, expected, _ = simulate(cases_dir, folder, state)
    assert uids == Counter(expected)
    for rotated in sorted(folder.glob("conn.2026-*.log")):
        day = folder / "logs" / "2026-12-04"
        day.mkdir(parents=True, exist_ok=True)
        stamp = rotated.name.split(".")[1][11:].replace("-", ":")
        target = day / f"conn.{stamp}-{stamp}.log.gz"
        subprocess.run(["gzip", "-kn", str(rotated)], check=True)
        os.rename(f"{rotated}.gz", target)
        rotated.unlink()

    again: Counter[str] = Counter()
    with LogTailer(
        folder,
        state_file=state,
        log_paths=("conn",),
        poll_interval=POLL,
        finish_grace=GRACE,
        read_archive=True,
    ) as tailer:
        follow(tailer, again, 3 * GRACE + 0.5)

    assert not again
    assert tailer.stats.duplicates_skipped == 3


def copy_case_11(cases_dir: Path, root: Path) -> Path:
    """Case 11's tree under `root`, with zeekctl's `logs/current` symlink."""
    shutil.copytree(cases_dir / "11-gzip-rotated-archive", root)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    root.chmod(0o755)
    current = root / "logs" / "current"
    current.symlink_to(root / "spool" / "logger-1")

    return current


def case_11_tailer(current: Path, state: Path, *, read_archive: bool) -> LogTailer:
    return LogTailer(
        current,
        state_file=state,
        log_paths=("conn",),
        poll_interval=POLL,
        finish_grace=0.2,
        read_archive=read_archive,
    )


def test_archive_back_fill(tmp_path: Path, cases_dir: Path) -> None:
    """Back-fill reads each archived hour once, whatever its name or gzip state."""
    current = copy_case_11(cases_dir, tmp_path / "site")
    state = tmp_path / "state.json"
    uids: Counter[str] = Counter()
    order: list[str] = []

    with case_11_tailer(current, state, read_archive=True) as tailer:
        follow(tailer, uids, 2.0, order)

    # 2 rows in each of five hours (13:00 is there twice), 20 whole rows of
    # the cut gzip, 2 rows of the live file that Zeek compresses in flight.
    assert sum(uids.values()) == 2 * 5 + 20 + 2
    assert max(uids.values()) == 1
    assert len([u for u in uids if u.startswith("CgzB")]) == 20
    assert tailer.stats.gzip_errors >= 1
    assert tailer.stats.duplicates_skipped == 1
    assert tailer.stats.bad_files == 0
    # Hours in time order (F is the live file, read beside them).
    hours = [uid[3] for uid in order if uid[3] != "F"]
    assert hours == sorted(hours) and set(hours) == set("ABCDEG")

    again: Counter[str] = Counter()
    with case_11_tailer(current, state, read_archive=True) as tailer:
        follow(tailer, again, 1.0)
    assert not again


def test_history_left_alone_without_read_archive(
    tmp_path: Path, cases_dir: Path
) -> None:
    """Without read_archive only the live log is read; old files are history."""
    current = copy_case_11(cases_dir, tmp_path / "site")
    uids: Counter[str] = Counter()

    with case_11_tailer(current, tmp_path / "state.json", read_archive=False) as t:
        follow(t, uids, 1.5)

    live = current / "conn.log.gz"
    assert len(uids) == 2 and max(uids.values()) == 1
    assert t.stats.archives_ignored >= 6
    assert live.exists()


def test_file_archived_while_down_resumed_from_gzip(
    tmp_path: Path, data_dir: Path
) -> None:
    """A half-read file rotated and gzipped while the daemon was down resumes."""
    import gzip

    source = data_dir / "lab" / "benign-3" / "zeek" / "conn.log"
    lines = source.read_bytes().splitlines(keepends=True)
    header = b"".join(
        line
        for line in lines
        if line.startswith(b"#") and not line.startswith(b"#close")
    )
    rows = [line for line in lines if not line.startswith(b"#")]
    folder, state = tmp_path / "spool", tmp_path / "state.json"
    folder.mkdir()
    live = folder / "conn.log"
    live.write_bytes(header + b"".join(rows[:100]))

    def run() -> Counter[str]:
        uids: Counter[str] = Counter()
        with LogTailer(
            folder,
            state_file=state,
            log_paths=("conn",),
            poll_interval=POLL,
            finish_grace=GRACE,
        ) as tailer:
            follow(tailer, uids, 3 * GRACE + 0.5)
        return uids

    first = run()
    with open(live, "ab") as out:
        out.write(b"".join(rows[100:150]) + b"#close\t2026-12-04-11-00-00\n")
    day = folder / "logs" / "2026-12-04"
    day.mkdir(parents=True)
    archived = day / "conn.10:00:00-11:00:00.log.gz"
    archived.write_bytes(gzip.compress(live.read_bytes()))
    live.unlink()
    second = run()

    def uid(line: bytes) -> str:
        return line.split(b"\t")[1].decode()

    assert first == Counter(uid(r) for r in rows[:100])
    assert second == Counter(uid(r) for r in rows[100:150])
