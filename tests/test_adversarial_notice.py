"""Hostile input for the notice writer: traffic bytes and damaged files.

The first tests are defects found by attacking the writer: a stray header
line in the notice log crashed its start-up, and a file whose first
`#fields` line was another log's was appended to although Zeek reads it with
that other header. The last one keeps traffic-derived text from ever forging
a line or a field.
"""

from __future__ import annotations

from pathlib import Path

from sensor.notice import NOTICE_FORMAT, Notice, NoticeWriter, read_notices

EVERY_BYTE = bytes(range(256)).decode("latin-1")


def notice(uid: str = "CAb3xK2mQ9vTz1Lp7e", msg: str = "odd flow") -> Notice:
    return Notice(
        ts=1796378400123456,
        uid=uid,
        orig_h="192.0.2.10",
        orig_p=49152,
        resp_h="2001:db8::1",
        resp_p=443,
        proto="tcp",
        kind="flow",
        score=0.93,
        threshold=0.5,
        model_version="flow-1",
        msg=msg,
    )


def test_stray_binary_fields_line_does_not_stop_the_writer(tmp_path: Path) -> None:
    """A later `#fields` line of raw bytes is ignored, as Zeek ignores it."""
    path = tmp_path / "bflow_notice.log"
    with NoticeWriter(path) as writer:
        assert writer.write(notice())
    with open(path, "ab") as out:
        out.write(b"#fields\t\xff\xfe\tuid\n")
    with NoticeWriter(path) as writer:
        assert not writer.write(notice())
        assert writer.write(notice(uid="CR8tYw5nB2cXq0Hs4d"))
    kinds = [r["kind"] for r in read_notices(path)]
    assert kinds == ["open", "flow", "flow"]


def test_file_led_by_another_header_is_archived(tmp_path: Path) -> None:
    """Our fields after another log's first `#fields` line do not make it ours."""
    path = tmp_path / "bflow_notice.log"
    foreign = b"#separator \\x09\n#fields\tts\tuid\tnote\n#types\ttime\tstring\tenum\n"
    path.write_bytes(foreign + NOTICE_FORMAT.header(1796378400000000))
    with NoticeWriter(path) as writer:
        assert writer.write(notice())
    lines = path.read_bytes().split(b"\n")
    first_fields = next(line for line in lines if line.startswith(b"#fields"))
    assert first_fields == NOTICE_FORMAT.fields_line()
    assert [r["kind"] for r in read_notices(path)] == ["open", "flow"]
    archived = [p for p in tmp_path.iterdir() if p.name != path.name]
    assert [p.read_bytes()[: len(foreign)] for p in archived] == [foreign]


def test_every_byte_in_traffic_text_stays_in_its_field(tmp_path: Path) -> None:
    """A msg of every byte 0x00-0xFF and a uid of separators stay in their fields."""
    path = tmp_path / "bflow_notice.log"
    with NoticeWriter(path) as writer:
        assert writer.write(notice(uid="C\t\n-,#\\x41", msg=EVERY_BYTE * 3))
    data = path.read_bytes()
    assert data.isascii()
    lines = [line for line in data.split(b"\n") if line and line[:1] != b"#"]
    assert [len(line.split(b"\t")) for line in lines] == [12, 12]
    got = read_notices(path)[1]
    assert got["uid"] == "C\t\n-,#\\x41"
    # msg is cut on a character boundary and marked, never split.
    assert isinstance(got["msg"], str) and got["msg"].endswith("...")
    assert (EVERY_BYTE * 3).startswith(got["msg"][:-3])


def test_file_deleted_under_the_writer_is_started_again(tmp_path: Path) -> None:
    """After a clean-up deletes the notice log, notices reach Zeek again."""
    from tests.test_notice import make_notice
    from tests.test_notice_rotation import ScriptModel

    path = tmp_path / "bflow_notice.log"
    state = tmp_path / "zeek.state"
    writer = NoticeWriter(path)
    zeek = ScriptModel(path, state)
    writer.write(make_notice(1))
    zeek.poll()

    path.unlink()
    assert writer.write(make_notice(2))
    zeek.poll()
    zeek.stop()
    # Zeek restarts: it opens the log by name.
    restarted = ScriptModel(path, state)
    assert writer.write(make_notice(3))
    assert not writer.write(make_notice(1))
    restarted.poll()
    writer.close()
    restarted.stop()

    raised = zeek.raised + restarted.raised
    assert sorted(raised) == sorted(make_notice(i).notice_id for i in (1, 2, 3))
    assert zeek.warnings == [] and restarted.warnings == []
    assert path.exists()


def test_file_moved_under_the_writer_hands_zeek_over(tmp_path: Path) -> None:
    """A Zeek still reading a moved notice log follows the writer to the name."""
    from tests.test_notice import make_notice
    from tests.test_notice_rotation import ScriptModel

    path = tmp_path / "bflow_notice.log"
    writer = NoticeWriter(path)
    zeek = ScriptModel(path, tmp_path / "zeek.state")
    writer.write(make_notice(1))
    zeek.poll()

    path.rename(tmp_path / "moved-away.log")
    writer.write_many([make_notice(2), make_notice(3)])
    zeek.poll()
    writer.close()
    zeek.stop()

    assert zeek.raised == [make_notice(i).notice_id for i in (1, 2, 3)]
    assert zeek.warnings == []
