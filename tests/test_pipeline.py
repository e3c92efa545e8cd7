"""One batch in, notices out: per-connection scores and when notices fire."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sensor import pipeline
from sensor.errors import ModelError
from sensor.notice import NoticeWriter, read_notices
from sensor.pipeline import Pipeline, load_scorer
from tests.test_daemon_support import (
    TinyModels,
    sample_table,
    tiny_models_fixture,  # noqa: F401
)


def _batches(table: pa.Table, size: int) -> list[pa.RecordBatch]:
    return table.combine_chunks().to_batches(max_chunksize=size)


def test_flow_notice_for_each_connection_at_or_above_threshold(
    tiny_models: TinyModels,
) -> None:
    """Every conn.log record scoring at or above the threshold is one notice."""
    scorer = load_scorer("flow", tiny_models.flow)
    table = sample_table("conn")
    batch = _batches(table, table.num_rows)[0]
    keep, scores = scorer.score(batch)
    uids = np.asarray(table.column("uid").to_pylist())[keep]
    expected = set(uids[scores >= scorer.threshold])

    result = Pipeline([scorer]).process(batch, "conn")

    assert {n.uid for n in result.notices} == expected
    assert 0 < len(expected) < table.num_rows
    assert len(result.notices) == len(expected)
    assert all(n.kind == "flow" and n.score >= scorer.threshold for n in result.notices)
    assert result.scored == table.num_rows and result.skipped == 0


def test_packet_notice_once_per_connection_however_batches_fall(
    tiny_models: TinyModels,
) -> None:
    """A connection's packets in many batches give one notice, same identity."""
    scorer = load_scorer("packet", tiny_models.packet)
    table = sample_table("bflow_packet")

    whole = Pipeline([scorer]).process(
        _batches(table, table.num_rows)[0], "bflow_packet"
    )
    pieces = Pipeline([scorer])
    split = [
        n for b in _batches(table, 7) for n in pieces.process(b, "bflow_packet").notices
    ]

    by_uid = [n.uid for n in split]
    assert len(by_uid) == len(set(by_uid)), "a connection got two packet notices"
    assert {n.notice_id for n in split} == {n.notice_id for n in whole.notices}
    keep, scores = scorer.score(_batches(table, table.num_rows)[0])
    uids = np.asarray(table.column("uid").to_pylist())[keep]
    assert set(by_uid) == set(uids[scores >= scorer.threshold])
    # The packet's transport protocol is read from its frame.
    assert {n.proto for n in split} <= {"tcp", "udp"}


def test_forgotten_connections_repeat_only_ids_the_writer_drops(
    tiny_models: TinyModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny packet memory stays bounded; the log still has one notice a connection."""
    monkeypatch.setattr(pipeline, "NOTIFIED_MEMORY", 2)
    scorer = load_scorer("packet", tiny_models.packet)
    table = sample_table("bflow_packet")
    expected = Pipeline([scorer]).process(
        _batches(table, table.num_rows)[0], "bflow_packet"
    )

    pipe = Pipeline([scorer])
    raised = 0
    with NoticeWriter(tmp_path / "bflow_notice.log") as writer:
        for batch in _batches(table, 7):
            notices = pipe.process(batch, "bflow_packet").notices
            raised += len(notices)
            writer.write_many(notices)
            assert len(pipe._notified["packet"]) <= 2
    ids = [
        r["notice_id"]
        for r in read_notices(tmp_path / "bflow_notice.log")
        if r["kind"] == "packet"
    ]

    assert raised > len(ids), "no connection was forgotten and raised again"
    assert sorted(ids) == sorted(n.notice_id for n in expected.notices)


def test_packet_notice_score_is_max_of_the_connection_in_its_batch(
    tiny_models: TinyModels,
) -> None:
    """A packet notice carries its connection's highest score in the batch."""
    scorer = load_scorer("packet", tiny_models.packet)
    batch = _batches(sample_table("bflow_packet"), 10_000)[0]
    keep, scores = scorer.score(batch)
    uids = np.asarray(batch.column(batch.schema.get_field_index("uid")).to_pylist())
    best = {}
    for uid, s in zip(uids[keep], scores, strict=True):
        best[uid] = max(best.get(uid, -np.inf), s)

    result = Pipeline([scorer]).process(batch, "bflow_packet")

    for notice in result.notices:
        assert notice.score == pytest.approx(best[notice.uid])


def test_records_without_uid_are_skipped_and_counted(tiny_models: TinyModels) -> None:
    """A record with an unset uid is counted as skipped, never a notice."""
    scorer = load_scorer("flow", tiny_models.flow)
    batch = _batches(sample_table("conn"), 10_000)[0]
    index = batch.schema.get_field_index("uid")
    uids = batch.column(index).to_pylist()
    uids[:5] = [None] * 5
    batch = batch.set_column(index, "uid", pa.array(uids, pa.string()))

    result = Pipeline([scorer]).process(batch, "conn")

    assert result.skipped == 5
    assert result.scored == batch.num_rows - 5
    assert all(n.uid for n in result.notices)


def test_records_of_a_log_without_model_are_skipped(tiny_models: TinyModels) -> None:
    """Without a packet model, packet-log records are counted as skipped."""
    pipeline = Pipeline([load_scorer("flow", tiny_models.flow)])
    batch = _batches(sample_table("bflow_packet"), 50)[0]

    result = pipeline.process(batch, "bflow_packet")

    assert result.skipped == 50 and not result.notices


@pytest.mark.parametrize(
    "name",
    [
        "model_truncated.pt",
        "model_lfs_pointer.pt",
        "model_future_version.pt",
        "model_empty.pt",
    ],
)
def test_unloadable_model_is_refused_naming_the_file(
    cases_dir: Path, name: str
) -> None:
    """Each broken model file of case 20 raises ModelError naming its path."""
    path = cases_dir / "20-torchscript-model-file" / name

    with pytest.raises(ModelError) as caught:
        load_scorer("packet", path)

    assert str(path) in str(caught.value)


def test_model_of_the_wrong_kind_is_refused(tiny_models: TinyModels) -> None:
    """A flow model given as the packet model is refused with both kinds named."""
    with pytest.raises(ModelError, match="'flow'"):
        load_scorer("packet", tiny_models.flow)


def test_bad_packet_records_are_skipped_alone(tiny_models: TinyModels) -> None:
    """A non-base64 frame and an unknown link type skip only their records."""
    scorer = load_scorer("packet", tiny_models.packet)
    batch = _batches(sample_table("bflow_packet"), 10_000)[0]
    good = Pipeline([scorer]).process(batch, "bflow_packet")
    frames = batch.column(batch.schema.get_field_index("frame")).to_pylist()
    links = batch.column(batch.schema.get_field_index("link_type")).to_pylist()
    frames[3] = "not base64 at all!"
    links[100] = "LINK_CARRIER_PIGEON"
    frame_type = batch.schema.field("frame").type
    bad = batch.set_column(
        batch.schema.get_field_index("frame"), "frame", pa.array(frames, frame_type)
    )
    bad = bad.set_column(
        bad.schema.get_field_index("link_type"), "link_type", pa.array(links)
    )

    result = Pipeline([scorer]).process(bad, "bflow_packet")

    assert result.skipped == good.skipped + 2
    assert result.scored == good.scored - 2
    # Every connection that still has a packet at or above threshold keeps
    # its notice.
    lost = {batch.column(1)[3].as_py(), batch.column(1)[100].as_py()}
    kept = {n.uid for n in good.notices} - lost
    assert kept <= {n.uid for n in result.notices}


def test_connection_with_empty_uid_is_counted_not_fatal(
    tiny_models: TinyModels,
) -> None:
    """A crossing record whose uid is empty text raises no notice and no error."""
    scorer = load_scorer("flow", tiny_models.flow)
    batch = _batches(sample_table("conn"), 10_000)[0]
    first = Pipeline([scorer]).process(batch, "conn").notices[0]
    index = batch.schema.get_field_index("uid")
    uids = ["" if u == first.uid else u for u in batch.column(index).to_pylist()]
    batch = batch.set_column(index, "uid", pa.array(uids, pa.string()))

    result = Pipeline([scorer]).process(batch, "conn")

    assert result.rejected == 1
    assert first.uid not in {n.uid for n in result.notices}
