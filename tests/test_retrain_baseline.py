"""Choosing clean baseline records from a Zeek log archive."""

import gzip
import shutil
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from model import baseline as bl
from sensor.errors import ConfigError

DAY = 86400


def _shift(src: Path, days: int) -> bytes:
    """The log's bytes with every record's ts moved by whole days."""
    out = []
    for line in src.read_bytes().splitlines(keepends=True):
        if not line.startswith(b"#"):
            fields = line.rstrip(b"\n").split(b"\t")
            fields[0] = b"%.6f" % (float(fields[0]) + days * DAY)
            line = b"\t".join(fields) + b"\n"
        out.append(line)

    return b"".join(out)


def test_names_of_rotated_logs_are_recognised(tmp_path: Path) -> None:
    """zeekctl and standalone rotation names give the log path and times."""
    day = tmp_path / "2026-12-04"
    cases = {
        day / "conn.09:00:00-10:00:00.log.gz": ("conn", "09:00", "10:00"),
        day / "conn.11:00:00_11:49:27.log.gz": ("conn", "11:00", "11:49"),
        day / "conn.23:00:00-00:00:00.log.gz": ("conn", "23:00", "00:00"),
        tmp_path / "conn.2026-12-04-13-00-00.log": ("conn", "13:00", None),
        tmp_path / "bflow_packet.log": ("bflow_packet", None, None),
    }
    for path, (log_path, start, end) in cases.items():
        entry = bl.parse_name(path)
        assert entry is not None, path
        assert entry.log_path == log_path
        assert (entry.start and entry.start.strftime("%H:%M")) == start
        assert (entry.end and entry.end.strftime("%H:%M")) == end
    late = bl.parse_name(day / "conn.23:00:00-00:00:00.log.gz")
    assert late is not None and late.end is not None and late.start is not None
    assert late.end - late.start == timedelta(hours=1)

    for name in (
        "conn-summary.09:00:00-10:00:00.log.gz",
        ".shadow.conn.log.gz",
        "stderr.log",
        "conn.log.1",
    ):
        assert bl.parse_name(day / name) is None, name


def test_case_11_archive_reads_each_hour_once(cases_dir: Path) -> None:
    """The gzip-rotated archive case: right files, duplicates once, no crash."""
    case = cases_dir / "11-gzip-rotated-archive"
    now = datetime(2026, 12, 5, tzinfo=UTC)

    sel = bl.select(
        [case / "logs", case / "spool"],
        log_path="conn",
        now=now,
        window=timedelta(days=30),
        holdout_fraction=0.0,
    )

    uids = sel.baseline.column("uid").to_pylist()
    assert len(uids) == len(set(uids))
    assert sel.counts["files_duplicate"] == 1
    # 2 + 20 whole records of the truncated gzip + 2 + 2 + 2 + 2 (+ 2 live).
    assert sel.baseline.num_rows == 32
    names = {Path(f["path"]).name for f in sel.files}
    assert not any(n.startswith("conn-summary") or n.startswith(".") for n in names)


def test_window_uses_record_time_not_file_name(tmp_path: Path, data_dir: Path) -> None:
    """Records are kept by their own ts; a misnamed file cannot sneak in."""
    src = data_dir / "lab" / "benign-1" / "zeek" / "conn.log"
    # The records are from 2026-12-04 17:07-17:12 UTC; the name claims
    # 2026-12-09, inside the window, but the records are not.
    folder = tmp_path / "2026-12-09"
    folder.mkdir()
    (folder / "conn.17:00:00-18:00:00.log.gz").write_bytes(
        gzip.compress(src.read_bytes())
    )
    (folder / "conn.18:00:00-19:00:00.log").write_bytes(_shift(src, 5))

    sel = bl.select(
        [tmp_path],
        log_path="conn",
        now=datetime(2026, 12, 10, tzinfo=UTC),
        window=timedelta(days=3),
        holdout_fraction=0.25,
    )

    assert sel.counts["records_outside_window"] == 414
    assert sel.baseline.num_rows + sel.holdout.num_rows == 414
    assert sel.holdout.num_rows == round(414 * 0.25)
    newest_train = sel.baseline.column("ts")[-1].as_py()
    assert sel.holdout.column("ts")[0].as_py() >= newest_train


def test_noticed_hosts_and_uids_are_left_out(tmp_path: Path, data_dir: Path) -> None:
    """Hosts and connections named by notices go to known-bad, not baseline."""
    lab = data_dir / "lab" / "mixed-1" / "zeek" / "conn.log"
    shutil.copy(lab, tmp_path / "conn.log")
    records = [
        line.split("\t")
        for line in lab.read_text().splitlines()
        if not line.startswith("#")
    ]
    attacker = [r for r in records if "192.0.2.66" in (r[2], r[4])]
    # A benign connection our notice log named by uid (a false positive).
    named = next(r for r in records if r[2] == "192.0.2.21")
    notice = tmp_path / "bflow_notice.log"
    notice.write_text(
        "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n"
        "#unset_field\t-\n#path\tbflow_notice\n"
        "#fields\tts\tuid\tid.orig_h\tid.resp_h\tscore\n"
        "#types\ttime\tstring\taddr\taddr\tdouble\n"
        f"{named[0]}\t{named[1]}\t192.0.2.21\t192.0.2.10\t0.9\n"
        f"{attacker[0][0]}\t{attacker[0][1]}\t192.0.2.66\t192.0.2.10\t0.99\n"
    )

    sel = bl.select(
        [tmp_path],
        log_path="conn",
        now=datetime(2026, 12, 5, tzinfo=UTC),
        window=timedelta(days=7),
        allow=bl.HostList.parse(["192.0.2.21"], origin="test"),
    )

    kept = set(sel.baseline.column("uid").to_pylist())
    kept |= set(sel.holdout.column("uid").to_pylist())
    assert named[1] not in kept
    assert not kept & {r[1] for r in attacker}
    assert sel.known_bad.num_rows == len(attacker) + 1
    assert len(kept) == len(records) - len(attacker) - 1
    # 192.0.2.21 is allow-listed: only its one noticed connection went.
    assert any(r[1] in kept for r in records if r[2] == "192.0.2.21")


def test_zeek_notice_log_src_is_the_offending_host(data_dir: Path) -> None:
    """Zeek's own notice.log (scan notices without a uid) names hosts by src."""
    path = data_dir / "slips/dataset/test10-mixed-zeek-dir/notice.log"

    notices = bl.read_notices([path], allow=bl.HostList())

    # The SSH::Password_Guessing record of that file has 23 of 26 fields;
    # the reader skips it (and counts it), so only the scanner is named.
    assert notices.hosts == frozenset({"147.32.83.156"})
    assert notices.uids == frozenset()


def test_deny_list_is_neither_baseline_nor_known_bad(
    tmp_path: Path, data_dir: Path
) -> None:
    """A denied network is left out of training without being called an attack."""
    src = data_dir / "lab" / "benign-2" / "zeek" / "conn.log"
    shutil.copy(src, tmp_path / "conn.log")

    sel = bl.select(
        [tmp_path],
        log_path="conn",
        now=datetime(2026, 12, 5, tzinfo=UTC),
        window=timedelta(days=7),
        deny=bl.HostList.parse(["192.0.2.21/32  # the admin's box"], origin="t"),
    )

    hosts = set(sel.baseline.column("id.orig_h").to_pylist())
    assert "192.0.2.21" not in hosts
    assert sel.counts["records_denied"] > 0
    assert sel.known_bad.num_rows == 0


def test_bad_host_list_entry_names_it() -> None:
    """A typo in an allow/deny list is an error naming the entry."""
    with pytest.raises(ConfigError, match="'10.0.0.300/8' in deny.txt"):
        bl.HostList.parse(["10.0.0.300/8"], origin="deny.txt")


def test_window_and_now_parsing() -> None:
    """Durations take d/h/m/s units; --now without a zone is UTC."""
    assert bl.parse_window("7d") == timedelta(days=7)
    assert bl.parse_window("90m") == timedelta(minutes=90)
    assert bl.parse_now("2026-12-04T17:30:00").tzinfo is not None
    with pytest.raises(ConfigError, match="'7 weeks'"):
        bl.parse_window("7 weeks")
    with pytest.raises(ConfigError, match="not ISO 8601"):
        bl.parse_now("yesterday")


def test_missing_archive_is_a_clear_error(tmp_path: Path) -> None:
    """A wrong --archive path says what folder was expected."""
    with pytest.raises(ConfigError, match="is not a directory"):
        bl.discover([tmp_path / "nope"], ("conn",))


def test_notices_written_by_the_daemon_are_read_back(
    tmp_path: Path, data_dir: Path
) -> None:
    """Our notice log, rotated by its writer, names uids; control records don't."""
    from sensor.notice import Notice, NoticeWriter

    records = [
        line.split("\t")
        for line in (data_dir / "lab/mixed-2/zeek/conn.log").read_text().splitlines()
        if not line.startswith("#")
    ]
    picked = [r for r in records if r[2] == "192.0.2.66"][:40]
    path = tmp_path / "bflow_notice.log"
    with NoticeWriter(path, max_bytes=4096, keep_files=100) as writer:
        for r in picked:
            writer.write_many(
                [
                    Notice(
                        ts=round(float(r[0]) * 1e6),
                        uid=r[1],
                        orig_h=r[2],
                        orig_p=int(r[3]),
                        resp_h=r[4],
                        resp_p=int(r[5]),
                        proto=r[6],
                        kind="flow",
                        score=0.9,
                        threshold=0.5,
                        model_version="v1",
                        msg="test",
                    )
                ]
            )
    files = sorted(tmp_path.glob("bflow_notice*.log"))
    assert len(files) > 1, "the writer should have rotated at 4 KiB"

    notices = bl.read_notices(files, allow=bl.HostList())

    assert notices.uids == frozenset(r[1] for r in picked)
    assert notices.hosts == frozenset({"192.0.2.66"})
    assert len(notices.times) == len(picked)


def test_retrain_options_follow_the_daemon_config(tmp_path: Path) -> None:
    """--config finds the model, the dated archive beside logs/current, notices."""
    from model.retrain import _config_table, _options, _retrain_parser, _targets

    logs = tmp_path / "zeek" / "logs"
    spool = tmp_path / "zeek" / "spool" / "logger-1"
    spool.mkdir(parents=True)
    logs.mkdir()
    (logs / "current").symlink_to(spool)
    notices = tmp_path / "notices"
    notices.mkdir()
    for name in ("bflow_notice.log", "bflow_notice.000001.log", "other.log"):
        (notices / name).write_text("")
    models = tmp_path / "models"
    models.mkdir()
    config = tmp_path / "bflow.toml"
    config.write_text(
        f'log_dir = "{logs / "current"}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        f'notice_dir = "{notices}"\n'
        f'flow_model = "{models / "flow.pt"}"\n'
        f'packet_model = "{models / "packet.pt"}"\n'
    )

    args = _retrain_parser().parse_args(["--config", str(config)])
    table = _config_table(args.config)
    targets = _targets(args, table)
    opts = _options(args, table, *targets[0])

    assert targets == [
        (models / "flow.pt", "flow"),
        (models / "packet.pt", "packet"),
    ]
    assert opts.model == models / "flow.pt"
    assert opts.kind == "flow"
    assert opts.archives == [logs]
    assert [p.name for p in opts.notice_logs] == [
        "bflow_notice.log",
        "bflow_notice.000001.log",
    ]


def test_unreadable_log_is_skipped_and_counted(tmp_path: Path, data_dir: Path) -> None:
    """A file that is not a Zeek log costs its own records, nothing more."""
    day = tmp_path / "2026-12-04"
    day.mkdir()
    shutil.copy(
        data_dir / "lab/benign-1/zeek/conn.log", day / "conn.17:00:00-18:00:00.log"
    )
    (day / "conn.18:00:00-19:00:00.log").write_text("stdout of a cron job\n")

    sel = bl.select(
        [tmp_path],
        log_path="conn",
        now=datetime(2026, 12, 5, tzinfo=UTC),
        window=timedelta(days=7),
    )

    assert sel.counts["files_unreadable"] == 1
    assert sel.counts["files"] == 1
    assert sel.baseline.num_rows + sel.holdout.num_rows == 414


def test_unreadable_notice_log_stops_the_retraining(tmp_path: Path) -> None:
    """Without its notices the baseline could hold attacks, so it is an error."""
    bad = tmp_path / "notice.log"
    bad.write_text("this is not a Zeek log\n")

    with pytest.raises(ConfigError, match="could learn attacks as normal"):
        bl.read_notices([bad], allow=bl.HostList())


def test_sample_is_capped_and_drawn_from_every_file(
    tmp_path: Path, data_dir: Path
) -> None:
    """With max_records the baseline is a uniform sample across the window."""
    sizes = {}
    for day, run in enumerate(("benign-1", "benign-2", "benign-3")):
        src = data_dir / "lab" / run / "zeek" / "conn.log"
        folder = tmp_path / f"2026-12-0{4 + day}"
        folder.mkdir()
        (folder / "conn.17:00:00-18:00:00.log").write_bytes(_shift(src, day))
        sizes[run] = len(
            [x for x in src.read_text().splitlines() if not x.startswith("#")]
        )

    sel = bl.select(
        [tmp_path],
        log_path="conn",
        now=datetime(2026, 12, 8, tzinfo=UTC),
        window=timedelta(days=7),
        holdout_fraction=0.0,
        max_records=300,
    )

    total = sum(sizes.values())
    assert sel.baseline.num_rows == 300
    assert sel.counts["records_subsampled_out"] == total - 300
    assert "__sample_key" not in sel.baseline.schema.names
    days = Counter(
        datetime.fromtimestamp(t.timestamp(), UTC).day
        for t in sel.baseline.column("ts").to_pylist()
    )
    # Each day holds about a third of the records; each gets its share.
    for day, run in zip((4, 5, 6), sizes, strict=True):
        share = 300 * sizes[run] / total
        assert abs(days[day] - share) < 0.3 * share
