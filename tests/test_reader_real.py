"""The reader on real Zeek logs from Bro 2.0 to Zeek 8.2, and against zat.

zat is the reader most Zeek Python users know, so it is the independent
reference: where both give a value they must agree, and the tests at the end
show where ours differs on purpose (unset, sets, time zone).
"""

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from zat.log_to_dataframe import LogToDataFrame
from zat.zeek_log_reader import ZeekLogReader

from sensor.errors import LogFormatError
from sensor.reader import KNOWN_SCHEMAS, ReadStats, read_log

BRO_20_CONN = (
    "zeek-btest/Baseline-history/v2.0-86/scripts.base.protocols.ftp.ftp-ipv4/conn.log"
)
BRO_22_CONN = "zat/data/conn.log"
STRATOSPHERE_CONN = (
    "stratosphere-security-datasets/008-zeek-mixed/data/conn.log.labeled"
)


BASELINE = "zeek-btest/Baseline"


def load(path: Path, **kwargs: Any) -> tuple[list[dict[str, Any]], ReadStats]:
    stats = ReadStats()
    records = [
        record
        for batch in read_log(path, stats=stats, **kwargs)
        for record in batch.records.to_pylist()
    ]
    return records, stats


def data_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip() and not line.startswith(b"#"))


# -- across versions ------------------------------------------------------------


def test_bro_20_conn_log(data_dir: Path) -> None:
    """A Bro 2.0 conn.log (no #open, 19 columns) reads with nulls for the rest."""
    records, stats = load(data_dir / BRO_20_CONN)
    assert len(records) == data_lines(data_dir / BRO_20_CONN) and stats.skipped == 0
    first = records[0]
    assert first["uid"] == "arKYeMETxOg" and first["service"] == "ftp-data"
    assert first["local_orig"] is None
    assert first["local_resp"] is None and first["tunnel_parents"] is None
    assert first["ts"] == datetime(2012, 2, 21, 16, 52, 55, 736107, tzinfo=UTC)


def test_bro_22_table_type_is_a_list(data_dir: Path) -> None:
    """Bro 2.2's `table[string]` reads as a list, like `set[string]`."""
    records, stats = load(data_dir / BRO_22_CONN)
    assert len(records) == data_lines(data_dir / BRO_22_CONN)
    assert stats.skipped == 0
    parents = [r["tunnel_parents"] for r in records]
    assert all(p is None or isinstance(p, list) for p in parents)
    assert any(p == [] for p in parents)


def test_stratosphere_label_columns_kept(data_dir: Path) -> None:
    """Site label columns after the conn fields are carried, by name."""
    path = data_dir / STRATOSPHERE_CONN
    batches = list(read_log(path))
    schema = batches[0].records.schema
    known = KNOWN_SCHEMAS["conn"].names
    assert schema.names == [*known, "label", "detailedlabel"]
    labels = {v for b in batches for v in b.records.column("label").to_pylist()}
    assert b"Benign" in labels and b"Malicious" in labels
    assert sum(b.records.num_rows for b in batches) == data_lines(path)


def unmasked(source: Path, tmp_path: Path) -> Path:
    """A btest baseline with its masked times filled in with a real one."""
    path = tmp_path / source.name
    data = source.read_bytes().replace(b"XXXXXXXXXX.XXXXXX", b"1300475167.096535")
    path.write_bytes(data)
    return path


def test_extension_columns_before_ts(data_dir: Path, tmp_path: Path) -> None:
    """Logging extension fields placed before `ts` do not shift anything."""
    source = (
        data_dir
        / BASELINE
        / ("scripts.base.frameworks.logging.field-extension-complex/conn.log")
    )
    records, stats = load(unmasked(source, tmp_path))
    assert len(records) == data_lines(source) and stats.skipped == 1
    assert list(records[0])[:27] == KNOWN_SCHEMAS["conn"].names
    assert records[0]["ts"] == datetime(2011, 3, 18, 19, 6, 7, 96535, tzinfo=UTC)
    assert records[0]["_stream"] == b"conn"
    assert records[0]["_system_name"] is None
    assert records[0]["_innerLogged.d"] == [4, 2, 3, 1]
    assert records[0]["uid"] == "CFSwNi4CNGxcuffo49"
    assert records[0]["id.resp_p"] == 6705


def test_btest_masked_times_skipped_and_counted(data_dir: Path) -> None:
    """btest's `XXXXXXXXXX.XXXXXX` times are counted as skipped, never raised."""
    path = data_dir / BASELINE / "opt.basic" / "conn.log"
    records, stats = load(path)
    assert records == []
    # Every data line, plus the `### BTest baseline` line before the header.
    assert stats.skipped == data_lines(path) + 1


@pytest.mark.parametrize(
    ("test", "hint"),
    [
        ("scripts.base.frameworks.logging.scope_sep", "default_scope_sep"),
        ("scripts.base.frameworks.logging.field-name-map", "field_name_map"),
    ],
)
def test_renamed_id_fields_refused_with_a_reason(
    data_dir: Path, tmp_path: Path, test: str, hint: str
) -> None:
    """A conn.log whose id fields were renamed is refused, saying why."""
    source = data_dir / BASELINE / test / "conn.log"
    with pytest.raises(LogFormatError, match=hint) as raised:
        load(unmasked(source, tmp_path))
    assert "id.orig_h" in str(raised.value)


def test_renamed_fields_readable_as_another_log(data_dir: Path, tmp_path: Path) -> None:
    """The same file read under another log path keeps every field by name."""
    source = data_dir / BASELINE / "scripts.base.frameworks.logging.scope_sep/conn.log"
    path = unmasked(source, tmp_path)
    renamed = tmp_path / "renamed.log"
    renamed.write_bytes(path.read_bytes().replace(b"#path\tconn", b"#path\tmy_conn"))
    records, _ = load(renamed)
    assert records[0]["id_orig_h"] == "173.192.163.128"


def zeek_generated_logs(data_dir: Path) -> Iterator[Path]:
    for path in sorted((data_dir / "zeek-generated").rglob("*.log")):
        if path.stat().st_size:
            yield path


def test_every_zeek_822_log_reads_clean(data_dir: Path) -> None:
    """Every log Zeek 8.2.2 wrote here reads with no record skipped or lost."""
    checked = 0
    for path in zeek_generated_logs(data_dir):
        records, stats = load(path)
        assert stats.skipped == 0 and stats.errors == 0, path
        assert len(records) == data_lines(path), path
        checked += 1
    assert checked > 100


@pytest.mark.parametrize(
    "name",
    ["zat/data/json/conn.log", "slips/dataset/test9-mixed-zeek-dir/conn.log"],
)
def test_json_conn_logs(data_dir: Path, name: str) -> None:
    """Real JSON conn.logs read into the conn schema with exact microseconds."""
    path = data_dir / name
    batches = list(read_log(path, log_path="conn"))
    schema = batches[0].records.schema
    known = KNOWN_SCHEMAS["conn"]
    assert schema.names[: len(known)] == known.names
    first_line = path.read_text().splitlines()[0]
    first_ts = first_line.split('"ts":', 1)[1].split(",", 1)[0]
    seconds, _, fraction = first_ts.partition(".")
    micros = int(seconds) * 1_000_000 + int(fraction.ljust(6, "0")[:6])
    got = batches[0].records.column("ts").cast("int64")[0].as_py()
    assert abs(got - micros) <= 1
    assert sum(b.records.num_rows for b in batches) == data_lines(path)


def test_json_ipv6_and_relative_times(data_dir: Path) -> None:
    """Slips' replayed JSON keeps IPv6 addresses and small relative times."""
    path = data_dir / "slips/dataset/test9-mixed-zeek-dir/conn.log"
    records, _ = load(path, log_path="conn")
    assert records[0]["id.orig_h"] == "fe80::1cf4:44d2:904a:14f7"
    assert records[0]["ts"] == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
        seconds=22, microseconds=335172
    )


def test_json_gzip_with_iso_times(data_dir: Path) -> None:
    """zed's gzip JSON logs: ISO-8601 times, `_path` taken as the log path."""
    path = data_dir / "zed-sample-data/zeek-json/ntp.json.gz"
    batches = list(read_log(path))
    assert {b.log_path for b in batches} == {"ntp"}
    first = batches[0].records.to_pylist()[0]
    assert first["ts"] == datetime(2018, 3, 24, 17, 15, 25, 733635, tzinfo=UTC)
    assert first["ref_id"] == b"\x00\x00\x00\x00"


def test_gzip_tsv_archive(data_dir: Path) -> None:
    """A gzip TSV log reads the same as its plain twin."""
    plain, _ = load(data_dir / "zat/data/dhcp.log")
    packed, stats = load(data_dir / "zat/data/dhcp.log.gz")
    assert packed == plain and stats.errors == 0


def test_zat_corrupt_gzip(data_dir: Path) -> None:
    """zat's truncated gzip (cut inside #close) gives every record, one error."""
    records, stats = load(data_dir / "zat/data/http.log.corrupt.gz")
    plain, _ = load(data_dir / "zat/data/http.log")
    assert records == plain
    assert stats.errors == 1


# -- against zat ------------------------------------------------------------------

ZAT_LOGS = (
    BRO_22_CONN,
    "zat/data/http.log",
    "zat/data/dns.log",
    "zat/data/ssl.log",
    STRATOSPHERE_CONN,
    "zeek-generated/chrissanders-packets/synscan/conn.log",
    "zeek-generated/malcolm-pcap/pcaps/plugins/bro-simple-scan/backscatter/conn.log",
)


def zeek_types(path: Path) -> dict[str, str]:
    with open(path, "rb") as handle:
        lines = [
            line.rstrip(b"\n").split(b"\t")
            for line in handle
            if line[:2] == b"#f" or line[:2] == b"#t"
        ][:2]
    return dict(
        zip(
            (f.decode() for f in lines[0][1:]),
            (t.decode() for t in lines[1][1:]),
            strict=True,
        )
    )


def same(ours: Any, theirs: Any, zeek_type: str) -> bool:
    """Do our value and zat's (from LogToDataFrame) say the same thing?"""
    if zeek_type == "time":
        delta = pd.Timestamp(ours.replace(tzinfo=None)) - theirs
        return abs(delta) <= pd.Timedelta(microseconds=1)
    if zeek_type == "interval":
        return abs(pd.Timedelta(ours) - theirs) <= pd.Timedelta(microseconds=1)
    if zeek_type == "bool":
        return ours == (theirs == "T")
    if zeek_type == "double":
        return abs(ours - theirs) <= 1e-9 * max(1.0, abs(ours))
    if zeek_type in ("string", "enum") and isinstance(ours, bytes | str):
        text = ours.decode() if isinstance(ours, bytes) else ours
        return bool(text == str(theirs))
    return bool(ours == theirs)


@pytest.mark.parametrize("name", ZAT_LOGS)
def test_values_agree_with_zat_dataframe(data_dir: Path, name: str) -> None:
    """Wherever zat's LogToDataFrame has a plain value, ours is the same."""
    path = data_dir / name
    if not path.exists():
        pytest.skip(f"{path} not in this data set")
    types = zeek_types(path)
    ours, _ = load(path)
    theirs = LogToDataFrame().create_dataframe(str(path), ts_index=False)
    assert len(ours) == len(theirs)

    compared = 0
    for column, zeek_type in types.items():
        if zeek_type.startswith(("set[", "vector[", "table[")) or not column:
            continue
        for mine, value in zip(
            (r[column] for r in ours), theirs[column].tolist(), strict=True
        ):
            if mine is None or pd.isna(value):
                continue
            if isinstance(mine, bytes) and (b"\\" in mine or not mine):
                continue
            assert same(mine, value, zeek_type), (column, mine, value)
            compared += 1
    assert compared > len(ours) * 5


def test_values_agree_with_zat_reader(data_dir: Path) -> None:
    """zat's ZeekLogReader agrees where it does not invent a value for unset."""
    path = data_dir / BRO_22_CONN
    types = zeek_types(path)
    ours, _ = load(path)
    theirs = list(ZeekLogReader(str(path)).readrows())
    assert len(ours) == len(theirs)
    raw = [
        line.split("\t")
        for line in path.read_text().splitlines()
        if not line.startswith("#")
    ]
    names = list(types)
    for mine, zat_row, fields in zip(ours, theirs, raw, strict=True):
        for name, text in zip(names, fields, strict=True):
            if text in ("-", "(empty)") or types[name].startswith("table["):
                continue
            value = zat_row[name]
            if types[name] == "time":
                value = value.astimezone(UTC)
                assert abs(mine[name] - value) <= timedelta(microseconds=1)
            elif types[name] in ("string", "enum"):
                assert mine[name] == value or mine[name] == value.encode()
            else:
                assert mine[name] == value, name


def test_zat_invents_values_for_unset_fields(data_dir: Path) -> None:
    """zat reads unset as 0 / False / 1970; ours keeps it null."""
    path = data_dir / BRO_22_CONN
    ours, _ = load(path)
    theirs = list(ZeekLogReader(str(path)).readrows())
    index = next(i for i, r in enumerate(ours) if r["orig_bytes"] is None)
    assert theirs[index]["orig_bytes"] == 0
    assert ours[index]["duration"] is None
    assert theirs[index]["duration"] == timedelta(0)
    unset_bool = next(i for i, r in enumerate(ours) if r["local_orig"] is None)
    assert theirs[unset_bool]["local_orig"] is False


def test_zat_returns_sets_as_strings(cases_dir: Path) -> None:
    """zat gives a set field as its raw text; ours splits it into a list."""
    conn = cases_dir / "02-set-vector-separators" / "conn.log"
    theirs = LogToDataFrame().create_dataframe(str(conn), ts_index=False)
    ours, _ = load(conn)
    zat_parents = [str(v) for v in theirs["tunnel_parents"] if not pd.isna(v)]
    assert "CtP2cc0000000000c1,CtP2cc0000000000c9" in zat_parents
    assert ["CtP2cc0000000000c1", "CtP2cc0000000000c9"] in [
        sorted(r["tunnel_parents"] or []) for r in ours
    ]


def test_zat_uses_local_time(data_dir: Path) -> None:
    """zat's ZeekLogReader gives naive local times; ours are UTC-aware."""
    path = data_dir / BRO_22_CONN
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    try:
        zat_first = next(iter(ZeekLogReader(str(path)).readrows()))["ts"]
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()
    ours, _ = load(path)
    assert zat_first.tzinfo is None
    assert ours[0]["ts"].tzinfo is not None
    assert zat_first - ours[0]["ts"].replace(tzinfo=None) == timedelta(
        hours=5, minutes=30
    )
