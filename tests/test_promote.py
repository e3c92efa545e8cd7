"""Atomic model replacement and the history of models kept beside it."""

import os
import threading
from pathlib import Path

import pytest

from model.promote import (
    History,
    file_sha256,
    install,
    model_lock,
    safe_version,
    write_json,
)
from sensor.errors import ConfigError


def _report(version: str, when: str) -> dict[str, object]:
    return {"version": version, "promoted_at": when}


def test_install_replaces_target_with_new_inode(tmp_path: Path) -> None:
    """Installing renames a fresh file over the target, so watchers see a new file."""
    target = tmp_path / "flow.pt"
    target.write_bytes(b"old model")
    before = os.stat(target)
    source = tmp_path / "candidate.bin"
    source.write_bytes(b"new model bytes")

    install(source, target)

    assert target.read_bytes() == b"new model bytes"
    assert os.stat(target).st_ino != before.st_ino
    assert source.read_bytes() == b"new model bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidate.bin", "flow.pt"]


def test_reader_never_sees_a_partial_model(tmp_path: Path) -> None:
    """While models are installed over and over, every read is one whole file."""
    target = tmp_path / "flow.pt"
    versions = [bytes([i]) * 300_000 for i in range(1, 6)]
    sources = []
    for i, data in enumerate(versions):
        path = tmp_path / f"v{i}.bin"
        path.write_bytes(data)
        sources.append(path)
    install(sources[0], target)
    done = threading.Event()
    seen: list[bytes] = []

    def read_loop() -> None:
        while not done.is_set():
            seen.append(target.read_bytes())

    reader = threading.Thread(target=read_loop)
    reader.start()
    for _ in range(20):
        for source in sources:
            install(source, target)
    done.set()
    reader.join()

    assert seen
    assert all(data in versions for data in seen)


def test_history_keeps_last_n_and_the_live_one(tmp_path: Path) -> None:
    """Pruning drops the oldest kept models but never the one in service."""
    live = tmp_path / "flow.pt"
    history = History(live, keep=2)
    for i in range(4):
        model = tmp_path / f"m{i}.bin"
        model.write_bytes(f"model {i}".encode())
        history.add(model, _report(f"v{i}", f"2026-12-0{i + 1}T00:00:00Z"))
    install(history.entries()[0].model, live)

    dropped = history.prune()

    kept = [e.version for e in history.entries()]
    assert dropped == ["v1"]
    assert kept == ["v0", "v2", "v3"]
    assert history.live_entry() is not None
    assert history.live_entry().version == "v0"  # type: ignore[union-attr]


def test_history_entry_records_hash_of_kept_bytes(tmp_path: Path) -> None:
    """A kept model's report names the SHA-256 of exactly the kept bytes."""
    live = tmp_path / "flow.pt"
    model = tmp_path / "m.bin"
    model.write_bytes(b"abc")
    entry = History(live).add(model, _report("2026/12:x", "2026-12-01T00:00:00Z"))

    assert entry.model.name == "flow-2026_12_x.pt"
    assert entry.sha256 == file_sha256(entry.model) == file_sha256(model)
    assert History(live).find("2026/12:x") == entry


def test_keep_zero_is_refused(tmp_path: Path) -> None:
    """Keeping no history would make rollback impossible, so it is an error."""
    with pytest.raises(ConfigError, match="keep at least 1"):
        History(tmp_path / "flow.pt", keep=0)


def test_safe_version_has_no_path_separators() -> None:
    """A version from metadata cannot climb out of the history directory."""
    assert "/" not in safe_version("../../etc/passwd")
    assert not safe_version("../../etc/passwd").startswith(".")


def test_write_json_is_whole_or_absent(tmp_path: Path) -> None:
    """The report JSON is written through a temp file and renamed into place."""
    target = tmp_path / "report.json"
    write_json({"a": 1}, target)

    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_second_worker_on_one_model_is_refused(tmp_path: Path) -> None:
    """While one retraining holds a model's lock, another fails at once."""
    live = tmp_path / "flow.pt"

    with (
        model_lock(live),
        pytest.raises(ConfigError, match="another `bflow retrain`"),
        model_lock(live),
    ):
        pass
    with model_lock(live):
        pass


def test_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A model path in a folder that does not exist names the folder."""
    with (
        pytest.raises(ConfigError, match="must exist and be writable"),
        model_lock(tmp_path / "nope" / "flow.pt"),
    ):
        pass


def test_rejected_reports_are_pruned_to_keep(tmp_path: Path) -> None:
    """Reports of rejected candidates do not pile up: the newest `keep` stay."""
    from model.retrain import _prune_rejected

    for i in range(5):
        report = tmp_path / f"flow-v{i}.json"
        report.write_text("{}")
        report.with_suffix(".png").write_bytes(b"png")
        os.utime(report, (1000 + i, 1000 + i))

    _prune_rejected(tmp_path, "flow", 2)

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "flow-v3.json",
        "flow-v3.png",
        "flow-v4.json",
        "flow-v4.png",
    ]
