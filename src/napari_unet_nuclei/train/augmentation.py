"""Data augmentation on batches of training patches, in plain torch.

Every transform is applied per sample with its own random draw, on the image, the target
mask and the loss weight together where it is geometric:

- flips and 90-degree rotations (exact, cheap);
- intensity: contrast scale and offset, gamma, Gaussian noise (image only);
- a random affine warp: any rotation angle, zoom and shear (bilinear for the image,
  nearest for mask and weight, reflection at the borders).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.nn import functional as F

__all__ = ["AugmentationConfig", "augment_batch"]


@dataclass(frozen=True)
class AugmentationConfig:
    """Switches and strengths of the augmentations.

    Parameters
    ----------
    flips : bool
        Random horizontal and vertical flips.
    rotations90 : bool
        Random rotations by multiples of 90 degrees (square patches only).
    intensity : bool
        Random contrast scale, offset, gamma and Gaussian noise.
    affine : bool
        Random rotation by any angle, zoom and shear.
    affine_probability : float
        Share of samples that get an affine warp when ``affine`` is on.
    """

    flips: bool = True
    rotations90: bool = True
    intensity: bool = False
    affine: bool = False
    affine_probability: float = 0.5
    scale_range: tuple[float, float] = (0.75, 1.25)
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_std_max: float = 0.05
    zoom_range: tuple[float, float] = (0.8, 1.25)
    shear_max: float = 0.15

    @classmethod
    def disabled(cls) -> AugmentationConfig:
        """Return a configuration with every augmentation off."""
        return cls(flips=False, rotations90=False, intensity=False, affine=False)

    @property
    def enabled(self) -> bool:
        """True when any augmentation is on."""
        return self.flips or self.rotations90 or self.intensity or self.affine

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-compatible dictionary."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentationConfig:
        """Build settings from :meth:`to_dict` output."""
        fields = cls.__dataclass_fields__
        return cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields}
        )


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    weights: torch.Tensor,
    config: AugmentationConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment a batch of patches.

    Parameters
    ----------
    images, masks, weights : torch.Tensor
        float32 on the CPU: normalised image ``(B, 1, P, P)``, targets ``(B, K, P, P)``
        (the binary nucleus mask, then any object maps) and per-pixel loss weight
        ``(B, 1, P, P)`` (0 outside annotated or padded regions).
    config : AugmentationConfig
        Which augmentations to apply.
    generator : torch.Generator
        Source of randomness (seeded by the caller for reproducibility).

    Returns
    -------
    tuple of torch.Tensor
        Augmented ``(images, masks, weights)`` with the same shapes.
    """
    batch = images.shape[0]
    if config.flips or config.rotations90:
        images, masks, weights = images.clone(), masks.clone(), weights.clone()
        square = images.shape[-1] == images.shape[-2]
        for index in range(batch):
            dims: list[int] = []
            if config.flips:
                dims = [
                    d
                    for d, flip in zip((-2, -1), torch.rand(2, generator=generator) < 0.5)
                    if flip
                ]
            turns = (
                int(torch.randint(0, 4, (1,), generator=generator))
                if config.rotations90 and square
                else 0
            )
            if dims or turns:
                for tensor in (images, masks, weights):
                    sample = tensor[index]
                    if dims:
                        sample = torch.flip(sample, dims)
                    if turns:
                        sample = torch.rot90(sample, turns, dims=(-2, -1))
                    tensor[index] = sample
    if config.affine:
        images, masks, weights = _random_affine(images, masks, weights, config, generator)
    if config.intensity:
        images = _random_intensity(images, config, generator)
    return images, masks, weights


def _random_intensity(
    images: torch.Tensor, config: AugmentationConfig, generator: torch.Generator
) -> torch.Tensor:
    batch = images.shape[0]
    shape = (batch, 1, 1, 1)
    gamma = _uniform(batch, *config.gamma_range, generator).view(shape)
    scale = _uniform(batch, *config.scale_range, generator).view(shape)
    offset = _uniform(batch, -0.1, 0.1, generator).view(shape)
    noise_std = _uniform(batch, 0.0, config.noise_std_max, generator).view(shape)
    positive = images.clamp(min=0.0)
    images = positive.pow(gamma) + (images - positive)  # gamma on the positive part only
    images = images * scale + offset
    noise = torch.randn(images.shape, generator=generator) * noise_std
    return images + noise


def _random_affine(
    images: torch.Tensor,
    masks: torch.Tensor,
    weights: torch.Tensor,
    config: AugmentationConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch = images.shape[0]
    chosen = torch.rand(batch, generator=generator) < config.affine_probability
    if not bool(chosen.any()):
        return images, masks, weights
    angle = _uniform(batch, -math.pi, math.pi, generator)
    zoom = torch.exp(_uniform(batch, *(math.log(z) for z in config.zoom_range), generator))
    shear = _uniform(batch, -config.shear_max, config.shear_max, generator)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin + shear * cos
    theta[:, 1, 0] = sin
    theta[:, 1, 1] = cos + shear * sin
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    theta[~chosen] = identity
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    labels = F.grid_sample(
        torch.cat([masks, weights], dim=1),
        grid,
        mode="nearest",
        padding_mode="reflection",
        align_corners=False,
    )
    n_targets = masks.shape[1]
    return images, labels[:, :n_targets], labels[:, n_targets:]
