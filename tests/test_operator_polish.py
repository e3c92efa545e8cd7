"""What an operator reads: notice log control records and footer, the
`--check-config` summary, and the messages for a broken config or model file.
"""

import re
import shutil
import tomllib
from pathlib import Path

import pytest
import structlog
import torch

from model.artifact import load_model
from sensor.config import Config, build_config, read_toml
from sensor.errors import ConfigError, ModelError
from sensor.notice import NoticeWriter, read_notices
from sensor.reader import ReadStats, read_log
from sensor.zeekwriter import ValueRejected
from tests.test_notice import make_notice
from tests.test_notice_rotation import AsciiStream

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = REPO / "sensor" / "default_models"


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _read_all(path: Path) -> tuple[list[dict[str, object]], ReadStats]:
    """Records and counts of a file as `bflow read` sees it (#close honoured)."""
    stats = ReadStats()
    records = [r for b in read_log(path, stats=stats) for r in b.records.to_pylist()]

    return records, stats


# -- 1. the notice log's control records and #close --------------------------


def test_open_record_names_the_models(tmp_path: Path) -> None:
    """A new file's `open` record carries the model versions it was given."""
    path = tmp_path / "bflow_notice.log"

    with NoticeWriter(path, model_version="flow=f1,packet=p2"):
        pass

    (opened,) = read_notices(path)
    assert opened["kind"] == "open"
    assert opened["model_version"] == "flow=f1,packet=p2"


def test_open_record_model_version_is_never_empty(tmp_path: Path) -> None:
    """Without models named the field says `unknown`; an empty name is refused."""
    with NoticeWriter(tmp_path / "a.log"):
        pass
    with pytest.raises(ValueRejected, match="model_version '' is empty"):
        NoticeWriter(tmp_path / "b.log", model_version="")

    (opened,) = read_notices(tmp_path / "a.log")
    assert opened["model_version"] == "unknown"
    assert b"\t\t" not in _lines(tmp_path / "a.log")[-1]


def test_rotation_open_record_names_the_models_of_the_moment(tmp_path: Path) -> None:
    """After a model swap, the next generation's `open` record names the new one."""
    path = tmp_path / "bflow_notice.log"

    with NoticeWriter(path, max_bytes=2048, model_version="flow=old") as writer:
        writer.model_version = "flow=new"
        for i in range(20):
            writer.write(make_notice(i))
        generation = writer.generation

    assert generation > 1
    assert read_notices(path)[0]["model_version"] == "flow=new"
    first = writer.archived_path(1)
    assert read_notices(first)[0]["model_version"] == "flow=old"


def test_archived_generation_ends_in_rotate_and_close(tmp_path: Path) -> None:
    """A rotated-out file ends with its `rotate` record and then `#close`."""
    path = tmp_path / "bflow_notice.log"

    with NoticeWriter(path, max_bytes=2048) as writer:
        for i in range(20):
            writer.write(make_notice(i))
    archived = [p for _, p in writer.archived()]

    assert archived
    for old in archived:
        lines = _lines(old)
        assert re.fullmatch(rb"#close\t\d{4}(-\d\d){5}", lines[-1])
        assert lines[-2].endswith(b"\trotate")
        assert sum(line.startswith(b"#close") for line in lines) == 1
        # `bflow read` takes the footer as the end of a finished file and
        # skips nothing; Zeek's reader, which skips `#` lines other than
        # #fields, sees the same records the file had before the footer.
        records, stats = _read_all(old)
        assert stats.skipped == 0 and stats.errors == 0
        zeek = AsciiStream(old)
        assert [r["notice_id"] for r in zeek.poll()] == [
            r["notice_id"].decode() for r in records
        ]
        assert zeek.dropped == 0
        zeek.close()
    # The current file is still open for appending: no footer.
    assert not any(line.startswith(b"#close") for line in _lines(path))


def test_file_moved_away_is_closed(tmp_path: Path) -> None:
    """A notice log moved away under the writer gets `rotate` and `#close`."""
    path = tmp_path / "bflow_notice.log"
    moved = tmp_path / "moved.log"

    with NoticeWriter(path) as writer:
        writer.write(make_notice(1))
        path.rename(moved)
        writer.write(make_notice(2))

    assert _lines(moved)[-1].startswith(b"#close\t")
    assert _lines(moved)[-2].endswith(b"\trotate")
    assert [r["kind"] for r in read_notices(path)] == ["open", "flow"]


# -- 2. --check-config --------------------------------------------------------


def _flags(tmp_path: Path) -> list[str]:
    (tmp_path / "logs").mkdir(exist_ok=True)
    return [
        f"--log-dir={tmp_path / 'logs'}",
        f"--state-dir={tmp_path / 'state'}",
        f"--notice-dir={tmp_path / 'notices'}",
        f"--flow-model={DEFAULT_MODELS / 'flow.pt'}",
        "--packet-model=",
        "--batch-size=512",
        "--poll-interval=0.25",
    ]


def test_check_config_prints_one_toml_line_per_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--check-config` lists every setting as TOML that gives the same config."""
    from sensor.daemon import main

    torch.set_num_threads(1)
    # structlog's default prints events to stdout; the CLI sends them away.
    with structlog.testing.capture_logs():
        assert main(["--check-config", *_flags(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()

    assert out[0].startswith("config OK")
    body = [line for line in out[1:] if not line.startswith("note:")]
    assert "{" not in "\n".join(body), "a Python dict repr is back"
    names = [re.match(r"#? ?(\w+)", line)[1] for line in body]  # type: ignore[index]
    assert sorted(names) == sorted(Config.__dataclass_fields__)
    assert "# packet_model is unset: bflow_packet.log is not scored" in body
    flow = next(line for line in body if line.startswith("flow_model = "))
    assert "model_version " in flow

    toml = tmp_path / "effective.toml"
    toml.write_text("\n".join(body) + "\n")
    again = build_config(file=toml, environ={})
    assert again == build_config(environ={}, flags=_parsed(_flags(tmp_path)))
    assert again.batch_size == 512 and again.poll_interval == 0.25


def _parsed(flags: list[str]) -> dict[str, str]:
    pairs = (flag[2:].split("=", 1) for flag in flags)
    return {name.replace("-", "_"): value for name, value in pairs}


def test_settings_toml_quotes_paths_as_toml_strings(tmp_path: Path) -> None:
    """Paths with quotes, backslashes and non-ASCII read back unchanged."""
    from sensor.config import settings_toml

    odd = tmp_path / 'a "b" \\ é\tc'
    config = build_config(
        environ={},
        flags={
            "log_dir": str(odd),
            "state_dir": str(tmp_path),
            "notice_dir": str(tmp_path),
            "flow_model": str(tmp_path / "m.pt"),
        },
    )

    table = tomllib.loads("\n".join(settings_toml(config)))

    assert table["log_dir"] == str(odd)
    assert "ledger" not in table and "flow_threshold" not in table


# -- 3. a broken TOML file -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        (b'log_dir = "/x"\nbatch_size = 12\nnotice_dir = \n', 3, 14),
        # tomllib says only "at end of document" here.
        (b'log_dir = "/x"\nnotice_dir = ', 2, 14),
        (b'log_dir = "/x"\nstate_dir = "/var/lib', 2, 22),
        (b"[bflow\nlog_dir = 1\n", 1, 7),
        # Not UTF-8: tomllib is not even reached.
        (b'log_dir = "/x"\nstate_dir = "\xff"\n', 2, 14),
    ],
)
def test_broken_toml_names_file_line_and_column(
    tmp_path: Path, text: bytes, line: int, column: int
) -> None:
    """A malformed config file's error names the file, line, column and a fix."""
    toml = tmp_path / "bflow.toml"
    toml.write_bytes(text)

    with pytest.raises(ConfigError) as caught:
        read_toml(toml)

    message = str(caught.value)
    assert str(toml) in message
    assert f"line {line}, column {column}" in message
    quoted = text.split(b"\n")[line - 1].decode("utf-8", "replace")
    assert f"the line reads {quoted!r}" in message
    assert "fix that line" in message or "save the file as UTF-8" in message


# -- 4. a model file refused at load -----------------------------------------
# (the case-20 files: tests/test_artifact.py, broken files raise one clear
# model error)


class _WrongWidth(torch.nn.Module):
    """Scores 3 features: any real model's probe batch does not fit it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(1)


def test_failed_probe_keeps_the_reason_after_torchscripts_traceback(
    tmp_path: Path,
) -> None:
    """A model failing its probe batch reports torch's last line, not the traceback."""
    from model.artifact import METADATA_NAME, read_metadata

    torch.set_num_threads(1)
    metadata = read_metadata(DEFAULT_MODELS / "flow.pt")
    path = tmp_path / "wrong_width.pt"
    torch.jit.save(
        torch.jit.script(_WrongWidth()),
        str(path),
        _extra_files={METADATA_NAME: metadata.to_json()},
    )

    with pytest.raises(ModelError) as caught:
        load_model(path)

    message = str(caught.value)
    assert "the probe batch failed to run" in message
    assert "Traceback" not in message and "<--- HERE" not in message
    width = metadata.input_dim
    assert (
        "Underlying error: RuntimeError: mat1 and mat2 shapes cannot be "
        f"multiplied (8x{width} and 3x1)." in message
    )


# -- 5. daemon.stopped ---------------------------------------------------------


def test_stopped_event_reports_the_rate_over_the_uptime(
    tmp_path: Path, data_dir: Path
) -> None:
    """`daemon.stopped` names its rate as one over the uptime and gives the uptime."""
    from sensor.daemon import Daemon

    conn = data_dir / "zeek-generated/slips/dataset/test12-icmp-portscan/conn.log"
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(conn, logs / "conn.log")
    config = build_config(
        environ={},
        flags={
            "log_dir": str(logs),
            "state_dir": str(tmp_path / "state"),
            "notice_dir": str(tmp_path / "notices"),
            "flow_model": str(DEFAULT_MODELS / "flow.pt"),
            "stop_when_idle": "1",
            "poll_interval": "0.1",
        },
    )
    daemon = Daemon(config)

    with structlog.testing.capture_logs() as events:
        assert daemon.run() == 0

    (stopped,) = [e for e in events if e["event"] == "daemon.stopped"]
    assert "records_per_s" not in stopped
    records = sum(stopped["records"].values())
    assert records > 0 and stopped["uptime_s"] >= 1.0
    rate = stopped["records_per_s_over_uptime"]
    assert rate == pytest.approx(records / stopped["uptime_s"], rel=0.1)
    # The notice log it opened names the model that scored.
    opened = read_notices(config.notice_log)[0]
    assert opened["model_version"] == daemon.model_versions()
    assert daemon.model_versions().startswith("flow=")
