"""The daemon's configuration: a TOML file, `BFLOW_*` variables and flags.

Values are merged in that order (a flag beats a variable, which beats the
file, which beats the default), then validated once, before anything starts.
Every error names the setting, where its value came from, what was expected,
and what to do, so `bflow run --check-config` is enough to fix a bad set-up.

Example file (`systemd/bflow.toml` is a commented one)::

    log_dir = "/opt/zeek/logs/current"
    state_dir = "/var/lib/bflow"
    notice_dir = "/var/lib/bflow/notices"
    flow_model = "/var/lib/bflow/models/flow.pt"
    packet_model = "/var/lib/bflow/models/packet.pt"
"""

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sensor.errors import ConfigError

ENV_PREFIX = "BFLOW_"


@dataclass(frozen=True)
class Config:
    """Validated settings of one `bflow run`.

    Paths are absolute. Times are seconds. A model path of None means that
    kind of scoring is off; at least one model is always set.
    """

    log_dir: Path
    state_dir: Path
    notice_dir: Path
    flow_model: Path | None = None
    packet_model: Path | None = None
    # Record budget per batch and per poll of each log; bounds memory.
    batch_size: int = 4096
    poll_interval: float = 0.5
    # How long a renamed log must stay idle before it counts as finished.
    finish_grace: float = 2.0
    summary_interval: float = 60.0
    # How often the model files are checked for replacement; 0 = only SIGHUP.
    model_check_interval: float = 5.0
    # Prometheus endpoint; port 0 = off. Only loopback addresses are allowed.
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"
    # Threads torch may use for scoring. One is the default: on a sensor the
    # cores belong to Zeek first, and on a busy machine a second scoring
    # thread spinning in OpenMP made scoring up to 50 times slower.
    threads: int = 1
    # Overrides of the thresholds stored in the models; None = the model's.
    flow_threshold: float | None = None
    packet_threshold: float | None = None
    # Stop after this many seconds (0 = never), or once every log has been
    # idle this long (0 = never); for demos, tests and benchmarks.
    duration: float = 0.0
    stop_when_idle: float = 0.0
    # Debug: append the keys of every committed record here (tests).
    ledger: Path | None = None

    @property
    def notice_log(self) -> Path:
        """The notice log the daemon appends to and Zeek reads."""
        return self.notice_dir / "bflow_notice.log"

    @property
    def tail_state(self) -> Path:
        """Where the tailer keeps the committed read positions."""
        return self.state_dir / "tail-state.json"


# Setting name -> parser of one raw value (from TOML, a variable or a flag).
def _path(raw: Any) -> Path:
    if not isinstance(raw, str | Path) or not str(raw):
        raise ValueError("expected a non-empty path")
    return Path(raw).expanduser().absolute()


def _opt_path(raw: Any) -> Path | None:
    if raw is None or raw == "" or raw == "none":
        return None
    return _path(raw)


def _int(raw: Any, what: str) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"expected {what}") from None


def _float(raw: Any, what: str) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"expected {what}") from None


def _positive_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError("expected a whole number")
    value = _int(raw, "a whole number above 0")
    if isinstance(raw, float) and raw != value:
        raise ValueError("expected a whole number")
    if value <= 0:
        raise ValueError("expected a number above 0")
    return value


def _port(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError("expected a port number")
    value = _int(raw, "a port number 0-65535 (0 = off)")
    if not 0 <= value <= 65535:
        raise ValueError("expected a port number 0-65535 (0 = off)")
    return value


def _seconds(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("expected seconds as a number")
    value = _float(raw, "seconds as a number")
    if not value >= 0 or value == float("inf"):
        raise ValueError("expected a finite number of seconds, 0 or more")
    return value


def _positive_seconds(raw: Any) -> float:
    value = _seconds(raw)
    if value == 0:
        raise ValueError("expected a number of seconds above 0")
    return value


def _opt_threshold(raw: Any) -> float | None:
    if raw is None or raw == "" or raw == "none":
        return None
    if isinstance(raw, bool):
        raise ValueError("expected a number")
    value = _float(raw, "a number, or none")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return value


def _loopback(raw: Any) -> str:
    try:
        address = ipaddress.ip_address(str(raw))
    except ValueError:
        raise ValueError("expected an IP address such as 127.0.0.1") from None
    if not address.is_loopback:
        raise ValueError(
            "expected a loopback address (127.0.0.1 or ::1); the metrics "
            "endpoint has no authentication, put a proxy in front to share it"
        )
    return str(address)


PARSERS: dict[str, Callable[[Any], Any]] = {
    "log_dir": _path,
    "state_dir": _path,
    "notice_dir": _path,
    "flow_model": _opt_path,
    "packet_model": _opt_path,
    "batch_size": _positive_int,
    "poll_interval": _positive_seconds,
    "finish_grace": _seconds,
    "summary_interval": _positive_seconds,
    "model_check_interval": _seconds,
    "threads": _positive_int,
    "metrics_port": _port,
    "metrics_address": _loopback,
    "flow_threshold": _opt_threshold,
    "packet_threshold": _opt_threshold,
    "duration": _seconds,
    "stop_when_idle": _seconds,
    "ledger": _opt_path,
}
REQUIRED = ("log_dir", "state_dir", "notice_dir")

# One line per setting for `bflow run --help`.
HELP = {
    "log_dir": "directory Zeek writes its current logs to (required)",
    "state_dir": "where read positions are kept (required)",
    "notice_dir": "where bflow_notice.log is written (required)",
    "flow_model": "model file scoring conn.log (unset: off)",
    "packet_model": "model file scoring the packet log (unset: off)",
    "batch_size": "most records per batch and per poll of a log (4096)",
    "poll_interval": "seconds between directory scans (0.5)",
    "finish_grace": "seconds a rotated log must be idle to be finished (2)",
    "summary_interval": "seconds between daemon.summary events (60)",
    "model_check_interval": "seconds between model file checks, 0 = SIGHUP only (5)",
    "threads": "torch threads for scoring (1)",
    "metrics_port": "Prometheus port on metrics_address, 0 = off (0)",
    "metrics_address": "loopback address for the metrics endpoint (127.0.0.1)",
    "flow_threshold": "override the flow model's threshold",
    "packet_threshold": "override the packet model's threshold",
    "duration": "stop after this many seconds, 0 = never (0)",
    "stop_when_idle": "stop once the logs were idle this long, 0 = never (0)",
    "ledger": "debug: append the key of every committed record here",
}


def settings_toml(config: Config, notes: Mapping[str, str] | None = None) -> list[str]:
    """The settings in effect, one `name = value` line each, as TOML.

    The lines together are a config file that gives the same settings.
    TOML has no null, so an unset setting is a comment saying so.

    Args:
        notes: a remark per setting name, added as a comment to its line.
    """
    notes = notes or {}
    lines = []
    for item in fields(Config):
        value = getattr(config, item.name)
        note = notes.get(item.name)
        if value is None:
            line = f"# {item.name} is unset"
            lines.append(f"{line}: {note}" if note else line)
            continue
        line = f"{item.name} = {_toml_value(value)}"
        lines.append(f"{line}  # {note}" if note else line)

    return lines


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        # Settings are validated finite; repr keeps a float a TOML float.
        return repr(value)

    # A JSON string with raw UTF-8 is a TOML basic string.
    return json.dumps(str(value), ensure_ascii=False)


def read_toml(path: Path) -> dict[str, Any]:
    """Read a config file; a missing or malformed file is a ConfigError."""
    try:
        data = path.read_bytes()
        table = tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {str(path)!r} does not exist; pass an existing file "
            "with --config or leave it out to use variables and flags only"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"config file {str(path)!r} cannot be read ({exc.strerror}); "
            "check its permissions"
        ) from None
    except UnicodeDecodeError as exc:
        line, column = _position(data, exc.start)
        raise ConfigError(
            f"config file {str(path)!r} is not valid TOML: byte "
            f"0x{data[exc.start]:02x} at line {line}, column {column} is not "
            f"UTF-8{_quote_line(data, line)}; save the file as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_error(path, data, exc)) from None

    # A `[bflow]` table is accepted too, so the file can hold other sections.
    if isinstance(table.get("bflow"), dict):
        table = table["bflow"]

    return table


_TOML_WHERE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def _toml_error(path: Path, data: bytes, exc: tomllib.TOMLDecodeError) -> str:
    """Where tomllib stopped in the file and why, with what to do.

    tomllib (Python 3.11-3.13) puts the position only in its message, as
    "(at line L, column C)" or "(at end of document)"; 3.14 also has
    `lineno` and `colno`.
    """
    message = str(exc.args[0]) if exc.args else str(exc)
    match = _TOML_WHERE.search(message)
    reason = message[: match.start()] if match else message
    line: int | None = getattr(exc, "lineno", None)
    column: int | None = getattr(exc, "colno", None)
    if line is None and match is not None and match[1]:
        line, column = int(match[1]), int(match[2])
    where = ""
    if line is None or column is None:
        line, column = _position(data, len(data.rstrip(b"\n")))
        where = " (the end of the file)"
    text = _line_text(data, line)
    quoted = _quote_line(data, line)
    fix = "fix that line"

    # tomllib reports a value left open (`foo = [`) where it noticed, which
    # is often a later line: show the line before as well, unless the value
    # opens on the reported line itself.
    openers = _OPENERS.get(reason, "")
    opened_before = bool(openers) and not any(c in text[: column - 1] for c in openers)
    at_line_start = not text[: column - 1].strip()
    if opened_before or at_line_start:
        before = _previous_line(data, line)
        if before is not None:
            quoted += f", or the line before it, {before!r}"
            fix = "fix one of them"
    bare = _BARE_WORD.match(text[column - 1 :])
    if reason == "Invalid value" and bare and not at_line_start:
        fix += ' (text values need double quotes, as in log_dir = "/var/log/zeek")'

    return (
        f"config file {str(path)!r} is not valid TOML at line {line}, column "
        f"{column}{where}: {reason}{quoted}; {fix} and check the file with "
        f"`bflow run --config {path} --check-config`"
    )


# tomllib's reasons for a value left open, with the characters that open it.
_OPENERS = {
    "Unclosed array": "[",
    "Unclosed inline table": "{",
    "Unterminated string": "\"'",
}

# A value written without quotes: `log_dir = /var/log`, `mode = fast`.
_BARE_WORD = re.compile(r"[A-Za-z_/~.][^\s,\]}]*")


def _line_text(data: bytes, line: int) -> str:
    lines = data.split(b"\n")
    if not 1 <= line <= len(lines):
        return ""

    return lines[line - 1].rstrip(b"\r").decode("utf-8", "replace")


def _previous_line(data: bytes, line: int) -> str | None:
    """The last non-blank line before `line`, shortened, or None."""
    for number in range(line - 1, 0, -1):
        text = _line_text(data, number).strip()
        if text:
            return text if len(text) <= 80 else text[:77] + "..."

    return None


def _position(data: bytes, offset: int) -> tuple[int, int]:
    """(line, column), both from 1, of a byte offset in a file."""
    before = data[:offset]
    line_start = before.rfind(b"\n") + 1
    column = len(before[line_start:].decode("utf-8", "replace")) + 1

    return before.count(b"\n") + 1, column


def _quote_line(data: bytes, line: int) -> str:
    lines = data.split(b"\n")
    if not 1 <= line <= len(lines):
        return ""
    text = _line_text(data, line)
    if len(text) > 80:
        text = text[:77] + "..."

    return f"; the line reads {text!r}"


def from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Pick the `BFLOW_<SETTING>` variables that name a setting."""
    picked = {}
    for name in PARSERS:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            picked[name] = environ[key]

    return picked


def build_config(
    *,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Merge the three sources and validate every value once.

    Args:
        file: a TOML file, or None for none.
        environ: the process environment (default `os.environ`).
        flags: values given on the command line; None values are ignored.

    Raises:
        ConfigError: naming the first bad setting and its source.
    """
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if file is not None:
        layers.append((f"config file {str(file)!r}", read_toml(file)))
    layers.append(("environment", from_env(environ)))
    layers.append(("command line", {k: v for k, v in (flags or {}).items()}))

    raw: dict[str, tuple[Any, str]] = {}
    for source, layer in layers:
        for name, value in layer.items():
            if isinstance(value, dict):
                # A table such as [retrain] belongs to another command.
                continue
            if name not in PARSERS:
                known = ", ".join(sorted(PARSERS))
                raise ConfigError(
                    f"unknown setting {name!r} in {source}; known settings: {known}"
                )
            if value is not None:
                raw[name] = (value, source)

    values: dict[str, Any] = {}
    for name, (value, source) in raw.items():
        try:
            values[name] = PARSERS[name](value)
        except (TypeError, ValueError) as exc:
            hint = _where(name, source)
            raise ConfigError(
                f"setting {name!r} = {value!r} from {source} is invalid: {exc}; {hint}"
            ) from None

    for name in REQUIRED:
        if name not in values:
            raise ConfigError(
                f"setting {name!r} is not set; give it in the config file, as "
                f"{ENV_PREFIX}{name.upper()} or as --{name.replace('_', '-')}"
            )
    if values.get("flow_model") is None and values.get("packet_model") is None:
        raise ConfigError(
            "neither 'flow_model' nor 'packet_model' is set; give at least one "
            "model file to score with (BFLOW_FLOW_MODEL, --flow-model, ...)"
        )

    names = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in values.items() if k in names})


def _where(name: str, source: str) -> str:
    if source == "environment":
        return f"fix {ENV_PREFIX}{name.upper()}"
    if source == "command line":
        return f"fix --{name.replace('_', '-')}"
    return f"fix it in the {source}"


def check_paths(config: Config, *, create: bool = True) -> None:
    """Check what the daemon needs from the file system before it starts.

    The log directory must exist and be readable (it may be a symlink such as
    zeekctl's `logs/current`); the state and notice directories are created
    if missing and must be writable; each configured model file must exist.
    With `create` False (`--check-config`) nothing is created: a missing
    directory passes when the daemon could create it.

    Raises:
        ConfigError: naming the path and what is wrong with it.
    """
    if not config.log_dir.is_dir():
        raise ConfigError(
            f"log directory {str(config.log_dir)!r} does not exist or is not "
            "a directory; point log_dir at the directory Zeek writes its "
            "current logs to (zeekctl: <prefix>/logs/current)"
        )
    if not os.access(config.log_dir, os.R_OK | os.X_OK):
        raise ConfigError(
            f"log directory {str(config.log_dir)!r} is not readable by this "
            "user; give it read access (e.g. add it to the zeek group)"
        )

    for name in ("state_dir", "notice_dir"):
        directory: Path = getattr(config, name)
        if not create:
            _check_creatable(name, directory)
            continue
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{name} {str(directory)!r} cannot be created ({exc.strerror}); "
                "create it and make it writable by the daemon's user"
            ) from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(
                f"{name} {str(directory)!r} is not writable by this user; "
                "fix its owner or permissions"
            )

    for name in ("flow_model", "packet_model"):
        model: Path | None = getattr(config, name)
        if model is not None and not model.is_file():
            raise ConfigError(
                f"{name} {str(model)!r} does not exist; train and export a "
                f"model there (bflow train) or unset {name} to turn that kind "
                "of scoring off"
            )


def _check_creatable(name: str, directory: Path) -> None:
    """Raise unless `directory` is writable or could be created."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == directory and not directory.is_dir():
        raise ConfigError(
            f"{name} {str(directory)!r} exists but is not a directory; "
            "point it at a directory"
        )
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable"
        if existing != directory:
            what = f"cannot be created: {str(existing)!r} is not writable"
        raise ConfigError(
            f"{name} {str(directory)!r} {what} by this user; create it and "
            "make it writable by the daemon's user"
        )
