"""The reader against the fault cases in shared/cases (01-07, 10, 11, 15).

Each test is one row of a case's "Expected" table, read from the case's own
files in place.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from structlog.testing import capture_logs

from sensor.errors import LogFormatError
from sensor.reader import (
    KNOWN_SCHEMAS,
    SKIP_LOG_LIMIT,
    Batch,
    LogDecoder,
    ReadStats,
    read_log,
)


def read(path: Path, **kwargs: Any) -> tuple[list[Batch], ReadStats]:
    stats = ReadStats()
    batches = list(read_log(path, stats=stats, **kwargs))
    return batches, stats


def by_uid(path: Path, **kwargs: Any) -> dict[str, dict[str, Any]]:
    batches, _ = read(path, **kwargs)
    records: dict[str, dict[str, Any]] = {}
    for batch in batches:
        for record in batch.records.to_pylist():
            uid = record["uid"]
            records[uid.decode() if isinstance(uid, bytes) else uid] = record
    return records


def ts(seconds: int, micros: int = 0) -> datetime:
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros)


# -- case 01: unset versus empty versus the literal strings -----------------


def test_case01_conn_unset_is_null_never_zero(cases_dir: Path) -> None:
    """Unset fields are nulls in every field type; 0 and F stay real values."""
    records = by_uid(cases_dir / "01-unset-vs-empty" / "conn.log")
    first = records["CAb3xK2mQ9vTz1Lp7e"]
    assert first["service"] == "ssl"
    assert first["duration"] == timedelta(seconds=1, microseconds=204518)
    assert (first["orig_bytes"], first["resp_bytes"]) == (517, 4321)
    assert (first["local_orig"], first["local_resp"]) == (True, False)
    assert first["tunnel_parents"] is None

    second = records["CR8tYw5nB2cXq0Hs4d"]
    for name in ("service", "duration", "orig_bytes", "resp_bytes"):
        assert second[name] is None, name
    assert (second["local_orig"], second["local_resp"]) == (True, False)

    third = records["CkP4vN7dF1gJ6sWa2m"]
    assert third["service"] is None
    assert third["duration"] == timedelta(0)
    assert (third["orig_bytes"], third["resp_bytes"]) == (0, 0)
    assert third["local_orig"] is None and third["local_resp"] is None
    assert third["tunnel_parents"] == []

    fourth = records["CzQ1mE8rT5yUi3Op9a"]
    assert fourth["service"] == "http"
    assert fourth["duration"] == timedelta(seconds=0.25)
    assert (fourth["orig_bytes"], fourth["resp_bytes"]) == (120, 0)
    assert (fourth["local_orig"], fourth["local_resp"]) == (False, True)


def test_case01_null_validity_bits_in_arrow(cases_dir: Path) -> None:
    """Nulls are real Arrow nulls (validity bit unset) in uint64/bool/duration."""
    batches, _ = read(cases_dir / "01-unset-vs-empty" / "conn.log")
    records = batches[0].records
    for name in ("orig_bytes", "local_orig", "duration", "tunnel_parents"):
        assert records.column(name).null_count >= 1, name
    assert records.schema.field("orig_bytes").type == pa.uint64()
    assert records.schema.field("duration").type == pa.duration("us")


def test_case01_payload_literal_dash_and_empty(cases_dir: Path) -> None:
    """`\\x2d` and `\\x28empty)` decode to the literal strings after the check."""
    records = by_uid(cases_dir / "01-unset-vs-empty" / "payload_bytes.log")
    first = records["CAb3xK2mQ9vTz1Lp7e"]
    assert first["orig_first_bytes"] == b"\x16\x03\x01\x02\x00"
    assert first["resp_first_bytes"] == b"\x16\x03\x03\x00\x7a"
    assert first["orig_sizes"] == [517]
    assert first["resp_sizes"] == [1448, 1448, 1425]
    assert first["tags"] == [b"ssl"]

    second = records["CR8tYw5nB2cXq0Hs4d"]
    for name in ("orig_payload_len", "orig_first_bytes", "resp_first_bytes"):
        assert second[name] is None, name
    assert second["orig_sizes"] is None and second["resp_sizes"] is None
    assert second["tags"] == []

    third = records["CkP4vN7dF1gJ6sWa2m"]
    assert third["orig_payload_len"] == 0
    assert third["orig_first_bytes"] == b"" and third["resp_first_bytes"] == b""
    assert third["orig_sizes"] == [] and third["resp_sizes"] == []

    fourth = records["CzQ1mE8rT5yUi3Op9a"]
    assert fourth["orig_first_bytes"] == b"-"
    assert fourth["resp_first_bytes"] == b"(empty)"
    assert fourth["orig_sizes"] == [120] and fourth["resp_sizes"] == []
    assert fourth["tags"] == [b"http"]


def test_case01_markers_come_from_the_header() -> None:
    """Unset and empty are the markers the header announces, not `-`."""
    text = (
        b"#separator \\x09\n#set_separator\t,\n#empty_field\tEMPTY\n"
        b"#unset_field\tNONE\n#path\tx\n#fields\ta\tb\tc\n"
        b"#types\tcount\tstring\tset[string]\n"
        b"NONE\t-\tEMPTY\n7\tEMPTY\t(empty)\n"
    )
    decoder = LogDecoder("markers.log")
    records = [
        r for b in decoder.feed(text) + decoder.finish() for r in b.records.to_pylist()
    ]
    assert records == [
        {"a": None, "b": b"-", "c": []},
        {"a": 7, "b": b"", "c": [b"(empty)"]},
    ]


# -- case 02: containers and the set separator ------------------------------


def test_case02_sets_and_vectors(cases_dir: Path) -> None:
    """Containers split on the set separator after the unset/empty check."""
    records = by_uid(cases_dir / "02-set-vector-separators" / "payload_bytes.log")
    a1 = records["CsV1aa0000000000a1"]
    assert a1["orig_sizes"] == [517, 1448, 1448, 220, 2020]
    assert a1["resp_sizes"] == []
    assert sorted(a1["tags"]) == sorted([b"ssl", b"sni-missing"])
    a2 = records["CsV1aa0000000000a2"]
    assert a2["orig_sizes"] is None and a2["resp_sizes"] == [0] and a2["tags"] == []
    assert sorted(records["CsV1aa0000000000a3"]["tags"]) == [b"a,b", b"c"]
    assert sorted(records["CsV1aa0000000000a4"]["tags"]) == [b"-", b"x"]
    assert records["CsV1aa0000000000a5"]["tags"] == [b"-"]
    assert sorted(records["CsV1aa0000000000a6"]["tags"]) == [b"(empty)", b"y"]
    assert records["CsV1aa0000000000a7"]["tags"] == [b"tab\tinside"]


def test_case02_semicolon_set_separator(cases_dir: Path) -> None:
    """A `;` set separator makes `,` data and `\\x3b` an escaped `;`."""
    path = cases_dir / "02-set-vector-separators" / "payload_bytes_semicolon.log"
    records = by_uid(path)
    b1 = records["CsV1bb0000000000b1"]
    assert b1["orig_sizes"] == [1, 1, 1] and b1["resp_sizes"] == [1, 2]
    assert sorted(b1["tags"]) == [b"a,b", b"c"]
    b2 = records["CsV1bb0000000000b2"]
    assert b2["resp_sizes"] == [] and sorted(b2["tags"]) == [b"x;y", b"z"]


def test_case02_string_columns_are_never_split(cases_dir: Path) -> None:
    """A `string` field holding commas stays one string; sets become lists."""
    records = by_uid(cases_dir / "02-set-vector-separators" / "conn.log")
    services = {r["service"] for r in records.values()}
    assert {"ssl,http", "quic,ssl"} <= services
    parents = [r["tunnel_parents"] for r in records.values() if r["tunnel_parents"]]
    assert sorted(parents[0]) == ["CtP2cc0000000000c1", "CtP2cc0000000000c9"]


# -- case 03: escapes, non-UTF-8 bytes and another separator ---------------


def test_case03_escapes_decode_to_bytes(cases_dir: Path) -> None:
    """`\\xNN` decodes per field after splitting; bad escapes stay literal."""
    path = cases_dir / "03-escapes-nonascii-separator" / "payload_bytes.log"
    records = by_uid(path)
    d1 = records["CeS3dd0000000000d1"]
    assert d1["orig_first_bytes"] == (
        b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\n"
    )
    d2 = records["CeS3dd0000000000d2"]
    assert d2["orig_first_bytes"] == b"col1\tcol2"
    assert d2["resp_first_bytes"] == b"\x00\x00\x00\x00"
    d3 = records["CeS3dd0000000000d3"]
    assert d3["orig_first_bytes"] == d3["resp_first_bytes"] == b"caf\xc3\xa9"
    d4 = records["CeS3dd0000000000d4"]
    assert d4["orig_first_bytes"] == b"\xff\xfe\x80"
    assert d4["resp_first_bytes"] == b"C:\\Windows\\system32"
    d5 = records["CeS3dd0000000000d5"]
    assert d5["orig_first_bytes"] == b"lit\\xZZ\\x4"
    assert d5["tags"] == [b"keep-trailing-space  "]
    d8 = records["CeS3dd0000000000d8"]
    assert d8["orig_first_bytes"] == b"\\x41 is literal"
    assert d8["resp_first_bytes"] == b"C:\\Windows\\system32"


def test_case03_pipe_separator_from_header(cases_dir: Path) -> None:
    """`#separator \\x7c` splits on `|`; a raw TAB is then ordinary data."""
    path = cases_dir / "03-escapes-nonascii-separator" / "payload_bytes_pipe.log"
    records = by_uid(path)
    d6 = records["CeS3dd0000000000d6"]
    assert (d6["orig_first_bytes"], d6["resp_first_bytes"]) == (b"x|y", b"a\tb")
    assert records["CeS3dd0000000000d7"]["resp_first_bytes"] == b"a\tb"


# -- case 04: #close and a line cut short -----------------------------------


def test_case04_close_is_not_a_record(cases_dir: Path) -> None:
    """`#close` gives no record and marks the decoder closed."""
    path = cases_dir / "04-close-footer-truncated-line" / "conn_complete.log"
    decoder = LogDecoder(str(path))
    batches = decoder.feed(path.read_bytes()) + decoder.finish()
    assert sum(b.records.num_rows for b in batches) == 3
    assert decoder.closed


def test_case04_truncated_tail_dropped_and_counted(cases_dir: Path) -> None:
    """A finished file's unterminated last line is dropped and counted."""
    path = cases_dir / "04-close-footer-truncated-line" / "conn_truncated_tail.log"
    batches, stats = read(path)
    uids = [u for b in batches for u in b.records.column("uid").to_pylist()]
    assert len(uids) == 2 and "CcF4ee0000000000e3" not in uids
    assert stats.errors == 1


def test_case04_append_in_two_pieces(cases_dir: Path) -> None:
    """A line written in two appends becomes one record, only when whole."""
    case = cases_dir / "04-close-footer-truncated-line"
    complete = (case / "conn_complete.log").read_bytes().splitlines(keepends=True)
    header_and_two = b"".join(complete[:10])
    decoder = LogDecoder("conn.log")
    seen = decoder.feed(header_and_two) + decoder.flush()
    assert sum(b.records.num_rows for b in seen) == 2

    part_a = (case / "append_chunks" / "part_a.txt").read_bytes()
    assert decoder.feed(part_a) + decoder.flush() == []

    part_b = (case / "append_chunks" / "part_b.txt").read_bytes()
    third = decoder.feed(part_b) + decoder.flush()
    rows = [r for b in third for r in b.records.to_pylist()]
    assert len(rows) == 1
    assert rows[0]["uid"] == "CcF4ee0000000000e3"
    assert (rows[0]["orig_bytes"], rows[0]["resp_bytes"]) == (12345, 67890)

    assert decoder.feed(b"#close\t2026-12-04-10-59-59\n") + decoder.finish() == []
    assert decoder.closed and decoder.stats.errors == 0


def test_case04_wrong_field_count_rejected_not_shifted(cases_dir: Path) -> None:
    """A line with too few or too many fields is skipped, never shifted."""
    path = cases_dir / "04-close-footer-truncated-line" / "conn_complete.log"
    lines = path.read_bytes().splitlines(keepends=True)
    short = b"\t".join(lines[8].split(b"\t")[:-3]) + b"\n"
    long = lines[9].rstrip(b"\n") + b"\textra\n"
    decoder = LogDecoder("conn.log")
    data = b"".join(lines[:8]) + short + long + lines[10]
    batches = decoder.feed(data) + decoder.finish()
    records = [r for b in batches for r in b.records.to_pylist()]
    assert [r["uid"] for r in records] == ["CcF4ee0000000000e3"]
    assert decoder.stats.skipped == 2


# -- case 05: JSON lines ------------------------------------------------------


def test_case05_json_conn(cases_dir: Path) -> None:
    """JSON keys are the dotted names; absent and null are both unset."""
    path = cases_dir / "05-json-lines-dotted-keys" / "conn.log"
    batches, stats = read(path, log_path="conn")
    records = [r for b in batches for r in b.records.to_pylist()]
    assert len(records) == 6
    assert stats.blank == 1 and stats.errors == 1 and stats.skipped == 0

    first, s0, v6, four, nulls, six = records
    assert first["ts"] == ts(1796378400, 101010)
    assert first["id.orig_h"] == "192.0.2.10"
    for name in ("service", "duration", "orig_bytes", "resp_bytes"):
        assert s0[name] is None and nulls[name] is None, name
    assert v6["id.orig_h"] == "2001:db8:10::25"
    assert four["ts"] == ts(1796378405)
    assert four["service"] == "ssl,http"
    assert sorted(four["tunnel_parents"]) == [
        "CtP2cc0000000000c1",
        "CtP2cc0000000000c9",
    ]
    assert nulls["tunnel_parents"] is None
    assert six["tunnel_parents"] == []


def test_case05_json_has_the_tsv_schema(cases_dir: Path) -> None:
    """A JSON conn.log and a TSV conn.log give the same known columns."""
    json_batch = read(
        cases_dir / "05-json-lines-dotted-keys" / "conn.log", log_path="conn"
    )[0][0]
    tsv_batch = read(cases_dir / "01-unset-vs-empty" / "conn.log")[0][0]
    known = KNOWN_SCHEMAS["conn"]
    for schema in (json_batch.records.schema, tsv_batch.records.schema):
        assert schema.names[: len(known)] == known.names
        assert [f.type for f in schema][: len(known)] == [f.type for f in known]


def test_case05_json_payload_bytes_match_tsv(cases_dir: Path) -> None:
    """`\\\\xNN` text in JSON strings decodes to the same bytes as in TSV."""
    path = cases_dir / "05-json-lines-dotted-keys" / "payload_bytes.log"
    records = by_uid(path)
    d1 = records["CeS3dd0000000000d1"]
    assert d1["orig_first_bytes"] == (
        b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\n"
    )
    d3 = records["CeS3dd0000000000d3"]
    assert d3["orig_first_bytes"] == d3["resp_first_bytes"] == b"caf\xc3\xa9"
    d4 = records["CeS3dd0000000000d4"]
    assert d4["orig_first_bytes"] == b"\xff\xfe\x80"
    assert d4["resp_first_bytes"] == b"" and d4["resp_sizes"] == []


def test_case05_partial_json_line_waits() -> None:
    """A JSON line without its newline is held while the file is live."""
    decoder = LogDecoder("conn.log", log_path="conn")
    line = b'{"ts":1796378400.5,"uid":"Cx","id.orig_h":"192.0.2.1"}'
    assert decoder.feed(line[:20]) + decoder.flush() == []
    batches = decoder.feed(line[20:] + b"\n") + decoder.flush()
    assert [b.records.column("uid").to_pylist() for b in batches] == [["Cx"]]


# -- case 06: a newer Zeek's extra columns ----------------------------------


def test_case06_extra_columns_by_name(cases_dir: Path) -> None:
    """Columns are matched by name; the newer ones carry their values."""
    records = by_uid(cases_dir / "06-newer-zeek-extra-fields" / "conn.log")
    assert len(records) == 4
    tcp = records["CnZ6gg0000000000g1"]
    assert (tcp["vlan"], tcp["ip_proto"]) == (100, 6)
    assert tcp["community_id"] == "1:CiE97spiBiosyTjBz+u9/N9X4kM="
    gre = records["CnZ6gg0000000000g2"]
    assert gre["proto"] == "unknown_transport"
    assert (gre["id.orig_p"], gre["id.resp_p"], gre["ip_proto"]) == (0, 0, 47)
    assert gre["orig_bytes"] is None
    icmp = records["CnZ6gg0000000000g3"]
    assert (icmp["id.orig_p"], icmp["id.resp_p"], icmp["ip_proto"]) == (135, 136, 58)
    assert icmp["vlan"] is None
    dns = records["CnZ6gg0000000000g4"]
    assert dns["vlan"] is None and dns["orig_bytes"] == 40


def test_case06_json_row_equals_tsv_row(cases_dir: Path) -> None:
    """The ICMPv6 record reads the same from JSON as from TSV."""
    case = cases_dir / "06-newer-zeek-extra-fields"
    tsv = by_uid(case / "conn.log")["CnZ6gg0000000000g3"]
    json_record = by_uid(case / "conn_json.log", log_path="conn")["CnZ6gg0000000000g3"]
    assert json_record == tsv


# -- case 07: missing optional columns ---------------------------------------


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        ("conn_older_layout.log", ["local_resp", "tunnel_parents"]),
        (
            "conn_site_filtered.log",
            ["local_orig", "local_resp", "missed_bytes", "history"],
        ),
    ],
)
def test_case07_missing_columns_are_null(
    cases_dir: Path, name: str, missing: list[str]
) -> None:
    """Present columns keep their values; absent ones are typed null columns."""
    batches, _ = read(cases_dir / "07-missing-optional-fields" / name)
    records = batches[0].records
    assert records.schema.names[:27] == KNOWN_SCHEMAS["conn"].names
    row = records.to_pylist()[0]
    assert (row["orig_pkts"], row["resp_pkts"]) == (6, 5)
    for column in missing:
        assert records.column(column).null_count == records.num_rows, column
        assert records.schema.field(column).type == (
            KNOWN_SCHEMAS["conn"].field(column).type
        )


# -- case 10: IPv6 -----------------------------------------------------------


def test_case10_ipv6_addresses(cases_dir: Path) -> None:
    """Both address families parse into one normalised text column."""
    records = by_uid(cases_dir / "10-ipv6-addresses" / "conn.log")
    assert len(records) == 6
    assert records["Cv6Akk0000000000k2"]["id.orig_h"] == "fe80::a8bb:ccff:fedd:eeff"
    assert records["Cv6Akk0000000000k2"]["id.resp_h"] == "ff02::1:ffdd:eeff"
    assert records["Cv6Akk0000000000k3"]["id.orig_h"] == "::"
    assert records["Cv6Akk0000000000k4"]["id.resp_h"] == "::1"
    assert records["Cv6Akk0000000000k5"]["id.orig_h"] == "192.0.2.20"
    assert records["Cv6Akk0000000000k6"]["id.resp_h"] == (
        "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
    )


def test_case10_addresses_normalised_and_zone_stripped() -> None:
    """Upper-case, uncompressed and zoned addresses come out canonical."""
    text = (
        b"#separator \\x09\n#fields\ta\tb\n#types\taddr\taddr\n"
        b"2001:DB8:0:0:0:0:0:1\tfe80::1%eth0\n"
        b"2001:db8::FFFF:192.168.0.5\t10.0.0.1\n"
        b"not-an-address\t10.0.0.2\n"
    )
    decoder = LogDecoder("addr.log")
    batches = decoder.feed(text) + decoder.finish()
    rows = [r for b in batches for r in b.records.to_pylist()]
    assert rows == [
        {"a": "2001:db8::1", "b": "fe80::1"},
        {"a": "2001:db8::ffff:c0a8:5", "b": "10.0.0.1"},
    ]
    assert decoder.stats.skipped == 1


# -- case 11: gzip archives ----------------------------------------------------


ARCHIVE = Path("11-gzip-rotated-archive") / "logs" / "2026-12-04"


@pytest.mark.parametrize(
    "name",
    [
        "conn.09:00:00-10:00:00.log.gz",
        "conn.11:00:00_11:49:27.log.gz",
        "conn.12:00:00-13:00:00.log",
        "conn.15:00:00-16:00:00.log.gz",
    ],
)
def test_case11_archives_read_by_content(cases_dir: Path, name: str) -> None:
    """gzip or not is decided by magic bytes; the type comes from #path."""
    batches, stats = read(cases_dir / ARCHIVE / name)
    assert sum(b.records.num_rows for b in batches) == 2
    assert {b.log_path for b in batches} == {"conn"}
    assert stats.errors == 0


def test_case11_truncated_gzip_keeps_whole_lines(cases_dir: Path) -> None:
    """A gzip cut short yields its 20 whole records and one counted error."""
    batches, stats = read(cases_dir / ARCHIVE / "conn.10:00:00-11:00:00.log.gz")
    uids = [u for b in batches for u in b.records.column("uid").to_pylist()]
    assert len(uids) == 20
    assert uids[0].endswith("01") and uids[-1].endswith("20")
    assert stats.errors == 1


def test_case11_gzip_in_flight_readable(cases_dir: Path) -> None:
    """A live gzip without trailer gives the records written so far."""
    path = cases_dir / "11-gzip-rotated-archive" / "spool" / "logger-1"
    batches, stats = read(path / "conn.log.gz")
    assert sum(b.records.num_rows for b in batches) == 2
    assert stats.errors == 1


@pytest.mark.parametrize(
    "path",
    [
        ARCHIVE / "conn-summary.09:00:00-10:00:00.log.gz",
        Path("11-gzip-rotated-archive/spool/logger-1/.shadow.conn.log.gz"),
    ],
)
def test_case11_non_zeek_file_is_one_clear_error(cases_dir: Path, path: Path) -> None:
    """A file that is not a Zeek log raises one LogFormatError naming it."""
    with pytest.raises(LogFormatError, match="not a Zeek log"):
        read(cases_dir / path)


# -- case 15: header blocks ---------------------------------------------------


def test_case15_second_header_block_new_schema(cases_dir: Path) -> None:
    """A second header block starts new batches decoded with its own header."""
    batches, _ = read(cases_dir / "15-header-block-changes" / "conn_two_blocks.log")
    assert [b.records.num_rows for b in batches] == [1, 1]
    first, second = (b.records for b in batches)
    assert first.column("ip_proto").to_pylist() == [None]
    assert second.column("ip_proto").to_pylist() == [6]
    assert sorted(second.column("tunnel_parents").to_pylist()[0]) == [
        "ChB5ll0000000000l1",
        "ChB5ll0000000000l9",
    ]
    assert (
        first.schema.metadata[b"zeek.fingerprint"]
        != second.schema.metadata[b"zeek.fingerprint"]
    )


def test_case15_reordered_header(cases_dir: Path) -> None:
    """Header lines are matched by keyword in any order; #close is optional."""
    path = cases_dir / "15-header-block-changes" / "conn_reordered_header.log"
    batches, stats = read(path)
    assert sum(b.records.num_rows for b in batches) == 1
    assert batches[0].log_path == "conn" and stats.skipped == 0


def test_case15_empty_column_names_ignored(cases_dir: Path) -> None:
    """zeek-cut's empty column names are dropped, the others kept."""
    path = cases_dir / "15-header-block-changes" / "zeek_cut_missing_column.log"
    batches, _ = read(path)
    assert batches[0].records.to_pylist() == [
        {"uid": b"ChB5ll0000000000l1", "id.orig_h": "192.0.2.110"}
    ]
    assert batches[0].log_path is None


def test_case15_data_before_fields_is_counted() -> None:
    """A data line before any #fields is skipped and counted, not guessed."""
    decoder = LogDecoder("early.log")
    text = b"#separator \\x09\n1\t2\n#fields\ta\n#types\tcount\n3\n"
    batches = decoder.feed(text) + decoder.finish()
    assert [r for b in batches for r in b.records.to_pylist()] == [{"a": 3}]
    assert decoder.stats.skipped == 1


def test_case15_bare_column_header_rejected(data_dir: Path) -> None:
    """zeek-cut -c output (a bare `ts<TAB>uid` line) is a clear format error."""
    path = (
        data_dir
        / "zeek-btest/Baseline/scripts.base.protocols.quic.merlinc2/conn.log.cut"
    )
    with pytest.raises(LogFormatError, match="zeek-cut"):
        read(path)


def test_case15_tab_after_separator_keyword(data_dir: Path) -> None:
    """`#separator<TAB>\\x09` is accepted like `#separator \\x09`."""
    path = data_dir / "zat" / "data" / "conn_date_issue.log"
    assert path.read_bytes().startswith(b"#separator\t")
    batches, stats = read(path)
    assert sum(b.records.num_rows for b in batches) > 0
    assert stats.skipped == 0


# -- what is logged ---------------------------------------------------------


def test_missing_fields_warned_once_per_file(cases_dir: Path) -> None:
    """Absent conn fields give one warning per file that names them."""
    path = cases_dir / "07-missing-optional-fields" / "conn_site_filtered.log"
    data = path.read_bytes()
    with capture_logs() as events:
        decoder = LogDecoder(str(path), batch_size=1)
        decoder.feed(data + data[data.index(b"\n1") + 1 :])
        decoder.finish()
    warnings = [e for e in events if e["event"] == "file.missing_fields"]
    assert len(warnings) == 1
    assert warnings[0]["file"] == str(path)
    assert {"local_orig", "history", "tunnel_parents"} <= set(warnings[0]["fields"])


def test_skipped_lines_logged_with_line_numbers_then_summarised() -> None:
    """The first skips are logged with file and line; the rest are summed up."""
    header = b"#separator \\x09\n#fields\ta\tb\n#types\tcount\tcount\n"
    bad = b"".join(b"%d\n" % i for i in range(50))
    with capture_logs() as events:
        decoder = LogDecoder("bad.log")
        decoder.feed(header + bad + b"1\t2\n")
        batches = decoder.finish()
    skipped = [e for e in events if e["event"] == "record.skipped"]
    assert len(skipped) == SKIP_LOG_LIMIT
    assert skipped[0]["line"] == 4 and skipped[0]["file"] == "bad.log"
    summary = [e for e in events if e["event"] == "file.skipped_summary"]
    assert summary and summary[0]["skipped"] == 50
    assert decoder.stats.skipped == 50
    assert [b.records.to_pylist() for b in batches] == [[{"a": 1, "b": 2}]]


def test_unknown_type_read_as_string_with_one_warning() -> None:
    """A field type not in the table becomes a string column, warned once."""
    text = (
        b"#separator \\x09\n#fields\tx\ty\n#types\topaque_thing\tcount\nabc\t1\n-\t2\n"
    )
    with capture_logs() as events:
        decoder = LogDecoder("unknown.log")
        batches = decoder.feed(text) + decoder.finish()
        decoder = LogDecoder("unknown2.log")
        decoder.feed(text)
        decoder.finish()
    assert batches[0].records.column("x").to_pylist() == ["abc", None]
    assert batches[0].records.schema.field("x").type == pa.string()
    unknown = [e for e in events if e["event"] == "type.unknown"]
    assert len(unknown) == 1 and unknown[0]["zeek_type"] == "opaque_thing"


def test_port_with_protocol_suffix() -> None:
    """A port written as `443/tcp` reads as the number 443."""
    text = b"#separator \\x09\n#fields\tp\n#types\tport\n443/tcp\n53/udp\n-\n"
    decoder = LogDecoder("ports.log")
    batches = decoder.feed(text) + decoder.finish()
    assert batches[0].records.column("p").to_pylist() == [443, 53, None]


def test_markdown_is_not_a_zeek_log(tmp_path: Path) -> None:
    """A text file starting with `# Title` is refused, not read as a header."""
    path = tmp_path / "notes.log"
    path.write_text("# Sample logs\n\nSome words.\n")
    with pytest.raises(LogFormatError, match="not a Zeek log"):
        read(path)


def test_pretty_printed_json_is_not_a_zeek_log(data_dir: Path) -> None:
    """Multi-line JSON (one object over many lines) is refused as a whole."""
    path = data_dir / "lab" / "benign-1" / "stats.json"
    with pytest.raises(LogFormatError, match="whole JSON object"):
        read(path)


def test_case07_required_field_missing_is_refused(cases_dir: Path) -> None:
    """A conn log without a field it cannot do without is one clear error."""
    source = cases_dir / "07-missing-optional-fields" / "conn_site_filtered.log"
    lines = source.read_bytes().splitlines(keepends=True)
    # Drop the `proto` column from the header and the record alike.
    cut = []
    for line in lines:
        if line.startswith((b"#fields", b"#types")) or not line.startswith(b"#"):
            parts = line.rstrip(b"\n").split(b"\t")
            index = lines[6].split(b"\t").index(b"proto")
            del parts[index]
            line = b"\t".join(parts) + b"\n"
        cut.append(line)
    decoder = LogDecoder("no-proto.log")
    with pytest.raises(LogFormatError, match="lacks the fields proto"):
        decoder.feed(b"".join(cut))
        decoder.finish()
