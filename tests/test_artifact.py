"""The model file: round trip, metadata, and clear refusals of bad files."""

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import model.artifact as artifact
from model.artifact import (
    ModelLoadError,
    ModelMetadata,
    export_model,
    load_model,
    read_metadata,
)
from model.calibrate import POOLED_SLOT, SlotNorm
from model.train import TrainConfig, TrainedModel, train_three_stage
from sensor.errors import ModelError

torch.set_num_threads(1)

SCHEMA = {"kind": "flow", "columns": ["a", "b", "c"], "means": [0.5, 1.0, 2.0]}
CASE_FILES = (
    "model_empty.pt",
    "model_truncated.pt",
    "model_lfs_pointer.pt",
    "model_future_version.pt",
)


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    """Skewed three-column features (a small synthetic flow set)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 3)).astype(np.float32)
    x[:, 2] = np.exp(x[:, 0]) + 0.1 * x[:, 2]
    return x


@pytest.fixture(scope="module")
def trained(features: np.ndarray) -> TrainedModel:
    """A tiny flow-kind model."""
    cfg = TrainConfig(
        kind="flow",
        input_dim=3,
        latent_dim=4,
        mlp_widths=(8,),
        disc_widths=(8,),
        classifier_widths=(8,),
        flow_blocks=2,
        epochs_ae=1,
        epochs_flow=1,
        epochs_clf=1,
        min_steps=5,
    )
    return train_three_stage(features[:500], features[500:], cfg)


def _metadata(**changes: object) -> ModelMetadata:
    base: dict[str, object] = dict(
        kind="flow",
        input_dim=3,
        threshold=1.25,
        target_fpr=1e-3,
        feature_schema=SCHEMA,
        training={"records": 500},
        validation={"fpr": 0.0},
    )
    base.update(changes)
    return ModelMetadata(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model_file(trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported once."""
    path = tmp_path_factory.mktemp("model") / "flow.pt"
    export_model(trained, path, _metadata())
    return path


def test_loaded_scores_equal_eager_scores(
    trained: TrainedModel, model_file: Path, features: np.ndarray
) -> None:
    """The exported file scores exactly like the eager model it came from."""
    loaded = load_model(model_file, expect_kind="flow", expect_feature_schema=SCHEMA)
    eager = trained.score(features)
    scores = loaded.score(features)
    assert scores.dtype == np.float64 and scores.shape == (len(features),)
    np.testing.assert_allclose(scores, eager, rtol=1e-6, atol=1e-6)


def _with_score(trained: TrainedModel, score: str) -> TrainedModel:
    cfg = dataclasses.replace(trained.cfg, score=score)

    return dataclasses.replace(trained, cfg=cfg)


@pytest.mark.parametrize("score", ["classifier", "flow_nll", "flow_knn"])
def test_each_score_choice_is_computed_by_the_file(
    trained: TrainedModel, features: np.ndarray, tmp_path: Path, score: str
) -> None:
    """The file computes the configured score itself, equal to the eager one."""
    chosen = _with_score(trained, score)
    path = tmp_path / f"{score}.pt"
    export_model(chosen, path, _metadata())
    loaded = load_model(path)
    assert loaded.metadata.score == score
    eager = {
        "classifier": chosen.score_classifier,
        "flow_nll": chosen.score_flow_nll,
        "flow_knn": chosen.score_flow_knn,
    }[score](features)
    np.testing.assert_allclose(loaded.score(features), eager, rtol=1e-5, atol=1e-5)


def test_metadata_without_a_score_reads_as_a_classifier_model(
    trained: TrainedModel, features: np.ndarray, tmp_path: Path
) -> None:
    """A file written before the score key existed still loads, as classifier."""
    path = tmp_path / "new.pt"
    export_model(_with_score(trained, "classifier"), path, _metadata())
    extra = {artifact.METADATA_NAME: ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra[artifact.METADATA_NAME])
    del meta["score"]
    old = tmp_path / "old.pt"
    torch.jit.save(
        module, str(old), _extra_files={artifact.METADATA_NAME: json.dumps(meta)}
    )
    loaded = load_model(old)
    assert loaded.metadata.score == "classifier"
    assert loaded.metadata.format_version == 1
    np.testing.assert_allclose(
        loaded.score(features), trained.score_classifier(features), atol=1e-5
    )

    # Retraining such a file keeps its score, not today's default.
    from datetime import datetime, timedelta

    from model.baseline import HostList
    from model.retrain import Options, _train_config

    opts = Options(
        model=old,
        kind=None,
        archives=[],
        notice_logs=[],
        known_bad_logs=[],
        allow=HostList(),
        deny=HostList(),
        now=datetime(2026, 1, 1),
        window=timedelta(days=1),
    )
    cfg = _train_config("flow", 3, 1e-3, loaded, opts)
    assert cfg.score == "classifier"


def test_metadata_round_trips_and_is_filled_in(model_file: Path) -> None:
    """Given fields come back; version, time, code and torch are filled."""
    meta = load_model(model_file).metadata
    assert meta == read_metadata(model_file)
    assert meta.threshold == 1.25 and meta.feature_schema == SCHEMA
    assert meta.format_version == 1
    assert meta.torch_version == torch.__version__
    assert meta.code_version.startswith("bflow ")
    assert meta.model_version and meta.created


def test_export_leaves_no_temporary_files(
    trained: TrainedModel, tmp_path: Path
) -> None:
    """Writing twice over one path leaves just the model file behind."""
    path = tmp_path / "m.pt"
    export_model(trained, path, _metadata())
    export_model(trained, path, _metadata(threshold=2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    assert read_metadata(path).threshold == 2.0


@pytest.mark.parametrize("name", CASE_FILES)
def test_broken_files_raise_one_clear_model_error(cases_dir: Path, name: str) -> None:
    """Each case-20 file gives a ModelError with path, size, hash, torch, and
    torch's first sentence of the cause without its paragraphs of advice."""
    path = cases_dir / "20-torchscript-model-file" / name
    data = path.read_bytes()
    with pytest.raises(ModelError) as info:
        load_model(path)
    text = str(info.value)
    assert str(path) in text
    assert f"{len(data)} bytes" in text
    assert hashlib.sha256(data).hexdigest() in text
    assert f"running {torch.__version__}" in text
    assert "Underlying error: RuntimeError" in text
    assert text.count("What to do:") == 1
    for noise in ("miniz", "If you are seeing", "enforce fail", "please upgrade"):
        assert noise not in text
    reason = text.split("Underlying error: RuntimeError: ")[1].split(". ")[0]
    assert reason.startswith(("PytorchStreamReader failed", "Attempted to read"))
    assert isinstance(info.value, ModelLoadError)
    assert info.value.details["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("model_empty.pt", "empty"),
        ("model_truncated.pt", "not a complete TorchScript archive"),
        ("model_lfs_pointer.pt", "Git LFS pointer"),
        ("model_future_version.pt", "newer torch"),
    ],
)
def test_broken_files_are_diagnosed(cases_dir: Path, name: str, cause: str) -> None:
    """The message says what is wrong with each kind of broken file."""
    with pytest.raises(ModelError, match=cause):
        load_model(cases_dir / "20-torchscript-model-file" / name)


def test_missing_file_is_a_model_error(tmp_path: Path) -> None:
    """A path that does not exist is a ModelError naming it."""
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "absent.pt")


def test_feature_schema_mismatch_names_the_keys(model_file: Path) -> None:
    """A differing feature schema is refused, listing the keys that differ."""
    data_schema = {**SCHEMA, "means": [0.5, 1.0, 3.0], "extra": True}
    with pytest.raises(ModelError) as info:
        load_model(model_file, expect_feature_schema=data_schema)
    text = str(info.value)
    assert "means" in text and "extra (only in the data's schema)" in text
    assert "columns" not in text


def test_wrong_kind_is_refused(model_file: Path) -> None:
    """Asking for a packet model and finding a flow model is a ModelError."""
    with pytest.raises(ModelError, match="'flow' model, expected a 'packet'"):
        load_model(model_file, expect_kind="packet")


def test_newer_format_version_is_refused(
    trained: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written in a later format version is refused by this reader."""
    path = tmp_path / "future.pt"
    slots = {"mean": [0.0] * (POOLED_SLOT + 1), "sd": [1.0] * (POOLED_SLOT + 1)}
    monkeypatch.setattr(artifact, "FORMAT_VERSION", 3)
    export_model(trained, path, _metadata(slot_norm=slots))
    monkeypatch.undo()
    with pytest.raises(ModelError, match="format version 3 is newer"):
        load_model(path)


def test_saved_torch_version_is_quoted_when_loading_fails(
    model_file: Path, tmp_path: Path
) -> None:
    """A damaged model whose metadata survives names the torch it came from."""
    broken = tmp_path / "damaged.pt"
    with (
        zipfile.ZipFile(model_file) as source,
        zipfile.ZipFile(broken, "w", zipfile.ZIP_STORED) as target,
    ):
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("/data.pkl"):
                data = b"not a pickle"
            target.writestr(item, data)
    with pytest.raises(ModelError) as info:
        load_model(broken)
    assert f"saved with torch {torch.__version__}, running" in str(info.value)
    assert info.value.details["torch_saved"] == torch.__version__  # type: ignore[attr-defined]


def test_wrong_feature_width_at_score_time_is_a_model_error(
    model_file: Path,
) -> None:
    """Scoring (N, 4) features with a (N, 3) model raises a ModelError."""
    loaded = load_model(model_file)
    with pytest.raises(ModelError, match=r"expects \(N, 3\)"):
        loaded.score(np.zeros((2, 4), dtype=np.float32))
    assert loaded.score(np.zeros((0, 3), dtype=np.float32)).shape == (0,)


def test_packet_model_round_trip_on_real_packets(
    data_dir: Path, tmp_path: Path
) -> None:
    """A conv packet model, frozen at export, scores real packets as eager."""
    from model.features.packet import PacketFeatureConfig, packet_features
    from model.features.pcap import sample_pcap

    feat = PacketFeatureConfig(input_len=128)
    x, _ = packet_features(sample_pcap(data_dir / "lab/benign-2/benign-2.pcap"), feat)
    cfg = TrainConfig(
        kind="packet",
        input_dim=128,
        latent_dim=8,
        conv_channels=(4, 8),
        disc_channels=(4,),
        classifier_widths=(8,),
        flow_blocks=2,
        epochs_ae=1,
        epochs_flow=1,
        epochs_clf=1,
        min_steps=5,
    )
    trained = train_three_stage(x[:400], x[400:500], cfg)
    path = tmp_path / "packet.pt"
    meta = _metadata(kind="packet", input_dim=128, feature_schema=feat.to_dict())
    export_model(trained, path, meta)
    loaded = load_model(
        path, expect_kind="packet", expect_feature_schema=feat.to_dict()
    )
    # Near a bank point the flow_knn score's slope is 1 / knn_eps, so the
    # frozen flow's float32 differences (about 1e-6) show as about 1e-5..1e-4.
    np.testing.assert_allclose(loaded.score(x), trained.score(x), rtol=1e-5, atol=1e-3)


def test_non_finite_metadata_values_are_stored_as_null(
    trained: TrainedModel, tmp_path: Path
) -> None:
    """A NaN metric does not break export; it reads back as None."""
    path = tmp_path / "nan.pt"
    export_model(trained, path, _metadata(validation={"auroc": float("nan")}))
    assert read_metadata(path).validation == {"auroc": None}


def test_slot_norm_in_the_metadata_standardises_the_file_scores(
    trained: TrainedModel, features: np.ndarray, tmp_path: Path
) -> None:
    """With per-slot constants the file scores as the eager model's, scaled."""
    rng = np.random.default_rng(6)
    slots = rng.integers(0, POOLED_SLOT, size=len(features))
    norm = SlotNorm.fit(trained.score(features), slots)
    path = tmp_path / "slots.pt"
    export_model(trained, path, _metadata(slot_norm=norm.to_dict()))
    loaded = load_model(path)
    assert loaded.metadata.format_version == 2
    raw = trained.score(features)
    np.testing.assert_allclose(
        loaded.score(features, slots=slots), norm.apply(raw, slots), rtol=1e-5
    )
    pooled = norm.apply(raw, np.full(len(features), POOLED_SLOT))
    np.testing.assert_allclose(loaded.score(features), pooled, rtol=1e-5)
    with pytest.raises(ModelError, match="one slot per record"):
        loaded.score(features, slots=slots[:-1])


def test_broken_slot_constants_are_refused_at_load(
    trained: TrainedModel, tmp_path: Path
) -> None:
    """A file whose per-slot sds are not positive does not load."""
    path = tmp_path / "bad-slots.pt"
    bad = {"mean": [0.0] * (POOLED_SLOT + 1), "sd": [0.0] * (POOLED_SLOT + 1)}
    export_model(trained, path, _metadata(slot_norm=bad))
    with pytest.raises(ModelLoadError, match="per-slot score constants"):
        load_model(path)
