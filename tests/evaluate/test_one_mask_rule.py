"""One rule turns a 0/1 mask into nuclei: the command line's evaluation and the docks'."""

from __future__ import annotations

import numpy as np

from napari_unet_nuclei._napari._object_jobs import to_labels
from napari_unet_nuclei.nn.object_targets import instance_labels
from napari_unet_nuclei.workflows.evaluate import _truth_labels


def test_two_squares_touching_at_a_corner_are_two_nuclei_everywhere() -> None:
    mask = np.zeros((12, 12), np.uint8)
    mask[2:6, 2:6] = 1
    mask[6:10, 6:10] = 1  # meets the first square at one corner only
    command_line = _truth_labels(mask)
    dock, was_mask = to_labels(mask)
    assert was_mask
    assert command_line.max() == dock.max() == instance_labels(mask).max() == 2
    assert (command_line == dock).all()
    # Frames of a stack follow the same rule, frame by frame.
    stack, _ = to_labels(np.stack([mask, mask.T]).astype(bool))
    assert [int(frame.max()) for frame in stack] == [2, 2]
