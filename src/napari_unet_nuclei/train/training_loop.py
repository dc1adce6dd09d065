"""One training run once its data are prepared: the optimiser's steps, each epoch's
validation and choice by nuclei, and the model it finishes with.

:func:`napari_unet_nuclei.train.training.train` prepares the data into a :class:`RunPlan`,
then drives a :class:`TrainingRun` phase by phase::

    run = TrainingRun(plan)
    yield run.started_event()
    run.begin()                              # the start model's nuclei, when fine-tuning
    while run.more_epochs():
        losses = yield from run.run_epoch()  # TrainingStep events
        if not run.epoch_ran(losses):
            break
        yield from run.end_epoch(losses)     # EpochEnd (and BestModel)
    model = run.finish()
"""

from __future__ import annotations

import copy
import math
import platform
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from napari_unet_nuclei import __version__
from napari_unet_nuclei.events import BestModel, EpochEnd, TrainingStarted, TrainingStep
from napari_unet_nuclei.nn.acceleration import autocast
from napari_unet_nuclei.nn.model import NucleiModel
from napari_unet_nuclei.prediction.nucleus_size import diameter_of_masks
from napari_unet_nuclei.train.augmentation import augment_batch
from napari_unet_nuclei.train.losses import map_loss, probability_loss
from napari_unet_nuclei.train.nucleus_choice import NucleusScore
from napari_unet_nuclei.train.patches import PatchSampler, ReplayMix
from napari_unet_nuclei.train.training_config import TrainingConfig
from napari_unet_nuclei.train.training_data import TrainingSplit
from napari_unet_nuclei.train.training_validation import (
    finish_choice,
    recalibrate_batchnorm,
    validate_split,
    validation_nuclei,
)

__all__ = ["RunPlan", "TrainingRun", "learning_rate_at"]


def learning_rate_at(base: float, fraction: float, warmup: float) -> float:
    """The learning rate ``fraction`` of the way through a run: a linear warm-up from a
    tenth of ``base`` over ``warmup``, then a cosine decay to 2 % of ``base``."""
    if fraction < warmup:
        return base * (0.1 + 0.9 * fraction / warmup)
    progress = min(1.0, (fraction - warmup) / max(1e-9, 1.0 - warmup))
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass
class RunPlan:
    """What the preparation phase decided: the data, the model to train and the schedule.

    Attributes
    ----------
    config : TrainingConfig
    model : NucleiModel
        The model being trained (a copy of the start model when fine-tuning).
    init_model : NucleiModel or None
        The start model of a fine-tune (never modified).
    device : torch.device
    compute_precision : str
        ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    train_data, val_data : TrainingSplit
    sampler : PatchSampler
        Patches of the training images (batch-norm recalibration draws from it too).
    batches : ReplayMix
        The batches, with their replayed share.
    replayed_images : int
        Images replayed beside the training images.
    patch : int
        Patch side in pixels.
    steps_per_epoch : int
    total_steps : int or None
        None with a time budget.
    epochs : int or None
        None with a time budget.
    learned_diameter : float or None
        The start model's learned nucleus diameter, kept by a fine-tune.
    rules : list of dict
        Instance rules to choose among by validation object F1.
    inherited_rule : dict or None
        The start model's instance rule.
    """

    config: TrainingConfig
    model: NucleiModel
    init_model: NucleiModel | None
    device: torch.device
    compute_precision: str
    train_data: TrainingSplit
    val_data: TrainingSplit
    sampler: PatchSampler
    batches: ReplayMix
    replayed_images: int
    patch: int
    steps_per_epoch: int
    total_steps: int | None
    epochs: int | None
    learned_diameter: float | None
    rules: list[dict[str, Any]]
    inherited_rule: dict[str, Any] | None

    @property
    def fine_tuning(self) -> bool:
        """Whether the run starts from a trained model."""
        return self.init_model is not None

    @property
    def by_time(self) -> bool:
        """Whether the run stops at its time budget (no step count)."""
        return self.config.stops_by_time

    @property
    def separating(self) -> bool:
        """Whether the separating objective's gap weights and balanced boundary apply."""
        return self.config.separates(self.model.object_maps)

    @property
    def by_objects(self) -> bool:
        """Whether epochs are chosen by validation nuclei (object F1, then merges)."""
        return self.config.choose_by == "objects" and bool(self.val_data.images)


class TrainingRun:
    """The optimiser and the choice of the best epoch for one :class:`RunPlan`."""

    def __init__(self, plan: RunPlan, should_stop: Callable[[], bool] | None = None) -> None:
        config = plan.config
        self.plan = plan
        self.should_stop = should_stop
        self.augmenter = torch.Generator().manual_seed(config.seed)
        network = plan.model.network.to(plan.device)
        self.channels_last = plan.device.type == "cpu"  # oneDNN is faster channels-last
        if self.channels_last:
            network = network.to(memory_format=torch.channels_last)
        self.network = network
        self.pin_memory = plan.device.type == "cuda"
        self.freeze_batchnorm = (
            plan.fine_tuning if config.freeze_batchnorm is None else config.freeze_batchnorm
        )
        _set_train_mode(network, self.freeze_batchnorm)
        self.peak_rate = (
            config.fine_tune_learning_rate if plan.fine_tuning else config.learning_rate
        )
        self.optimizer = torch.optim.AdamW(
            network.parameters(), lr=self.peak_rate, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=plan.compute_precision == "fp16")
        self.parameters = [p for p in network.parameters() if p.requires_grad]
        self.averaged = (
            [p.detach().clone() for p in self.parameters] if config.ema_decay > 0 else None
        )
        map_names = plan.model.object_maps
        self.balanced = (
            [i for i, name in enumerate(map_names) if name == "boundary"]
            if plan.separating
            else []
        )
        self.start = time.perf_counter()
        self.best_state = copy.deepcopy(network.state_dict())
        self.last_good_state = self.best_state
        self.best_f1, self.best_epoch = -math.inf, 0
        self.best_nuclei: NucleusScore | None = None
        self.best_logits: list[np.ndarray] = []
        self.start_nuclei: NucleusScore | None = None
        self.history: list[dict[str, float]] = []
        self.global_step, self.epoch = 0, 0
        self.reason, self.message = "completed", ""
        self._diverged_loss = math.nan

    # ------------------------------------------------------------------ phases
    def started_event(self) -> TrainingStarted:
        """The event that opens the run."""
        plan = self.plan
        return TrainingStarted(
            n_train_images=len(plan.train_data.images),
            n_val_images=len(plan.val_data.images),
            steps_per_epoch=plan.steps_per_epoch,
            total_steps=plan.total_steps,
            time_budget=None if plan.config.steps else plan.config.time_budget,
            device=str(plan.device),
            precision={"fp16": "fp16-mixed", "bf16": "bf16-mixed"}.get(
                plan.compute_precision, "fp32"
            ),
        )

    def begin(self) -> None:
        """Start the clock; a fine-tune scores its start model's nuclei, the ones to beat."""
        self.start = time.perf_counter()
        if self.plan.fine_tuning and self.plan.by_objects:
            *_, start_logits = validate_split(self.network, self.plan.val_data, self.plan.device)
            self.start_nuclei = self.best_nuclei = self._nuclei_of(start_logits)
            self.best_logits = start_logits

    def more_epochs(self) -> bool:
        """Whether another epoch runs (nothing stopped the run, epochs are left)."""
        epochs = self.plan.epochs
        return self.reason == "completed" and not (epochs is not None and self.epoch >= epochs)

    def run_epoch(self) -> Generator[TrainingStep, None, list[float]]:
        """The steps of the next epoch, a ``TrainingStep`` each; returns their losses.

        Stops early (setting :attr:`reason`) when the loss diverges, the run is
        cancelled, or its time budget is spent.
        """
        plan, config = self.plan, self.plan.config
        self.epoch += 1
        losses: list[float] = []
        for step in range(1, plan.steps_per_epoch + 1):
            if plan.total_steps and self.global_step >= plan.total_steps:
                break
            loss = self._step()
            if loss is None:
                self.reason = "diverged"
                self.message = (
                    f"Training stopped at epoch {self.epoch}, step {step}: the loss became "
                    f"{self._diverged_loss}. The last good weights were kept; lower the "
                    "learning rate or check the images for NaN/Inf pixels."
                )
                self.network.load_state_dict(self.last_good_state)
                break
            losses.append(loss)
            elapsed = time.perf_counter() - self.start
            done = self.fraction_done()
            eta = elapsed * (1 - done) / done if done > 0 else None
            yield TrainingStep(
                self.epoch, step, self.global_step, plan.total_steps, loss, elapsed, eta, done
            )
            if self.should_stop is not None and self.should_stop():
                self.reason = "cancelled"
                break
            if plan.by_time and elapsed >= config.time_budget:
                self.reason = "time_budget"
                break
        return losses

    def epoch_ran(self, losses: list[float]) -> bool:
        """Whether the epoch just run is to be validated (it made steps, did not diverge)."""
        return self.reason != "diverged" and bool(losses)

    def end_epoch(self, losses: list[float]) -> Generator[EpochEnd | BestModel, None, None]:
        """Validate the epoch's weights, record them, keep them when they are the best."""
        plan, config, network = self.plan, self.plan.config, self.network
        raw_state = None
        if self.averaged is not None:
            # Validate (and keep) the averaged weights; training goes on from the raw ones.
            raw_state = copy.deepcopy(network.state_dict())
            with torch.no_grad():
                torch._foreach_copy_(self.parameters, self.averaged)
        if not self.freeze_batchnorm:
            recalibrate_batchnorm(
                network,
                plan.sampler,
                config.batch_size,
                config.batchnorm_batches,
                plan.device,
                config.seed + self.epoch,
            )
        val_loss, precision, recall, f1, iou, val_logits = validate_split(
            network, plan.val_data, plan.device
        )
        self.last_good_state = copy.deepcopy(network.state_dict())
        if raw_state is not None:
            network.load_state_dict(raw_state)
        nuclei = replace(self._nuclei_of(val_logits), pixel_f1=f1) if plan.by_objects else None
        elapsed = time.perf_counter() - self.start
        done = self.fraction_done()
        eta = elapsed * (1 - done) / done if done > 0 else None
        record = {
            "epoch": self.epoch,
            "train_loss": float(np.mean(losses)),
            "val_loss": val_loss,
            "val_precision": precision,
            "val_recall": recall,
            "val_f1": f1,
            "val_iou": iou,
            "elapsed": elapsed,
        }
        if nuclei is not None:
            record.update(
                val_object_f1=nuclei.object_f1,
                val_merges=nuclei.merges,
                val_splits=nuclei.splits,
            )
        self.history.append(record)
        yield EpochEnd(
            self.epoch,
            record["train_loss"],
            val_loss,
            precision,
            recall,
            f1,
            iou,
            elapsed,
            eta,
            object_f1=math.nan if nuclei is None else nuclei.object_f1,
            merges=-1 if nuclei is None else nuclei.merges,
        )
        if nuclei is not None:
            # Beating the start model takes a real gain; among epochs, any gain counts.
            start = self.start_nuclei
            margin = start.min_gain if self.best_epoch == 0 and start else 0.0
            improved = nuclei.better_than(self.best_nuclei, margin) or (
                self.best_epoch == 0 and start is None
            )
        else:
            score = f1 if not math.isnan(f1) else -record["train_loss"]
            improved = score >= self.best_f1
            self.best_f1 = max(self.best_f1, score)
        if improved:
            self.best_epoch, self.best_state = self.epoch, self.last_good_state
            self.best_logits = val_logits
            self.best_nuclei = nuclei if nuclei is not None else self.best_nuclei
            if not math.isnan(f1):
                yield BestModel(self.epoch, f1)
        if self.reason == "completed" and plan.by_time and elapsed >= config.time_budget:
            self.reason = "time_budget"

    def finish(self) -> NucleiModel:
        """The model with the best epoch's weights, its threshold and instance rule chosen
        on the validation images, and its summary."""
        plan, config, network = self.plan, self.plan.config, self.network
        model = plan.model
        network.load_state_dict(self.best_state)
        network.eval()
        choice = finish_choice(
            model,
            config,
            plan.val_data,
            self.best_logits,
            plan.rules,
            plan.by_objects,
            kept_any=self.best_epoch > 0 or self.start_nuclei is not None,
        )
        model.network = network.cpu().to(memory_format=torch.contiguous_format)
        model.summary = self._summary(choice)
        if choice.get("instance_config"):
            model.summary["instance_config"] = choice["instance_config"]
            if choice.get("instance_rule_choice"):
                model.summary["instance_rule_choice"] = choice["instance_rule_choice"]
        elif isinstance(plan.inherited_rule, dict):
            # A fine-tuned model keeps the instance rule of the model it started from
            # (with its own threshold).
            model.summary["instance_config"] = {
                **plan.inherited_rule,
                "threshold": float(model.threshold),
            }
        return model

    @property
    def elapsed(self) -> float:
        """Seconds since :meth:`begin`."""
        return time.perf_counter() - self.start

    def fraction_done(self) -> float:
        """How far the run is, by steps (or by its time budget)."""
        if self.plan.total_steps:
            return min(1.0, self.global_step / self.plan.total_steps)
        return min(1.0, (time.perf_counter() - self.start) / self.plan.config.time_budget)

    # ------------------------------------------------------------------ inside
    def _nuclei_of(self, logits: list[np.ndarray]) -> NucleusScore:
        plan = self.plan
        nuclei = validation_nuclei(plan.val_data, logits, plan.model.config.channel_names)
        return nuclei.best_rule_at(plan.rules, float(plan.model.threshold))[0]

    def _step(self) -> float | None:
        """One optimiser step on the next batch; its loss, or None when it is not finite."""
        plan, config, network = self.plan, self.plan.config, self.network
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(
                self.peak_rate, self.fraction_done(), config.warmup_fraction
            )
        x, y, w = (torch.from_numpy(a) for a in plan.batches.sample(config.batch_size))
        if config.augmentation.enabled:
            x, y, w = augment_batch(x, y, w, config.augmentation, self.augmenter)
        if self.pin_memory:
            x, y, w = (t.pin_memory() for t in (x, y, w))
        x, y, w = (t.to(plan.device, non_blocking=self.pin_memory) for t in (x, y, w))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(plan.device, plan.compute_precision):
            logits = network(x)
        logits = logits.float()
        gap_factor = 1.0 + config.gap_weight * y[:, -1:] if plan.separating else None
        loss = probability_loss(
            logits[:, :1], y[:, :1], w, config.dice_weight, config.loss, bce_weight=gap_factor
        )
        map_names = plan.model.object_maps
        if map_names:
            n_maps = len(map_names)
            loss = loss + config.map_weight * map_loss(
                logits[:, 1 : 1 + n_maps], y[:, 1 : 1 + n_maps], w, self.balanced
            )
        if not torch.isfinite(loss):
            self._diverged_loss = loss.item()
            return None
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        if self.averaged is not None:
            # Short memory at first, so that the average does not hold on to the initial
            # weights (the usual EMA warm-up).
            decay = min(config.ema_decay, (1 + self.global_step) / (10 + self.global_step))
            with torch.no_grad():
                torch._foreach_lerp_(
                    self.averaged, [p.detach() for p in self.parameters], 1 - decay
                )
        return loss.item()

    def _summary(self, choice: dict[str, Any]) -> dict[str, Any]:
        plan, config = self.plan, self.plan.config
        init_model, train_data = plan.init_model, plan.train_data
        best_record = next((r for r in self.history if r["epoch"] == self.best_epoch), {})
        previous = init_model.summary.get("rounds", []) if init_model is not None else []
        best, start = self.best_nuclei, self.start_nuclei
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        return {
            "trained_with": f"napari-unet-nuclei {__version__}",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": stamp,
            "train_names": list(train_data.names),
            "val_names": list(plan.val_data.names),
            "epochs": self.epoch,
            "steps": self.global_step,
            "seconds": round(self.elapsed, 2),
            "stop_reason": self.reason,
            "patch_size": plan.patch,
            "best_epoch": self.best_epoch,
            "best_val_f1": best_record.get("val_f1", math.nan),
            "best_val_precision": best_record.get("val_precision", math.nan),
            "best_val_recall": best_record.get("val_recall", math.nan),
            "best_val_iou": best_record.get("val_iou", math.nan),
            "best_val_object_f1": best.object_f1 if best else math.nan,
            "best_val_merges": best.merges if best else None,
            "start_val_object_f1": start.object_f1 if start else None,
            "kept_start_weights": bool(
                plan.fine_tuning and plan.by_objects and self.best_epoch == 0
            ),
            "nucleus_diameter": plan.learned_diameter
            or diameter_of_masks(
                [m if w is None else m & w for m, w in zip(train_data.masks, train_data.weights)]
            ),
            "replayed_images": plan.replayed_images,
            "replayed_per_batch": plan.batches.replayed_per_batch(config.batch_size),
            "fine_tuned_from": init_model.name if init_model is not None else None,
            "threshold_calibration": choice.get("calibration"),
            "config": config.to_dict(),
            "history": self.history,
            "rounds": [*previous, {"date": stamp, "epochs": self.epoch}],
        }


def _set_train_mode(network: torch.nn.Module, freeze_batchnorm: bool) -> None:
    """Training mode, with the BatchNorm layers in eval mode (their statistics kept) when
    ``freeze_batchnorm``."""
    network.train()
    if freeze_batchnorm:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
