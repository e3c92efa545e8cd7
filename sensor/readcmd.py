"""`bflow read`: read Zeek logs and print their records or a summary.

A quick check that the reader understands a site's logs:

    bflow read conn.log                       # a table of the first records
    bflow read --format jsonl --limit 5 conn.log.gz
    bflow read --format summary logs/         # path, records, skipped, schema
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import sys
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from sensor.errors import LogFormatError
from sensor.reader import Batch, ReadStats, read_log

FORMATS = ("table", "jsonl", "summary")
TABLE_WIDTH = 24
# C0 controls, DEL and C1 controls (0x9b is a one-character CSI).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bflow read",
        description="Read Zeek logs (TSV or JSON, plain or gzip) and print "
        "their records.",
    )
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="Zeek log files; a folder means the *.log* files in it",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table of records (default), JSON lines, or a summary per file",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="print at most N records per file (table: 20 unless given)",
    )
    parser.add_argument(
        "--log-path",
        default=None,
        metavar="PATH",
        help="log path (e.g. conn) for files that do not name it (JSON)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=65536, help="records per batch"
    )
    return parser


def jsonable(value: Any) -> Any:
    """A record value as JSON: times in ISO-8601 UTC, intervals in seconds.

    Bytes that are UTF-8 become text; other bytes are written as
    `{"base64": ...}` so nothing is lost. JSON has no NaN or infinity, so a
    double holding one is written as Zeek writes it: "nan", "inf", "-inf".
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        micros = (value.days * 86_400 + value.seconds) * 1_000_000
        return (micros + value.microseconds) / 1_000_000
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [jsonable(item) for item in value]

    return value


def _cell(value: Any) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, list):
        text = "[" + ",".join(_cell(item) for item in value) + "]"
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
    else:
        rendered = jsonable(value)
        text = rendered if isinstance(rendered, str) else json.dumps(rendered)
    # Values come from traffic: a control character (ESC above all) must
    # never reach the terminal, where it could rewrite what is shown.
    text = _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)
    if len(text) > TABLE_WIDTH:
        text = text[: TABLE_WIDTH - 1] + "…"

    return text


def _records(batches: Iterable[Batch], limit: int | None) -> Iterable[dict[str, Any]]:
    shown = 0
    for batch in batches:
        for record in batch.records.to_pylist():
            if limit is not None and shown >= limit:
                return
            shown += 1
            yield record


def _print_table(
    path: str, batches: Iterable[Batch], limit: int | None, out: TextIO
) -> None:
    records = list(_records(batches, 20 if limit is None else limit))
    print(f"# {path}", file=out)
    if not records:
        print("(no records)", file=out)
        return
    names = list(records[0])
    rows = [[_cell(record.get(name)) for name in names] for record in records]
    widths = [
        max(len(name), *(len(row[i]) for row in rows)) for i, name in enumerate(names)
    ]
    print("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)), file=out)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)), file=out)


def _print_summary(path: str, batches: Iterable[Batch], stats: ReadStats) -> None:
    schema = None
    log_path = None
    fingerprints: list[str] = []
    for batch in batches:
        schema = batch.records.schema
        log_path = batch.log_path
        fingerprint = schema.metadata[b"zeek.fingerprint"].decode()
        if fingerprint not in fingerprints:
            fingerprints.append(fingerprint)
    summary = {
        "path": path,
        "log_path": log_path,
        **stats.as_dict(),
        "header_blocks": len(fingerprints),
        "schema": (
            {} if schema is None else {field.name: str(field.type) for field in schema}
        ),
    }
    print(json.dumps(summary), file=sys.stdout)


def _expand(paths: list[str]) -> list[str]:
    """Files as given; a folder stands for the `*.log*` files inside it."""
    files: list[str] = []
    for path in paths:
        if Path(path).is_dir():
            files += sorted(
                str(p)
                for p in Path(path).rglob("*.log*")
                if p.is_file() and not p.name.startswith(".")
            )
        else:
            files.append(path)

    return files


def main(argv: list[str]) -> int:
    """Run `bflow read`; exit 1 when a file could not be read.

    A reader that closes the pipe early (`bflow read conn.log | head -1`)
    raises BrokenPipeError out of here; `sensor.cli.main` ends the command
    quietly with status 141, as for every command.
    """
    args = _parser().parse_args(argv)
    if args.limit is not None and args.limit < 0:
        raise SystemExit("error: --limit must be 0 or more")
    if args.batch_size < 1:
        raise SystemExit("error: --batch-size must be 1 or more")

    return 1 if _print_files(args) else 0


def _print_files(args: argparse.Namespace) -> bool:
    """Print every file as `args` asks; True when a file could not be read."""
    failed = False
    for given in args.files:
        if Path(given).is_dir() and not _expand([given]):
            print(
                f"error: folder {given!r} holds no *.log* file; give a Zeek "
                "log file or a folder of them",
                file=sys.stderr,
            )
            failed = True
    for path in _expand(args.files):
        stats = ReadStats()
        batches = read_log(
            path, batch_size=args.batch_size, log_path=args.log_path, stats=stats
        )
        try:
            if args.format == "summary":
                _print_summary(path, batches, stats)
            elif args.format == "jsonl":
                for record in _records(batches, args.limit):
                    clean = {k: jsonable(v) for k, v in record.items()}
                    print(json.dumps(clean, ensure_ascii=False, allow_nan=False))
            else:
                _print_table(path, batches, args.limit, sys.stdout)
        except BrokenPipeError:
            raise
        except FileNotFoundError:
            print(
                f"error: {path!r}: no such file; give the path of a Zeek log "
                "or of a folder of them",
                file=sys.stderr,
            )
            failed = True
        except (LogFormatError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True

    return failed
