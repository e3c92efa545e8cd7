"""The notice writer: header once, append on restart, exactly-once, disk errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.contract import NOTICE_CONTROL_KINDS, NOTICE_KINDS
from sensor.errors import BFlowError
from sensor.notice import NOTICE_FORMAT, Notice, NoticeWriter, read_notices
from sensor.zeekwriter import ValueRejected

BASE_TS = 1796378400_952359


def make_notice(i: int, *, kind: str = "flow", msg: str = "") -> Notice:
    """A valid notice for connection number `i`."""
    return Notice(
        ts=BASE_TS + i * 1000,
        uid=f"C{i:017d}",
        orig_h="192.0.2.10",
        orig_p=(40000 + i) % 65536,
        resp_h="2001:db8::53",
        resp_p=443,
        proto="tcp",
        kind=kind,
        score=0.97,
        threshold=0.9,
        model_version="v3",
        msg=msg or f"flow model v3 scored connection {i} at 0.97, threshold 0.9",
    )


def data_lines(path: Path) -> list[bytes]:
    return [x for x in path.read_bytes().split(b"\n") if x and not x.startswith(b"#")]


def test_new_file_has_header_and_open_record(tmp_path: Path) -> None:
    """A new notice log holds one header and an `open` record before any notice."""
    path = tmp_path / "bflow_notice.log"

    with NoticeWriter(path):
        pass
    records = read_notices(path)

    assert path.read_bytes().count(b"#fields\t") == 1
    assert NOTICE_FORMAT.fields_line() in path.read_bytes()
    assert [r["kind"] for r in records] == ["open"]
    assert not (tmp_path / "bflow_notice.log.tmp").exists()


def test_notice_line_round_trips(tmp_path: Path) -> None:
    """A written notice reads back with the values it was given."""
    path = tmp_path / "bflow_notice.log"
    notice = make_notice(1, kind="packet", msg="tab\there, newline\nthere, \\ and -")

    with NoticeWriter(path) as writer:
        assert writer.write(notice)
    record = read_notices(path)[-1]

    assert record["notice_id"] == notice.notice_id
    assert record["msg"] == notice.msg
    assert record["id.orig_p"] == (40001, "tcp")
    assert record["ts"] == notice.ts
    assert record["kind"] == "packet"
    assert data_lines(path)[-1].endswith(b"\tpacket")


def test_restart_appends_without_header(tmp_path: Path) -> None:
    """A restarted writer appends to the same file and never repeats the
    header; a clean stop writes no `#close`, so every reader sees all."""
    from sensor.reader import ReadStats, read_log

    path = tmp_path / "bflow_notice.log"
    with NoticeWriter(path) as writer:
        writer.write(make_notice(1))

    with NoticeWriter(path) as writer:
        writer.write(make_notice(2))

    data = path.read_bytes()
    assert data.count(b"#fields") == 1 and b"#close" not in data
    assert len(data_lines(path)) == 3
    stats = ReadStats()
    records = [r for b in read_log(path, stats=stats) for r in b.records.to_pylist()]
    assert [r["kind"] for r in records] == [b"open", b"flow", b"flow"]
    assert stats.skipped == 0


def test_rewritten_notices_are_skipped_after_restart(tmp_path: Path) -> None:
    """Notices scored again after a crash are not written twice."""
    path = tmp_path / "bflow_notice.log"
    with NoticeWriter(path) as writer:
        assert writer.write_many([make_notice(i) for i in range(5)]) == 5

    with NoticeWriter(path) as writer:
        written = writer.write_many([make_notice(i) for i in range(8)])

        assert (written, writer.duplicates) == (3, 5)
    ids = [r["notice_id"] for r in read_notices(path) if r["kind"] in NOTICE_KINDS]
    assert len(ids) == len(set(ids)) == 8


def test_notice_id_is_stable() -> None:
    """The id depends on kind, uid and model version, not on time or score."""
    a = make_notice(1)
    b = Notice(**{**_fields(a), "ts": a.ts + 5, "score": 0.5})
    c = Notice(**{**_fields(a), "model_version": "v4"})

    assert a.notice_id == b.notice_id != c.notice_id


def _fields(n: Notice) -> dict:
    return {k: v for k, v in vars(n).items() if k != "notice_id"}


def test_bad_notices_are_refused() -> None:
    """Unknown kinds and non-finite scores never become notices."""
    with pytest.raises(ValueRejected, match="kind"):
        make_notice(1, kind="rotate")
    with pytest.raises(ValueRejected, match="score"):
        Notice(**{**_fields(make_notice(1)), "score": float("nan")})


def test_bad_address_is_skipped_and_counted(tmp_path: Path) -> None:
    """A notice with a value that cannot be written is counted, not written."""
    bad = Notice(**{**_fields(make_notice(1)), "orig_h": "host.example"})

    with NoticeWriter(tmp_path / "n.log") as writer:
        assert writer.write_many([bad, make_notice(2)]) == 1
        assert writer.rejected == 1


def test_other_schema_is_archived(tmp_path: Path, cases_dir: Path) -> None:
    """A file with other #fields is archived, never given a second header."""
    path = tmp_path / "bflow_notice.log"
    old = cases_dir / "18-notice-file-lifecycle" / "good_append_after_restart.log"
    path.write_bytes(old.read_bytes())

    with NoticeWriter(path) as writer:
        writer.write(make_notice(1))

    assert (tmp_path / "bflow_notice.000001.log").read_bytes() == old.read_bytes()
    assert path.read_bytes().count(b"#fields") == 1
    assert [r["kind"] for r in read_notices(path)] == ["open", "flow"]


def test_kinds_are_not_prefixes() -> None:
    """No kind is a prefix of another, so a cut line never reads as a notice."""
    kinds = NOTICE_KINDS + NOTICE_CONTROL_KINDS

    assert not [(a, b) for a in kinds for b in kinds if a != b and b.startswith(a)]


_CHILD = """
import resource, signal, sys
from tests.test_notice import make_notice
from sensor.notice import NoticeWriter
from sensor.errors import BFlowError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
writer = NoticeWriter(sys.argv[1])
size = writer._size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, size + 100))
try:
    writer.write(make_notice(7))
except BFlowError as exc:
    print("error:", exc)
"""


def test_file_size_limit_leaves_no_readable_fragment(tmp_path: Path) -> None:
    """A write cut short (size limit) raises, and the fragment is never a notice."""
    path = tmp_path / "bflow_notice.log"
    NoticeWriter(path).close()
    repo = Path(__file__).resolve().parent.parent

    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)],
        capture_output=True,
        text=True,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        timeout=60,
    )
    cut = path.read_bytes()

    assert "error: cannot write the notice log" in child.stdout, child.stderr
    assert not cut.endswith(b"\n")
    assert [r["kind"] for r in read_notices(path)] == ["open"]

    with NoticeWriter(path) as writer:
        assert writer.write(make_notice(7))
    kinds = [r["kind"] for r in read_notices(path)]
    assert kinds == ["open", "flow"]
    assert path.read_bytes().startswith(cut + b"\n")


def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A notice log that cannot be created raises BFlowError naming the path."""
    blocker = tmp_path / "file"
    blocker.write_text("x")

    with pytest.raises(BFlowError, match="file"):
        NoticeWriter(blocker / "bflow_notice.log")


def test_retry_after_failure_still_syncs(tmp_path: Path, monkeypatch) -> None:
    """Lines written before a failed fsync are fsynced by the next call."""
    path = tmp_path / "bflow_notice.log"
    writer = NoticeWriter(path)
    synced: list[int] = []
    real_fsync = os.fsync

    def failing_once(fd: int) -> None:
        synced.append(fd)
        if len(synced) == 1:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_once)
    with pytest.raises(BFlowError, match="Input/output error"):
        writer.write_many([make_notice(1), make_notice(2)])

    assert writer.write_many([make_notice(1), make_notice(2)]) == 0
    assert len(synced) == 2
    writer.close()


def test_each_line_is_one_write(tmp_path: Path, monkeypatch) -> None:
    """Every notice reaches the file in one os.write of one whole line."""
    writer = NoticeWriter(tmp_path / "bflow_notice.log")
    chunks: list[bytes] = []
    real_write = os.write

    def recording(fd: int, data: bytes) -> int:
        chunks.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording)
    writer.write_many([make_notice(i, msg="x\n" * 500) for i in range(5)])
    writer.close()

    assert len(chunks) == 5
    assert all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in chunks)
    assert all(len(c) < 4096 for c in chunks)
