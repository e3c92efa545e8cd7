"""Baseline detectors the three-stage model is measured against.

Every detector is fitted on normal samples only and scores with higher =
more anomalous, on the same (N, D) float32 features as the model:

- `IsolationForestDetector`, `OneClassSVMDetector`, `LOFDetector`
  (scikit-learn, novelty mode), `PCADetector` (reconstruction error);
- `NearestNeighbourDetector`: log distance to the nearest normal sample in
  feature space, the same rule as the model's "flow_knn" score without the
  autoencoder and the flow;
- `AutoencoderDetector`: a small MLP autoencoder, reconstruction error;
- `GanomalyDetector`: a GANomaly-style 1-D convolutional model (encoder,
  decoder, second encoder, adversarial feature matching); the score is the
  distance between the latent of the input and of its reconstruction;
- two one-line baselines that expose shortcuts rather than detect:
  `packet_size_score` and `ttl_rarity_score`.

`zat_matrix` builds the flow baselines' input the way a zat user would:
conn.log fields in a DataFrame through zat's `DataFrameToMatrix`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import torch
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors
from sklearn.svm import OneClassSVM
from torch import nn

Array = npt.NDArray[np.float32]


class Detector(Protocol):
    """A novelty detector: fit on normal samples, score any samples."""

    name: str

    def fit(self, x: Array) -> Detector: ...

    def score(self, x: Array) -> npt.NDArray[np.float64]: ...


def _subsample(x: Array, limit: int, seed: int) -> Array:
    if x.shape[0] <= limit:
        return x
    rng = np.random.default_rng(seed)

    return x[rng.choice(x.shape[0], limit, replace=False)]


@dataclass
class IsolationForestDetector:
    """Isolation forest; score = negated sklearn decision score."""

    seed: int = 0
    n_estimators: int = 200
    name: str = "isolation_forest"

    def fit(self, x: Array) -> IsolationForestDetector:
        self._model = IsolationForest(
            n_estimators=self.n_estimators, random_state=self.seed, n_jobs=1
        ).fit(x)
        return self

    def score(self, x: Array) -> npt.NDArray[np.float64]:
        return -np.asarray(self._model.score_samples(x), dtype=np.float64)


@dataclass
class OneClassSVMDetector:
    """One-class SVM (RBF); trained on at most `max_train` samples."""

    seed: int = 0
    nu: float = 0.05
    max_train: int = 5000
    name: str = "one_class_svm"

    def fit(self, x: Array) -> OneClassSVMDetector:
        self._model = OneClassSVM(nu=self.nu, gamma="scale").fit(
            _subsample(x, self.max_train, self.seed)
        )
        return self

    def score(self, x: Array) -> npt.NDArray[np.float64]:
        return -np.asarray(self._model.score_samples(x), dtype=np.float64)


@dataclass
class LOFDetector:
    """Local outlier factor in novelty mode."""

    seed: int = 0
    n_neighbors: int = 20
    max_train: int = 10000
    name: str = "lof"

    def fit(self, x: Array) -> LOFDetector:
        train = _subsample(x, self.max_train, self.seed)
        k = min(self.n_neighbors, max(train.shape[0] - 1, 1))
        self._model = LocalOutlierFactor(n_neighbors=k, novelty=True).fit(train)
        return self

    def score(self, x: Array) -> npt.NDArray[np.float64]:
        return -np.asarray(self._model.score_samples(x), dtype=np.float64)


@dataclass
class NearestNeighbourDetector:
    """`log(d + eps)`, `d` the Euclidean distance to the nearest of at most
    `max_train` normal training samples."""

    seed: int = 0
    eps: float = 0.01
    max_train: int = 20000
    name: str = "nearest_neighbour"

    def fit(self, x: Array) -> NearestNeighbourDetector:
        train = _subsample(x, self.max_train, self.seed)
        self._model = NearestNeighbors(n_neighbors=1).fit(train)
        return self

    def score(self, x: Array) -> npt.NDArray[np.float64]:
        dist, _ = self._model.kneighbors(x, n_neighbors=1)
        return np.log(np.asarray(dist[:, 0], dtype=np.float64) + self.eps)


@dataclass
class PCADetector:
    """Squared reconstruction error from the top principal components."""

    variance: float = 0.95
    seed: int = 0
    name: str = "pca_reconstruction"

    def fit(self, x: Array) -> PCADetector:
        self._model = PCA(n_components=self.variance, random_state=self.seed).fit(x)
        return self

    def score(self, x: Array) -> npt.NDArray[np.float64]:
        back = self._model.inverse_transform(self._model.transform(x))
        return np.asarray(((x - back) ** 2).mean(axis=1), dtype=np.float64)


def _batches(
    n: int, size: int, rng: np.random.Generator
) -> list[npt.NDArray[np.int64]]:
    order = rng.permutation(n)
    return [order[i : i + size] for i in range(0, n, size)]


@dataclass
class AutoencoderDetector:
    """A small MLP autoencoder; score = mean squared reconstruction error."""

    seed: int = 0
    hidden: int = 64
    latent: int = 16
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    name: str = "autoencoder"

    def fit(self, x: Array) -> AutoencoderDetector:
        torch.manual_seed(self.seed)
        d = x.shape[1]
        self._net = nn.Sequential(
            nn.Linear(d, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, self.latent),
            nn.ReLU(),
            nn.Linear(self.latent, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, d),
        )
        opt = torch.optim.Adam(self._net.parameters(), lr=self.lr)
        data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        rng = np.random.default_rng(self.seed)
        for _ in range(self.epochs):
            for idx in _batches(len(data), self.batch_size, rng):
                batch = data[torch.from_numpy(idx)]
                loss = ((self._net(batch) - batch) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

        return self

    def score(self, x: Array) -> npt.NDArray[np.float64]:
        data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        with torch.no_grad():
            err = ((self._net(data) - data) ** 2).mean(dim=1)
        return err.numpy().astype(np.float64)


class _ConvEncoder(nn.Module):
    def __init__(self, channels: int, latent: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, channels, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv1d(channels, channels * 2, 4, 2, 1),
            nn.BatchNorm1d(channels * 2),
            nn.LeakyReLU(0.2),
            nn.Conv1d(channels * 2, channels * 4, 4, 2, 1),
            nn.BatchNorm1d(channels * 4),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool1d(4),
        )
        self.head = nn.Linear(channels * 16, latent)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.body(x.unsqueeze(1)).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.head(self.features(x)))


@dataclass
class GanomalyDetector:
    """GANomaly-style 1-D model; score = |E(x) - E'(G(E(x)))|².

    Loss weights follow GANomaly (50 reconstruction, 1 adversarial feature
    matching, 1 latent consistency); small and few epochs, as a baseline.
    """

    seed: int = 0
    channels: int = 8
    latent: int = 32
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    name: str = "ganomaly"

    def fit(self, x: Array) -> GanomalyDetector:
        torch.manual_seed(self.seed)
        d = x.shape[1]
        self._enc = _ConvEncoder(self.channels, self.latent)
        self._dec = nn.Sequential(
            nn.Linear(self.latent, 128), nn.ReLU(), nn.Linear(128, d), nn.Sigmoid()
        )
        self._enc2 = _ConvEncoder(self.channels, self.latent)
        disc = _ConvEncoder(self.channels, 1)
        gen_params = [
            *self._enc.parameters(),
            *self._dec.parameters(),
            *self._enc2.parameters(),
        ]
        opt_g = torch.optim.Adam(gen_params, lr=self.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=self.lr, betas=(0.5, 0.999))
        bce = nn.BCEWithLogitsLoss()
        data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        rng = np.random.default_rng(self.seed)
        for _ in range(self.epochs):
            for idx in _batches(len(data), self.batch_size, rng):
                if idx.size < 2:
                    continue
                real = data[torch.from_numpy(idx)]
                z = self._enc(real)
                fake = self._dec(z)
                z2 = self._enc2(fake)
                adv = ((disc.features(real) - disc.features(fake)) ** 2).mean()
                loss_g = 50 * ((fake - real) ** 2).mean() + adv + ((z - z2) ** 2).mean()
                opt_g.zero_grad()
                loss_g.backward()
                opt_g.step()

                ones = torch.ones(len(idx), 1)
                loss_d = bce(disc(real), ones) + bce(disc(fake.detach()), 0 * ones)
                opt_d.zero_grad()
                loss_d.backward()
                opt_d.step()

        for module in (self._enc, self._dec, self._enc2):
            module.eval()

        return self

    def score(self, x: Array) -> npt.NDArray[np.float64]:
        data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        with torch.no_grad():
            z = self._enc(data)
            z2 = self._enc2(self._dec(z))
        return ((z - z2) ** 2).mean(dim=1).numpy().astype(np.float64)


def packet_size_score(wire_len: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """The packet's length on the wire, as a score (a shortcut probe)."""
    return np.asarray(wire_len, dtype=np.float64)


def ttl_rarity_score(
    train_ttl: npt.NDArray[np.int64], ttl: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """How rare a TTL is among normal training packets: -log frequency.

    A high AUROC here means the benchmark's labs differ in their stacks, not
    that attacks were detected.
    """
    counts = np.bincount(np.clip(train_ttl, 0, 255), minlength=256).astype(np.float64)
    freq = (counts + 1.0) / (counts.sum() + 256.0)

    return np.asarray(-np.log(freq[np.clip(ttl, 0, 255)]), dtype=np.float64)


ZAT_NUMERIC = (
    "duration",
    "orig_bytes",
    "resp_bytes",
    "orig_pkts",
    "resp_pkts",
    "orig_ip_bytes",
    "resp_ip_bytes",
    "missed_bytes",
    "id.resp_p",
)
ZAT_CATEGORIES = ("proto", "service", "conn_state", "history")
ZAT_DIRECTION = ("local_orig", "local_resp")


def conn_dataframe(records: pa.Table, *, use_direction: bool = False) -> pd.DataFrame:
    """conn.log records as a DataFrame of the fields a zat user would pick.

    Durations become seconds; unset numbers stay NaN for zat to handle;
    categories are strings ("-" when unset, as zat's own reader leaves them).
    """
    frame: dict[str, Any] = {}
    names = records.schema.names
    for name in ZAT_NUMERIC:
        if name not in names:
            continue
        col = records.column(name)
        if pa.types.is_duration(col.type):
            values = col.cast(pa.int64()).to_numpy(zero_copy_only=False) / 1e6
        else:
            values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        frame[name] = np.asarray(values, dtype=np.float64)
    categories: Sequence[str] = ZAT_CATEGORIES + (
        ZAT_DIRECTION if use_direction else ()
    )
    for name in categories:
        if name not in names:
            continue
        values = records.column(name).to_pylist()
        text = [
            "-" if v is None else (v.decode() if isinstance(v, bytes) else str(v))
            for v in values
        ]
        frame[name] = pd.Categorical(text)

    return pd.DataFrame(frame)


class ZatMatrix:
    """zat's `DataFrameToMatrix`, fitted on training records."""

    def __init__(self) -> None:
        from zat.dataframe_to_matrix import DataFrameToMatrix

        self._impl = DataFrameToMatrix()

    def fit_transform(self, df: pd.DataFrame) -> Array:
        return np.asarray(self._impl.fit_transform(df), dtype=np.float32)

    def transform(self, df: pd.DataFrame) -> Array:
        return np.asarray(self._impl.transform(df), dtype=np.float32)


@dataclass(frozen=True)
class DetectionMetrics:
    """Ranking and threshold figures of one detector on one test set."""

    auroc: float
    auprc: float
    tpr_at_1pct_fpr: float
    fpr_at_threshold: float = float("nan")


def tpr_at_fpr(
    normal: npt.NDArray[np.float64], anomalous: npt.NDArray[np.float64], fpr: float
) -> float:
    """Share of anomalies scored above the (1 - fpr) quantile of normal scores.

    Ties at the cut count as not detected, so a constant score gives 0.
    """
    if normal.size == 0 or anomalous.size == 0:
        return float("nan")
    ranked = np.sort(normal)[::-1]
    allowed = int(np.floor(fpr * normal.size))
    cut = ranked[allowed] if allowed < normal.size else -np.inf

    return float(np.mean(anomalous > cut))


def detection_metrics(
    normal: npt.NDArray[np.float64],
    anomalous: npt.NDArray[np.float64],
    threshold: float | None = None,
) -> DetectionMetrics:
    """AUROC, AUPRC (anomaly = positive), TPR at 1 % FPR, FPR at threshold.

    Args:
        normal: scores of normal test samples.
        anomalous: scores of anomalous test samples.
        threshold: a calibrated threshold (score >= threshold is flagged);
            its FPR is measured on `normal`.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    if normal.size == 0 or anomalous.size == 0:
        nan = float("nan")
        return DetectionMetrics(nan, nan, nan, nan)
    y = np.concatenate([np.zeros(normal.size), np.ones(anomalous.size)])
    s = np.concatenate([normal, anomalous]).astype(np.float64)
    s = np.nan_to_num(s, nan=np.inf, posinf=np.finfo(np.float64).max)
    fpr_thr = float("nan") if threshold is None else float(np.mean(normal >= threshold))

    return DetectionMetrics(
        auroc=float(roc_auc_score(y, s)),
        auprc=float(average_precision_score(y, s)),
        tpr_at_1pct_fpr=tpr_at_fpr(normal, anomalous, 0.01),
        fpr_at_threshold=fpr_thr,
    )
