"""Limits the reader once had: gzip bombs, long JSON fractions, nested JSON.

- A gzip that inflates far beyond its size is decompressed a piece at a
  time, so memory is set by the piece (and the batch), not the expansion.
- JSON times are read from their decimal text, exactly to the microsecond,
  with digits past the sixth cut as in TSV logs.
- JSON a log shipper nested (`"id": {"orig_h": ...}`) reads as Zeek's own
  dotted names (`id.orig_h`).
"""

import gzip
import json
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.reader import Gunzip, LogDecoder, ReadStats, open_log_bytes, read_log

JSON_CONN = "05-json-lines-dotted-keys/conn.log"
TSV_HEADER = (
    b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n"
    b"#unset_field\t-\n#path\tconn\n"
    b"#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tduration\n"
    b"#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tinterval\n"
)


def bomb(size: int) -> bytes:
    """A gzip of `size` bytes of short lines, a thousandth of that packed."""
    inflate = zlib.compressobj(9, wbits=31)
    line = b"x\n" * 32768
    parts = [inflate.compress(line) for _ in range(size // len(line))]
    return b"".join([*parts, inflate.flush()])


def test_gunzip_pieces_are_bounded_and_complete() -> None:
    """A bomb comes out whole, in pieces no longer than the limit."""
    packed = bomb(64 << 20)
    assert len(packed) < 1 << 20
    gunzip = Gunzip(limit=1 << 16)
    total = 0
    for piece in gunzip.pieces(packed):
        assert 0 < len(piece) <= 1 << 16
        total += len(piece)
    assert total == 64 << 20
    assert gunzip.error is None and not gunzip.in_member


def test_gzip_bomb_read_in_bounded_memory(tmp_path: Path) -> None:
    """Reading a 256 MiB bomb never holds more than a few pieces of it."""
    path = tmp_path / "bomb.log.gz"
    path.write_bytes(bomb(256 << 20))
    tracemalloc.start()
    try:
        read = 0
        with open_log_bytes(path) as stream:
            while chunk := stream.read(1 << 20):
                read += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read == 256 << 20
    assert peak < 16 << 20


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=4000), min_size=1, max_size=8),
    st.integers(min_value=1, max_value=5000),
    st.sampled_from([1, 7, 4096]),
)
def test_pieces_equal_whole_decompression(
    sizes: list[int], cut: int, limit: int
) -> None:
    """Members fed in any cuts with any limit give zlib's output exactly."""
    members = [bytes(range(256)) * (size // 256 + 1) for size in sizes]
    packed = b"".join(
        gzip.compress(member[:size])
        for member, size in zip(members, sizes, strict=True)
    )
    want = b"".join(member[:size] for member, size in zip(members, sizes, strict=True))
    gunzip = Gunzip(limit=limit)
    got = b"".join(
        piece
        for at in range(0, len(packed), cut)
        for piece in gunzip.pieces(packed[at : at + cut])
    )
    assert got == want and gunzip.error is None and not gunzip.in_member


def test_damaged_bomb_keeps_what_came_before(tmp_path: Path) -> None:
    """Damage inside a bomb is reported, and its output still comes in pieces."""
    packed = bytearray(bomb(32 << 20))
    spot = len(packed) // 2
    packed[spot : spot + 64] = b"\xff" * 64
    gunzip = Gunzip(limit=1 << 16)
    pieces = list(gunzip.pieces(bytes(packed)))
    assert gunzip.error is not None
    assert all(len(piece) <= 1 << 16 for piece in pieces)
    assert 0 < sum(len(piece) for piece in pieces) <= 32 << 20


def test_gunzip_limit_must_be_positive() -> None:
    """A piece limit below 1 is refused with the value named."""
    with pytest.raises(ValueError, match="limit must be at least 1, not 0"):
        Gunzip(limit=0)


# -- JSON times -----------------------------------------------------------------


def json_records(lines: list[dict[str, Any]] | list[bytes]) -> list[dict[str, Any]]:
    data = b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n"
        for line in lines
    )
    decoder = LogDecoder("conn.json", log_path="conn")
    batches = decoder.feed(data) + decoder.finish()
    assert decoder.stats.skipped == 0
    return [record for batch in batches for record in batch.records.to_pylist()]


def micros(value: Any) -> int:
    return int(value.timestamp()) * 1_000_000 + value.microsecond


def test_json_time_with_many_decimals_is_exact() -> None:
    """A JSON time with more than six decimals is cut at the sixth, not rounded."""
    records = json_records(
        [
            b'{"ts":1655071198.4444589,"uid":"C1","duration":0.0000019}',
            b'{"ts":"1655071198.4444589","uid":"C2","duration":1.9999999}',
            b'{"ts":1.6550711984444589e9,"uid":"C3","duration":-0.0000019}',
        ]
    )
    assert [micros(r["ts"]) for r in records] == [1655071198444458] * 3
    durations = [r["duration"] for r in records]
    assert [d.days * 86_400_000_000 + d.seconds * 1_000_000 + d.microseconds
            for d in durations] == [1, 1_999_999, -1]  # fmt: skip


def test_json_times_equal_tsv_times() -> None:
    """The same time text reads to the same microsecond in JSON and TSV logs."""
    texts = ["1655071198.4444589", "1655071198.999999999", "-0.5", "1e3", "7"]
    tsv = TSV_HEADER + b"".join(
        b"%s\tC%d\t10.0.0.1\t1\t10.0.0.2\t2\ttcp\t%s\n" % (t.encode(), i, t.encode())
        for i, t in enumerate(texts)
    )
    decoder = LogDecoder("conn.log")
    from_tsv = [
        r for b in decoder.feed(tsv) + decoder.finish() for r in b.records.to_pylist()
    ]
    from_json = json_records(
        [
            b'{"ts":%s,"uid":"C%d","duration":%s}' % (t.encode(), i, t.encode())
            for i, t in enumerate(texts)
        ]  # fmt: skip
    )
    assert [(r["ts"], r["duration"]) for r in from_json] == [
        (r["ts"], r["duration"]) for r in from_tsv
    ]


# -- nested JSON ----------------------------------------------------------------


def nest(line: str) -> str:
    """`id.orig_h` and friends as a shipper writes them: {"id": {...}}.

    A line that is not whole JSON (the case's cut last line) stays as it is.
    """
    try:
        record = json.loads(line)
    except ValueError:
        return line
    out: dict[str, Any] = {}
    for key, value in record.items():
        head, dot, rest = key.partition(".")
        if dot:
            out.setdefault(head, {})[rest] = value
        else:
            out[key] = value
    return json.dumps(out)


def test_nested_json_reads_as_dotted_names(cases_dir: Path, tmp_path: Path) -> None:
    """A shipper's nested `id` object gives the same batches as Zeek's own JSON."""
    source = cases_dir / JSON_CONN
    nested = tmp_path / "conn.log"
    nested.write_text("\n".join(nest(line) for line in source.read_text().split("\n")))
    assert '"id": {"orig_h"' in nested.read_text()
    flat_stats, nested_stats = ReadStats(), ReadStats()
    flat = list(read_log(source, log_path="conn", stats=flat_stats))
    got = list(read_log(nested, log_path="conn", stats=nested_stats))
    assert [b.records.to_pylist() for b in got] == [b.records.to_pylist() for b in flat]
    assert got[0].records.schema.names == flat[0].records.schema.names
    assert nested_stats.skipped == flat_stats.skipped


def test_nested_and_dotted_name_first_one_kept() -> None:
    """A record with both `id.orig_h` and a nested `id` keeps the first given."""
    records = json_records(
        [
            {
                "ts": 1,
                "uid": "C1",
                "id.orig_h": "10.0.0.1",
                "id": {"orig_h": "10.9.9.9"},
            },
            {"ts": 2, "uid": "C2", "id": {"orig_h": "10.0.0.2", "orig_p": 80}},
        ]
    )
    assert [r["id.orig_h"] for r in records] == ["10.0.0.1", "10.0.0.2"]
    assert records[1]["id.orig_p"] == 80


def test_deeply_nested_json_flattens_to_one_dotted_name() -> None:
    """Objects nested many levels deep give one field named by the whole path."""
    deep = b'{"ts":1,"uid":"C9","x":' + b'{"a":' * 500 + b"7" + b"}" * 500 + b"}"
    records = json_records([b'{"ts":1,"uid":"C1","y":{"b":{"c":"z"}}}', deep])
    assert records[0]["y.b.c"] == b"z" and records[0]["x" + ".a" * 500] is None
    assert records[1]["x" + ".a" * 500] == 7
