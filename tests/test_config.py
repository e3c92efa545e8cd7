"""The daemon's settings: merged from file, variables and flags, checked once."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.config import build_config, check_paths
from sensor.errors import ConfigError
from sensor.sdnotify import Notifier
from tests.conftest import REPO


def _dirs(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "logs").mkdir()
    model = tmp_path / "flow.pt"
    model.write_bytes(b"x")
    return {
        "log_dir": str(tmp_path / "logs"),
        "state_dir": str(tmp_path / "state"),
        "notice_dir": str(tmp_path / "notices"),
        "flow_model": str(model),
    }


def test_flag_beats_variable_beats_file(tmp_path: Path) -> None:
    """A flag overrides BFLOW_* which overrides the TOML file."""
    base = _dirs(tmp_path)
    toml = tmp_path / "bflow.toml"
    body = "".join(f'{k} = "{v}"\n' for k, v in base.items())
    toml.write_text(body + "batch_size = 10\npoll_interval = 3\nmetrics_port = 9\n")

    config = build_config(
        file=toml,
        environ={"BFLOW_BATCH_SIZE": "20", "BFLOW_POLL_INTERVAL": "2"},
        flags={"batch_size": "30", "poll_interval": None},
    )

    assert config.batch_size == 30
    assert config.poll_interval == 2.0
    assert config.metrics_port == 9
    assert config.log_dir == Path(base["log_dir"])


def test_tables_of_other_commands_are_left_alone(tmp_path: Path) -> None:
    """A [retrain] table beside the daemon's settings is not an unknown one."""
    base = _dirs(tmp_path)
    toml = tmp_path / "bflow.toml"
    body = "".join(f'{k} = "{v}"\n' for k, v in base.items())
    toml.write_text(body + "[retrain]\nevery_days = 7\n")

    config = build_config(file=toml, environ={})

    assert config.log_dir == Path(base["log_dir"])


def test_bflow_table_in_a_shared_file_is_read(tmp_path: Path) -> None:
    """Settings may sit under a [bflow] table of a larger file."""
    base = _dirs(tmp_path)
    toml = tmp_path / "site.toml"
    body = "".join(f'{k} = "{v}"\n' for k, v in base.items())
    toml.write_text("[other]\nx = 1\n[bflow]\n" + body)

    config = build_config(file=toml, environ={})

    assert config.flow_model == Path(base["flow_model"])


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"BFLOW_BATCH_SIZE": "0"}, ["'batch_size'", "'0'", "BFLOW_BATCH_SIZE"]),
        ({"BFLOW_BATCH_SIZE": "many"}, ["'batch_size'", "'many'"]),
        ({"BFLOW_POLL_INTERVAL": "-1"}, ["'poll_interval'", "seconds"]),
        ({"BFLOW_METRICS_PORT": "70000"}, ["'metrics_port'", "0-65535"]),
        ({"BFLOW_METRICS_ADDRESS": "0.0.0.0"}, ["'metrics_address'", "loopback"]),
        ({"BFLOW_FLOW_THRESHOLD": "nan"}, ["'flow_threshold'", "finite"]),
    ],
)
def test_bad_value_names_setting_and_source(
    tmp_path: Path, env: dict[str, str], words: list[str]
) -> None:
    """A bad value is refused with its setting, its value and where it came from."""
    with pytest.raises(ConfigError) as caught:
        build_config(environ=env, flags=_dirs(tmp_path))

    for word in words:
        assert word in str(caught.value)
    assert "environment" in str(caught.value)


def test_unknown_setting_in_file_is_refused(tmp_path: Path) -> None:
    """A misspelt key in the file is an error, not silently ignored."""
    toml = tmp_path / "bflow.toml"
    toml.write_text('log_dri = "/x"\n')

    with pytest.raises(ConfigError, match="unknown setting 'log_dri'"):
        build_config(file=toml, environ={})


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    """A file that is not TOML gives an error naming the file."""
    toml = tmp_path / "bflow.toml"
    toml.write_text("log_dir = \n")

    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config(file=toml, environ={})


def test_missing_required_setting_says_how_to_set_it(tmp_path: Path) -> None:
    """A missing log_dir names the variable and the flag that set it."""
    flags = _dirs(tmp_path)
    del flags["log_dir"]

    with pytest.raises(ConfigError) as caught:
        build_config(environ={}, flags=flags)

    assert "BFLOW_LOG_DIR" in str(caught.value)
    assert "--log-dir" in str(caught.value)


def test_no_model_at_all_is_refused(tmp_path: Path) -> None:
    """With neither a flow nor a packet model there is nothing to score with."""
    flags = _dirs(tmp_path)
    del flags["flow_model"]

    with pytest.raises(ConfigError, match="neither 'flow_model' nor"):
        build_config(environ={}, flags=flags)


def test_missing_log_dir_and_model_are_found_before_start(tmp_path: Path) -> None:
    """check_paths names a missing log directory and a missing model file."""
    flags = _dirs(tmp_path)
    config = build_config(environ={}, flags={**flags, "log_dir": "/nonexistent/x"})
    with pytest.raises(ConfigError, match="log directory '/nonexistent/x'"):
        check_paths(config)

    gone = str(tmp_path / "gone.pt")
    config = build_config(environ={}, flags={**flags, "flow_model": gone})
    with pytest.raises(ConfigError, match="does not exist"):
        check_paths(config)

    config = build_config(environ={}, flags=flags)
    check_paths(config)
    assert config.state_dir.is_dir() and config.notice_dir.is_dir()


def test_dry_check_creates_nothing(tmp_path: Path) -> None:
    """`--check-config`'s dry check passes creatable dirs but creates none."""
    flags = _dirs(tmp_path)
    config = build_config(environ={}, flags=flags)

    check_paths(config, create=False)

    assert not config.state_dir.exists() and not config.notice_dir.exists()


def test_dry_check_refuses_a_file_where_a_dir_belongs(tmp_path: Path) -> None:
    """A state_dir that is a plain file fails the dry check with its path."""
    flags = _dirs(tmp_path)
    (tmp_path / "state").write_text("not a dir")
    config = build_config(environ={}, flags=flags)

    with pytest.raises(ConfigError, match="state_dir .* is not a directory"):
        check_paths(config, create=False)


def test_unwritable_state_dir_is_refused(tmp_path: Path) -> None:
    """A state directory the daemon cannot write to is a config error."""
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    flags = _dirs(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)

    config = build_config(environ={}, flags={**flags, "state_dir": str(locked)})

    with pytest.raises(ConfigError, match="not writable"):
        check_paths(config)


def test_check_config_command_reports_error_and_exits_2(tmp_path: Path) -> None:
    """`bflow run --check-config` with a bad value prints `error:` and exits 2."""
    flags = _dirs(tmp_path)
    env = {**os.environ, "BFLOW_BATCH_SIZE": "-5"}
    args = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]

    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "run", "--check-config", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )

    assert proc.returncode == 2
    assert proc.stderr.startswith("error: setting 'batch_size' = '-5'")
    assert "Traceback" not in proc.stderr


def test_sd_notify_messages_reach_the_socket(tmp_path: Path) -> None:
    """READY, WATCHDOG and STATUS arrive as KEY=value datagrams on the socket."""
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    notifier = Notifier(
        {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000"},
    )

    try:
        assert notifier.ready("scoring conn")
        assert notifier.watchdog()
        ready = server.recv(4096).decode()
        ping = server.recv(4096).decode()
    finally:
        notifier.close()
        server.close()

    assert "READY=1" in ready.splitlines()
    assert "STATUS=scoring conn" in ready.splitlines()
    assert ping == "WATCHDOG=1"
    assert notifier.watchdog_interval == 4.0


def test_sd_notify_outside_systemd_does_nothing() -> None:
    """Without NOTIFY_SOCKET the notifier sends nothing and raises nothing."""
    notifier = Notifier({})

    assert not notifier.enabled
    assert not notifier.ready("x")
    assert notifier.watchdog_interval is None


def test_a_word_where_a_number_belongs_says_what_is_expected(tmp_path: Path) -> None:
    """`batch_size = "lots"` names the setting and asks for a whole number."""
    flags = {**_dirs(tmp_path), "batch_size": "lots"}

    with pytest.raises(ConfigError) as caught:
        build_config(environ={}, flags=flags)

    message = str(caught.value)
    assert "'batch_size' = 'lots'" in message
    assert "expected a whole number above 0; fix --batch-size" in message
    assert "base 10" not in message
