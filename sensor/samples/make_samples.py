"""Rebuild the bundled sample logs from the real data in `shared/data`.

Run from the repository root: `python -m sensor.samples.make_samples`.
It is not used at run time. For each capture it copies Zeek 8.2.2's own
conn.log (from `data/zeek-generated/`) and writes the packet log our Zeek
script would have written for the capture: the records come from
`model.features.pcap.sample_pcap`, and each gets the uid of the conn.log
record of its connection (same 5-tuple, packet time inside the
connection's time span), so the two logs join the way Zeek's would.
"""

import base64
import os
import shutil
import sys
from pathlib import Path

from sensor.contract import PACKET_LOG_FIELDS, PACKET_LOG_PATH

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("BFLOW_SHARED", HERE.parents[2] / "shared"))
DATA = SHARED / "data"

# name -> capture under data/ ; the conn.log is in data/zeek-generated/.
SAMPLES = {
    "benign-wikipedia": "zeek-btest/Traces/wikipedia.pcap",
    "attack-wannacry": "malcolm-pcap/pcaps/plugins/zeek-EternalSafety/wannacry.pcap",
}
# name -> lab run under data/lab/; only Zeek's conn.log is bundled (the
# run's packet log would be megabytes).
CONN_ONLY = {"lab-mixed-1": "lab/mixed-1/zeek/conn.log"}
OPEN_STAMP = "2026-12-04-00-00-00"


def _conn_spans(
    conn_log: Path,
) -> dict[tuple[str, ...], list[tuple[float, float, str]]]:
    """(proto, orig_h, orig_p, resp_h, resp_p) -> [(start, end, uid)]."""
    names: list[str] = []
    spans: dict[tuple[str, ...], list[tuple[float, float, str]]] = {}
    for line in conn_log.read_text().splitlines():
        if line.startswith("#fields"):
            names = line.split("\t")[1:]
            continue
        if line.startswith("#") or not line:
            continue
        record = dict(zip(names, line.split("\t"), strict=True))
        start = float(record["ts"])
        duration = record["duration"]
        end = start + (float(duration) if duration != "-" else 0.0)
        key = (
            record["proto"],
            record["id.orig_h"],
            record["id.orig_p"],
            record["id.resp_h"],
            record["id.resp_p"],
        )
        spans.setdefault(key, []).append((start, end, record["uid"]))

    return spans


def _packet_log(capture: Path, conn_log: Path, out: Path) -> int:
    from model.features.pcap import sample_pcap

    table = sample_pcap(capture).to_pylist()
    spans = _conn_spans(conn_log)
    types = {"tcp": 6, "udp": 17}
    lines = [
        "#separator \\x09",
        "#set_separator\t,",
        "#empty_field\t(empty)",
        "#unset_field\t-",
        f"#path\t{PACKET_LOG_PATH}",
        f"#open\t{OPEN_STAMP}",
        "#fields\t" + "\t".join(f.name for f in PACKET_LOG_FIELDS),
        "#types\t" + "\t".join(f.zeek_type for f in PACKET_LOG_FIELDS),
    ]
    written = 0
    for r in table:
        uid = None
        for proto in types:
            key = (
                proto,
                r["id.orig_h"],
                str(r["id.orig_p"]),
                r["id.resp_h"],
                str(r["id.resp_p"]),
            )
            for start, end, conn_uid in spans.get(key, []):
                if start - 1e-6 <= r["ts"] <= end + 1e-6:
                    uid = conn_uid
        if uid is None:
            continue
        values = [
            f"{r['ts']:.6f}",
            uid,
            r["id.orig_h"],
            str(r["id.orig_p"]),
            r["id.resp_h"],
            str(r["id.resp_p"]),
            "T" if r["is_orig"] else "F",
            str(r["pkt_index"]),
            r["link_type"],
            str(r["wire_len"]),
            base64.b64encode(r["frame"]).decode(),
        ]
        lines.append("\t".join(values))
        written += 1
    lines.append(f"#close\t{OPEN_STAMP}")
    out.write_text("\n".join(lines) + "\n")

    return written


def main() -> int:
    """Write `<name>/conn.log` and `<name>/bflow_packet.log` for each sample."""
    for name, capture in SAMPLES.items():
        target = HERE / name
        target.mkdir(exist_ok=True)
        generated = DATA / "zeek-generated" / Path(capture).with_suffix("")
        shutil.copyfile(generated / "conn.log", target / "conn.log")
        n = _packet_log(
            DATA / capture, generated / "conn.log", target / "bflow_packet.log"
        )
        sys.stdout.write(f"{name}: {n} packet records\n")
    for name, conn_log in CONN_ONLY.items():
        (HERE / name).mkdir(exist_ok=True)
        shutil.copyfile(DATA / conn_log, HERE / name / "conn.log")
        sys.stdout.write(f"{name}: conn.log only\n")

    return 0


if __name__ == "__main__":
    sys.exit(main())
