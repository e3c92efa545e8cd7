"""Helpers for the daemon tests: tiny real models and a Zeek log writer.

The models are trained once per session on the benign sample logs with the
engine's `train_three_stage` at toy sizes (seconds). Their thresholds are
set so that a fair share of the sample connections are notices, which is
what the plumbing tests need; detection quality is measured in bench/.

`LogFeeder` writes the bundled real logs into a directory the way Zeek does:
header first, records appended in chunks cut at arbitrary bytes (so lines
arrive in pieces), and a rotation (`#close`, rename to
`conn.<time>.log`, fresh `conn.log` with a new header) midway.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import REPO

SAMPLES = REPO / "sensor" / "samples"
SAMPLE_SETS = ("benign-wikipedia", "attack-wannacry")
LOGS = {"conn": "conn.log", "bflow_packet": "bflow_packet.log"}


@dataclass(frozen=True)
class TinyModels:
    """Paths of the session's flow and packet model files."""

    flow: Path
    packet: Path


def _table(path: Path) -> pa.Table:
    from sensor.reader import read_log

    return pa.Table.from_batches([b.records for b in read_log(path)])


def sample_table(log_name: str) -> pa.Table:
    """All records of one log over the sample sets, benign first."""
    tables = [_table(SAMPLES / s / LOGS[log_name]) for s in SAMPLE_SETS]

    return pa.concat_tables(tables, promote_options="default")


# Test modules import the fixture below, and pytest keeps one instance per
# importing module even for session scope, so the models are cached here.
_TRAINED: list[TinyModels] = []


@pytest.fixture(scope="session", name="tiny_models")
def tiny_models_fixture(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """A flow and a packet model trained on the benign sample logs."""
    if not _TRAINED:
        _TRAINED.append(_train_tiny_models(tmp_path_factory.mktemp("models")))

    return _TRAINED[0]


def _train_tiny_models(out: Path) -> TinyModels:
    import torch

    from model.artifact import ModelMetadata, export_model, load_model
    from model.features.flow import FlowFeatureSchema
    from model.features.packet import PacketFeatureConfig, packet_features
    from model.train import TrainConfig, train_three_stage

    torch.set_num_threads(1)
    benign = SAMPLES / SAMPLE_SETS[0]

    conn = _table(benign / "conn.log")
    schema = FlowFeatureSchema(min_count=1).fit(conn)
    x = schema.transform(conn)
    cfg = TrainConfig(
        kind="flow",
        input_dim=x.shape[1],
        epochs_ae=2,
        epochs_flow=2,
        epochs_clf=2,
        mlp_widths=(16,),
        latent_dim=4,
        classifier_widths=(8,),
        disc_widths=(8,),
        flow_blocks=2,
    )
    trained = train_three_stage(x, x, cfg)
    all_x = schema.transform(sample_table("conn"))
    flow_threshold = _threshold_for(trained, all_x)
    export_model(
        trained,
        out / "flow.pt",
        ModelMetadata(
            kind="flow",
            input_dim=x.shape[1],
            threshold=flow_threshold,
            target_fpr=0.3,
            feature_schema=schema.to_dict(),
        ),
    )

    packets = _table(benign / "bflow_packet.log")
    pcfg = PacketFeatureConfig(input_len=256)
    xp, _ = packet_features(packets.combine_chunks().to_batches()[0], pcfg)
    pcfg_train = TrainConfig(
        kind="packet",
        input_dim=xp.shape[1],
        epochs_ae=2,
        epochs_flow=2,
        epochs_clf=2,
        conv_channels=(4, 8),
        latent_dim=4,
        classifier_widths=(8,),
        disc_channels=(4,),
        disc_widths=(8,),
        flow_blocks=2,
    )
    ptrained = train_three_stage(xp, xp, pcfg_train)
    every = sample_table("bflow_packet").combine_chunks().to_batches()[0]
    xall, _ = packet_features(every, pcfg)
    export_model(
        ptrained,
        out / "packet.pt",
        ModelMetadata(
            kind="packet",
            input_dim=xp.shape[1],
            threshold=_threshold_for(ptrained, xall),
            target_fpr=0.3,
            feature_schema=pcfg.to_dict(),
        ),
    )
    # Both files must load as the daemon loads them.
    load_model(out / "flow.pt", expect_kind="flow")
    load_model(out / "packet.pt", expect_kind="packet")

    return TinyModels(flow=out / "flow.pt", packet=out / "packet.pt")


def _threshold_for(trained: object, x: np.ndarray) -> float:
    """A threshold that about a third of the sample records reach."""
    import torch

    module = trained.scoring_module()  # type: ignore[attr-defined]
    with torch.inference_mode():
        scores = module(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return float(np.quantile(scores, 0.66))


def split_log(path: Path) -> tuple[list[bytes], list[bytes]]:
    """(header lines, record lines) of a TSV log, `#close` left out."""
    header, records = [], []
    for line in path.read_bytes().splitlines(keepends=True):
        if line.startswith(b"#close"):
            continue
        (header if line.startswith(b"#") else records).append(line)

    return header, records


def _with_open(header: list[bytes], stamp: str) -> bytes:
    lines = [
        f"#open\t{stamp}\n".encode() if h.startswith(b"#open") else h for h in header
    ]

    return b"".join(lines)


def _renamed(record: bytes, copy: int) -> bytes:
    if copy == 0:
        return record
    fields = record.split(b"\t")
    fields[1] = fields[1] + f"x{copy}".encode()

    return b"\t".join(fields)


class LogFeeder:
    """Writes the sample logs into `directory` progressively, in a thread.

    Args:
        copies: how many times the sample records are written; copies after
            the first get their uid suffixed (`x1`, `x2`, ...) so every
            connection stays unique.
        chunks: number of appends per file half; cuts fall mid-line.
        pause: seconds between appends.
    """

    def __init__(
        self, directory: Path, *, copies: int = 1, chunks: int = 8, pause: float = 0.05
    ) -> None:
        self.directory = directory
        self.copies = copies
        self.chunks = chunks
        self.pause = pause
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.uids: dict[str, list[str]] = {}
        self._parts: dict[str, tuple[list[bytes], list[bytes]]] = {}
        for log_name, file_name in LOGS.items():
            header: list[bytes] = []
            records: list[bytes] = []
            for s in SAMPLE_SETS:
                h, r = split_log(SAMPLES / s / file_name)
                header = header or h
                records.extend(r)
            every = [_renamed(r, c) for c in range(copies) for r in records]
            self._parts[log_name] = (header, every)
            self.uids[log_name] = [r.split(b"\t")[1].decode() for r in every]
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "LogFeeder":
        """Start writing."""
        self._thread.start()
        return self

    def join(self, timeout: float = 60) -> None:
        """Wait for the writer; re-raise its error."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.done.is_set(), "log feeder did not finish"

    def _run(self) -> None:
        try:
            for _ in self.steps():
                time.sleep(self.pause)
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self.done.set()

    def steps(self) -> Iterator[None]:
        """Write the logs one append at a time, yielding after each.

        Without the thread (`start`), a test can drive the writes itself:
        `for _ in feeder.steps(): ...`.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        halves: dict[str, list[list[bytes]]] = {}
        for log_name, (_, records) in self._parts.items():
            middle = len(records) // 2
            halves[log_name] = [records[:middle], records[middle:]]

        for half, stamp in enumerate(("2026-12-04-10-00-00", "2026-12-04-11-00-00")):
            handles = {}
            for log_name, (header, _) in self._parts.items():
                path = self.directory / LOGS[log_name]
                handles[log_name] = open(path, "ab", buffering=0)  # noqa: SIM115
                handles[log_name].write(_with_open(header, stamp))
            blobs = {k: b"".join(v[half]) for k, v in halves.items()}
            for step in range(self.chunks):
                for log_name, blob in blobs.items():
                    lo = len(blob) * step // self.chunks
                    hi = len(blob) * (step + 1) // self.chunks
                    handles[log_name].write(blob[lo:hi])
                yield
            for log_name, handle in handles.items():
                handle.write(f"#close\t{stamp}\n".encode())
                handle.close()
                if half == 0:
                    live = self.directory / LOGS[log_name]
                    base = LOGS[log_name].removesuffix(".log")
                    os.rename(live, self.directory / f"{base}.{stamp}.log")


def notice_records(path: Path) -> list[dict[str, object]]:
    """The notice log's records, read back with our reader."""
    if not path.exists():
        return []

    return _table(path).to_pylist()


def iter_ledger(path: Path) -> Iterator[str]:
    """Every record key the daemon's debug ledger holds, one per commit."""
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        yield from json.loads(line)["keys"]


class DaemonProcess:
    """`bflow run` as a child process, with a notify socket to see READY.

    Its JSON events go to `events.jsonl` in `work`; `events()` parses them.
    """

    def __init__(self, work: Path, models: TinyModels, *args: str) -> None:
        self.work = work
        for name in ("logs", "state", "notices"):
            (work / name).mkdir(exist_ok=True)
        self.notice_log = work / "notices" / "bflow_notice.log"
        self.ledger = work / "ledger.jsonl"
        self.events_path = work / "events.jsonl"
        self.args = [
            f"--log-dir={work / 'logs'}",
            f"--state-dir={work / 'state'}",
            f"--notice-dir={work / 'notices'}",
            f"--flow-model={models.flow}",
            f"--packet-model={models.packet}",
            f"--ledger={self.ledger}",
            "--poll-interval=0.1",
            "--finish-grace=0.5",
            "--batch-size=64",
            *args,
        ]
        sock_path = work / "notify.sock"
        sock_path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(sock_path))
        self.env = {
            **os.environ,
            "NOTIFY_SOCKET": str(sock_path),
            "OMP_NUM_THREADS": "1",
            "BFLOW_SHARED": str(REPO.parent / "shared"),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "DaemonProcess":
        """Start the daemon (events appended to the events file)."""
        with open(self.events_path, "ab") as events:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sensor", "run", *self.args],
                stdout=events,
                stderr=events,
                env=self.env,
                cwd=REPO,
            )

        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until the daemon sent READY=1 (it has started tailing)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}")
            self.sock.settimeout(0.2)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            if "READY=1" in message.splitlines():
                return
        raise AssertionError("daemon did not become ready")

    def messages(self) -> list[str]:
        """sd_notify messages received since READY (without waiting)."""
        out = []
        self.sock.settimeout(0)
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except (BlockingIOError, TimeoutError):
                return out

    def wait(self, timeout: float = 60) -> int:
        """Wait for the daemon to exit by itself; its exit status."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """kill -9."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        """Kill the child if still running; close the socket."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        self.sock.close()

    def events(self) -> list[dict[str, object]]:
        """The daemon's structured events so far (non-JSON lines skipped)."""
        out = []
        for line in self.events_path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))

        return out


def expected_notice_ids(
    models: TinyModels,
    copies: int = 1,
    sample_sets: tuple[str, ...] = SAMPLE_SETS,
) -> set[str]:
    """The notice ids one uninterrupted pass over the sample logs raises."""
    from sensor.pipeline import Pipeline, load_scorer
    from sensor.reader import read_log

    pipeline = Pipeline(
        [load_scorer("flow", models.flow), load_scorer("packet", models.packet)]
    )
    ids = set()
    for log_name, file_name in LOGS.items():
        for copy in range(copies):
            for s in sample_sets:
                if not (SAMPLES / s / file_name).exists():
                    continue
                for batch in read_log(SAMPLES / s / file_name):
                    records = batch.records
                    if copy:
                        index = records.schema.get_field_index("uid")
                        uids = [
                            f"{u}x{copy}" for u in records.column(index).to_pylist()
                        ]
                        records = records.set_column(
                            index, "uid", pa.array(uids, pa.string())
                        )
                    result = pipeline.process(records, log_name)
                    ids.update(n.notice_id for n in result.notices)

    return ids


def written_notices(path: Path) -> list[dict[str, object]]:
    """Notice records (control records left out) as the notice module reads."""
    from sensor.contract import NOTICE_KINDS
    from sensor.notice import read_notices

    if not path.exists():
        return []

    return [r for r in read_notices(path) if r["kind"] in NOTICE_KINDS]
