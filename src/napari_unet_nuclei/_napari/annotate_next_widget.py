"""The *Annotate next* dock widget: which frames or tiles should the user label next?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import napari
import numpy as np
from magicgui.widgets import (
    Container,
    FloatSlider,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from napari_unet_nuclei._napari._background_job import PROGRESS_STEPS, BackgroundJobMixin
from napari_unet_nuclei._napari._dock_layout import (
    ScrollingDock,
    WrappingLabel,
    compact_combo_boxes,
    scroll_body,
)
from napari_unet_nuclei._napari._jobs import ranking_job
from napari_unet_nuclei._napari._layers import (
    OWNER_KEY,
    current_frame_index,
    find_owned_layer,
    frame_count,
    grey_layer_data,
    grey_shape,
    labelled_frames,
    unique_layer_name,
    worker_copy,
)
from napari_unet_nuclei._napari._notify import report_info
from napari_unet_nuclei._napari.model_picker import ModelPicker

__all__ = ["AnnotateNextWidget", "RankingEntry", "viewer_camera"]

TILES_ROLE = "annotate next tiles"
COLUMNS = ("rank", "frame or tile", "score")


@dataclass(frozen=True)
class RankingEntry:
    """One row of the ranking table.

    Parameters
    ----------
    rank : int
        1 for the first frame or tile to annotate.
    frame : tuple of int
        Index over the layer's leading (frame) axes; ``()`` for a 2-D image.
    score : float
        Uncertainty score in [0, 1].
    tile : tuple of int, optional
        ``(y, x, h, w)`` in pixels of the frame, for a tile.
    """

    rank: int
    frame: tuple[int, ...]
    score: float
    tile: tuple[int, int, int, int] | None = None

    def describe(self) -> str:
        """Text of the table's "frame or tile" column."""
        frame = ", ".join(str(i) for i in self.frame)
        if self.tile is None:
            return f"frame {frame}" if frame else "image"
        y, x, h, w = self.tile
        where = f"frame {frame}: " if frame else ""
        return f"{where}y {y}, x {x} ({h} x {w})"


def viewer_camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, else ``viewer.camera``)."""
    scene = getattr(viewer, "scene", None)
    camera = getattr(scene, "camera", None)
    return camera if camera is not None else viewer.camera


class _RankingTable(QTableWidget):
    """Read-only table of the ranking: rank, frame or tile, score."""

    def __init__(self) -> None:
        super().__init__(0, len(COLUMNS))
        self.setHorizontalHeaderLabels(list(COLUMNS))
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.verticalHeader().setVisible(False)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.horizontalHeaderItem(2).setToolTip(
            "The model's uncertainty. Frames are ranked by it mixed with how much they "
            "differ from the frames ranked before them (the diversity slider), so with "
            "diversity above 0 the scores are not in decreasing order."
        )
        self.setMinimumHeight(140)

    def show_entries(self, entries: Sequence[RankingEntry]) -> None:
        self.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            for column, text in enumerate(
                (str(entry.rank), entry.describe(), f"{entry.score:.4f}")
            ):
                self.setItem(row, column, QTableWidgetItem(text))


class AnnotateNextWidget(ScrollingDock, BackgroundJobMixin, Container):
    """Rank frames of a stack, or tiles of a large image, by the model's uncertainty.

    *Rank frames* scores every frame (test-time-augmented uncertainty, ordered with a
    diversity term so that near-duplicates do not fill the top; see
    :mod:`napari_unet_nuclei.prediction.uncertainty`); frames holding labels in the optional
    *annotated in* layer are left out. *Rank tiles* scores tiles of the current frame and
    outlines the top ones in a shapes layer the plugin owns (``<image> annotate next``).
    Clicking a row of the table moves the viewer to that frame, or centres and zooms on
    that tile.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Injected by napari.
    """

    job_title = "Ranking"
    cancel_message = "Ranking cancelled."

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        viewer = self._attach_to_viewer(viewer)
        self.body = scroll_body(self)
        self.entries: list[RankingEntry] = []
        self.runs_started = 0
        self._run: dict[str, Any] = {}

        self.model = ModelPicker(self.registry, label="model")
        self.image_layer = create_widget(annotation=napari.layers.Image, label="image")
        self.labels_layer = create_widget(
            annotation=Optional[napari.layers.Labels],
            label="annotated in",
            options={"tooltip": "Frames holding labels in this layer are not ranked"},
        )
        self.diversity = FloatSlider(
            value=0.5,
            min=0.0,
            max=1.0,
            step=0.05,
            label="diversity",
            tooltip="0: most uncertain first; higher: favour frames like many not yet annotated",
        )
        self.tile = SpinBox(value=256, min=16, max=8192, step=16, label="tile side")
        self.top_tiles = SpinBox(value=10, min=1, max=1000, label="tiles outlined")
        self.frames_button = PushButton(text="Rank frames")
        self.tiles_button = PushButton(text="Rank tiles")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=PROGRESS_STEPS, label="progress")
        self.status = WrappingLabel("Pick a model and an image, then rank frames or tiles.")
        self.body.extend(
            [
                self.model,
                self.image_layer,
                self.labels_layer,
                self.diversity,
                self.tile,
                self.top_tiles,
                Container(
                    widgets=[self.frames_button, self.tiles_button, self.cancel_button],
                    layout="horizontal",
                    labels=False,
                    label="",
                ),
                self.progress,
                self.status,
            ]
        )
        self.table = _RankingTable()
        self.body.native.layout().addWidget(self.table)

        self.frames_button.changed.connect(self._on_frames_clicked)
        self.tiles_button.changed.connect(self._on_tiles_clicked)
        self.cancel_button.changed.connect(self._on_cancel_clicked)
        self.table.cellClicked.connect(self._on_cell_clicked)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        compact_combo_boxes(self.body.native)

    def _enable_controls(self, running: bool) -> None:
        self.frames_button.enabled = not running
        self.tiles_button.enabled = not running
        self.cancel_button.enabled = running

    # ------------------------------------------------------------------------ run
    def _annotated_frames(self, layer: Any) -> list[int]:
        labels = self.labels_layer.value
        if labels is None:
            return []
        if tuple(labels.data.shape) != grey_shape(layer):
            raise ValueError(
                f"the labels '{labels.name}' (shape {tuple(labels.data.shape)}) do not match "
                f"the image '{layer.name}' (shape {grey_shape(layer)})"
            )
        return [int(i) for i in np.flatnonzero(labelled_frames(labels.data))]

    def run(self, mode: str = "frames") -> Any:
        """Start ranking frames (``"frames"``) or tiles (``"tiles"``); return the worker.

        Returns None (and shows a notification) when the inputs are not usable.
        """
        if self._busy:
            return None
        doing = "Ranking frames" if mode == "frames" else "Ranking tiles"
        try:
            name = self.model.model_name
            if name is None:
                raise ValueError("pick a model first (train one or load a .pt file)")
            model = self.registry.get(name)
            layer = self.image_layer.value
            if layer is None:
                raise ValueError("there is no image layer to rank")
            labelled: list[int] = []
            # Multiscale layers: full resolution; lazy arrays are read frame by frame;
            # RGB is ranked as grey, as Segment and Train see it.
            if getattr(layer, "multiscale", False):
                if layer.rgb:
                    raise ValueError(
                        f"'{layer.name}' is a multiscale RGB image; split its channels "
                        "(right-click > Split RGB) and rank the nuclear channel"
                    )
                source = layer.data[0]
            else:
                source, rgb_note = grey_layer_data(layer)
                if rgb_note:
                    report_info(rgb_note)
            if mode == "frames":
                data = worker_copy(source)
                labelled = self._annotated_frames(layer)
                if len(labelled) >= frame_count(tuple(data.shape)):
                    raise ValueError("every frame is annotated already; nothing left to rank")
                frame: tuple[int, ...] = ()
            else:
                frame = current_frame_index(self._viewer, layer)
                data = np.array(source[frame] if frame else source, copy=True)
        except (ValueError, KeyError) as error:
            self._report_failure(error, doing)
            return None
        self._run = {
            "mode": mode,
            "layer": layer,
            "frame": frame,
            "model": name,
            "diversity": float(self.diversity.value),
        }
        self.progress.value = 0
        where = f" of frame {', '.join(map(str, frame))}" if frame else ""
        self.status.value = f"{doing}{where} of '{layer.name}' with {name}..."
        self.runs_started += 1
        return self._start_worker(
            ranking_job,
            model,
            data,
            mode=mode,
            tile=int(self.tile.value),
            diversity=float(self.diversity.value),
            labelled=labelled,
        )

    def _on_frames_clicked(self, _value: Any = None) -> None:
        self.run("frames")

    def _on_tiles_clicked(self, _value: Any = None) -> None:
        self.run("tiles")

    def _on_cancel_clicked(self, _value: Any = None) -> None:
        self.cancel()

    # -------------------------------------------------------------------- results
    def _ignores_events(self) -> bool:
        return self._closed or self.stop_requested  # Cancel keeps the previous ranking

    def _on_event(self, event: Any) -> None:
        from napari_unet_nuclei.prediction.ranking import RankingProgress

        if isinstance(event, RankingProgress):
            self._show_progress(event.fraction)
            if event.n_frames > 1:
                self.status.value = f"Scoring frame {event.frame + 1}/{event.n_frames}..."

    def _on_returned(self, result: Any) -> None:
        if self._closed or result is None or self.stop_requested:
            return
        layer = self._run["layer"]
        if layer not in self._viewer.layers:
            return
        if self._run["mode"] == "frames":
            self.entries = [
                RankingEntry(rank, score.index, score.score)
                for rank, score in enumerate(result.ranked, start=1)
            ]
            left_out = len(result.scores) - len(result.order)
            note = f" ({left_out} annotated frame(s) left out)" if left_out else ""
            diversity = float(self._run.get("diversity", 0.0))
            mix = (
                f" The order mixes uncertainty with diversity ({diversity:.2f}), so the "
                "scores are not in decreasing order."
                if diversity > 0
                else ""
            )
            self.status.value = (
                f"Ranked {len(self.entries)} frame(s) of '{layer.name}'{note}; click a row to "
                f"go there.{mix}"
            )
        else:
            frame = self._run["frame"]
            self.entries = [
                RankingEntry(rank, frame, tile.score, (tile.y, tile.x, tile.height, tile.width))
                for rank, tile in enumerate(result, start=1)
            ]
            self._outline_tiles(layer, self.entries[: int(self.top_tiles.value)])
            self.status.value = (
                f"Ranked {len(self.entries)} tile(s) of '{layer.name}'; the top "
                f"{min(len(self.entries), int(self.top_tiles.value))} are outlined. Click a "
                "row to go there."
            )
        self.progress.value = PROGRESS_STEPS
        self.table.show_entries(self.entries)

    def _on_layer_removed(self, event: Any) -> None:
        if self._busy and event.value is self._run.get("layer"):
            message = f"Ranking stopped: the layer '{event.value.name}' was removed."
            self.cancel(message)
            report_info(message)

    # -------------------------------------------------------------------- shapes
    def _outline_tiles(self, layer: Any, entries: Sequence[RankingEntry]) -> Any:
        """Put rectangles around ``entries`` into the plugin's shapes layer for ``layer``."""
        rectangles = []
        for entry in entries:
            y, x, h, w = entry.tile
            corners = np.array([[y, x], [y, x + w], [y + h, x + w], [y + h, x]], float)
            if entry.frame:
                leading = np.tile(np.array(entry.frame, float), (4, 1))
                corners = np.hstack([leading, corners])
            rectangles.append(corners)
        ndim = len(entries[0].frame) + 2 if entries else 2
        owner = {"role": TILES_ROLE, "source": layer.name, "model": self._run.get("model")}
        existing = find_owned_layer(self._viewer, TILES_ROLE, layer.name)
        if existing is not None:
            self._viewer.layers.remove(existing)
        scale = tuple(layer.scale)[-ndim:]
        translate = tuple(layer.translate)[-ndim:]
        return self._viewer.add_shapes(
            rectangles,
            ndim=ndim,
            shape_type="rectangle",
            edge_color="yellow",
            edge_width=max(1.0, float(self.tile.value) / 64),
            face_color="transparent",
            name=unique_layer_name(self._viewer, f"{layer.name} annotate next"),
            metadata={OWNER_KEY: owner},
            features={"rank": [e.rank for e in entries], "score": [e.score for e in entries]},
            text={"string": "{rank}", "color": "yellow", "anchor": "upper_left"},
            scale=scale,
            translate=translate,
        )

    # ----------------------------------------------------------------------- jump
    def _on_cell_clicked(self, row: int, _column: int) -> None:
        self.jump_to(row)

    def jump_to(self, row: int) -> None:
        """Show the frame (or centre and zoom on the tile) of table row ``row``."""
        if not 0 <= row < len(self.entries):
            return
        entry = self.entries[row]
        layer = self._run.get("layer")
        if layer is None or layer not in self._viewer.layers:
            report_info("The ranked image layer was removed; rank again.")
            return
        ndim = layer.data.ndim
        offset = self._viewer.dims.ndim - ndim
        for axis, value in enumerate(entry.frame):
            self._viewer.dims.set_current_step(offset + axis, int(value))
        if entry.tile is None:
            return
        y, x, h, w = entry.tile
        centre = np.array([*entry.frame, y + h / 2.0, x + w / 2.0], float)
        world = np.asarray(layer.data_to_world(centre), float)
        scale = np.abs(np.asarray(layer.scale, float)[-2:])
        camera = viewer_camera(self._viewer)
        self._viewer.reset_view()
        extent = self._viewer.layers.extent.world
        size = np.maximum(extent[1][-2:] - extent[0][-2:], 1e-9)
        tile_world = np.maximum(np.array([h, w], float) * scale, 1e-9)
        camera.zoom = float(camera.zoom * np.min(size / tile_world))
        camera.center = tuple(world[-2:])
