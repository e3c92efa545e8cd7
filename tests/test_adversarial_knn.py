"""Attacks on the flow_knn packet score: repeated packets, bad settings, odd
batches, each checked on a model trained on real lab packets and its file."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import structlog.testing
import torch

from model.artifact import ModelMetadata, ScoringModel, export_model, load_model
from model.calibrate import (
    POOLED_SLOT,
    SlotNorm,
    calibrate_threshold,
    false_positive_rate,
)
from model.cli import _overrides
from model.features.packet import PacketFeatureConfig
from model.flow import FlowKNN, NormalizingFlow
from model.train import TrainConfig, TrainedModel, train_three_stage
from sensor.errors import ConfigError
from tests.test_model_train import INPUT_LEN, small_config

torch.set_num_threads(1)

TARGET = 0.01
HEARTBEATS = 60


def _config(**changes: object) -> TrainConfig:
    """`small_config` of the training tests with a shorter stage 3."""
    return small_config(**{"epochs_clf": 2, **changes})


@pytest.fixture(scope="module")
def heartbeat_site(
    benign_packets: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    """A site whose first originator packet (slot 0) is always the same
    heartbeat, all other packets varied real traffic; trained, standardised
    per slot and calibrated as `bflow train` does, then exported."""
    beat = benign_packets[:1]
    x_train = np.concatenate([benign_packets[1:700], np.repeat(beat, 200, axis=0)])
    x_val = np.concatenate([benign_packets[700:], np.repeat(beat, HEARTBEATS, axis=0)])
    slot_val = np.full(len(x_val), POOLED_SLOT, dtype=np.int64)
    slot_val[-HEARTBEATS:] = 0
    trained = train_three_stage(x_train, x_val, _config())

    norm = SlotNorm.fit(trained.score(x_val), slot_val)
    val_scores = norm.apply(trained.score(x_val), slot_val)
    threshold = calibrate_threshold(val_scores, TARGET)
    meta = ModelMetadata(
        kind="packet",
        input_dim=INPUT_LEN,
        threshold=threshold,
        target_fpr=TARGET,
        feature_schema=PacketFeatureConfig(input_len=INPUT_LEN).to_dict(),
        slot_norm=norm.to_dict(),
    )
    path = tmp_path_factory.mktemp("knn") / "heartbeat.pt"
    export_model(trained, path, meta)

    return {
        "trained": trained,
        "file": load_model(path, expect_kind="packet"),
        "beat": beat,
        "x_train": x_train,
        "x_val": x_val,
        "slot_val": slot_val,
        "threshold": threshold,
    }


def test_a_repeated_normal_packet_raises_no_notice_from_the_model_file(
    heartbeat_site: dict[str, object],
) -> None:
    """A packet repeated in every normal connection scores log(knn_eps) in the
    file as in the eager model, so its slot's tiny score spread cannot turn
    float32 noise into a notice for every connection."""
    trained = heartbeat_site["trained"]
    model = heartbeat_site["file"]
    x_val, slot_val = heartbeat_site["x_val"], heartbeat_site["slot_val"]
    threshold = heartbeat_site["threshold"]
    assert isinstance(trained, TrainedModel) and isinstance(model, ScoringModel)
    assert isinstance(x_val, np.ndarray) and isinstance(slot_val, np.ndarray)
    assert isinstance(threshold, float)

    floor = np.float32(np.log(trained.cfg.knn_eps))
    assert np.all(trained.score(x_val[-HEARTBEATS:]) == floor)
    with torch.inference_mode():
        raw = model._module(torch.from_numpy(x_val[-HEARTBEATS:])).numpy()
    assert np.all(raw == floor)

    live = model.score(np.repeat(heartbeat_site["beat"], 5, axis=0), np.zeros(5))
    assert (live < threshold).all()
    scores = model.score(x_val, slots=slot_val)
    assert false_positive_rate(scores, threshold) <= TARGET + 1 / len(scores)


def test_copies_of_bank_points_with_float32_noise_score_exactly_log_eps() -> None:
    """Latents within 1e-5 of a bank point's latent score log(eps) exactly,
    like the point itself; one 0.05 away scores above it."""
    flow = NormalizingFlow(6, 2, hidden=16, clamp=2.0, seed=1).eval()
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(40, 6, generator=gen)
    with torch.no_grad():
        head = FlowKNN(flow, flow(z)[0], eps=0.1)
        noisy = z + 1e-6 * torch.randn(z.shape, generator=gen)
        scores = head(torch.cat([z, noisy]))
        apart = head(z[:1] + 0.05)
    assert bool((scores == torch.tensor(math.log(0.1))).all())
    assert float(apart[0]) > math.log(0.1) + 0.01


def test_the_bank_keeps_one_point_per_distinct_training_packet(
    heartbeat_site: dict[str, object],
) -> None:
    """200 copies of the heartbeat take one bank place, not 200: the bank
    holds each distinct training packet once, up to `knn_bank`."""
    trained, x_train = heartbeat_site["trained"], heartbeat_site["x_train"]
    assert isinstance(trained, TrainedModel) and isinstance(x_train, np.ndarray)
    distinct = len(np.unique(x_train, axis=0))
    assert distinct < trained.cfg.knn_bank

    assert trained.knn_bank.shape == (distinct, trained.latent_dim)
    assert len(np.unique(trained.knn_bank, axis=0)) == distinct


@pytest.mark.parametrize(
    ("value", "shown"),
    [("Infinity", "inf"), ("1e400", "inf"), ("1e39", "1e+39"), ("1e-50", "1e-50")],
)
def test_a_knn_eps_float32_cannot_hold_is_refused_before_training(
    value: str, shown: str
) -> None:
    """`--set knn_eps=` inf, 1e39 (every score inf) or 1e-50 (0 in float32:
    copies of training packets score -inf) is a ConfigError naming the
    value, not minutes of training then non-finite scores."""
    overrides = _overrides([f"knn_eps={value}"])
    with pytest.raises(ConfigError, match=rf"^knn_eps={re.escape(shown)} must be"):
        _config(**overrides)
    flow = NormalizingFlow(4, 1, hidden=8, clamp=2.0, seed=0).eval()
    with pytest.raises(ValueError, match=rf"^eps={re.escape(shown)} must lie in"):
        FlowKNN(flow, torch.zeros(3, 4), eps=float(overrides["knn_eps"]))


def test_bad_knn_settings_name_only_the_bad_value() -> None:
    """knn_bank=0 and knn_eps=0 each give an error naming that setting alone."""
    with pytest.raises(ConfigError, match=r"^knn_bank=0 must be >= 1") as bank:
        _config(knn_bank=0)
    assert "knn_eps" not in str(bank.value)
    with pytest.raises(ConfigError, match=r"^knn_eps=0.0 must be") as eps:
        _config(knn_eps=0.0)
    assert "knn_bank" not in str(eps.value)


def test_file_scores_empty_single_and_non_finite_batches_record_by_record(
    heartbeat_site: dict[str, object], benign_packets: np.ndarray
) -> None:
    """An empty batch gives no scores, a batch of one its own score, and a
    NaN or inf feature makes only its own record's score non-finite (the
    daemon skips and counts it)."""
    model = heartbeat_site["file"]
    assert isinstance(model, ScoringModel)
    whole = model.score(benign_packets[:300])

    assert model.score(benign_packets[:0]).shape == (0,)
    for i in (0, 7, 299):
        one = model.score(benign_packets[i : i + 1])
        np.testing.assert_allclose(one, whole[i : i + 1], rtol=1e-5, atol=1e-3)
    bad = benign_packets[:300].copy()
    bad[3, 10] = np.nan
    bad[5, 20] = np.inf
    scores = model.score(bad)
    assert not np.isfinite(scores[[3, 5]]).any()
    rest = np.setdiff1d(np.arange(300), [3, 5])
    np.testing.assert_allclose(scores[rest], whole[rest], rtol=1e-5, atol=1e-3)


def test_a_resumed_training_keeps_the_same_bank_and_scores(
    benign_packets: np.ndarray, tmp_path: Path
) -> None:
    """Training resumed from its finished checkpoints gives the same bank
    and the same flow_knn scores as the run that wrote them."""
    cfg = _config(knn_bank=150, epochs_clf=1, min_steps=30)
    first = train_three_stage(
        benign_packets[:400], benign_packets[400:500], cfg, checkpoint_dir=tmp_path
    )
    with structlog.testing.capture_logs() as logs:
        again = train_three_stage(
            benign_packets[:400], benign_packets[400:500], cfg, checkpoint_dir=tmp_path
        )

    resumed = [e for e in logs if e["event"] == "checkpoint.resumed"]
    assert len(resumed) == 3
    assert first.knn_bank.shape == (150, first.latent_dim)
    np.testing.assert_array_equal(again.knn_bank, first.knn_bank)
    np.testing.assert_array_equal(
        again.score(benign_packets), first.score(benign_packets)
    )
