"""Adversarial inputs for the reader's fast paths (issue 2).

Each test states a rule that an input once broke: the typed CSV parse, the
exact converters it falls back to, JSON type inference and the scan before
the first header must agree with each other whatever the batch size, and
lose no record without counting it.
"""

from typing import Any

import pytest
from structlog.testing import capture_logs

import sensor.reader
from sensor.reader import LogDecoder, ReadStats

HEADER = b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n"
HEADER += b"#unset_field\t-\n#path\tadversarial\n"


def decode(data: bytes, **kwargs: Any) -> tuple[list[Any], list[int], ReadStats]:
    """Records, the line numbers logged as skipped, and the counts."""
    with capture_logs() as events:
        decoder = LogDecoder("adversarial.log", **kwargs)
        batches = decoder.feed(data) + decoder.finish()
    skipped = [e["line"] for e in events if e["event"] == "record.skipped"]
    records = [r for b in batches for r in b.records.to_pylist()]

    return records, skipped, decoder.stats


def tsv(zeek_type: bytes, values: list[bytes]) -> bytes:
    """A TSV log of one field of `zeek_type` and a count, one record a value."""
    types = b"#fields\tv\tn\n#types\t%s\tcount\n" % zeek_type
    lines = b"".join(b"%s\t%d\n" % (value, n) for n, value in enumerate(values))

    return HEADER + types + lines


def test_nested_json_arrays_are_read_as_text() -> None:
    """A JSON array of arrays is a list of JSON texts, not a crash or split text."""
    data = b'{"a": [[1], [2, 3]], "n": 1}\n{"a": [[]], "n": 2}\n'
    records, skipped, stats = decode(data)
    assert (stats.records, skipped) == (2, [])
    assert [r["a"] for r in records] == [[b"[1]", b"[2,3]"], [b"[]"]]


def test_a_double_reads_the_same_whatever_its_batch_holds() -> None:
    """`nan(1)` is kept or refused the same whether or not a batch falls back."""
    # pyarrow takes `nan(1)` and refuses `1_0`; Python's float the reverse.
    data = tsv(b"double", [b"1.5", b"nan(1)", b"1_0", b"2.5"])
    outcomes = [decode(data, batch_size=size) for size in (1, 2, 3, 100)]
    counts = {(o[2].records, o[2].skipped, tuple(o[1])) for o in outcomes}
    assert len(counts) == 1, counts
    assert {repr([r["v"] for r in o[0]]) for o in outcomes} == {
        repr([1.5, float("nan"), 10.0, 2.5])
    }


def test_every_spelling_of_a_time_is_cut_to_the_microsecond() -> None:
    """Exponent and signed forms are cut like fixed point, never rounded by float."""
    values = [b"1655071198.4444589", b"+1655071198.4444589", b"1.6550711984444589e9"]
    records, skipped, _ = decode(tsv(b"time", values))
    assert skipped == []
    assert {r["v"].microsecond for r in records} == {444458}

    spellings = [b"0.0000015", b"1.5e-6", b"15E-7", b"+0.0000015"]
    records, skipped, _ = decode(tsv(b"interval", spellings))
    assert skipped == []
    assert {r["v"].microseconds for r in records} == {1}

    json_records, _, _ = decode(b'{"_path": "conn", "duration": 1.5e-6}\n')
    assert json_records[0]["duration"].microseconds == 1


def test_a_json_object_without_fields_is_skipped_and_counted() -> None:
    """`{}` is a skipped, counted line whatever batch it falls in, never lost."""
    data = b'{}\n{"a": {}}\n{"b": 1}\n{}\n'
    for size in (1, 2, 100):
        records, skipped, stats = decode(data, batch_size=size)
        assert (records, skipped) == ([{"b": 1}], [1, 2, 4]), size
        assert (stats.records, stats.skipped) == (1, 3)


def test_lines_before_the_first_header_are_not_held() -> None:
    """Blank and comment lines before the header are counted as they come, not held.

    Held, each chunk re-scanned all of them: a log opening with 16 MiB of
    blank lines took seconds and hundreds of MiB before its first record.
    """
    decoder = LogDecoder("adversarial.log", max_line=4096)
    for fed in range(1, 9):
        assert decoder.feed(b"\n" * 65536) == []
        assert decoder.offset == fed * 65536
    assert decoder.stats.blank == 8 * 65536

    with capture_logs() as events:
        preamble = b"## BTest baseline\n\n ## a comment\n"
        decoder.feed(preamble + tsv(b"count", [b"1", b"x", b"3"]))
        batches = decoder.finish()
    skipped = [e["line"] for e in events if e["event"] == "record.skipped"]
    first = 8 * 65536 + 1
    header_lines = tsv(b"count", []).count(b"\n")
    assert skipped == [first, first + 2, first + 4 + header_lines]
    assert [r["v"] for b in batches for r in b.records.to_pylist()] == [1, 3]
    assert decoder.stats.blank == 8 * 65536 + 1


def test_an_extra_json_field_changing_type_loses_no_record() -> None:
    """A value that does not fit an inferred field's type is nulled and counted.

    The type of a field no known schema names is inferred from the first
    batch that holds it; a later value of another JSON type used to skip
    its whole record (here two conn records for a site's label field), and
    only when the batches fell that way.
    """
    lines = [b'{"_path": "conn", "uid": "C1", "label": 1}']
    lines += [b'{"_path": "conn", "uid": "C2", "label": -1}']
    lines += [b'{"_path": "conn", "uid": "C3", "label": "x"}']
    data = b"\n".join(lines) + b"\n"
    for size in (1, 2, 10):
        records, skipped, stats = decode(data, batch_size=size)
        assert [r["uid"] for r in records] == ["C1", "C2", "C3"], size
        assert skipped == [] and stats.records == 3
        assert stats.nulled == sum(r["label"] is None for r in records)
    assert stats.nulled == 0
    records, _, stats = decode(data, batch_size=1)
    assert [r["label"] for r in records] == [1, None, None]
    assert stats.nulled == 2


GOOD = (b"5", b"1.5", b"1.000001", b"T", b"80", b"s")
TYPES = (b"count", b"double", b"time", b"bool", b"port", b"string")


def log(
    rows: list[tuple[bytes, ...]], *, sep: bytes = b"\t", unset: bytes = b"-"
) -> bytes:
    """A TSV log of the six `TYPES` with its own separator and unset marker."""
    escaped = b"".join(b"\\x%02x" % byte for byte in sep)
    head = [b"#separator " + escaped, b"#set_separator" + sep + b","]
    head += [b"#empty_field" + sep + b"(empty)", b"#unset_field" + sep + unset]
    head += [b"#path" + sep + b"odd"]
    head += [sep.join([b"#fields", *(b"f%d" % i for i in range(6))])]
    head += [sep.join([b"#types", *TYPES])]
    return b"".join(line + b"\n" for line in head + [sep.join(r) for r in rows])


UNSET_ROW = (b"NULL", b"-", b"NULL", b"NULL", b"NULL", b"-")
ODD_LOGS = {
    "unset redefined mid-file": log([GOOD, GOOD])
    + b"#unset_field\tNULL\n"
    + b"\t".join(UNSET_ROW)
    + b"\n",
    "types redefined mid-file": log([GOOD, GOOD])
    + b"#types\tint\tcount\tinterval\tbool\tcount\tstring\n-5\t2\t-1.5\tF\t7\t-\n",
    "separator redefined mid-file": log([GOOD])
    + b"#separator \\x2c\n#fields,a,b\n#types,count,double\n1,2.5\n3,nan\n",
    "comma separator": log(
        [GOOD, (b" 5", b" 1.5", b"1.0", b"T", b"80", b"a b")], sep=b","
    ),
    "empty unset marker": log([GOOD, (b"",) * 6, GOOD], unset=b""),
    "unset marker T": log([GOOD, (b"5", b"1", b"1", b"T", b"8", b"T")], unset=b"T"),
    "x as unset marker": log([GOOD, (b"x",) * 6, (b"0x10", *GOOD[1:])], unset=b"x"),
    "NUL bytes": log([GOOD, (b"5\x00", *GOOD[1:]), (*GOOD[:5], b"a\x00b"), GOOD]),
    "quotes": log([GOOD, (b'"5"', *GOOD[1:]), (*GOOD[:5], b'"a'), GOOD]),
    "bool spellings": log(
        [GOOD] + [(*GOOD[:3], v, *GOOD[4:]) for v in (b"t", b"true", b"1", b"Y")]
    ),
    "ports": log(
        [GOOD]
        + [(*GOOD[:4], v, b"s") for v in (b"65536", b"-1", b"80/tcp", b"0x50", b"1e2")]
    ),
    "count limits": log(
        [GOOD]
        + [
            (v, *GOOD[1:])
            for v in (b"18446744073709551615", b"18446744073709551616", b"-0", b"+1")
        ]
    ),
}


@pytest.mark.parametrize("name", sorted(ODD_LOGS))
def test_odd_headers_read_the_same_typed_or_exact_at_any_batch_size(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Typed and exact paths agree on odd markers and separators, batch by batch."""
    data = ODD_LOGS[name]
    seen = set()
    for exact in (False, True):
        if exact:
            monkeypatch.setattr(sensor.reader, "csv_type", lambda zeek_type: None)
        for size in (1, 2, 5, 100):
            records, skipped, stats = decode(data, batch_size=size)
            counts = stats.as_dict() | {"batches": 0}
            seen.add(repr((records, skipped, counts)))
    assert len(seen) == 1, name


@pytest.mark.parametrize("value", [b"1e999999", b"-1e999999", b"1e99999"])
def test_a_time_with_a_huge_exponent_is_skipped(value: bytes) -> None:
    """A time like `1e999999` is a skipped line in TSV and JSON, not a crash."""
    records, skipped, _ = decode(tsv(b"time", [value, b"2"]))
    assert (len(records), skipped) == (1, [tsv(b"time", []).count(b"\n") + 1])

    line = b'{"_path": "conn", "uid": "C1", "ts": %s, "duration": %s}\n'
    records, skipped, _ = decode(line % (value, b"1") + line % (b"1", value))
    assert (records, skipped) == ([], [1, 2])
