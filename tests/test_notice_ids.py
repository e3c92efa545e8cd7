"""Duplicate suppression in the notice writer: exact, and bounded in memory."""

import gc
import tracemalloc
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.contract import NOTICE_KINDS
from sensor.notice import NoticeIds, NoticeWriter, read_notices
from tests.test_notice import make_notice

# Ids of the writer's own form, with digests that end in zero bytes on
# purpose (the encoding must not lose them), and ids of other forms.
digests = st.binary(min_size=10, max_size=10) | st.just(bytes(10))
kinds = st.sampled_from(NOTICE_KINDS)
own_ids = st.builds(lambda kind, digest: f"{kind}-{digest.hex()}", kinds, digests)
any_ids = own_ids | st.text(max_size=30) | own_ids.map(str.upper)


@settings(max_examples=200, deadline=None)
@given(
    added=st.lists(any_ids, max_size=60),
    probes=st.lists(any_ids, max_size=30),
    merge_every=st.integers(1, 8),
)
def test_ids_answer_like_a_set(
    added: list[str], probes: list[str], merge_every: int
) -> None:
    """NoticeIds holds exactly the ids added, through merges of any size."""
    ids = NoticeIds(added[: len(added) // 2], merge_every=merge_every)
    for notice_id in added[len(added) // 2 :]:
        ids.add(notice_id)
    expected = set(added)

    assert len(ids) == len(expected)
    for notice_id in added + probes:
        assert (notice_id in ids) == (notice_id in expected)
    for notice_id in probes:
        twin = notice_id[:-1] + ("0" if notice_id[-1:] != "0" else "1")
        assert (twin in ids) == (twin in expected)


def test_union_holds_both() -> None:
    """The union of two id sets holds every id of each and nothing else."""
    a = NoticeIds((make_notice(i).notice_id for i in range(300)), merge_every=64)
    b = NoticeIds((make_notice(i).notice_id for i in range(200, 500)), merge_every=7)
    b.add("flow-hand-edited")

    both = a.union(b)

    assert len(both) == 501
    assert all(make_notice(i).notice_id in both for i in range(500))
    assert "flow-hand-edited" in both
    assert make_notice(500).notice_id not in both


def test_memory_per_notice_written_is_a_few_bytes(tmp_path: Path) -> None:
    """The writer's memory grows by under 25 bytes per notice it has written."""
    count, chunk = 10_000, 1000
    notices = [make_notice(i) for i in range(count)]
    with NoticeWriter(tmp_path / "bflow_notice.log") as writer:
        # A first merge loads what numpy imports lazily; that is not growth.
        writer.write_many([make_notice(-i) for i in range(1, 3001)])
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for start in range(0, count, chunk):
                assert writer.write_many(notices[start : start + chunk]) == chunk
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()

        assert writer.remembered == count + 3000
    assert grown / count < 25, f"{grown / count:.1f} bytes per notice"


def test_early_duplicate_is_suppressed_after_many_writes(tmp_path: Path) -> None:
    """A notice written long before (merged out of the recent set) is not repeated."""
    path = tmp_path / "bflow_notice.log"
    first = make_notice(0, kind="packet")

    with NoticeWriter(path) as writer:
        assert writer.write(first)
        for start in range(1, 10_001, 2000):
            writer.write_many([make_notice(i) for i in range(start, start + 2000)])
        assert not writer.write(first)
    with NoticeWriter(path) as writer:
        assert not writer.write(first)
        assert writer.write(make_notice(0, kind="flow"))

    ids = [r["notice_id"] for r in read_notices(path) if r["kind"] in NOTICE_KINDS]
    assert len(ids) == len(set(ids)) == 10_002


def _notice_count(path: Path) -> int:
    return sum(r["kind"] in NOTICE_KINDS for r in read_notices(path))


def test_remembered_ids_are_those_of_two_files(tmp_path: Path) -> None:
    """Ids held never exceed the notices of the current and previous file."""
    path = tmp_path / "bflow_notice.log"
    writer = NoticeWriter(path, max_bytes=20_000, keep_files=3)
    held = []
    for start in range(0, 3000, 50):
        writer.write_many([make_notice(i) for i in range(start, start + 50)])
        previous = writer.archived_path(writer.generation - 1)
        on_disk = _notice_count(path)
        if previous.exists():
            on_disk += _notice_count(previous)
        assert writer.remembered == on_disk
        held.append(writer.remembered)
    writer.close()

    assert len(writer.archived()) == 3
    assert max(held) < 300


def test_restart_suppresses_what_the_previous_file_holds(tmp_path: Path) -> None:
    """After a restart, notices of the current and the previous file are not repeated.

    Older files are beyond the bound: a notice only they hold is written again,
    as before this writer kept its ids compactly.
    """
    path = tmp_path / "bflow_notice.log"
    with NoticeWriter(path, max_bytes=20_000, keep_files=8) as writer:
        for start in range(0, 1000, 50):
            writer.write_many([make_notice(i) for i in range(start, start + 50)])
        generation = writer.generation

    def number(record: dict) -> int:
        return int(str(record["uid"])[1:])

    previous = number(read_notices(writer.archived_path(generation - 1))[1])
    older = number(read_notices(writer.archived_path(generation - 2))[1])
    current = number(read_notices(path)[-1])

    with NoticeWriter(path, max_bytes=20_000, keep_files=8) as writer:
        again = {n: writer.write(make_notice(n)) for n in (previous, current, older)}

    assert again == {previous: False, current: False, older: True}
