"""Training of the three-stage model on normal samples only.

1. Feature extractor: autoencoder `G_E`/`G_D` plus a discriminator `D`
   (GANomaly-style: 50 x MSE reconstruction + 1 x MSE between `D`'s features
   on real and reconstructed input; `D` learns real vs reconstructed by BCE).
2. Normalizing flow `f` fitted by maximum likelihood to the encoder latents.
3. Classifier: normal latents `z` (label 0) against pseudo-anomalies
   `z' = f^-1(f(z) + eps)` (label 1), by binary cross-entropy.

Generic over the feature kind: "packet" uses the convolutional networks,
"flow" the MLPs (see `model.nets`). No anomaly label is read anywhere here;
the validation set is normal data and is used only for the noise scale, for
picking the flow's best epoch, for picking among `restarts` runs of stages
1 and 2 (lowest flow NLL) and for the per-epoch validation losses.

The score the exported model computes is `TrainConfig.score`: the stage-3
classifier's anomaly logit (the paper's score) or the stage-2 flow's
negative log-likelihood of the encoder latent. The default per kind
(`DEFAULT_SCORE`) was chosen on the detection benchmarks, whose figures
are in docs/DETECTION.md: with one noise scale the classifier's score
swung with the seed (CTU flows AUROC 0.80 +- 0.16 over 5 seeds, lab packets
0.32-0.73), while the flow likelihood was steadier, and higher on every
flow data set and on the packets (lab packets: 0.69 against 0.52 over 5
seeds, once the per-connection random TCP fields are zeroed by the feature
schema). `noise_spread` (pseudo-anomalies at scales from 1x to
`noise_spread`x the measured one) steadies the classifier; it was also
picked on benchmark data, as the paper picked its noise.

Inputs enter stage 1 as `TrainConfig.input_scale` says: flows with a
smoothed per-feature standardisation, packets as bytes in [0, 1] (the
smoothed scale lifted the lab packets but lowered the public pcaps).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.flow import KNN_EPS_RANGE, FlowKNN, FlowNLL, NormalizingFlow
from model.nets import (
    Classifier,
    ConvDecoder,
    ConvDiscriminator,
    ConvEncoder,
    MLPDecoder,
    MLPDiscriminator,
    MLPEncoder,
    ScoringModule,
    Standardize,
)
from sensor.errors import ConfigError

log = structlog.get_logger(__name__)

KINDS = ("packet", "flow")

# What the exported model computes as its score: the stage-3 classifier's
# anomaly logit (the paper's score), the stage-2 flow's negative
# log-likelihood of the encoder latent, or the log distance in the flow's
# space to the nearest normal training sample (`model.flow.FlowKNN`).
SCORES = ("classifier", "flow_nll", "flow_knn")

# Cap on the normal latents kept in the trained model for pseudo-anomalies
# and the report; enough for smooth histograms, small in memory.
_KEPT_LATENTS = 20_000

# Normal samples a flow_knn model keeps: the cost per scored sample is one
# product with this many rows. 8,192 made the default packet model 11.6x the
# paper-size one in bench/infer, under the 15x target; 4,096 gives 19.9x.
DEFAULT_KNN_BANK = 4096


@dataclass
class TrainConfig:
    """Every hyper-parameter of the three stages, with defaults that work.

    Sizes: "packet" uses `conv_channels` (each layer halves the length) and a
    linear head to `latent_dim`; `latent_channels > 0` swaps that head for
    the paper's convolutional one (latent = channels x length). "flow" uses
    `mlp_widths`. The flow has `flow_blocks` couplings with subnets of width
    `flow_hidden` (0: twice the latent size, within 32..256).

    Latent: `latent_dim` 0 picks the kind's default (`DEFAULT_LATENT_DIM`).

    Restarts: stages 1 and 2 run `restarts` times (seeds `seed`,
    `seed + 1000`, ...) and the run whose flow has the lowest NLL on the
    normal validation latents is kept; 0 picks the kind's default
    (`DEFAULT_RESTARTS`).

    Length: each stage runs its epochs, or more when that many epochs would
    take fewer than `min_steps` optimiser steps (small data sets).

    Noise: pseudo-anomalies are `f^-1(f(z) + eps)`, `eps ~ N(noise_mean,
    noise_std^2)` per dimension. With `noise_std=None` the scale is measured
    on the normal validation latents: it is chosen so that the median squared
    radius of a noisy point equals the `noise_quantile` quantile of the
    validation points' squared radii in flow space, i.e. pseudo-anomalies
    land just outside the typical set of normal data. With `noise_spread`
    above 1 each pseudo-anomaly gets its own scale, drawn log-uniformly
    between 1x and `noise_spread`x that scale, so pseudo-anomalies cover the
    space beyond the typical set and not only a thin shell around it.

    Nearest neighbours (`score="flow_knn"`): the flow-space points of at
    most `knn_bank` distinct normal training samples (a seeded random
    choice; repeated samples count once) are kept in the model; a sample
    scores `log(d + knn_eps)`, `d` its flow-space distance to the nearest
    of them. The bank's size bounds the cost per sample (`knn_bank x
    latent_dim` multiply-adds).
    """

    kind: str
    input_dim: int
    latent_dim: int = 0
    conv_channels: tuple[int, ...] = (8, 16, 32)
    latent_channels: int = 0
    mlp_widths: tuple[int, ...] = (64, 32)
    disc_channels: tuple[int, ...] = (8, 16, 32)
    disc_widths: tuple[int, ...] = (64, 32)
    classifier_widths: tuple[int, ...] = (64, 32)
    classifier_dropout: float = 0.0
    flow_blocks: int = 4
    flow_hidden: int = 0
    flow_clamp: float = 2.0
    noise_mean: float = 0.0
    noise_std: float | None = None
    noise_quantile: float = 0.99
    noise_spread: float = 30.0
    recon_weight: float = 50.0
    adv_weight: float = 1.0
    epochs_ae: int = 4
    epochs_flow: int = 20
    epochs_clf: int = 6
    min_steps: int = 300
    batch_size: int = 256
    lr: float = 1e-3
    lr_flow: float = 1e-3
    lr_clf: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    target_fpr: float = 1e-3
    score: str = ""
    restarts: int = 0
    input_scale: str = ""
    knn_bank: int = DEFAULT_KNN_BANK
    knn_eps: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(
                f"kind={self.kind!r} is not a feature kind; use one of {KINDS}"
            )
        if not self.score:
            self.score = DEFAULT_SCORE[self.kind]
        if self.restarts == 0:
            self.restarts = DEFAULT_RESTARTS[self.kind]
        if self.latent_dim == 0:
            self.latent_dim = DEFAULT_LATENT_DIM[self.kind]
        if not self.input_scale:
            self.input_scale = DEFAULT_INPUT_SCALE[self.kind]
        if self.input_scale not in INPUT_SCALES:
            raise ConfigError(
                f"input_scale={self.input_scale!r} is not an input scale; use "
                f"one of {INPUT_SCALES}"
            )
        if self.score not in SCORES:
            raise ConfigError(
                f"score={self.score!r} is not a score; use one of {SCORES}"
            )
        if self.input_dim < 1 or self.latent_dim < 2:
            raise ConfigError(
                f"input_dim={self.input_dim}, latent_dim={self.latent_dim}: "
                "need input_dim >= 1 and latent_dim >= 2"
            )
        if not 0 < self.target_fpr < 1:
            raise ConfigError(
                f"target_fpr={self.target_fpr} must lie strictly between 0 and 1"
            )
        if self.restarts < 1:
            raise ConfigError(
                f"restarts={self.restarts} must be >= 1 (1: one run of stages "
                "1 and 2; 3: three seeds, the lowest validation NLL kept) or "
                "0 for the kind's default"
            )
        if self.noise_std is not None and self.noise_std < 0:
            raise ConfigError(f"noise_std={self.noise_std} must be >= 0 or None")
        if not self.noise_spread >= 1:
            raise ConfigError(
                f"noise_spread={self.noise_spread} must be >= 1 (1: one noise "
                "scale; 30: scales from 1x to 30x the measured one)"
            )
        if self.knn_bank < 1:
            raise ConfigError(
                f"knn_bank={self.knn_bank} must be >= 1 (normal samples kept "
                f"for flow_knn; {DEFAULT_KNN_BANK}: the default)"
            )
        # Outside float32's range every flow_knn score, or that of every copy
        # of a training sample, is infinite: refused before minutes of
        # training end with no finite score to set a threshold from.
        low, high = KNN_EPS_RANGE
        if not low <= self.knn_eps <= high:
            raise ConfigError(
                f"knn_eps={self.knn_eps} must be a number > 0 that float32 "
                f"holds, {low:.3g} to {high:.3g} (added to flow_knn distances "
                "before the log; 0.1: the default)"
            )
        for name in ("conv_channels", "mlp_widths", "disc_channels"):
            setattr(self, name, tuple(getattr(self, name)))
        self.disc_widths = tuple(self.disc_widths)
        self.classifier_widths = tuple(self.classifier_widths)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    def key(self, stage: int = 3) -> str:
        """Short hash of the settings that shape stages 1..`stage`.

        The device is left out. A checkpoint of stage 1 therefore still fits
        when only flow or classifier settings changed, so ablations of the
        later stages can reuse the earlier ones via `checkpoint_dir`.
        """
        data = self.to_dict()
        # The flow_knn bank is picked after the last stage and shapes none.
        for name in ("device", "knn_bank", "knn_eps"):
            data.pop(name)
        later = {
            1: _FLOW_FIELDS | _CLASSIFIER_FIELDS,
            2: _CLASSIFIER_FIELDS,
            3: set(),
        }[stage]
        kept = {k: v for k, v in data.items() if k not in later}
        text = json.dumps(kept, sort_keys=True)

        return hashlib.sha256(text.encode()).hexdigest()[:16]


# Measured per kind; docs/DETECTION.md gives the figures behind the choice.
DEFAULT_SCORE = {"flow": "flow_nll", "packet": "flow_knn"}

# Encoder latent size per kind, measured on the detection benchmarks
# (docs/DETECTION.md). Packets: 16, 32, 64, 128 in turn lifted both packet
# data sets; 128 bytes in, 128 latents out is no compression, so the flow
# does most of the work on a learned, decorrelated view of the bytes.
DEFAULT_LATENT_DIM = {"flow": 32, "packet": 128}

# How features enter the autoencoder: "unit" as they come (packet bytes in
# [0, 1]), "smoothed" minus the training mean over `sqrt(var + 1/N)`.
INPUT_SCALES = ("unit", "smoothed")
DEFAULT_INPUT_SCALE = {"flow": "smoothed", "packet": "unit"}

# Stage 1+2 runs per model; measured on CTU flows and on both packet data
# sets (docs/DETECTION.md): for packets 3 runs lifted the public pcaps and
# left the lab as it was.
DEFAULT_RESTARTS = {"flow": 3, "packet": 3}

_FLOW_FIELDS = {"flow_blocks", "flow_hidden", "flow_clamp", "epochs_flow", "lr_flow"}
_CLASSIFIER_FIELDS = {
    "classifier_widths",
    "classifier_dropout",
    "noise_mean",
    "noise_std",
    "noise_quantile",
    "noise_spread",
    "epochs_clf",
    "lr_clf",
    "target_fpr",
    "score",
}


@dataclass
class TrainedModel:
    """The eager modules of all three stages and what training recorded.

    `history` maps a stage name ("ae", "flow", "clf") to one dict per epoch
    with its mean losses.
    """

    cfg: TrainConfig
    encoder: nn.Module
    decoder: nn.Module
    discriminator: nn.Module
    flow: NormalizingFlow
    classifier: Classifier
    input_norm: Standardize
    latent_norm: Standardize
    noise_std: float
    history: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    train_latents: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    knn_bank: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def knn_head(self) -> FlowKNN:
        """The "flow_knn" score head on the model's device."""
        if len(self.knn_bank) == 0:
            raise ValueError("no nearest-neighbour bank; train the model first")
        bank = torch.from_numpy(self.knn_bank).to(self.cfg.device)

        return FlowKNN(self.flow, bank, self.cfg.knn_eps).eval()

    def scoring_module(self) -> ScoringModule:
        """The inference path as one CPU module computing `cfg.score`.

        `G_E` + classifier for "classifier"; `G_E` + flow forward +
        standard-normal log-density for "flow_nll"; `G_E` + flow forward +
        nearest bank point for "flow_knn".
        """
        head: nn.Module
        if self.cfg.score == "flow_nll":
            head = FlowNLL(copy.deepcopy(self.flow).cpu())
        elif self.cfg.score == "flow_knn":
            head = copy.deepcopy(self.knn_head()).cpu()
        else:
            head = copy.deepcopy(self.classifier).cpu()
        module = ScoringModule(
            copy.deepcopy(self.input_norm).cpu(),
            copy.deepcopy(self.encoder).cpu(),
            copy.deepcopy(self.latent_norm).cpu(),
            head,
        )

        return module.eval()

    def _batches(self, x: np.ndarray, size: int = 4096) -> Iterator[Tensor]:
        device = self.cfg.device
        for start in range(0, len(x), size):
            chunk = np.ascontiguousarray(x[start : start + size], dtype=np.float32)
            yield torch.from_numpy(chunk).to(device)

    @torch.inference_mode()
    def latents(self, x: np.ndarray) -> np.ndarray:
        """Standardised encoder latents `(N, latent_dim)` float32."""
        self.encoder.eval()
        parts = [
            self.latent_norm(self.encoder(self.input_norm(b))).cpu().numpy()
            for b in self._batches(x)
        ]

        return _concat(parts, self.latent_dim)

    @property
    def latent_dim(self) -> int:
        """Size of the flat latent."""
        return int(self.flow.dim)

    @torch.inference_mode()
    def classifier_logits(self, z: np.ndarray) -> np.ndarray:
        """Classifier anomaly logits `(N,)` float64 for standardised latents."""
        self.classifier.eval()
        parts = [self.classifier(b).cpu().numpy() for b in self._batches(z)]

        return _concat(parts).astype(np.float64)

    @torch.inference_mode()
    def flow_nll(self, z: np.ndarray) -> np.ndarray:
        """Flow negative log-likelihoods `(N,)` float64 (nats) of latents."""
        self.flow.eval()
        parts = [-self.flow.log_prob(b).cpu().numpy() for b in self._batches(z)]

        return _concat(parts).astype(np.float64)

    @torch.inference_mode()
    def flow_knn(self, z: np.ndarray) -> np.ndarray:
        """Log flow-space distances `(N,)` float64 to the nearest bank point."""
        self.flow.eval()
        head = self.knn_head()
        parts = [head(b).cpu().numpy() for b in self._batches(z)]

        return _concat(parts).astype(np.float64)

    def score_latents(self, z: np.ndarray) -> np.ndarray:
        """The configured score (`cfg.score`) `(N,)` of standardised latents."""
        if self.cfg.score == "flow_nll":
            return self.flow_nll(z)
        if self.cfg.score == "flow_knn":
            return self.flow_knn(z)

        return self.classifier_logits(z)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Anomaly scores `(N,)` float64 of features `(N, D)`; higher = worse.

        The score the exported model computes, chosen by `cfg.score`.
        """
        return self.score_latents(self.latents(x))

    def score_classifier(self, x: np.ndarray) -> np.ndarray:
        """Stage-3 classifier anomaly logits `(N,)` of features `(N, D)`."""
        return self.classifier_logits(self.latents(x))

    def score_flow_nll(self, x: np.ndarray) -> np.ndarray:
        """Negative log-likelihood of the latents under the flow, `(N,)` nats."""
        return self.flow_nll(self.latents(x))

    def score_flow_knn(self, x: np.ndarray) -> np.ndarray:
        """Log flow-space distance to the nearest normal sample, `(N,)`."""
        return self.flow_knn(self.latents(x))

    @torch.inference_mode()
    def pseudo_anomalies(self, n: int, *, seed: int = 0) -> np.ndarray:
        """`n` pseudo-anomalous latents `z'` from kept normal latents."""
        if len(self.train_latents) == 0:
            raise ValueError("no normal latents kept; train the model first")
        rng = np.random.default_rng(seed)
        pick = rng.integers(0, len(self.train_latents), size=n)
        generator = torch.Generator().manual_seed(seed)
        parts = []
        for b in self._batches(self.train_latents[pick]):
            parts.append(
                _pseudo(
                    self.flow,
                    b,
                    self.cfg.noise_mean,
                    self.noise_std,
                    generator,
                    spread=self.cfg.noise_spread,
                ).numpy()
            )

        return _concat(parts, self.latent_dim)


def _concat(parts: list[np.ndarray], dim: int | None = None) -> np.ndarray:
    if parts:
        return np.concatenate(parts)
    shape = (0,) if dim is None else (0, dim)

    return np.zeros(shape, dtype=np.float32)


def _pseudo(
    flow: NormalizingFlow,
    z: Tensor,
    mean: float,
    std: float,
    generator: torch.Generator,
    *,
    spread: float = 1.0,
) -> Tensor:
    """`f^-1(f(z) + eps)` on CPU noise, returned on CPU, finite.

    With `spread > 1` each row's noise scale is `std * spread**u`,
    `u ~ U(0, 1)`: log-uniform between `std` and `spread * std`.
    """
    flow.eval()
    c, _ = flow(z)
    scale = torch.full((c.shape[0], 1), std)
    if spread > 1:
        u = torch.rand((c.shape[0], 1), generator=generator)
        scale = scale * spread**u
    eps = torch.randn(c.shape, generator=generator) * scale + mean
    z_new, _ = flow.inverse(c + eps.to(c.device))

    return torch.nan_to_num(z_new, posinf=1e6, neginf=-1e6).cpu()


def build_networks(cfg: TrainConfig) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Encoder, decoder and discriminator for `cfg.kind` and sizes."""
    if cfg.kind == "packet":
        encoder: nn.Module = ConvEncoder(
            cfg.input_dim,
            cfg.conv_channels,
            cfg.latent_dim,
            latent_channels=cfg.latent_channels,
        )
        decoder: nn.Module = ConvDecoder(
            cfg.input_dim,
            cfg.conv_channels,
            cfg.latent_dim,
            latent_channels=cfg.latent_channels,
            bounded=cfg.input_scale == "unit",
        )
        disc: nn.Module = ConvDiscriminator(cfg.input_dim, cfg.disc_channels)
    else:
        encoder = MLPEncoder(cfg.input_dim, cfg.mlp_widths, cfg.latent_dim)
        decoder = MLPDecoder(cfg.input_dim, cfg.mlp_widths, cfg.latent_dim)
        disc = MLPDiscriminator(cfg.input_dim, cfg.disc_widths)

    return encoder, decoder, disc


def encoder_latent_dim(cfg: TrainConfig, encoder: nn.Module) -> int:
    """The flat latent size the encoder really produces."""
    return int(getattr(encoder, "latent_dim", cfg.latent_dim))


class _Checkpoints:
    """One file per stage under `directory`, reused only for the same config.

    Each file holds the stage's modules, optimiser state, history and the
    last finished epoch, so an interrupted run resumes at the next epoch.
    """

    def __init__(self, directory: Path | None, cfg: TrainConfig) -> None:
        self.directory = directory
        self.keys = {f"stage{i}": cfg.key(i) for i in (1, 2, 3)}
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def load(self, stage: str) -> dict[str, Any] | None:
        if self.directory is None:
            return None
        path = self.directory / f"{stage}.pt"
        if not path.exists():
            return None
        state: dict[str, Any] = torch.load(path, map_location="cpu")
        if state.get("key") != self.keys[stage]:
            log.info("checkpoint.ignored", path=str(path), reason="config differs")
            return None
        log.info("checkpoint.resumed", path=str(path), epoch=state["epoch"])

        return state

    def save(self, stage: str, state: dict[str, Any]) -> None:
        if self.directory is None:
            return
        path = self.directory / f"{stage}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save({**state, "key": self.keys[stage]}, tmp)
        tmp.replace(path)


def stage_epochs(epochs: int, n: int, cfg: TrainConfig) -> int:
    """Epochs to run: `epochs`, raised to reach `cfg.min_steps` steps."""
    per_epoch = max(1, math.ceil(n / cfg.batch_size))

    return max(epochs, math.ceil(cfg.min_steps / per_epoch)) if epochs > 0 else 0


def _epochs(stage: str, start: int, total: int) -> Iterator[int]:
    """Epoch numbers, with a tqdm bar only when a person is watching."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(range(start, total), desc=stage, initial=start, total=total)
    else:
        yield from range(start, total)


def _report_epoch(stage: str, epoch: int, losses: dict[str, float]) -> None:
    if not sys.stderr.isatty():
        log.info("train.epoch", stage=stage, epoch=epoch, **losses)


def _minibatches(n: int, size: int, rng: np.random.Generator) -> Iterator[Tensor]:
    order = torch.from_numpy(rng.permutation(n))
    for start in range(0, n, size):
        yield order[start : start + size]


def _seed(cfg: TrainConfig, stage: int, epoch: int) -> np.random.Generator:
    """Seeds torch and returns a numpy generator for one epoch of one stage."""
    seed = cfg.seed * 1_000_003 + stage * 10_007 + epoch
    torch.manual_seed(seed)

    return np.random.default_rng(seed)


def _standardizer(x: Tensor, *, identity: bool = False) -> Standardize:
    if identity:
        dim = x.shape[1]
        return Standardize(torch.zeros(dim), torch.ones(dim))
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    # Constant features keep unit scale instead of dividing by ~0.
    std = torch.where(std > 1e-6, std, torch.ones_like(std))

    return Standardize(mean.cpu(), std.cpu())


def _input_standardizer(x: Tensor) -> Standardize:
    """Per-feature mean and a smoothed spread (`input_scale="smoothed"`).

    The variance gets `1 / N` added, as if one more record sat one unit
    away. A one-hot value that no training record (or only one) has then
    lands about `sqrt(N)` units out, whether or not the validation
    hold-out happened to take its single training example: with a unit
    scale for constant features the CTU benchmark's seed 4 lost a one-hot
    value that 95 % of its attacks carry that way (AUROC 0.967 vs 0.997).
    """
    mean = x.mean(dim=0)
    var = x.var(dim=0, unbiased=False)
    std = torch.sqrt(var + 1.0 / max(len(x), 1))

    return Standardize(mean.cpu(), std.cpu())


def _train_autoencoder(
    cfg: TrainConfig,
    encoder: nn.Module,
    decoder: nn.Module,
    disc: nn.Module,
    x_train: Tensor,
    x_val: Tensor,
    ckpt: _Checkpoints,
) -> list[dict[str, float]]:
    """Stage 1: reconstruction + feature matching against a discriminator."""
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt_g = torch.optim.Adam(params, lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    history: list[dict[str, float]] = []
    start = 0
    state = ckpt.load("stage1")
    if state is not None:
        encoder.load_state_dict(state["encoder"])
        decoder.load_state_dict(state["decoder"])
        disc.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        history = state["history"]
        start = state["epoch"] + 1

    total = stage_epochs(cfg.epochs_ae, len(x_train), cfg)
    for epoch in _epochs("ae", start, total):
        rng = _seed(cfg, 1, epoch)
        encoder.train()
        decoder.train()
        disc.train()
        sums = {"recon": 0.0, "adv": 0.0, "disc": 0.0}
        count = 0
        for idx in _minibatches(len(x_train), cfg.batch_size, rng):
            if len(idx) < 2:
                continue
            xb = x_train[idx.to(x_train.device)]
            n = len(idx)
            recon = decoder(encoder(xb))

            # Real and reconstructed go through D together: one call, and
            # BatchNorm in D sees both kinds in every batch.
            logits, _ = disc(torch.cat([xb, recon.detach()]))
            target = torch.cat([torch.ones(n), torch.zeros(n)]).to(logits.device)
            loss_d = 2 * F.binary_cross_entropy_with_logits(logits, target)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()

            _, feats = disc(torch.cat([xb, recon]))
            loss_recon = F.mse_loss(recon, xb)
            loss_adv = F.mse_loss(feats[n:], feats[:n].detach())
            loss_g = cfg.recon_weight * loss_recon + cfg.adv_weight * loss_adv
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()

            sums["recon"] += float(loss_recon.detach()) * n
            sums["adv"] += float(loss_adv.detach()) * n
            sums["disc"] += float(loss_d.detach()) * n
            count += n

        losses = {k: v / max(count, 1) for k, v in sums.items()}
        losses["loss"] = cfg.recon_weight * losses["recon"] + losses["adv"]
        losses["val_recon"] = _val_recon(encoder, decoder, x_val)
        history.append({"epoch": float(epoch), **losses})
        _report_epoch("ae", epoch, losses)
        ckpt.save(
            "stage1",
            {
                "epoch": epoch,
                "encoder": encoder.state_dict(),
                "decoder": decoder.state_dict(),
                "discriminator": disc.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "history": history,
            },
        )

    return history


@torch.no_grad()
def _val_recon(encoder: nn.Module, decoder: nn.Module, x_val: Tensor) -> float:
    if len(x_val) == 0:
        return math.nan
    encoder.eval()
    decoder.eval()
    total = 0.0
    for start in range(0, len(x_val), 4096):
        xb = x_val[start : start + 4096]
        total += float(F.mse_loss(decoder(encoder(xb)), xb, reduction="sum"))

    return total / x_val.numel()


@torch.no_grad()
def _encode(encoder: nn.Module, x: Tensor) -> Tensor:
    encoder.eval()
    parts = [encoder(x[s : s + 4096]) for s in range(0, len(x), 4096)]
    if not parts:
        return torch.zeros(0, 0, device=x.device)

    return torch.cat(parts)


def _nll_per_dim(flow: NormalizingFlow, z: Tensor) -> Tensor:
    return -flow.log_prob(z).mean() / flow.dim


def _train_flow(
    cfg: TrainConfig,
    flow: NormalizingFlow,
    z_train: Tensor,
    z_val: Tensor,
    ckpt: _Checkpoints,
) -> list[dict[str, float]]:
    """Stage 2: maximum likelihood; keeps the epoch with the best val NLL."""
    opt = torch.optim.Adam(flow.parameters(), lr=cfg.lr_flow)
    history: list[dict[str, float]] = []
    start = 0
    best_state = copy.deepcopy(flow.state_dict())
    best_val = math.inf
    state = ckpt.load("stage2")
    if state is not None:
        flow.load_state_dict(state["flow"])
        opt.load_state_dict(state["opt"])
        history = state["history"]
        best_state = state["best_flow"]
        best_val = state["best_val"]
        start = state["epoch"] + 1

    total_epochs = stage_epochs(cfg.epochs_flow, len(z_train), cfg)
    for epoch in _epochs("flow", start, total_epochs):
        rng = _seed(cfg, 2, epoch)
        flow.train()
        total, count = 0.0, 0
        for idx in _minibatches(len(z_train), cfg.batch_size, rng):
            if len(idx) < 2:
                continue
            loss = _nll_per_dim(flow, z_train[idx.to(z_train.device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)

        flow.eval()
        with torch.no_grad():
            val = float(_nll_per_dim(flow, z_val)) if len(z_val) else math.nan
        losses = {"loss": total / max(count, 1), "val_loss": val}
        history.append({"epoch": float(epoch), **losses})
        _report_epoch("flow", epoch, losses)
        # A NaN validation loss never counts as best.
        if val < best_val or (math.isnan(best_val) and not math.isnan(val)):
            best_val = val
            best_state = copy.deepcopy(flow.state_dict())
        ckpt.save(
            "stage2",
            {
                "epoch": epoch,
                "flow": flow.state_dict(),
                "opt": opt.state_dict(),
                "history": history,
                "best_flow": best_state,
                "best_val": best_val,
            },
        )

    if not math.isinf(best_val):
        flow.load_state_dict(best_state)
    flow.eval()

    return history


@torch.no_grad()
def measure_noise_std(
    flow: NormalizingFlow, z_val: Tensor, *, mean: float, quantile: float
) -> float:
    """Noise scale that puts pseudo-anomalies just outside the typical set.

    With `c = f(z)` for normal validation latents and `eps ~ N(mean, s^2)`
    per dimension, `E|c + eps|^2 = |c|^2 + d (mean^2 + s^2)`. `s` is chosen
    so that the median `|c|^2` moved by that amount reaches the `quantile`
    quantile of `|c|^2`. A floor of 0.1 keeps pseudo-anomalies distinct
    from normal points when the validation radii barely spread.
    """
    flow.eval()
    c, _ = flow(z_val)
    r2 = (c**2).sum(dim=1).double().cpu().numpy()
    r2 = r2[np.isfinite(r2)]
    if len(r2) < 2:
        return 1.0
    gap = float(np.quantile(r2, quantile) - np.median(r2)) / flow.dim
    variance = gap - mean**2

    return float(max(math.sqrt(max(variance, 0.0)), 0.1))


def _train_classifier(
    cfg: TrainConfig,
    classifier: Classifier,
    flow: NormalizingFlow,
    z_train: Tensor,
    z_val: Tensor,
    noise_std: float,
    ckpt: _Checkpoints,
) -> list[dict[str, float]]:
    """Stage 3: BCE, normal latents 0, fresh pseudo-anomalies 1 each batch."""
    opt = torch.optim.Adam(classifier.parameters(), lr=cfg.lr_clf)
    history: list[dict[str, float]] = []
    start = 0
    state = ckpt.load("stage3")
    if state is not None:
        classifier.load_state_dict(state["classifier"])
        opt.load_state_dict(state["opt"])
        history = state["history"]
        start = state["epoch"] + 1
    val_gen = torch.Generator().manual_seed(cfg.seed + 77)
    z_val_pseudo = (
        _pseudo(
            flow, z_val, cfg.noise_mean, noise_std, val_gen, spread=cfg.noise_spread
        ).to(z_val.device)
        if len(z_val)
        else z_val
    )

    total = stage_epochs(cfg.epochs_clf, len(z_train), cfg)
    for epoch in _epochs("clf", start, total):
        rng = _seed(cfg, 3, epoch)
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        classifier.train()
        sums = {"loss": 0.0, "loss_normal": 0.0, "loss_pseudo": 0.0}
        count = 0
        for idx in _minibatches(len(z_train), cfg.batch_size, rng):
            if len(idx) < 2:
                continue
            zb = z_train[idx.to(z_train.device)]
            with torch.no_grad():
                zp = _pseudo(
                    flow,
                    zb,
                    cfg.noise_mean,
                    noise_std,
                    generator,
                    spread=cfg.noise_spread,
                )
            loss_n, loss_p = _clf_losses(classifier, zb, zp.to(zb.device))
            loss = 0.5 * (loss_n + loss_p)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = len(idx)
            sums["loss"] += float(loss.detach()) * n
            sums["loss_normal"] += float(loss_n.detach()) * n
            sums["loss_pseudo"] += float(loss_p.detach()) * n
            count += n

        losses = {k: v / max(count, 1) for k, v in sums.items()}
        classifier.eval()
        with torch.no_grad():
            if len(z_val):
                val_n, val_p = _clf_losses(classifier, z_val, z_val_pseudo)
                losses["val_loss_normal"] = float(val_n)
                losses["val_loss"] = float(0.5 * (val_n + val_p))
        history.append({"epoch": float(epoch), **losses})
        _report_epoch("clf", epoch, losses)
        ckpt.save(
            "stage3",
            {
                "epoch": epoch,
                "classifier": classifier.state_dict(),
                "opt": opt.state_dict(),
                "history": history,
            },
        )
    classifier.eval()

    return history


def _clf_losses(
    classifier: Classifier, normal: Tensor, pseudo: Tensor
) -> tuple[Tensor, Tensor]:
    """BCE on normal latents (label 0) and on pseudo-anomalies (label 1)."""
    logit_n = classifier(normal)
    logit_p = classifier(pseudo)
    loss_n = F.binary_cross_entropy_with_logits(logit_n, torch.zeros_like(logit_n))
    loss_p = F.binary_cross_entropy_with_logits(logit_p, torch.ones_like(logit_p))

    return loss_n, loss_p


def _as_tensor(x: np.ndarray, cfg: TrainConfig, name: str) -> Tensor:
    if x.ndim != 2 or x.shape[1] != cfg.input_dim:
        raise ConfigError(
            f"{name} has shape {x.shape}; expected (N, {cfg.input_dim}) "
            "to match TrainConfig.input_dim"
        )
    if not np.isfinite(x).all():
        raise ConfigError(
            f"{name} holds NaN or infinite values; clean the features first"
        )

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(cfg.device)


@dataclass
class _Stages12:
    """Stages 1 and 2 of one restart and the flow's validation NLL."""

    encoder: nn.Module
    decoder: nn.Module
    disc: nn.Module
    latent_norm: Standardize
    zt: Tensor
    zv: Tensor
    dim: int
    flow: NormalizingFlow
    hist_ae: list[dict[str, float]]
    hist_flow: list[dict[str, float]]
    val_nll: float


def _fit_stages12(
    cfg: TrainConfig,
    xt_n: Tensor,
    xv_n: Tensor,
    ckpt: _Checkpoints,
    on_stage: Callable[[str], None] | None,
) -> _Stages12:
    """Autoencoder, then the flow on its standardised latents, for one seed."""
    torch.manual_seed(cfg.seed)
    encoder, decoder, disc = build_networks(cfg)
    encoder, decoder, disc = (
        encoder.to(cfg.device),
        decoder.to(cfg.device),
        disc.to(cfg.device),
    )
    if on_stage:
        on_stage("ae")
    hist_ae = _train_autoencoder(cfg, encoder, decoder, disc, xt_n, xv_n, ckpt)

    z_raw = _encode(encoder, xt_n)
    latent_norm = _standardizer(z_raw).to(cfg.device)
    zt = latent_norm(z_raw)
    zv = latent_norm(_encode(encoder, xv_n)) if len(xv_n) else zt[:0]
    dim = encoder_latent_dim(cfg, encoder)
    torch.manual_seed(cfg.seed + 2)
    flow = NormalizingFlow(
        dim,
        cfg.flow_blocks,
        hidden=cfg.flow_hidden,
        clamp=cfg.flow_clamp,
        seed=cfg.seed,
    ).to(cfg.device)
    if on_stage:
        on_stage("flow")
    hist_flow = _train_flow(cfg, flow, zt, zv, ckpt)

    # Without validation data the training NLL decides; NaN never wins.
    with torch.no_grad():
        ref = zv if len(zv) else zt
        val_nll = float(_nll_per_dim(flow, ref))
    if math.isnan(val_nll):
        val_nll = math.inf

    return _Stages12(
        encoder.eval(),
        decoder.eval(),
        disc.eval(),
        latent_norm,
        zt,
        zv,
        dim,
        flow,
        hist_ae,
        hist_flow,
        val_nll,
    )


def train_three_stage(
    x_train: np.ndarray,
    x_val: np.ndarray,
    cfg: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> TrainedModel:
    """Train all three stages on normal samples.

    Args:
        x_train: normal training features `(N, D)` float32 (packets: bytes
            scaled to [0, 1]).
        x_val: normal validation features `(M, D)`; sets the noise scale and
            the flow's best epoch; never used for gradient steps.
        cfg: sizes, epochs and seeds.
        checkpoint_dir: one checkpoint file per stage, written every epoch;
            a rerun with the same config resumes where it stopped.
        on_stage: called with "ae", "flow", "clf" before each stage ("ae"
            and "flow" once per restart).

    Returns:
        The eager model with its per-epoch history.

    Raises:
        ConfigError: features of the wrong shape or non-finite, or fewer
            than 2 training samples.
    """
    if len(x_train) < 2:
        raise ConfigError(
            f"{len(x_train)} training samples; need at least 2 normal samples"
        )
    xt = _as_tensor(x_train, cfg, "x_train")
    xv = _as_tensor(x_val, cfg, "x_val")
    ckpt = _Checkpoints(checkpoint_dir, cfg)
    torch.manual_seed(cfg.seed)

    if cfg.input_scale == "unit":
        input_norm = _standardizer(xt, identity=True).to(cfg.device)
    else:
        input_norm = _input_standardizer(xt).to(cfg.device)
    xt_n, xv_n = input_norm(xt), input_norm(xv)
    best: _Stages12 | None = None
    for restart in range(cfg.restarts):
        # Restart 0 is the configured seed itself, so restarts=1 is one run.
        sub = replace(cfg, seed=cfg.seed + 1000 * restart, restarts=1)
        sub_dir = checkpoint_dir
        if checkpoint_dir is not None and cfg.restarts > 1:
            sub_dir = checkpoint_dir / f"restart{restart}"
        run = _fit_stages12(sub, xt_n, xv_n, _Checkpoints(sub_dir, sub), on_stage)
        log.info("train.restart", restart=restart, val_nll=run.val_nll)
        if best is None or run.val_nll < best.val_nll:
            best = run
    assert best is not None
    encoder, decoder, disc, flow = best.encoder, best.decoder, best.disc, best.flow
    latent_norm, zt, zv, dim = best.latent_norm, best.zt, best.zv, best.dim
    hist_ae, hist_flow = best.hist_ae, best.hist_flow

    if cfg.noise_std is None:
        reference = zv if len(zv) >= 2 else zt
        noise_std = measure_noise_std(
            flow, reference, mean=cfg.noise_mean, quantile=cfg.noise_quantile
        )
    else:
        noise_std = cfg.noise_std
    log.info("train.noise", noise_mean=cfg.noise_mean, noise_std=noise_std)
    torch.manual_seed(cfg.seed + 3)
    classifier = Classifier(
        dim, cfg.classifier_widths, dropout=cfg.classifier_dropout
    ).to(cfg.device)
    if on_stage:
        on_stage("clf")
    hist_clf = _train_classifier(cfg, classifier, flow, zt, zv, noise_std, ckpt)

    keep = np.random.default_rng(cfg.seed).permutation(len(zt))[:_KEPT_LATENTS]
    # Copies of one packet (a heartbeat, say) would fill the bank with one
    # point and leave fewer normal packets to compare with: keep distinct
    # samples. Without copies `distinct` is 0..N-1 and the pick as before.
    distinct = np.sort(np.unique(xt.cpu().numpy(), axis=0, return_index=True)[1])
    pick = np.random.default_rng(cfg.seed + 4).permutation(distinct)[: cfg.knn_bank]
    with torch.no_grad():
        flow.eval()
        bank = flow(zt[torch.from_numpy(pick).to(zt.device)])[0]

    return TrainedModel(
        cfg=cfg,
        encoder=encoder.eval(),
        decoder=decoder.eval(),
        discriminator=disc.eval(),
        flow=flow,
        classifier=classifier,
        input_norm=input_norm,
        latent_norm=latent_norm,
        noise_std=noise_std,
        history={"ae": hist_ae, "flow": hist_flow, "clf": hist_clf},
        train_latents=zt[torch.from_numpy(keep).to(zt.device)].cpu().numpy(),
        knn_bank=bank.cpu().numpy().astype(np.float32),
    )
