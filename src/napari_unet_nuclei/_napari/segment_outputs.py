"""The Segment dock's output layers: probabilities, nuclei and instances of each image,
the layers of a re-run while it runs, and the frames a stopped re-run finished.

Every output is a layer the plugin owns (``layer.metadata[OWNER_KEY]``: its role and the
image it comes from); the user's layers are never written to. Their measurements are
saved as CSV where :func:`ask_csv_path` says.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_unet_nuclei._napari._layers import (
    OWNER_KEY,
    find_owned_layer,
    put_output_layer,
    unique_layer_name,
)
from napari_unet_nuclei.prediction.measurements import frame_columns, with_frame_columns

__all__ = ["RUNNING", "UNFINISHED", "OutputLayers", "ask_csv_path", "features_table"]

#: Role prefix of a re-run's outputs while it runs: the earlier result stays as it is.
RUNNING = "running"
#: Role prefix of the frames a cancelled (or failed) re-run finished.
UNFINISHED = "unfinished"


def features_table(layer: Any) -> dict[str, np.ndarray]:
    """A labels layer's features as measurement columns (without napari's ``index``)."""
    features = layer.features
    return {name: features[name].to_numpy() for name in features.columns if name != "index"}


class OutputLayers:
    """Create, update, rename and remove the Segment dock's layers in ``viewer``."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer

    def put_probabilities_and_nuclei(
        self,
        layer: Any,
        probabilities: Any,
        mask: Any,
        extra: dict[str, Any],
        stage: str | None = None,
        suffix: str = "",
    ) -> None:
        """Create or update the plugin-owned ``<image> probabilities`` and ``<image> nuclei``
        (with ``stage``: the ``RUNNING`` layers of a re-run, named with ``suffix``)."""
        prefix = f"{stage} " if stage else ""
        put_output_layer(
            self.viewer,
            f"{prefix}probabilities",
            layer.name,
            probabilities,
            "image",
            name=f"{layer.name} probabilities{suffix}",
            extra=extra,
            colormap="magma",
            contrast_limits=(0.0, 1.0),
            visible=False,
        )
        put_output_layer(
            self.viewer,
            f"{prefix}nuclei",
            layer.name,
            mask,
            "labels",
            name=f"{layer.name} nuclei{suffix}",
            extra=extra,
            opacity=0.5,
        )

    def remove_stage(self, source: str, stage: str) -> None:
        """Remove the ``stage`` outputs (``RUNNING`` or ``UNFINISHED``) of image ``source``."""
        for role in ("probabilities", "nuclei", "instances"):
            layer = find_owned_layer(self.viewer, f"{stage} {role}", source)
            if layer is not None:
                self.viewer.layers.remove(layer)

    def keep_unfinished(self, source: str, done: int, total: int) -> str:
        """Turn a stopped re-run's ``RUNNING`` outputs of ``source`` into ``UNFINISHED`` ones
        (an earlier unfinished run's are replaced); return the kept nuclei layer's name."""
        self.remove_stage(source, UNFINISHED)
        kept = ""
        for role in ("probabilities", "nuclei", "instances"):
            layer = find_owned_layer(self.viewer, f"{RUNNING} {role}", source)
            if layer is None:
                continue
            layer.metadata[OWNER_KEY] = {
                **layer.metadata[OWNER_KEY],
                "role": f"{UNFINISHED} {role}",
                "frames_done": done,
            }
            layer.name = unique_layer_name(
                self.viewer, f"{source} {role} (unfinished run, {done} of {total} frames)"
            )
            if role == "nuclei":
                kept = layer.name
        return kept

    def merge_frame(
        self,
        source: str,
        shape: tuple[int, ...],
        frame: tuple[int, ...],
        labels: np.ndarray,
        table: dict[str, np.ndarray],
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Put one frame's nuclei into the stack's instances, ids kept unique."""
        existing = find_owned_layer(self.viewer, "instances", source)
        names = frame_columns(len(frame))
        if existing is not None and tuple(existing.data.shape) == shape:
            full = np.array(existing.data, dtype=np.int32)
            old = features_table(existing)
        else:
            full, old = np.zeros(shape, np.int32), {}
        full[frame] = 0
        offset = int(full.max())
        full[frame] = np.where(labels > 0, labels + offset, 0)
        new = with_frame_columns(table, frame)
        new["label"] = np.asarray(table["label"]) + offset
        if old and set(old) == set(new):
            keep = ~np.all([old[name] == value for name, value in zip(names, frame)], axis=0)
            merged = {name: np.concatenate([old[name][keep], new[name]]) for name in new}
        else:
            merged = new
        order = np.argsort(merged["label"], kind="stable")
        return full, {name: np.asarray(values)[order] for name, values in merged.items()}


def ask_csv_path(parent: Any = None, suggested: str = "") -> str:
    """Ask where to save a CSV file with a Qt dialog; ``""`` when cancelled."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(
        parent, "Save measurements as", suggested, "CSV table (*.csv)"
    )
    if path and not path.lower().endswith(".csv"):
        path += ".csv"
    return path
