"""A trained nuclei model: network, normalisation, default threshold, training summary."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from napari_unet_nuclei.nn.network import UNet, UNetConfig, build_unet
from napari_unet_nuclei.nn.normalization import NormalizationConfig
from napari_unet_nuclei.nn.object_targets import OBJECT_MAPS

__all__ = ["NucleiModel", "create_model"]


@dataclass
class NucleiModel:
    """Everything needed to segment an image the way the model was trained.

    Parameters
    ----------
    network : UNet
        The torch network (its ``config`` holds the architecture).
    normalization : NormalizationConfig
        How each frame is normalised before the network sees it.
    threshold : float
        Default probability threshold for the nucleus mask.
    summary : dict
        Training summary as plain JSON-like data (data names, epochs, metrics, versions).
    name : str
        A short display name, e.g. for the GUI's model pickers.
    """

    network: UNet
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    threshold: float = 0.5
    summary: dict[str, Any] = field(default_factory=dict)
    name: str = "unet"

    @property
    def config(self) -> UNetConfig:
        """Architecture of the network."""
        return self.network.config

    def copy(self) -> NucleiModel:
        """Return an independent copy (weights included), e.g. to fine-tune."""
        return NucleiModel(
            network=copy.deepcopy(self.network).cpu(),
            normalization=self.normalization,
            threshold=self.threshold,
            summary=copy.deepcopy(self.summary),
            name=self.name,
        )

    @property
    def object_maps(self) -> tuple[str, ...]:
        """The maps the network predicts beside the nucleus probability (may be empty)."""
        return self.config.object_maps

    @property
    def instance_seeds(self) -> str:
        """How instances are seeded by default: from the best object map the network
        predicts (``"centre"``, then ``"boundary"``), else from the distance transform of
        the thresholded mask (``"distance"``, the probability-only models)."""
        for name in OBJECT_MAPS:
            if name in self.object_maps:
                return name
        return "distance"

    def describe(self) -> str:
        """One line describing the model for pickers and logs."""
        cfg = self.config
        text = f"{self.name} (F={cfg.features}, depth={cfg.depth}"
        if cfg.object_maps:
            text += ", objects"
        f1 = self.summary.get("best_val_f1")
        if isinstance(f1, float) and f1 == f1:
            text += f", val F1={f1:.3f}"
        return text + ")"


def create_model(
    features: int = 16,
    depth: int = 3,
    normalization: NormalizationConfig | None = None,
    name: str = "unet",
    object_maps: tuple[str, ...] = (),
) -> NucleiModel:
    """Create an untrained model.

    Parameters
    ----------
    features : int
        Channels of the first level ``F``.
    depth : int
        Number of down-samplings (1-5).
    normalization : NormalizationConfig, optional
        Normalisation settings; defaults when omitted.
    name : str
        Display name.
    object_maps : tuple of str
        Maps learnt beside the nucleus probability to tell touching nuclei apart
        (``"centre"``, ``"boundary"``); empty for the lab's probability-only U-Net.

    Returns
    -------
    NucleiModel
    """
    network = build_unet(
        UNetConfig(features=features, depth=depth, object_maps=tuple(object_maps))
    )
    return NucleiModel(network, normalization or NormalizationConfig(), 0.5, {}, name)
