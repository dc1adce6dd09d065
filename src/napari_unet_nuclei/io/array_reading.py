"""Reading array-likes (numpy, zarr, dask, memory-mapped TIFF) into numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["frame_indices", "read_array"]


def read_array(data: Any) -> np.ndarray:
    """Values of a numpy, zarr or dask array (or a slice of one) as a numpy array.

    A dask array is computed with a callback list of its own. Without one, dask swaps its
    global callbacks out and back in around every compute; a worker thread doing that while
    napari computes a dask layer on the GUI thread corrupts dask's (and napari's) cache
    callbacks (``KeyError`` in ``dask/cache.py``). Schedulers that take no callbacks
    (distributed) compute as usual.
    """
    if hasattr(data, "dask") and hasattr(data, "compute"):
        try:
            return np.asarray(data.compute(callbacks=[]))
        except TypeError:  # a scheduler without a ``callbacks`` argument
            return np.asarray(data.compute())
    return np.asarray(data)


def frame_indices(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The index of every 2-D frame of an array of ``shape`` over its leading axes, in
    order: ``[()]`` for a 2-D image, ``[(0,), (1,)...]`` for a stack, and so on."""
    return list(np.ndindex(*tuple(shape)[:-2]))
