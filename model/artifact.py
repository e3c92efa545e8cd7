"""The model file: one TorchScript archive with its metadata, and its loader.

The daemon imports only this module (and `model.features`), never training
code. A model file holds the inference path of the three-stage model, input
standardisation, the encoder `G_E`, latent standardisation and a score head
(the classifier, or the flow and its standard-normal log-density, as the
metadata's `score` says), as one scripted module taking float32 `(N, D)`
features and returning float32 scores `(N,)`, higher = more anomalous.
Files written before `score` existed lack the key and are classifier
models; since the module computes its own score, the key is information
for people and tools, and the format version stayed 1 for it. The metadata
(`ModelMetadata`, JSON) rides in the archive's `_extra_files`, so the two can
never be separated.

Packet models since `slot_norm` also carry per-slot score constants in the
metadata: `ScoringModel.score` standardises the module's scores by the
packet's direction and index within its connection, and the threshold is
in those units. Such a file is written as format version 2, which an
older bflow refuses (it would have ignored the key and compared raw
scores with that threshold); files without the key stay version 1.

`load_model` checks everything it can before the first real batch: the file
is there, is a complete archive, its format version and feature kind and
feature schema are the expected ones, and a fixed probe batch gives finite
scores of the right shape. Every failure is one `ModelLoadError` (a
`ModelError`) whose message names the path, size, SHA-256, both torch
versions, the underlying exception and what to do.

Known shortcoming: TorchScript is deprecated in torch 2.13 in favour of
`torch.export`, and the design asks for it because it gives one
self-contained file that loads without the Python model code. Its
deprecation warnings are silenced here so they do not flood the daemon's
log; a torch that drops `torch.jit.load` will fail at start-up with the
usual `ModelError`, and moving to `torch.export` (a new `FORMAT_VERSION`)
lifts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import subprocess
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
import torch

from model.calibrate import POOLED_SLOT, SlotNorm
from sensor import __version__ as bflow_version
from sensor.errors import BFlowError, ConfigError, ModelError

if TYPE_CHECKING:
    from model.train import TrainedModel

log = structlog.get_logger(__name__)

# Version 2 adds `slot_norm`; a file without it is still written as 1, so
# that a bflow from before it, which would ignore the key, loads only files
# whose scores it computes right.
FORMAT_VERSION = 2
_PLAIN_FORMAT = 1
METADATA_NAME = "bflow_metadata.json"

# Rows in the probe batch run by `load_model`.
_PROBE_ROWS = 8
_SCORE_BATCH = 8192
_LFS_MAGIC = b"version https://git-lfs"
# torch's C++ checks put their source location before the reason.
_ENFORCE_PREFIX = re.compile(r"^\[enforce fail at [^\]]*\]\s*\.?\s*")
_SENTENCE_END = re.compile(r"\.\s+(?=[A-Z])")
_INTERPRETER_PREAMBLE = "The following operation failed in the TorchScript"
_RAISED_LINE = re.compile(r"(?:\w+\.)*\w*(?:Error|Exception): (.+)")


@dataclass
class ModelMetadata:
    """What a model file says about itself (DESIGN.md §4.4).

    Attributes:
        format_version: layout of this file; `load_model` refuses newer ones.
        kind: feature kind, "packet" or "flow".
        feature_schema: the feature code's own description of its input
            (`to_dict()` of its schema); compared key by key at load time.
        input_dim: `D` of the `(N, D)` float32 input.
        threshold: `score >= threshold` raises a notice.
        target_fpr: false-positive rate the threshold was calibrated for.
        model_version: content hash + creation time, unique per file.
        created: ISO-8601 UTC time of export.
        training: data summary: time range, record counts, source sha256s,
            the training config and per-epoch losses.
        validation: metrics on normal validation data (and more if known).
        code_version: bflow version (+ git commit) that trained it.
        torch_version: torch that wrote the file.
        score: what the module computes: "classifier" (stage-3 anomaly
            logit), "flow_nll" (stage-2 negative log-likelihood, nats) or
            "flow_knn" (log flow-space distance to the nearest normal
            training sample, `model.flow.FlowKNN`).
        slot_norm: packet models: the per-slot mean and sd
            (`model.calibrate.SlotNorm.to_dict()`) that `ScoringModel.score`
            standardises the module's scores with; the threshold is in those
            units. None (files before it, flow models): the module's scores
            as they are.
    """

    kind: str
    input_dim: int
    threshold: float
    target_fpr: float
    feature_schema: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    model_version: str = ""
    created: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    code_version: str = ""
    torch_version: str = ""
    score: str = "classifier"
    slot_norm: dict[str, list[float]] | None = None

    def to_json(self) -> str:
        """Strict JSON: NaN and infinities become null."""
        return json.dumps(_finite(asdict(self)), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        """Build from parsed JSON, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        missing = {"kind", "input_dim", "threshold", "target_fpr"} - data.keys()
        if missing:
            raise ValueError(f"metadata lacks {sorted(missing)}")

        return cls(**{k: v for k, v in data.items() if k in known})


def _finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]

    return value


def _code_version() -> str:
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""

    return f"bflow {bflow_version}" + (f" ({commit})" if commit else "")


def probe_batch(input_dim: int) -> torch.Tensor:
    """The fixed `(8, input_dim)` float32 batch in [0, 1] run at load time."""
    ramp = torch.linspace(0.0, 1.0, input_dim)
    rows = [(ramp * (i + 1) / _PROBE_ROWS + i / _PROBE_ROWS) % 1.0 for i in range(8)]

    return torch.stack(rows).float()


def export_model(trained: TrainedModel, path: Path, metadata: ModelMetadata) -> None:
    """Write `trained`'s inference path and `metadata` as one TorchScript file.

    Fills in `model_version`, `created`, `code_version` and `torch_version`
    when they are empty. The file is written under a temporary name in the
    same directory, flushed to disk, then renamed over `path`, so a reader
    sees the old file or the new one, never half of one.

    Raises:
        ModelError: metadata that does not match the model, or a scripted
            module whose scores differ from the eager model's.
    """
    cfg = trained.cfg
    if metadata.kind != cfg.kind or metadata.input_dim != cfg.input_dim:
        raise ModelError(
            f"metadata says kind={metadata.kind!r} input_dim={metadata.input_dim} "
            f"but the model was trained with kind={cfg.kind!r} "
            f"input_dim={cfg.input_dim}; pass matching metadata"
        )
    module = trained.scoring_module()
    probe = probe_batch(cfg.input_dim)
    with _quiet_jit():
        plain = torch.jit.script(module)
        # Freezing folds BatchNorm into the convolutions: faster, and equal
        # to the eager scores up to rounding, which is checked.
        frozen = torch.jit.freeze(torch.jit.script(module))
    with torch.inference_mode():
        eager = module(probe)
        gaps = {
            "frozen": float((frozen(probe) - eager).abs().max()),
            "plain": float((plain(probe) - eager).abs().max()),
        }
    tolerance = 1e-4 * (1.0 + float(eager.abs().max()))
    if gaps["frozen"] <= tolerance:
        scripted = frozen
    elif gaps["plain"] <= tolerance:
        log.info("model.freeze_skipped", gap=gaps["frozen"], tolerance=tolerance)
        scripted = plain
    else:
        raise ModelError(
            "the scripted model scores the probe batch differently from the "
            f"eager model (largest gap {gaps['plain']:.3g}, allowed "
            f"{tolerance:.3g}); this is a bug in the network code, please "
            "report it"
        )

    buffer = io.BytesIO()
    with _quiet_jit():
        torch.jit.save(scripted, buffer)
    created = metadata.created or datetime.now(UTC).isoformat(timespec="seconds")
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()[:12]
    stamp = created.replace("-", "").replace(":", "")[:15]
    metadata = replace(
        metadata,
        format_version=(
            FORMAT_VERSION if metadata.slot_norm is not None else _PLAIN_FORMAT
        ),
        created=created,
        model_version=metadata.model_version or f"{digest}-{stamp}",
        code_version=metadata.code_version or _code_version(),
        torch_version=metadata.torch_version or torch.__version__,
        score=cfg.score,
    )
    if cfg.score == "flow_knn":
        # The frozen module holds the bank as a constant; say its size here.
        training = {**metadata.training, "knn_bank_size": len(trained.knn_bank)}
        metadata = replace(metadata, training=training)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with _quiet_jit():
            torch.jit.save(
                scripted, str(tmp), _extra_files={METADATA_NAME: metadata.to_json()}
            )
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    log.info(
        "model.exported",
        path=str(path),
        kind=metadata.kind,
        model_version=metadata.model_version,
        score=metadata.score,
        threshold=metadata.threshold,
    )


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """Hide TorchScript's own deprecation warnings, and only those."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, message=r".*torch\.jit"
        )
        yield


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ModelLoadError(ModelError):
    """A model file cannot be used; `details` holds the facts for logs."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


@dataclass
class _FileFacts:
    path: Path
    size: int | None = None
    sha256: str = "unknown"
    head: bytes = b""
    saved_torch: str | None = None

    @classmethod
    def read(cls, path: Path) -> _FileFacts:
        facts = cls(path)
        try:
            data = path.read_bytes()
        except OSError:
            return facts
        facts.size = len(data)
        facts.sha256 = hashlib.sha256(data).hexdigest()
        facts.head = data[:64]
        try:
            meta = _metadata_from_zip(data)
            facts.saved_torch = str(meta.get("torch_version") or "") or None
        except (zipfile.BadZipFile, ValueError, KeyError, OSError):
            pass

        return facts

    def details(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "size": self.size,
            "sha256": self.sha256,
            "torch_installed": torch.__version__,
            "torch_saved": self.saved_torch,
        }

    def error(self, what: str, todo: str, exc: BaseException | None) -> ModelError:
        size = "missing" if self.size is None else f"{self.size} bytes"
        saved = self.saved_torch or "unknown (no readable metadata)"
        parts = [
            f"cannot use model {self.path}: {what}.",
            f"File: {size}, sha256 {self.sha256}.",
            f"Model saved with torch {saved}, running {torch.__version__}.",
        ]
        if exc is not None:
            reason = _first_reason(exc)
            parts.append(f"Underlying error: {type(exc).__name__}: {reason}.")
        parts.append(f"What to do: {todo}")
        details = self.details()
        details["reason"] = what
        if exc is not None:
            details["exception"] = f"{type(exc).__name__}: {exc}"

        return ModelLoadError(" ".join(parts), details)


def _first_reason(exc: BaseException) -> str:
    """The first sentence of an exception's text that says what went wrong.

    torch follows the reason with paragraphs of advice ("This is an internal
    miniz error. If you are seeing this error, ...") and sometimes puts a
    C++ source location first; neither helps the operator, who gets our own
    diagnosis and what to do. An error raised inside a TorchScript module
    ends its TorchScript traceback with the reason. `-v` shows the whole
    text in the traceback.
    bflow's own errors are kept whole.
    """
    if isinstance(exc, BFlowError):
        # Our own messages are written to be read whole.
        return " ".join(str(exc).split()).rstrip(".")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith(_INTERPRETER_PREAMBLE):
        # The reason is the last line, after the TorchScript traceback.
        raised = [m for m in map(_RAISED_LINE.fullmatch, lines) if m]
        if raised:
            lines = [raised[-1][1]]
    text = _ENFORCE_PREFIX.sub("", lines[0]) if lines else ""
    first = _SENTENCE_END.split(text, maxsplit=1)[0].rstrip(". ")

    return first or type(exc).__name__


def _metadata_from_zip(data: bytes) -> dict[str, Any]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = [n for n in archive.namelist() if n.endswith("/extra/" + METADATA_NAME)]
        if not names:
            raise KeyError(METADATA_NAME)
        parsed: dict[str, Any] = json.loads(archive.read(names[0]))

    return parsed


def _diagnose(facts: _FileFacts, exc: BaseException) -> tuple[str, str]:
    """(what is wrong, what to do) for a file torch could not load."""
    retrain = (
        "retrain with `bflow train`, or restore the previous model with "
        "`bflow rollback`"
    )
    if facts.size == 0:
        return (
            "the file is empty (0 bytes)",
            "copy the model again; deploy by writing a temporary name and "
            "renaming it into place, or " + retrain,
        )
    if facts.head.startswith(_LFS_MAGIC):
        return (
            "the file is a Git LFS pointer, not the model",
            "fetch the real file (`git lfs pull` in the checkout it came "
            "from) or " + retrain,
        )
    text = str(exc)
    if "maximum supported version" in text:
        return (
            "the archive was written by a newer torch than the one installed",
            f"install the torch the model was saved with, or {retrain} "
            f"under torch {torch.__version__}",
        )
    if "zip archive" in text or "central directory" in text:
        return (
            "the file is not a complete TorchScript archive (a truncated or "
            "interrupted copy?)",
            "copy the model again (to a temporary name, then rename), or " + retrain,
        )

    return ("torch could not load the archive", retrain)


class ScoringModel:
    """A loaded, validated model file: numpy features in, scores out.

    Attributes:
        path: the file it was loaded from.
        metadata: its `ModelMetadata`.
        sha256: SHA-256 of the file's bytes.
        slot_norm: the metadata's per-slot standardisation, or None.
    """

    def __init__(
        self, path: Path, metadata: ModelMetadata, module: Any, sha256: str
    ) -> None:
        self.path = path
        self.metadata = metadata
        self.sha256 = sha256
        self._module = module
        self.slot_norm: SlotNorm | None = None
        if metadata.slot_norm is not None:
            self.slot_norm = SlotNorm.from_dict(metadata.slot_norm)

    @property
    def threshold(self) -> float:
        """The calibrated threshold from the metadata."""
        return float(self.metadata.threshold)

    def score(self, x: np.ndarray, slots: np.ndarray | None = None) -> np.ndarray:
        """Scores `(N,)` float64 of features `(N, D)`; higher = more anomalous.

        Args:
            x: features `(N, D)`.
            slots: packet slots `(N,)` (`model.calibrate.packet_slots`) for
                a model with `slot_norm`; without them every record takes
                the pooled constants, so scores stay in the threshold's units.

        Raises:
            ModelError: `x` is not 2-D with `D == metadata.input_dim`, or
                `slots` is not one per record.
        """
        dim = self.metadata.input_dim
        if x.ndim != 2 or x.shape[1] != dim:
            raise ModelError(
                f"features of shape {x.shape} given to model {self.path}, "
                f"which expects (N, {dim}); the feature code and the model "
                "disagree: retrain or load the model made for these features"
            )
        out = np.empty(len(x), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(x), _SCORE_BATCH):
                chunk = np.ascontiguousarray(
                    x[start : start + _SCORE_BATCH], dtype=np.float32
                )
                scores = self._module(torch.from_numpy(chunk))
                out[start : start + len(chunk)] = scores.numpy()
        if self.slot_norm is None:
            return out
        if slots is None:
            slots = np.full(len(x), POOLED_SLOT, dtype=np.int64)
        if len(slots) != len(x):
            raise ModelError(
                f"{len(slots)} packet slots given with {len(x)} records to "
                f"model {self.path}; pass one slot per record"
            )

        return self.slot_norm.apply(out, slots)


def schema_differences(
    expected: dict[str, Any], actual: dict[str, Any], prefix: str = ""
) -> list[str]:
    """Dotted keys whose values differ between two feature schemas."""
    diffs: list[str] = []
    for key in sorted(set(expected) | set(actual), key=str):
        name = f"{prefix}{key}"
        if key not in actual:
            diffs.append(f"{name} (only in the data's schema)")
        elif key not in expected:
            diffs.append(f"{name} (only in the model's schema)")
        else:
            left, right = expected[key], actual[key]
            if isinstance(left, dict) and isinstance(right, dict):
                diffs.extend(schema_differences(left, right, name + "."))
            elif left != right:
                diffs.append(f"{name} (model: {_short(right)}, data: {_short(left)})")

    return diffs


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)

    return text if len(text) <= 60 else text[:57] + "..."


def read_metadata(path: Path) -> ModelMetadata:
    """The metadata of a model file, without loading the network.

    Raises:
        ModelError: the file is unreadable or holds no valid metadata.
    """
    path = Path(path)
    facts = _FileFacts.read(path)
    try:
        return ModelMetadata.from_dict(_metadata_from_zip(path.read_bytes()))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError) as exc:
        what, todo = _diagnose(facts, exc)
        raise facts.error(what, todo, exc) from exc


def load_model(
    path: Path,
    *,
    expect_kind: str | None = None,
    expect_feature_schema: dict[str, Any] | None = None,
) -> ScoringModel:
    """Load a model file, check it, and run a probe batch through it.

    Args:
        path: the `.pt` file written by `export_model`.
        expect_kind: refuse a model of another feature kind.
        expect_feature_schema: refuse a model whose feature schema differs
            (the message lists the keys that differ).

    Raises:
        ModelError: (a `ModelLoadError` with `details`) for a missing, empty,
            truncated, LFS-pointer, too-new or otherwise unusable file, a
            wrong kind or schema, or a probe batch that fails.
    """
    path = Path(path)
    facts = _FileFacts.read(path)
    if facts.size is None:
        raise facts.error(
            "the file does not exist or cannot be read",
            "check the model path and its permissions, or create a model with "
            "`bflow train`",
            None,
        )

    extra = {METADATA_NAME: ""}
    try:
        with _quiet_jit():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError, ValueError, ...
        what, todo = _diagnose(facts, exc)
        raise facts.error(what, todo, exc) from exc

    try:
        metadata = ModelMetadata.from_dict(json.loads(extra[METADATA_NAME]))
    except (ValueError, TypeError) as exc:
        raise facts.error(
            "the archive holds no valid bflow metadata (not written by `bflow train`?)",
            "export the model with `bflow train`",
            exc,
        ) from exc
    facts.saved_torch = metadata.torch_version or None

    if metadata.format_version > FORMAT_VERSION:
        raise facts.error(
            f"model format version {metadata.format_version} is newer than "
            f"this bflow reads ({FORMAT_VERSION})",
            "upgrade bflow, or retrain the model with this version",
            None,
        )
    if expect_kind is not None and metadata.kind != expect_kind:
        raise facts.error(
            f"it is a {metadata.kind!r} model, expected a {expect_kind!r} model",
            f"point the {expect_kind} model setting at a {expect_kind} model",
            None,
        )
    if expect_feature_schema is not None:
        diffs = schema_differences(expect_feature_schema, metadata.feature_schema)
        if diffs:
            raise facts.error(
                "its feature schema differs from the data's at "
                + "; ".join(diffs[:10])
                + (f" and {len(diffs) - 10} more" if len(diffs) > 10 else ""),
                "retrain on logs written with the current feature settings, "
                "or restore the model that matches them",
                None,
            )

    if metadata.slot_norm is not None:
        try:
            SlotNorm.from_dict(metadata.slot_norm)
        except ConfigError as exc:
            raise facts.error(
                "its per-slot score constants are unusable",
                "retrain with `bflow train`",
                exc,
            ) from exc

    module.eval()
    try:
        with torch.inference_mode():
            probe = module(probe_batch(metadata.input_dim))
        ok = probe.shape == (_PROBE_ROWS,) and bool(torch.isfinite(probe).all())
    except Exception as exc:  # a broken graph can raise anything
        raise facts.error(
            "the probe batch failed to run", "retrain with `bflow train`", exc
        ) from exc
    if not ok:
        raise facts.error(
            f"the probe batch gave scores of shape {tuple(probe.shape)} with "
            "non-finite values or the wrong shape",
            "retrain with `bflow train`",
            None,
        )

    log.info(
        "model.loaded",
        path=str(path),
        kind=metadata.kind,
        model_version=metadata.model_version,
        sha256=facts.sha256,
        score=metadata.score,
        threshold=metadata.threshold,
    )

    return ScoringModel(path, metadata, module, facts.sha256)
