"""A packet retraining standardises scores per packet slot like `bflow train`.

A tiny packet model is trained on the packets our Zeek script would log for
two benign lab captures, then calibrated and exported by the retraining's
own steps (`calibrate_candidate`, `_export`), and the exported file is
loaded back as the daemon and the gates load it.
"""

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from model import baseline as bl
from model.artifact import _PLAIN_FORMAT, FORMAT_VERSION, load_model
from model.calibrate import POOLED_SLOT, false_positive_rate
from model.features.pcap import sample_pcap
from model.retrain import (
    Calibration,
    Features,
    _export,
    _score,
    _split,
    calibrate_candidate,
)
from model.train import TrainConfig, train_three_stage
from tests.conftest import DATA

pytestmark = pytest.mark.slow

TARGET = 0.01
# File against eager scores: the flow_knn score magnifies the frozen flow's
# float32 differences (about 1e-6) by up to 1 / knn_eps near a bank point,
# and slot standardisation by 1 / sd.
FILE_ATOL = 1e-3
TINY = {
    "epochs_ae": 2,
    "epochs_flow": 2,
    "epochs_clf": 2,
    "min_steps": 40,
    "conv_channels": (8, 16),
    "disc_channels": (8, 16),
    "latent_dim": 16,
}


def _selection(table: pa.Table) -> bl.Selection:
    """What `bl.select` would report for `table`; only the metadata reads it."""
    return bl.Selection(
        baseline=table,
        holdout=table.slice(0, 0),
        known_bad=table.slice(0, 0),
        counts={"records_baseline": table.num_rows},
        files=[],
        window=("2026-12-04T00:00:00+00:00", "2026-12-06T00:00:00+00:00"),
        time_range=(None, None),
    )


@pytest.fixture(scope="module")
def candidate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A packet candidate trained, calibrated and exported as retrain does."""
    torch.set_num_threads(1)
    if not (DATA / "lab").is_dir():
        pytest.skip(f"real data not found at {DATA}; set BFLOW_SHARED")
    table = pa.concat_tables(
        sample_pcap(DATA / "lab" / run / f"{run}.pcap")
        for run in ("benign-1", "benign-2")
    )
    train_table, val_table = _split(table, 0.3, seed=0)
    features = Features.fit("packet", train_table, None)
    x_train = features.transform(train_table)
    x_val, slot_val = features.featurise(val_table)
    cfg = TrainConfig(
        kind="packet", input_dim=x_train.shape[1], target_fpr=TARGET, **TINY
    )
    trained = train_three_stage(x_train, x_val, cfg)
    cal = calibrate_candidate(trained, x_val, slot_val, TARGET, seed=0)
    path = tmp_path_factory.mktemp("slots") / "packet.pt"
    meta = _export(
        trained, path, features, cal, TARGET, _selection(table), len(x_train)
    )

    return {
        "trained": trained,
        "features": features,
        "cal": cal,
        "path": path,
        "meta": meta,
        "x_val": x_val,
        "slot_val": slot_val,
        "table": table,
    }


def test_packet_candidate_file_scores_as_its_threshold_was_set(
    candidate: dict[str, Any],
) -> None:
    """The exported packet model carries slot_norm and, given slots, scores
    validation packets exactly as the standardised scores it was calibrated on.
    """
    cal: Calibration = candidate["cal"]
    x_val, slot_val = candidate["x_val"], candidate["slot_val"]
    meta = candidate["meta"]

    # Both directions and several packet indices are in the validation set.
    assert slot_val is not None and len(slot_val) == len(x_val) > 200
    assert len(set(slot_val.tolist()) - {POOLED_SLOT}) >= 4
    assert cal.slot_norm is not None
    assert meta.slot_norm == cal.slot_norm.to_dict()
    assert meta.format_version == FORMAT_VERSION
    assert meta.threshold == cal.threshold

    model = load_model(candidate["path"], expect_kind="packet")
    loaded = model.score(x_val, slots=slot_val)
    np.testing.assert_allclose(loaded, cal.val_scores, rtol=1e-5, atol=FILE_ATOL)
    assert false_positive_rate(loaded, meta.threshold) <= TARGET + 1 / len(loaded)
    assert meta.validation["fpr_at_threshold"] == false_positive_rate(
        cal.val_scores, cal.threshold
    )

    # The slots matter: on the pooled constants alone the scores differ.
    pooled = model.score(x_val)
    assert not np.allclose(pooled, loaded, rtol=1e-3, atol=1e-3)


def test_gates_score_packet_slices_with_slots(candidate: dict[str, Any]) -> None:
    """Gate scoring standardises per slot for the candidate, and a model in
    service without slot_norm (format 1) keeps its raw scores whatever slots.
    """
    cal: Calibration = candidate["cal"]
    trained = candidate["trained"]
    features: Features = candidate["features"]
    table: pa.Table = candidate["table"]
    x, slots = features.featurise(table.slice(0, 400))
    assert slots is not None and len(slots) == len(x)

    model = load_model(candidate["path"], expect_kind="packet")
    eager = cal.scale(trained.score(x), slots)
    np.testing.assert_allclose(
        _score(model, x, slots), eager, rtol=1e-5, atol=FILE_ATOL
    )

    plain = Calibration(cal.threshold, cal.val_scores, cal.pseudo_scores, None)
    v1_path = Path(candidate["path"]).with_name("plain.pt")
    meta = _export(trained, v1_path, features, plain, TARGET, _selection(table), len(x))
    assert meta.slot_norm is None and meta.format_version == _PLAIN_FORMAT
    v1 = load_model(v1_path, expect_kind="packet")
    np.testing.assert_allclose(
        _score(v1, x, slots), trained.score(x), rtol=1e-5, atol=FILE_ATOL
    )


def test_flow_features_have_no_slots(data_dir: Path) -> None:
    """Flow records get no slots, so a flow retraining fits no slot_norm."""
    from sensor.reader import read_log

    log = data_dir / "lab" / "benign-1" / "zeek" / "conn.log"
    table = pa.Table.from_batches([b.records for b in read_log(log)])
    features = Features.fit("flow", table, None)
    x, slots = features.featurise(table)

    assert slots is None and len(x) == table.num_rows
