"""Packet features: byte layout, zeroed addresses, eligibility, sources."""

import base64
import struct

import numpy as np
import pyarrow as pa
import pytest

from model.features.packet import (
    PAYLOAD_START,
    PacketFeatureConfig,
    frame_features,
    packet_features,
)
from model.features.pcap import sample_pcap
from sensor.contract import PACKET_LOG_FIELDS, PACKETS_PER_DIRECTION
from sensor.errors import ConfigError, LogFormatError

SRC4 = bytes([10, 1, 2, 3])
DST4 = bytes([192, 0, 2, 99])
SRC6 = bytes(range(1, 17))
DST6 = bytes(range(17, 33))
MAC = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"


def tcp(sport: int, dport: int, flags: int, options: bytes, payload: bytes) -> bytes:
    doff = (20 + len(options)) // 4
    head = struct.pack(
        "!HHIIBBHHH", sport, dport, 1000, 2000, doff << 4, flags, 65535, 0xBEEF, 0
    )
    return head + options + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0xCAFE) + payload


def ipv4(proto: int, l4: bytes, options: bytes = b"", frag: int = 0) -> bytes:
    ihl = (20 + len(options)) // 4
    total = ihl * 4 + len(l4)
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0x1234, frag, 61, proto, 0xABCD,
        SRC4, DST4,
    )  # fmt: skip
    return head + options + l4


def ipv6(next_header: int, l4: bytes, ext: bytes = b"") -> bytes:
    head = struct.pack(
        "!IHBB16s16s", (6 << 28) | 0xABCDE, len(ext) + len(l4), next_header, 57,
        SRC6, DST6,
    )  # fmt: skip
    return head + ext + l4


def ether(packet: bytes, ethertype: int, vlans: tuple[int, ...] = ()) -> bytes:
    tags = b"".join(struct.pack("!HH", tpid, 7) for tpid in vlans)
    return MAC + tags + struct.pack("!H", ethertype) + packet


def sll(packet: bytes, ethertype: int) -> bytes:
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, ethertype) + packet


def sll2(packet: bytes, ethertype: int) -> bytes:
    return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, 0, 6, b"\x02" * 8) + packet


def expected(ip_part: bytes, l4_part: bytes, payload: bytes, length: int) -> bytes:
    out = ip_part.ljust(60, b"\0") + l4_part.ljust(60, b"\0") + payload
    return out[:length].ljust(length, b"\0")


def as_bytes(x: np.ndarray) -> bytes:
    return bytes(np.rint(x * 255).astype(np.uint8))


TCP_OPTS = b"\x02\x04\x05\xb4\x01\x01\x04\x02"
PAYLOAD = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
KEEP = PacketFeatureConfig(input_len=200, neutralise=False, tcp_random="kept")


def test_ipv4_tcp_with_options_is_byte_exact() -> None:
    """An IPv4/TCP packet with IP and TCP options maps to the fixed layout."""
    ip_opts = b"\x94\x04\x00\x00"
    seg = tcp(40000, 80, 0x18, TCP_OPTS, PAYLOAD)
    frame = ether(ipv4(6, seg, ip_opts), 0x0800)

    x, keep = frame_features([frame], "LINK_ETHERNET", KEEP)

    ip_hdr = bytearray(ipv4(6, seg, ip_opts)[:24])
    ip_hdr[12:20] = bytes(8)
    want = expected(bytes(ip_hdr), seg[:28], PAYLOAD, 200)
    assert keep.tolist() == [True]
    assert x.dtype == np.float32 and x.shape == (1, 200)
    assert as_bytes(x[0]) == want


def test_ipv4_udp_header_padded_to_tcp_size() -> None:
    """A UDP header is zero-padded so its payload starts where TCP's does."""
    dgram = udp(5000, 6000, b"hello udp")
    x, keep = frame_features([ipv4(17, dgram)], "LINK_RAW", KEEP)

    ip_hdr = bytearray(ipv4(17, dgram)[:20])
    ip_hdr[12:20] = bytes(8)
    assert keep.tolist() == [True]
    assert as_bytes(x[0]) == expected(bytes(ip_hdr), dgram[:8], b"hello udp", 200)


def test_ipv6_tcp_keeps_layout_and_zeroes_addresses() -> None:
    """IPv6: fixed header with zeroed addresses, extension headers after it."""
    seg = tcp(443, 50000, 0x18, b"", b"\x17\x03\x03payload")
    hop_by_hop = bytes([6, 0]) + bytes(6)
    packet = ipv6(0, seg, hop_by_hop)

    x, keep = frame_features([ether(packet, 0x86DD)], "LINK_ETHERNET", KEEP)

    ip_hdr = packet[:8] + bytes(32) + hop_by_hop
    assert keep.tolist() == [True]
    assert as_bytes(x[0]) == expected(ip_hdr, seg[:20], seg[20:], 200)


@pytest.mark.parametrize(
    ("wrap", "link"),
    [
        (lambda p, t: ether(p, t, (0x8100,)), "LINK_ETHERNET"),
        (lambda p, t: ether(p, t, (0x88A8, 0x8100)), "LINK_ETHERNET"),
        (sll, "LINK_SLL"),
        (sll2, "LINK_SLL2"),
        (lambda p, t: p, "LINK_RAW"),
        (lambda p, t: ether(p, t), "LINK_UNKNOWN"),
    ],
)
def test_link_layers_are_stripped(wrap, link) -> None:  # type: ignore[no-untyped-def]
    """VLAN, QinQ, Linux cooked (v1, v2) and raw frames give the same sample."""
    packet = ipv4(6, tcp(1234, 8080, 0x18, TCP_OPTS, PAYLOAD))
    reference, _ = frame_features([packet], "LINK_RAW", KEEP)

    x, keep = frame_features([wrap(packet, 0x0800)], link, KEEP)

    assert keep.tolist() == [True]
    assert as_bytes(x[0]) == as_bytes(reference[0])


def test_addresses_zeroed_and_neutralised_fields() -> None:
    """Addresses are always zero; TTL, IP ID and checksums only when neutralised."""
    v4 = ipv4(6, tcp(1, 2, 0x18, b"", b"x" * 10))
    v6 = ipv6(17, udp(3, 4, b"y" * 10))
    frames = [v4, v6]

    kept, _ = frame_features(frames, "LINK_RAW", KEEP)
    neutral, _ = frame_features(frames, "LINK_RAW", PacketFeatureConfig(200, True))

    k4, k6 = as_bytes(kept[0]), as_bytes(kept[1])
    assert SRC4 not in k4 and DST4 not in k4 and k4[12:20] == bytes(8)
    assert k6[8:40] == bytes(32)
    assert k4[8] == 61 and k4[4:6] == b"\x12\x34" and k4[10:12] == b"\xab\xcd"
    assert k4[76:78] == b"\xbe\xef" and k6[7] == 57 and k6[66:68] == b"\xca\xfe"

    n4, n6 = as_bytes(neutral[0]), as_bytes(neutral[1])
    assert n4[8] == 0 and n4[4:6] == bytes(2) and n4[10:12] == bytes(2)
    assert n4[76:78] == bytes(2)
    assert n6[7] == 0 and n6[1] & 0x0F == 0 and n6[2:4] == bytes(2)
    assert n6[66:68] == bytes(2)
    assert n4[PAYLOAD_START:130] == b"x" * 10


# MSS, NOP, NOP, timestamps (TSval, TSecr), SACK with one block, window
# scale, end of options: 32 bytes, so the TCP header is 52 bytes.
RANDOM_OPTS = (
    b"\x02\x04\x05\xb4" + b"\x01\x01\x08\x0a" + b"\xaa" * 8
    + b"\x05\x0a" + b"\xbb" * 8 + b"\x03\x03\x07" + b"\x00" * 3
)  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "zeroed"),
    [
        ("kept", set()),
        ("seq_ack", set(range(4, 12))),
        ("seq_ack_ts", set(range(4, 12)) | set(range(28, 36)) | set(range(38, 46))),
        (
            "seq_ack_options",
            set(range(4, 12))
            | {22, 23}
            | set(range(28, 36))
            | set(range(38, 46))
            | {48},
        ),
    ],
)
def test_tcp_random_fields_zeroed_by_mode(mode: str, zeroed: set[int]) -> None:
    """tcp_random zeroes seq/ack and the chosen option values, never kinds."""
    seg = tcp(40000, 443, 0x18, RANDOM_OPTS, b"\x16\x03\x01")
    cfg = PacketFeatureConfig(input_len=128, neutralise=False, tcp_random=mode)

    x, _ = frame_features([ipv4(6, seg)], "LINK_RAW", cfg)

    got = as_bytes(x[0])[60:112]
    for i in range(52):
        want = 0 if i in zeroed else seg[i]
        assert got[i] == want, f"TCP header byte {i} with tcp_random={mode}"
    assert as_bytes(x[0])[120:123] == b"\x16\x03\x01"


def test_tcp_random_leaves_udp_and_stops_at_bad_option() -> None:
    """UDP is untouched; a zero option length ends the walk without a crash."""
    dgram = udp(5000, 6000, bytes(range(1, 12)))
    bad = tcp(1, 2, 0x18, b"\x08\x00" + b"\xcc" * 10, b"x")
    cfg = PacketFeatureConfig(input_len=128, neutralise=False)

    x, keep = frame_features([ipv4(17, dgram), ipv4(6, bad)], "LINK_RAW", cfg)

    assert keep.tolist() == [True, True]
    assert as_bytes(x[0])[60:68] == dgram[:8]
    assert as_bytes(x[1])[80:92] == b"\x08\x00" + b"\xcc" * 10


def test_eligibility_drops_control_dns_and_non_ip() -> None:
    """Payload-less TCP control packets, DNS, ARP, ICMP and fragments are dropped."""
    frames = [
        ether(ipv4(6, tcp(1, 80, 0x02, TCP_OPTS, b"")), 0x0800),  # SYN
        ether(ipv4(6, tcp(80, 1, 0x12, b"", b"")), 0x0800),  # SYN/ACK
        ether(ipv4(6, tcp(1, 80, 0x10, b"", b"")), 0x0800),  # ACK
        ether(ipv4(6, tcp(1, 80, 0x11, b"", b"")), 0x0800),  # FIN
        ether(ipv4(6, tcp(1, 80, 0x04, b"", b"")), 0x0800),  # RST
        ether(ipv4(17, udp(5353, 53, b"query")), 0x0800),  # DNS
        ether(ipv4(6, tcp(53, 999, 0x18, b"", b"zone")), 0x0800),  # DNS/TCP
        ether(b"\x00\x01\x08\x00\x06\x04\x00\x01" + bytes(20), 0x0806),  # ARP
        ether(ipv4(1, b"\x08\x00\x00\x00\x00\x01\x00\x01ping"), 0x0800),  # ICMP
        ether(ipv4(17, b"tail of a fragment", frag=0x0010), 0x0800),
        ether(ipv4(6, tcp(1, 80, 0x18, b"", b"data")), 0x0800),  # kept
        # Ethernet padding after a payload-less ACK is not payload.
        ether(ipv4(6, tcp(1, 80, 0x10, b"", b"")) + bytes(6), 0x0800),
    ]

    _, keep = frame_features(frames, "LINK_ETHERNET", KEEP)

    assert keep.tolist() == [False] * 10 + [True, False]


def test_long_payload_is_cut_and_short_is_padded() -> None:
    """Samples are cut or zero-padded to input_len, whatever the packet size."""
    long_pkt = ipv4(17, udp(1, 2, bytes(range(256)) * 4))
    short_pkt = ipv4(17, udp(1, 2, b"z"))
    cfg = PacketFeatureConfig(input_len=128, neutralise=True)

    x, _ = frame_features([long_pkt, short_pkt], "LINK_RAW", cfg)

    assert x.shape == (2, 128)
    assert as_bytes(x[0])[120:] == bytes(range(8))
    assert as_bytes(x[1])[120:] == b"z" + bytes(7)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_config_round_trip_and_validation() -> None:
    """The feature schema survives to_dict/from_dict; bad values are refused."""
    cfg = PacketFeatureConfig(input_len=300, neutralise=False)
    assert PacketFeatureConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="input_len"):
        PacketFeatureConfig(input_len=64)
    with pytest.raises(ConfigError, match="kind"):
        PacketFeatureConfig.from_dict({"kind": "flow"})
    with pytest.raises(ConfigError, match="tcp_random='sequence'"):
        PacketFeatureConfig(tcp_random="sequence")


def test_schema_without_tcp_random_loads_as_kept() -> None:
    """A feature schema from before tcp_random rebuilds the features it had."""
    old = PacketFeatureConfig().to_dict()
    del old["tcp_random"]

    assert PacketFeatureConfig.from_dict(old).tcp_random == "kept"


def test_bad_frame_and_link_type_are_clear_errors() -> None:
    """A frame that is not base64 or an unknown link type raises LogFormatError."""
    bad_b64 = pa.table({"frame": ["@@not base64@@"], "link_type": ["LINK_RAW"]})
    with pytest.raises(LogFormatError, match="base64"):
        packet_features(bad_b64, KEEP)
    bad_link = pa.table({"frame": [b"\x45"], "link_type": ["LINK_TOKENRING"]})
    with pytest.raises(LogFormatError, match="LINK_TOKENRING"):
        packet_features(bad_link, KEEP)


def test_pcap_and_packet_log_records_give_same_features(data_dir) -> None:  # type: ignore[no-untyped-def]
    """A pcap read directly equals its packet-log form with base64 frames."""
    table = sample_pcap(data_dir / "zeek-btest/Traces/wikipedia.pcap")
    assert table.num_rows > 0
    assert [f.name for f in PACKET_LOG_FIELDS] == table.schema.names

    b64 = [base64.b64encode(f).decode() for f in table.column("frame").to_pylist()]
    as_log = table.set_column(
        table.schema.get_field_index("frame"), "frame", pa.array(b64, pa.string())
    )

    x_pcap, keep_pcap = packet_features(table, PacketFeatureConfig())
    x_log, keep_log = packet_features(as_log, PacketFeatureConfig())

    assert keep_pcap.all() and keep_log.all()
    assert np.array_equal(x_pcap, x_log)


def test_sampling_rule_per_direction(data_dir) -> None:  # type: ignore[no-untyped-def]
    """At most PACKETS_PER_DIRECTION records per direction, indexed from 0."""
    table = sample_pcap(data_dir / "lab/benign-2/benign-2.pcap").to_pandas()

    per_side = table.groupby(["uid", "is_orig"])["pkt_index"]
    assert per_side.size().max() == PACKETS_PER_DIRECTION
    assert (per_side.min() == 0).all()
    assert (per_side.max() + 1 == per_side.size()).all()
    assert not ((table["id.orig_p"] == 53) | (table["id.resp_p"] == 53)).any()


def test_originator_agrees_with_zeek_conn_log(data_dir) -> None:  # type: ignore[no-untyped-def]
    """Each sampled packet's originator is the one Zeek logged for its connection."""
    import ipaddress

    from model.datasets import LabelIndex, read_labels
    from model.features.packet import parse_frames

    pcap = "lab/mixed-2/mixed-2.pcap"
    labels = read_labels(data_dir / "lab/labels/connections.tsv")
    index = LabelIndex(r for r in labels if r.pcap == pcap)
    table = sample_pcap(data_dir / pcap)
    parsed = parse_frames(
        table.column("frame").to_pylist(), table.column("link_type").to_pylist()
    )
    ts_us = np.rint(table.column("ts").to_numpy() * 1e6).astype(np.int64) + 1
    orig_h = table.column("id.orig_h").to_pylist()
    orig_p = table.column("id.orig_p").to_pylist()

    for i in range(table.num_rows):
        src, dst = parsed.addresses(i)
        a, b = (src, int(parsed.sport[i])), (dst, int(parsed.dport[i]))
        row = index.labels[index.find(pcap, int(parsed.proto[i]), a, b, int(ts_us[i]))]
        assert ipaddress.ip_address(row.orig_h) == ipaddress.ip_address(orig_h[i])
        assert row.orig_p == orig_p[i]
