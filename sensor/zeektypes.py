"""Zeek field types to Arrow: the one type table and the column converters.

Every field of a Zeek log reaches Arrow through `arrow_type`, so a field type
means the same thing in TSV and JSON logs, in tests and in the daemon:

| Zeek field type            | Arrow type                       |
|----------------------------|----------------------------------|
| time                       | timestamp("us", tz="UTC"), 1-9999|
| interval                   | duration("us")                   |
| count, counter             | uint64 (exact up to 2**64 - 1)   |
| int                        | int64                            |
| double                     | float64                          |
| port                       | uint16 (`443/tcp` -> 443)        |
| addr, subnet               | string, normalised by ipaddress  |
| bool                       | bool                             |
| string                     | binary (lossless, see below)     |
| enum, pattern, func, file  | string                           |
| set[T], vector[T], table[T]| list(T)                          |
| anything else              | string, with one warning         |

Zeek's `string` can hold any bytes (payloads, URIs, user agents), so it is
kept as Arrow `binary`: `\\xNN` escapes become the bytes they stand for and
nothing is lost when a value is not UTF-8. The logs the daemon knows
(`KNOWN_SCHEMAS` in `sensor.reader`) declare their identifier-like string
fields (uid, history, service ...) as Arrow `string` instead.

Addresses are stored as text in the form `ipaddress` prints them (IPv6
compressed and lower-case, IPv4 dotted quad), so one column holds both
families and equal addresses compare equal; a `%zone` suffix is stripped
with one warning.

Unset values (`#unset_field`, `-`) are nulls in every field type, never 0,
False or 1970; the empty marker (`(empty)`) is an empty list in containers
and an empty string in string fields.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

log = structlog.get_logger(__name__)

TIME_TYPE: Final = pa.timestamp("us", tz="UTC")
INTERVAL_TYPE: Final = pa.duration("us")

_SCALAR_TYPES: Final[dict[str, pa.DataType]] = {
    "time": TIME_TYPE,
    "interval": INTERVAL_TYPE,
    "count": pa.uint64(),
    # Bro 1.x/2.0 wrote `counter` for what later became `count`.
    "counter": pa.uint64(),
    "int": pa.int64(),
    "double": pa.float64(),
    "port": pa.uint16(),
    "addr": pa.string(),
    "subnet": pa.string(),
    "bool": pa.bool_(),
    "string": pa.binary(),
    "enum": pa.string(),
    "pattern": pa.string(),
    "func": pa.string(),
    "file": pa.string(),
}

_CONTAINER = re.compile(r"^(set|vector|table)\[(.+)\]$")
_ESCAPE = re.compile(rb"\\(?:x([0-9a-fA-F]{2})|(\\))")
_HEX_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
_FIXED_POINT = r"^(?P<i>-?\d+)(?:\.(?P<f>\d{0,6})\d*)?$"
_MICROS = 1_000_000
# The times Python's datetime can hold: years 1 to 9999, in microseconds.
TIME_MIN_US: Final = -62_135_596_800 * _MICROS
TIME_MAX_US: Final = 253_402_300_800 * _MICROS - 1
_UINT64_MAX = 2**64 - 1
# int64 microseconds reach about 9.2e12 seconds: 13 digits before the point.
_MAX_SECONDS_DIGITS: Final = 13
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_warned_types: set[str] = set()
_warned_zones = False


@dataclass(frozen=True)
class Markers:
    """The markers a TSV header announces, as raw bytes."""

    unset: bytes = b"-"
    empty: bytes = b"(empty)"
    set_separator: bytes = b","


def split_container(zeek_type: str) -> tuple[str | None, str]:
    """Return (container kind, element type) of a field type.

    `set[string]` gives ("set", "string"); a scalar type gives (None, type).
    Bro's `table[T]` is what later became `set[T]`.
    """
    match = _CONTAINER.match(zeek_type)
    if match is None:
        return None, zeek_type

    return match.group(1), match.group(2)


def arrow_type(zeek_type: str) -> pa.DataType:
    """Map one Zeek field type to its Arrow type (see the module's table).

    Unknown types become `string`, with one warning per type name.
    """
    kind, inner = split_container(zeek_type)
    if kind is not None:
        return pa.list_(arrow_type(inner))
    known = _SCALAR_TYPES.get(zeek_type)
    if known is not None:
        return known
    if zeek_type not in _warned_types:
        _warned_types.add(zeek_type)
        log.warning("type.unknown", zeek_type=zeek_type, arrow_type="string")

    return pa.string()


def unescape(value: bytes) -> bytes:
    """Decode Zeek's `\\xNN` escapes (and the older `\\\\`) in one value.

    Malformed escapes such as `\\xZZ` or a trailing `\\x4` stay as they are.
    """
    if b"\\" not in value:
        return value

    def byte(match: re.Match[bytes]) -> bytes:
        if match.group(2) is not None:
            return b"\\"
        return bytes((int(match.group(1), 16),))

    return _ESCAPE.sub(byte, value)


def unescape_hex_only(value: bytes) -> bytes:
    """Decode only `\\xNN` escapes.

    The form Zeek's JSON writer uses, and all that Zeek's ASCII Input reader
    decodes (so the notice writer's round trip uses it too).
    """
    if b"\\x" not in value:
        return value

    return _HEX_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), value)


def normalise_addr(text: str) -> str:
    """Return an address in `ipaddress`'s canonical form.

    Raises:
        ValueError: the text is not an IPv4 or IPv6 address.
    """
    global _warned_zones
    if "%" in text:
        text = text.split("%", 1)[0]
        if not _warned_zones:
            _warned_zones = True
            log.warning("addr.zone_stripped", example=text)

    return str(ipaddress.ip_address(text))


def normalise_subnet(text: str) -> str:
    """Return a subnet in `ipaddress`'s canonical form (host bits cleared)."""
    return str(ipaddress.ip_network(text, strict=False))


# -- converters over raw TSV columns -------------------------------------
#
# A converter takes the raw field values of one column (binary, nulls where
# the field was unset) and returns the typed array plus a boolean mask of
# records whose value could not be read, or None when every value was fine.

Converted = tuple[pa.Array, np.ndarray | None]


def _bad_mask(values: pa.Array, result: pa.Array) -> np.ndarray | None:
    """Records that had a value but got none: the value was invalid."""
    lost = pc.and_(values.is_valid(), result.is_null())
    if not pc.any(lost).as_py():
        return None

    return np.asarray(lost.to_numpy(zero_copy_only=False), dtype=bool)


def _per_value(
    values: pa.Array, parse: Callable[[bytes], object], target: pa.DataType
) -> Converted:
    """Slow path: parse each value in Python, nulls for the bad ones."""
    out: list[object] = []
    bad = np.zeros(len(values), dtype=bool)
    for index, raw in enumerate(values.to_pylist()):
        if raw is None:
            out.append(None)
            continue
        try:
            out.append(parse(raw))
        except (ValueError, OverflowError, UnicodeDecodeError):
            out.append(None)
            bad[index] = True

    return pa.array(out, type=target), (bad if bad.any() else None)


def _parse_micros(raw: bytes) -> int:
    """`1796378400.101010` -> microseconds, exactly; exponents allowed.

    Every spelling (`+1.5`, `1.5e-6`) is cut to the microsecond like the
    fixed-point form, never rounded through a float.
    """
    return text_micros(raw.decode("ascii").strip())


def text_micros(text: str) -> int:
    """Seconds written as decimal text -> microseconds, never via float.

    Digits past the sixth decimal are cut (toward zero), as the TSV path
    cuts them; an exponent form (`1.5e9`) is read exactly as well.

    Raises:
        ValueError: not a finite number, or out of int64 microseconds.
    """
    match = re.match(_FIXED_POINT, text)
    if match is not None:
        micros = abs(int(match.group("i"))) * _MICROS
        micros += int((match.group("f") or "").ljust(6, "0"))
        micros = -micros if text.startswith("-") else micros
    else:
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise ValueError(f"not a number: {text!r}") from None
        if not number.is_finite():
            raise ValueError(f"not a finite number: {text!r}")
        if number and number.adjusted() > _MAX_SECONDS_DIGITS:
            # Before any arithmetic: `1e999999` overflows the decimal
            # context, and `1e99999` would become a 100,000-digit int.
            raise ValueError(f"{text!r} seconds is out of range")
        micros = int(number.scaleb(6).to_integral_value(rounding=ROUND_DOWN))
    if not _INT64_MIN <= micros <= _INT64_MAX:
        raise ValueError(f"{text!r} seconds is out of range")

    return micros


def _six_decimals(values: pa.Array) -> pa.Array | None:
    """Fast path for Zeek's own `%.6f` form: drop the dot, read an integer.

    Returns None when some value is not in that form.
    """
    dot = pc.find_substring(values, b".")
    # find_substring gives -1 without a dot: `123456` is not `.123456`.
    six = pc.and_(
        pc.greater_equal(dot, 0),
        pc.equal(pc.subtract(pc.binary_length(values), dot), 7),
    )
    if not pc.all(six).as_py():
        return None
    digits = pc.replace_substring(values, b".", b"", max_replacements=1)
    try:
        return digits.cast(pa.string()).cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _to_micros(values: pa.Array) -> Converted:
    """Fixed-point seconds text -> int64 microseconds, never via float."""
    if values.null_count < len(values) and _decimal_only(values):
        fast = _six_decimals(values)
        if fast is not None:
            return fast, None
    try:
        text = values.cast(pa.string())
        parts = pc.extract_regex(text, _FIXED_POINT)
        # struct_field, unlike .field(), keeps the nulls of unmatched values.
        whole = pc.abs_checked(pc.struct_field(parts, "i").cast(pa.int64()))
        frac = pc.utf8_rpad(pc.struct_field(parts, "f"), width=6, padding="0")
        micros = pc.add_checked(
            pc.multiply_checked(whole, _MICROS), frac.cast(pa.int64())
        )
        micros = pc.if_else(pc.starts_with(text, "-"), pc.negate(micros), micros)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _per_value(values, _parse_micros, pa.int64())
    bad = _bad_mask(values, micros)
    if bad is not None:
        # Some values are not plain fixed point (e.g. `1e+20`): let Python
        # judge each one rather than reject what float() can still read.
        return _per_value(values, _parse_micros, pa.int64())

    return micros, None


def _convert_time(values: pa.Array, target: pa.DataType) -> Converted:
    micros, bad = _to_micros(values)
    if target != TIME_TYPE:
        return micros.cast(target), bad

    # Python's datetime spans years 1-9999: a time outside would make every
    # reader of the batch that asks for Python values fail.
    inside = pc.and_(
        pc.greater_equal(micros, TIME_MIN_US), pc.less_equal(micros, TIME_MAX_US)
    )
    micros = pc.if_else(inside, micros, pa.scalar(None, pa.int64()))

    return micros.cast(target), _bad_mask(values, micros)


def _parse_int(low: int, high: int) -> Callable[[bytes], object]:
    def parse(raw: bytes) -> object:
        number = int(raw.decode("ascii"))
        if not low <= number <= high:
            raise ValueError(f"{number} out of range")
        return number

    return parse


def _decimal_only(values: pa.Array) -> bool:
    """No byte of the values is an `x` or `X`.

    Arrow's integer cast reads `0x10` as 16, and `0xffffffffffffffff` as -1
    in an int64 column; Zeek writes decimal only. Looking at the raw data
    buffer is the cheap test (bytes outside the values only cost a detour
    through the exact path).
    """
    data = values.buffers()[2]
    if data is None:
        return True

    return not bool(((np.frombuffer(data, dtype=np.uint8) | 0x20) == 0x78).any())


def _convert_integer(values: pa.Array, target: pa.DataType) -> Converted:
    if _decimal_only(values):
        try:
            return values.cast(target), None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    if target == pa.uint64():
        return _per_value(values, _parse_int(0, _UINT64_MAX), target)

    return _per_value(values, _parse_int(_INT64_MIN, _INT64_MAX), target)


def _parse_double(raw: bytes) -> float:
    """One double as Arrow's cast reads it, else as Python's float does.

    Arrow takes forms Python refuses (`nan(1)`) and the reverse (`1_0`):
    trying both keeps a value's fate from depending on whether another
    value of its batch sent the column down this per-value path.
    """
    try:
        value = pa.scalar(raw, pa.binary()).cast(pa.string()).cast(pa.float64())
        return float(value.as_py())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return float(raw.decode("ascii"))


def _convert_double(values: pa.Array, target: pa.DataType) -> Converted:
    try:
        return values.cast(pa.float64()), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _per_value(values, _parse_double, target)


def _parse_port(raw: bytes) -> int:
    number = int(raw.decode("ascii").split("/", 1)[0])
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} out of range")

    return number


def _convert_port(values: pa.Array, target: pa.DataType) -> Converted:
    if _decimal_only(values):
        try:
            text = values.cast(pa.string())
            if pc.any(pc.match_substring(text, "/")).as_py():
                text = pc.replace_substring_regex(
                    text, pattern="/[a-z_]*$", replacement=""
                )
            return text.cast(pa.uint16()), None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass

    return _per_value(values, _parse_port, target)


def _convert_bool(values: pa.Array, target: pa.DataType) -> Converted:
    is_true = pc.equal(values, pa.scalar(b"T", pa.binary()))
    is_false = pc.equal(values, pa.scalar(b"F", pa.binary()))
    result = pc.if_else(pc.or_(is_true, is_false), is_true, pa.scalar(None, pa.bool_()))

    return result, _bad_mask(values, result)


# Distinct raw values already normalised, per normaliser: the text (None
# when invalid) and whether it is the raw value unchanged. Addresses repeat
# a lot from batch to batch; the caches are emptied when they grow large.
_NORMALISED: dict[Callable[[str], str], dict[bytes, tuple[str | None, bool]]] = {}
_CACHE_LIMIT: Final = 200_000


def _convert_by_unique(values: pa.Array, normalise: Callable[[str], str]) -> Converted:
    """Normalise each distinct value once, then map the records onto them."""
    cache = _NORMALISED.setdefault(normalise, {})
    if len(cache) > _CACHE_LIMIT:
        cache.clear()
    distinct = pc.unique(values)
    if not _changed(distinct, normalise, cache):
        # Every value is in canonical form already, hence ASCII.
        return values.view(pa.string()), None

    normalised: list[str | None] = []
    for raw in distinct.to_pylist():
        if raw is None:
            normalised.append(None)
            continue
        normalised.append(_normalised(raw, normalise, cache)[0])
    positions = pc.index_in(values, value_set=distinct)
    result = pc.take(pa.array(normalised, type=pa.string()), positions)

    return result, _bad_mask(values, result)


def _normalised(
    raw: bytes,
    normalise: Callable[[str], str],
    cache: dict[bytes, tuple[str | None, bool]],
) -> tuple[str | None, bool]:
    """(normal form or None when invalid, whether it is `raw` unchanged)."""
    known = cache.get(raw)
    if known is None:
        try:
            text: str | None = normalise(raw.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            text = None
        known = cache[raw] = (text, text is not None and text.encode() == raw)

    return known


def _changed(
    distinct: pa.Array,
    normalise: Callable[[str], str],
    cache: dict[bytes, tuple[str | None, bool]],
) -> bool:
    """Whether some distinct value is invalid or not in normal form."""
    return not all(
        raw is None or _normalised(raw, normalise, cache)[1]
        for raw in distinct.to_pylist()
    )


def _convert_addr(values: pa.Array, target: pa.DataType) -> Converted:
    return _convert_by_unique(values, normalise_addr)


def _convert_subnet(values: pa.Array, target: pa.DataType) -> Converted:
    return _convert_by_unique(values, normalise_subnet)


# -- field types pyarrow's CSV reader can parse itself ---------------------
#
# For these scalar types the CSV reader's own parser gives, for every value
# it accepts, what the converters above give, with two exceptions the reader
# must check (see `sensor.reader`): it reads `0x10` as 16 in integer fields,
# and a time can be past year 9999. Times and intervals are read as decimals
# with six places, so they stay exact: a value with more places, which the
# converters cut to the microsecond, fails the parse instead of rounding.
_CSV_TYPES: Final[dict[str, pa.DataType]] = {
    "time": pa.decimal128(18, 6),
    "interval": pa.decimal128(18, 6),
    "count": pa.uint64(),
    "counter": pa.uint64(),
    "int": pa.int64(),
    "double": pa.float64(),
    "port": pa.uint16(),
    "bool": pa.bool_(),
}
INTEGER_TYPES: Final = frozenset({"count", "counter", "int", "port"})
_MICROS_DECIMAL: Final = pa.decimal128(18, 0)


def csv_type(zeek_type: str) -> pa.DataType | None:
    """The type pyarrow's CSV reader may parse a field of this type into.

    None for types that need the converters (strings, addresses,
    containers).
    """
    return _CSV_TYPES.get(zeek_type)


def from_csv(values: pa.Array, zeek_type: str) -> pa.Array:
    """A column the CSV reader typed (`csv_type`) as its table type.

    Decimal seconds with six places are read as integer microseconds
    without any rounding.
    """
    if zeek_type not in ("time", "interval"):
        return values
    micros = values.view(_MICROS_DECIMAL).cast(pa.int64())

    return micros.cast(arrow_type(zeek_type))


def times_in_range(values: pa.Array) -> bool:
    """Every time of a `time` column lies in years 1 to 9999."""
    bounds = pc.min_max(values.cast(pa.int64()))
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low is None:
        return True

    return bool(low >= TIME_MIN_US and high <= TIME_MAX_US)


def decode_escapes(values: pa.Array, *, hex_only: bool = False) -> pa.Array:
    """Decode escapes in the few values that contain a backslash."""
    has_escape = pc.fill_null(pc.match_substring(values, "\\"), False)
    if not pc.any(has_escape).as_py():
        return values
    decode = unescape_hex_only if hex_only else unescape
    picked = pc.filter(values, has_escape).to_pylist()
    decoded = pa.array([decode(raw) for raw in picked], type=pa.binary())

    return pc.replace_with_mask(values, has_escape, decoded)


def to_text(values: pa.Array, *, ascii: bool = False) -> pa.Array:
    """binary -> string; values that are not UTF-8 get backslash escapes.

    Used for field types whose values are identifiers (enum, uid, history):
    Zeek writes them in ASCII, so the fallback is a safety net, not a path.
    With `ascii` the caller knows every byte is below 0x80: no check needed.
    """
    if ascii and values.type == pa.binary():
        return values.view(pa.string())
    try:
        return values.cast(pa.string())
    except pa.ArrowInvalid:
        log.warning("value.not_utf8", action="backslash-escaped")
        texts = [
            None if raw is None else raw.decode("utf-8", "backslashreplace")
            for raw in values.to_pylist()
        ]
        return pa.array(texts, type=pa.string())


def _convert_string(
    values: pa.Array, target: pa.DataType, hints: ColumnHints
) -> Converted:
    decoded = decode_escapes(values) if hints.backslash else values
    if target == pa.binary():
        return decoded, None

    return to_text(decoded, ascii=hints.ascii and not hints.backslash), None


_CONVERTERS: Final[dict[str, Callable[[pa.Array, pa.DataType], Converted]]] = {
    "time": _convert_time,
    "interval": _convert_time,
    "count": _convert_integer,
    "counter": _convert_integer,
    "int": _convert_integer,
    "double": _convert_double,
    "port": _convert_port,
    "addr": _convert_addr,
    "subnet": _convert_subnet,
    "bool": _convert_bool,
}


@dataclass(frozen=True)
class ColumnHints:
    """What the caller already knows of the raw bytes of a column.

    Attributes:
        ascii: no byte is 0x80 or above, so binary -> string needs no check.
        backslash: a backslash may occur, so escapes must be looked for.
    """

    ascii: bool = False
    backslash: bool = True


_NO_HINTS: Final = ColumnHints()


def _convert_scalar(
    values: pa.Array, zeek_type: str, target: pa.DataType, hints: ColumnHints
) -> Converted:
    converter = _CONVERTERS.get(zeek_type)
    if converter is None:
        return _convert_string(values, target, hints)

    return converter(values, target)


def _replace_equal(values: pa.Array, marker: bytes, by: pa.Scalar) -> pa.Array:
    """`values` with every value equal to `marker` replaced by `by`."""
    hit = pc.equal(values, pa.scalar(marker, pa.binary()))
    if not pc.any(hit).as_py():
        return values

    return pc.if_else(hit, by, values)


def convert_column(
    raw: pa.Array,
    zeek_type: str,
    markers: Markers,
    *,
    hints: ColumnHints = _NO_HINTS,
) -> Converted:
    """Turn one column of raw TSV field values into its Arrow type.

    The unset and empty markers are compared with the whole raw field first
    (the splitter has already made unset fields null); containers are then
    split on the set separator, and only after that are escapes decoded, so
    `\\x2d` stays the string `-` and `\\x2c` stays inside its element.

    Args:
        raw: the fields as they were in the file (binary), null where the
            field was the unset marker.
        zeek_type: the field type from `#types`.
        markers: the header's unset and empty markers and set separator.
        hints: what is known of the bytes (from the whole block), to skip
            checks that cannot find anything.

    Returns:
        The typed array, and a mask of records whose value was invalid (or
        None when all were fine).
    """
    target = arrow_type(zeek_type)
    kind, inner = split_container(zeek_type)
    null_binary = pa.scalar(None, pa.binary())

    if kind is None:
        values = raw
        if zeek_type not in _CONVERTERS:
            # string-like: the empty marker is the empty string.
            values = _replace_equal(raw, markers.empty, pa.scalar(b"", pa.binary()))
        return _convert_scalar(values, zeek_type, target, hints)

    unset = raw.is_null()
    empty = pc.equal(raw, pa.scalar(markers.empty, pa.binary()))
    if pc.sum(empty).as_py() == len(raw) - raw.null_count:
        # Only unset and empty fields (as in most conn.log tunnel_parents).
        offsets = pa.array(np.zeros(len(raw) + 1, dtype=np.int32))
        nothing = pa.array([], type=target.value_type)
        return pa.ListArray.from_arrays(offsets, nothing, mask=unset), None
    values = pc.if_else(empty, null_binary, raw)
    lists = pc.split_pattern(values, pattern=markers.set_separator)
    elements = lists.flatten()
    element_unset = pc.equal(elements, pa.scalar(markers.unset, pa.binary()))
    elements = pc.if_else(element_unset, null_binary, elements)
    typed, bad_elements = _convert_scalar(elements, inner, target.value_type, hints)
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
    offsets = np.zeros(len(raw) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    result = pa.ListArray.from_arrays(
        pa.array(offsets, type=pa.int32()), typed, mask=unset
    )
    bad = None
    if bad_elements is not None:
        owner = np.repeat(np.arange(len(raw)), lengths)
        bad = np.zeros(len(raw), dtype=bool)
        bad[owner[bad_elements]] = True

    return result, bad


def conform(values: pa.Array, target: pa.DataType, *, ascii: bool = False) -> pa.Array:
    """Cast a converted column to a known schema's type.

    binary -> string goes through `to_text`, also inside lists; `ascii`
    says every byte is known to be below 0x80.

    Raises:
        pa.ArrowInvalid: the column cannot be represented as `target`.
    """
    if values.type == target:
        return values
    if values.type == pa.binary() and target == pa.string():
        return to_text(values, ascii=ascii)
    if (
        pa.types.is_list(values.type)
        and pa.types.is_list(target)
        and values.type.value_type == pa.binary()
        and target.value_type == pa.string()
    ):
        text = to_text(values.values, ascii=ascii)
        return pa.ListArray.from_arrays(values.offsets, text, mask=values.is_null())

    return values.cast(target)


def field_types(fields: Sequence[tuple[str, str]]) -> pa.Schema:
    """Arrow schema for (name, Zeek type) pairs, keeping the Zeek type."""
    return pa.schema(
        [
            pa.field(name, arrow_type(zeek_type), metadata={"zeek_type": zeek_type})
            for name, zeek_type in fields
        ]
    )
