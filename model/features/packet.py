"""Packet features: the paper's preprocessing of one packet into a vector.

One sample is one packet, from its IP header on. The layout of every sample
is fixed, so that the same byte position always means the same header field:

====================  =========  ==============================================
region                bytes      content
====================  =========  ==============================================
IP header             0 - 59     IPv4: 20-byte header, options zero-padded to
                                 40 bytes. IPv6: 40-byte fixed header, then
                                 the extension headers cut or zero-padded to
                                 20 bytes (the version nibble tells them apart)
transport header      60 - 119   TCP: 20-byte header, options zero-padded to
                                 40 bytes. UDP: 8-byte header zero-padded to
                                 the same 60 bytes
payload               120 - ...  transport payload, cut or zero-padded to
                                 ``input_len``
====================  =========  ==============================================

Source and destination addresses are always zeroed; ports are kept. With
``neutralise`` the header fields that identify a capture rather than its
traffic are zeroed too: IPv4 TTL, identification and header checksum, IPv6
hop limit and flow label, TCP and UDP checksums. ``tcp_random`` zeroes the
TCP fields that each connection draws at random and that therefore say
nothing about its traffic (see `TCP_RANDOM`): sequence and acknowledgement
numbers, and the values (not the kind and length bytes) of TCP options.
Bytes are divided by 255, so a sample is float32 in [0, 1].

Eligibility, the one rule for every source (pcap, raw frames, packet log):
a packet is eligible when it is IPv4 or IPv6 carrying TCP or UDP, is not a
non-first fragment, carries a transport payload of at least one byte (by
the IP length fields, so Ethernet padding does not count), and neither port
is 53 (DNS). Sampling on top of that lives in `model.features.pcap`.
The label files in shared/data also count ICMP and other non-TCP/UDP
packets with an IP payload as eligible; this rule does not (the Zeek
script samples TCP and UDP connections only), so an ICMP-only attack such
as an ICMP backdoor has no packet samples and is left to the flow model.

Frames are parsed with numpy over a whole batch at once: the per-packet
work is a gather through an index matrix, not a Python loop.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from sensor.contract import SNAP_LEN
from sensor.errors import ConfigError, LogFormatError

IP_REGION: Final = 60
TRANSPORT_REGION: Final = 60
PAYLOAD_START: Final = IP_REGION + TRANSPORT_REGION

# Link types as the packet log names them (Zeek's names where Zeek has one,
# ours for the encapsulations Zeek reports as LINK_UNKNOWN), with the pcap
# DLT numbers that map to them.
LINK_ETHERNET: Final = "LINK_ETHERNET"
LINK_RAW: Final = "LINK_RAW"
LINK_SLL: Final = "LINK_SLL"
LINK_SLL2: Final = "LINK_SLL2"
LINK_NULL: Final = "LINK_NULL"
LINK_UNKNOWN: Final = "LINK_UNKNOWN"
DLT_TO_LINK: Final = {
    0: LINK_NULL,
    1: LINK_ETHERNET,
    12: LINK_RAW,
    14: LINK_RAW,
    101: LINK_RAW,
    108: LINK_NULL,
    113: LINK_SLL,
    228: LINK_RAW,
    229: LINK_RAW,
    276: LINK_SLL2,
}
_LINK_CODES: Final = {
    LINK_UNKNOWN: 0,
    LINK_ETHERNET: 1,
    LINK_RAW: 2,
    LINK_SLL: 3,
    LINK_SLL2: 4,
    LINK_NULL: 5,
}

_VLAN_TPIDS: Final = (0x8100, 0x88A8, 0x9100)
_ETH_IPV4: Final = 0x0800
_ETH_IPV6: Final = 0x86DD
_TCP: Final = 6
_UDP: Final = 17
_DNS_PORT: Final = 53
# IPv6 extension headers that chain with (next header, length in 8-byte
# units); fragment headers are fixed at 8 bytes and handled apart.
_IPV6_EXT: Final = (0, 43, 60, 135, 139, 140)
_IPV6_FRAG: Final = 44
_MAX_VLAN_TAGS: Final = 4
_MAX_IPV6_EXT: Final = 4

# Both headers and the first 8 payload bytes. Measured on the public pcaps
# (docs/DETECTION.md, packet ablations): longer inputs add payload bytes
# that the model cannot tell apart from noise and detection drops.
DEFAULT_INPUT_LEN: Final = 128

# What `PacketFeatureConfig.tcp_random` zeroes in a TCP header:
# "kept" nothing; "seq_ack" the sequence and acknowledgement numbers;
# "seq_ack_ts" those and the values of the options that carry sequence
# numbers or clocks (SACK blocks, timestamps); "seq_ack_options" those and
# every option value, so only the option kinds and lengths are left.
TCP_RANDOM: Final = ("kept", "seq_ack", "seq_ack_ts", "seq_ack_options")
DEFAULT_TCP_RANDOM: Final = "seq_ack_ts"
_TCP_OPT_EOL: Final = 0
_TCP_OPT_NOP: Final = 1
_TCP_OPT_SACK: Final = 5
_TCP_OPT_TIMESTAMP: Final = 8
_TCP_OPTIONS_MAX: Final = 40


@dataclass(frozen=True)
class PacketFeatureConfig:
    """The packet feature schema: what a sample holds and how it was made.

    Attributes:
        input_len: bytes per sample (the paper used 1600); at least
            `PAYLOAD_START` so that both headers fit.
        neutralise: zero the capture-identifying header fields (TTL or hop
            limit, IPv4 identification, IPv6 flow label, checksums).
        tcp_random: which per-connection random TCP fields are zeroed, one
            of `TCP_RANDOM`. Model files from before this field have no
            key for it and load as "kept", which is what they were
            trained on.
    """

    input_len: int = DEFAULT_INPUT_LEN
    neutralise: bool = True
    tcp_random: str = DEFAULT_TCP_RANDOM

    def __post_init__(self) -> None:
        if not isinstance(self.input_len, int) or self.input_len < PAYLOAD_START:
            raise ConfigError(
                f"packet input_len={self.input_len!r} is too small: both "
                f"headers need {PAYLOAD_START} bytes; use at least that"
            )
        if self.tcp_random not in TCP_RANDOM:
            raise ConfigError(
                f"packet tcp_random={self.tcp_random!r} is not one of "
                f"{TCP_RANDOM}; use one of those"
            )

    def to_dict(self) -> dict[str, Any]:
        """The feature schema as stored in a model artifact."""
        return {"kind": "packet", "layout": "ip60-l4_60-payload", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PacketFeatureConfig:
        """Rebuild the config from `to_dict` output.

        Raises:
            ConfigError: the dict is not a packet feature schema this code
                can reproduce.
        """
        if data.get("kind") != "packet":
            raise ConfigError(
                f"feature schema kind={data.get('kind')!r}, expected 'packet'; "
                "this model was trained on other features"
            )
        if data.get("layout") != "ip60-l4_60-payload":
            raise ConfigError(
                f"packet layout {data.get('layout')!r} is not the one this "
                "code builds ('ip60-l4_60-payload'); retrain the model"
            )
        return cls(
            input_len=int(data["input_len"]),
            neutralise=bool(data["neutralise"]),
            tcp_random=str(data.get("tcp_random", "kept")),
        )


@dataclass
class ParsedFrames:
    """Header offsets and fields of a batch of frames, one entry per frame.

    Offsets are into the rows of `data`; `ok` is False where the frame is
    not IPv4/IPv6 or is too short to hold the headers it announces.
    """

    data: npt.NDArray[np.uint8]
    length: npt.NDArray[np.int64]
    ok: npt.NDArray[np.bool_]
    ip_off: npt.NDArray[np.int64]
    version: npt.NDArray[np.int64]
    l4_off: npt.NDArray[np.int64]
    proto: npt.NDArray[np.int64]
    payload_off: npt.NDArray[np.int64]
    ip_end: npt.NDArray[np.int64]
    fragment: npt.NDArray[np.bool_]
    sport: npt.NDArray[np.int64]
    dport: npt.NDArray[np.int64]
    tcp_flags: npt.NDArray[np.int64]

    @property
    def payload_len(self) -> npt.NDArray[np.int64]:
        """Transport payload bytes by the IP length fields (not captured)."""
        return np.where(self.ok, np.maximum(self.ip_end - self.payload_off, 0), 0)

    def eligible(self) -> npt.NDArray[np.bool_]:
        """The eligibility rule of this module's docstring, per frame."""
        transport = (self.proto == _TCP) | (self.proto == _UDP)
        dns = (self.sport == _DNS_PORT) | (self.dport == _DNS_PORT)
        return self.ok & transport & ~self.fragment & (self.payload_len > 0) & ~dns

    def addresses(self, i: int) -> tuple[bytes, bytes]:
        """Source and destination address bytes of frame `i` (4 or 16 each)."""
        off = int(self.ip_off[i])
        row = self.data[i]
        if self.version[i] == 4:
            return row[off + 12 : off + 16].tobytes(), row[
                off + 16 : off + 20
            ].tobytes()

        return row[off + 8 : off + 24].tobytes(), row[off + 24 : off + 40].tobytes()


def frames_matrix(
    frames: Sequence[bytes], width: int = SNAP_LEN
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Pack frames into a zero-padded (N, width) uint8 matrix and lengths.

    Frames longer than `width` are cut, as the snap length would cut them.
    """
    lengths = np.fromiter((min(len(f), width) for f in frames), np.int64, len(frames))
    joined = b"".join(f[:width] for f in frames)
    flat = np.frombuffer(joined, dtype=np.uint8)
    out = np.zeros((len(frames), width), dtype=np.uint8)
    rows = np.repeat(np.arange(len(frames)), lengths)
    starts = np.cumsum(lengths) - lengths
    cols = np.arange(flat.size) - np.repeat(starts, lengths)
    out[rows, cols] = flat

    return out, lengths


def _u8(
    data: npt.NDArray[np.uint8], off: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    # Reads past the matrix width come back as 0; callers check lengths.
    width = data.shape[1]
    inside = off < width
    idx = np.where(inside, off, 0)
    values = data[np.arange(data.shape[0]), idx].astype(np.int64)
    return np.where(inside, values, 0)


def _u16(
    data: npt.NDArray[np.uint8], off: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    return (_u8(data, off) << 8) | _u8(data, off + 1)


def _link_offsets(
    data: npt.NDArray[np.uint8],
    length: npt.NDArray[np.int64],
    link: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Offset of the IP header and the ethertype-like protocol per frame."""
    n = data.shape[0]
    off = np.zeros(n, dtype=np.int64)
    ethertype = np.zeros(n, dtype=np.int64)

    eth = link == _LINK_CODES[LINK_ETHERNET]
    off[eth] = 12
    for _ in range(_MAX_VLAN_TAGS + 1):
        etype = _u16(data, off)
        tagged = eth & np.isin(etype, _VLAN_TPIDS)
        off = np.where(tagged, off + 4, off)
    ethertype = np.where(eth, _u16(data, off), ethertype)
    off = np.where(eth, off + 2, off)

    sll = link == _LINK_CODES[LINK_SLL]
    ethertype = np.where(sll, _u16(data, np.full(n, 14)), ethertype)
    off = np.where(sll, 16, off)

    sll2 = link == _LINK_CODES[LINK_SLL2]
    ethertype = np.where(sll2, _u16(data, np.zeros(n, dtype=np.int64)), ethertype)
    off = np.where(sll2, 20, off)

    # Raw IP, BSD loopback and unknown links: the version nibble decides.
    null = link == _LINK_CODES[LINK_NULL]
    off = np.where(null, 4, off)
    sniffed = (
        (link == _LINK_CODES[LINK_RAW]) | null | (link == _LINK_CODES[LINK_UNKNOWN])
    )
    nibble = _u8(data, off) >> 4
    guess = np.where(nibble == 4, _ETH_IPV4, np.where(nibble == 6, _ETH_IPV6, 0))
    ethertype = np.where(sniffed, guess, ethertype)

    # Zeek reports Ethernet as LINK_UNKNOWN in the current packet: when the
    # first byte is not an IP version nibble, try an Ethernet header.
    unknown = (link == _LINK_CODES[LINK_UNKNOWN]) & (guess == 0)
    if unknown.any():
        eth_off, eth_type = _link_offsets(
            data, length, np.where(unknown, _LINK_CODES[LINK_ETHERNET], -1)
        )
        off = np.where(unknown, eth_off, off)
        ethertype = np.where(unknown, eth_type, ethertype)

    return off, ethertype


def link_codes(link_types: Sequence[str] | str, n: int) -> npt.NDArray[np.int64]:
    """Map link-type names to internal codes.

    Raises:
        LogFormatError: a link type this module cannot strip.
    """
    if isinstance(link_types, str):
        link_types = [link_types] * n
    codes = np.empty(n, dtype=np.int64)
    cache: dict[str, int] = {}
    for i, name in enumerate(link_types):
        code = cache.get(name)
        if code is None:
            if name not in _LINK_CODES:
                raise LogFormatError(
                    f"link_type {name!r} is not one of {sorted(_LINK_CODES)}; "
                    "the frame's link layer cannot be stripped"
                )
            code = cache[name] = _LINK_CODES[name]
        codes[i] = code

    return codes


def parse_frames(
    frames: Sequence[bytes], link_types: Sequence[str] | str
) -> ParsedFrames:
    """Find the IP and transport headers of every frame in a batch.

    Args:
        frames: captured frames from their link-layer header on.
        link_types: one name per frame (see `DLT_TO_LINK`), or one for all.
    """
    data, length = frames_matrix(frames)
    n = len(frames)
    link = link_codes(link_types, n)
    ip_off, ethertype = _link_offsets(data, length, link)

    v4 = (ethertype == _ETH_IPV4) & ((_u8(data, ip_off) >> 4) == 4)
    v6 = (ethertype == _ETH_IPV6) & ((_u8(data, ip_off) >> 4) == 6)
    version = np.where(v4, 4, np.where(v6, 6, 0))

    ihl = (_u8(data, ip_off) & 0x0F) * 4
    v4_total = _u16(data, ip_off + 2)
    frag = _u16(data, ip_off + 6)
    v4_nonfirst = (frag & 0x1FFF) != 0
    ok4 = v4 & (ihl >= 20) & (length >= ip_off + ihl) & (v4_total >= ihl)

    # Walk IPv6 extension headers a fixed number of times, vectorised.
    v6_end = ip_off + 40 + _u16(data, ip_off + 4)
    nxt = _u8(data, ip_off + 6)
    l4_6 = ip_off + 40
    v6_nonfirst = np.zeros(n, dtype=bool)
    for _ in range(_MAX_IPV6_EXT):
        ext = v6 & np.isin(nxt, _IPV6_EXT)
        fragh = v6 & (nxt == _IPV6_FRAG)
        v6_nonfirst |= fragh & ((_u16(data, l4_6 + 2) & 0xFFF8) != 0)
        step = np.where(ext, (_u8(data, l4_6 + 1) + 1) * 8, np.where(fragh, 8, 0))
        nxt = np.where(ext | fragh, _u8(data, l4_6), nxt)
        l4_6 = l4_6 + step
    ok6 = v6 & (length >= ip_off + 40) & ~np.isin(nxt, (*_IPV6_EXT, _IPV6_FRAG))

    l4_off = np.where(v4, ip_off + ihl, l4_6)
    proto = np.where(v4, _u8(data, ip_off + 9), np.where(v6, nxt, -1))
    ip_end = np.where(v4, ip_off + v4_total, v6_end)
    fragment = np.where(v4, v4_nonfirst, v6_nonfirst)
    ok = np.where(v4, ok4, ok6)

    tcp = ok & (proto == _TCP)
    udp = ok & (proto == _UDP)
    doff = (_u8(data, l4_off + 12) >> 4) * 4
    l4_len = np.where(tcp, doff, np.where(udp, 8, 0))
    payload_off = l4_off + l4_len
    bad_tcp = tcp & ~fragment & ((doff < 20) | (length < payload_off))
    bad_udp = udp & ~fragment & (length < payload_off)
    ok = ok & ~bad_tcp & ~bad_udp
    has_ports = (tcp | udp) & ~fragment
    sport = np.where(has_ports, _u16(data, l4_off), -1)
    dport = np.where(has_ports, _u16(data, l4_off + 2), -1)
    tcp_flags = np.where(tcp & ~fragment, _u8(data, l4_off + 13), 0)

    return ParsedFrames(
        data=data,
        length=length,
        ok=ok,
        ip_off=ip_off,
        version=version,
        l4_off=l4_off,
        proto=proto,
        payload_off=payload_off,
        ip_end=ip_end,
        fragment=fragment,
        sport=sport,
        dport=dport,
        tcp_flags=tcp_flags,
    )


def decode_frames(column: pa.Array | pa.ChunkedArray) -> list[bytes]:
    """Frames from a `frame` column: binary as is, strings as base64.

    Raises:
        LogFormatError: a string value that is not base64.
    """
    values = column.to_pylist()
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return [b"" if v is None else v for v in values]

    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(b"")
            continue
        try:
            out.append(base64.b64decode(v, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise LogFormatError(
                f"packet log record {i}: frame {v[:24]!r}... is not base64 "
                f"({exc}); the packet log writer must encode frames as base64"
            ) from exc

    return out


# The name model.cli used before decode_frames was public.
_decode_frames = decode_frames


def _gather_index(
    p: ParsedFrames, rows: npt.NDArray[np.int64], width: int
) -> npt.NDArray[np.int64]:
    """Source column in `p.data` for every output byte, -1 for zero."""
    j = np.arange(width, dtype=np.int64)[None, :]
    ip_off = p.ip_off[rows, None]
    l4_off = p.l4_off[rows, None]
    pay_off = p.payload_off[rows, None]
    end = np.minimum(p.ip_end[rows], p.length[rows])[:, None]
    ip_hdr = l4_off - ip_off

    in_ip = j < IP_REGION
    src = np.where(in_ip & (j < ip_hdr), ip_off + j, -1)

    jt = j - IP_REGION
    l4_hdr = pay_off - l4_off
    in_l4 = (jt >= 0) & (jt < TRANSPORT_REGION) & (jt < l4_hdr)
    src = np.where(in_l4, l4_off + jt, src)

    jp = j - PAYLOAD_START
    in_pay = jp >= 0
    src = np.where(in_pay, pay_off + jp, src)

    return np.where(src < end, src, -1)


def _tcp_option_values(
    out: npt.NDArray[np.uint8], tcp: npt.NDArray[np.bool_], mode: str
) -> npt.NDArray[np.bool_]:
    """Mask `(N, 40)` of the option value bytes that `mode` zeroes.

    The options are walked in step over the whole batch; a walk stops at
    end-of-options, at the header's end, or at a length byte below 2 (a
    malformed option, whose remaining bytes are left as they are).
    """
    n = out.shape[0]
    start = IP_REGION + 20
    region = out[:, start : start + _TCP_OPTIONS_MAX].astype(np.int64)
    end = np.where(tcp, (out[:, IP_REGION + 12].astype(np.int64) >> 4) * 4 - 20, 0)
    end = np.clip(end, 0, _TCP_OPTIONS_MAX)
    cols = np.arange(_TCP_OPTIONS_MAX)[None, :]
    mask = np.zeros((n, _TCP_OPTIONS_MAX), dtype=bool)
    pos = np.zeros(n, dtype=np.int64)
    live = pos < end
    rows = np.arange(n)
    for _ in range(_TCP_OPTIONS_MAX):
        if not live.any():
            break
        kind = region[rows, np.minimum(pos, _TCP_OPTIONS_MAX - 1)]
        nop = live & (kind == _TCP_OPT_NOP)
        live &= kind != _TCP_OPT_EOL
        size = region[rows, np.minimum(pos + 1, _TCP_OPTIONS_MAX - 1)]
        sized = live & ~nop & (pos + 1 < end) & (size >= 2)
        if mode == "seq_ack_options":
            chosen = sized
        else:
            chosen = sized & np.isin(kind, (_TCP_OPT_SACK, _TCP_OPT_TIMESTAMP))
        value_end = np.minimum(pos + size, end)[:, None]
        mask |= chosen[:, None] & (cols >= pos[:, None] + 2) & (cols < value_end)
        pos = np.where(nop, pos + 1, np.where(sized, pos + size, end))
        live &= pos < end

    return mask


def _zero_tcp_random(
    out: npt.NDArray[np.uint8], tcp: npt.NDArray[np.bool_], mode: str
) -> None:
    """Zero the per-connection random TCP fields that `mode` names."""
    if mode == "kept" or not tcp.any():
        return

    out[np.ix_(tcp, np.arange(IP_REGION + 4, IP_REGION + 12))] = 0
    if mode == "seq_ack":
        return

    mask = _tcp_option_values(out, tcp, mode)
    start = IP_REGION + 20
    options = out[:, start : start + _TCP_OPTIONS_MAX]
    options[mask] = 0


def _zero_fields(
    out: npt.NDArray[np.uint8],
    p: ParsedFrames,
    rows: npt.NDArray[np.int64],
    *,
    neutralise: bool,
    tcp_random: str = "kept",
) -> None:
    """Zero addresses (always), capture-identifying and random fields."""
    v4 = p.version[rows] == 4
    v6 = ~v4
    out[np.ix_(v4, np.arange(12, 20))] = 0
    out[np.ix_(v6, np.arange(8, 40))] = 0
    _zero_tcp_random(out, p.proto[rows] == _TCP, tcp_random)
    if not neutralise:
        return

    out[np.ix_(v4, [4, 5, 8, 10, 11])] = 0
    out[v6, 1] &= 0xF0
    out[np.ix_(v6, [2, 3, 7])] = 0
    tcp = p.proto[rows] == _TCP
    out[np.ix_(tcp, [IP_REGION + 16, IP_REGION + 17])] = 0
    udp = p.proto[rows] == _UDP
    out[np.ix_(udp, [IP_REGION + 6, IP_REGION + 7])] = 0


def frame_features(
    frames: Sequence[bytes],
    link_types: Sequence[str] | str,
    cfg: PacketFeatureConfig,
    *,
    chunk: int = 4096,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Features of raw frames: (X, keep_mask).

    Args:
        frames: captured frames from the link-layer header on.
        link_types: one link-type name per frame, or one for all.
        cfg: the feature schema.
        chunk: frames gathered at a time (bounds the index matrix memory).

    Returns:
        X: (K, input_len) float32 in [0, 1], one row per eligible frame.
        keep_mask: (N,) bool, True for the frames that became rows of X.
    """
    p = parse_frames(frames, link_types)
    keep = p.eligible()
    rows_all = np.flatnonzero(keep)
    x = np.empty((rows_all.size, cfg.input_len), dtype=np.float32)
    for start in range(0, rows_all.size, chunk):
        rows = rows_all[start : start + chunk]
        src = _gather_index(p, rows, cfg.input_len)
        raw = p.data[rows[:, None], np.maximum(src, 0)]
        raw[src < 0] = 0
        _zero_fields(raw, p, rows, neutralise=cfg.neutralise, tcp_random=cfg.tcp_random)
        x[start : start + rows.size] = raw.astype(np.float32) / np.float32(255.0)

    return x, keep


def packet_features(
    records: pa.Table | pa.RecordBatch, cfg: PacketFeatureConfig
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Features of packet-log records (ours or from `sample_pcap`).

    Args:
        records: needs `frame` (base64 string or binary) and `link_type`;
            a record with an unset frame is not eligible.
        cfg: the feature schema.

    Returns:
        X: (K, input_len) float32 in [0, 1], one row per eligible record.
        keep_mask: (N,) bool, True for the records that became rows of X;
            the others are counted by the caller, never silently lost.

    Raises:
        LogFormatError: `frame` or `link_type` is missing, or a frame is
            not base64, or a link type is unknown.
    """
    names = records.schema.names
    for needed in ("frame", "link_type"):
        if needed not in names:
            raise LogFormatError(
                f"packet records lack the {needed!r} field (have {names}); "
                "they must come from the bflow packet log or sample_pcap"
            )
    frames = decode_frames(records.column("frame"))
    links = [v or LINK_UNKNOWN for v in records.column("link_type").to_pylist()]

    return frame_features(frames, links, cfg)
