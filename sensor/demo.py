"""`bflow demo`: the daemon on the bundled real logs and the default models.

It needs nothing but the installed package: it makes a temporary Zeek log
directory, writes the sample logs of `sensor/samples/` into it the way Zeek
would (a benign capture first, then one with an attack, rotating the logs
in between), runs the daemon over it with the models embedded in
`sensor/default_models/`, stops once the samples are consumed, and prints
the notices raised and where the notice log is.
"""

import argparse
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import structlog

from sensor.config import Config
from sensor.contract import NOTICE_LOG_FIELDS

HERE = Path(__file__).resolve().parent
SAMPLES = HERE / "samples"
DEFAULT_MODELS = HERE / "default_models"
# The order the demo plays them in: benign traffic, then attacks.
SAMPLE_SETS = ("benign-wikipedia", "attack-wannacry", "lab-mixed-1")
# Notices listed one per line; the rest are counted (all are in the log).
TABLE_ROWS = 20
LOG_FILES = ("conn.log", "bflow_packet.log")


def _feed(log_dir: Path, *, pause: float, stop: threading.Event) -> None:
    """Write each sample set as one Zeek log file, then rotate it away."""
    for number, name in enumerate(SAMPLE_SETS):
        stamp = f"2026-12-04-{10 + number:02d}-00-00"
        # A sample set without a packet log feeds conn.log only.
        blobs = {
            f: (SAMPLES / name / f).read_bytes()
            for f in LOG_FILES
            if (SAMPLES / name / f).exists()
        }
        for step in range(4):
            for file_name, blob in blobs.items():
                lo, hi = len(blob) * step // 4, len(blob) * (step + 1) // 4
                with open(log_dir / file_name, "ab") as handle:
                    handle.write(blob[lo:hi])
            if stop.wait(pause):
                return
        for file_name in blobs:
            base = file_name.removesuffix(".log")
            os.rename(log_dir / file_name, log_dir / f"{base}.{stamp}.log")


def _quiet_events() -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
    )


def _end(host: object, port: object) -> str:
    """`host:port/proto` from a decoded notice (port is (number, proto))."""
    if isinstance(port, tuple):
        return f"{host}:{port[0]}/{port[1]}"

    return f"{host}:{port}"


def _sample_of_uid() -> dict[str, str]:
    """Which sample set each conn.log uid belongs to."""
    from sensor.reader import read_log

    owner: dict[str, str] = {}
    for name in SAMPLE_SETS:
        for batch in read_log(SAMPLES / name / "conn.log"):
            for uid in batch.records.column("uid").to_pylist():
                owner[str(uid)] = name

    return owner


def _table(rows: list[dict[str, object]], owner: dict[str, str]) -> str:
    columns = ("sample", "kind", "score", "threshold", "uid", "connection")
    cells = [
        (
            owner.get(str(r["uid"]), "?"),
            str(r["kind"]),
            f"{float(str(r['score'])):.3f}",
            f"{float(str(r['threshold'])):.3f}",
            str(r["uid"]),
            f"{_end(r['id.orig_h'], r['id.orig_p'])} -> "
            f"{_end(r['id.resp_h'], r['id.resp_p'])}",
        )
        for r in rows
    ]
    widths = [
        max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    ]

    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str]) -> int:
    """Entry point of `bflow demo`."""
    parser = argparse.ArgumentParser(
        prog="bflow demo",
        description="Run the daemon over the bundled real Zeek logs and print "
        "the notices it raises.",
    )
    parser.add_argument(
        "--dir", type=Path, help="work here instead of a new temporary directory"
    )
    parser.add_argument(
        "--duration", type=float, default=120.0, help="stop after this many seconds"
    )
    parser.add_argument(
        "--pause", type=float, default=0.3, help="seconds between log appends"
    )
    parser.add_argument(
        "--events", action="store_true", help="show the daemon's log events"
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=DEFAULT_MODELS,
        help="folder holding flow.pt and/or packet.pt (default: the embedded ones)",
    )
    args = parser.parse_args(argv)

    models = {k: args.models / f"{k}.pt" for k in ("flow", "packet")}
    present = {k: p for k, p in models.items() if p.is_file()}
    if not present:
        print(
            "bflow demo: no models to score with: "
            f"{models['flow']} and {models['packet']} do not exist.\n"
            "The embedded defaults are trained on the benign sample traffic "
            "and shipped in sensor/default_models/; this copy of bflow has "
            "none yet. Give a folder with flow.pt or packet.pt (from "
            "`bflow train`) as --models."
        )
        return 1
    for kind in sorted(set(models) - set(present)):
        print(f"bflow demo: no {kind} model ({models[kind]}); {kind} scoring is off")

    work = args.dir or Path(tempfile.mkdtemp(prefix="bflow-demo-"))
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    config = Config(
        log_dir=log_dir,
        state_dir=work / "state",
        notice_dir=work / "notices",
        flow_model=present.get("flow"),
        packet_model=present.get("packet"),
        batch_size=256,
        poll_interval=0.2,
        finish_grace=0.5,
        summary_interval=3600.0,
        model_check_interval=0.0,
        duration=args.duration,
        stop_when_idle=max(3.0, 4 * args.pause),
    )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    config.notice_dir.mkdir(parents=True, exist_ok=True)
    if not args.events:
        _quiet_events()

    from sensor.daemon import Daemon

    print(f"bflow demo: writing the sample logs into {log_dir}")
    daemon = Daemon(config)
    stop = threading.Event()
    feeder = threading.Thread(
        target=_feed, args=(log_dir,), kwargs={"pause": args.pause, "stop": stop}
    )
    started = time.monotonic()
    feeder.start()
    try:
        code = daemon.run()
    finally:
        stop.set()
        feeder.join()

    from sensor.contract import NOTICE_KINDS
    from sensor.notice import read_notices

    rows: list[dict[str, object]] = []
    if config.notice_log.exists():
        rows = [r for r in read_notices(config.notice_log) if r["kind"] in NOTICE_KINDS]
    m = daemon.metrics
    owner = _sample_of_uid()
    print(
        f"bflow demo: scored {m.scored.get('conn', 0)} conn.log records and "
        f"{m.scored.get('bflow_packet', 0)} packet-log records in "
        f"{time.monotonic() - started:.1f} s"
    )
    for name in SAMPLE_SETS:
        conns = sum(1 for v in owner.values() if v == name)
        raised = sum(1 for r in rows if owner.get(str(r["uid"])) == name)
        print(f"  {name:<18} {conns:>4} connections  {raised:>3} notice(s)")
    print(
        "A notice means a connection's score (higher = more anomalous, on the\n"
        "model's own scale) reached the threshold calibrated on benign traffic.\n"
        "The default models are small and trained on public benign captures\n"
        "only; retrain on your own traffic. docs/DETECTION.md says how well\n"
        "the model detects on labeled data."
    )
    if rows:
        shown = sorted(rows, key=lambda r: -float(str(r["score"])))[:TABLE_ROWS]
        print()
        print(_table(shown, owner))
        if len(rows) > len(shown):
            print(f"... and {len(rows) - len(shown)} more (highest scores shown)")
        print()
    names = ", ".join(f.name for f in NOTICE_LOG_FIELDS)
    print(f"notice log: {config.notice_log}\n  (Zeek TSV; fields: {names})")

    return code
