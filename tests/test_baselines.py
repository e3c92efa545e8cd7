"""Baseline detectors, detection metrics and the benchmark's label joins."""

import ipaddress
from pathlib import Path

import numpy as np
import pytest
import torch

from model.baselines import (
    AutoencoderDetector,
    GanomalyDetector,
    IsolationForestDetector,
    LOFDetector,
    NearestNeighbourDetector,
    OneClassSVMDetector,
    PCADetector,
    ZatMatrix,
    conn_dataframe,
    detection_metrics,
    tpr_at_fpr,
    ttl_rarity_score,
)
from model.datasets import (
    LabelIndex,
    flow_set,
    packet_set,
    read_conn_log,
    read_labels,
    split_ids,
    write_split,
)
from model.features.packet import PacketFeatureConfig, frame_features

CTU_008 = "stratosphere-security-datasets/008-zeek-mixed/data/conn.log.labeled"


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lab_labels(data_dir: Path) -> list:  # type: ignore[type-arg]
    return read_labels(data_dir / "lab/labels/connections.tsv")


def test_metrics_on_separated_and_constant_scores() -> None:
    """Perfectly separated scores give 1.0; constant scores give 0.5 and TPR 0."""
    normal = np.arange(1000, dtype=np.float64)
    anomalous = np.arange(1000, 1100, dtype=np.float64)

    good = detection_metrics(normal, anomalous, threshold=990.0)
    assert good.auroc == 1.0 and good.auprc == 1.0 and good.tpr_at_1pct_fpr == 1.0
    assert good.fpr_at_threshold == pytest.approx(0.01)

    flat = detection_metrics(np.zeros(1000), np.zeros(100))
    assert flat.auroc == 0.5 and flat.tpr_at_1pct_fpr == 0.0


def test_tpr_at_fpr_uses_the_normal_quantile() -> None:
    """TPR at 1 % FPR counts anomalies above the cut that 1 % of normals pass."""
    normal = np.arange(1000, dtype=np.float64)
    anomalous = np.array([988.5, 989.5, 2000.0])

    assert tpr_at_fpr(normal, anomalous, 0.01) == pytest.approx(2 / 3)


def test_ttl_rarity_scores_unseen_ttls_higher() -> None:
    """A TTL never seen in training is rarer than the common one."""
    train = np.array([64] * 99 + [128])
    scores = ttl_rarity_score(train, np.array([64, 128, 255]))

    assert scores[0] < scores[1] < scores[2]


@pytest.fixture(scope="module")
def lab_packets(data_dir: Path, lab_labels: list) -> np.ndarray:  # type: ignore[type-arg]
    ps = packet_set(data_dir, lab_labels, ["lab/benign-2/benign-2.pcap"])
    x, keep = frame_features(ps.frames, ps.link_types, PacketFeatureConfig(128))
    assert keep.all()
    return x


@pytest.mark.parametrize(
    "make",
    [
        lambda: IsolationForestDetector(n_estimators=50),
        lambda: PCADetector(),
        lambda: AutoencoderDetector(epochs=5),
        lambda: OneClassSVMDetector(),
        lambda: LOFDetector(),
        lambda: NearestNeighbourDetector(),
    ],
)
def test_detectors_rank_random_bytes_above_real_packets(make, lab_packets) -> None:  # type: ignore[no-untyped-def]
    """Fitted on real benign packets, a detector scores random bytes higher."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(lab_packets))
    train, held_out = lab_packets[order[:600]], lab_packets[order[600:800]]
    noise = rng.random(held_out.shape, dtype=np.float32)

    det = make().fit(train)
    normal, odd = det.score(held_out), det.score(noise)

    assert normal.shape == (200,) and np.isfinite(normal).all()
    assert detection_metrics(normal, odd).auroc > 0.9


def test_ganomaly_is_seeded_and_finite(lab_packets) -> None:  # type: ignore[no-untyped-def]
    """The GANomaly baseline gives the same finite scores for the same seed.

    Unlike the others it is not held to ranking random bytes high: its
    latent-distance score is known to rank uniform noise low (DETECTION.md).
    """
    train, test = lab_packets[:300], lab_packets[300:400]

    first = GanomalyDetector(epochs=1, seed=4).fit(train).score(test)
    second = GanomalyDetector(epochs=1, seed=4).fit(train).score(test)

    assert first.shape == (100,) and np.isfinite(first).all()
    assert np.allclose(first, second)


def test_label_index_matches_either_direction_and_latest_start(lab_labels) -> None:  # type: ignore[no-untyped-def]
    """A packet finds its connection whichever side sent it, by latest start."""
    index = LabelIndex(lab_labels)
    row = next(r for r in lab_labels if r.proto == "tcp")
    a = (ipaddress.ip_address(row.orig_h).packed, row.orig_p)
    b = (ipaddress.ip_address(row.resp_h).packed, row.resp_p)
    found = index.find(row.pcap, 6, b, a, row.first_ts_us + 5)

    assert index.labels[found].key == row.key
    earlier = index.find(row.pcap, 6, a, b, row.first_ts_us - 1)
    assert earlier == -1 or index.labels[earlier].first_ts_us < row.first_ts_us


def test_lab_packets_all_join_and_split_is_a_partition(
    data_dir, lab_labels, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Every sampled lab packet joins a label; seeded splits are disjoint."""
    ps = packet_set(data_dir, lab_labels, ["lab/mixed-2/mixed-2.pcap"])
    assert len(ps) > 0 and (ps.conn >= 0).all()
    assert {"benign", "attack"} == set(ps.label.tolist())

    train, val, test = split_ids(ps.conn, seed=3, fractions=(0.6, 0.2, 0.2))
    again = split_ids(ps.conn, seed=3, fractions=(0.6, 0.2, 0.2))
    assert all(
        np.array_equal(x, y) for x, y in zip((train, val, test), again, strict=True)
    )
    assert not set(train) & set(val) and not set(val) & set(test)
    assert set(train) | set(val) | set(test) == set(ps.conn.tolist())

    out = tmp_path / "split.tsv"
    write_split(out, ps.labels, {"train": train, "val": val, "test": test})
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + len(set(ps.conn.tolist()))
    assert lines[1].split("\t")[1] == "lab/mixed-2/mixed-2.pcap"


def test_lab_conn_log_records_all_get_labels(data_dir, lab_labels) -> None:  # type: ignore[no-untyped-def]
    """Zeek's conn.log of a lab run joins its label file record for record."""
    fs = flow_set(
        data_dir,
        lab_labels,
        {"lab/mixed-2/mixed-2.pcap": data_dir / "lab/mixed-2/zeek/conn.log"},
    )

    assert fs.records.num_rows > 0 and (fs.label != "").all()
    assert {"benign", "attack"} == set(fs.label.tolist())


def test_zat_matrix_has_no_nans_on_real_conn_log(data_dir) -> None:  # type: ignore[no-untyped-def]
    """zat's DataFrameToMatrix on a real conn.log leaves no NaN (pandas 2.x)."""
    import contextlib
    import io

    table = read_conn_log(data_dir / CTU_008)
    with contextlib.redirect_stdout(io.StringIO()):
        matrix = ZatMatrix().fit_transform(conn_dataframe(table))

    assert matrix.shape[0] == table.num_rows
    assert np.isfinite(matrix).all()
