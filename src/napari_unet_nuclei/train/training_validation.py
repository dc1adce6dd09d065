"""Validation during training: BatchNorm statistics, the validation images' scores, and
the threshold and instance rule chosen on them after training."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from napari_unet_nuclei.evaluate.metrics import confusion_counts
from napari_unet_nuclei.nn.probabilities import probability_to_logit, sigmoid
from napari_unet_nuclei.prediction.inference import normalized_frame_logits
from napari_unet_nuclei.prediction.instances import InstanceConfig
from napari_unet_nuclei.train.losses import probability_loss
from napari_unet_nuclei.train.nucleus_choice import THRESHOLDS, ValidationNuclei
from napari_unet_nuclei.train.patches import PatchSampler
from napari_unet_nuclei.train.training_data import TrainingSplit

if TYPE_CHECKING:
    from napari_unet_nuclei.nn.model import NucleiModel

__all__ = [
    "CALIBRATION_THRESHOLDS",
    "calibrate_threshold_by_pixels",
    "finish_choice",
    "recalibrate_batchnorm",
    "validate_split",
    "validation_nuclei",
]

# Candidate default thresholds (probabilities) for the pixel calibration (choose_by="pixels").
CALIBRATION_THRESHOLDS = tuple(round(0.3 + 0.02 * i, 2) for i in range(21))


def recalibrate_batchnorm(
    network: torch.nn.Module,
    sampler: PatchSampler,
    batch_size: int,
    n_batches: int,
    device: torch.device,
    seed: int,
) -> None:
    """Recompute BatchNorm running statistics for the current weights ("precise BN").

    During training the running averages lag behind fast-changing weights, which shifts
    the logits at inference (early models then call everything nucleus). A few forward
    passes over un-augmented training patches with a cumulative average fix that.
    """
    layers = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers or n_batches <= 0:
        return
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the passes below
    rng_state = sampler.rng
    sampler.rng = np.random.default_rng(seed)
    network.train()
    try:
        with torch.no_grad():
            for _ in range(n_batches):
                images, _, _ = sampler.sample(batch_size)
                network(torch.from_numpy(images).to(device))
    finally:
        sampler.rng = rng_state
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


def validate_split(
    network: torch.nn.Module, val: TrainingSplit, device: torch.device
) -> tuple[float, float, float, float, float, list[np.ndarray]]:
    """Per-image mean loss, precision, recall, F1 and IoU at threshold 0.5 (tiled, any size),
    and the logits ``(C, H, W)`` of each validation image, every output channel (kept for
    choosing the threshold and the instance rule). Every module is left in the mode it was
    in (BatchNorm layers frozen for a fine-tune stay frozen)."""
    modes = [(module, module.training) for module in network.modules()]
    network.eval()
    losses, scores, all_logits = [], [], []
    with torch.inference_mode():
        for image, mask, weight in zip(val.images, val.masks, val.weights):
            logits = normalized_frame_logits(network, image, device, all_channels=True)
            all_logits.append(logits)
            valid = np.ones(mask.shape, bool) if weight is None else weight
            losses.append(
                float(
                    probability_loss(
                        torch.from_numpy(logits[0])[None, None],
                        torch.from_numpy(mask.astype(np.float32))[None, None],
                        torch.from_numpy(valid.astype(np.float32))[None, None],
                        1.0,
                    )
                )
            )
            counts = confusion_counts((logits[0] >= 0) & valid, mask & valid)
            scores.append((counts.precision, counts.recall, counts.f1, counts.iou))
    for module, training in modes:
        module.training = training
    mean = np.mean(scores, axis=0) if scores else [math.nan] * 4
    return (float(np.mean(losses)) if losses else math.nan, *map(float, mean), all_logits)


def calibrate_threshold_by_pixels(
    logits: list[np.ndarray], val: TrainingSplit
) -> dict[str, float]:
    """The default threshold that maximises the per-image mean validation F1.

    ``logits`` are those of the validation images under the kept weights. Ties go to the
    threshold nearest 0.5, and 0.5 stays unless another one gains at least 0.0005 F1, so
    that a flat curve does not move it.
    """

    def mean_f1(probability: float) -> float:
        cut = probability_to_logit(probability)
        scores = []
        for values, mask, weight in zip(logits, val.masks, val.weights):
            values = values[0]
            valid = np.ones(mask.shape, bool) if weight is None else weight
            scores.append(confusion_counts((values >= cut) & valid, mask & valid).f1)
        return float(np.mean(scores))

    at_half = mean_f1(0.5)
    best_threshold, best_f1 = 0.5, at_half
    for threshold in sorted(CALIBRATION_THRESHOLDS, key=lambda t: abs(t - 0.5)):
        f1 = mean_f1(threshold)
        if f1 > best_f1 and f1 >= at_half + 5e-4:
            best_threshold, best_f1 = threshold, f1
    return {"threshold": best_threshold, "val_f1": best_f1, "val_f1_at_0.5": at_half}


def validation_nuclei(
    val: TrainingSplit, logits: list[np.ndarray], channel_names: Any
) -> ValidationNuclei:
    """The validation images' network outputs (from their logits) with their nuclei."""
    outputs = [sigmoid(values) for values in logits]
    return ValidationNuclei(outputs, val.instances, val.weights, tuple(channel_names))


def finish_choice(
    model: NucleiModel,
    config: Any,
    val: TrainingSplit,
    logits: list[np.ndarray],
    rules: list[dict[str, Any]],
    by_objects: bool,
    kept_any: bool,
) -> dict[str, Any]:
    """Set the model's default threshold (and choose its instance rule) on the validation
    images under the kept weights; returns what the summary records."""
    if not (val.images and kept_any and logits):
        # Nothing to choose on: the map the separating objective sharpens.
        if (
            _inherited_rule_missing(model)
            and config.separates(model.object_maps)
            and "boundary" in model.object_maps
            and config.choose_instance_rule
        ):
            rule = InstanceConfig(seeds="boundary", threshold=float(model.threshold))
            return {"instance_config": rule.to_dict()}
        return {}
    if not by_objects:
        if not config.calibrate_threshold:
            return {}
        calibration = calibrate_threshold_by_pixels(logits, val)
        model.threshold = calibration["threshold"]
        return {"calibration": calibration}
    thresholds = THRESHOLDS if config.calibrate_threshold else (model.threshold,)
    best, table = validation_nuclei(
        val, logits, model.config.channel_names
    ).choose_threshold_and_rule(rules, thresholds, preferred_threshold=float(model.threshold))
    at_start = next(
        (s for s in table if s.rule["threshold"] == model.threshold and s.rule == table[0].rule),
        table[0],
    )
    model.threshold = float(best.rule["threshold"])
    result: dict[str, Any] = {
        "calibration": {
            "threshold": model.threshold,
            "by": "object F1",
            "val_object_f1": best.object_f1,
            "val_merges": best.merges,
            "val_object_f1_at_start_threshold": at_start.object_f1,
        }
        if config.calibrate_threshold
        else None
    }
    if model.object_maps and config.choose_instance_rule:
        result["instance_config"] = best.rule
        at_chosen = [s for s in table if s.rule["threshold"] == model.threshold]
        result["instance_rule_choice"] = {
            "val_object_f1": best.object_f1,
            "val_merges": best.merges,
            "val_object_f1_by_rule": {s.rule["seeds"]: s.object_f1 for s in at_chosen},
            "val_merges_by_rule": {s.rule["seeds"]: s.merges for s in at_chosen},
        }
    return result


def _inherited_rule_missing(model: NucleiModel) -> bool:
    return not isinstance(model.summary.get("instance_config"), dict)
