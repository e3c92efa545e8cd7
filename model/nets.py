"""The networks of the three-stage model, apart from losses and training.

Two families share one shape so the engine stays generic over the feature
kind:

- "packet": a 1-D convolutional encoder over the byte vector, `(N, L)` float32
  in [0, 1], and a transposed-convolution decoder that mirrors it layer for
  layer (the paper's decoder started at 4096 channels; this one is the
  encoder read backwards).
- "flow": an MLP encoder over the conn.log feature vector, `(N, D)` float32,
  and an MLP decoder with the widths reversed.

Every encoder maps `(N, D)` to a flat latent `(N, latent_dim)`. Every module
here is TorchScript-scriptable, since `model.artifact` exports the encoder
and the score head (the classifier or the flow).
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# Each strided convolution halves the length: kernel 4, stride 2, padding 1.
_KERNEL = 4
_STRIDE = 2
_PADDING = 1


def conv_lengths(input_dim: int, n_layers: int) -> list[int]:
    """Lengths after each halving convolution, the input length first."""
    lengths = [input_dim]
    for _ in range(n_layers):
        previous = lengths[-1]
        lengths.append((previous + 2 * _PADDING - _KERNEL) // _STRIDE + 1)
    if lengths[-1] < 1:
        raise ValueError(
            f"input_dim={input_dim} is too short for {n_layers} halving "
            "convolutions; use fewer conv channels or a longer input"
        )

    return lengths


def head_length(length: int) -> int:
    """Length after the unpadded convolutional head (kernel 4, stride 2)."""
    return (length - _KERNEL) // _STRIDE + 1


class ConvEncoder(nn.Module):
    """Strided 1-D convolutions from `(N, L)` bytes to a flat latent.

    With `latent_channels == 0` a linear layer maps the last feature map to
    `latent_dim` values (the small default). With `latent_channels > 0` an
    unpadded convolution produces `latent_channels` maps and the latent is
    their flattening, as in the paper (70 maps of 49).
    """

    def __init__(
        self,
        input_dim: int,
        channels: Sequence[int],
        latent_dim: int,
        *,
        latent_channels: int = 0,
    ) -> None:
        super().__init__()
        lengths = conv_lengths(input_dim, len(channels))
        layers: list[nn.Module] = []
        in_ch = 1
        for out_ch in channels:
            layers.append(nn.Conv1d(in_ch, out_ch, _KERNEL, _STRIDE, _PADDING))
            layers.append(nn.BatchNorm1d(out_ch))
            layers.append(nn.LeakyReLU(0.2))
            in_ch = out_ch
        self.body = nn.Sequential(*layers)
        self.input_dim = input_dim

        last = lengths[-1]
        if latent_channels > 0:
            self.head: nn.Module = nn.Conv1d(in_ch, latent_channels, _KERNEL, _STRIDE)
            self.latent_dim = latent_channels * head_length(last)
        else:
            self.head = nn.Linear(in_ch * last, latent_dim)
            self.latent_dim = latent_dim
        self.conv_head = latent_channels > 0

    def forward(self, x: Tensor) -> Tensor:
        """Map `(N, L)` to `(N, latent_dim)`."""
        h = self.body(x.unsqueeze(1))
        if not self.conv_head:
            h = h.flatten(1)

        return self.head(h).flatten(1)


class ConvDecoder(nn.Module):
    """The mirror of `ConvEncoder`: flat latent back to `(N, L)`.

    With `bounded` (bytes scaled to [0, 1]) the output passes a sigmoid;
    without it (standardised bytes) it is left unbounded.
    """

    def __init__(
        self,
        input_dim: int,
        channels: Sequence[int],
        latent_dim: int,
        *,
        latent_channels: int = 0,
        bounded: bool = True,
    ) -> None:
        super().__init__()
        self.bounded = bounded
        lengths = conv_lengths(input_dim, len(channels))
        last = lengths[-1]
        top = channels[-1]
        self.top_channels = top
        self.top_length = last
        self.latent_channels = latent_channels
        if latent_channels > 0:
            # output_padding restores the length the unpadded head dropped.
            spare = last - ((head_length(last) - 1) * _STRIDE + _KERNEL)
            self.head: nn.Module = nn.ConvTranspose1d(
                latent_channels, top, _KERNEL, _STRIDE, output_padding=spare
            )
        else:
            self.head = nn.Linear(latent_dim, top * last)

        layers: list[nn.Module] = [nn.BatchNorm1d(top), nn.LeakyReLU(0.2)]
        outs = list(reversed(channels[:-1])) + [1]
        in_ch = top
        for i, out_ch in enumerate(outs):
            target = lengths[len(channels) - 1 - i]
            source = lengths[len(channels) - i]
            spare = target - 2 * source
            layers.append(
                nn.ConvTranspose1d(
                    in_ch, out_ch, _KERNEL, _STRIDE, _PADDING, output_padding=spare
                )
            )
            if out_ch != 1:
                layers.append(nn.BatchNorm1d(out_ch))
                layers.append(nn.LeakyReLU(0.2))
            in_ch = out_ch
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """Map `(N, latent_dim)` to `(N, L)`, in [0, 1] when bounded."""
        if self.latent_channels > 0:
            h = self.head(z.view(z.shape[0], self.latent_channels, -1))
        else:
            h = self.head(z).view(z.shape[0], self.top_channels, self.top_length)
        out = self.body(h).squeeze(1)
        if self.bounded:
            out = torch.sigmoid(out)

        return out


def mlp(
    sizes: Sequence[int], *, final_activation: bool = False, dropout: float = 0.0
) -> nn.Sequential:
    """Linear layers with LeakyReLU between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.LeakyReLU(0.2))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))

    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Feature vector `(N, D)` to latent `(N, latent_dim)`."""

    def __init__(self, input_dim: int, widths: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.net = mlp([input_dim, *widths, latent_dim])
        self.input_dim = input_dim
        self.latent_dim = latent_dim

    def forward(self, x: Tensor) -> Tensor:
        """Map `(N, D)` to `(N, latent_dim)`."""
        return self.net(x)


class MLPDecoder(nn.Module):
    """The mirror of `MLPEncoder`; output unbounded (inputs are standardised)."""

    def __init__(self, input_dim: int, widths: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.net = mlp([latent_dim, *reversed(widths), input_dim])

    def forward(self, z: Tensor) -> Tensor:
        """Map `(N, latent_dim)` to `(N, D)`."""
        return self.net(z)


class ConvDiscriminator(nn.Module):
    """Real-vs-reconstructed critic over byte vectors; exposes its features."""

    def __init__(self, input_dim: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.features = ConvEncoder(input_dim, channels, 1)
        self.features.head = nn.Identity()
        last = conv_lengths(input_dim, len(channels))[-1]
        self.out = nn.Linear(channels[-1] * last, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (logit `(N,)`, features `(N, F)`)."""
        feats = self.features(x)

        return self.out(feats).squeeze(-1), feats


class MLPDiscriminator(nn.Module):
    """Real-vs-reconstructed critic over feature vectors."""

    def __init__(self, input_dim: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.features = mlp([input_dim, *widths], final_activation=True)
        self.out = nn.Linear(widths[-1], 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (logit `(N,)`, features `(N, F)`)."""
        feats = self.features(x)

        return self.out(feats).squeeze(-1), feats


class Classifier(nn.Module):
    """Normal (0) vs pseudo-anomalous (1) latents; returns the anomaly logit."""

    def __init__(
        self, latent_dim: int, widths: Sequence[int], *, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.net = mlp([latent_dim, *widths, 1], dropout=dropout)

    def forward(self, z: Tensor) -> Tensor:
        """Map `(N, latent_dim)` to logits `(N,)`; higher = more anomalous."""
        return self.net(z).squeeze(-1)


class Standardize(nn.Module):
    """`(x - mean) / std` with constants fixed at training time."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())

    def forward(self, x: Tensor) -> Tensor:
        """Standardise `(N, D)` with the stored constants."""
        return (x - self.mean) / self.std


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class ScoringModule(nn.Module):
    """What runs at inference: features `(N, D)` float32 to scores `(N,)`.

    Input standardisation, the encoder `G_E`, latent standardisation and a
    score head, in that order. The head maps standardised latents to one
    score each, higher = more anomalous: the classifier's anomaly logit (a
    monotone function of its anomaly probability) or the flow's negative
    log-likelihood (`model.flow.FlowNLL`).
    """

    def __init__(
        self,
        input_norm: Standardize,
        encoder: nn.Module,
        latent_norm: Standardize,
        head: nn.Module,
    ) -> None:
        super().__init__()
        self.input_norm = input_norm
        self.encoder = encoder
        self.latent_norm = latent_norm
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """Score `(N, D)` float32 features; higher = more anomalous."""
        z = self.latent_norm(self.encoder(self.input_norm(x)))

        return self.head(z)
