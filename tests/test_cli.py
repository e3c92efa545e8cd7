"""The `bflow` command dispatches subcommands and fails clearly."""

import subprocess
import sys


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
