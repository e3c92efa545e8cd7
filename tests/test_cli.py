"""The `bflow` command dispatches subcommands and fails clearly."""

import subprocess
import sys
from pathlib import Path

import pytest

from sensor.cli import main as bflow


def test_unknown_command_is_an_error_naming_it() -> None:
    """An unknown subcommand exits 2 and names the bad value."""
    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "frobnicate"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "'frobnicate'" in proc.stderr


def test_help_lists_every_command() -> None:
    """`bflow --help` lists the subcommands a user can run."""
    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    for name in ("run", "read", "train", "eval", "retrain", "rollback"):
        assert name in proc.stdout


def test_unexpected_failure_is_one_error_line_without_traceback(
    data_dir: Path, tmp_path: Path
) -> None:
    """A bad value that slips past a command's checks still gives `error:`."""
    conn = data_dir / "zeek-generated/zeek-btest/Traces/wikipedia/conn.log"
    out = tmp_path / "m.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "train", "--kind", "flow", "--input"]
        + [str(conn), "--out", str(out), "--set", "lr=-1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode in (1, 2)
    assert proc.stderr.startswith("error:") or "\nerror:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_read_of_a_folder_without_logs_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bflow read` on a folder with no *.log* file says so and exits 1."""
    (tmp_path / "notes.txt").write_text("not a log")

    assert bflow(["read", str(tmp_path)]) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"folder {str(tmp_path)!r} holds no *.log* file" in captured.err


def test_train_set_value_of_the_wrong_type_is_refused_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bflow train --set latent_dim=abc` names the field and type, reads nothing."""
    missing = tmp_path / "never-read.log"

    code = bflow(
        [
            "train",
            "--kind",
            "flow",
            "--input",
            str(missing),
            "--out",
            str(tmp_path / "m.pt"),
            "--set",
            "latent_dim=abc",
        ]
    )

    assert code == 2
    err = capsys.readouterr().err
    assert "--set 'latent_dim=abc': 'abc' is not of type int" in err
    assert "no such file" not in err


def test_train_says_when_validation_is_too_small_for_the_target(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A validation set below 1/target FPR records gets a warning in the summary."""
    conn = data_dir / "lab" / "benign-1" / "zeek" / "conn.log"
    quick = ["--epochs-ae", "1", "--epochs-flow", "1", "--epochs-clf", "1"]
    small = ["--set", "min_steps=5", "--set", "restarts=1", "--threads", "1"]

    code = bflow(
        ["train", "--kind", "flow", "--input", str(conn), "--out"]
        + [str(tmp_path / "m.pt"), *quick, *small]
    )

    assert code == 0
    out = capsys.readouterr().out
    assert "validation records cannot resolve a false-positive rate of 0.001" in out
    assert "(need 1000)" in out


def test_read_of_a_missing_file_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bflow read` on a path that does not exist names it and exits 1."""
    missing = str(tmp_path / "nosuch.log")

    assert bflow(["read", missing]) == 1

    assert f"error: {missing!r}: no such file" in capsys.readouterr().err
