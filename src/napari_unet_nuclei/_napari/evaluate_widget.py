"""The *Evaluate* dock widget: where is the model wrong, and how much?"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    ProgressBar,
    PushButton,
    create_widget,
)

from napari_unet_nuclei._napari._background_job import PROGRESS_STEPS, BackgroundJobMixin
from napari_unet_nuclei._napari._dock_layout import (
    ScrollingDock,
    WrappingLabel,
    compact_combo_boxes,
    scroll_body,
)
from napari_unet_nuclei._napari._jobs import EvaluationResult, SegmentProgress, evaluation_job
from napari_unet_nuclei._napari._layers import (
    OWNER_KEY,
    current_frame_index,
    grey_layer_data,
    grey_shape,
    put_output_layer,
    worker_copy,
)
from napari_unet_nuclei._napari._notify import report_info
from napari_unet_nuclei._napari._object_jobs import ObjectEvaluation, object_evaluation_job
from napari_unet_nuclei._napari.error_legend import (
    ErrorLegend,
    ObjectErrorLegend,
    error_colormap,
    object_error_colormap,
)
from napari_unet_nuclei._napari.metrics_table import EvaluationTable
from napari_unet_nuclei._napari.model_registry import CachedProbabilities
from napari_unet_nuclei._napari.pr_plot import PrecisionRecallPlot

__all__ = ["EvaluateWidget", "PredictionSource"]


#: Roles of the plugin's overlay layers (never offered as a prediction).
OVERLAY_ROLES = ("errors", "object errors")


def curve_name(model: str, image: str, result: EvaluationResult) -> str:
    """Legend entry of an evaluation's curve: the model, the image and how many frames.

    Evaluating the same model on another image (or another number of frames) adds a curve;
    evaluating it again on the same image replaces that curve.
    """
    frames = len(result.frame_scores)
    return f"{model} on {image}" + (f" ({frames} frames)" if frames > 1 else "")


@dataclass(frozen=True)
class PredictionSource:
    """What is evaluated: a session model (``kind="model"``) or a labels layer."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.name}"


class EvaluateWidget(ScrollingDock, BackgroundJobMixin, Container):
    """Compare a model (or a labels layer) with ground-truth labels.

    Shows an error overlay ``<image> errors`` (true positives, wrongly added and missed
    nucleus pixels in the colours of ``metrics.ERROR_COLORS``), a table of accuracy,
    precision, recall, F1 and IoU for the current frame and all frames, and the
    precision-recall curve of each evaluated model over the logit sweep -5..+5. Clicking a
    curve sets the shared threshold, which Segment's slider follows.

    With *object metrics* ticked, nuclei are matched one to one with the ground-truth
    nuclei (IoU >= 0.5): object precision, recall and F1 and the Data Science Bowl 2018 AP
    over IoU 0.5:0.95 join the table, and ``<image> object errors`` shows matched, false
    and missed nuclei, merges and splits. A model's mask is split into nuclei with the
    seeded watershed; a 0/1 mask (prediction or ground truth) counts its connected parts.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Injected by napari.
    """

    job_title = "Evaluation"
    cancel_message = "Evaluation cancelled."

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        viewer = self._attach_to_viewer(viewer)
        self.body = scroll_body(self)
        self.last_result: EvaluationResult | None = None
        self.last_objects: ObjectEvaluation | None = None
        self._known_models = self.registry.names()
        self._run: dict[str, Any] = {}

        self.image_layer = create_widget(annotation=napari.layers.Image, label="image")
        self.source = ComboBox(
            choices=self._source_choices,
            label="prediction",
            tooltip="a session model, or a labels layer to score as it is",
        )
        self.truth_layer = create_widget(annotation=napari.layers.Labels, label="ground truth")
        self.evaluate_button = PushButton(text="Evaluate")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=PROGRESS_STEPS, label="progress")
        self.status = WrappingLabel("Pick a prediction and the ground truth, then Evaluate.")
        self.show_errors = CheckBox(text="show error overlay on top", value=True)
        self.objects = CheckBox(
            text="object metrics (nuclei matched at IoU \u2265 0.5)",
            value=False,
            tooltip="Needs instance ground truth (one id per nucleus); a model's mask is "
            "split into nuclei first",
        )
        self.body.extend(
            [
                self.image_layer,
                self.source,
                self.truth_layer,
                Container(
                    widgets=[self.evaluate_button, self.cancel_button],
                    layout="horizontal",
                    labels=False,
                    label="",
                ),
                self.progress,
                self.status,
                self.show_errors,
                self.objects,
            ]
        )
        self.legend = ErrorLegend()
        self.object_legend = ObjectErrorLegend()
        self.object_legend.setVisible(False)
        self.table = EvaluationTable()
        self.pr_plot = PrecisionRecallPlot(viewer)
        self.pr_plot.set_threshold(self.registry.threshold)
        self.clear_curves_button = PushButton(
            text="Clear curves", tooltip="Remove every precision-recall curve from the plot"
        )
        for widget in (self.legend, self.object_legend, self.table, self.pr_plot):
            self.body.native.layout().addWidget(widget)
        self.body.native.layout().addWidget(self.clear_curves_button.native)

        self.evaluate_button.changed.connect(self._on_evaluate_clicked)
        self.cancel_button.changed.connect(self._on_cancel_clicked)
        self.show_errors.changed.connect(self._on_show_errors_changed)
        self.pr_plot.threshold_picked.connect(self._on_curve_clicked)
        self.clear_curves_button.changed.connect(self._on_clear_curves_clicked)
        self.registry.models_changed.connect(self._on_models_changed)
        self.registry.threshold_changed.connect(self._on_threshold_changed)
        viewer.dims.events.current_step.connect(self._on_current_step)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        compact_combo_boxes(self.body.native)

    # -------------------------------------------------------------------- choices
    def _source_choices(self, _widget: Any = None) -> list[tuple[str, PredictionSource]]:
        sources = [PredictionSource("model", name) for name in self.registry.choices()]
        sources += [
            PredictionSource("layer", layer.name)
            for layer in self._viewer.layers
            if isinstance(layer, napari.layers.Labels)
            and (layer.metadata.get(OWNER_KEY) or {}).get("role") not in OVERLAY_ROLES
        ]
        return [(str(source), source) for source in sources]

    def _on_models_changed(self) -> None:
        if self._closed:
            return
        added = [name for name in self.registry.names() if name not in self._known_models]
        self._known_models = self.registry.names()
        self.source.reset_choices()
        if added:
            self.source.value = PredictionSource("model", added[-1])

    def _enable_controls(self, running: bool) -> None:
        self.evaluate_button.enabled = not running
        self.cancel_button.enabled = running

    # ----------------------------------------------------------------- evaluation
    def _job_inputs(self) -> dict[str, Any]:
        image_layer, truth_layer = self.image_layer.value, self.truth_layer.value
        source: PredictionSource | None = self.source.value
        if source is None or truth_layer is None:
            raise ValueError("pick a prediction and a ground-truth labels layer first")
        truth = np.array(truth_layer.data, copy=True)
        inputs: dict[str, Any] = {"truth": truth, "source": source.name}
        if source.kind == "model":
            if image_layer is None:
                raise ValueError("pick the image layer the model should segment")
            if grey_shape(image_layer) != truth.shape:
                raise ValueError(
                    f"the ground truth (shape {truth.shape}) does not match the image "
                    f"'{image_layer.name}' (shape {grey_shape(image_layer)})"
                )
            inputs["model"] = self.registry.get(source.name)
            inputs["threshold"] = self.registry.threshold
            cached = self.registry.cached_probabilities(source.name, image_layer)
            if self.objects.value and inputs["model"].object_maps:
                cached = None  # nuclei come from the model's object maps: run it again
            if (
                cached is not None
                and cached.complete
                and cached.probabilities.shape == truth.shape
            ):
                inputs["probabilities"] = np.array(cached.probabilities, copy=True)
            else:
                image, rgb_note = grey_layer_data(image_layer)
                if rgb_note:
                    report_info(rgb_note)
                inputs["image"] = worker_copy(image)
        else:
            layer = next((lay for lay in self._viewer.layers if lay.name == source.name), None)
            if layer is None:
                raise ValueError(f"the labels layer '{source.name}' is gone")
            if layer is truth_layer:
                raise ValueError("the prediction and the ground truth are the same layer")
            prediction = np.array(layer.data, copy=True)
            if prediction.shape != truth.shape:
                raise ValueError(
                    f"'{source.name}' (shape {prediction.shape}) does not match the ground truth "
                    f"(shape {truth.shape})"
                )
            inputs["prediction"] = prediction
        return inputs

    def evaluate(self) -> Any:
        """Start an evaluation with the current choices; return the worker (None on error)."""
        if self._busy:
            return None
        try:
            inputs = self._job_inputs()
        except (ValueError, KeyError) as error:
            self._report_failure(error, "Evaluation")
            return None
        image_layer = self.image_layer.value
        self._run = {
            "source": self.source.value,
            "truth": self.truth_layer.value,
            "image": weakref.ref(image_layer) if image_layer is not None else (lambda: None),
            "ran_model": "image" in inputs,
        }
        self.progress.value = 0
        self.status.value = f"Evaluating {self.source.value}..."
        job = object_evaluation_job if self.objects.value else evaluation_job
        return self._start_worker(job, **inputs)

    def _on_evaluate_clicked(self, _value: Any = None) -> None:
        self.evaluate()

    def _on_cancel_clicked(self, _value: Any = None) -> None:
        self.cancel()

    def _on_event(self, event: Any) -> None:
        if isinstance(event, SegmentProgress):
            self._show_progress(event.fraction)
            frames = f" frame {event.frame + 1}/{event.n_frames}" if event.n_frames > 1 else ""
            self.status.value = f"Running the model{frames}..."

    def _on_returned(self, result: EvaluationResult | ObjectEvaluation | None) -> None:
        if self._closed or result is None:
            return
        objects = result if isinstance(result, ObjectEvaluation) else None
        result = objects.pixels if objects is not None else result
        self.last_result, self.last_objects = result, objects
        source: PredictionSource = self._run["source"]
        image_layer = self._run["image"]()
        truth_layer = self._run["truth"]
        owner_name = image_layer.name if image_layer is not None else truth_layer.name
        if source.kind == "model" and image_layer is not None and self._run["ran_model"]:
            done = np.ones(result.probabilities.shape[:-2], bool)
            self.registry.store_probabilities(
                source.name, image_layer, CachedProbabilities(result.probabilities, done)
            )
        self._show_overlay(owner_name, "errors", result.errors, result.source, error_colormap())
        if objects is not None:
            self._show_overlay(
                owner_name,
                "object errors",
                objects.errors,
                objects.pixels.source,
                object_error_colormap(),
            )
        self.object_legend.setVisible(objects is not None)
        self._update_table()
        if result.curve is not None:
            self.pr_plot.set_curve(curve_name(source.name, owner_name, result), result.curve)
        self.progress.value = PROGRESS_STEPS
        threshold = f" at threshold {result.threshold:.2f}" if result.threshold is not None else ""
        self.status.value = (
            f"{source}{threshold}: F1 {result.scores['f1']:.3f}, precision "
            f"{result.scores['precision']:.3f}, recall {result.scores['recall']:.3f}."
        )
        if objects is not None:
            counts = objects.scores
            note = " (ground truth is a mask: touching nuclei count as one)"
            self.status.value += (
                f" Nuclei: F1 {counts['object_f1']:.3f}, AP {counts['dsb_ap']:.3f}; "
                f"{counts['missed']} missed, {counts['false_nuclei']} false, "
                f"{counts['merges']} merges, {counts['splits']} splits"
                f"{note if objects.truth_was_mask else ''}."
            )

    def _show_overlay(
        self, owner_name: str, role: str, data: np.ndarray, prediction: str, colormap: Any
    ) -> None:
        """Put an error overlay (``role``: "errors" or "object errors") on top, shown
        when *show errors* is ticked."""
        layer = put_output_layer(
            self._viewer,
            role,
            owner_name,
            data,
            "labels",
            name=f"{owner_name} {role}",
            extra={"prediction": prediction},
            colormap=colormap,
            opacity=0.7,
        )
        layer.colormap = colormap
        layer.visible = self.show_errors.value
        layers = self._viewer.layers
        layers.move(layers.index(layer), len(layers))

    def _update_table(self) -> None:
        result = self.last_result
        if result is None:
            return
        current = None
        objects = self.last_objects
        frame = 0
        if result.frame_scores:
            current = result.frame_scores[0]
            image_layer = self._run.get("image", lambda: None)()
            reference = image_layer if image_layer is not None else self._run.get("truth")
            if len(result.frame_scores) > 1 and reference is not None:
                index = current_frame_index(self._viewer, reference)
                if index:
                    leading = tuple(reference.data.shape[: len(index)])
                    flat = int(np.ravel_multi_index(index, leading))
                    if flat < len(result.frame_scores):
                        current, frame = result.frame_scores[flat], flat
        overall = result.scores
        if objects is not None and frame < len(objects.frame_scores):
            current = {**(current or {}), **objects.frame_scores[frame]}
            overall = {**overall, **objects.scores}
        self.table.show_scores(current, overall)

    # ---------------------------------------------------------------------- events
    def _on_show_errors_changed(self, visible: bool) -> None:
        for layer in self._viewer.layers:
            if (layer.metadata.get(OWNER_KEY) or {}).get("role") in OVERLAY_ROLES:
                layer.visible = visible
                if visible:
                    layers = self._viewer.layers
                    layers.move(layers.index(layer), len(layers))

    def _on_clear_curves_clicked(self, _value: Any = None) -> None:
        self.pr_plot.clear_curves()

    def _on_curve_clicked(self, threshold: float) -> None:
        self.registry.set_threshold(threshold)

    def _on_threshold_changed(self, threshold: float) -> None:
        if self._closed:
            return
        self.pr_plot.set_threshold(threshold)
        if self.last_result is not None and self.last_result.threshold is not None:
            self.status.value = (
                f"Threshold now {threshold:.2f}: press Evaluate to update the scores and "
                "the error overlay (the network does not run again)."
            )

    def _on_current_step(self, _event: Any = None) -> None:
        if not self._closed and self.last_result is not None:
            self._update_table()

    def _on_layer_removed(self, event: Any) -> None:
        run_layers = (self._run.get("truth"), self._run.get("image", lambda: None)())
        if self._busy and any(event.value is layer for layer in run_layers):
            self.cancel(f"Evaluation stopped: the layer '{event.value.name}' was removed.")
