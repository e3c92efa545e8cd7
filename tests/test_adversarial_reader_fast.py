"""Adversarial inputs for the reader's fast paths (issue 2).

Each test states a rule that an input once broke: the typed CSV parse, the
exact converters it falls back to, JSON type inference and the scan before
the first header must agree with each other whatever the batch size, and
lose no record without counting it.
"""

from typing import Any

from structlog.testing import capture_logs

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
