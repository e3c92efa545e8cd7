"""The Zeek ASCII writer against case 17 and Zeek's reader rules."""

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensor.contract import PACKET_LOG_FIELDS, PACKET_LOG_PATH
from sensor.zeekwriter import (
    Column,
    LogFormat,
    ValueRejected,
    epoch_us,
    format_time,
    format_value,
    write_log,
)

CASE = "17-notice-writer-escaping-types"

# The case's own 10-field schema; `uid`, `sub` and `score` may be unset.
CASE_COLUMNS = [
    Column("ts", "time"),
    Column("uid", "string", optional=True),
    Column("src", "addr"),
    Column("dst", "addr"),
    Column("p", "port"),
    Column("note", "string"),
    Column("msg", "string", max_bytes=2000),
    Column("sub", "string", optional=True),
    Column("score", "double", optional=True),
    Column("tags", "set[string]"),
]
CASE_FORMAT = LogFormat("ml_notice", CASE_COLUMNS, max_line=3000)


def _case_lines(cases_dir: Path) -> list[dict]:
    text = (cases_dir / CASE / "input_notices.jsonl").read_text()
    records = [json.loads(line) for line in text.splitlines()]
    for record in records:
        record["p"] = (record["p"], record.pop("proto"))

    return records


def _without_open(data: bytes) -> bytes:
    return re.sub(rb"(?m)^#open\t.*$", b"#open", data)


def test_case17_output_is_byte_identical(cases_dir: Path, tmp_path: Path) -> None:
    """The six case notices are written exactly as expected_notice.log."""
    expected = (cases_dir / CASE / "expected_notice.log").read_bytes()
    target = tmp_path / "ml_notice.log"

    write_log(target, CASE_FORMAT, _case_lines(cases_dir), close=False)

    assert _without_open(target.read_bytes()) == _without_open(expected)


def test_case17_round_trip(cases_dir: Path) -> None:
    """Zeek's reader rules give back the intended values from every line."""
    lines = [CASE_FORMAT.line(r) for r in _case_lines(cases_dir)]
    decoded = [CASE_FORMAT.decode(line) for line in lines]

    assert all(len(line.rstrip(b"\n").split(b"\t")) == 10 for line in lines)
    assert decoded[1]["msg"] == "line1\tcol\nline2\r"
    assert decoded[2]["sub"] == "-"
    assert decoded[2]["msg"] == "path C:\\Users\\public"
    assert decoded[3]["msg"] == "(empty)"
    assert decoded[3]["sub"] == ""
    assert decoded[4]["tags"] == ["a,b", "c", "-"]
    assert decoded[4]["score"] is None
    assert decoded[4]["uid"] is None
    assert decoded[4]["msg"] == "café ✓ nul[\x00]"
    assert decoded[5]["tags"] == []
    assert decoded[0]["ts"] == 1796378400952359


def _one(column: Column, value: object) -> bytes:
    return format_value(column, value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[2001:db8::1]", b"2001:db8::1"),
        ("fe80::1%eth0", b"fe80::1"),
        ("2001:0DB8:0::0001", b"2001:db8::1"),
    ],
)
def test_addresses_are_normalised(value: str, expected: bytes) -> None:
    """Brackets and zones are stripped and IPv6 is written in short form."""
    assert _one(Column("src", "addr"), value) == expected


@pytest.mark.parametrize(
    "value",
    ["192.0.2.300", "sensor01.example.com", "192.0.2.10:443", '"192.0.2.1"'],
)
def test_bad_addresses_are_refused(value: str) -> None:
    """Out-of-range, host-name, port-suffixed or quoted addresses never reach addr."""
    with pytest.raises(ValueRejected, match=re.escape(repr(value))):
        _one(Column("src", "addr"), value)


def test_bad_inputs_of_case17(cases_dir: Path) -> None:
    """Each bad_inputs.jsonl line is handled as its `expect` says."""
    text = (cases_dir / CASE / "bad_inputs.jsonl").read_text()
    cases = {c["case"]: c for c in map(json.loads, text.splitlines())}
    col = {c.name: c for c in CASE_COLUMNS}
    required_score = Column("score", "double")

    assert _one(col["ts"], cases["time-iso8601"]["ts"]) == b"1796378400.952359"
    assert format_time(cases["time-float-ns"]["ts_ns"] // 1000) == b"1796378400.952359"
    with pytest.raises(ValueRejected, match="nanoseconds"):
        epoch_us(cases["time-float-ns"]["ts_ns"])
    assert _one(col["p"], (443, None)) == b"443/unknown"
    with pytest.raises(ValueRejected, match="70000"):
        _one(col["p"], (70000, "tcp"))
    assert _one(col["score"], "N/A") == b"-"
    with pytest.raises(ValueRejected):
        _one(required_score, "N/A")
    assert _one(col["score"], math.inf) == b"-"
    with pytest.raises(ValueRejected):
        _one(required_score, math.inf)
    long_msg = _one(col["msg"], "é" * cases["msg-very-long"]["msg_len"])
    assert len(long_msg) <= 2000
    assert long_msg.endswith(b"\\xa9...")
    assert _one(col["tags"], [""]) == b"(empty)"


def test_last_column_empty_is_refused() -> None:
    """A line whose last field would be empty is refused, not silently lost."""
    fmt = LogFormat("x", [Column("ts", "time"), Column("note", "string")])

    with pytest.raises(ValueRejected, match="last"):
        fmt.line({"ts": 0, "note": ""})


def test_unset_required_field_is_refused() -> None:
    """Unset is written only into optional columns."""
    fmt = LogFormat("x", [Column("ts", "time"), Column("n", "count")])

    with pytest.raises(ValueRejected, match="required"):
        fmt.line({"ts": 0})


def test_line_cap() -> None:
    """A record longer than max_line is refused with the limit named."""
    fmt = LogFormat("x", [Column("ts", "time"), Column("s", "string")], max_line=64)

    with pytest.raises(ValueRejected, match="64"):
        fmt.line({"ts": 0, "s": "a" * 100})


def test_first_column_hash_is_escaped() -> None:
    """A line never starts with `#`, which the reader would skip as a comment."""
    fmt = LogFormat("x", [Column("s", "string"), Column("n", "count")])

    line = fmt.line({"s": "#x", "n": 1})

    assert line == b"\\x23x\t1\n"
    assert fmt.decode(line)["s"] == "#x"


@given(st.lists(st.text(), min_size=1, max_size=4), st.text(min_size=1))
def test_any_text_round_trips(tags: list[str], msg: str) -> None:
    """Any text and set of text comes back unchanged and stays on one line."""
    fmt = LogFormat(
        "x", [Column("msg", "string"), Column("tags", "set[string]")], max_line=None
    )

    line = fmt.line({"msg": msg, "tags": tags})
    back = fmt.decode(line)

    assert line.count(b"\n") == 1 and line.count(b"\t") == 1
    assert max(line) < 0x7F
    assert back["msg"] == msg
    assert back["tags"] == [t for t in tags if t]


def test_packet_log_from_contract(tmp_path: Path) -> None:
    """A packet log built from the contract has Zeek's header and typed lines."""
    fmt = LogFormat.from_fields(PACKET_LOG_PATH, PACKET_LOG_FIELDS)
    record = {
        "ts": 1_700_000_000_000_001,
        "uid": "Cx",
        "id.orig_h": "10.0.0.1",
        "id.orig_p": (1234, "tcp"),
        "id.resp_h": "10.0.0.2",
        "id.resp_p": (80, "tcp"),
        "is_orig": True,
        "pkt_index": 0,
        "link_type": "LINK_ETHERNET",
        "wire_len": 60,
        "frame": "AAAA",
    }

    write_log(tmp_path / "p.log", fmt, [record])
    lines = (tmp_path / "p.log").read_bytes().split(b"\n")

    assert lines[4] == b"#path\tbflow_packet"
    assert lines[8].split(b"\t")[:7] == [
        b"1700000000.000001", b"Cx", b"10.0.0.1", b"1234/tcp", b"10.0.0.2",
        b"80/tcp", b"T",
    ]  # fmt: skip
    assert lines[9].startswith(b"#close\t")


@pytest.mark.parametrize("port_proto", [True, False])
def test_project_reader_reads_written_packet_log(
    tmp_path: Path, port_proto: bool
) -> None:
    """The daemon's own reader gets back what the writer wrote, tricky text too."""
    from sensor.reader import read_log

    fmt = LogFormat.from_fields(
        PACKET_LOG_PATH, PACKET_LOG_FIELDS, port_proto=port_proto
    )
    records = [
        {
            "ts": 1_700_000_000_000_001 + i,
            "uid": f"C\t-{i}\\x41é" if i else "-",
            "id.orig_h": "2001:db8::1",
            "id.orig_p": (1234 + i, "tcp"),
            "id.resp_h": "192.0.2.7",
            "id.resp_p": (443, "tcp"),
            "is_orig": bool(i % 2),
            "pkt_index": i,
            "link_type": "LINK_ETHERNET",
            "wire_len": 60 + i,
            "frame": "AAAA",
        }
        for i in range(3)
    ]
    write_log(tmp_path / "bflow_packet.log", fmt, records)

    batches = list(read_log(tmp_path / "bflow_packet.log"))
    got = [r for b in batches for r in b.records.to_pylist()]

    assert [r["uid"] for r in got] == [r["uid"] for r in records]
    assert [r["id.orig_p"] for r in got] == [1234, 1235, 1236]
    assert [r["is_orig"] for r in got] == [False, True, False]
    assert [r["id.orig_h"] for r in got] == ["2001:db8::1"] * 3
    assert [r["wire_len"] for r in got] == [60, 61, 62]


def test_odd_text_never_breaks_a_line() -> None:
    """Lone surrogates and long dashed text are written, one line, no crash."""
    fmt = LogFormat("x", [Column("n", "count"), Column("s", "string", max_bytes=40)])

    odd = fmt.line({"n": 1, "s": "a\ud800b"})
    cut = fmt.line({"n": 1, "s": "-" * 100})

    assert odd.count(b"\n") == 1 and b"\\x5cud800" in odd
    assert cut == b"1\t" + b"-" * 37 + b"...\n"
