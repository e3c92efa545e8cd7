"""Read Zeek logs (TSV or JSON lines, plain or gzip) into Arrow record batches.

`LogDecoder` turns one file's byte stream, fed in chunks of any size, into
`Batch`es of at most `batch_size` records; `read_log` drives it over a whole
finished file, and the live tailer (`sensor.tail`) drives it as a file grows.

Rules the decoder keeps (cases 01-07, 10, 11 and 15 in `shared/cases`):

- Lines are split on `\\n` only and one trailing `\\r` is dropped; bytes are
  never decoded as text before the fields are split. A last line without
  `\\n` is not a record yet: `feed` keeps it, `finish` drops and counts it.
- TSV fields are typed from `#fields`/`#types` through the one table in
  `sensor.zeektypes`; separators and markers come from the header. A new
  `#separator` line starts a new header block: new schema, new batches.
- A line with the wrong number of fields, a value that does not parse, a
  data line before any `#fields` or after `#close` is skipped, counted in
  `stats` and logged with file and line number (the first few per file,
  then a summary). Blank lines are counted apart and otherwise ignored; a
  line longer than `MAX_LINE` is skipped without being held in memory.
- Logs named in `KNOWN_SCHEMAS` ("conn", our packet log) come out with that
  schema whatever the file holds: known fields first in schema order, with
  all-null columns (and one warning per file) for those the file lacks, then
  the file's extra fields in file order. A TSV file of such a log that
  lacks one of its `REQUIRED_FIELDS` (e.g. written with renamed id fields)
  is refused with a `LogFormatError` that says which and why.
- JSON lines: keys are the flat dotted Zeek names; objects a log shipper
  nested (`"id": {"orig_h": ..}`) are flattened to them. An absent key,
  `null` and unset are the same; an object without fields (`{}`) is
  skipped and counted. A field no known schema names takes its type from
  the values of the first batch that holds it; a later value that does
  not fit is unset (counted in `nulled`, warned once per field) and its
  record kept. Times are read from the number's decimal text, exact to
  the microsecond (digits past the sixth cut, as in TSV).
  Zeek's JSON writer escapes bytes it will not put in JSON as the text
  `\\xNN`; the decoder turns those into bytes in every `string` field, the
  same as in TSV. A literal backslash-x in traffic is therefore ambiguous in
  JSON logs (Zeek's JSON escaping cannot tell them apart); TSV does not have
  this problem.
- `read_log` decompresses gzip a piece at a time (`Gunzip.pieces`), so a
  file that inflates a thousandfold costs no more memory than any other.
  `Gunzip.feed`, which the live tailer calls, still returns all that one
  chunk of compressed bytes inflates to.

How a TSV batch is decoded, fastest way first: pyarrow's CSV reader splits
the lines and types the plain fields itself (time and interval as six-place
decimals, count, int, double, port, bool), the rest (strings, addresses,
containers) come out as raw binary for the converters in `sensor.zeektypes`.
A block where a typed field fails to parse is read again with that field
as binary (one that fails in two blocks stays binary for the rest of its
header block); a block that holds something only the converters may judge
(`0x10`, which pyarrow reads as 16; a time past year 9999; a line of the
wrong width) is read again all binary. Either way a bad value is skipped,
counted and logged by line number exactly as on the all-binary path. With
`threads > 1` a batch of more than 2 MiB is split at line ends and the
pieces parsed on a shared thread pool (pyarrow lets go of the GIL).
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import re
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from itertools import repeat
from os import PathLike
from typing import IO, Any, BinaryIO, Final

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import structlog

from sensor.contract import PACKET_LOG_FIELDS, PACKET_LOG_PATH
from sensor.errors import LogFormatError
from sensor.zeektypes import (
    INTEGER_TYPES,
    TIME_MAX_US,
    TIME_MIN_US,
    ColumnHints,
    Markers,
    arrow_type,
    conform,
    convert_column,
    csv_type,
    from_csv,
    normalise_addr,
    normalise_subnet,
    split_container,
    text_micros,
    times_in_range,
    unescape,
    unescape_hex_only,
)

log = structlog.get_logger(__name__)

DEFAULT_BATCH_SIZE: Final = 65536
READ_CHUNK: Final = 1 << 20
# Zeek's own lines are far shorter; this only bounds memory on bad input.
MAX_LINE: Final = 64 << 20
# Skipped lines logged one by one per file; after that only the summary.
SKIP_LOG_LIMIT: Final = 10

_HEADER_KEYS: Final = frozenset(
    {
        b"separator",
        b"set_separator",
        b"empty_field",
        b"unset_field",
        b"path",
        b"open",
        b"close",
        b"fields",
        b"types",
    }
)

# Identifier-like `string` fields of the known logs: always ASCII when Zeek
# writes them, so they are Arrow `string` rather than `binary`.
_TEXT_FIELDS: Final = frozenset(
    {
        "uid",
        "service",
        "conn_state",
        "history",
        "tunnel_parents",
        "community_id",
        "orig_l2_addr",
        "resp_l2_addr",
    }
)

CONN_FIELDS: Final = (
    ("ts", "time"),
    ("uid", "string"),
    ("id.orig_h", "addr"),
    ("id.orig_p", "port"),
    ("id.resp_h", "addr"),
    ("id.resp_p", "port"),
    ("proto", "enum"),
    ("service", "string"),
    ("duration", "interval"),
    ("orig_bytes", "count"),
    ("resp_bytes", "count"),
    ("conn_state", "string"),
    ("local_orig", "bool"),
    ("local_resp", "bool"),
    ("missed_bytes", "count"),
    ("history", "string"),
    ("orig_pkts", "count"),
    ("orig_ip_bytes", "count"),
    ("resp_pkts", "count"),
    ("resp_ip_bytes", "count"),
    ("tunnel_parents", "set[string]"),
    # Added by newer Zeek versions or common policy scripts.
    ("ip_proto", "count"),
    ("orig_l2_addr", "string"),
    ("resp_l2_addr", "string"),
    ("vlan", "int"),
    ("inner_vlan", "int"),
    ("community_id", "string"),
)


def _known_schema(
    fields: tuple[tuple[str, str], ...], text_fields: frozenset[str]
) -> pa.Schema:
    columns = []
    for name, zeek_type in fields:
        arrow = arrow_type(zeek_type)
        if name in text_fields and arrow == pa.binary():
            arrow = pa.string()
        elif name in text_fields and arrow == pa.list_(pa.binary()):
            arrow = pa.list_(pa.string())
        columns.append(pa.field(name, arrow, metadata={"zeek_type": zeek_type}))

    return pa.schema(columns)


# Fields that only newer Zeek versions or extra scripts write: their absence
# is normal and not worth a warning (they are still all-null columns).
_NEWER_FIELDS: Final = frozenset(
    {"ip_proto", "orig_l2_addr", "resp_l2_addr", "vlan", "inner_vlan", "community_id"}
)

# Fields a known TSV log cannot do without: a file lacking one is refused
# (a JSON record merely lacking the key has them unset, as Zeek means it).
REQUIRED_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "conn": ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto"),
    PACKET_LOG_PATH: (
        "ts",
        "uid",
        "id.orig_h",
        "id.orig_p",
        "id.resp_h",
        "id.resp_p",
        "frame",
    ),
}

# Our packet log writes only ASCII in its string fields (`frame` is base64),
# so all of them are text.
_PACKET_FIELDS: Final = tuple((f.name, f.zeek_type) for f in PACKET_LOG_FIELDS)

KNOWN_SCHEMAS: Final[dict[str, pa.Schema]] = {
    "conn": _known_schema(CONN_FIELDS, _TEXT_FIELDS),
    PACKET_LOG_PATH: _known_schema(
        _PACKET_FIELDS, frozenset(name for name, _ in _PACKET_FIELDS)
    ),
}


@dataclass
class ReadStats:
    """What a decoder has seen so far in one file."""

    records: int = 0
    skipped: int = 0
    blank: int = 0
    errors: int = 0
    batches: int = 0
    # Values of a JSON field whose type was guessed from earlier values
    # that did not fit it: the field is null, the record is kept.
    nulled: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Batch:
    """Records decoded from one run of lines of one file.

    Attributes:
        records: the records; the schema metadata carries `zeek.path`,
            `zeek.open`, `zeek.format` and `zeek.fingerprint`, and each
            field's metadata its `zeek_type`.
        log_path: the `#path` value ("conn"), JSON `_path`, or the log path
            the decoder was given.
        source: the file it came from.
        end_offset: offset in the (decompressed) byte stream just past the
            last line this batch consumed; resuming there re-reads nothing.
    """

    records: pa.RecordBatch
    log_path: str | None
    source: str
    end_offset: int


@dataclass
class _Header:
    """State of the current TSV header block."""

    separator: bytes = b"\t"
    markers: Markers = field(default_factory=Markers)
    path: str | None = None
    open: str | None = None
    fields: list[str] | None = None
    types: list[str] | None = None
    broken: str | None = None
    # Columns the CSV reader types itself, and how often each failed.
    csv_types: dict[int, pa.DataType] | None = None
    csv_failures: dict[int, int] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.fields is not None


def _json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except RecursionError:
        # Nested too deep to parse, but it opens with `{`: an object, and
        # a record the decoder will skip and count.
        return line.startswith(b"{")
    except ValueError:
        return False


_NOT_BLANK: Final = re.compile(rb"[^ \t\n\r\x0b\x0c]")


# First bytes of pcap (both byte orders, micro- and nanosecond) and pcapng
# files; a gzip of one is unpacked before these are looked at.
_CAPTURE_MAGIC = {
    b"\xd4\xc3\xb2\xa1": "pcap",
    b"\xa1\xb2\xc3\xd4": "pcap",
    b"\x4d\x3c\xb2\xa1": "pcap",
    b"\xa1\xb2\x3c\x4d": "pcap",
    b"\x0a\x0d\x0d\x0a": "pcapng",
}


def _non_blank_lines(data: bytes, start: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each line of `data` from `start` that is not blank.

    A regular expression leaps over runs of blank lines, which a loop over
    the lines would visit one by one.
    """
    while (found := _NOT_BLANK.search(data, start)) is not None:
        newline = data.rfind(b"\n", start, found.start())
        line_start = start if newline < 0 else newline + 1
        end = data.find(b"\n", found.start())
        end = len(data) if end < 0 else end
        yield line_start, end
        start = end + 1


def _is_utf8(block: memoryview) -> bool:
    """Whether a block is valid UTF-8.

    pyarrow's CSV reader decodes a rejected row as UTF-8 before it calls the
    handler; on other bytes it fails the block and prints a traceback.
    """
    if not len(block) or np.frombuffer(block, dtype=np.uint8).max() < 0x80:
        return True
    try:
        codecs.utf_8_decode(block, "strict", True)
    except UnicodeDecodeError:
        return False

    return True


def _is_ascii(block: memoryview) -> bool:
    return not len(block) or bool(np.frombuffer(block, dtype=np.uint8).max() < 0x80)


# numpy's compare-and-count is several times faster than bytes.count; in
# windows that stay in the CPU cache, faster again.
_WINDOW: Final = 1 << 16


def _count_lines(data: bytes | memoryview) -> int:
    if len(data) < _WINDOW:
        return bytes(data).count(b"\n")
    view = np.frombuffer(data, dtype=np.uint8)

    return sum(
        int(np.count_nonzero(view[at : at + _WINDOW] == 0x0A))
        for at in range(0, len(view), _WINDOW)
    )


def _count_x(data: bytes | memoryview) -> int:
    """How many bytes are an `x` or `X`."""
    view = np.frombuffer(data, dtype=np.uint8)

    return sum(
        int(np.count_nonzero((view[at : at + _WINDOW] | 0x20) == 0x78))
        for at in range(0, len(view), _WINDOW)
    )


def _count_x_values(column: pa.Array) -> int:
    """`_count_x` over the value bytes of a binary column."""
    offsets_buffer, data = column.buffers()[1:3]
    if data is None or not len(column):
        return 0
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)
    start, end = offsets[column.offset], offsets[column.offset + len(column)]

    return _count_x(memoryview(data)[start:end])


# A split block: its columns, its rejected lines (line within the block
# from 1, fields found), and which columns the CSV reader typed.
_Split = tuple[list[pa.Array], list[tuple[int, int]], frozenset[int]]


def _records(split: _Split) -> int:
    """Lines a split accounts for: records plus rejected lines."""
    columns, rejected, _ = split

    return (len(columns[0]) if columns else 0) + len(rejected)


@dataclass(frozen=True)
class _BlockFacts:
    """What one look at a block's bytes told."""

    ascii: bool
    backslash: bool
    cr: bool


def _next_hash_line(chunk: bytes, start: int) -> int | None:
    """Start of the next line after `start` that begins with `#`, if any."""
    # `#` alone is found by memchr, many times faster than `\n#`; fall back
    # to the pair when the data lines themselves hold many `#`.
    for _ in range(8):
        found = chunk.find(b"#", start + 1)
        if found < 0:
            return None
        if chunk[found - 1] == 0x0A:
            return found
        start = found
    found = chunk.find(b"\n#", start)

    return None if found < 0 else found + 1


# Smallest piece of a block worth a thread of its own.
_MIN_PIECE: Final = 1 << 20
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """One shared pool per thread count, started on first use."""
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = ThreadPoolExecutor(threads, thread_name_prefix="bflow-read")
            _pools[threads] = pool

    return pool


def _pieces(block: memoryview, threads: int) -> list[memoryview]:
    """Cut a block into up to `threads` pieces of whole lines."""
    count = min(threads, len(block) // _MIN_PIECE)
    if count < 2:
        return [block]
    view = np.frombuffer(block, dtype=np.uint8)
    pieces: list[memoryview] = []
    start = 0
    for part in range(1, count):
        at = max(start, len(block) * part // count)
        end = _line_end(view, at)
        if end is None or end + 1 >= len(block):
            break
        pieces.append(block[start : end + 1])
        start = end + 1
    pieces.append(block[start:])

    return pieces


def _line_end(view: np.ndarray, at: int) -> int | None:
    """Offset of the first `\\n` at or after `at`, if any."""
    window = 1 << 16
    while at < len(view):
        ends = np.flatnonzero(view[at : at + window] == 0x0A)
        if ends.size:
            return at + int(ends[0])
        at += window
        window *= 2

    return None


@dataclass(frozen=True)
class _CsvOptions:
    names: list[str]
    column_types: dict[str, pa.DataType]
    delimiter: str
    unset: str


def _read_piece(
    piece: memoryview, options: _CsvOptions
) -> tuple[pa.Table, list[tuple[int, int]]]:
    """One piece through pyarrow's CSV reader (it lets go of the GIL)."""
    rejected: list[tuple[int, int]] = []

    def reject(row: Any) -> str:
        rejected.append((row.number, row.actual_columns))
        return "skip"

    table = pacsv.read_csv(
        pa.BufferReader(pa.py_buffer(piece)),
        read_options=pacsv.ReadOptions(
            column_names=options.names,
            use_threads=False,
            block_size=max(len(piece) + 1, 1 << 16),
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=options.delimiter,
            quote_char=False,
            escape_char=False,
            double_quote=False,
            ignore_empty_lines=True,
            invalid_row_handler=reject,
        ),
        convert_options=pacsv.ConvertOptions(
            column_types=options.column_types,
            null_values=[options.unset],
            true_values=["T"],
            false_values=["F"],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            check_utf8=False,
        ),
    )

    return table, rejected


def _decode_meta(value: bytes) -> str:
    return unescape(value).decode("utf-8", "backslashreplace")


class LogDecoder:
    """Incremental decoder for one file's byte stream.

    The format (TSV or JSON lines) is detected from the first non-blank
    line. Feed it chunks of any size; it returns the batches that are full.

    A JSON log with no known schema has no header to resume from: after a
    resume (`skip_until`) the field types of keys no known schema names are
    inferred again from the records that follow, and a key that only
    appeared before the resume point is not a column until it appears again.

    Attributes:
        source: the file name, for logs and `Batch.source`.
        offset: bytes of complete lines taken from the stream so far; lines
            held for the next batch are included (`Batch.end_offset` is the
            offset to checkpoint).
        closed: a `#close` line was seen and no header block started since.
        stats: counts of records, skipped lines and errors.
    """

    def __init__(
        self,
        source: str,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        log_path: str | None = None,
        skip_until: int = 0,
        after_close: bool = False,
        max_line: int = MAX_LINE,
        threads: int = 1,
    ) -> None:
        """Set up a decoder.

        Args:
            source: the file name, used in logs and batches.
            batch_size: most records in one batch.
            log_path: the log's path ("conn") when the file does not say
                (JSON without `_path`, TSV without `#path`).
            skip_until: stream offset to resume at; header lines before it
                are still read, data lines ending at or before it are not
                emitted again.
            after_close: keep data lines that follow `#close` without a new
                header, as records of the header before it (the live tail:
                a writer that kept its descriptor appends after rotation);
                by default they are skipped and counted.
            max_line: longest line held while waiting for its end; a longer
                one is skipped and counted, so memory stays bounded.
            threads: threads that split one TSV batch, each a piece of at
                least 1 MiB; 1 (the default) keeps the decoder on the
                calling thread, out of Zeek's way on a sensor.

        Raises:
            ValueError: batch_size or threads is not positive.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.threads = threads
        self.source = source
        self.batch_size = batch_size
        self.log_path = log_path
        self.skip_until = skip_until
        self.after_close = after_close
        self.offset = 0
        self.closed = False
        self.stats = ReadStats()
        self.format: str | None = None

        self.max_line = max_line
        self._tail = bytearray()
        self._discarding = False
        self._discarded = 0
        self._line_no = 0
        self._header = _Header()
        self._pending: list[bytes] = []
        self._pending_counts: list[int] = []
        self._pending_lines = 0
        self._pending_offset = 0
        self._pending_line_no = 1
        self._warned: set[str] = set()
        self._json_types: dict[str, str] = {}
        self._json_path: str | None = None
        self._json_path_known = False
        self._json_keys: dict[str, None] = {}

    # -- public API -------------------------------------------------------

    def feed(self, data: bytes) -> list[Batch]:
        """Take the next chunk of the stream; return the batches now full.

        A partial last line is kept until the rest of it arrives.

        Raises:
            LogFormatError: the stream is not a Zeek log (first line).
        """
        if len(data) <= self.max_line:
            return self._feed_piece(data)

        # In pieces no longer than a line may be, so that a long line is
        # seen while it is held, however the stream was cut.
        batches: list[Batch] = []
        for at in range(0, len(data), self.max_line):
            batches += self._feed_piece(data[at : at + self.max_line])

        return batches

    def _feed_piece(self, data: bytes) -> list[Batch]:
        if self._discarding:
            # Inside a line too long to hold: drop bytes up to its end.
            newline = data.find(b"\n")
            if newline < 0:
                self._discarded += len(data)
                return []
            self.offset += self._discarded + newline + 1
            self._line_no += 1
            self._discarding = False
            self._discarded = 0
            data = data[newline + 1 :]
        last = data.rfind(b"\n")
        if last < 0:
            self._tail += data
            if len(self._tail) > self.max_line:
                return self._start_discarding()
            return []
        if self.format is not None and len(self._tail) + data.find(b"\n") > (
            self.max_line
        ):
            # The held line ends here, longer than a line may be.
            return self._start_discarding() + self._feed_piece(data)
        if self._tail:
            chunk = b"".join((self._tail, memoryview(data)[: last + 1]))
            self._tail.clear()
        elif last + 1 == len(data) and isinstance(data, bytes):
            chunk = data
        else:
            chunk = data[: last + 1]
        rest = data[last + 1 :]
        if self.format is None:
            # Blank and comment lines are counted as they come, not held:
            # held, a long run of them was re-scanned with every chunk.
            start = self._detect(chunk)
            self._take_preamble(chunk if start is None else chunk[:start])
            if start is None:
                self._tail += rest
                return []
            chunk = chunk[start:]
        self._tail += rest

        return self._take_lines(chunk)

    def _start_discarding(self) -> list[Batch]:
        """Give up a line longer than `max_line`: skip it, count it."""
        batches = self._emit_pending(everything=True)
        self._skip(self._line_no + 1, f"line longer than {self.max_line} bytes")
        self._discarding = True
        self._discarded = len(self._tail)
        self._tail.clear()

        return batches

    def flush(self) -> list[Batch]:
        """Emit every complete record held so far, even if a batch is short."""
        return self._emit_pending(everything=True)

    def finish(self, *, error: str | None = None) -> list[Batch]:
        """The stream has ended: emit the rest, drop a partial last line.

        Args:
            error: why the stream ended early (a truncated gzip), if it did;
                counted as one error for the file, with the fragment.

        A partial last line is dropped, counted as an error and logged with
        file and offset.
        """
        batches = self._emit_pending(everything=True)
        if error is not None:
            self.stats.errors += 1
            log.warning(
                "file.truncated",
                file=self.source,
                offset=self.offset,
                reason=error,
                fragment_dropped=len(self._tail),
            )
        elif self._tail:
            self.stats.errors += 1
            log.warning(
                "line.partial_dropped",
                file=self.source,
                offset=self.offset,
                size=len(self._tail),
                line=self._line_no + 1,
            )
        self._tail.clear()
        if self.stats.skipped > SKIP_LOG_LIMIT:
            log.warning(
                "file.skipped_summary",
                file=self.source,
                skipped=self.stats.skipped,
                logged=SKIP_LOG_LIMIT,
            )

        return batches

    # -- lines ------------------------------------------------------------

    def _take_lines(self, chunk: bytes) -> list[Batch]:
        """Sort complete lines into header lines and runs of data lines."""
        base = self.offset
        first_line = self._line_no + 1
        lines = _count_lines(chunk)
        self.offset += len(chunk)
        self._line_no += lines

        if self.format == "json":
            return self._append_run(chunk, base, first_line, lines)

        batches: list[Batch] = []
        run_start = 0
        run_line = first_line
        at = 0 if chunk.startswith(b"#") else _next_hash_line(chunk, 0)
        while at is not None:
            end = chunk.index(b"\n", at)
            line = chunk[at:end]
            if self._is_header(line):
                if at > run_start:
                    run = chunk[run_start:at]
                    count = run.count(b"\n")
                    batches += self._append_run(run, base + run_start, run_line, count)
                    run_line += count
                batches += self._emit_pending(everything=True)
                self._header_line(line)
                run_start = end + 1
                run_line += 1
            at = _next_hash_line(chunk, end)
        if run_start == 0:
            return self._append_run(chunk, base, first_line, lines)
        if run_start < len(chunk):
            batches += self._append_run(
                chunk[run_start:],
                base + run_start,
                run_line,
                first_line + lines - run_line,
            )

        return batches

    def _take_preamble(self, lines: bytes) -> None:
        """Count blank and comment lines seen before the format is known."""
        base_line, base_offset = self._line_no, self.offset
        self._line_no += lines.count(b"\n")
        self.offset += len(lines)
        # Lines that end at or before the resume offset were counted before.
        first = max(0, self.skip_until - base_offset)
        kept = lines.count(b"\n", first)
        line_no, counted_to = base_line + 1, 0
        for line_start, _ in _non_blank_lines(lines, first):
            line_no += lines.count(b"\n", counted_to, line_start)
            counted_to = line_start
            kept -= 1
            self._skip(line_no, "comment line before the Zeek header")
        self.stats.blank += kept

    def _detect(self, chunk: bytes) -> int | None:
        """Set the format from the first line that tells; return its start.

        None when every line of `chunk` is blank or a comment.
        """
        for start, end in _non_blank_lines(chunk, 0):
            line = chunk[start:end]
            stripped = line.strip()
            if not stripped or (
                stripped.startswith(b"##") and not self._is_header(stripped)
            ):
                # Blank, or a comment such as btest's `### BTest baseline`.
                continue
            if self._is_header(stripped):
                self.format = "tsv"
            elif stripped.startswith(b"{") and _json_object(stripped):
                self.format = "json"
            elif stripped.startswith(b"ts\t") or stripped == b"ts":
                raise LogFormatError(
                    f"{self.source}: the first line is a bare column list "
                    f"({stripped[:60]!r}) without Zeek's '#' header, as "
                    "`zeek-cut -c` writes it; read the original log instead"
                )
            elif self.offset == 0 and chunk[:4] in _CAPTURE_MAGIC:
                raise LogFormatError(
                    f"{self.source} is a packet capture "
                    f"({_CAPTURE_MAGIC[chunk[:4]]}), not a Zeek log: run Zeek "
                    "on it first, or use --kind packet to train on its packets"
                )
            else:
                raise LogFormatError(
                    f"{self.source}: not a Zeek log: the first line "
                    f"({stripped[:60]!r}) is neither a Zeek header line "
                    "(#separator, #fields ...) nor a whole JSON object (Zeek "
                    "writes one per line); give a Zeek TSV or JSON log"
                )
            return start

        return None

    def _is_header(self, line: bytes) -> bool:
        key = line[1:].split(b" ", 1)[0].split(b"\t", 1)[0]
        if key in _HEADER_KEYS:
            return True
        # A custom separator: `#fields|ts|uid`.
        sep = self._header.separator
        return line[1:].split(sep, 1)[0] in _HEADER_KEYS

    def _header_line(self, line: bytes) -> None:
        line = line.removesuffix(b"\r")
        if line.startswith(b"#separator"):
            # A new header block: forget everything the last one said.
            value = line[len(b"#separator") :].lstrip(b" \t")
            separator = unescape(value)
            if not separator:
                self._header = _Header(broken="empty #separator")
            else:
                self._header = _Header(separator=separator)
            self.closed = False
            return

        header = self._header
        key, _, value = line[1:].partition(header.separator)
        if key not in _HEADER_KEYS:
            # btest baselines mask `#open` with a space: `#open XXXX-...`.
            key, _, value = line[1:].partition(b" ")
        if key == b"close":
            self.closed = True
        elif key == b"set_separator":
            header.markers = replace(header.markers, set_separator=unescape(value))
            if not header.markers.set_separator:
                header.broken = "empty #set_separator"
        elif key == b"empty_field":
            header.markers = replace(header.markers, empty=unescape(value))
        elif key == b"unset_field":
            header.markers = replace(header.markers, unset=unescape(value))
        elif key == b"path":
            header.path = _decode_meta(value)
        elif key == b"open":
            header.open = _decode_meta(value)
        elif key == b"fields":
            header.fields = [_decode_meta(v) for v in value.split(header.separator)]
            header.csv_types, header.csv_failures = None, {}
            self.closed = False
        elif key == b"types":
            header.types = [_decode_meta(v) for v in value.split(header.separator)]
            header.csv_types, header.csv_failures = None, {}

    # -- pending records --------------------------------------------------

    def _append_run(
        self, run: bytes, offset: int, line_no: int, lines: int
    ) -> list[Batch]:
        """Queue a run of `lines` data lines; return the batches it fills."""
        if self.format == "json" and not self._json_path_known:
            self._decide_json_path(run)
        if offset + len(run) <= self.skip_until:
            return []
        if offset < self.skip_until:
            # Resuming inside this run: drop the lines that end at or before
            # the resume offset; a line it falls inside is still emitted.
            cut = run.rfind(b"\n", 0, self.skip_until - offset) + 1
            dropped = run.count(b"\n", 0, cut)
            line_no += dropped
            lines -= dropped
            offset += cut
            run = run[cut:]
            if not run:
                return []

        if not self._pending:
            self._pending_offset = offset
            self._pending_line_no = line_no
        self._pending.append(run)
        self._pending_counts.append(lines)
        self._pending_lines += lines

        return self._emit_pending(everything=False)

    def _emit_pending(self, *, everything: bool) -> list[Batch]:
        if self._pending_lines < self.batch_size and not (
            everything and self._pending_lines
        ):
            return []

        # One copy of the held runs; then cut batches at line boundaries.
        held = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        cuts = self._cut_points()
        self._pending.clear()
        self._pending_counts.clear()
        if not cuts or cuts[-1] != len(held):
            cuts.append(len(held))

        batches: list[Batch] = []
        start = 0
        for cut in cuts:
            take = min(self._pending_lines, self.batch_size)
            if take < self.batch_size and not everything:
                # A short remainder waits for more lines (or a flush).
                self._pending.append(held[start:])
                self._pending_counts.append(self._pending_lines)
                break
            # A view, not a copy: the CSV reader reads it in place.
            block = memoryview(held)[start:cut]
            facts = _BlockFacts(
                ascii=_is_ascii(block),
                backslash=held.find(b"\\", start, cut) >= 0,
                cr=held.find(b"\r", start, cut) >= 0,
            )
            first_line = self._pending_line_no
            self._pending_lines -= take
            self._pending_line_no += take
            self._pending_offset += cut - start
            start = cut
            batch = self._decode_block(
                block, first_line, take, self._pending_offset, facts
            )
            if batch is not None:
                batches.append(batch)

        return batches

    def _cut_points(self) -> list[int]:
        """Offsets in the joined held runs just past each full batch.

        Only the runs a cut falls in are searched for line ends.
        """
        cuts: list[int] = []
        wanted = self.batch_size
        before_lines = before_bytes = 0
        for run, lines in zip(self._pending, self._pending_counts, strict=True):
            if before_lines + lines >= wanted:
                ends = np.flatnonzero(np.frombuffer(run, dtype=np.uint8) == 0x0A)
                while before_lines + lines >= wanted:
                    cuts.append(before_bytes + int(ends[wanted - before_lines - 1]) + 1)
                    wanted += self.batch_size
            before_lines += lines
            before_bytes += len(run)

        return cuts

    def _decode_block(
        self,
        block: memoryview,
        first_line: int,
        lines: int,
        end: int,
        facts: _BlockFacts,
    ) -> Batch | None:
        if self.format == "json":
            records, log_path = self._decode_json(bytes(block), first_line)
        else:
            records, log_path = self._decode_tsv(block, first_line, lines, facts)
        if records is None or records.num_rows == 0:
            return None
        self.stats.records += records.num_rows
        self.stats.batches += 1

        return Batch(records, log_path, self.source, end)

    def _skip(self, line_no: int, reason: str) -> None:
        self.stats.skipped += 1
        if self.stats.skipped <= SKIP_LOG_LIMIT:
            log.warning("record.skipped", file=self.source, line=line_no, reason=reason)

    def _warn_once(
        self, key: str, event: str, *, level: str = "warning", **details: Any
    ) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        getattr(log, level)(event, file=self.source, **details)

    # -- TSV --------------------------------------------------------------

    def _decode_tsv(
        self, block: memoryview, first_line: int, count: int, facts: _BlockFacts
    ) -> tuple[pa.RecordBatch | None, str | None]:
        header = self._header
        closed = self.closed and not self.after_close
        if header.broken is not None or not header.ready or closed:
            if header.broken is not None:
                reason = f"unusable header: {header.broken}"
            elif closed:
                reason = "data line after #close"
            else:
                reason = "data line before any #fields header"
            for index in range(count):
                self._skip(first_line + index, reason)
            return None, None

        assert header.fields is not None
        names = header.fields
        types = header.types
        if types is None:
            self._warn_once(
                "no-types", "header.no_types", fields=len(names), using="string"
            )
            types = ["string"] * len(names)
        if len(types) != len(names):
            header.broken = (
                f"#fields has {len(names)} names but #types has {len(types)}"
            )
            log.error("header.unusable", file=self.source, reason=header.broken)
            return self._decode_tsv(block, first_line, count, facts)

        columns, line_numbers, typed = self._split_tsv(
            block, first_line, count, types, facts
        )
        if not line_numbers.size:
            return None, None

        return self._build_tsv(names, types, columns, line_numbers, typed, facts)

    def _split_tsv(
        self,
        block: memoryview,
        first_line: int,
        lines_total: int,
        types: list[str],
        facts: _BlockFacts,
    ) -> tuple[list[pa.Array], np.ndarray, frozenset[int]]:
        """Split lines into columns; reject wrong field counts.

        Returns the columns, the line number of each record, and which
        columns the CSV reader has already typed (the rest are raw binary).
        """
        width = len(types)
        line_numbers = np.arange(first_line, first_line + lines_total)
        separator = self._header.separator

        # pyarrow's CSV reader also ends lines at a bare `\r`, so blocks
        # holding one (rare) take the Python path.
        unset = self._header.markers.unset.decode("utf-8", "replace")
        simple = (
            not facts.cr
            and unset.encode() == self._header.markers.unset
            and len(separator) == 1
            and separator[0] < 0x80
            and separator not in b"\n\r"
            and (facts.ascii or _is_utf8(block))
        )
        if not simple:
            columns, kept = self._split_tsv_python(block, line_numbers, width)
            return columns, kept, frozenset()

        split = None
        # This block's own copy: a column that fails here is binary here.
        csv_types = dict(self._csv_types(types))
        while csv_types:
            try:
                split = self._read_csv(block, types, csv_types)
            except pa.ArrowInvalid as exc:
                failed = self._typed_parse_failed(str(exc), csv_types)
                if failed is None:
                    break
                del csv_types[failed]
                continue
            # None: a value only the exact converters may judge (hex, a
            # time past year 9999): read the columns as binary after all.
            break
        if split is None:
            try:
                split = self._read_csv(block, types, {})
            except pa.ArrowInvalid:
                # A row pyarrow could not hand to `reject`: read the block
                # the exact, slower way rather than give it up.
                split = None
        if split is None or _records(split) != lines_total:
            # Blank lines were dropped, so records no longer map to line
            # numbers: read this (rare) block the exact, slower way.
            columns, kept = self._split_tsv_python(block, line_numbers, width)
            return columns, kept, frozenset()

        columns, rejected, typed = split
        keep = np.ones(lines_total, dtype=bool)
        for number, actual in rejected:
            keep[number - 1] = False
            self._skip(
                int(line_numbers[number - 1]), f"{actual} fields, expected {width}"
            )

        return columns, line_numbers[keep], typed

    def _csv_types(self, types: list[str]) -> dict[int, pa.DataType]:
        """Columns of this header block the CSV reader may type itself."""
        header = self._header
        if header.csv_types is None:
            names = header.fields or []
            seen: set[str] = set()
            header.csv_types = {}
            for index, (name, zeek_type) in enumerate(zip(names, types, strict=True)):
                target = csv_type(zeek_type)
                if name and name not in seen and target is not None:
                    header.csv_types[index] = target
                seen.add(name)

        return header.csv_types

    def _typed_parse_failed(
        self, message: str, csv_types: dict[int, pa.DataType]
    ) -> int | None:
        """The column whose value the CSV reader could not type, if known.

        That column is then read as binary in this block, and the exact
        converters judge its values (and skip a bad record, as always). A
        column that fails in a second block stays binary for the rest of
        the header block, so a log that writes a field in a form the CSV
        reader does not take (`443/tcp`) is not parsed twice each time.
        """
        match = re.match(r"In CSV column #(\d+):", message)
        if match is None or int(match.group(1)) not in csv_types:
            return None
        index = int(match.group(1))
        header = self._header
        header.csv_failures[index] = header.csv_failures.get(index, 0) + 1
        if header.csv_failures[index] == 2 and header.csv_types is not None:
            header.csv_types.pop(index, None)
            log.debug(
                "column.typed_parse_off",
                file=self.source,
                column=index,
                reason=message[:200],
            )

        return index

    def _read_csv(
        self, block: memoryview, types: list[str], csv_types: dict[int, pa.DataType]
    ) -> _Split | None:
        """Split a block with pyarrow's CSV reader, in pieces on threads.

        Columns in `csv_types` are typed by the reader, the rest are raw
        binary. Returns the columns, the rejected lines (line within the
        block from 1, fields found) and the typed columns; None when a
        typed value needs the exact path after all (a hex integer, a time
        past year 9999).

        Raises:
            pa.ArrowInvalid: a value of a typed column did not parse, or a
                line pyarrow could not hand to the reject handler.
        """
        pieces = _pieces(block, self.threads)
        column_types = {
            f"f{i}": csv_types.get(i, pa.binary()) for i in range(len(types))
        }
        options = _CsvOptions(
            names=list(column_types),
            column_types=column_types,
            delimiter=self._header.separator.decode("ascii"),
            unset=self._header.markers.unset.decode("utf-8", "replace"),
        )
        if len(pieces) == 1:
            results = [_read_piece(block, options)]
        else:
            results = list(
                _pool(self.threads).map(_read_piece, pieces, repeat(options))
            )

        # Line numbers of rejected lines count from the start of the block.
        rejected: list[tuple[int, int]] = []
        before = 0
        for piece, (_, piece_rejected) in zip(pieces, results, strict=True):
            rejected += [(before + number, fields) for number, fields in piece_rejected]
            if len(pieces) > 1:
                before += _count_lines(piece)
        tables = [table for table, _ in results]
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        columns = [
            column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
            for column in table.columns
        ]
        typed = frozenset(csv_types)
        if not typed:
            return columns, rejected, typed

        # pyarrow reads `0x10` as 16 in integer fields, where Zeek writes
        # decimal only: every `x` of the block must be in an untyped column.
        # Rejected lines are in no column, so they send it the exact way.
        if any(types[i] in INTEGER_TYPES for i in typed) and (
            rejected
            or _count_x(block)
            != sum(_count_x_values(c) for i, c in enumerate(columns) if i not in typed)
        ):
            return None
        for index in typed:
            columns[index] = from_csv(columns[index], types[index])
            if types[index] == "time" and not times_in_range(columns[index]):
                return None

        return columns, rejected, typed

    def _split_tsv_python(
        self, block: memoryview, line_numbers: np.ndarray, width: int
    ) -> tuple[list[pa.Array], np.ndarray]:
        separator = self._header.separator
        unset = self._header.markers.unset
        rows: list[list[bytes | None]] = []
        kept: list[int] = []
        for index, line in enumerate(bytes(block).split(b"\n")[:-1]):
            line = line.removesuffix(b"\r")
            if not line:
                self.stats.blank += 1
                continue
            fields = line.split(separator)
            if len(fields) != width:
                self._skip(
                    int(line_numbers[index]),
                    f"{len(fields)} fields, expected {width}",
                )
                continue
            rows.append([None if f == unset else f for f in fields])
            kept.append(index)
        columns = [
            pa.array([row[i] for row in rows], type=pa.binary()) for i in range(width)
        ]

        return columns, line_numbers[np.array(kept, dtype=np.int64)]

    def _build_tsv(
        self,
        names: list[str],
        types: list[str],
        columns: list[pa.Array],
        line_numbers: np.ndarray,
        typed: frozenset[int],
        facts: _BlockFacts,
    ) -> tuple[pa.RecordBatch | None, str | None]:
        header = self._header
        arrays: dict[str, pa.Array] = {}
        zeek_types: dict[str, str] = {}
        bad = np.zeros(len(line_numbers), dtype=bool)
        reasons: dict[int, str] = {}
        hints = ColumnHints(ascii=facts.ascii, backslash=facts.backslash)
        for index, (name, zeek_type, raw) in enumerate(
            zip(names, types, columns, strict=True)
        ):
            if not name:
                self._warn_once(
                    "empty-name", "header.empty_field_name", action="ignored"
                )
                continue
            if name in arrays:
                self._warn_once(f"dup-{name}", "header.duplicate_field", field=name)
                continue
            if index in typed:
                arrays[name], invalid = raw, None
            else:
                arrays[name], invalid = convert_column(
                    raw, zeek_type, header.markers, hints=hints
                )
            if invalid is not None:
                for record in np.flatnonzero(invalid & ~bad).tolist():
                    reasons[record] = f"invalid {zeek_type} in {name}"
                bad |= invalid
            zeek_types[name] = zeek_type

        if not arrays:
            for line_no in line_numbers.tolist():
                self._skip(line_no, "no field of the header has a name")
            return None, None

        log_path = header.path or self.log_path
        # Decoded escapes may be any byte; without them ASCII stays ASCII.
        records = self._assemble(
            arrays,
            zeek_types,
            log_path,
            header.open,
            ascii=facts.ascii and not facts.backslash,
        )
        if bad.any():
            for index in sorted(reasons):
                self._skip(int(line_numbers[index]), reasons[index])
            records = records.filter(pa.array(~bad))

        return records, log_path

    # -- schema -----------------------------------------------------------

    def _assemble(
        self,
        arrays: dict[str, pa.Array],
        zeek_types: dict[str, str],
        log_path: str | None,
        opened: str | None,
        *,
        ascii: bool = False,
    ) -> pa.RecordBatch:
        """Order and cast the columns; apply a known log's schema.

        `ascii`: every value's bytes are known to be below 0x80.
        """
        known = KNOWN_SCHEMAS.get(log_path or "")
        fields: list[pa.Field] = []
        columns: list[pa.Array] = []
        length = len(next(iter(arrays.values()))) if arrays else 0
        if known is not None:
            missing = [f.name for f in known if f.name not in arrays]
            name_of_log = log_path or ""
            required = [f for f in REQUIRED_FIELDS[name_of_log] if f in missing]
            if required and self.format == "tsv":
                raise LogFormatError(self._required_message(name_of_log, required))
            extra = [name for name in arrays if name not in known.names]
            if extra:
                self._warn_once(
                    "extra-" + ",".join(extra),
                    "file.extra_fields",
                    level="info",
                    log_path=log_path,
                    fields=extra,
                    action="kept after the known fields",
                )
            if set(missing) - _NEWER_FIELDS:
                self._warn_once(
                    "missing-" + ",".join(missing),
                    "file.missing_fields",
                    log_path=log_path,
                    fields=missing,
                    action="all-null columns",
                )
            for known_field in known:
                values = arrays.get(known_field.name)
                if values is None:
                    columns.append(pa.nulls(length, known_field.type))
                    fields.append(known_field)
                    continue
                columns.append(self._conform(known_field, values, ascii=ascii))
                fields.append(
                    known_field.with_metadata(
                        {"zeek_type": zeek_types[known_field.name]}
                    )
                )
        for name, values in arrays.items():
            if known is not None and name in known.names:
                continue
            columns.append(values)
            fields.append(
                pa.field(name, values.type, metadata={"zeek_type": zeek_types[name]})
            )

        # The fingerprint is of the fields the file declared, so two header
        # blocks conformed to one known schema still tell apart.
        fingerprint = hashlib.sha256(
            json.dumps(list(zeek_types.items())).encode()
        ).hexdigest()[:16]
        metadata = {
            "zeek.path": log_path or "",
            "zeek.open": opened or "",
            "zeek.format": self.format or "",
            "zeek.fingerprint": fingerprint,
        }
        schema = pa.schema(fields, metadata=metadata)

        return pa.RecordBatch.from_arrays(columns, schema=schema)

    def _required_message(self, log_path: str, required: list[str]) -> str:
        header = self._header.fields or []
        hint = ""
        if "id_orig_h" in header:
            hint = (
                " (its fields are named like id_orig_h: the log was written "
                'with Log::default_scope_sep = "_")'
            )
        elif "src" in header or "dst" in header:
            hint = " (its fields look renamed by a Log::Filter field_name_map)"

        return (
            f"{self.source}: this {log_path} log lacks the fields "
            f"{', '.join(required)}, which a {log_path} log must have{hint}; "
            "log them under their standard Zeek names"
        )

    def _conform(
        self, known_field: pa.Field, values: pa.Array, *, ascii: bool
    ) -> pa.Array:
        try:
            return conform(values, known_field.type, ascii=ascii)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise LogFormatError(
                f"{self.source}: field {known_field.name!r} holds "
                f"{values.type}, which cannot be read as the "
                f"{known_field.type} a {self.log_path or 'known'} log needs "
                f"({exc}); check the log's #types line"
            ) from exc

    # -- JSON -------------------------------------------------------------

    def _decode_json(
        self, block: bytes, first_line: int
    ) -> tuple[pa.RecordBatch | None, str | None]:
        records: list[dict[str, Any]] = []
        line_numbers: list[int] = []
        for index, line in enumerate(block.split(b"\n")[:-1]):
            line = line.removesuffix(b"\r")
            if not line.strip():
                self.stats.blank += 1
                continue
            try:
                record = _json_loads(line)
            except (ValueError, RecursionError) as exc:
                self._skip(first_line + index, f"not JSON: {exc}")
                continue
            if not isinstance(record, dict):
                self._skip(first_line + index, "JSON value is not an object")
                continue
            try:
                record = _flatten(record)
            except RecursionError:
                self._skip(first_line + index, "JSON objects nested too deep")
                continue
            if not record:
                # Alone in a batch it would make no record and no count.
                self._skip(first_line + index, "JSON object has no fields")
                continue
            records.append(record)
            line_numbers.append(first_line + index)
        if not records:
            return None, None

        log_path = self._json_path
        known = KNOWN_SCHEMAS.get(log_path or "")

        # Every key seen so far in the file, in first-seen order, so batches
        # of one file keep their columns even where a batch lacks a key.
        keys = self._json_keys
        for record in records:
            keys.update(dict.fromkeys(record))
        arrays: dict[str, pa.Array] = {}
        zeek_types: dict[str, str] = {}
        bad = np.zeros(len(records), dtype=bool)
        reasons: dict[int, str] = {}
        for key in keys:
            raw = [record.get(key) for record in records]
            if known is not None and key in known.names:
                zeek_type = known.field(key).metadata[b"zeek_type"].decode()
            else:
                zeek_type = self._json_type(key, raw)
            values, invalid = _json_column(raw, zeek_type)
            if invalid and _guessed(key, known):
                # A guess is no reason to lose a record (its other fields
                # may be a conn record's): this value alone is dropped.
                self._null_values(key, zeek_type, [line_numbers[i] for i in invalid])
                invalid = []
            for index in invalid:
                if not bad[index]:
                    reasons[index] = f"invalid {zeek_type} in {key}"
                bad[index] = True
            arrays[key] = values
            zeek_types[key] = zeek_type

        batch = self._assemble(arrays, zeek_types, log_path, None)
        if bad.any():
            for index in sorted(reasons):
                self._skip(line_numbers[index], reasons[index])
            batch = batch.filter(pa.array(~bad))

        return batch, log_path

    def _null_values(self, key: str, zeek_type: str, lines: list[int]) -> None:
        self.stats.nulled += len(lines)
        self._warn_once(
            f"nulled-{key}",
            "field.value_nulled",
            field=key,
            guessed_type=zeek_type,
            line=lines[0],
            action="value set unset, record kept; later ones counted in nulled",
        )

    def _decide_json_path(self, run: bytes) -> None:
        """Take the log path from the file's first record, once per file.

        Deciding it from the first record (not per batch) keeps where the
        batches happen to start, or where a resume starts, from changing
        the schema. Lines that are no JSON object give no record, so they
        cannot decide it either.
        """
        for line in run.split(b"\n"):
            try:
                record = json.loads(line) if line.strip() else None
            except (ValueError, RecursionError):
                continue
            if not isinstance(record, dict):
                continue
            path = record.get("_path")
            self._json_path = self.log_path or (path if isinstance(path, str) else None)
            self._json_path_known = True
            return

    def _json_type(self, key: str, values: list[Any]) -> str:
        """Zeek field type for a key no known schema names; fixed per file."""
        known = self._json_types.get(key)
        if known is not None:
            return known
        present = [v for v in values if v is not None]
        if not present:
            return "string"
        zeek_type = _infer_zeek_type(key, present)
        self._json_types[key] = zeek_type

        return zeek_type


def _flatten(record: dict[str, Any]) -> dict[str, Any]:
    """Nested objects as Zeek's dotted names: `{"id": {"orig_h": ..}}`.

    Zeek writes `id.orig_h` itself; log shippers often nest it. Where a
    file has both forms of one name, the first one in the record is kept.
    """
    if not any(isinstance(value, dict) for value in record.values()):
        return record
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            for inner_key, inner in _flatten(value).items():
                flat.setdefault(f"{key}.{inner_key}", inner)
        else:
            flat.setdefault(key, value)

    return flat


def _guessed(key: str, known: pa.Schema | None) -> bool:
    """Whether a JSON field's type is a guess from its values (or its name)."""
    if known is not None and key in known.names:
        return False

    return key not in _COMMON_FIELDS


# Field types of the conn_id fields and a few others every log shares,
# for JSON logs no known schema covers.
_COMMON_FIELDS: Final = {
    "ts": "time",
    "uid": "string",
    "id.orig_h": "addr",
    "id.orig_p": "port",
    "id.resp_h": "addr",
    "id.resp_p": "port",
    "proto": "enum",
}


# What Zeek's JSON writer prints for times with `JSON::TS_ISO8601`.
_ISO_TIME: Final = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"
)


def _infer_zeek_type(key: str, present: list[Any]) -> str:
    common = _COMMON_FIELDS.get(key)
    if common is not None:
        return common
    if key.endswith("_ts"):
        return "time"
    if all(isinstance(v, list) for v in present):
        elements = [e for v in present for e in v if e is not None]
        if any(isinstance(e, list | dict) for e in elements):
            # Zeek logs no container of containers: keep each one's JSON text.
            return "vector[string]"
        inner = _infer_zeek_type("", elements) if elements else "string"
        return f"vector[{inner}]"
    if all(isinstance(v, str) and _ISO_TIME.match(v) for v in present):
        return "time"
    if all(isinstance(v, bool) for v in present):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "count" if all(v >= 0 for v in present) else "int"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "double"

    return "string"


class _JsonFloat(float):
    """A JSON number with a fraction or exponent that keeps its text.

    Times are read from the text, exactly to the microsecond: through a
    float, `1655071198.4444589` could come out one microsecond off.
    """

    __slots__ = ("text",)
    text: str


def _json_float(text: str) -> _JsonFloat:
    number = _JsonFloat(text)
    number.text = text

    return number


def _json_loads(line: bytes) -> Any:
    return json.loads(line, parse_float=_json_float)


def _json_micros(value: Any) -> int:
    """A JSON time or interval (epoch seconds or ISO 8601) in microseconds.

    Digits past the sixth decimal are cut, as in TSV logs.
    """
    if isinstance(value, bool):
        raise ValueError("bool is not a time")
    if isinstance(value, int):
        return value * 1_000_000
    if isinstance(value, _JsonFloat):
        return text_micros(value.text)
    if isinstance(value, float):
        return round(value * 1_000_000)
    if isinstance(value, str):
        try:
            return text_micros(value.strip())
        except ValueError:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                raise ValueError(f"time {value!r} has no time zone") from None
            delta = moment - datetime.fromisoformat("1970-01-01T00:00:00+00:00")
            return (
                delta.days * 86_400_000_000
                + delta.seconds * 1_000_000
                + delta.microseconds
            )
    raise ValueError(f"{value!r} is not a time")


def _json_scalar(value: Any, zeek_type: str) -> Any:
    """One JSON value as the Python value of its Arrow type."""
    if zeek_type in ("time", "interval"):
        micros = _json_micros(value)
        low, high = (
            (TIME_MIN_US, TIME_MAX_US) if zeek_type == "time" else (-(2**63), 2**63 - 1)
        )
        if not low <= micros <= high:
            raise ValueError(f"{zeek_type} {value!r} is out of range")
        return micros
    if zeek_type in ("count", "counter", "int", "port"):
        if isinstance(value, str) and zeek_type == "port":
            value = int(value.split("/", 1)[0])
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not an integer")
        low, high = {
            "int": (-(2**63), 2**63 - 1),
            "port": (0, 65535),
        }.get(zeek_type, (0, 2**64 - 1))
        if not low <= value <= high:
            raise ValueError(f"{value} out of range")
        return value
    if zeek_type == "double":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{value!r} is not a number")
        return float(value)
    if zeek_type == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not a bool")
        return value
    if zeek_type == "addr":
        return normalise_addr(str(value))
    if zeek_type == "subnet":
        return normalise_subnet(str(value))
    if isinstance(value, dict | list):
        text = json.dumps(value, separators=(",", ":"))
    else:
        text = value if isinstance(value, str) else json.dumps(value)
    raw = unescape_hex_only(text.encode("utf-8", "surrogatepass"))
    if zeek_type == "string":
        return raw

    return raw.decode("utf-8", "backslashreplace")


def _json_column(values: list[Any], zeek_type: str) -> tuple[pa.Array, list[int]]:
    """A JSON column as its Arrow type, plus indexes of invalid records."""
    target = arrow_type(zeek_type)
    kind, inner = split_container(zeek_type)
    out: list[Any] = []
    invalid: list[int] = []
    for index, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        try:
            if kind is None:
                out.append(_json_scalar(value, zeek_type))
            elif isinstance(value, list):
                out.append(
                    [None if v is None else _json_scalar(v, inner) for v in value]
                )
            else:
                raise ValueError(f"{value!r} is not a list")
        except (ValueError, TypeError, OverflowError):
            out.append(None)
            invalid.append(index)
    if kind is None and zeek_type in ("time", "interval"):
        return pa.array(out, type=pa.int64()).cast(target), invalid
    if kind is not None and inner in ("time", "interval"):
        micros = pa.array(out, type=pa.list_(pa.int64()))
        return micros.cast(target), invalid

    return pa.array(out, type=target), invalid


# -- files ----------------------------------------------------------------


class Gunzip:
    """Incremental decompression of a gzip stream, member after member.

    Concatenated members (gzip allows them; an appending compressor makes
    them) read as one stream. At damaged data the output still holds all
    that came before the damage, `error` is set, and whatever follows is
    ignored, so whole lines before a bad spot or a bad trailer are never
    lost.

    `pieces` hands the output over in pieces of at most `limit` bytes, so
    memory is set by the limit, not by how far the data expands (a gzip
    bomb: a few MiB that inflate to many GiB).

    Attributes:
        error: why the stream broke, None while it is fine.
        in_member: a member has started and not ended yet; if the stream
            ends now, it was cut short.
        limit: most bytes in one piece of output.
    """

    def __init__(self, limit: int = READ_CHUNK) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self._inflate = zlib.decompressobj(wbits=31)
        self.error: str | None = None
        self.in_member = False
        self.limit = limit

    def feed(self, data: bytes) -> bytes:
        """Decompress the next compressed bytes; b"" once broken.

        All the output at once: memory grows with the expansion of `data`.
        """
        return b"".join(self.pieces(data))

    def pieces(self, data: bytes) -> Iterator[bytes]:
        """Decompress the next compressed bytes, `limit` bytes at a time.

        Take each piece before asking for the next: the input not yet
        decompressed waits inside.
        """
        while self.error is None:
            if not data:
                # zlib may hold output for input it has already taken.
                data = b""
                if self._inflate.eof or not self.in_member:
                    return
            before = self._inflate.copy()
            try:
                out = self._inflate.decompress(data, self.limit)
            except zlib.error as exc:
                yield from _inflate_until_damage(before, data, self.limit)
                self.error = f"corrupt gzip data: {exc}"
                self.in_member = False
                return
            self.in_member = not self._inflate.eof
            if out:
                yield out
            if self._inflate.eof:
                data = self._inflate.unused_data
                self._inflate = zlib.decompressobj(wbits=31)
            elif self._inflate.unconsumed_tail:
                data = self._inflate.unconsumed_tail
            elif len(out) < self.limit:
                # All input taken and no output held back: wait for more.
                return
            else:
                data = b""


def _inflate_until_damage(state: Any, data: bytes, limit: int) -> Iterator[bytes]:
    """What `state` decompresses from the longest prefix of `data` it takes.

    zlib gives nothing back from a call that fails, so the damaged spot is
    found by halving, each try decompressing in pieces of `limit` bytes
    that are thrown away; then the good prefix is decompressed again and
    its output handed over, `limit` bytes at a time.
    """
    good, bad = 0, len(data)
    while bad - good > 1:
        middle = (good + bad) // 2
        if _inflates(state.copy(), data[:middle], limit):
            good = middle
        else:
            bad = middle
    state = state.copy()
    pending = data[:good]
    while pending:
        out = state.decompress(pending, limit)
        if out:
            yield out
        pending = state.unconsumed_tail


def _inflates(state: Any, data: bytes, limit: int) -> bool:
    """Whether `state` takes `data` without a zlib error."""
    try:
        while data:
            state.decompress(data, limit)
            data = state.unconsumed_tail
    except zlib.error:
        return False

    return True


class _GzipStream(io.RawIOBase):
    """A gzip file as a byte stream that ends quietly where it breaks.

    A gzip cut short (Zeek killed mid-write, compression in flight) or
    damaged yields everything decompressed before that; `error` then says
    what was wrong.
    """

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._gunzip = Gunzip()
        self._pieces: Iterator[bytes] = iter(())
        self._ready = b""
        self._done = False
        self.error: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._ready and not self._done:
            self._refill()
        size = min(len(buffer), len(self._ready))
        buffer[:size] = self._ready[:size]
        self._ready = self._ready[size:]

        return size

    def _refill(self) -> None:
        # One piece of output at a time, so a bomb never lies in memory.
        self._ready = next(self._pieces, b"")
        if self._ready:
            return
        if self._gunzip.error is not None:
            self._done = True
            self.error = self._gunzip.error
            return
        compressed = self._raw.read(READ_CHUNK)
        if not compressed:
            self._done = True
            if self._gunzip.in_member:
                self.error = "gzip stream ends early (no trailer)"
            return
        self._pieces = self._gunzip.pieces(compressed)

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_log_bytes(path: str | PathLike[str]) -> BinaryIO:
    """Open a log for reading bytes, decompressing gzip found by content.

    gzip is recognised by its magic bytes `1f 8b`, whatever the name. A
    truncated or corrupt gzip does not raise: reading stops where the data
    breaks and the stream's `error` attribute says why.

    Raises:
        OSError: the file cannot be opened.
    """
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return io.BufferedReader(_GzipStream(raw), READ_CHUNK)
    raw.seek(0)

    return raw


def read_log(
    path: str | PathLike[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    log_path: str | None = None,
    stats: ReadStats | None = None,
    threads: int = 1,
) -> Iterator[Batch]:
    """Read a whole finished log file, batch by batch.

    Args:
        path: the file, plain or gzip.
        batch_size: most records in one batch.
        log_path: the log's path for files that do not name it.
        stats: filled in with the file's counts as reading goes on.
        threads: threads that split each batch (see `LogDecoder`).

    Raises:
        LogFormatError: the file is not a Zeek log.
        OSError: the file cannot be read.
    """
    source = str(path)
    decoder = LogDecoder(
        source, batch_size=batch_size, log_path=log_path, threads=threads
    )
    if stats is not None:
        decoder.stats = stats
    with open_log_bytes(path) as stream:
        while chunk := stream.read(READ_CHUNK):
            yield from decoder.feed(chunk)
        error = _stream_error(stream)
    yield from decoder.finish(error=error)
    log.debug("file.read", file=source, **decoder.stats.as_dict())


def _stream_error(stream: IO[bytes]) -> str | None:
    raw = getattr(stream, "raw", None)
    error = getattr(raw, "error", None)

    return error if isinstance(error, str) else None
