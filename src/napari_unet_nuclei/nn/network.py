"""The U-Net of the nuclei lab: configurable width (``features``) and depth.

Block = (conv 3x3 -> ReLU -> BatchNorm) x 2. The encoder applies a block and a 2x2
max-pool per level, with F, 2F, 4F, ... channels; the bottleneck is a block that doubles
the channels; each decoder level upsamples with ``ConvTranspose2d(kernel=2, stride=2)``
halving the channels, concatenates the skip connection and applies a block; a 1x1
convolution gives one logit per pixel: the nucleus logit, plus one logit per object map
when the network also learns where nuclei are centred and where they touch (see
:mod:`napari_unet_nuclei.nn.object_targets`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.nn import functional as F

# The building blocks live in the torch-only module shipped inside bioimage.io packages,
# so the exported architecture and this one cannot drift apart.
from napari_unet_nuclei.nn.object_targets import OBJECT_MAPS
from napari_unet_nuclei.nn.portable_unet import ConvBlock, Down, UNetLayers, Up

__all__ = ["OBJECT_MAPS", "ConvBlock", "Down", "UNet", "UNetConfig", "Up", "build_unet"]


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
    object_maps : tuple of str
        Extra output channels after the nucleus logit, each a map that tells touching
        nuclei apart: ``"centre"`` (distance to the nucleus border, 1 at its centre) and
        ``"boundary"`` (where two nuclei touch). Empty for the lab's probability-only
        U-Net.
    """

    features: int = 16
    depth: int = 3
    in_channels: int = 1
    object_maps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= int(self.depth) <= 5:
            raise ValueError(f"depth must be between 1 and 5, got {self.depth}.")
        if int(self.features) < 1:
            raise ValueError(f"features must be a positive integer, got {self.features}.")
        if int(self.in_channels) < 1:
            raise ValueError(f"in_channels must be positive, got {self.in_channels}.")
        unknown = [name for name in self.object_maps if name not in OBJECT_MAPS]
        if unknown or len(set(self.object_maps)) != len(self.object_maps):
            raise ValueError(
                f"object_maps must be distinct names among {', '.join(OBJECT_MAPS)}; got "
                f"{list(self.object_maps)}."
            )

    @property
    def out_channels(self) -> int:
        """Output channels: the nucleus logit and one per object map."""
        return 1 + len(self.object_maps)

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Name of each output channel, ``"nucleus"`` first."""
        return ("nucleus", *self.object_maps)

    @property
    def size_multiple(self) -> int:
        """Height and width the network takes directly must be multiples of this."""
        return 2**self.depth

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-compatible dictionary."""
        data = asdict(self)
        data["object_maps"] = list(self.object_maps)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Build a configuration from :meth:`to_dict` output, ignoring unknown keys.

        Files written before object maps existed have no ``object_maps`` entry: they
        describe a probability-only network.
        """
        known: dict[str, Any] = {
            k: int(data[k]) for k in ("features", "depth", "in_channels") if k in data
        }
        maps = data.get("object_maps", ())
        if not isinstance(maps, (list, tuple)) or not all(isinstance(m, str) for m in maps):
            raise ValueError(f"object_maps must be a list of names, got {maps!r}.")
        known["object_maps"] = tuple(maps)
        return cls(**known)


class UNet(UNetLayers):
    """U-Net giving one logit per pixel and output channel (``config.channel_names``).

    The layers are :class:`~napari_unet_nuclei.nn.portable_unet.UNetLayers` (shared with the
    exported architecture); this class adds the configuration and pads inputs of any size.

    Parameters
    ----------
    config : UNetConfig
        Width and depth of the network.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        config = config or UNetConfig()
        super().__init__(config.features, config.depth, config.in_channels, config.out_channels)
        self.config = config

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
            Logits of shape ``(B, out_channels, H, W)``; channel 0 is the nucleus.
        """
        height, width = x.shape[-2:]
        multiple = self.config.size_multiple
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h or pad_w:
            x = pad_reflect(x, pad_h, pad_w)
        return self.run_layers(x)[..., :height, :width]


def pad_reflect(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
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
