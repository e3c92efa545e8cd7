"""`bflow retrain` and `bflow rollback` end to end on real Zeek logs.

The archive is built from the lab captures' conn.logs (`data/lab`), each run
moved by whole days so that a week of zeekctl-style folders exists:

    2026-12-04 benign-1   2026-12-07 mixed-1 (attacks)   2026-11-29 mixed-2
    2026-12-05 benign-2   2026-12-08 benign-4            (outside the window)
    2026-12-06 benign-3   2026-12-09 benign-5

Zeek's notice.log for 2026-12-07 names the attacker 192.0.2.66 (a
Scan::Port_Scan notice without a uid, as Zeek writes them), and our notice
log names one benign connection by uid (a false positive). The training
sizes are tiny so that a retraining takes seconds on two busy cores.
"""

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from model.artifact import load_model
from model.promote import History
from model.retrain import EXIT_PROMOTED, EXIT_REJECTED, retrain_main, rollback_main
from sensor.errors import ConfigError
from tests.conftest import DATA, REPO

pytestmark = pytest.mark.slow

DAY = 86400
NOW = "2026-12-11T00:00:00Z"
ATTACKER = "192.0.2.66"
SERVER = "192.0.2.10"
# The operator allow-lists the site's own server and workstations; a notice
# then leaves out only the noticed connection, not all of a host's traffic.
OWN_HOSTS = "192.0.2.0/26"
# The first model, the yardstick of the later ones, has the default sizes;
# later candidates whose quality no test looks at are trained briefly.
REFERENCE: dict[str, object] = {}
# Seeds 0-3 gave first models that separate the lab attacks with AUROC
# 0.17, 0.20, 0.50 and 0.79: the poisoning test needs a yardstick that
# detects the attack, so the first model uses seed 3 (it skips, saying so,
# if a change of the model code takes that away).
REFERENCE_SEED = "3"
BRIEF = {"epochs_ae": 2, "epochs_flow": 2, "epochs_clf": 2, "min_steps": 60}
RUNS = {
    "benign-1": 0,
    "benign-2": 1,
    "benign-3": 2,
    "mixed-1": 3,
    "benign-4": 4,
    "benign-5": 5,
    "mixed-2": -5,
}
# For the tests about reloading and rollback: a second, briefly trained
# model. How well a model flags the lab attacks swings with the seed and the
# training length (AUROC 0.17 to 0.92 over seeds 0-2 at default sizes), so
# its detection is not compared with the first one's here; the poisoning
# test below and tests/test_retrain_gates.py check that comparison.
SAME_DETECTION_NOT_ASKED = (
    "--seed",
    "2",
    "--max-detection-drop",
    "1",
    "--max-auroc-drop",
    "1",
)
# Benign protocol samples (KRB5, MQTT, NTP, RADIUS) from another network.
NEW_TRAFFIC = ("KRB5", "MQTT", "NTP", "RADIUS")

ZEEK_NOTICE_HEADER = (
    "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n"
    "#unset_field\t-\n#path\tnotice\n#open\t2026-12-07-17-08-40\n"
    "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tfuid\t"
    "proto\tnote\tmsg\tsub\tsrc\tdst\tp\tn\tpeer_descr\tactions\t"
    "suppress_for\n"
    "#types\ttime\tstring\taddr\tport\taddr\tport\tstring\tenum\tenum\t"
    "string\tstring\taddr\taddr\tport\tcount\tstring\tset[enum]\tinterval\n"
)


def _records(path: Path) -> list[list[str]]:
    return [
        line.split("\t")
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    ]


def _shifted(src: Path, seconds: float) -> tuple[bytes, float, float]:
    """The log's bytes with every record's ts moved; first and last ts."""
    out, stamps = [], []
    for line in src.read_bytes().splitlines(keepends=True):
        if not line.startswith(b"#"):
            fields = line.rstrip(b"\n").split(b"\t")
            ts = float(fields[0]) + seconds
            stamps.append(ts)
            fields[0] = b"%.6f" % ts
            line = b"\t".join(fields) + b"\n"
        out.append(line)

    return b"".join(out), min(stamps), max(stamps)


def _place(root: Path, src: Path, seconds: float) -> Path:
    """Archive a shifted copy under its day folder, named like zeekctl does."""
    data, first, last = _shifted(src, seconds)
    start = datetime.fromtimestamp(first, UTC)
    end = datetime.fromtimestamp(last + 60, UTC)
    folder = root / f"{start:%Y-%m-%d}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"conn.{start:%H:%M:%S}-{end:%H:%M:%S}.log.gz"
    path.write_bytes(gzip.compress(data))

    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A week of zeekctl-style folders from the lab runs, with notices."""
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    root = tmp_path_factory.mktemp("archive")
    logs = root / "logs"
    for run, days in RUNS.items():
        _place(logs, DATA / "lab" / run / "zeek" / "conn.log", days * DAY)

    scan_end = 1796404117.314194 + 3 * DAY
    (logs / "2026-12-07" / "notice.17:00:00-18:00:00.log").write_text(
        ZEEK_NOTICE_HEADER + f"{scan_end:.6f}\t-\t-\t-\t-\t-\t-\ttcp\tScan::Port_Scan\t"
        f"{ATTACKER} scanned at least 15 unique ports of host {SERVER} "
        f"in 0m16s\tlocal\t{ATTACKER}\t{SERVER}\t-\t-\t-\t"
        "Notice::ACTION_LOG\t3600.000000\n"
        "#close\t2026-12-07-18-00-00\n"
    )

    benign = _records(DATA / "lab" / "benign-3" / "zeek" / "conn.log")[5]
    (root / "bflow_notice.log").write_text(
        "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n"
        "#unset_field\t-\n#path\tbflow_notice\n"
        "#fields\tts\tnotice_id\tuid\tid.orig_h\tid.orig_p\tid.resp_h\t"
        "id.resp_p\tkind\tmodel_version\tmsg\tthreshold\tscore\n"
        "#types\ttime\tstring\tstring\taddr\tport\taddr\tport\tstring\t"
        "string\tstring\tdouble\tdouble\n"
        f"{float(benign[0]) + 2 * DAY:.6f}\tn1\t{benign[1]}\t{benign[2]}\t"
        f"{benign[3]}\t{benign[4]}\t{benign[5]}\tflow\tv0\tsuspicious\t0.1\t0.5\n"
    )
    (root / "reference.json").write_text(json.dumps(REFERENCE))
    (root / "brief.json").write_text(json.dumps(BRIEF))

    return root


def _retrain_args(
    archive: Path, model: Path, *extra: str, sizes: str = "brief"
) -> list[str]:
    return [
        "--model",
        str(model),
        "--kind",
        "flow",
        "--archive",
        str(archive / "logs"),
        "--notice-log",
        str(archive / "bflow_notice.log"),
        "--allow",
        OWN_HOSTS,
        "--now",
        NOW,
        "--target-fpr",
        "0.01",
        "--train-config",
        str(archive / f"{sizes}.json"),
        *extra,
    ]


@pytest.fixture(scope="module")
def first_model(
    archive: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int]:
    """A models folder after the first retraining (no model before it)."""
    torch.set_num_threads(1)
    models = tmp_path_factory.mktemp("first") / "models"
    models.mkdir()
    args = _retrain_args(
        archive, models / "flow.pt", "--seed", REFERENCE_SEED, sizes="reference"
    )
    code = retrain_main(args)

    return models, code


def _copy_models(models: Path, tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(models, target)

    return target


def test_first_retraining_promotes_a_model_from_the_archive(
    first_model: tuple[Path, int],
) -> None:
    """A first run on real logs leaves out noticed hosts and promotes a model."""
    models, code = first_model
    live = models / "flow.pt"
    report = json.loads((models / "flow.retrain.json").read_text())
    counts = report["data"]["counts"]
    mixed1 = _records(DATA / "lab" / "mixed-1" / "zeek" / "conn.log")
    attacker = [r for r in mixed1 if ATTACKER in (r[2], r[4])]

    assert code == EXIT_PROMOTED
    assert report["decision"] == "promoted"
    model = load_model(live, expect_kind="flow")
    assert model.metadata.model_version == report["version"]
    assert model.metadata.target_fpr == 0.01
    # Flow scores are not standardised per packet slot.
    assert model.metadata.slot_norm is None

    # Every connection of the noticed host and the one noticed uid are out;
    # mixed-2 (2026-11-29) lies outside the 7-day window and is not read.
    assert counts["records_noticed_host"] == len(attacker)
    assert counts["records_noticed_uid"] == 1
    assert counts["records_known_bad"] == len(attacker) + 1
    in_window = sum(
        len(_records(DATA / "lab" / run / "zeek" / "conn.log"))
        for run, days in RUNS.items()
        if days >= 0
    )
    assert counts["records_read"] == in_window
    clean = in_window - len(attacker) - 1
    assert counts["records_baseline"] + counts["records_holdout"] == clean
    assert not any("mixed-2" in f["path"] for f in report["data"]["files"])

    verdicts = {g["name"]: g["verdict"] for g in report["gates"]}
    assert verdicts == {
        "holdout_fpr": "pass",
        "separation": "pass",
        "schema": "skipped",
        "vs_current": "skipped",
    }

    entry = History(live).live_entry()
    assert entry is not None and entry.version == report["version"]
    assert entry.model.read_bytes() == live.read_bytes()
    assert entry.png.read_bytes().startswith(b"\x89PNG")
    kept = json.loads(entry.report.read_text())
    assert kept["gates"] == report["gates"]


def _events(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [
        json.loads(line)
        for line in path.read_text().splitlines()
        if line.startswith("{")
    ]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _ledger_keys(path: Path) -> Iterator[str]:
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        yield from json.loads(line)["keys"]


def test_running_daemon_takes_the_promoted_model_without_losing_a_record(
    archive: Path, first_model: tuple[Path, int], tmp_path: Path
) -> None:
    """`bflow run` reloads a promoted model in place; every record once."""
    models = _copy_models(first_model[0], tmp_path)
    live = models / "flow.pt"
    old_version = load_model(live).metadata.model_version
    conn = DATA / "lab" / "benign-5" / "zeek" / "conn.log"
    lines = conn.read_text().splitlines(keepends=True)
    header = [x for x in lines if x.startswith("#") and not x.startswith("#close")]
    body = [x for x in lines if not x.startswith("#")]
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "conn.log").write_text("".join(header + body[:200]))
    ledger = tmp_path / "ledger.jsonl"
    events = tmp_path / "events.jsonl"

    with open(events, "wb") as sink:
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sensor",
                "run",
                f"--log-dir={logs}",
                f"--state-dir={tmp_path / 'state'}",
                f"--notice-dir={tmp_path / 'notices'}",
                f"--flow-model={live}",
                f"--ledger={ledger}",
                "--poll-interval=0.1",
                "--model-check-interval=0.2",
            ],
            stdout=sink,
            stderr=sink,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            cwd=REPO,
        )
    try:
        _wait_for(lambda: len(list(_ledger_keys(ledger))) >= 200, "first records")

        code = retrain_main(_retrain_args(archive, live, *SAME_DETECTION_NOT_ASKED))
        new_version = load_model(live).metadata.model_version

        def reloaded() -> bool:
            return any(
                e.get("event") == "model.reloaded"
                and e.get("model_version") == new_version
                for e in _events(events)
            )

        _wait_for(reloaded, "model.reloaded")
        with open(logs / "conn.log", "a") as stream:
            stream.write("".join(body[200:]))
        _wait_for(lambda: len(list(_ledger_keys(ledger))) >= len(body), "all records")
        daemon.send_signal(signal.SIGTERM)
        status = daemon.wait(60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)

    assert code == EXIT_PROMOTED
    assert new_version != old_version
    assert status == 0
    keys = Counter(_ledger_keys(ledger))
    assert set(keys) == {f"conn:{r.split(chr(9))[1]}" for r in body}
    assert max(keys.values()) == 1
    started = [e for e in _events(events) if e.get("event") == "daemon.started"]
    assert len(started) == 1
    pids = {json.loads(x)["pid"] for x in ledger.read_text().splitlines()}
    assert pids == {daemon.pid}


@pytest.fixture(scope="module")
def drift_archive(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lab's benign days, then two days ago new protocols appear.

    The new traffic is benign protocol samples from another network (KRB5,
    MQTT, NTP, RADIUS; labelled benign per connection in
    data/labels/connections.tsv), moved to 2026-12-10: the newest slice,
    held out from training, is mostly traffic the candidate never saw.
    """
    root = tmp_path_factory.mktemp("drift")
    logs = root / "logs"
    for run, days in RUNS.items():
        if run.startswith("benign"):
            _place(logs, DATA / "lab" / run / "zeek" / "conn.log", days * DAY)
    zeek = DATA / "zeek-generated" / "malcolm-pcap" / "pcaps" / "protocols"
    base = datetime(2026, 12, 10, 8, tzinfo=UTC).timestamp()
    for i, name in enumerate(NEW_TRAFFIC):
        src = zeek / name / "conn.log"
        first = min(float(r[0]) for r in _records(src))
        _place(logs, src, base + i * 3 * 3600 - first)
    shutil.copy(archive / "brief.json", root / "brief.json")
    (root / "bflow_notice.log").write_text("")

    return root


def test_gate_rejects_candidate_and_keeps_the_model_in_service(
    drift_archive: Path, first_model: tuple[Path, int], tmp_path: Path
) -> None:
    """A candidate failing a gate changes nothing in service, byte for byte."""
    models = _copy_models(first_model[0], tmp_path)
    live = models / "flow.pt"
    before = _sha(live)
    inode = live.stat().st_ino
    kept_before = sorted(p.name for p in (models / "history").iterdir())

    code = retrain_main(
        [
            "--model",
            str(live),
            "--archive",
            str(drift_archive / "logs"),
            "--now",
            NOW,
            "--train-config",
            str(drift_archive / "brief.json"),
        ]
    )

    report = json.loads((models / "flow.retrain.json").read_text())
    gates = {g["name"]: g for g in report["gates"]}
    assert code == EXIT_REJECTED
    assert report["decision"] == "rejected"
    assert gates["holdout_fpr"]["verdict"] == "fail"
    hold = gates["holdout_fpr"]
    assert hold["false_positives"] > hold["allowed_false_positives"]
    assert _sha(live) == before and live.stat().st_ino == inode
    kept_after = sorted(p.name for p in (models / "history").iterdir())
    assert kept_after == sorted({*kept_before, "rejected"})
    rejected = models / "history" / "rejected"
    assert (rejected / f"flow-{report['version']}.json").is_file()
    assert not list(rejected.glob("*.pt"))
    leftovers = [p.name for p in models.iterdir() if p.name.startswith(".")]
    assert leftovers == [".flow.pt.lock"]


@pytest.fixture(scope="module")
def promoted_twice(
    archive: Path,
    first_model: tuple[Path, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, str, str]:
    """The first models folder after a second promotion; both versions."""
    models = _copy_models(first_model[0], tmp_path_factory.mktemp("twice"))
    live = models / "flow.pt"
    first = load_model(live).metadata.model_version
    code = retrain_main(_retrain_args(archive, live, *SAME_DETECTION_NOT_ASKED))
    assert code == EXIT_PROMOTED

    return models, first, load_model(live).metadata.model_version


def test_rollback_restores_the_previous_file_and_back(
    promoted_twice: tuple[Path, str, str],
) -> None:
    """Rollback puts the earlier model's exact bytes back, then --to undoes it."""
    models, first, second = promoted_twice
    live = models / "flow.pt"
    history = History(live)
    first_bytes = history.find(first).model.read_bytes()  # type: ignore[union-attr]
    second_bytes = live.read_bytes()
    inode = live.stat().st_ino

    assert rollback_main(["--model", str(live)]) == 0
    assert live.read_bytes() == first_bytes
    assert live.stat().st_ino != inode
    assert load_model(live).metadata.model_version == first

    assert rollback_main(["--model", str(live), "--to", second]) == 0
    assert live.read_bytes() == second_bytes

    with pytest.raises(ConfigError, match="no kept model with version 'nope'"):
        rollback_main(["--model", str(live), "--to", "nope"])


def test_packet_model_retrains_from_the_packet_log(tmp_path: Path) -> None:
    """The packet log path: noticed hosts' packets left out, a packet model gated."""
    import base64

    from model.features.pcap import sample_pcap
    from sensor.contract import PACKET_LOG_FIELDS, PACKET_LOG_PATH
    from sensor.zeekwriter import LogFormat, write_log

    torch.set_num_threads(1)
    fmt = LogFormat.from_fields(PACKET_LOG_PATH, PACKET_LOG_FIELDS, port_proto=False)
    logs = tmp_path / "logs"
    expected_out = 0
    for run, days in (("mixed-1", 0), ("benign-1", 1), ("benign-2", 2)):
        records = sample_pcap(DATA / "lab" / run / f"{run}.pcap").to_pylist()
        for record in records:
            record["ts"] += days * DAY
            # The Zeek script logs frames base64-encoded.
            record["frame"] = base64.b64encode(record["frame"]).decode()
            expected_out += ATTACKER in (record["id.orig_h"], record["id.resp_h"])
        start = datetime.fromtimestamp(records[0]["ts"], UTC)
        folder = logs / f"{start:%Y-%m-%d}"
        folder.mkdir(parents=True, exist_ok=True)
        write_log(folder / f"bflow_packet.{start:%H}:00:00-23:00:00.log", fmt, records)
    scan = 1796404117.314194
    (logs / "2026-12-04" / "notice.17:00:00-18:00:00.log").write_text(
        ZEEK_NOTICE_HEADER
        + f"{scan:.6f}\t-\t-\t-\t-\t-\t-\ttcp\tScan::Port_Scan\tscan\tlocal\t"
        f"{ATTACKER}\t{SERVER}\t-\t-\t-\tNotice::ACTION_LOG\t3600.000000\n"
    )
    settings = tmp_path / "train.json"
    settings.write_text(
        json.dumps(
            {
                "epochs_ae": 2,
                "epochs_flow": 2,
                "epochs_clf": 2,
                "min_steps": 40,
                "conv_channels": [8, 16],
                "disc_channels": [8, 16],
                "latent_dim": 16,
            }
        )
    )
    models = tmp_path / "models"
    models.mkdir()

    code = retrain_main(
        [
            "--model",
            str(models / "packet.pt"),
            "--kind",
            "packet",
            "--archive",
            str(logs),
            "--now",
            "2026-12-07T00:00:00Z",
            "--allow",
            OWN_HOSTS,
            "--target-fpr",
            "0.01",
            "--train-config",
            str(settings),
            "--dry-run",
        ]
    )

    report = json.loads((models / "packet.retrain.json").read_text())
    counts = report["data"]["counts"]
    assert report["kind"] == "packet"
    assert counts["records_noticed_host"] == expected_out > 0
    assert [g["name"] for g in report["gates"]] == [
        "holdout_fpr",
        "separation",
        "schema",
        "vs_current",
    ]
    # A dry run decides but never installs, whatever the gates said.
    assert report["decision"].startswith("dry-run")
    assert code == (EXIT_PROMOTED if "would promote" in report["decision"] else 1)
    assert not (models / "packet.pt").exists()


@pytest.fixture(scope="module")
def poisoned_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A week whose attacks raised no notice, and last month's incident log.

    mixed-3 (the same ten attack families as mixed-1, from 192.0.2.66) sits
    in the window unnoticed, so training would learn it as normal. The
    operator kept the attacker's connections of the earlier incident
    (mixed-1) as a regression set for `--known-bad`.
    """
    root = tmp_path_factory.mktemp("poisoned")
    logs = root / "logs"
    days = {"benign-1": 0, "benign-2": 1, "mixed-3": 2, "benign-3": 3}
    days |= {"benign-4": 4, "benign-5": 5}
    for run, day in days.items():
        _place(logs, DATA / "lab" / run / "zeek" / "conn.log", day * DAY)
    mixed1 = DATA / "lab" / "mixed-1" / "zeek" / "conn.log"
    lines = mixed1.read_text().splitlines(keepends=True)
    kept = [
        x
        for x in lines
        if x.startswith("#") or ATTACKER in (x.split("\t")[2], x.split("\t")[4])
    ]
    (root / "incident.log").write_text("".join(kept))
    (root / "reference.json").write_text(json.dumps(REFERENCE))

    return root


def test_gate_rejects_a_candidate_trained_on_unnoticed_attacks(
    poisoned_archive: Path, first_model: tuple[Path, int], tmp_path: Path
) -> None:
    """Poisoned training data blinds the candidate to a past attack: rejected."""
    models = _copy_models(first_model[0], tmp_path)
    live = models / "flow.pt"
    reference = json.loads((first_model[0] / "flow.retrain.json").read_text())
    if reference["known_bad"]["auroc_vs_holdout"] < 0.6:
        pytest.skip(
            "the first model does not separate the lab attacks itself "
            f"(AUROC {reference['known_bad']['auroc_vs_holdout']:.2f}), so "
            "it cannot show what a poisoned candidate lost"
        )
    before = _sha(live)

    code = retrain_main(
        [
            "--model",
            str(live),
            "--archive",
            str(poisoned_archive / "logs"),
            "--known-bad",
            str(poisoned_archive / "incident.log"),
            "--now",
            NOW,
            "--train-config",
            str(poisoned_archive / "reference.json"),
        ]
    )

    report = json.loads((models / "flow.retrain.json").read_text())
    gates = {g["name"]: g for g in report["gates"]}
    versus = gates["vs_current"]
    assert code == EXIT_REJECTED
    assert versus["verdict"] == "fail"
    assert versus["candidate_detection"] < versus["current_detection"] - 0.25
    assert report["data"]["counts"]["records_noticed_host"] == 0
    assert _sha(live) == before
