"""`bflow run` as a process: end to end, signals, reloads, bad models, full disk."""

import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sensor import demo
from tests.test_daemon_support import (
    DaemonProcess,
    LogFeeder,
    TinyModels,
    expected_notice_ids,
    iter_ledger,
    tiny_models_fixture,  # noqa: F401
    written_notices,
)


def _all_keys(feeder: LogFeeder) -> list[str]:
    from sensor.pipeline import record_keys
    from sensor.reader import read_log

    keys = []
    for log_name in ("conn", "bflow_packet"):
        for path in sorted(feeder.directory.glob(f"{log_name}*.log")):
            for batch in read_log(path):
                keys.extend(record_keys(batch.records, log_name))

    return keys


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _wait_for(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_end_to_end_exactly_once_across_a_rotation(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    """Logs written progressively, rotated midway, give each notice once."""
    from zat.log_to_dataframe import LogToDataFrame

    from sensor.reader import read_log

    port = _free_port()
    # The daemon watches a zeekctl-style `current` symlink to the log folder.
    (tmp_path / "logs").mkdir()
    (tmp_path / "current").symlink_to(tmp_path / "logs")
    daemon = DaemonProcess(
        tmp_path,
        tiny_models,
        f"--log-dir={tmp_path / 'current'}",
        "--stop-when-idle=3",
        f"--metrics-port={port}",
        "--summary-interval=0.5",
    )
    feeder = LogFeeder(tmp_path / "logs", chunks=6, pause=0.1)
    try:
        daemon.start().wait_ready()
        feeder.start().join()
        _wait_for(lambda: _has(daemon, "daemon.summary"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as reply:
            exposition = reply.read().decode()
        assert daemon.wait(60) == 0
        told = "\n".join(daemon.messages()).splitlines()
    finally:
        daemon.close()

    # systemd saw READY (above), watchdog pings, a status line, STOPPING.
    assert "WATCHDOG=1" in told and "STOPPING=1" in told
    assert any(line.startswith("STATUS=") for line in told)
    # The metrics endpoint counted records per log; the summary event has
    # the figures an operator watches.
    assert 'bflow_records_total{log="conn"}' in exposition
    summary = [e for e in daemon.events() if e["event"] == "daemon.summary"][-1]
    for key in ("records_per_s", "lag_s", "batch_p99_s", "notices", "skipped"):
        assert key in summary

    # The rotation happened: the first half lives under its rotated name.
    assert (tmp_path / "logs" / "conn.2026-12-04-10-00-00.log").exists()
    assert (tmp_path / "logs" / "bflow_packet.2026-12-04-10-00-00.log").exists()

    expected = expected_notice_ids(tiny_models)
    ours = [
        r
        for b in read_log(daemon.notice_log)
        for r in b.records.to_pylist()
        if r["kind"] in (b"flow", b"packet")
    ]
    ids = [r["notice_id"].decode() for r in ours]
    assert len(ids) == len(set(ids)), "a notice was written twice"
    assert set(ids) == expected and expected

    # zat reads the same notices (its frame reader cannot parse Zeek's
    # `N/proto` port values, so the port columns are left out).
    frame = LogToDataFrame().create_dataframe(
        str(daemon.notice_log), usecols=["notice_id", "uid", "kind", "score"]
    )
    zat_ids = frame[frame.kind.isin(["flow", "packet"])].notice_id.tolist()
    assert sorted(zat_ids) == sorted(ids)

    # Every record was committed exactly once.
    counts = collections.Counter(iter_ledger(daemon.ledger))
    assert sorted(counts) == sorted(_all_keys(feeder))
    assert set(counts.values()) == {1}

    summary = [e for e in daemon.events() if e["event"] == "daemon.stopped"]
    assert summary[-1]["reason"] == "idle"
    assert summary[-1]["dropped"] == 0


def test_sigterm_drains_and_a_restart_resumes(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    """SIGTERM mid-stream exits 0 after committing; a restart finishes the job."""
    feeder = LogFeeder(tmp_path / "logs", chunks=10, pause=0.3)
    first = DaemonProcess(tmp_path, tiny_models)
    try:
        first.start().wait_ready()
        feeder.start()
        _wait_for(lambda: first.ledger.exists() and first.ledger.stat().st_size > 0)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
    finally:
        first.close()
    stopped = [e for e in first.events() if e["event"] == "daemon.stopped"]
    assert stopped and stopped[-1]["reason"] == "SIGTERM"
    assert not feeder.done.is_set(), "the feeder ended before the signal"

    second = DaemonProcess(tmp_path, tiny_models, "--stop-when-idle=3")
    try:
        second.start().wait_ready()
        feeder.join()
        assert second.wait(60) == 0
    finally:
        second.close()

    ids = [r["notice_id"] for r in written_notices(second.notice_log)]
    assert len(ids) == len(set(ids))
    assert set(ids) == expected_notice_ids(tiny_models)
    counts = collections.Counter(iter_ledger(second.ledger))
    assert sorted(counts) == sorted(_all_keys(feeder))


def _replace(src: Path, dst: Path) -> None:
    """Deploy a model file the documented way: temporary name, then rename."""
    tmp = dst.with_name(dst.name + ".new")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def test_hot_reload_refuses_a_bad_model_and_takes_a_good_one(
    tmp_path: Path, tiny_models: TinyModels, cases_dir: Path
) -> None:
    """A broken replacement is refused (old model scores on); a good one is used."""
    models = tmp_path / "models"
    models.mkdir()
    flow, packet = models / "flow.pt", models / "packet.pt"
    shutil.copyfile(tiny_models.flow, flow)
    shutil.copyfile(tiny_models.packet, packet)
    daemon = DaemonProcess(
        tmp_path,
        TinyModels(flow=flow, packet=packet),
        "--model-check-interval=0.2",
    )
    try:
        daemon.start().wait_ready()

        # A truncated file renamed over the flow model: refused on its own.
        _replace(cases_dir / "20-torchscript-model-file" / "model_truncated.pt", flow)
        _wait_for(lambda: _has(daemon, "model.reload_refused"))

        # SIGHUP with an LFS pointer as the packet model: refused too.
        _replace(
            cases_dir / "20-torchscript-model-file" / "model_lfs_pointer.pt", packet
        )
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: _count(daemon, "model.reload_refused") >= 2)

        # The old models still score: notices arrive for the fed logs.
        LogFeeder(tmp_path / "logs", chunks=2, pause=0.05).start().join()
        _wait_for(lambda: len(written_notices(daemon.notice_log)) > 0)

        # A good file (the packet model under the flow name is the wrong
        # kind, so use the real flow model) is swapped in.
        _replace(tiny_models.flow, flow)
        _wait_for(lambda: _has(daemon, "model.reloaded"))
    finally:
        daemon.close()

    refused = [e for e in daemon.events() if e["event"] == "model.reload_refused"]
    assert any(str(flow) in str(e["path"]) for e in refused)
    assert all(e["keeps"] for e in refused)
    assert {e["kind"] for e in refused} == {"flow", "packet"}


def _count(daemon: DaemonProcess, event: str) -> int:
    return sum(1 for e in daemon.events() if e["event"] == event)


def _has(daemon: DaemonProcess, event: str) -> bool:
    return _count(daemon, event) > 0


@pytest.mark.parametrize("name", ["model_truncated.pt", "model_empty.pt"])
def test_bad_model_at_startup_exits_before_tailing(
    tmp_path: Path, tiny_models: TinyModels, cases_dir: Path, name: str
) -> None:
    """An unloadable model stops `bflow run` with an error and no read state."""
    bad = cases_dir / "20-torchscript-model-file" / name
    (tmp_path / "logs").mkdir()
    shutil.copyfile(
        Path(__file__).parent.parent / "sensor/samples/benign-wikipedia/conn.log",
        tmp_path / "logs" / "conn.log",
    )

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sensor",
            "run",
            f"--log-dir={tmp_path / 'logs'}",
            f"--state-dir={tmp_path / 'state'}",
            f"--notice-dir={tmp_path / 'notices'}",
            f"--flow-model={bad}",
            f"--packet-model={tiny_models.packet}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state" / "tail-state.json").exists()
    assert not (tmp_path / "notices" / "bflow_notice.log").exists()


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 64 KiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tiny tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _offsets(state: Path) -> list[int]:
    """Every committed offset in the tailer's state file (none if absent)."""
    if not state.exists():
        return []
    found: list[int] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "offset" and isinstance(value, int):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(state.read_text()))

    return found


def test_full_notice_disk_advances_no_offset_then_recovers(
    tmp_path: Path, tiny_models: TinyModels, tiny_disk: Path
) -> None:
    """A full notice disk commits nothing; once freed, every notice lands once."""
    notices = tiny_disk / "notices"
    notices.mkdir()
    # Leave room for the header and a few notices only.
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (60 * 1024))
    daemon = DaemonProcess(tmp_path, tiny_models, f"--notice-dir={notices}")
    feeder = LogFeeder(tmp_path / "logs", chunks=2, pause=0.05)
    state = tmp_path / "state" / "tail-state.json"
    try:
        daemon.start().wait_ready()
        feeder.start().join()
        _wait_for(lambda: _has(daemon, "notices.write_failed"))
        time.sleep(1.0)

        assert not any(_offsets(state)), "an offset moved while notices failed"
        assert not daemon.ledger.exists() or daemon.ledger.stat().st_size == 0
        failed = [e for e in daemon.events() if e["event"] == "notices.write_failed"]
        assert "No space left" in str(failed[0]["error"])
        assert "no read position is advanced" in str(failed[0]["todo"])

        filler.unlink()
        every = set(_all_keys(feeder))
        _wait_for(lambda: set(iter_ledger(daemon.ledger)) == every, timeout=60)
    finally:
        daemon.close()

    assert _has(daemon, "notices.write_recovered")
    assert any(_offsets(state))
    ids = [r["notice_id"] for r in written_notices(notices / "bflow_notice.log")]
    assert len(ids) == len(set(ids))
    assert set(ids) == expected_notice_ids(tiny_models)


def test_check_config_loads_the_models_and_says_ok(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    """`--check-config` loads both models, notes absent logs, creates no directory."""
    (tmp_path / "logs").mkdir()

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sensor",
            "run",
            "--check-config",
            f"--log-dir={tmp_path / 'logs'}",
            f"--state-dir={tmp_path / 'state'}",
            f"--notice-dir={tmp_path / 'notices'}",
            f"--flow-model={tiny_models.flow}",
            f"--packet-model={tiny_models.packet}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("config OK")
    assert 'flow_model = "' in proc.stdout and 'packet_model = "' in proc.stdout
    assert "note: no bflow_packet.log in" in proc.stdout
    assert "zeek_scripts/" in proc.stdout
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "notices").exists()


def test_example_config_file_is_valid() -> None:
    """systemd/bflow.toml parses and passes validation as shipped."""
    from sensor.config import build_config

    example = Path(__file__).parent.parent / "systemd" / "bflow.toml"

    config = build_config(file=example, environ={})

    assert config.log_dir == Path("/opt/zeek/logs/current")
    assert config.threads == 1 and config.metrics_port == 0


def test_demo_prints_the_notices_it_raised(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    """`bflow demo` ends by itself and lists every notice it wrote once."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copyfile(tiny_models.flow, models / "flow.pt")
    shutil.copyfile(tiny_models.packet, models / "packet.pt")

    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "demo", f"--models={models}"]
        + [f"--dir={tmp_path / 'demo'}", "--pause=0.05"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 0, proc.stderr
    notice_log = tmp_path / "demo" / "notices" / "bflow_notice.log"
    assert f"notice log: {notice_log}" in proc.stdout
    ids = [r["notice_id"] for r in written_notices(notice_log)]
    expected = expected_notice_ids(tiny_models, sample_sets=demo.SAMPLE_SETS)
    assert sorted(ids) == sorted(expected)
    per_sample = re.findall(r"connections\s+(\d+) notice\(s\)", proc.stdout)
    assert len(per_sample) == len(demo.SAMPLE_SETS)
    assert sum(int(n) for n in per_sample) == len(ids)
    uids = {str(r["uid"]) for r in written_notices(notice_log)}
    rows = [line for line in proc.stdout.splitlines() if set(line.split()) & uids]
    assert len(rows) == min(len(ids), demo.TABLE_ROWS)


def test_demo_without_models_says_what_is_missing(tmp_path: Path) -> None:
    """Without model files the demo names them and exits 1, scoring nothing."""
    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "demo", f"--models={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 1
    assert str(tmp_path / "flow.pt") in proc.stdout
    assert "do not exist" in proc.stdout


def test_busy_metrics_port_is_a_clear_error(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    """A metrics port already in use stops start-up with `error:` naming it."""
    (tmp_path / "logs").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "sensor",
                "run",
                f"--log-dir={tmp_path / 'logs'}",
                f"--state-dir={tmp_path / 'state'}",
                f"--notice-dir={tmp_path / 'notices'}",
                f"--flow-model={tiny_models.flow}",
                f"--metrics-port={port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert proc.returncode == 2
    assert f"error: metrics endpoint 127.0.0.1:{port} cannot be opened" in proc.stderr
