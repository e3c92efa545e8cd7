"""Build the embedded default models shipped in `sensor/default_models/`.

`python -m model.defaults` trains a small flow model and a small packet model
with `bflow train` on the benign captures of the shared data set: every
capture whose connections `labels/connections.tsv` all calls benign (for the
flow model also the lab network's benign-only runs, whose conn.logs add
variety; its packets made the packet model flag nothing of the samples'
attack, so they are left out of that one). Nothing labeled attack or
background is used. The defaults are calibrated at a 1 % false-positive rate so that the
demo shows what notices look like; a site should retrain on its own traffic
(`bflow retrain`) before relying on them.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

from model.cli import train_main

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "sensor" / "default_models"
TARGET_FPR = 0.01
SEED = 0


def benign_captures(data: Path) -> list[Path]:
    """Captures whose every labeled connection is benign, in a stable order."""
    labels: dict[str, set[str]] = defaultdict(set)
    with (data / "labels" / "connections.tsv").open(newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            labels[row["pcap"]].add(row["label"])

    return [data / p for p in sorted(labels) if labels[p] == {"benign"}]


def zeek_conn_log(data: Path, capture: Path) -> Path:
    """The conn.log Zeek 8.2.2 wrote for a capture (`zeek-generated/`)."""
    relative = capture.relative_to(data)
    name = relative.name
    for suffix in (".gz", ".pcapng", ".pcap"):
        name = name.removesuffix(suffix)

    return data / "zeek-generated" / relative.parent / name / "conn.log"


def main(argv: list[str] | None = None) -> int:
    """Train both defaults into `--out` (default: the package's folder)."""
    parser = argparse.ArgumentParser(prog="python -m model.defaults")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--threads", default="1")
    parser.add_argument(
        "--only",
        choices=("flow", "packet"),
        help="rebuild one of the two models and leave the other file as it is",
    )
    args = parser.parse_args(argv)

    captures = benign_captures(args.data)
    conn_logs = [zeek_conn_log(args.data, c) for c in captures]
    conn_logs += sorted(args.data.glob("lab/benign-*/zeek/conn.log"))
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["--target-fpr", str(TARGET_FPR), "--seed", str(SEED)]
    common += ["--threads", args.threads]

    if args.only != "packet":
        code = train_main(
            ["--kind", "flow", "--out", str(args.out / "flow.pt"), *common, "--input"]
            + [str(p) for p in conn_logs]
        )
        if code or args.only == "flow":
            return code

    return train_main(
        ["--kind", "packet", "--out", str(args.out / "packet.pt"), *common]
        + ["--input"]
        + [str(p) for p in captures]
    )


if __name__ == "__main__":
    sys.exit(main())
