"""Encoders, decoders and heads. Shapes: images (B, C, S, S) in [0, 1]; h (B, latent_dim).

A layer followed by BatchNorm has no bias: BatchNorm subtracts it, so its gradient is float
noise that Adam would amplify into lr-sized steps (and DDP runs would drift from one process).
"""

from __future__ import annotations

import torch
from torch import nn

from cdlm_dist.config import DataConfig, ModelConfig


class DigitsEncoder(nn.Module):
    """LeNet-style conv net with BatchNorm for 28 or 32 pixel digits -> h of size latent_dim."""

    def __init__(self, channels: int, image_size: int, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = 64 * (image_size // 4) ** 2
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, latent_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x * 2.0 - 1.0))


class LeNetEncoder(nn.Module):
    """The LeNet of the digit-adaptation literature (ADDA, TLlib): conv 20 and conv 50 (5x5, no
    padding), max-pooling, dropout, fc 500, no BatchNorm; then a linear map to h (latent_dim).

    About 5x fewer multiply-adds per 28 px image than :class:`DigitsEncoder`.
    """

    def __init__(self, channels: int, image_size: int, hidden_dim: int, latent_dim: int,
                 dropout: float) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(20, 50, 5), nn.Dropout2d(dropout), nn.MaxPool2d(2), nn.ReLU(),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(50 * side * side, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, latent_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x * 2.0 - 1.0))


class ResNet50Encoder(nn.Module):
    """torchvision ResNet-50 trunk (ImageNet weights optional) + a projection to latent_dim."""

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, latent_dim: int, hidden_dim: int, pretrained: bool) -> None:
        super().__init__()
        from torchvision.models import ResNet50_Weights, resnet50

        trunk = resnet50(weights=ResNet50_Weights.IMAGENET1K_V2 if pretrained else None)
        trunk.fc = nn.Identity()
        self.trunk = trunk
        self.head = nn.Sequential(nn.Linear(2048, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                                  nn.ReLU(), nn.Linear(hidden_dim, latent_dim))
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.head(self.trunk((x - self.mean) / self.std))


class ConvDecoder(nn.Module):
    """z -> image logits: a linear map to a small square, then stride-2 transposed convolutions
    (halving the width each time) until the square reaches image_size."""

    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int = 64,
                 cond_dim: int = 0) -> None:
        super().__init__()
        size, ups = image_size, 0
        while size > 8 and size % 2 == 0:
            size, ups = size // 2, ups + 1
        self.start, self.width = size, width
        self.fc = nn.Sequential(nn.Linear(latent_dim + cond_dim, width * size * size), nn.ReLU())
        layers: list[nn.Module] = []
        w = width
        for _ in range(ups):
            layers += [nn.ConvTranspose2d(w, max(w // 2, 16), 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(max(w // 2, 16)), nn.ReLU()]
            w = max(w // 2, 16)
        layers.append(nn.Conv2d(w, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=1)
        return self.net(self.fc(z).view(len(z), self.width, self.start, self.start))


class MLPDecoder(nn.Module):
    """z -> image logits through one hidden layer (the decoder of the original VAE paper).

    No BatchNorm, so decoding z and hbar in one call or two gives the same result; for 28 px
    digits it costs a few percent of a conv decoder and still renders recognisable digits.
    """

    def __init__(self, latent_dim: int, channels: int, image_size: int, hidden: int,
                 cond_dim: int = 0) -> None:
        super().__init__()
        self.shape = (channels, image_size, image_size)
        self.net = nn.Sequential(nn.Linear(latent_dim + cond_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, channels * image_size * image_size))

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=1)
        return self.net(z).view(len(z), *self.shape)


def build_encoder(m: ModelConfig, d: DataConfig) -> nn.Module:
    """The encoder named by ``model.encoder``: images -> h of size ``model.latent_dim``."""
    if m.encoder == "digits":
        return DigitsEncoder(d.channels, d.image_size, m.hidden_dim, m.latent_dim)
    if m.encoder == "lenet":
        return LeNetEncoder(d.channels, d.image_size, m.hidden_dim, m.latent_dim, m.dropout)
    return ResNet50Encoder(m.latent_dim, m.hidden_dim, m.pretrained)


def build_decoder(m: ModelConfig, d: DataConfig, cond_dim: int = 0) -> nn.Module:
    """The decoder named by ``model.decoder_arch``: z (+ a domain code) -> image logits."""
    if m.decoder_arch == "mlp":
        return MLPDecoder(m.latent_dim, d.channels, d.image_size, m.decoder_width, cond_dim)
    return ConvDecoder(m.latent_dim, d.channels, d.image_size, m.decoder_width, cond_dim)


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 1, norm: bool = False
        ) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` (ReLU; BatchNorm without bias if ``norm``)."""
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks.append(nn.Linear(in_dim if i == 0 else hidden, hidden, bias=not norm))
        blocks += [nn.BatchNorm1d(hidden), nn.ReLU()] if norm else [nn.ReLU()]
    return nn.Sequential(*blocks, nn.Linear(hidden, out_dim))
