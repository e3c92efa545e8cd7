"""The decoder as a stream: chunking, flushing, resuming and gzip.

The property tests feed real files (and a deliberately messy one) in random
pieces and check that nothing depends on where the pieces were cut.
"""

import gzip
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.reader import Batch, LogDecoder, open_log_bytes, read_log

CASES_FILES = (
    "01-unset-vs-empty/conn.log",
    "02-set-vector-separators/payload_bytes.log",
    "03-escapes-nonascii-separator/payload_bytes.log",
    "05-json-lines-dotted-keys/conn.log",
    "15-header-block-changes/conn_two_blocks.log",
)


def messy(cases_dir: Path) -> bytes:
    """Two header blocks, CRLF, blank, short, long and unparsable lines."""
    two_blocks = (cases_dir / CASES_FILES[4]).read_bytes()
    lines = two_blocks.splitlines(keepends=True)
    good = lines[8]
    return (
        b"### BTest baseline data\n"
        + b"".join(lines[:8])
        + good
        + good.replace(b"\n", b"\r\n")
        + b"\n"
        + b"\t".join(good.split(b"\t")[:5])
        + b"\n"
        + good.replace(b"1796378600.000000", b"XXXXXXXXXX.XXXXXX")
        + good.rstrip(b"\n")
        + b"\textra\n"
        + good.replace(b"\t500\t", b"\t18446744073709551616\t", 1)
        + b"".join(lines[9:])
        + good
    )


def rows(batches: list[Batch]) -> list[tuple[Any, ...]]:
    """Records with their field types; unset fields of JSON logs left out.

    A JSON log without a known schema has no header, so a key first seen in
    a later batch is absent from earlier batches: that is allowed.
    """
    out = []
    for batch in batches:
        types = {f.name: str(f.type) for f in batch.records.schema}
        json = batch.records.schema.metadata[b"zeek.format"] == b"json"
        for record in batch.records.to_pylist():
            out.append(
                tuple(
                    (name, types[name], value)
                    for name, value in record.items()
                    if not (json and value is None)
                )
            )
    return out


def whole(
    data: bytes, batch_size: int, log_path: str | None = None
) -> tuple[list[Batch], LogDecoder]:
    """Decode all of `data` at once."""
    decoder = LogDecoder("whole.log", batch_size=batch_size, log_path=log_path)
    batches = decoder.feed(data) + decoder.finish()
    return batches, decoder


@pytest.fixture(scope="module")
def inputs(cases_dir: Path) -> list[bytes]:
    files = [(cases_dir / name).read_bytes() for name in CASES_FILES]
    return [*files, messy(cases_dir)]


def test_messy_file_counts(cases_dir: Path) -> None:
    """Each kind of bad line is skipped and counted; the good ones survive."""
    batches, decoder = whole(messy(cases_dir), 1000)
    uids = [r["uid"] for b in batches for r in b.records.to_pylist()]
    assert uids == ["ChB5ll0000000000l1"] * 2 + ["ChB5ll0000000000l2"]
    # BTest line, short, unparsable ts, extra field, count past 2**64 - 1,
    # and the data line after the last #close.
    assert decoder.stats.skipped == 6
    assert decoder.stats.blank == 1


def test_count_exact_to_uint64_max() -> None:
    """Counts keep every digit up to 2**64 - 1 (no float round trip)."""
    text = (
        b"#separator \\x09\n#fields\tn\ti\n#types\tcount\tint\n"
        b"18446744073709551615\t-9223372036854775808\n"
        b"9007199254740993\t9223372036854775807\n"
    )
    batches, decoder = whole(text, 10)
    assert batches[0].records.to_pylist() == [
        {"n": 2**64 - 1, "i": -(2**63)},
        {"n": 2**53 + 1, "i": 2**63 - 1},
    ]


def test_times_exact_to_the_microsecond() -> None:
    """Times and intervals are parsed digit by digit into microseconds."""
    text = (
        b"#separator \\x09\n#fields\tt\td\n#types\ttime\tinterval\n"
        b"1796378400.999999\t-0.000001\n1.5\t1e+10\n"
    )
    batches, _ = whole(text, 10)
    records = batches[0].records
    assert records.column("t").cast("int64").to_pylist() == [
        1796378400999999,
        1500000,
    ]
    assert records.column("d").cast("int64").to_pylist() == [-1, 10**16]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    which=st.integers(0, len(CASES_FILES)),
    cuts=st.lists(st.integers(0, 5000), max_size=12),
    flushes=st.lists(st.booleans(), min_size=13, max_size=13),
    batch_size=st.integers(1, 7),
)
def test_chunking_never_changes_records(
    inputs: list[bytes],
    which: int,
    cuts: list[int],
    flushes: list[bool],
    batch_size: int,
) -> None:
    """Feeding a file in arbitrary chunks gives exactly the whole-file records."""
    data = inputs[which]
    expected, reference = whole(data, batch_size, "conn")

    decoder = LogDecoder("chunks.log", batch_size=batch_size, log_path="conn")
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    got: list[Batch] = []
    for index, (start, end) in enumerate(zip(points, points[1:], strict=False)):
        got += decoder.feed(data[start:end])
        if flushes[index]:
            got += decoder.flush()
    got += decoder.finish()

    assert rows(got) == rows(expected)
    assert decoder.stats.as_dict() | {"batches": 0} == (
        reference.stats.as_dict() | {"batches": 0}
    )
    assert all(b.records.num_rows <= batch_size for b in got)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    which=st.integers(0, len(CASES_FILES)),
    batch_size=st.integers(1, 4),
    pick=st.integers(0, 100),
)
def test_resume_at_end_offset(
    inputs: list[bytes], which: int, batch_size: int, pick: int
) -> None:
    """skip_until=batch.end_offset resumes with no record lost or repeated."""
    data = inputs[which]
    batches, _ = whole(data, batch_size, "conn")
    if not batches:
        return
    index = pick % len(batches)

    resumed = LogDecoder(
        "resume.log",
        batch_size=batch_size,
        log_path="conn",
        skip_until=batches[index].end_offset,
    )
    again = resumed.feed(data) + resumed.finish()

    assert rows(again) == rows(batches[index + 1 :])


def test_end_offset_is_a_line_boundary(inputs: list[bytes]) -> None:
    """Every end_offset sits just past a newline and grows batch by batch."""
    for data in inputs:
        batches, _ = whole(data, 1)
        offsets = [b.end_offset for b in batches]
        assert offsets == sorted(offsets)
        assert all(data[o - 1 : o] == b"\n" for o in offsets)


def test_resume_mid_line_keeps_that_line(cases_dir: Path) -> None:
    """A resume offset inside a line emits that line (it ended after it)."""
    data = (cases_dir / CASES_FILES[0]).read_bytes()
    batches, _ = whole(data, 1)
    middle = batches[1].end_offset - 5
    resumed = LogDecoder("mid.log", batch_size=1, skip_until=middle)
    assert rows(resumed.feed(data) + resumed.finish()) == rows(batches[1:])


def test_closed_then_reopened_by_new_block(cases_dir: Path) -> None:
    """`closed` is set by #close and cleared by the next header block."""
    data = (cases_dir / CASES_FILES[4]).read_bytes()
    first_close = data.index(b"#close")
    decoder = LogDecoder("blocks.log")
    decoder.feed(data[: data.index(b"\n", first_close) + 1])
    assert decoder.closed
    decoder.feed(data[data.index(b"\n", first_close) + 1 :][:40] + b"\n")
    assert not decoder.closed


def test_gzip_multi_member_and_chunked(tmp_path: Path, cases_dir: Path) -> None:
    """Concatenated gzip members read as one stream, by content not name."""
    data = (cases_dir / CASES_FILES[0]).read_bytes()
    path = tmp_path / "conn.log"
    half = len(data) // 2
    path.write_bytes(gzip.compress(data[:half]) + gzip.compress(data[half:]))
    with open_log_bytes(path) as stream:
        assert stream.read() == data
    assert sum(b.records.num_rows for b in read_log(path)) == 4


def test_corrupt_gzip_stops_cleanly(tmp_path: Path, cases_dir: Path) -> None:
    """Corrupt deflate data ends the stream with an error, not an exception."""
    data = (cases_dir / CASES_FILES[0]).read_bytes()
    packed = bytearray(gzip.compress(data, compresslevel=1))
    packed[len(packed) // 2 :] = b"\xff" * (len(packed) - len(packed) // 2)
    path = tmp_path / "bad.log.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(zlib.error):
        zlib.decompress(bytes(packed), wbits=31)
    batches = list(read_log(path))
    assert sum(b.records.num_rows for b in batches) < 4


def test_batches_are_bounded(data_dir: Path) -> None:
    """No batch holds more than batch_size records."""
    path = data_dir / "zat" / "data" / "conn.log"
    sizes = [b.records.num_rows for b in read_log(path, batch_size=100)]
    assert max(sizes) == 100 and sum(sizes) > 100


def test_after_close_keeps_late_lines(cases_dir: Path) -> None:
    """With after_close, lines after #close are records of the last header."""
    data = (cases_dir / CASES_FILES[0]).read_bytes()
    late = data.splitlines(keepends=True)[8]
    strict = LogDecoder("strict.log")
    strict_rows = strict.feed(data + late) + strict.finish()
    lenient = LogDecoder("tail.log", after_close=True)
    lenient_rows = lenient.feed(data + late) + lenient.finish()
    assert sum(b.records.num_rows for b in strict_rows) == 4
    assert strict.stats.skipped == 1
    assert sum(b.records.num_rows for b in lenient_rows) == 5
    assert lenient.stats.skipped == 0


def test_schema_metadata_names_the_log(cases_dir: Path) -> None:
    """Each batch carries #path, #open, the format and a header fingerprint."""
    batches = list(read_log(cases_dir / CASES_FILES[0]))
    metadata = batches[0].records.schema.metadata
    assert metadata[b"zeek.path"] == b"conn"
    assert metadata[b"zeek.open"] == b"2026-12-04-10-00-00"
    assert metadata[b"zeek.format"] == b"tsv"
    assert len(metadata[b"zeek.fingerprint"]) == 16
    field = batches[0].records.schema.field("tunnel_parents")
    assert field.metadata[b"zeek_type"] == b"set[string]"


def test_overlong_line_skipped_memory_bounded(cases_dir: Path) -> None:
    """A line longer than max_line is dropped and counted, not held."""
    data = (cases_dir / CASES_FILES[0]).read_bytes()
    lines = data.splitlines(keepends=True)
    header, good = b"".join(lines[:8]), lines[8]
    decoder = LogDecoder("long.log", max_line=500)
    batches = decoder.feed(header)
    for _ in range(20):
        batches += decoder.feed(b"x" * 100)
        assert len(decoder._tail) <= 600
    stream = header + b"x" * 2000 + b"\n" + good
    batches += decoder.feed(b"\n" + good) + decoder.finish()
    assert [r["uid"] for b in batches for r in b.records.to_pylist()] == [
        "CAb3xK2mQ9vTz1Lp7e"
    ]
    assert decoder.stats.skipped == 1 and decoder.stats.errors == 0
    assert batches[-1].end_offset == decoder.offset == len(stream)
