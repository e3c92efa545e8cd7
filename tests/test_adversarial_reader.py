"""Hostile input for the reader: values, JSON and gzip made to break it.

Each test is a defect found by feeding the reader such input: it crashed,
or lost records that were whole. The inputs start from real fault-case
logs, changed in one place.
"""

import gzip
import json
from pathlib import Path

import pytest

from sensor.errors import LogFormatError
from sensor.reader import Batch, Gunzip, LogDecoder, ReadStats, read_log

CONN = "01-unset-vs-empty/conn.log"
JSON_CONN = "05-json-lines-dotted-keys/conn.log"


def uids(batches: list[Batch]) -> list[str]:
    return [str(r["uid"]) for b in batches for r in b.records.to_pylist()]


def decode(data: bytes, **options: object) -> tuple[list[Batch], LogDecoder]:
    decoder = LogDecoder("hostile.log", **options)  # type: ignore[arg-type]
    batches = decoder.feed(data) + decoder.finish()
    return batches, decoder


def conn_lines(cases_dir: Path) -> tuple[bytes, list[bytes]]:
    """Case 01's header block and its four data lines."""
    lines = (cases_dir / CONN).read_bytes().splitlines(keepends=True)
    return b"".join(lines[:8]), lines[8:12]


def decode_one_bad(
    cases_dir: Path, index: int, value: bytes
) -> tuple[list[Batch], LogDecoder]:
    """Case 01's first record with field `index` set to `value`, then its last."""
    header, lines = conn_lines(cases_dir)
    fields = lines[0].split(b"\t")
    fields[index] = value
    return decode(header + b"\t".join(fields) + lines[3])


@pytest.mark.parametrize(
    "ts", [b"99999999999999.000000", b"1e30", b"-99999999999999.5"]
)
def test_tsv_time_past_int64_skips_only_its_record(cases_dir: Path, ts: bytes) -> None:
    """A time too large for int64 microseconds is one bad record, not a crash."""
    header, lines = conn_lines(cases_dir)
    fields = lines[1].split(b"\t")
    fields[0] = ts
    bad = b"\t".join(fields)
    batches, decoder = decode(header + lines[0] + bad + lines[2] + lines[3])
    assert uids(batches) == [
        "CAb3xK2mQ9vTz1Lp7e",
        "CkP4vN7dF1gJ6sWa2m",
        "CzQ1mE8rT5yUi3Op9a",
    ]
    assert decoder.stats.skipped == 1


def test_tsv_interval_past_int64_skips_only_its_record(cases_dir: Path) -> None:
    """An interval of 2**63 microseconds is one bad record, not a crash."""
    batches, decoder = decode_one_bad(cases_dir, 8, b"9223372036854.775808")
    assert uids(batches) == ["CzQ1mE8rT5yUi3Op9a"]
    assert decoder.stats.skipped == 1


def test_json_time_past_int64_skips_only_its_record(cases_dir: Path) -> None:
    """A JSON `ts` of 1e30 seconds is one bad record, not a crash."""
    first = (cases_dir / JSON_CONN).read_bytes().splitlines(keepends=True)[0]
    record = json.loads(first)
    record["ts"], record["uid"] = 1e30, "Chuge"
    bad = json.dumps(record).encode() + b"\n"
    batches, decoder = decode(first + bad + first, log_path="conn")
    assert uids(batches) == [json.loads(first)["uid"]] * 2
    assert decoder.stats.skipped == 1


def test_json_nested_too_deep_is_a_skipped_line(cases_dir: Path) -> None:
    """A JSON line nested past Python's recursion limit is skipped, counted."""
    first = (cases_dir / JSON_CONN).read_bytes().splitlines(keepends=True)[0]
    deep = b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    for data in (first + deep + first, deep + first):
        batches, decoder = decode(data, log_path="conn")
        assert uids(batches) == [json.loads(first)["uid"]] * data.count(first)
        assert decoder.stats.skipped == 1


def test_deep_json_first_line_of_garbage_is_still_refused() -> None:
    """Only a line that opens an object counts as JSON, however deep."""
    with pytest.raises(LogFormatError):
        decode(b"[" * 100_000 + b"]" * 100_000 + b"\n")


def bad_crc(data: bytes) -> bytes:
    packed = bytearray(gzip.compress(data))
    packed[-8:-4] = bytes(4 - i for i in range(4))
    return bytes(packed)


def test_gzip_bad_trailer_keeps_every_whole_line(
    tmp_path: Path, cases_dir: Path
) -> None:
    """A gzip whose CRC is wrong still gives every record, with one error."""
    path = tmp_path / "conn.09:00:00-10:00:00.log.gz"
    path.write_bytes(bad_crc((cases_dir / CONN).read_bytes()))
    stats = ReadStats()
    batches = list(read_log(path, stats=stats))
    assert len(uids(batches)) == 4
    assert stats.errors == 1


def test_gzip_damage_keeps_lines_before_it(tmp_path: Path, data_dir: Path) -> None:
    """Lines decompressed before a damaged spot come out; later ones do not."""
    text = (data_dir / "zat" / "data" / "conn.log").read_bytes()
    packed = bytearray(gzip.compress(text, compresslevel=1))
    spot = len(packed) * 3 // 4
    packed[spot : spot + 64] = b"\x00" * 64
    path = tmp_path / "conn.log"
    path.write_bytes(bytes(packed))
    stats = ReadStats()
    got = uids(list(read_log(path, stats=stats)))
    every = uids(list(read_log(data_dir / "zat" / "data" / "conn.log")))
    assert stats.errors == 1
    assert 0 < len(got) < len(every)
    assert got == every[: len(got)]
    # Nothing a prefix of the file can give is lost.
    whole_lines = Gunzip().feed(bytes(packed[:spot]))
    assert len(got) >= whole_lines.count(b"\n") - 8


def test_gunzip_members_and_cut(cases_dir: Path) -> None:
    """Gunzip reads members one after another and knows a cut member."""
    data = (cases_dir / CONN).read_bytes()
    packed = gzip.compress(data[:300]) + gzip.compress(data[300:])
    gunzip = Gunzip()
    out = b"".join(gunzip.feed(packed[i : i + 7]) for i in range(0, len(packed), 7))
    assert out == data and not gunzip.in_member and gunzip.error is None
    cut = Gunzip()
    assert data.startswith(cut.feed(packed[:-3]))
    assert cut.in_member and cut.error is None


def test_overlong_line_skipped_whatever_the_chunking(cases_dir: Path) -> None:
    """A line past max_line is skipped whether it came in one piece or many."""
    header, lines = conn_lines(cases_dir)
    long = lines[0].replace(b"\tssl\t", b"\t" + b"s" * 3000 + b"\t")
    data = header + long + lines[3]
    for size in (len(data), 4000, 1000, 100, 7):
        decoder = LogDecoder("long.log", max_line=2000)
        batches: list[Batch] = []
        for at in range(0, len(data), size):
            batches += decoder.feed(data[at : at + size])
        batches += decoder.finish()
        assert uids(batches) == ["CzQ1mE8rT5yUi3Op9a"], size
        assert decoder.stats.skipped == 1
        assert batches[-1].end_offset == len(data)


def test_empty_set_separator_is_an_unusable_header(cases_dir: Path) -> None:
    """An empty `#set_separator` makes the block's lines skipped, not a crash."""
    header, lines = conn_lines(cases_dir)
    broken = header.replace(b"#set_separator\t,", b"#set_separator\t")
    batches, decoder = decode(broken + b"".join(lines))
    assert batches == []
    assert decoder.stats.skipped == 4


def test_header_without_field_names_counts_its_lines(cases_dir: Path) -> None:
    """Lines under a `#fields` line with no names are skipped and counted."""
    header, lines = conn_lines(cases_dir)
    nameless = b"#separator \\x09\n#fields\t\n#types\tstring\n"
    batches, decoder = decode(nameless + b"x\ny\n" + header + lines[0])
    assert uids(batches) == ["CAb3xK2mQ9vTz1Lp7e"]
    assert decoder.stats.skipped == 2


def test_raw_byte_in_a_line_of_wrong_width_is_one_skip(cases_dir: Path) -> None:
    """Case 14's raw 0x92 byte on a line with an extra field skips that line."""
    raw = (cases_dir / "14-watchdog-event-loss/conn_raw_non_utf8_byte.log").read_bytes()
    lines = raw.splitlines(keepends=True)
    first = lines[8]
    assert b"\x92" in first
    widened = first.replace(b"\n", b"\textra\n")
    data = b"".join(lines[:8]) + widened + b"".join(lines[9:])
    batches, decoder = decode(data)
    assert uids(batches) == ["Cwd1oo0000000000o2"]
    assert decoder.stats.skipped == 1


def test_json_path_taken_from_the_first_object_not_a_broken_line(
    cases_dir: Path,
) -> None:
    """A first JSON line too deep to parse does not hide the records' `_path`."""
    lines = (cases_dir / JSON_CONN).read_bytes().splitlines(keepends=True)
    record = json.loads(lines[0])
    record["_path"] = "conn"
    good = json.dumps(record).encode() + b"\n"
    deep = b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    batches, decoder = decode(deep + good)
    assert [b.log_path for b in batches] == ["conn"]
    assert batches[0].records.schema.field("uid").type == "string"
    assert uids(batches) == [record["uid"]]
    assert decoder.stats.skipped == 1


def test_six_digit_whole_seconds_are_seconds(cases_dir: Path) -> None:
    """`123456` seconds (no dot) is not read as the `.123456` of the fast path."""
    header, lines = conn_lines(cases_dir)
    fields = lines[0].split(b"\t")
    fields[0], fields[8] = b"123456", b"654321"
    batches, _ = decode(header + b"\t".join(fields))
    record = batches[0].records
    assert record.column("ts").cast("int64").to_pylist() == [123456 * 10**6]
    assert record.column("duration").cast("int64").to_pylist() == [654321 * 10**6]


@pytest.mark.parametrize("column", [9, 3])
def test_hex_integers_are_invalid_in_every_batch(cases_dir: Path, column: int) -> None:
    """`0x10` is a bad count or port whether or not its batch has other bad values."""
    header, lines = conn_lines(cases_dir)
    fields = lines[0].split(b"\t")
    fields[column] = b"0x10"
    hexed = b"\t".join(fields)
    broken = lines[3].split(b"\t")
    broken[column] = b"junk"
    for rest in (lines[3], b"\t".join(broken)):
        batches, decoder = decode(header + hexed + rest)
        good = uids(batches)
        assert "CAb3xK2mQ9vTz1Lp7e" not in good
        assert decoder.stats.skipped == 1 + (rest != lines[3])


def test_hex_time_is_invalid(cases_dir: Path) -> None:
    """`0x1.234567` is no time, though it has the shape of Zeek's `%.6f`."""
    batches, decoder = decode_one_bad(cases_dir, 0, b"0x1.234567")
    assert uids(batches) == ["CzQ1mE8rT5yUi3Op9a"]
    assert decoder.stats.skipped == 1


def test_time_past_year_9999_is_invalid(cases_dir: Path) -> None:
    """A time Python's datetime cannot hold is a skipped record, so to_pylist works."""
    batches, decoder = decode_one_bad(cases_dir, 0, b"999999999999.000000")
    assert [r["uid"] for b in batches for r in b.records.to_pylist()] == [
        "CzQ1mE8rT5yUi3Op9a"
    ]
    assert decoder.stats.skipped == 1
    first = (cases_dir / JSON_CONN).read_bytes().splitlines(keepends=True)[0]
    record = json.loads(first)
    record["ts"] = 999999999999.0
    batches, decoder = decode(json.dumps(record).encode() + b"\n" + first)
    assert len([r for b in batches for r in b.records.to_pylist()]) == 1
    assert decoder.stats.skipped == 1
