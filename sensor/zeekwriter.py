"""Zeek ASCII (TSV) logs written from Python, byte-compatible with Zeek's reader.

A `LogFormat` is a log's path name and its columns (name, Zeek field type,
optional or not). It turns a mapping of values into one complete line, and
decodes a line back the way Zeek's ASCII Input reader would, so tests and the
notice writer can check what Zeek will see.

Value rules (what Zeek's `Input::READER_ASCII` needs to get back exactly what
was meant):

- text (`string`, set and vector elements): UTF-8 bytes, every byte outside
  0x20-0x7E and `\\` written as `\\xNN`; inside sets and vectors `,` too. A
  value equal to `-` or `(empty)` is escaped so it cannot read as unset or
  empty. Output is pure ASCII whatever the locale.
- unset (None) is `-`, allowed only in optional columns; an empty set or
  vector is `(empty)`; empty set elements are dropped with a warning.
- `time` is epoch seconds with exactly 6 decimals from integer microseconds;
  `interval` likewise.
- `addr` is a bare address; brackets and IPv6 zones are stripped (a warning
  once per process), host names and `addr:port` forms are refused.
- `port` is `N/tcp|udp|icmp|unknown`, N in 0-65535.
- `double` is a finite positional decimal; NaN, infinities and non-numbers
  are unset in an optional column and refused in a required one.
- A line never ends in an empty field (Zeek's reader loses it and drops the
  line) and never starts with `#`; a column with `max_bytes` is cut to that
  many escaped bytes on a character boundary, marked with `...`.

Bad values raise `ValueRejected` naming the column and the value; the caller
decides whether to skip and count the record or stop.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Final

import structlog

from sensor.contract import Field
from sensor.errors import BFlowError
from sensor.zeektypes import unescape_hex_only

log = structlog.get_logger(__name__)

SEPARATOR: Final = b"\t"
SET_SEPARATOR: Final = b","
EMPTY_FIELD: Final = b"(empty)"
UNSET_FIELD: Final = b"-"
TRUNCATION_MARK: Final = b"..."

# Years 1970-9999 in microseconds: anything larger is almost surely
# nanoseconds or milliseconds handed over by mistake.
_MAX_EPOCH_US: Final = 253_402_300_800 * 1_000_000
_PROTOS: Final = frozenset({"tcp", "udp", "icmp", "unknown"})
_ENUM_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)*")
_TEXT_ESCAPE: Final = re.compile(rb"[^\x20-\x5b\x5d-\x7e]")
_ELEMENT_ESCAPE: Final = re.compile(rb"[^\x20-\x2b\x2d-\x5b\x5d-\x7e]")
_SCALAR_TYPES: Final = frozenset(
    {
        "addr",
        "bool",
        "count",
        "double",
        "enum",
        "int",
        "interval",
        "port",
        "string",
        "subnet",
        "time",
    }
)
_warned: set[str] = set()


class ValueRejected(BFlowError):
    """A value cannot be written into its column without changing its meaning."""


@dataclass(frozen=True)
class Column:
    """One column of a log being written.

    Args:
        name: the field name, e.g. `id.orig_h`.
        zeek_type: the Zeek field type, e.g. `addr` or `set[string]`.
        optional: whether the field may be unset (`&optional` in Zeek).
        max_bytes: cut longer escaped text to this many bytes.
    """

    name: str
    zeek_type: str
    optional: bool = False
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        inner = _element_type(self.zeek_type)
        if (inner or self.zeek_type) not in _SCALAR_TYPES:
            raise ValueRejected(
                f"column {self.name!r} has field type {self.zeek_type!r}, which "
                f"this writer cannot write; use one of {sorted(_SCALAR_TYPES)} "
                "or set[...] / vector[...] of them"
            )


class LogFormat:
    """The header and the record lines of one Zeek ASCII log.

    Args:
        path: the log's `#path`, e.g. `bflow_notice`.
        columns: the columns in file order.
        max_line: refuse records whose line (with `\\n`) is longer; None for
            no limit.
        port_proto: write ports as `N/proto` (what the Input reader needs to
            know the protocol); False writes the bare number, as Zeek's own
            log writer does (conn.log carries the protocol in `proto`).
    """

    def __init__(
        self,
        path: str,
        columns: Sequence[Column],
        *,
        max_line: int | None = None,
        port_proto: bool = True,
    ) -> None:
        names = [c.name for c in columns]
        if not columns or len(set(names)) != len(names):
            raise ValueRejected(
                f"log {path!r} needs at least one column and unique names, got {names}"
            )
        self.path = path
        self.columns = tuple(columns)
        self.max_line = max_line
        self.port_proto = port_proto
        self._by_name = {c.name: c for c in columns}

    @classmethod
    def from_fields(
        cls,
        path: str,
        fields: Iterable[Field],
        *,
        optional: Iterable[str] = (),
        max_bytes: Mapping[str, int] | None = None,
        max_line: int | None = None,
        port_proto: bool = True,
    ) -> LogFormat:
        """Build a format from `sensor.contract` fields."""
        optional = set(optional)
        caps = dict(max_bytes or {})
        columns = [
            Column(f.name, f.zeek_type, f.name in optional, caps.get(f.name))
            for f in fields
        ]

        return cls(path, columns, max_line=max_line, port_proto=port_proto)

    def fields_line(self) -> bytes:
        """The `#fields` header line, without its newline."""
        return b"#fields\t" + "\t".join(c.name for c in self.columns).encode()

    def types_line(self) -> bytes:
        """The `#types` header line, without its newline."""
        return b"#types\t" + "\t".join(c.zeek_type for c in self.columns).encode()

    def header(self, open_us: int | None = None) -> bytes:
        """The header block Zeek writes at the top of a log.

        Args:
            open_us: the `#open` time in epoch microseconds; now if None.
        """
        lines = [
            b"#separator \\x09",
            b"#set_separator\t,",
            b"#empty_field\t(empty)",
            b"#unset_field\t-",
            b"#path\t" + _escape(self.path.encode(), _TEXT_ESCAPE),
            b"#open\t" + _stamp(open_us),
            self.fields_line(),
            self.types_line(),
        ]

        return b"\n".join(lines) + b"\n"

    def close_line(self, close_us: int | None = None) -> bytes:
        """The `#close` footer Zeek writes when it closes a log."""
        return b"#close\t" + _stamp(close_us) + b"\n"

    def line(self, values: Mapping[str, object]) -> bytes:
        """One complete record line, ending in `\\n`.

        Args:
            values: column name to value; missing names are unset.

        Raises:
            ValueRejected: a value does not fit its column, or the line would
                break Zeek's reader (empty last field, over `max_line`).
        """
        unknown = set(values) - set(self._by_name)
        if unknown:
            raise ValueRejected(
                f"values for unknown columns {sorted(unknown)} in log "
                f"{self.path!r}; its columns are {list(self._by_name)}"
            )
        parts = [format_value(c, values.get(c.name)) for c in self.columns]
        if not self.port_proto:
            parts = [
                p.split(b"/", 1)[0] if c.zeek_type == "port" else p
                for c, p in zip(self.columns, parts, strict=True)
            ]
        if parts[-1] == b"":
            last = self.columns[-1]
            raise ValueRejected(
                f"column {last.name!r} is last in log {self.path!r} and its value "
                "is empty text; Zeek's reader drops such a line. Put a column "
                "that is never empty last"
            )
        text = SEPARATOR.join(parts)
        if text.startswith(b"#"):
            text = b"\\x23" + text[1:]
        text += b"\n"
        if self.max_line is not None and len(text) > self.max_line:
            raise ValueRejected(
                f"a record of log {self.path!r} is {len(text)} bytes, over the "
                f"limit of {self.max_line}; cap the long text columns "
                "(Column.max_bytes)"
            )

        return text

    def decode(
        self, line: bytes, names: Sequence[str] | None = None
    ) -> dict[str, object]:
        """Read one line back with the rules of Zeek's ASCII Input reader.

        Args:
            line: one line, with or without its `\\n`.
            names: the file's `#fields` names (defaults to this format's).

        Returns:
            Column name to value: None for unset, int microseconds for time
            and interval, `(number, proto)` for port, lists for sets.

        Raises:
            ValueRejected: the reader would drop this line.
        """
        names = list(names) if names is not None else [c.name for c in self.columns]
        text = line[:-1] if line.endswith(b"\n") else line
        parts = text.split(SEPARATOR)
        # Zeek's splitter does not see a field after a trailing separator.
        if text.endswith(SEPARATOR):
            parts.pop()
        if len(parts) < len(names):
            raise ValueRejected(
                f"not enough fields in line {text[:80]!r}: {len(parts)} of {len(names)}"
            )
        out: dict[str, object] = {}
        for name, raw in zip(names, parts, strict=False):
            column = self._by_name.get(name)
            if column is None:
                continue
            try:
                out[name] = _decode_value(column, raw)
            except (ValueError, ArithmeticError):
                raise ValueRejected(
                    f"field {name!r} of type {column.zeek_type} cannot be read "
                    f"from {raw[:80]!r}"
                ) from None
        missing = [c.name for c in self.columns if c.name not in out]
        if missing:
            raise ValueRejected(f"fields {missing} are not in the file's #fields")

        return out


def write_log(
    path: str | os.PathLike[str],
    fmt: LogFormat,
    records: Iterable[Mapping[str, object]],
    *,
    open_us: int | None = None,
    close: bool = True,
) -> int:
    """Write a whole log file: header, one line per record, `#close`.

    The file appears under its name only when complete (written beside it,
    then renamed), so a reader never sees half a log.

    Returns:
        The number of records written.

    Raises:
        ValueRejected: a record does not fit the format (nothing is left at
            `path`).
    """
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    count = 0
    try:
        with open(tmp, "wb") as out:
            out.write(fmt.header(open_us))
            for record in records:
                out.write(fmt.line(record))
                count += 1
            if close:
                out.write(fmt.close_line())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)

    return count


def format_value(column: Column, value: object) -> bytes:
    """The field text for one value of `column`, escaped for Zeek's reader."""
    if value is None:
        if column.optional:
            return UNSET_FIELD
        raise ValueRejected(
            f"column {column.name!r} is required (not &optional) but its value "
            "is unset; give a value or make the column optional"
        )
    inner = _element_type(column.zeek_type)
    if inner is not None:
        return _format_container(column, inner, value)
    if column.zeek_type == "double":
        number = double_value(column, value)
        if number is None:
            return UNSET_FIELD
        return _positional(number)
    text = _format_scalar(column, column.zeek_type, value, in_set=False)
    if column.max_bytes is not None and len(text) > column.max_bytes:
        text = _truncate(column, value)

    return text


def epoch_us(value: object) -> int:
    """A time value as integer epoch microseconds.

    Accepts an int (already microseconds), a Decimal or decimal text of
    epoch seconds, ISO 8601 text with a time zone, an aware datetime, or a
    float of epoch seconds (taken at its shortest decimal form).

    Raises:
        ValueRejected: anything else, or a time outside years 1970-9999.
    """
    if isinstance(value, bool):
        raise ValueRejected(f"time value {value!r} is a bool, not a time")
    if isinstance(value, int):
        us = value
    elif isinstance(value, dt.datetime):
        us = _datetime_us(value)
    elif isinstance(value, float | Decimal):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueRejected(f"time value {value!r} is not finite")
        us = int((Decimal(repr(value) if isinstance(value, float) else value)) * 10**6)
    elif isinstance(value, str):
        us = _text_us(value)
    else:
        raise ValueRejected(
            f"time value {value!r} ({type(value).__name__}) is not a time; give "
            "epoch microseconds (int), epoch seconds as text, or an aware datetime"
        )
    if not 0 <= us < _MAX_EPOCH_US:
        raise ValueRejected(
            f"time value {value!r} is {us} microseconds since the epoch, outside "
            "years 1970-9999; nanoseconds or milliseconds are not microseconds "
            "(divide nanoseconds by 1000)"
        )

    return us


def format_time(us: int) -> bytes:
    """Epoch microseconds as Zeek writes time: seconds with 6 decimals."""
    sign = b"-" if us < 0 else b""
    seconds, micros = divmod(abs(us), 1_000_000)

    return sign + b"%d.%06d" % (seconds, micros)


def normalise_addr(value: object) -> str:
    """A bare, normalised IP address, as Zeek's `addr` reader takes it.

    Raises:
        ValueRejected: a host name, an address with a port, or anything that
            is not an IPv4 or IPv6 address.
    """
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if not isinstance(value, str):
        raise ValueRejected(f"address {value!r} is not text or an ip address")
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:
        text = text.split("%", 1)[0]
        _warn_once("addr.zone_dropped", value=value)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    hint = "write host names into a string field"
    if text.count(":") == 1 or "]:" in text:
        hint = "write the port into a port field"
    raise ValueRejected(
        f"{value!r} is not an IPv4 or IPv6 address; {hint}, never into addr"
    )


def port_text(value: object) -> bytes:
    """A port as Zeek writes it: `N/proto`.

    Accepts `N/proto` text, an `(N, proto)` pair (proto None means unknown),
    or a bare int (proto unknown, as Zeek reads a bare number).
    """
    proto: object = "unknown"
    if isinstance(value, tuple) and len(value) == 2:
        value, proto = value
        proto = "unknown" if proto is None else proto
    elif isinstance(value, str) and "/" in value:
        value, proto = value.split("/", 1)
    if isinstance(value, bool):
        raise ValueRejected(f"port {value!r} is a bool")
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueRejected(f"port {value!r} is not a number") from None
    if not 0 <= number <= 65535 or str(proto) not in _PROTOS:
        raise ValueRejected(
            f"port {number}/{proto} is out of range: expected 0-65535 and one "
            f"of {sorted(_PROTOS)}"
        )

    return b"%d/%s" % (number, str(proto).encode())


def double_value(column: Column, value: object) -> float | None:
    """A finite float for a double column, or None (unset) where allowed."""
    number: float | None
    try:
        if isinstance(value, bool | bytes):
            raise TypeError
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = None
    if number is not None and math.isfinite(number):
        return number
    if column.optional:
        if number is None:
            _warn_once("double.not_a_number", column=column.name, value=value)
        return None
    raise ValueRejected(
        f"column {column.name!r} needs a finite number, got {value!r}; it is "
        "required, so it cannot be written as unset"
    )


def escape_text(value: str | bytes, *, in_set: bool = False) -> bytes:
    """Escape text for a Zeek string field (or a set/vector element)."""
    raw = value if isinstance(value, bytes) else _utf8(value)
    if raw == b"-":
        return b"\\x2d"
    if raw == EMPTY_FIELD:
        return b"\\x28empty)"

    return _escape(raw, _ELEMENT_ESCAPE if in_set else _TEXT_ESCAPE)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # A lone surrogate (e.g. from broken JSON) cannot be UTF-8; keep a
        # visible trace of it rather than fail the record.
        return text.encode("utf-8", "backslashreplace")


def _escape(raw: bytes, pattern: re.Pattern[bytes]) -> bytes:
    return pattern.sub(lambda m: b"\\x%02x" % m[0][0], raw)


def _element_type(zeek_type: str) -> str | None:
    for prefix in ("set[", "vector["):
        if zeek_type.startswith(prefix) and zeek_type.endswith("]"):
            return zeek_type[len(prefix) : -1]
    return None


def _format_scalar(
    column: Column, zeek_type: str, value: object, *, in_set: bool
) -> bytes:
    if zeek_type == "string":
        if not isinstance(value, str | bytes):
            raise ValueRejected(
                f"column {column.name!r} holds text, got {type(value).__name__} "
                f"{value!r}"
            )
        return escape_text(value, in_set=in_set)
    if zeek_type == "time":
        return format_time(epoch_us(value))
    if zeek_type == "interval":
        return format_time(_interval_us(value))
    if zeek_type == "addr":
        return normalise_addr(value).encode()
    if zeek_type == "subnet":
        try:
            return str(ipaddress.ip_network(str(value), strict=False)).encode()
        except ValueError:
            raise ValueRejected(f"{value!r} is not a subnet") from None
    if zeek_type == "port":
        return port_text(value)
    if zeek_type == "bool":
        if not isinstance(value, bool):
            raise ValueRejected(f"column {column.name!r} needs a bool, got {value!r}")
        return b"T" if value else b"F"
    if zeek_type in ("count", "int"):
        return _integer(column, zeek_type, value)
    if zeek_type == "double":
        number = double_value(Column(column.name, "double"), value)
        return _positional(number if number is not None else 0.0)
    if not isinstance(value, str) or not _ENUM_RE.fullmatch(value):
        raise ValueRejected(f"column {column.name!r}: {value!r} is not an enum name")

    return value.encode()


def _format_container(column: Column, inner: str, value: object) -> bytes:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueRejected(
            f"column {column.name!r} holds a {column.zeek_type}, got {value!r}; "
            "give a list"
        )
    parts = []
    dropped = 0
    for element in value:
        if element is None or element in ("", b""):
            dropped += 1
            continue
        parts.append(_format_scalar(column, inner, element, in_set=True))
    if dropped:
        _warn_once("set.empty_element_dropped", column=column.name, dropped=dropped)
    if not parts:
        return EMPTY_FIELD

    return SET_SEPARATOR.join(parts)


def _integer(column: Column, zeek_type: str, value: object) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueRejected(
            f"column {column.name!r} needs an integer {zeek_type}, got {value!r}"
        )
    low, high = (0, 2**64 - 1) if zeek_type == "count" else (-(2**63), 2**63 - 1)
    if not low <= value <= high:
        raise ValueRejected(
            f"column {column.name!r}: {value} is outside the {zeek_type} range "
            f"{low}..{high}"
        )

    return b"%d" % value


def _truncate(column: Column, value: object) -> bytes:
    assert column.max_bytes is not None
    room = column.max_bytes - len(TRUNCATION_MARK)
    raw = value if isinstance(value, bytes) else str(value)
    pieces: list[bytes] = []
    used = 0
    for unit in raw:
        unit_bytes = _utf8(unit) if isinstance(unit, str) else bytes([unit])
        piece = _escape(unit_bytes, _TEXT_ESCAPE)
        if used + len(piece) > room:
            break
        pieces.append(piece)
        used += len(piece)
    log.debug("text.truncated", column=column.name, limit=column.max_bytes)

    return b"".join(pieces) + TRUNCATION_MARK


def _positional(number: float) -> bytes:
    # Shortest round-trip digits, but never exponent notation: strtod reads
    # both, other consumers of the log may not.
    return format(Decimal(repr(number)), "f").encode()


def _interval_us(value: object) -> int:
    if isinstance(value, dt.timedelta):
        return (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(Decimal(repr(value)) * 10**6)
    raise ValueRejected(f"interval {value!r} is not microseconds or a timedelta")


def _datetime_us(value: dt.datetime) -> int:
    if value.tzinfo is None:
        raise ValueRejected(
            f"datetime {value.isoformat()} has no time zone; give an aware "
            "datetime (UTC) so the epoch time is unambiguous"
        )
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _text_us(text: str) -> int:
    try:
        return int(Decimal(text.strip()) * 10**6)
    except InvalidOperation:
        pass
    try:
        parsed = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueRejected(
            f"time {text!r} is neither epoch seconds nor ISO 8601"
        ) from None

    return _datetime_us(parsed)


def _stamp(us: int | None) -> bytes:
    when = (
        dt.datetime.now(dt.UTC)
        if us is None
        else dt.datetime.fromtimestamp(us / 1e6, dt.UTC)
    )

    return when.strftime("%Y-%m-%d-%H-%M-%S").encode()


def _decode_value(column: Column, raw: bytes) -> object:
    if raw == UNSET_FIELD:
        return None
    inner = _element_type(column.zeek_type)
    if inner is not None:
        if raw == EMPTY_FIELD:
            return []
        return [_decode_scalar(inner, part) for part in raw.split(SET_SEPARATOR)]

    return _decode_scalar(column.zeek_type, raw)


def _decode_scalar(zeek_type: str, raw: bytes) -> object:
    if zeek_type == "string":
        return unescape_hex_only(raw).decode("utf-8", "surrogateescape")
    if zeek_type in ("time", "interval"):
        return int(Decimal(raw.decode()) * 10**6)
    if zeek_type == "double":
        return float(raw)
    if zeek_type in ("count", "int"):
        return int(raw)
    if zeek_type == "bool":
        return raw == b"T"
    if zeek_type == "port":
        number, _, proto = raw.decode().partition("/")
        return int(number), proto or "unknown"

    return raw.decode()


def _warn_once(event: str, **data: object) -> None:
    if event in _warned:
        return
    _warned.add(event)
    log.warning(event, note="further cases are not logged", **data)
