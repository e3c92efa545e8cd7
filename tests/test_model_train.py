"""Three-stage training on real packets: every stage learns, seeds repeat."""

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import structlog.testing
import torch

from model.features.flow import FlowFeatureSchema
from model.train import (
    DEFAULT_INPUT_SCALE,
    DEFAULT_LATENT_DIM,
    DEFAULT_RESTARTS,
    DEFAULT_SCORE,
    TrainConfig,
    TrainedModel,
    _input_standardizer,
    _pseudo,
    train_three_stage,
)
from sensor.errors import ConfigError
from sensor.reader import read_log

torch.set_num_threads(1)

INPUT_LEN = 128


def small_config(**changes: object) -> TrainConfig:
    """Tiny networks and one run of stages 1+2, so a test trains in seconds."""
    base: dict[str, object] = dict(
        kind="packet",
        input_dim=INPUT_LEN,
        latent_dim=8,
        conv_channels=(4, 8),
        disc_channels=(4, 8),
        classifier_widths=(16,),
        flow_blocks=2,
        epochs_ae=3,
        epochs_flow=4,
        epochs_clf=5,
        batch_size=128,
        min_steps=60,
        seed=3,
        restarts=1,
    )
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(benign_packets: np.ndarray) -> TrainedModel:
    """One small model trained on 80 % of the benign packets."""
    cut = int(0.8 * len(benign_packets))
    return train_three_stage(benign_packets[:cut], benign_packets[cut:], small_config())


def test_classifier_loss_on_normal_samples_is_nonzero_and_falls(
    trained: TrainedModel,
) -> None:
    """The BCE on normal latents (label 0) is positive and drops over epochs."""
    normal = [e["loss_normal"] for e in trained.history["clf"]]
    assert all(v > 0 for v in normal)
    assert normal[-1] < normal[0]


def test_stages_one_and_two_really_train(trained: TrainedModel) -> None:
    """Reconstruction error and flow NLL both fall from their first epoch."""
    recon = [e["recon"] for e in trained.history["ae"]]
    nll = [e["val_loss"] for e in trained.history["flow"]]
    assert recon[-1] < recon[0]
    assert min(nll) < nll[0]


def test_pseudo_anomalies_score_above_normal_latents(trained: TrainedModel) -> None:
    """Both scores are monotone in 'anomaly': pseudo-anomalies score higher."""
    z = trained.train_latents
    z_pseudo = trained.pseudo_anomalies(len(z))
    for score in (trained.classifier_logits, trained.flow_nll):
        normal, pseudo = score(z), score(z_pseudo)
        assert pseudo.shape == normal.shape
        assert np.median(pseudo) > np.median(normal)


def test_score_follows_the_configured_choice(
    trained: TrainedModel, benign_packets: np.ndarray
) -> None:
    """`score` is the flow-space neighbour distance, the flow NLL or the
    classifier logit, as `cfg.score` says."""
    x = benign_packets[:50]
    assert trained.cfg.score == "flow_knn"
    np.testing.assert_array_equal(trained.score(x), trained.score_flow_knn(x))
    for score, direct in (
        ("classifier", trained.score_classifier),
        ("flow_nll", trained.score_flow_nll),
    ):
        other = dataclasses.replace(
            trained, cfg=dataclasses.replace(trained.cfg, score=score)
        )
        np.testing.assert_array_equal(other.score(x), direct(x))


def test_flow_knn_bank_holds_flow_space_points_of_training_latents(
    benign_packets: np.ndarray,
) -> None:
    """The bank keeps at most `knn_bank` training samples, mapped by the
    flow; each of them scores log(knn_eps), held-out packets score higher."""
    cut = int(0.8 * len(benign_packets))
    train, held_out = benign_packets[:cut], benign_packets[cut:]
    model = train_three_stage(train, held_out, small_config(knn_bank=200))
    assert model.knn_bank.shape == (200, model.latent_dim)

    z = torch.from_numpy(model.latents(train))
    with torch.no_grad():
        u = model.flow(z)[0].numpy()
    dist = np.sqrt(((u[:, None, :] - model.knn_bank[None]) ** 2).sum(-1)).min(1)
    in_bank = dist < 1e-6
    assert in_bank.sum() >= 200
    scores = model.score(train)
    eps = model.cfg.knn_eps
    np.testing.assert_allclose(scores[in_bank], np.log(eps), atol=1e-3)
    assert np.median(model.score(held_out)) > np.log(eps) + 1

    whole = train_three_stage(train[:150], held_out, small_config())
    assert whole.knn_bank.shape == (150, whole.latent_dim)
    with pytest.raises(ConfigError, match="knn_bank=0"):
        small_config(knn_bank=0)


def test_score_defaults_per_kind_and_unknown_scores_are_refused() -> None:
    """An empty score takes the kind's default; a made-up one is a ConfigError."""
    assert small_config().score == DEFAULT_SCORE["packet"]
    assert small_config(kind="flow").score == DEFAULT_SCORE["flow"]
    with pytest.raises(ConfigError, match="'max_logit'"):
        small_config(score="max_logit")


def test_noise_spread_sends_pseudo_anomalies_further_out(
    trained: TrainedModel,
) -> None:
    """A spread of 30 puts most pseudo-anomalies further from the flow's
    centre than one noise scale does, and the nearest ones as near."""
    z = torch.from_numpy(trained.train_latents[:2000])
    radii = {}
    for spread in (1.0, 30.0):
        z_new = _pseudo(
            trained.flow,
            z,
            0.0,
            trained.noise_std,
            torch.Generator().manual_seed(0),
            spread=spread,
        )
        with torch.no_grad():
            c, _ = trained.flow(z_new)
        radii[spread] = c.norm(dim=1).numpy()
    assert np.median(radii[30.0]) > 2 * np.median(radii[1.0])
    assert np.quantile(radii[30.0], 0.01) < np.median(radii[1.0])


def test_noise_spread_below_one_is_refused() -> None:
    """A spread under 1 would shrink the measured scale: a ConfigError."""
    with pytest.raises(ConfigError, match="noise_spread=0.5"):
        small_config(noise_spread=0.5)


def test_scores_are_float64_one_per_record(
    trained: TrainedModel, benign_packets: np.ndarray
) -> None:
    """score and score_flow_nll give (N,) float64, finite."""
    for scores in (
        trained.score(benign_packets[:50]),
        trained.score_flow_nll(benign_packets[:50]),
    ):
        assert scores.shape == (50,)
        assert scores.dtype == np.float64
        assert np.isfinite(scores).all()


def test_same_seed_gives_the_same_model(benign_packets: np.ndarray) -> None:
    """Two runs with one seed score identically; another seed does not."""
    cfg = small_config(**_one_epoch())
    x, v = benign_packets[:400], benign_packets[400:500]
    first = train_three_stage(x, v, cfg).score(v)
    again = train_three_stage(x, v, cfg).score(v)
    other = train_three_stage(x, v, small_config(**{**_one_epoch(), "seed": 4}))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other.score(v))


def _one_epoch() -> dict[str, object]:
    return {"epochs_ae": 1, "epochs_flow": 1, "epochs_clf": 1, "min_steps": 15}


def test_checkpoints_resume_a_finished_run(
    benign_packets: np.ndarray, tmp_path: Path
) -> None:
    """A rerun with the same config reloads every stage and scores the same."""
    cfg = small_config(**_one_epoch())
    x, v = benign_packets[:400], benign_packets[400:500]
    first = train_three_stage(x, v, cfg, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "stage1.pt",
        "stage2.pt",
        "stage3.pt",
    ]
    resumed = train_three_stage(x, v, cfg, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(first.score(v), resumed.score(v))
    assert resumed.history == first.history


def test_changing_only_the_noise_reuses_stages_one_and_two(
    benign_packets: np.ndarray, tmp_path: Path
) -> None:
    """A new noise scale retrains only the classifier from the checkpoints."""
    x, v = benign_packets[:400], benign_packets[400:500]
    first = train_three_stage(
        x, v, small_config(**_one_epoch()), checkpoint_dir=tmp_path
    )
    noisier = small_config(**_one_epoch(), noise_std=3.0)
    second = train_three_stage(x, v, noisier, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(first.latents(v), second.latents(v))
    assert second.history["flow"] == first.history["flow"]
    assert second.noise_std == 3.0
    assert not np.allclose(first.score_classifier(v), second.score_classifier(v))


def test_flow_kind_trains_on_conn_log_features(data_dir: Path) -> None:
    """The MLP variant trains on real conn.log features and scores them."""
    batches = [b.records for b in read_log(data_dir / "lab/benign-1/zeek/conn.log")]
    table = pa.Table.from_batches(batches)
    schema = FlowFeatureSchema().fit(table)
    x = schema.transform(table)
    cfg = TrainConfig(
        kind="flow",
        input_dim=x.shape[1],
        latent_dim=6,
        mlp_widths=(16,),
        disc_widths=(16,),
        classifier_widths=(16,),
        flow_blocks=2,
        epochs_ae=2,
        epochs_flow=2,
        epochs_clf=3,
        min_steps=40,
    )
    cut = int(0.8 * len(x))
    model = train_three_stage(x[:cut], x[cut:], cfg)
    scores = model.score(x[cut:])
    assert scores.shape == (len(x) - cut,)
    assert np.isfinite(scores).all()
    total = [e["loss"] for e in model.history["clf"]]
    assert total[-1] < total[0]


def test_wrong_feature_width_is_refused(benign_packets: np.ndarray) -> None:
    """Features whose width differs from input_dim raise a ConfigError."""
    with pytest.raises(ConfigError, match=r"expected \(N, 64\)"):
        train_three_stage(
            benign_packets[:10], benign_packets[10:20], small_config(input_dim=64)
        )


def test_unknown_kind_is_refused() -> None:
    """A feature kind other than packet or flow is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="'pixels'"):
        small_config(kind="pixels")


def test_one_structured_event_per_epoch_off_a_terminal(
    benign_packets: np.ndarray,
) -> None:
    """Without a terminal each epoch of each stage logs one train.epoch event."""
    with structlog.testing.capture_logs() as events:
        model = train_three_stage(
            benign_packets[:300], benign_packets[300:400], small_config(**_one_epoch())
        )
    epochs = [e for e in events if e["event"] == "train.epoch"]
    for stage in ("ae", "flow", "clf"):
        mine = [e for e in epochs if e["stage"] == stage]
        assert [e["epoch"] for e in mine] == list(range(len(model.history[stage])))
        assert all(np.isfinite(e["loss"]) for e in mine)


def test_restarts_keep_the_run_with_the_lowest_validation_nll(
    benign_packets: np.ndarray,
) -> None:
    """With two restarts the model keeps the stage 1+2 run whose flow fits the
    normal validation latents best."""
    x, v = benign_packets[:400], benign_packets[400:500]
    singles = [
        train_three_stage(x, v, small_config(**_one_epoch(), seed=s, restarts=1))
        for s in (3, 1003)
    ]
    nll = [float(m.score_flow_nll(v).mean()) for m in singles]
    assert nll[0] != nll[1]
    picked = train_three_stage(x, v, small_config(**_one_epoch(), restarts=2))
    best = singles[int(np.argmin(nll))]
    np.testing.assert_array_equal(picked.latents(v), best.latents(v))
    np.testing.assert_array_equal(picked.score_flow_nll(v), best.score_flow_nll(v))


def test_restarts_default_per_kind_and_below_zero_are_refused() -> None:
    """0 restarts means the kind's default; a negative count is a ConfigError."""
    for kind, restarts in DEFAULT_RESTARTS.items():
        assert TrainConfig(kind=kind, input_dim=16).restarts == restarts
    assert TrainConfig(kind="flow", input_dim=16, restarts=1).restarts == 1
    with pytest.raises(ConfigError, match="restarts=-1"):
        TrainConfig(kind="flow", input_dim=16, restarts=-1)


def test_flow_value_unseen_in_training_lands_far_out(data_dir: Path) -> None:
    """A feature constant over the training records scales a new value by
    about sqrt(N); features that vary keep about their own spread."""
    batches = [b.records for b in read_log(data_dir / "lab/benign-1/zeek/conn.log")]
    table = pa.Table.from_batches(batches)
    x = FlowFeatureSchema().fit(table).transform(table)
    xt = torch.from_numpy(x)
    norm = _input_standardizer(xt)
    spread = xt.std(dim=0, unbiased=False)
    constant = torch.nonzero(spread == 0).flatten()
    varied = torch.nonzero(spread > 0.5).flatten()
    assert len(constant) and len(varied)
    shifted = xt[:1].clone()
    shifted[0, constant[0]] += 1.0
    assert float(norm(shifted)[0, constant[0]]) == pytest.approx(
        len(x) ** 0.5, rel=1e-3
    )
    torch.testing.assert_close(norm.std[varied], spread[varied], rtol=0.01, atol=0)


def test_smoothed_packet_scale_trains_and_flags_unseen_bytes(
    benign_packets: np.ndarray,
) -> None:
    """With the smoothed input scale a packet model learns an unbounded
    reconstruction, and a byte value unseen at its position scores above
    every training packet."""
    cfg = small_config(input_scale="smoothed", score="flow_nll")
    model = train_three_stage(benign_packets[:600], benign_packets[600:800], cfg)

    recon = model.history["ae"]
    assert recon[-1]["recon"] < recon[0]["recon"]
    constant = np.flatnonzero(benign_packets[:600].std(axis=0) == 0)
    assert len(constant)
    odd = benign_packets[:50].copy()
    odd[:, constant[0]] = 0.5
    train_scores = model.score(benign_packets[:600])
    assert float(np.median(model.score(odd))) > float(train_scores.max())


def test_input_scale_defaults_per_kind_and_unknown_is_refused() -> None:
    """An empty input_scale picks the kind's default; other names are refused."""
    for kind, scale in DEFAULT_INPUT_SCALE.items():
        assert TrainConfig(kind=kind, input_dim=16).input_scale == scale
    with pytest.raises(ConfigError, match="input_scale='log'"):
        TrainConfig(kind="packet", input_dim=16, input_scale="log")


def test_latent_size_defaults_per_kind_and_too_small_is_refused() -> None:
    """latent_dim 0 picks the kind's default; a latent below 2 is refused."""
    for kind, size in DEFAULT_LATENT_DIM.items():
        assert TrainConfig(kind=kind, input_dim=16).latent_dim == size
    with pytest.raises(ConfigError, match="latent_dim=1"):
        TrainConfig(kind="packet", input_dim=16, latent_dim=1)
