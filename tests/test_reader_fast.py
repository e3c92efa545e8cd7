"""The reader's fast paths give what its exact path gives.

pyarrow's CSV reader types the plain TSV fields itself (time, interval,
count, int, double, port, bool) and a batch may be split on several threads;
the exact path (every field read as binary, then converted in
`sensor.zeektypes`) is the reference. It is forced here by switching the
typed parse off, which is also what the reader does for a block the typed
parse cannot judge.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import sensor.reader
from sensor.errors import LogFormatError
from sensor.reader import Batch, LogDecoder, ReadStats, read_log

STRATOSPHERE_CONN = (
    "stratosphere-security-datasets/008-zeek-mixed/data/conn.log.labeled"
)
HEADER = b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n"
HEADER += b"#unset_field\t-\n#path\ttyped\n"


def outcome(path: Path, **kwargs: Any) -> tuple[list[Batch], dict[str, int] | str]:
    """Everything a read gives: the batches and counts, or the error."""
    stats = ReadStats()
    try:
        batches = list(read_log(path, stats=stats, **kwargs))
    except LogFormatError as exc:
        return [], str(exc)
    return batches, stats.as_dict()


def same(one: list[Batch], other: list[Batch]) -> bool:
    """Equal batches: records, schema with its metadata, offsets, log path."""
    if len(one) != len(other):
        return False
    for a, b in zip(one, other, strict=True):
        if (a.end_offset, a.log_path, a.source) != (b.end_offset, b.log_path, b.source):
            return False
        schema, theirs = a.records.schema, b.records.schema
        if not schema.equals(theirs, check_metadata=True):
            return False
        # NaN is not equal to itself in Arrow; the texts of the values are.
        if not a.records.equals(b.records) and repr(a.records.to_pylist()) != repr(
            b.records.to_pylist()
        ):
            return False
    return True


@pytest.fixture
def exact_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No field is typed by the CSV reader: every column takes the exact path."""
    monkeypatch.setattr(sensor.reader, "csv_type", lambda zeek_type: None)


@pytest.fixture
def typed_columns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the field type of every column the CSV reader typed."""
    seen: list[str] = []
    real = sensor.reader.from_csv

    def spy(values: pa.Array, zeek_type: str) -> pa.Array:
        seen.append(zeek_type)
        return real(values, zeek_type)

    monkeypatch.setattr(sensor.reader, "from_csv", spy)
    return seen


def real_logs(data_dir: Path) -> Iterator[Path]:
    for path in sorted(data_dir.rglob("*")):
        if path.is_file() and (
            path.name.endswith((".log", ".log.gz", ".labeled")) and path.stat().st_size
        ):
            yield path


def test_typed_parse_equals_exact_on_every_real_log(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every real TSV log reads to the same batches, counts and errors both ways."""
    paths = list(real_logs(data_dir))
    assert len(paths) > 500
    fast = {path: outcome(path, batch_size=4096) for path in paths}
    monkeypatch.setattr(sensor.reader, "csv_type", lambda zeek_type: None)
    for path in paths:
        batches, counts = outcome(path, batch_size=4096)
        assert counts == fast[path][1], path
        assert same(batches, fast[path][0]), path


def test_typed_parse_is_used_on_a_conn_log(
    data_dir: Path, typed_columns: list[str]
) -> None:
    """A clean conn.log has its plain fields typed by the CSV reader."""
    list(read_log(data_dir / STRATOSPHERE_CONN))
    assert {"time", "interval", "count", "port", "bool"} <= set(typed_columns)


def typed_log(values: list[bytes], zeek_type: str) -> bytes:
    """A TSV log of one typed field and a count, one record per value."""
    lines = b"".join(b"%s\t%d\n" % (value, index) for index, value in enumerate(values))
    types = b"#fields\tv\tn\n#types\t%s\tcount\n" % zeek_type.encode()
    return HEADER + types + lines


def decode_batches(
    data: bytes, **kwargs: Any
) -> tuple[list[Batch], list[int], ReadStats]:
    """Batches, the line numbers logged as skipped, and the counts."""
    with capture_logs() as events:
        decoder = LogDecoder("typed.log", **kwargs)
        batches = decoder.feed(data) + decoder.finish()
    skipped = [e["line"] for e in events if e["event"] == "record.skipped"]
    return batches, skipped, decoder.stats


def decode(data: bytes, **kwargs: Any) -> tuple[list[Any], list[int], ReadStats]:
    """Records, the line numbers logged as skipped, and the counts."""
    batches, skipped, stats = decode_batches(data, **kwargs)
    return [r for b in batches for r in b.records.to_pylist()], skipped, stats


@pytest.mark.parametrize(
    ("zeek_type", "bad", "good"),
    [
        ("count", b"12a", b"7"),
        ("count", b"0x10", b"16"),
        ("count", b"18446744073709551616", b"18446744073709551615"),
        ("int", b"0X10", b"-3"),
        ("port", b"70000", b"443"),
        ("bool", b"true", b"T"),
        ("double", b"1.5.2", b"2.5"),
        ("time", b"253402300800", b"1655071198.444458"),
        ("time", b"1e5x", b"1655071198.4444589"),
        ("interval", b"(empty)", b"0.000001"),
    ],
)
def test_bad_value_in_a_typed_column_skipped_with_its_line(
    zeek_type: str, bad: bytes, good: bytes
) -> None:
    """A bad value in a typed field skips only its record, logged by line number."""
    values = [good] * 40 + [bad] + [good] * 40
    data = typed_log(values, zeek_type)
    records, skipped, stats = decode(data)
    header_lines = data[: data.index(b"\n" + good) + 1].count(b"\n")
    assert skipped == [header_lines + 41]
    assert stats.skipped == 1 and len(records) == 80
    assert [r["n"] for r in records] == [*range(40), *range(41, 81)]
    assert len({repr(r["v"]) for r in records}) == 1


def test_more_than_six_decimals_cut_like_the_exact_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A time with seven decimals reads as the exact path cuts it, not rounded."""
    data = typed_log([b"1.0000009", b"1655071198.4444589", b"-0.5"], "time")
    fast, _, _ = decode(data)
    monkeypatch.setattr(sensor.reader, "csv_type", lambda zeek_type: None)
    exact, _, _ = decode(data)
    assert fast == exact
    micros = [r["v"].timestamp() * 1e6 for r in fast]
    assert round(micros[0]) == 1_000_000


# Tokens around what each parser accepts: signs, spaces, hex, exponents,
# range ends, markers.
TOKENS = [
    b"0", b"1", b"+1", b"-1", b"-0", b" 1", b"1 ", b"0x10", b"0X1f", b"-0x10",
    b"1e3", b"1E-3", b"1.5", b".5", b"5.", b"1.1234567", b"1.123456", b"nan",
    b"inf", b"-inf", b"1_000", b"18446744073709551615", b"18446744073709551616",
    b"9223372036854775807", b"9223372036854775808", b"-9223372036854775809",
    b"65535", b"65536", b"443/tcp", b"T", b"F", b"t", b"(empty)", b"", b"007",
    b"1655071198.444458", b"-1655071198.444458", b"253402300799.999999",
    b"253402300800", b"-62135596800", b"-62135596801", b"9999999999999.9",
    b"x", b"-",
]  # fmt: skip
# Plain values of each type, so that many blocks parse typed at all.
PLAIN = {
    "time": [b"1655071198.444458", b"0.000001", b"-1.5", b"1", b"-"],
    "interval": [b"0.000010", b"86400.5", b"-0.25", b"-"],
    "count": [b"0", b"1", b"18446744073709551615", b"-"],
    "int": [b"-1", b"9223372036854775807", b"-9223372036854775808", b"-"],
    "double": [b"1.5", b"-0.25", b"1e3", b"-"],
    "port": [b"0", b"443", b"65535", b"-"],
    "bool": [b"T", b"F", b"-"],
}
TYPED = list(PLAIN)
# Odd values the typed parse takes, rightly or not: drawn more often.
TAKEN = [b"0x10", b"0X1f", b"253402300800", b"-62135596801", b" 1", b"007"]


@st.composite
def odd_rows(draw: st.DrawFn) -> list[tuple[bytes, ...]]:
    """Records of plain values with odd ones, now and then, in one field.

    Odd values in one field only, and not in every record, so that many
    blocks still parse typed and a value the typed parse takes wrongly
    (`0x10`, a time past year 9999) is not hidden by one it refuses.
    """
    odd_field = draw(st.sampled_from(TYPED))
    rows = []
    for _ in range(draw(st.integers(min_value=1, max_value=30))):
        row = []
        for zeek_type in TYPED:
            if zeek_type != odd_field or draw(st.integers(0, 2)):
                row.append(draw(st.sampled_from(PLAIN[zeek_type])))
            else:
                row.append(draw(st.sampled_from(TAKEN) | st.sampled_from(TOKENS)))
        rows.append(tuple(row))
    return rows


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(odd_rows(), st.integers(min_value=1, max_value=8))
def test_typed_parse_equals_exact_on_odd_values(
    monkeypatch: pytest.MonkeyPatch, rows: list[tuple[bytes, ...]], batch_size: int
) -> None:
    """Odd values in typed fields give the same records and skips both ways."""
    fields = b"\t".join([b"#fields", *(t.encode() for t in TYPED), b"n"])
    types = b"\t".join([b"#types", *(t.encode() for t in TYPED), b"count"])
    lines = b"".join(
        b"\t".join([*values, b"%d" % index]) + b"\n"
        for index, values in enumerate(rows)
    )
    data = HEADER + fields + b"\n" + types + b"\n" + lines
    fast = decode(data, batch_size=batch_size)
    with monkeypatch.context() as patch:
        patch.setattr(sensor.reader, "csv_type", lambda zeek_type: None)
        exact = decode(data, batch_size=batch_size)
    # repr: NaN is not equal to itself, its text is.
    assert repr(fast[0]) == repr(exact[0])
    assert fast[1:] == exact[1:]


def with_field(line: bytes, index: int, value: bytes) -> bytes:
    fields = line.split(b"\t")
    fields[index] = value
    return b"\t".join(fields)


def big_log(source: Path, copies: int, bad: dict[int, bytes]) -> bytes:
    """`source` repeated, with some data lines replaced by bad ones."""
    lines = source.read_bytes().splitlines(keepends=True)
    header = [line for line in lines if line.startswith(b"#") and b"#close" not in line]
    data = [line for line in lines if not line.startswith(b"#")] * copies
    for index, line in bad.items():
        data[index] = line
    return b"".join(header + data)


def test_threads_give_the_same_batches_and_line_numbers(data_dir: Path) -> None:
    """Splitting a batch on threads keeps records, order and skipped line numbers."""
    source = data_dir / STRATOSPHERE_CONN
    good = next(
        line for line in source.read_bytes().splitlines() if not line.startswith(b"#")
    )
    # Bad lines in both pieces of the first batch and in the second batch:
    # a short line, a bad bool, a line too long, a hex count.
    bad = {
        100: b"short\tline\n",
        30_000: with_field(good, 12, b"maybe") + b"\n",
        41_000: good + b"\textra\n",
        60_000: with_field(good, 9, b"0x10") + b"\n",
    }
    data = big_log(source, 12, bad)
    assert len(data) > 8 << 20

    one, skipped_one, stats_one = decode_batches(data, batch_size=50_000)
    three, skipped_three, stats_three = decode_batches(
        data, batch_size=50_000, threads=3
    )
    assert same(one, three)
    assert (skipped_one, stats_one) == (skipped_three, stats_three)
    header_lines = sum(1 for line in data[:4096].splitlines() if line.startswith(b"#"))
    assert sorted(skipped_one) == [header_lines + 1 + index for index in sorted(bad)]
    assert stats_one.records == data.count(b"\n") - header_lines - len(bad)


def test_threads_must_be_positive() -> None:
    """A thread count below 1 is refused with the value named."""
    with pytest.raises(ValueError, match="threads must be at least 1, not 0"):
        LogDecoder("x.log", threads=0)


def test_batches_bounded_with_threads(data_dir: Path) -> None:
    """Batches stay within batch_size when split on threads."""
    data = big_log(data_dir / STRATOSPHERE_CONN, 10, {})
    decoder = LogDecoder("big.log", batch_size=20_000, threads=4)
    batches: list[Batch] = decoder.feed(data) + decoder.finish()
    sizes = [b.records.num_rows for b in batches]
    assert max(sizes) == 20_000 and sum(sizes) == decoder.stats.records
