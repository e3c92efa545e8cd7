"""`bflow train` and `bflow eval`: the model commands.

`train` reads pcaps or packet logs ("packet") or conn.logs ("flow"), builds
features, trains the three stages on them as normal traffic, calibrates the
threshold on a normal validation split, and exports one model file with a
PNG report beside it. `eval` scores labeled inputs with a model file and
prints AUROC, AUPRC, TPR at 1 % FPR and the FPR at the model's threshold.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import ipaddress
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import structlog

from sensor.errors import ConfigError, LogFormatError

log = structlog.get_logger(__name__)

_PCAP_MAGICS = (
    b"\xa1\xb2\xc3\xd4",
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",
    b"\x4d\x3c\xb2\xa1",
    b"\x0a\x0d\x0d\x0a",
)
_PROTO = {"tcp": 6, "udp": 17, "icmp": 1}


@dataclass
class _Loaded:
    """Features of every input with what is needed to split and label them."""

    x: np.ndarray
    group: np.ndarray  # connection key per record, for splitting
    ts: np.ndarray
    source: np.ndarray  # index into `sources`
    slot: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sources: list[dict[str, Any]] = field(default_factory=list)
    tables: list[pa.Table] = field(default_factory=list)
    kept: list[np.ndarray] = field(default_factory=list)
    schema: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)

    return digest.hexdigest()


def _is_pcap(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(4)
    if head[:2] == b"\x1f\x8b":
        with gzip.open(path, "rb") as handle:
            head = handle.read(4)

    return head in _PCAP_MAGICS


def _read_zeek_log(path: Path) -> pa.Table:
    from sensor.reader import read_log

    batches = [b.records for b in read_log(path)]
    if not batches:
        raise LogFormatError(f"{path}: no records; give a Zeek log with records")

    return pa.Table.from_batches(batches).combine_chunks()


def _unify(tables: list[pa.Table]) -> pa.Table:
    """One table from logs of different Zeek versions (columns by name)."""
    plain = [t.replace_schema_metadata(None) for t in tables]
    try:
        return pa.concat_tables(plain, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise LogFormatError(
            f"conn.logs with incompatible field types cannot be combined ({exc}); "
            "train on logs of one Zeek version"
        ) from exc


def _packet_records(path: Path) -> pa.Table:
    from model.features.pcap import sample_pcap

    if _is_pcap(path):
        return sample_pcap(path)
    table = _read_zeek_log(path)
    if "frame" not in table.column_names:
        raise LogFormatError(
            f"{path} is neither a pcap/pcapng file nor a bflow packet log "
            f"(it has no 'frame' field; fields: {table.column_names[:8]}...)"
        )

    return table


def load_packets(paths: Sequence[Path], schema: dict[str, Any] | None) -> _Loaded:
    """Sample and featurise packet inputs; `schema` fixes the feature config."""
    from model.calibrate import record_slots
    from model.features.packet import PacketFeatureConfig, packet_features

    cfg = PacketFeatureConfig.from_dict(schema) if schema else PacketFeatureConfig()
    xs, groups, ts, src, slots = [], [], [], [], []
    loaded = _Loaded(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))
    for i, path in enumerate(paths):
        table = _packet_records(path)
        x, keep = packet_features(table, cfg)
        skipped = int(table.num_rows - keep.sum())
        if skipped:
            log.info("packets.skipped", path=str(path), ineligible=skipped)
        uid = np.array(table.column("uid").to_pylist(), dtype=object)[keep]
        xs.append(x)
        groups.append(np.array([f"{i}:{u}" for u in uid], dtype=object))
        ts.append(table.column("ts").to_numpy(zero_copy_only=False)[keep])
        src.append(np.full(len(x), i))
        slots.append(record_slots(table)[keep])
        loaded.sources.append(_source(path, table.num_rows, len(x)))
        loaded.tables.append(table)
        loaded.kept.append(keep)
    loaded.x = np.concatenate(xs) if xs else np.zeros((0, cfg.input_len), np.float32)
    loaded.group = np.concatenate(groups) if groups else np.zeros(0, object)
    loaded.ts = np.concatenate(ts).astype(np.float64) if ts else np.zeros(0)
    loaded.source = np.concatenate(src) if src else np.zeros(0, int)
    loaded.slot = np.concatenate(slots) if slots else np.zeros(0, np.int64)
    loaded.schema = cfg.to_dict()

    return loaded


def load_flows(
    paths: Sequence[Path], schema: dict[str, Any] | None, *, use_direction: bool
) -> _Loaded:
    """Read conn.logs; fit a flow feature schema unless one is given."""
    from model.features.flow import FlowFeatureSchema

    tables = [_read_zeek_log(p) for p in paths]
    table = _unify(tables)
    if schema:
        features = FlowFeatureSchema.from_dict(schema)
    else:
        features = FlowFeatureSchema(use_direction=use_direction).fit(table)
    x = features.transform(table)
    source = np.concatenate([np.full(t.num_rows, i) for i, t in enumerate(tables)])
    uid = table.column("uid").to_pylist() if "uid" in table.column_names else None
    groups = np.array(
        uid if uid is not None else [str(i) for i in range(table.num_rows)],
        dtype=object,
    )
    loaded = _Loaded(
        x=x,
        group=groups,
        ts=_float_column(table, "ts"),
        source=source,
        tables=[table],
        kept=[np.ones(table.num_rows, dtype=bool)],
        schema=features.to_dict(),
    )
    loaded.sources = [
        _source(p, t.num_rows, t.num_rows) for p, t in zip(paths, tables, strict=True)
    ]

    return loaded


def _float_column(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    column = table.column(name)
    if pa.types.is_timestamp(column.type):
        per_second = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[column.type.unit]
        ticks = column.cast(pa.int64()).to_numpy(zero_copy_only=False)
        return np.asarray(ticks, dtype=np.float64) / per_second

    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _source(path: Path, records: int, used: int) -> dict[str, Any]:
    return {
        "path": str(path),
        "sha256": _sha256(path),
        "records": int(records),
        "used": int(used),
    }


def _split(
    groups: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, val), whole connections on one side."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--val-fraction {fraction} must lie between 0 and 1")
    unique, inverse = np.unique(groups.astype(str), return_inverse=True)
    rng = np.random.default_rng(seed)
    in_val = rng.random(len(unique)) < fraction
    val = in_val[inverse]

    return ~val, val


def _time_range(ts: np.ndarray) -> dict[str, float | None]:
    finite = ts[np.isfinite(ts)]
    if not len(finite):
        return {"first": None, "last": None}

    return {"first": float(finite.min()), "last": float(finite.max())}


def _train_parser() -> argparse.ArgumentParser:
    from dataclasses import fields

    from model.features.packet import TCP_RANDOM
    from model.train import DEFAULT_SCORE, TrainConfig

    p = argparse.ArgumentParser(
        prog="bflow train",
        description="Train the three-stage model on normal traffic, calibrate "
        "its threshold and export one model file (+ a PNG report beside it).",
    )
    p.add_argument("--kind", choices=("packet", "flow"), required=True)
    p.add_argument(
        "--input",
        nargs="+",
        type=Path,
        required=True,
        metavar="PATH",
        help="packet: pcap/pcapng files or bflow packet logs; flow: conn.logs",
    )
    p.add_argument("--out", type=Path, required=True, metavar="MODEL.pt")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of connections held out to calibrate the threshold "
        "(default %(default)s)",
    )
    p.add_argument(
        "--target-fpr",
        type=float,
        default=1e-3,
        help="false-positive rate the threshold is calibrated for "
        "(default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for stage, what in (
        ("ae", "stage 1, the autoencoder"),
        ("flow", "stage 2, the flow"),
        ("clf", "stage 3, the classifier"),
    ):
        p.add_argument(
            f"--epochs-{stage}",
            type=int,
            metavar="N",
            help=f"training epochs of {what} (default "
            f"{defaults[f'epochs_{stage}']}, raised to reach "
            f"{defaults['min_steps']} optimiser steps on small inputs)",
        )
    p.add_argument(
        "--noise-std",
        type=float,
        help="std of the noise added in flow space to make the stage-3 "
        "classifier's pseudo-anomalies (default: measured)",
    )
    p.add_argument(
        "--score",
        choices=("classifier", "flow_nll", "flow_knn"),
        help="what the model file computes: the stage-3 classifier logit, "
        "the stage-2 flow negative log-likelihood, or the log distance in "
        "flow space to the nearest normal training sample (default per "
        f"kind: packet: {DEFAULT_SCORE['packet']}, "
        f"flow: {DEFAULT_SCORE['flow']})",
    )
    p.add_argument(
        "--input-len",
        type=int,
        help="packet: bytes per sample (default: the feature code's)",
    )
    p.add_argument(
        "--keep-header-fields",
        action="store_true",
        help="packet: keep TTL, IP ID and checksums (default: neutralised)",
    )
    p.add_argument(
        "--tcp-random",
        choices=TCP_RANDOM,
        help="packet: per-connection random TCP fields zeroed (default: the "
        "feature code's)",
    )
    p.add_argument(
        "--no-slot-norm",
        action="store_true",
        help="packet: keep the model's raw scores instead of standardising "
        "them per packet slot (direction and index) on validation packets",
    )
    p.add_argument(
        "--use-direction",
        action="store_true",
        help="flow: include local_orig/local_resp",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="override any TrainConfig field, e.g. latent_dim=16",
    )
    p.add_argument("--checkpoint-dir", type=Path)
    _threads_option(p)

    return p


def _threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice); on a host busy "
        "with other work, 1 is often much faster for these small networks",
    )


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"--threads {threads}: give 1 or more")
    import torch

    torch.set_num_threads(threads)


def _overrides(items: list[str]) -> dict[str, Any]:
    from dataclasses import fields

    from model.train import TrainConfig

    types = {f.name: f.type for f in fields(TrainConfig)}
    known = set(types)
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in known:
            raise ConfigError(
                f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                f"{', '.join(sorted(known))}"
            )
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out[name] = _typed(item, parsed, str(types[name]))

    return out


def _typed(item: str, value: Any, annotation: str) -> Any:
    """`value` as the TrainConfig field's type, or a ConfigError naming it."""
    if value is None and annotation.endswith("| None"):
        return None
    base = annotation.removesuffix(" | None")
    if base.startswith("tuple[int"):
        if isinstance(value, list) and all(_is_int(v) for v in value):
            return tuple(value)
    elif base == "float" and (_is_int(value) or isinstance(value, float)):
        return float(value)
    elif (base, type(value)) in {("int", int), ("bool", bool), ("str", str)}:
        return value
    example = {"int": "3", "float": "0.5", "bool": "true", "str": "name"}.get(
        base, "[8, 16]"
    )
    raise ConfigError(
        f"--set {item!r}: {value!r} is not of type {annotation}; write it as "
        f"JSON, e.g. {item.partition('=')[0]}={example}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def train_main(argv: list[str]) -> int:
    """`bflow train`: see the module docstring."""
    import torch

    from model.artifact import ModelMetadata, export_model
    from model.calibrate import (
        POOLED_SLOT,
        SlotNorm,
        calibrate_threshold,
        false_positive_rate,
        min_samples_for,
    )
    from model.report import score_histograms, write_report
    from model.train import TrainConfig, train_three_stage

    args = _train_parser().parse_args(argv)
    _set_threads(args.threads)
    overrides = _overrides(args.set)
    for path in args.input:
        if not path.is_file():
            raise ConfigError(f"--input {path}: no such file")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {args.device}: CUDA is not available here; use --device cpu"
        )
    started = time.monotonic()

    if args.kind == "packet":
        schema = None
        if args.input_len or args.keep_header_fields or args.tcp_random:
            from model.features.packet import PacketFeatureConfig

            default = PacketFeatureConfig()
            schema = PacketFeatureConfig(
                input_len=args.input_len or default.input_len,
                neutralise=not args.keep_header_fields,
                tcp_random=args.tcp_random or default.tcp_random,
            ).to_dict()
        data = load_packets(args.input, schema)
    else:
        data = load_flows(args.input, None, use_direction=args.use_direction)
    train_mask, val_mask = _split(data.group, args.val_fraction, args.seed)
    x_train, x_val = data.x[train_mask], data.x[val_mask]
    if len(x_train) < 2 or len(x_val) < 1:
        raise ConfigError(
            f"{len(data.x)} usable records from {len(args.input)} inputs "
            f"({len(x_train)} train / {len(x_val)} validation); need more normal "
            "traffic"
        )
    log.info("train.data", train=len(x_train), val=len(x_val), kind=args.kind)

    settings: dict[str, Any] = {
        "kind": args.kind,
        "input_dim": int(data.x.shape[1]),
        "seed": args.seed,
        "device": args.device,
        "target_fpr": args.target_fpr,
        "noise_std": args.noise_std,
        "score": args.score or "",
    }
    for name in ("epochs_ae", "epochs_flow", "epochs_clf"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    settings |= overrides
    cfg = TrainConfig(**settings)
    trained = train_three_stage(x_train, x_val, cfg, checkpoint_dir=args.checkpoint_dir)

    val_scores = trained.score(x_val)
    pseudo_scores = trained.score_latents(
        trained.pseudo_anomalies(min(len(x_val), 5000), seed=args.seed)
    )
    slot_norm = None
    if args.kind == "packet" and not args.no_slot_norm:
        # Pseudo-anomalies have no connection: they take the pooled slot.
        slot_val = data.slot[val_mask]
        slot_norm = SlotNorm.fit(val_scores, slot_val)
        val_scores = slot_norm.apply(val_scores, slot_val)
        pseudo_scores = slot_norm.apply(
            pseudo_scores, np.full(len(pseudo_scores), POOLED_SLOT)
        )
    threshold = calibrate_threshold(val_scores, cfg.target_fpr)
    val_fpr = false_positive_rate(val_scores, threshold)
    seconds = time.monotonic() - started
    metadata = ModelMetadata(
        kind=args.kind,
        input_dim=cfg.input_dim,
        threshold=threshold,
        target_fpr=cfg.target_fpr,
        feature_schema=data.schema,
        slot_norm=slot_norm.to_dict() if slot_norm else None,
        training={
            "config": cfg.to_dict(),
            "history": trained.history,
            "noise_std": trained.noise_std,
            "records": {"train": int(len(x_train)), "val": int(len(x_val))},
            "time_range": _time_range(data.ts),
            "sources": data.sources,
            "seconds": round(seconds, 1),
            "by": "bflow train",
        },
        validation={
            "n": int(len(val_scores)),
            "fpr_at_threshold": val_fpr,
            "pseudo_tpr_at_threshold": float(np.mean(pseudo_scores >= threshold)),
            "histograms": score_histograms(
                {"normal_val": val_scores, "pseudo": pseudo_scores}
            ),
        },
    )
    export_model(trained, args.out, metadata)
    report = args.out.with_suffix(".png")
    write_report(
        report,
        title=f"bflow train: {args.kind} model {args.out.name}",
        history=trained.history,
        normal=val_scores,
        pseudo=pseudo_scores,
        threshold=threshold,
    )

    print(f"model   {args.out}")
    print(f"report  {report}")
    print(f"records {len(x_train)} train, {len(x_val)} validation")
    print(f"score   {_score_words(cfg.score, len(trained.knn_bank))}")
    print(
        f"noise   std {trained.noise_std:.4g} in flow space, for the stage-3 "
        "classifier's pseudo-anomalies"
    )
    print(
        f"thresh  {threshold:.6g} (target FPR {cfg.target_fpr:g}, "
        f"validation FPR {val_fpr:.4g})"
    )
    needed = min_samples_for(cfg.target_fpr)
    if len(val_scores) < needed:
        print(
            f"warning: {len(val_scores)} validation records cannot resolve a "
            f"false-positive rate of {cfg.target_fpr:g} (need {needed}); the "
            "threshold is the highest validation score, so expect more "
            "notices than the target: train on more normal traffic, or raise "
            "--target-fpr"
        )
    print(f"time    {seconds:.1f} s")

    return 0


def _score_words(score: str, bank: int | str) -> str:
    """The score name with what it measures; `bank`: flow_knn's bank size."""
    if score == "flow_knn":
        return f"flow_knn (nearest of {bank} normal training samples in flow space)"
    if score == "flow_nll":
        return "flow_nll (negative log-likelihood under the stage-2 flow)"
    if score == "classifier":
        return "classifier (the stage-3 classifier's anomaly logit)"

    return score


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bflow eval",
        description="Score labeled traffic with a model file and report "
        "AUROC, AUPRC, TPR at 1% FPR and the FPR at its threshold.",
    )
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--input", nargs="+", type=Path, required=True, metavar="PATH")
    p.add_argument(
        "--labels",
        type=Path,
        help="connections.tsv (pcap, first_ts, proto, 5-tuple, label, family)",
    )
    p.add_argument(
        "--label-field",
        help="flow: take labels from this conn.log field instead "
        "(Stratosphere 'label': Benign / Malicious / Background)",
    )
    p.add_argument("--report", type=Path, help="PNG (default: beside the model)")
    _threads_option(p)

    return p


def _row_label(text: str) -> str:
    low = text.lower()
    if low.startswith(("malicious", "attack", "malware")):
        return "attack"
    if low.startswith(("benign", "normal")):
        return "benign"

    return "background"


def _label_rows(
    data: _Loaded, kind: str, labels_path: Path | None, label_field: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, family, connection id) per record; label "" when unmatched."""
    n = len(data.x)
    if label_field:
        table = data.tables[0]
        if label_field not in table.column_names:
            raise ConfigError(
                f"--label-field {label_field!r} is not a field of the inputs "
                f"(fields: {', '.join(table.column_names)})"
            )
        # Label columns of site extensions are `string` fields, which the
        # reader keeps as bytes.
        raw = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in table.column(label_field).to_pylist()
        ]
        label = np.array([_row_label(v) for v in raw], dtype=object)
        family = np.array(raw, dtype=object)
        return label, family, np.arange(n)
    if labels_path is None:
        raise ConfigError("give --labels FILE (or --label-field for conn.logs)")

    from model.datasets import LabelIndex, read_labels

    rows = read_labels(labels_path)
    label = np.full(n, "", dtype=object)
    family = np.full(n, "", dtype=object)
    conn = np.full(n, -1, dtype=np.int64)
    at = 0
    for t, (table, keep) in enumerate(zip(data.tables, data.kept, strict=True)):
        # Rows of this capture when the label file names it (its `pcap`
        # ends the input's path), else every row.
        path = data.sources[t]["path"] if kind == "packet" else ""
        mine = [i for i, r in enumerate(rows) if path and path.endswith(r.pcap)]
        ids = mine or list(range(len(rows)))
        index = LabelIndex([_anywhere(rows[i]) for i in ids])
        kept_rows = np.flatnonzero(keep)
        keys = _connection_keys(table, kind)
        for j, i in enumerate(kept_rows):
            key = keys[i]
            if key is None:
                continue
            found = index.find("", *key)
            if found >= 0:
                label[at + j] = rows[ids[found]].label
                family[at + j] = rows[ids[found]].family
                conn[at + j] = ids[found]
        at += len(kept_rows)

    return label, family, conn


def _anywhere(row: Any) -> Any:
    """The label row with its capture name blanked, to match any input."""
    from dataclasses import replace

    return replace(row, pcap="")


_Key = tuple[int, tuple[bytes, int], tuple[bytes, int], int]


def _connection_keys(table: pa.Table, kind: str) -> list[_Key | None]:
    """(proto, endpoint, endpoint, time in us) per record, for label lookup."""
    names = ("id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p")
    if any(n not in table.column_names for n in names):
        return [None] * table.num_rows
    if kind == "flow":
        protos = [_PROTO.get(str(v), -1) for v in table.column("proto").to_pylist()]
    else:
        from model.features.packet import _decode_frames, parse_frames

        frames = _decode_frames(table.column("frame"))
        links = table.column("link_type").to_pylist()
        protos = [int(v) for v in parse_frames(frames, links).proto]
    ts = _float_column(table, "ts")
    columns = [table.column(n).to_pylist() for n in names]
    keys: list[_Key | None] = []
    for i, (oh, op, rh, rp) in enumerate(zip(*columns, strict=True)):
        if oh is None or op is None or rh is None or rp is None:
            keys.append(None)
            continue
        a = (ipaddress.ip_address(oh).packed, int(op))
        b = (ipaddress.ip_address(rh).packed, int(rp))
        # +1 us absorbs rounding between Zeek's ts and the labels' integer us.
        keys.append((protos[i], a, b, int(round(ts[i] * 1e6)) + 1))

    return keys


def eval_main(argv: list[str]) -> int:
    """`bflow eval`: see the module docstring."""
    from model.artifact import load_model
    from model.report import detection_metrics, write_report

    args = _eval_parser().parse_args(argv)
    _set_threads(args.threads)
    model = load_model(args.model)
    meta = model.metadata
    if meta.kind == "packet":
        data = load_packets(args.input, meta.feature_schema)
    else:
        data = load_flows(args.input, meta.feature_schema, use_direction=False)
    if meta.kind == "packet":
        scores = model.score(data.x, slots=data.slot)
    else:
        scores = model.score(data.x)
    label, family, conn = _label_rows(data, meta.kind, args.labels, args.label_field)

    normal = label == "benign"
    attack = label == "attack"
    unmatched = int((label == "").sum())
    if not normal.any() or not attack.any():
        raise ConfigError(
            f"the inputs hold {int(normal.sum())} benign and {int(attack.sum())}"
            " attack records with labels; AUROC needs both: add inputs with"
            " benign (or attack) connections, or check that --labels covers"
            " these inputs"
        )
    metrics = detection_metrics(scores[normal], scores[attack], meta.threshold)
    print(f"model      {args.model} ({meta.kind}, version {meta.model_version})")
    print(
        f"records    {len(scores)} scored: {int(normal.sum())} benign, "
        f"{int(attack.sum())} attack, "
        f"{int(((label != '') & ~normal & ~attack).sum())} background (left out), "
        f"{unmatched} unlabeled (left out)"
    )
    rows = [("per record", metrics)]
    if meta.kind == "packet":
        rows.append(("per connection", _per_connection(scores, label, conn, meta)))
    print(f"{'':16} {'AUROC':>7} {'AUPRC':>7} {'TPR@1%':>7} {'FPR@thr':>8}")
    for name, m in rows:
        print(
            f"{name:16} {m.auroc:7.4f} {m.auprc:7.4f} {m.tpr_at_1pct_fpr:7.4f} "
            f"{m.fpr_at_threshold:8.5f}"
        )
    print(f"threshold  {meta.threshold:.6g} calibrated for FPR {meta.target_fpr:g}")
    _warn_fpr(metrics.fpr_at_threshold, meta.target_fpr)
    families = sorted({str(f) for f in family[attack]})
    for fam in families:
        sel = attack & (family == fam)
        fm = detection_metrics(scores[normal], scores[sel], meta.threshold)
        if meta.kind == "packet":
            conns = len(np.unique(conn[sel & (conn >= 0)]))
            count = (
                f"{_plural(int(sel.sum()), 'packet')} in {_plural(conns, 'connection')}"
            )
        else:
            count = _plural(int(sel.sum()), "connection")
        print(
            f"family     {fam:24} {count:>32}  AUROC {fm.auroc:.4f} "
            f"TPR@thr {fm.tpr_at_threshold:.4f}"
        )

    report = args.report or args.model.with_name(args.model.stem + ".eval.png")
    write_report(
        report,
        title=eval_title(args.model, len(args.input)),
        history=meta.training.get("history", {}),
        normal=scores[normal],
        anomalous=scores[attack],
        stored_histograms=meta.validation.get("histograms"),
        threshold=meta.threshold,
    )
    print(f"report     {report}")
    print(
        f"auroc={_fmt(metrics.auroc)} auprc={_fmt(metrics.auprc)} "
        f"tpr_at_1pct_fpr={_fmt(metrics.tpr_at_1pct_fpr)} "
        f"fpr_at_threshold={_fmt(metrics.fpr_at_threshold)}"
    )

    return 0


def eval_title(model: Path, inputs: int) -> str:
    """The title of `bflow eval`'s PNG report."""
    return f"bflow eval: {model.name} on {_plural(inputs, 'input')}"


def _warn_fpr(fpr: float, target: float) -> None:
    """Say so when the benign records here get far more notices than planned."""
    if not fpr > 2 * target:
        return
    print(
        f"warning: the false-positive rate at the threshold is {fpr:.4g} on "
        f"the benign records here, over twice the {target:g} the model was "
        "calibrated for: this network's normal traffic differs from the "
        "traffic it was trained on; retrain it on this network's normal "
        "traffic (`bflow train`, or `bflow retrain` on a sensor) before "
        "trusting its notices here"
    )


def _per_connection(
    scores: np.ndarray, label: np.ndarray, conn: np.ndarray, meta: Any
) -> Any:
    """Metrics with one score per labeled connection: its packets' maximum."""
    from model.report import detection_metrics

    known = conn >= 0
    ids = np.unique(conn[known])
    top = np.full(len(ids), -np.inf)
    np.maximum.at(top, np.searchsorted(ids, conn[known]), scores[known])
    first = {int(c): str(lab) for c, lab in zip(conn[known], label[known], strict=True)}
    kinds = np.array([first[int(c)] for c in ids], dtype=object)

    return detection_metrics(
        top[kinds == "benign"], top[kinds == "attack"], meta.threshold
    )


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def _info_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bflow info",
        description="Load a model file the way `bflow run` does and print "
        "what its metadata says: kind, score, threshold, feature schema, "
        "training data and versions.",
    )
    p.add_argument("model", type=Path, metavar="MODEL.pt")
    p.add_argument(
        "--json", action="store_true", help="print the full metadata as JSON"
    )

    return p


def _bank_size(model: Any) -> int | None:
    """Samples in a flow_knn model's bank, read from the module itself.

    A plain scripted module keeps it as the `bank` buffer; a frozen one (what
    `bflow train` exports when freezing keeps the scores) holds it as a
    constant, the squared norms added by the distance `addmm`, shape (1, M).
    """
    module = model._module
    for name, buffer in module.named_buffers():
        if name.split(".")[-1] == "bank":
            return int(buffer.shape[0])
    try:
        for node in module.graph.findAllNodes("aten::addmm", recurse=True):
            source = node.inputsAt(0).node()
            if source.kind() == "prim::Constant":
                shape = source.t("value").shape
                if len(shape) == 2 and shape[0] == 1:
                    return int(shape[1])
    except RuntimeError:
        return None

    return None


def _brief(value: Any) -> str:
    """A feature schema value in a few characters: lists and maps by size."""
    if isinstance(value, list):
        return f"[{_plural(len(value), 'item')}]"
    if isinstance(value, dict):
        return "{" + ", ".join(sorted(value)) + "}"

    return f"{value}"


def info_main(argv: list[str]) -> int:
    """`bflow info`: a model file's metadata, short or as JSON."""
    from datetime import UTC, datetime

    from model.artifact import load_model

    args = _info_parser().parse_args(argv)
    model = load_model(args.model)
    meta = model.metadata
    if args.json:
        print(json.dumps(json.loads(meta.to_json()), indent=2, sort_keys=True))
        return 0

    training = meta.training
    config = training.get("config", {})
    bank: int | str = "?"
    if meta.score == "flow_knn":
        # Files since knn_bank_size say it; older ones are read from the
        # module, and without that the config's count is an upper bound.
        found = training.get("knn_bank_size") or _bank_size(model)
        bank = found if found else f"at most {config.get('knn_bank', '?')}"
    records = training.get("records", {})
    span = training.get("time_range", {})

    def when(value: Any) -> str:
        if not isinstance(value, int | float):
            return "?"
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")

    schema = ", ".join(
        f"{k}={_brief(v)}" for k, v in sorted(meta.feature_schema.items())
    )
    val_fpr = meta.validation.get("fpr_at_threshold")
    print(f"model     {args.model}")
    print(f"kind      {meta.kind} ({meta.input_dim} features per record)")
    print(f"score     {_score_words(meta.score, bank)}")
    print(
        f"threshold {meta.threshold:.6g} (calibrated for FPR {meta.target_fpr:g}"
        + (f", validation FPR {val_fpr:.4g})" if val_fpr is not None else ")")
    )
    print(f"features  {schema}")
    print(
        f"training  {records.get('train', '?')} train, {records.get('val', '?')} "
        f"validation records, {when(span.get('first'))} to "
        f"{when(span.get('last'))} UTC, {len(training.get('sources', []))} "
        "input files"
    )
    print(f"version   {meta.model_version} (created {meta.created})")
    print(f"code      {meta.code_version}, torch {meta.torch_version}")
    if meta.slot_norm:
        print("slot norm present (scores standardised per packet slot)")
    else:
        print("slot norm none")

    return 0
