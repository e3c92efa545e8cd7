"""kill -9 at random moments of ingestion: nothing lost, nothing repeated.

"Scored twice" is measured with the daemon's debug ledger: after the notices
of a poll are durable and before the read positions are committed, the
daemon appends the keys of the records of that poll (conn.log: uid; packet
log: uid, direction, packet index). A record counted in two ledger lines
was scored and committed twice; a record in none was lost.
"""

import collections
import json
import os
import random
import time
from pathlib import Path

import pytest

from tests.test_daemon_support import (
    DaemonProcess,
    LogFeeder,
    TinyModels,
    expected_notice_ids,
    iter_ledger,
    tiny_models_fixture,  # noqa: F401
    written_notices,
)

KILLS = 20
COPIES = 3


def _wait_for_growth(path: Path, timeout: float) -> None:
    start_size = path.stat().st_size if path.exists() else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > start_size:
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_kill_9_at_random_points_loses_and_repeats_nothing(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    """After 20 kill -9s and restarts every notice is there once, every record too."""
    seed = int(os.environ.get("BFLOW_CRASH_SEED", "20261204"))
    rng = random.Random(seed)
    feeder = LogFeeder(tmp_path / "logs", copies=COPIES, chunks=KILLS // 2)
    args = ("--batch-size=16",)
    delays = []

    # Before each run one more piece of the logs is appended (the rotation
    # falls halfway); the run is killed at a random moment after its first
    # commit, while it is still working through what it found.
    for _ in feeder.steps():
        daemon = DaemonProcess(tmp_path, tiny_models, *args)
        try:
            daemon.start().wait_ready()
            _wait_for_growth(daemon.ledger, timeout=30)
            delays.append(rng.uniform(0.0, 0.3))
            time.sleep(delays[-1])
        finally:
            daemon.close()
    assert len(delays) == KILLS

    final = DaemonProcess(tmp_path, tiny_models, *args, "--stop-when-idle=3")
    try:
        final.start().wait_ready()
        assert final.wait(120) == 0
    finally:
        final.close()

    context = f"seed={seed} delays={[round(d, 3) for d in delays]}"
    ids = [r["notice_id"] for r in written_notices(final.notice_log)]
    repeated = [i for i, n in collections.Counter(ids).items() if n > 1]
    assert not repeated, f"notices written twice: {repeated[:5]} ({context})"
    expected = expected_notice_ids(tiny_models, copies=COPIES)
    assert set(ids) == expected, context

    counts = collections.Counter(iter_ledger(final.ledger))
    twice = [k for k, n in counts.items() if n > 1]
    assert not twice, f"records scored twice: {twice[:5]} ({context})"
    every = {f"conn:{u}" for u in feeder.uids["conn"]}
    assert {k for k in counts if k.startswith("conn:")} == every, context
    packets = sum(1 for k in counts if k.startswith("bflow_packet:"))
    assert packets == len(feeder.uids["bflow_packet"]), context

    # The kills really landed mid-ingestion: the runs committed something
    # before they were cut off.
    runs = {json.loads(line)["pid"] for line in final.ledger.read_text().splitlines()}
    assert len(runs) >= KILLS // 2, f"only {len(runs)} runs committed ({context})"
