"""`bflow train` and `bflow eval` on real captures and conn.logs."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.artifact import load_model
from model.cli import eval_main, train_main
from model.features.flow import FlowFeatureSchema
from sensor.errors import ConfigError
from tests.conftest import REPO

torch.set_num_threads(1)

TINY = [
    "--set",
    "latent_dim=6",
    "--set",
    "conv_channels=[4, 8]",
    "--set",
    "disc_channels=[4]",
    "--set",
    "mlp_widths=[16]",
    "--set",
    "disc_widths=[16]",
    "--set",
    "classifier_widths=[8]",
    "--set",
    "flow_blocks=2",
    "--set",
    "min_steps=10",
    "--epochs-ae",
    "1",
    "--epochs-flow",
    "2",
    "--epochs-clf",
    "2",
    "--threads",
    "1",
]


def test_train_then_eval_packet_model(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Training writes a loadable model + PNG; eval prints the four figures."""
    pcap = data_dir / "lab/benign-1/benign-1.pcap"
    out = tmp_path / "packet.pt"
    args = ["--kind", "packet", "--input", str(pcap), "--out", str(out)]
    assert train_main([*args, "--input-len", "128", "--tcp-random", "kept", *TINY]) == 0
    assert out.with_suffix(".png").stat().st_size > 10_000

    model = load_model(out, expect_kind="packet")
    meta = model.metadata
    source = meta.training["sources"][0]
    assert source["sha256"] == hashlib.sha256(pcap.read_bytes()).hexdigest()
    assert meta.feature_schema["input_len"] == 128
    assert meta.feature_schema["tcp_random"] == "kept"
    assert meta.slot_norm is not None
    assert meta.validation["fpr_at_threshold"] <= meta.target_fpr
    assert meta.training["records"]["val"] > 0
    assert meta.score == meta.training["config"]["score"] == "flow_knn"

    capsys.readouterr()
    mixed = data_dir / "lab/mixed-3/mixed-3.pcap"
    labels = data_dir / "lab/labels/connections.tsv"
    report = tmp_path / "eval.png"
    code = eval_main(
        ["--model", str(out), "--input", str(mixed), "--labels", str(labels)]
        + ["--report", str(report), "--threads", "1"]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "per connection" in printed and "family" in printed
    assert " 0 unlabeled" in printed
    last = printed.strip().splitlines()[-1].split()
    assert [p.split("=")[0] for p in last] == [
        "auroc",
        "auprc",
        "tpr_at_1pct_fpr",
        "fpr_at_threshold",
    ]
    assert report.stat().st_size > 10_000


def test_train_and_eval_flow_model_on_labeled_conn_log(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flow model trains on a conn.log, with the score asked for, and
    evaluates with its label field."""
    conn = data_dir / "lab/benign-2/zeek/conn.log"
    out = tmp_path / "flow.pt"
    args = ["--kind", "flow", "--input", str(conn), "--out", str(out), *TINY]
    assert train_main([*args, "--score", "classifier"]) == 0
    meta = load_model(out, expect_kind="flow").metadata
    assert meta.score == "classifier"
    schema = FlowFeatureSchema.from_dict(meta.feature_schema)
    assert meta.input_dim == len(schema.columns)

    capsys.readouterr()
    ctu = next(
        (data_dir / "stratosphere-security-datasets/008-zeek-mixed").rglob(
            "conn.log.labeled"
        )
    )
    code = eval_main(
        ["--model", str(out), "--input", str(ctu), "--label-field", "label"]
        + ["--threads", "1"]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "auroc=" in printed.splitlines()[-1]


def test_missing_input_is_a_config_error(tmp_path: Path) -> None:
    """A training input that does not exist is named in a ConfigError."""
    with pytest.raises(ConfigError, match="absent.pcap"):
        train_main(
            ["--kind", "packet", "--input", str(tmp_path / "absent.pcap")]
            + ["--out", str(tmp_path / "m.pt")]
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_without_a_gpu_is_a_config_error(data_dir: Path, tmp_path: Path) -> None:
    """--device cuda on a host without CUDA is refused before any work."""
    pcap = data_dir / "lab/benign-1/benign-1.pcap"
    with pytest.raises(ConfigError, match="--device cuda"):
        train_main(
            ["--kind", "packet", "--input", str(pcap), "--out", str(tmp_path / "m")]
            + ["--device", "cuda"]
        )


def test_eval_without_benign_records_says_what_to_add(data_dir: Path) -> None:
    """Evaluating inputs that hold no benign record is a clear error, not NaN."""
    conn = (
        data_dir / "zeek-generated/malcolm-pcap/pcaps/plugins/zeek-EternalSafety"
        "/wannacry/conn.log"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "eval", "--model"]
        + [str(REPO / "sensor/default_models/flow.pt"), "--input", str(conn)]
        + ["--labels", str(data_dir / "labels/connections.tsv")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "0 benign" in proc.stderr
    assert "nan" not in proc.stdout


def test_daemon_scores_packets_as_the_trained_file_with_their_slots(
    data_dir: Path, tmp_path: Path
) -> None:
    """The daemon's packet scores are the file's, standardised per slot."""
    from model.calibrate import packet_slots
    from model.features.packet import PacketFeatureConfig, packet_features
    from model.features.pcap import sample_pcap
    from sensor.pipeline import load_scorer

    pcap = data_dir / "lab/benign-2/benign-2.pcap"
    out = tmp_path / "packet.pt"
    args = ["--kind", "packet", "--input", str(pcap), "--out", str(out)]
    assert train_main([*args, *TINY]) == 0
    model = load_model(out, expect_kind="packet")
    assert model.slot_norm is not None

    table = sample_pcap(data_dir / "lab/mixed-3/mixed-3.pcap")
    batch = table.to_batches(max_chunksize=table.num_rows)[0]
    keep, scores = load_scorer("packet", out).score(batch)
    x, kept = packet_features(table, PacketFeatureConfig())
    slots = packet_slots(
        table.column("is_orig").to_pylist(), table.column("pkt_index").to_pylist()
    )[kept]
    assert (keep == kept).all()
    np.testing.assert_allclose(scores, model.score(x, slots=slots), rtol=1e-6)
    assert not np.allclose(scores, model.score(x), rtol=1e-3)
