"""The settings form of the Train widget, with the rarely changed ones folded away."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox
from superqt import QCollapsible

from napari_unet_nuclei.nn.object_targets import OBJECT_MAPS

__all__ = ["EPOCHS", "TIME_BUDGET", "TrainingSettings"]

EPOCHS, TIME_BUDGET = "epochs", "time budget"


class TrainingSettings(Container):
    """Architecture, duration and model name; an *Advanced settings* section holds the rest.

    Defaults are the engine's (:class:`~napari_unet_nuclei.train.training.TrainingConfig`):
    F=8, depth 4, 40 epochs, batch 8, learning rate 3e-3, 256-pixel patches, flips and
    90-degree rotations (intensity and affine off), 10 % validation, seed 0, automatic device.
    """

    def __init__(self) -> None:
        super().__init__(labels=True)
        self.margins = (0, 0, 0, 0)
        self.features = SpinBox(value=8, min=2, max=256, label="features F")
        self.depth = SpinBox(value=4, min=1, max=5, label="depth")
        self.duration = ComboBox(choices=[EPOCHS, TIME_BUDGET], value=EPOCHS, label="train for")
        self.epochs = SpinBox(value=40, min=1, max=100_000, label="epochs")
        self.time_budget = FloatSpinBox(
            value=300.0,
            min=1.0,
            max=7 * 86400.0,
            step=10.0,
            label="time budget (s)",
            visible=False,
        )
        self.model_name = LineEdit(value="unet", label="model name")
        self.object_maps = CheckBox(
            text="separate touching nuclei",
            value=True,
            tooltip="A new network also learns centre and boundary maps: where nuclei are "
            "centred and where they touch, "
            "so that Instances splits touching nuclei; off: the lab's probability-only U-Net",
        )
        self.extend(
            [
                self.features,
                self.depth,
                self.object_maps,
                self.duration,
                self.epochs,
                self.time_budget,
                self.model_name,
            ]
        )

        self.batch_size = SpinBox(value=8, min=1, max=512, label="batch size")
        self.learning_rate = FloatSpinBox(
            value=3e-3, min=1e-5, max=1.0, step=1e-4, label="learning rate"
        )
        self.patch_size = SpinBox(value=256, min=16, max=4096, step=16, label="patch size")
        self.steps_per_epoch = SpinBox(
            value=0,
            min=0,
            max=1_000_000,
            label="steps per epoch",
            tooltip="0: one pass over the training pixels",
        )
        self.flips = CheckBox(text="flips", value=True)
        self.rotations90 = CheckBox(text="90° rotations", value=True)
        self.intensity = CheckBox(text="intensity", value=False)
        self.affine = CheckBox(text="affine", value=False)
        rows = [
            Container(widgets=pair, layout="horizontal", labels=False)
            for pair in ((self.flips, self.rotations90), (self.intensity, self.affine))
        ]
        for row in rows:
            row.margins = (0, 0, 0, 0)
        self.augmentation = Container(widgets=rows, labels=False, label="augmentation")
        self.augmentation.margins = (0, 0, 0, 0)
        self.validation_fraction = FloatSpinBox(
            value=0.1, min=0.0, max=0.5, step=0.05, label="validation fraction"
        )
        self.seed = SpinBox(value=0, min=0, max=2**31 - 1, label="seed")
        self.device = ComboBox(
            choices=["auto", "cpu", "cuda", "mps"], value="auto", label="device"
        )
        self.advanced = Container(
            widgets=[
                self.batch_size,
                self.learning_rate,
                self.patch_size,
                self.steps_per_epoch,
                self.augmentation,
                self.validation_fraction,
                self.seed,
                self.device,
            ],
            labels=True,
        )
        self.advanced.margins = (0, 0, 0, 0)
        self.advanced_section = QCollapsible("Advanced settings")
        self.advanced_section.addWidget(self.advanced.native)
        self.native.layout().addWidget(self.advanced_section)
        self.duration.changed.connect(self._on_duration_changed)

    def _on_duration_changed(self, value: str) -> None:
        self.epochs.visible = value == EPOCHS
        self.time_budget.visible = value == TIME_BUDGET

    def set_architecture_enabled(self, enabled: bool) -> None:
        """Grey out F, depth and the object maps (fine-tuning keeps the model's)."""
        self.features.enabled = enabled
        self.depth.enabled = enabled
        self.object_maps.enabled = enabled

    def config(self) -> Any:
        """The :class:`~napari_unet_nuclei.train.training.TrainingConfig` described by the form."""
        from napari_unet_nuclei.train.augmentation import AugmentationConfig
        from napari_unet_nuclei.train.training import TrainingConfig

        by_time = self.duration.value == TIME_BUDGET
        return TrainingConfig(
            features=self.features.value,
            depth=self.depth.value,
            epochs=None if by_time else self.epochs.value,
            time_budget=float(self.time_budget.value) if by_time else None,
            batch_size=self.batch_size.value,
            learning_rate=float(self.learning_rate.value),
            patch_size=self.patch_size.value,
            augmentation=AugmentationConfig(
                flips=self.flips.value,
                rotations90=self.rotations90.value,
                intensity=self.intensity.value,
                affine=self.affine.value,
            ),
            validation_fraction=float(self.validation_fraction.value),
            seed=self.seed.value,
            device=self.device.value,
            steps_per_epoch=self.steps_per_epoch.value or None,
            object_maps=OBJECT_MAPS if self.object_maps.value else (),
            name=self.model_name.value.strip() or "unet",
        )
