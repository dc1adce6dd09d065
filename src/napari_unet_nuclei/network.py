"""The U-Net of the nuclei lab: configurable width (``features``) and depth.

Block = (conv 3x3 -> ReLU -> BatchNorm) x 2. The encoder applies a block and a 2x2
max-pool per level, with F, 2F, 4F, ... channels; the bottleneck is a block that doubles
the channels; each decoder level upsamples with ``ConvTranspose2d(kernel=2, stride=2)``
halving the channels, concatenates the skip connection and applies a block; a 1x1
convolution gives one logit per pixel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# The building blocks live in the torch-only module shipped inside bioimage.io packages,
# so the exported architecture and this one cannot drift apart.
from .portable_unet import ConvBlock, Down, Up

__all__ = ["ConvBlock", "Down", "UNet", "UNetConfig", "Up", "build_unet"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net, as plain data stored next to the weights.

    Parameters
    ----------
    features : int
        Channels of the first encoder level ``F`` (the lab uses 4, 8, 16, 32, 64).
    depth : int
        Number of 2x down-samplings, 1 to 5. Depth 2 is the lab's "simple U-Net",
        depth 4 the full U-Net.
    in_channels : int
        Input channels (1 for a grey fluorescence image).
    """

    features: int = 16
    depth: int = 3
    in_channels: int = 1

    def __post_init__(self) -> None:
        if not 1 <= int(self.depth) <= 5:
            raise ValueError(f"depth must be between 1 and 5, got {self.depth}.")
        if int(self.features) < 1:
            raise ValueError(f"features must be a positive integer, got {self.features}.")
        if int(self.in_channels) < 1:
            raise ValueError(f"in_channels must be positive, got {self.in_channels}.")

    @property
    def size_multiple(self) -> int:
        """Height and width the network takes directly must be multiples of this."""
        return 2**self.depth

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-compatible dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Build a configuration from :meth:`to_dict` output, ignoring unknown keys."""
        known = {k: int(data[k]) for k in ("features", "depth", "in_channels") if k in data}
        return cls(**known)


class UNet(nn.Module):
    """U-Net giving one logit per pixel.

    Parameters
    ----------
    config : UNetConfig
        Width and depth of the network.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        f, depth = self.config.features, self.config.depth
        widths = [f * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList()
        in_ch = self.config.in_channels
        for width in widths[:-1]:
            self.encoder.append(Down(in_ch, width))
            in_ch = width
        self.bottleneck = ConvBlock(widths[-2], widths[-1])
        self.decoder = nn.ModuleList(
            Up(widths[level + 1], widths[level]) for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute logits.

        Parameters
        ----------
        x : torch.Tensor
            Shape ``(B, in_channels, H, W)``. Any ``H`` and ``W``: inputs that are not
            multiples of ``2**depth`` are reflect-padded and the output is cropped back.

        Returns
        -------
        torch.Tensor
            Logits of shape ``(B, 1, H, W)``.
        """
        height, width = x.shape[-2:]
        multiple = self.config.size_multiple
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h or pad_w:
            x = _pad_reflect(x, pad_h, pad_w)
        skips = []
        for level in self.encoder:
            x, skip = level(x)
            skips.append(skip)
        x = self.bottleneck(x)
        for level, skip in zip(self.decoder, reversed(skips)):
            x = level(x, skip)
        logits = self.head(x)
        return logits[..., :height, :width]


def _pad_reflect(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Pad bottom/right by reflection; fall back to replicate where the image is too small."""
    height, width = x.shape[-2:]
    while pad_h or pad_w:
        step_h, step_w = min(pad_h, height - 1), min(pad_w, width - 1)
        if step_h <= 0 and step_w <= 0:
            return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        x = F.pad(x, (0, max(step_w, 0), 0, max(step_h, 0)), mode="reflect")
        pad_h, pad_w = pad_h - max(step_h, 0), pad_w - max(step_w, 0)
        height, width = x.shape[-2:]
    return x


def build_unet(config: UNetConfig | dict[str, Any] | None = None) -> UNet:
    """Create a freshly initialised :class:`UNet` from a config or its dictionary."""
    if isinstance(config, dict):
        config = UNetConfig.from_dict(config)
    return UNet(config)
