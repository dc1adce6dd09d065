"""A self-contained copy of the plugin's U-Net, for exported models.

This file depends on PyTorch only. It is copied as is into every bioimage.io package that
:func:`napari_unet_nuclei.workflows.bioimageio_export.export_bioimageio` writes (as the ``architecture`` of the
``pytorch_state_dict`` weights), so tools that do not have napari-unet-nuclei installed can
rebuild the network: ``PortableUNet(features=F, depth=D)`` takes the state dict of a
:class:`napari_unet_nuclei.nn.network.UNet` of the same width and depth unchanged (the module
names are the same).

The forward pass is the plugin's: reflect-pad the bottom/right edges to a multiple of
``2**depth``, run the U-Net, crop back. Here the padding is written without Python
branches on the input size, so ``torch.jit.trace`` and the ONNX exporter record it in the
graph and the exported model accepts any height and width of at least ``2**depth``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["PortableUNet", "UNetLayers"]


class ConvBlock(nn.Sequential):
    """Two times (3x3 convolution -> ReLU -> BatchNorm)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(out_channels),
        )


class Down(nn.Module):
    """Encoder level: a block whose output is kept as skip, then a 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = ConvBlock(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.block(x)
        return self.pool(skip), skip


class Up(nn.Module):
    """Decoder level: 2x2 transposed convolution with stride 2, concat skip, block."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.block = ConvBlock(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([skip, self.upsample(x)], dim=1))


class UNetLayers(nn.Module):
    """The U-Net's layers and its pass over an input whose sides are multiples of
    ``2**depth``: the one assembly of the network (the plugin's ``UNet`` and
    :class:`PortableUNet` differ only in how they pad other sizes).

    Parameters
    ----------
    features : int
        Channels of the first encoder level ``F``.
    depth : int
        Number of 2x down-samplings.
    in_channels : int
        Input channels.
    out_channels : int
        Output channels: 1 (the nucleus logit), or more for a network that also predicts
        object maps (channel 0 stays the nucleus logit).
    """

    def __init__(
        self, features: int = 16, depth: int = 3, in_channels: int = 1, out_channels: int = 1
    ) -> None:
        super().__init__()
        widths = [features * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.encoder.append(Down(channels, width))
            channels = width
        self.bottleneck = ConvBlock(widths[-2], widths[-1])
        self.decoder = nn.ModuleList(
            Up(widths[level + 1], widths[level]) for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def run_layers(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of an input whose height and width are multiples of ``2**depth``."""
        skips = []
        for level in self.encoder:
            x, skip = level(x)
            skips.append(skip)
        x = self.bottleneck(x)
        for level, skip in zip(self.decoder, reversed(skips)):
            x = level(x, skip)
        return self.head(x)


class PortableUNet(UNetLayers):
    """U-Net giving one nucleus logit per pixel (and object maps when ``out_channels`` > 1).

    Parameters
    ----------
    features, depth, in_channels, out_channels : int
        As :class:`UNetLayers`.
    """

    def __init__(
        self, features: int = 16, depth: int = 3, in_channels: int = 1, out_channels: int = 1
    ) -> None:
        super().__init__(features, depth, in_channels, out_channels)
        self.multiple = 2**depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute logits.

        Parameters
        ----------
        x : torch.Tensor
            Normalised image, shape ``(B, in_channels, H, W)`` with ``H`` and ``W`` at
            least ``2**depth`` (reflect padding needs the image to be larger than the pad).

        Returns
        -------
        torch.Tensor
            Logits of shape ``(B, out_channels, H, W)``; apply a sigmoid for probabilities.
        """
        height, width = x.shape[-2], x.shape[-1]
        pad_h = (self.multiple - height % self.multiple) % self.multiple
        pad_w = (self.multiple - width % self.multiple) % self.multiple
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return self.run_layers(x)[..., :height, :width]
