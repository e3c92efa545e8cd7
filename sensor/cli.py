"""The `bflow` command: one entry point, a subcommand per job.

Each subcommand lives in its own module and is imported only when chosen, so
the daemon never loads training code and `--help` stays fast.
"""

import importlib
import os
import sys

import structlog

from sensor.errors import BFlowError
from sensor.logs import configure_logging

# name -> ("module:function", one-line help); function(argv) -> exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sensor.demo:main", "run the daemon on the bundled logs and model"),
    "run": ("sensor.daemon:main", "watch a Zeek log directory, write notices"),
    "read": ("sensor.readcmd:main", "read Zeek logs and print their records"),
    "train": ("model.cli:train_main", "train, calibrate and export a model"),
    "eval": ("model.cli:eval_main", "evaluate a model file on labeled data"),
    "info": ("model.cli:info_main", "print what a model file says about itself"),
    "retrain": ("model.retrain:retrain_main", "retrain on clean logs, promote"),
    "rollback": ("model.retrain:rollback_main", "restore a previous model"),
}


def _usage() -> str:
    lines = ["usage: bflow [-v] COMMAND [ARGS...]", "", "commands:"]
    for name, (_, summary) in COMMANDS.items():
        lines.append(f"  {name:<10} {summary}")
    lines.append("")
    lines.append("`bflow COMMAND --help` shows a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; print `error: ...` and exit 2 on failure."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while args and args[0] in ("-v", "--verbose"):
        verbose = True
        args.pop(0)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2

    configure_logging(verbose=verbose)
    module_name, function_name = COMMANDS[name][0].split(":")
    command = getattr(importlib.import_module(module_name), function_name)
    try:
        code: int = command(rest)
        sys.stdout.flush()
    except BrokenPipeError:
        return _closed_stdout()
    except BFlowError as exc:
        if verbose:
            structlog.get_logger().exception("command.failed", command=name)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # Not an error we raise on purpose: a bad value got past a check, or
        # a defect. Still one line for the user; the traceback with -v.
        if verbose:
            structlog.get_logger().exception("command.crashed", command=name)
        print(
            f"error: {name} failed unexpectedly: {type(exc).__name__}: {exc}\n"
            "  check the arguments; if they are right this is a bflow bug:"
            f" `bflow -v {name} ...` shows the traceback to report",
            file=sys.stderr,
        )
        return 1

    return code


# What a shell reports for a writer that SIGPIPE ended (128 + 13).
EXIT_BROKEN_PIPE = 141


def _closed_stdout() -> int:
    """End quietly when the reader of stdout went away (`bflow ... | head`).

    The status is 141, what `cat` or `zeek-cut` get when SIGPIPE ends them,
    so a script under `set -o pipefail` sees that the output was cut short;
    no error line or traceback is printed.
    """
    # Python flushes stdout again at exit; aim it at /dev/null so that
    # flush cannot fail a second time and print a message.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)

    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
