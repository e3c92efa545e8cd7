"""`bflow read`: the reader's command-line check on real and fault-case logs."""

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.cli import main as bflow
from tests.conftest import REPO


def test_jsonl_records_and_limit(
    cases_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """jsonl prints one JSON object per record, at most --limit of them."""
    path = cases_dir / "01-unset-vs-empty" / "conn.log"
    assert bflow(["read", "--format", "jsonl", "--limit", "3", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 3
    assert records[0]["ts"] == "2026-12-04T10:00:00.101010Z"
    assert records[0]["duration"] == 1.204518
    assert records[1]["orig_bytes"] is None
    assert records[2]["tunnel_parents"] == []


def test_jsonl_keeps_non_utf8_bytes(
    cases_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bytes that are not UTF-8 are printed as base64, so nothing is lost."""
    path = cases_dir / "03-escapes-nonascii-separator" / "payload_bytes.log"
    assert bflow(["read", "--format", "jsonl", str(path)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    d4 = next(r for r in records if r["uid"] == "CeS3dd0000000000d4")
    assert base64.b64decode(d4["orig_first_bytes"]["base64"]) == b"\xff\xfe\x80"
    assert d4["resp_first_bytes"] == "C:\\Windows\\system32"


def test_summary_per_file(cases_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """summary gives path, counts, header blocks and schema for each file."""
    case = cases_dir / "15-header-block-changes"
    files = [str(case / "conn_two_blocks.log"), str(case / "conn_reordered_header.log")]
    assert bflow(["read", "--format", "summary", *files]) == 0
    summaries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [s["path"] for s in summaries] == files
    assert summaries[0]["records"] == 2 and summaries[0]["header_blocks"] == 2
    assert summaries[1]["records"] == 1
    assert summaries[0]["schema"]["orig_bytes"] == "uint64"


def test_table_shows_unset_as_dash(
    cases_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table has a header line and one line per record."""
    path = cases_dir / "01-unset-vs-empty" / "conn.log"
    assert bflow(["read", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"# {path}"
    assert lines[1].split()[:3] == ["ts", "uid", "id.orig_h"]
    assert len(lines) == 2 + 4


def test_non_zeek_file_is_an_error_others_still_read(
    cases_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A non-Zeek file prints `error:` and exit 1; the other files still print."""
    archive = cases_dir / "11-gzip-rotated-archive" / "logs" / "2026-12-04"
    bad = archive / "conn-summary.09:00:00-10:00:00.log.gz"
    good = archive / "conn.09:00:00-10:00:00.log.gz"
    assert bflow(["read", "--format", "summary", str(bad), str(good)]) == 1
    captured = capsys.readouterr()
    assert "error:" in captured.err and "not a Zeek log" in captured.err
    assert json.loads(captured.out)["records"] == 2


def test_command_runs_as_a_program(cases_dir: Path) -> None:
    """`python -m sensor read` works from the repository root."""
    path = cases_dir / "10-ipv6-addresses" / "conn.log"
    result = subprocess.run(
        [sys.executable, "-m", "sensor", "read", "--format", "summary", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["records"] == 6


def test_folder_means_its_logs(
    tmp_path: Path, cases_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder argument reads the *.log* files inside it, in name order."""
    case = cases_dir / "07-missing-optional-fields"
    for path in sorted(case.glob("*.log")):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "README.md").write_text("# not a log\n")
    assert bflow(["read", "--format", "summary", str(tmp_path)]) == 0
    summaries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(s["path"]).name for s in summaries] == [
        "conn_older_layout.log",
        "conn_site_filtered.log",
    ]
    assert all(s["records"] == 1 for s in summaries)
