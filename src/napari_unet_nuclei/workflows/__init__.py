"""Whole jobs composed from the engine, Qt-free: the one place the command line, the
batch runner and the docks take them from.

- :mod:`.segment`: an image into probabilities, a mask, nuclei and their measurements,
  in memory or into zarr, frame by frame.
- :mod:`.evaluate`: score a model on labelled images, pixels and nuclei, one pooling rule.
- :mod:`.batch`: many files segmented here or on a dask cluster, with a summary table.
- :mod:`.demo`: the main job on the built-in sample (nuclei, a short fine-tune, before/after).
"""

from __future__ import annotations

from napari_unet_nuclei.workflows.evaluate import POOLING_RULE, evaluate_model, iter_evaluate_model
from napari_unet_nuclei.workflows.frame_writer import FrameSegmented
from napari_unet_nuclei.workflows.segment import SegmentOutputs, SegmentSummary, iter_segment

__all__ = [
    "POOLING_RULE",
    "FrameSegmented",
    "SegmentOutputs",
    "SegmentSummary",
    "evaluate_model",
    "iter_evaluate_model",
    "iter_segment",
]
