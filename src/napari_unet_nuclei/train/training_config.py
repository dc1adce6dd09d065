"""The settings of a training run (:class:`TrainingConfig`), as a frozen dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from napari_unet_nuclei.nn.normalization import NormalizationConfig
from napari_unet_nuclei.train.augmentation import AugmentationConfig

__all__ = ["TrainingConfig"]


@dataclass(frozen=True)
class TrainingConfig:
    """Settings of a training run.

    Parameters
    ----------
    features, depth : int
        Architecture of a new network (ignored when fine-tuning an existing model).
    epochs : int, optional
        Number of epochs. When neither ``epochs`` nor ``time_budget`` is given, 40.
    time_budget : float, optional
        Train for this many seconds instead (takes precedence over ``epochs``).
    batch_size : int
        Patches per step.
    learning_rate : float
        Peak learning rate of AdamW.
    patch_size : int
        Side of the square training patches (smaller when all images are smaller).
    augmentation : AugmentationConfig
        Augmentation switches.
    validation_fraction : float
        Share of the images held out for validation when no validation set is given.
    validation_names : tuple of str
        Hold out the images with these names instead (takes precedence over the fraction).
    seed : int
        Seed of every random draw (weights, split, patches, augmentation).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``...
    precision : str
        ``"auto"`` (float16 mixed precision on CUDA, bfloat16 mixed precision on CPUs
        that compute it natively, float32 elsewhere), ``"fp32"``, ``"bf16"`` or
        ``"fp16"``. Validation always runs in float32.
    steps_per_epoch : int, optional
        Steps between validations; by default one pass over the training pixels, and at
        least 30 steps with a time budget (validating small data every few steps
        would spend a third of the budget on validation).
    batchnorm_batches : int
        Un-augmented batches used to recompute BatchNorm statistics before each
        validation (0 to skip).
    normalization : NormalizationConfig
        Intensity normalisation stored in the model.
    loss : str
        ``"bce+dice"`` (binary cross-entropy plus soft Dice over the batch),
        ``"bce+image-dice"`` (soft Dice per patch, averaged), ``"bce+lovasz"`` (plus the
        Lovasz hinge, a surrogate of the per-patch IoU) or ``"bce"``.
    dice_weight : float
        Weight of the second loss term (0 leaves binary cross-entropy alone).
    ema_decay : float
        When above 0, validate and keep an exponential moving average of the weights
        with this decay per step (e.g. 0.99) instead of the raw weights.
    calibrate_threshold : bool
        After training, set the model's default threshold to the probability in
        [0.3, 0.7] that gives the best mean F1 on the validation images (as StarDist
        optimises its thresholds); 0.5 when there is no validation set.
    object_maps : tuple of str
        Maps a new network learns beside the nucleus probability so that touching nuclei
        come apart as objects: ``"centre"`` and/or ``"boundary"`` (see
        :mod:`napari_unet_nuclei.nn.object_targets`). Empty: the lab's probability-only
        U-Net. A fine-tuned model keeps the maps it has.
    map_weight : float
        Weight of each object map's binary cross-entropy in the loss.
    choose_instance_rule : bool
        With object maps and validation images: after training, store in the model the
        instance rule with the best validation object F1 among the distance watershed and
        the centre- and boundary-map seeds (and a fine-tuned model's inherited rule).
    objective : str
        ``"separating"`` (gap weights on the probability and a balanced boundary map, see
        :mod:`napari_unet_nuclei.train.losses`) or ``"plain"``; object-aware networks only.
    gap_weight : float
        With the separating objective, pixels in the gap between two nuclei weigh
        ``1 + gap_weight`` in the probability's cross-entropy.
    choose_by : str
        ``"objects"``: the epoch kept, the default threshold and the instance rule are the
        ones with the best validation object F1, fewer merges breaking ties (see
        :mod:`napari_unet_nuclei.train.nucleus_choice`); a fine-tuned model keeps its start
        weights unless an epoch beats them. ``"pixels"``: the lab's pixel F1.
    steps : int, optional
        Train this many steps (takes precedence over ``epochs`` and ``time_budget``): the
        same result on a busy and an idle machine.
    freeze_batchnorm : bool, optional
        Keep the BatchNorm statistics of the start model (their layers in eval mode).
        ``None``: frozen when fine-tuning, learned otherwise.
    fine_tune_learning_rate : float
        Peak learning rate when fine-tuning (``init_model``), instead of
        ``learning_rate``: a gentle step keeps what the start model knew.
    replay_share : float
        With replayed images (``train(..., replay_images=...)``), the share of each batch
        drawn from them.
    """

    features: int = 8
    depth: int = 4
    epochs: int | None = None
    time_budget: float | None = None
    batch_size: int = 8
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    patch_size: int = 256
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    validation_fraction: float = 0.1
    validation_names: tuple[str, ...] = ()
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    steps_per_epoch: int | None = None
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    warmup_fraction: float = 0.05
    loss: str = "bce+dice"
    dice_weight: float = 1.0
    ema_decay: float = 0.0
    calibrate_threshold: bool = True
    batchnorm_batches: int = 4
    name: str = "unet"
    object_maps: tuple[str, ...] = ()
    map_weight: float = 3.0
    choose_instance_rule: bool = True
    objective: str = "separating"
    gap_weight: float = 5.0
    choose_by: str = "objects"
    steps: int | None = None
    freeze_batchnorm: bool | None = None
    fine_tune_learning_rate: float = 5e-4
    replay_share: float = 0.25

    DEFAULT_EPOCHS = 40

    @property
    def stops_by_time(self) -> bool:
        """Whether training stops at its time budget (a step count takes precedence)."""
        return bool(self.time_budget) and not self.steps

    def separates(self, object_maps: tuple[str, ...]) -> bool:
        """Whether a network with these ``object_maps`` trains with the separating
        objective's gap weights and balanced boundary map."""
        return bool(object_maps) and self.objective == "separating"

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain data (stored in the model summary)."""
        data = asdict(self)
        data["augmentation"] = self.augmentation.to_dict()
        data["normalization"] = self.normalization.to_dict()
        data["object_maps"] = list(self.object_maps)
        data["validation_names"] = list(self.validation_names)
        return data
