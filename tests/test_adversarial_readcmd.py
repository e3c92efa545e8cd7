"""Hostile logs for `bflow read`: what it prints must not harm the reader.

Defects found by attacking the command: traffic text with terminal escape
sequences reached the terminal, a NaN double made invalid JSON, and a bad
--batch-size ended in a traceback.
"""

import json
from pathlib import Path

import pytest

from sensor.cli import main as bflow

HEADER = (
    b"#separator \\x09\n#path\tweird\n#fields\tts\tuid\tmsg\tscore\n"
    b"#types\ttime\tstring\tstring\tdouble\n"
)


@pytest.fixture()
def hostile(tmp_path: Path) -> Path:
    path = tmp_path / "weird.log"
    msg = b"a\x1b[2J\x1b]0;title\x07\\x1b[31m\rb\x7f\xc2\x9bc"
    path.write_bytes(HEADER + b"1.0\tC1\t" + msg + b"\tnan\n")
    return path


def test_table_never_prints_control_characters(
    hostile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ESC, BEL, CR, DEL and C1 bytes from a log are shown escaped."""
    assert bflow(["read", str(hostile)]) == 0
    out = capsys.readouterr().out
    shown = out.replace("\n", "")
    assert not [c for c in shown if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F]
    assert "\\x1b[2J" in out


def test_jsonl_is_valid_json_with_nan(
    hostile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A NaN double is printed as Zeek's "nan", so every line is strict JSON."""
    assert bflow(["read", "--format", "jsonl", str(hostile)]) == 0
    line = capsys.readouterr().out.strip()

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    record = json.loads(line, parse_constant=refuse)
    assert record["score"] == "nan"
    assert record["msg"].startswith("a\x1b[2J")


def test_bad_batch_size_is_a_plain_error(
    hostile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--batch-size 0 is refused with one error line, not a traceback."""
    with pytest.raises(SystemExit) as stop:
        bflow(["read", "--batch-size", "0", str(hostile)])
    assert "--batch-size" in str(stop.value.code)
