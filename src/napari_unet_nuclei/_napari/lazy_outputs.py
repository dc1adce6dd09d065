"""Where a dock's results on a lazy image (dask, zarr, multiscale) go: zarr arrays in the
plugin's temporary folder, written frame by frame and shown as they finish."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.io.zarr_io import ZARR_FORMAT_NAME, create_ome_zarr
from napari_unet_nuclei.prediction.measurements import concatenate_tables

__all__ = ["LazyOutputs", "temporary_root"]

_TEMPORARY_ROOT: list[Path] = []


def temporary_root() -> Path:
    """The plugin's temporary folder for lazy results (removed when Python exits)."""
    if not _TEMPORARY_ROOT:
        root = Path(tempfile.mkdtemp(prefix="napari-unet-nuclei-"))
        atexit.register(shutil.rmtree, root, True)
        _TEMPORARY_ROOT.append(root)
    return _TEMPORARY_ROOT[0]


def _free_name(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem+suffix``, or ``stem_2+suffix``... when taken (nothing is overwritten)."""
    path, number = folder / f"{stem}{suffix}", 1
    while path.exists():
        number += 1
        path = folder / f"{stem}_{number}{suffix}"
    return path


def _safe_stem(name: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return stem or "image"


class _GatedReader:
    """Array-like over a zarr array that reads only finished frames (others are zeros)."""

    def __init__(self, array: Any, done: np.ndarray, which: str, threshold: float | None):
        self.array = array
        self.done = done
        self.which = which
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.shape = tuple(int(n) for n in array.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.uint8 if which == "mask" else array.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = tuple(key) + (slice(None),) * (self.ndim - len(key))
        leading = self.ndim - 2
        ranges = [
            range(*k.indices(n)) if isinstance(k, slice) else range(int(k), int(k) + 1)
            for k, n in zip(key[:leading], self.shape[:leading])
        ]
        spatial = key[leading:]
        sizes = [len(range(*k.indices(n))) for k, n in zip(spatial, self.shape[leading:])]
        out = np.zeros([len(r) for r in ranges] + sizes, self.dtype)
        for position in np.ndindex(*[len(r) for r in ranges]):
            frame = tuple(r[i] for r, i in zip(ranges, position))
            if self.done[frame]:
                block = np.asarray(self.array[(*frame, *spatial)])
                out[position] = (block >= self.threshold) if self.which == "mask" else block
        squeeze = tuple(i for i, k in enumerate(key[:leading]) if not isinstance(k, slice))
        return out.squeeze(axis=squeeze) if squeeze else out


@dataclass
class LazyOutputs:
    """Zarr arrays (OME-Zarr folders) that a lazy segmentation writes frame by frame.

    ``frames_done`` is set by the worker once every output of a frame is written; views
    show the frames not done as zeros, so a cancelled frame never looks finished.
    """

    shape: tuple[int, ...]
    probabilities_path: Path
    probabilities: Any
    labels_path: Path | None = None
    labels: Any = None
    frames_done: np.ndarray = field(default_factory=lambda: np.zeros((), bool))
    tables: dict[tuple[int, ...], dict[str, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        name: str,
        shape: tuple[int, ...],
        folder: str | Path | None = None,
        *,
        instances: bool = False,
        attributes: dict[str, Any] | None = None,
    ) -> LazyOutputs:
        """New empty outputs for the image ``name`` of ``shape``.

        Parameters
        ----------
        name : str
            Image layer name (the output folders are ``<name>_prob.ome.zarr`` and
            ``<name>_nuclei.ome.zarr``).
        shape : tuple of int
            ``(..., H, W)`` of the image.
        folder : path-like, optional
            Where to write; a fresh folder in the plugin's temporary folder when omitted.
            Existing files are never replaced (a free name is used).
        instances : bool
            Also create an int32 array for the nuclei labels.
        attributes : dict, optional
            Stored in the OME-Zarr groups (model name, threshold...).
        """
        if folder is None:
            folder = temporary_root() / uuid.uuid4().hex[:12]
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = _safe_stem(name)
        shape = tuple(int(n) for n in shape)
        attributes = {**(attributes or {}), "frames_done": 0}
        probabilities_path = _free_name(folder, f"{stem}_prob", ".ome.zarr")
        probabilities = create_ome_zarr(
            probabilities_path,
            shape,
            np.float32,
            attributes={**attributes, "kind": "probabilities"},
        )
        labels_path = labels = None
        if instances:
            labels_path = _free_name(folder, f"{stem}_nuclei", ".ome.zarr")
            labels = create_ome_zarr(
                labels_path, shape, np.int32, attributes={**attributes, "kind": "labels"}
            )
        return cls(
            shape=shape,
            probabilities_path=probabilities_path,
            probabilities=probabilities,
            labels_path=labels_path,
            labels=labels,
            frames_done=np.zeros(shape[:-2], bool),
        )

    @property
    def n_done(self) -> int:
        """Frames finished."""
        return int(np.count_nonzero(self.frames_done))

    def mark_done(self, index: tuple[int, ...]) -> None:
        """Record frame ``index`` as finished (in memory and in the zarr attributes)."""
        self.frames_done[index] = True
        for path in (self.probabilities_path, self.labels_path):
            if path is not None:
                _set_attribute(path, ZARR_FORMAT_NAME, "frames_done", self.n_done)

    def view(self, which: str, threshold: float | None = None) -> Any:
        """A dask view of the ``"probabilities"``, the ``"mask"`` at ``threshold`` or the
        ``"labels"``.

        Frames not finished read as zeros without touching the store (the worker may be
        writing them). Each call gives new dask keys, so napari (and dask's cache) read
        the arrays again: call it to refresh a layer.
        """
        import dask.array as da

        array = self.labels if which == "labels" else self.probabilities
        reader = _GatedReader(array, self.frames_done.copy(), which, threshold)
        return da.from_array(
            reader,
            chunks=tuple(array.chunks),
            name=f"unet-nuclei-{which}-{uuid.uuid4().hex}",
            asarray=False,
            meta=np.empty((0,) * len(self.shape), reader.dtype),
        )

    def table(self) -> dict[str, np.ndarray] | None:
        """The measurements of the finished frames, in frame order (None without labels)."""
        if self.labels is None:
            return None

        parts = [self.tables[index] for index in sorted(self.tables) if self.frames_done[index]]
        return concatenate_tables(parts, len(self.shape) - 2)


def _set_attribute(path: Path, key: str, name: str, value: Any) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    attributes = dict(group.attrs.get(key, {}))
    attributes[name] = value
    group.attrs[key] = attributes
