"""Labeled data for the detection benchmarks: label joins and splits.

Packets come from `sample_pcap`, so they are sampled by the product's own
rule. A packet takes the label of its connection in a `connections.tsv`
(pcap, first_ts in microseconds, proto, 5-tuple): the row with the same
protocol and the same two endpoints, in either order, whose first
timestamp is the latest one not after the packet. That is how the labels'
own packet counts were made, and it does not depend on which side our
connection tracking calls the originator.

Splits are by connection and seeded; `write_split` stores them as a file
list (one connection per line) so a run can be repeated elsewhere.
"""

from __future__ import annotations

import bisect
import csv
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import structlog

from model.calibrate import packet_slots
from model.features.packet import parse_frames
from model.features.pcap import sample_pcap
from sensor.errors import ConfigError

log = structlog.get_logger(__name__)

_PROTO_NUMBER: Final = {"tcp": 6, "udp": 17, "icmp": 1}
BENIGN: Final = "benign"
ATTACK: Final = "attack"
BACKGROUND: Final = "background"


@dataclass(frozen=True)
class ConnLabel:
    """One labeled connection of a capture."""

    pcap: str
    first_ts_us: int
    proto: str
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    label: str
    family: str

    @property
    def key(self) -> str:
        """A stable text identity, used in split file lists."""
        return (
            f"{self.pcap}\t{self.first_ts_us}\t{self.proto}\t{self.orig_h}\t"
            f"{self.orig_p}\t{self.resp_h}\t{self.resp_p}"
        )


def read_labels(path: str | Path) -> list[ConnLabel]:
    """Read a `connections.tsv` label file.

    Raises:
        ConfigError: the file lacks a column this module needs.
    """
    with Path(path).open(newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        need = {"pcap", "first_ts", "proto", "orig_h", "orig_p", "resp_h", "resp_p"}
        missing = need | {"label", "family"} - set(reader.fieldnames or ())
        missing -= set(reader.fieldnames or ())
        if missing:
            raise ConfigError(
                f"{path}: label file lacks columns {sorted(missing)}; expected "
                "the connections.tsv format of shared/data/labels"
            )

        return [
            ConnLabel(
                pcap=r["pcap"],
                first_ts_us=int(r["first_ts"]),
                proto=r["proto"],
                orig_h=r["orig_h"],
                orig_p=int(r["orig_p"]),
                resp_h=r["resp_h"],
                resp_p=int(r["resp_p"]),
                label=r["label"],
                family=r["family"] or "-",
            )
            for r in reader
        ]


def _endpoint(addr: str, port: int) -> tuple[bytes, int]:
    return ipaddress.ip_address(addr).packed, port


class LabelIndex:
    """Look up the labeled connection of a packet by endpoints and time."""

    def __init__(self, labels: Iterable[ConnLabel]) -> None:
        self._by_pair: dict[tuple[object, ...], tuple[list[int], list[int]]] = {}
        self.labels = list(labels)
        order = sorted(
            range(len(self.labels)), key=lambda i: self.labels[i].first_ts_us
        )
        for i in order:
            row = self.labels[i]
            proto = _PROTO_NUMBER.get(row.proto, -1)
            a = _endpoint(row.orig_h, row.orig_p)
            b = _endpoint(row.resp_h, row.resp_p)
            key = (row.pcap, proto, *sorted((a, b)))
            times, ids = self._by_pair.setdefault(key, ([], []))
            times.append(row.first_ts_us)
            ids.append(i)

    def find(
        self,
        pcap: str,
        proto: int,
        a: tuple[bytes, int],
        b: tuple[bytes, int],
        ts_us: int,
    ) -> int:
        """Index of the matching label row, or -1 when none matches."""
        entry = self._by_pair.get((pcap, proto, *sorted((a, b))))
        if entry is None:
            return -1
        times, ids = entry
        pos = bisect.bisect_right(times, ts_us) - 1

        return ids[pos] if pos >= 0 else -1


@dataclass
class PacketSet:
    """Sampled packets of many captures with their connection labels.

    `conn` indexes `labels` (-1: no labeled connection); `label` is the
    connection's label text ("benign", "attack", "background", or "" when
    unmatched); `slot` is the packet's `model.calibrate.packet_slots` slot
    (direction and index within its connection).
    """

    frames: list[bytes]
    link_types: list[str]
    pcap: npt.NDArray[np.str_]
    conn: npt.NDArray[np.int64]
    label: npt.NDArray[np.str_]
    family: npt.NDArray[np.str_]
    ttl: npt.NDArray[np.int64]
    wire_len: npt.NDArray[np.int64]
    labels: list[ConnLabel]
    slot: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    def subset(self, mask: npt.NDArray[np.bool_]) -> PacketSet:
        """The packets where `mask` is True."""
        idx = np.flatnonzero(mask)
        return PacketSet(
            frames=[self.frames[i] for i in idx],
            link_types=[self.link_types[i] for i in idx],
            pcap=self.pcap[idx],
            conn=self.conn[idx],
            label=self.label[idx],
            family=self.family[idx],
            ttl=self.ttl[idx],
            wire_len=self.wire_len[idx],
            labels=self.labels,
            slot=self.slot[idx] if self.slot.size else self.slot,
        )

    def __len__(self) -> int:
        return len(self.frames)


def _ttl(table: pa.Table) -> npt.NDArray[np.int64]:
    frames = table.column("frame").to_pylist()
    parsed = parse_frames(frames, table.column("link_type").to_pylist())
    off = parsed.ip_off
    rows = np.arange(len(frames))
    hop = np.where(parsed.version == 4, off + 8, off + 7)

    return parsed.data[rows, np.minimum(hop, parsed.data.shape[1] - 1)].astype(np.int64)


def packet_set(
    data_dir: Path, labels: Sequence[ConnLabel], pcaps: Iterable[str] | None = None
) -> PacketSet:
    """Sample every labeled capture and label its packets.

    Args:
        data_dir: `shared/data`; label `pcap` paths are relative to it.
        labels: rows of one or more `connections.tsv` files.
        pcaps: captures to use (default: every capture in `labels`).
    """
    index = LabelIndex(labels)
    chosen = sorted({r.pcap for r in labels} if pcaps is None else set(pcaps))
    frames: list[bytes] = []
    links: list[str] = []
    pcap_col: list[str] = []
    conn_col: list[int] = []
    ttl_parts: list[npt.NDArray[np.int64]] = []
    wire: list[int] = []
    slots: list[npt.NDArray[np.int64]] = []
    for rel in chosen:
        table = sample_pcap(data_dir / rel)
        if table.num_rows == 0:
            continue
        parsed = parse_frames(
            table.column("frame").to_pylist(), table.column("link_type").to_pylist()
        )
        ts_us = np.rint(table.column("ts").to_numpy() * 1e6).astype(np.int64)
        unmatched = 0
        for i in range(table.num_rows):
            src, dst = parsed.addresses(i)
            a = (src, int(parsed.sport[i]))
            b = (dst, int(parsed.dport[i]))
            # +1 us: Zeek may truncate a timestamp that rounding here lifts.
            found = index.find(rel, int(parsed.proto[i]), a, b, int(ts_us[i]) + 1)
            unmatched += found < 0
            conn_col.append(found)
        if unmatched:
            log.info(
                "labels.unmatched", pcap=rel, packets=int(unmatched), of=table.num_rows
            )
        frames += table.column("frame").to_pylist()
        links += table.column("link_type").to_pylist()
        pcap_col += [rel] * table.num_rows
        ttl_parts.append(_ttl(table))
        wire += table.column("wire_len").to_pylist()
        slots.append(
            packet_slots(
                table.column("is_orig").to_pylist(),
                table.column("pkt_index").to_pylist(),
            )
        )

    all_labels = list(index.labels)
    conn = np.array(conn_col, dtype=np.int64)
    label = np.array([all_labels[c].label if c >= 0 else "" for c in conn], dtype=str)
    family = np.array([all_labels[c].family if c >= 0 else "" for c in conn], dtype=str)

    return PacketSet(
        frames=frames,
        link_types=links,
        pcap=np.array(pcap_col, dtype=str),
        conn=conn,
        label=label,
        family=family,
        ttl=np.concatenate(ttl_parts) if ttl_parts else np.zeros(0, np.int64),
        wire_len=np.array(wire, dtype=np.int64),
        labels=all_labels,
        slot=np.concatenate(slots) if slots else np.zeros(0, np.int64),
    )


def split_ids(
    ids: npt.NDArray[np.int64], seed: int, fractions: tuple[float, float, float]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Shuffle unique ids with `seed` and cut them into train/val/test."""
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ConfigError(f"split fractions {fractions} must be >= 0 and sum to 1")
    unique = np.unique(ids)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(unique)
    n_train = int(round(fractions[0] * unique.size))
    n_val = int(round(fractions[1] * unique.size))

    return (
        np.sort(shuffled[:n_train]),
        np.sort(shuffled[n_train : n_train + n_val]),
        np.sort(shuffled[n_train + n_val :]),
    )


def write_split(
    path: Path, labels: Sequence[ConnLabel], parts: dict[str, npt.NDArray[np.int64]]
) -> None:
    """Write a split as a file list: split name, then the connection's key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fh.write("split\tpcap\tfirst_ts\tproto\torig_h\torig_p\tresp_h\tresp_p\n")
        for name, ids in parts.items():
            for i in ids:
                fh.write(f"{name}\t{labels[int(i)].key}\n")


# Captures that connections.tsv leaves out because they hold no eligible
# packet; labels/RULES.md gives every connection of each one label.
WHOLE_CAPTURE_LABELS: Final = {
    "chrissanders-packets/synscan.pcapng": (ATTACK, "portscan"),
    "esnet-curated-pcaps/attacks/scanners/masscan/tcp_0_1000_20190821.pcap": (
        ATTACK,
        "portscan",
    ),
    "esnet-curated-pcaps/attacks/scanners/nmap/nmap_80_vanilla.pcap": (
        ATTACK,
        "portscan",
    ),
    "malcolm-pcap/pcaps/plugins/SIGred/sigxploit.pcap": (ATTACK, "sigred"),
    "malcolm-pcap/pcaps/plugins/bro-simple-scan/445_scan.pcap": (ATTACK, "portscan"),
    "malcolm-pcap/pcaps/plugins/bro-simple-scan/port_scan.pcap": (ATTACK, "portscan"),
    "chrissanders-packets/arp_resolution.pcapng": (BENIGN, "-"),
    "chrissanders-packets/dns_axfr.pcapng": (BENIGN, "-"),
    "chrissanders-packets/dns_lab.pcapng": (BENIGN, "-"),
    "chrissanders-packets/dns_query_response.pcapng": (BENIGN, "-"),
    "chrissanders-packets/dns_tcp.pcapng": (BENIGN, "-"),
    "chrissanders-packets/passiveosfingerprinting.pcapng": (BENIGN, "-"),
    "chrissanders-packets/tcp_handshake.pcapng": (BENIGN, "-"),
    "zeek-btest/Traces/dns53.pcap": (BENIGN, "-"),
}


def zeek_log_dir(data_dir: Path, pcap: str) -> Path:
    """Folder of Zeek's logs for a capture in `zeek-generated/`."""
    stem = pcap
    for ext in (".gz", ".pcapng", ".pcap", ".trace"):
        stem = stem.removesuffix(ext)

    return data_dir / "zeek-generated" / stem


def read_conn_log(path: Path) -> pa.Table:
    """A whole conn.log as one table (through `sensor.reader`)."""
    from sensor.reader import read_log

    batches = [b.records for b in read_log(path)]
    if not batches:
        raise ConfigError(f"{path}: no conn.log records; is it an empty log?")

    return pa.Table.from_batches(batches)


def _text(table: pa.Table, name: str) -> list[str]:
    values = table.column(name).to_pylist()
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def conn_keys(table: pa.Table, pcap: str) -> list[str]:
    """The label key of each conn.log record (see `ConnLabel.key`)."""
    ts = table.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
    proto = _text(table, "proto")
    orig_h, resp_h = _text(table, "id.orig_h"), _text(table, "id.resp_h")
    orig_p = table.column("id.orig_p").to_pylist()
    resp_p = table.column("id.resp_p").to_pylist()

    return [
        f"{pcap}\t{t}\t{p}\t{oh}\t{op}\t{rh}\t{rp}"
        for t, p, oh, op, rh, rp in zip(
            ts, proto, orig_h, orig_p, resp_h, resp_p, strict=True
        )
    ]


@dataclass
class FlowSet:
    """conn.log records of many captures with their labels."""

    records: pa.Table
    pcap: npt.NDArray[np.str_]
    label: npt.NDArray[np.str_]
    family: npt.NDArray[np.str_]


def flow_set(
    data_dir: Path,
    labels: Sequence[ConnLabel],
    conn_log: dict[str, Path],
    *,
    whole_capture: dict[str, tuple[str, str]] | None = None,
) -> FlowSet:
    """Label the conn.log records of captures by exact key.

    Args:
        data_dir: `shared/data`.
        labels: label rows; a record with no row is labeled "" (counted).
        conn_log: capture (as named in the labels) -> its conn.log.
        whole_capture: captures whose every record takes one label.
    """
    by_key = {r.key: r for r in labels}
    whole = whole_capture or {}
    tables = []
    pcaps: list[str] = []
    label: list[str] = []
    family: list[str] = []
    for pcap, path in sorted(conn_log.items()):
        table = read_conn_log(path)
        keys = conn_keys(table, pcap)
        rows = [by_key.get(k) for k in keys]
        unmatched = sum(r is None for r in rows) if pcap not in whole else 0
        if unmatched:
            log.info("labels.unmatched", conn_log=str(path), records=unmatched)
        for r in rows:
            lab, fam = whole.get(pcap, ("", "")) if r is None else (r.label, r.family)
            label.append(lab)
            family.append(fam)
        pcaps += [pcap] * table.num_rows
        tables.append(table)
    records = pa.concat_tables(tables, promote_options="permissive")

    return FlowSet(
        records=records,
        pcap=np.array(pcaps, dtype=str),
        label=np.array(label, dtype=str),
        family=np.array(family, dtype=str),
    )
