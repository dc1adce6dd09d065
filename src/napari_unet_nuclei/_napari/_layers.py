"""Helpers between napari layers and the engine's plain numpy arrays.

Training data is cut out of the layers here (copied, so the user can keep painting while
a worker trains), and the plugin's output layers are found, named and replaced here. A
layer created by the plugin carries ``layer.metadata["napari_unet_nuclei"]``; layers
without it belong to the user and are never modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_unet_nuclei.io.channels import grey_from_colour
from napari_unet_nuclei.io.pixel_size import file_pixel_size, micrometres

__all__ = [
    "OWNER_KEY",
    "TrainingFrames",
    "current_frame_index",
    "find_owned_layer",
    "frame_count",
    "grey_layer_data",
    "grey_shape",
    "put_output_layer",
    "training_data",
    "unique_layer_name",
    "worker_copy",
]

#: Metadata key marking the layers the plugin created (and may therefore replace).
OWNER_KEY = "napari_unet_nuclei"


@dataclass
class TrainingFrames:
    """2-D training frames copied out of the layers, with their annotated maps.

    Attributes
    ----------
    images, labels : list of numpy.ndarray
        The frames and their labels (copies).
    names : list of str
    n_total : int
        Frames of the layers they were taken from.
    annotated : list of (numpy.ndarray or None)
        Per frame, the pixels whose labels are complete (None: the whole frame).
    """

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    n_total: int = 0
    annotated: list[np.ndarray | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.annotated:
            self.annotated = [None] * len(self.images)

    @property
    def n_used(self) -> int:
        """Number of frames used for training."""
        return len(self.images)

    def describe(self) -> str:
        """One sentence saying how many frames are used."""
        if self.n_total == 1:
            return "Training on 1 image." if self.n_used else "No labelled image."
        return f"Training on {self.n_used} of {self.n_total} frames."


def worker_copy(data: Any) -> Any:
    """A numpy copy of layer data to hand to a worker; lazy arrays (dask, zarr) pass as is.

    The copy keeps the worker's input fixed while the user edits the layer; lazy arrays
    are read frame by frame in the worker instead of being loaded on the GUI thread.
    """
    if isinstance(data, np.ndarray) or not hasattr(data, "__getitem__"):
        return np.array(data, copy=True)
    return data


def read_only_view(data: Any) -> Any:
    """Image data for a worker without copying it: a read-only view of a numpy array.

    Image layers are not painted on, so the pixels stay as they are while a worker reads
    them; the view only guards against the worker writing into the user's data. Lazy
    arrays (dask, zarr) pass as they are. Labels still go through :func:`worker_copy`.
    """
    if isinstance(data, np.ndarray):
        view = data.view()
        view.flags.writeable = False
        return view
    if not hasattr(data, "__getitem__"):
        return np.asarray(data)
    return data


def grey_shape(layer: Any) -> tuple[int, ...]:
    """Shape of the layer's pixels as grey: an RGB(A) layer loses its colour axis."""
    shape = tuple(int(n) for n in layer.data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def grey_layer_data(layer: Any) -> tuple[Any, str | None]:
    """The layer's pixels as a grey ``(..., H, W)`` array, and a sentence if RGB was converted.

    Grey layers are returned as they are (no copy). An RGB(A) layer gives its nuclear
    channel (:func:`~napari_unet_nuclei.io.channels.grey_from_colour`, the engine's rule), and
    the sentence says which and how to use another.
    """
    data = layer.data
    if not getattr(layer, "rgb", False):
        return data, None
    return grey_from_colour(np.asarray(data), f"'{layer.name}'")


def frame_count(shape: tuple[int, ...]) -> int:
    """Number of 2-D frames in an array of ``shape`` (1 for a 2-D image)."""
    return int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1


def labelled_frames(labels: Any) -> np.ndarray:
    """Boolean per 2-D frame (flattened leading axes): does the frame hold any label?"""
    array = np.asarray(labels)
    if array.ndim == 2:
        return np.array([bool(np.any(array > 0))])
    flat = array.reshape(-1, *array.shape[-2:])
    return np.array([bool(np.any(frame > 0)) for frame in flat])


def training_data(
    image: Any, labels: Any, *, use_empty_frames: bool = False, name: str = "image"
) -> TrainingFrames:
    """Cut matching 2-D frames out of an image and its labels, as copies.

    Parameters
    ----------
    image : array-like
        2-D image ``(H, W)`` or stack ``(..., H, W)``.
    labels : array-like
        Labels of the same shape; frame ``i`` of the labels goes with frame ``i`` of the
        image. ``> 0`` is nucleus.
    use_empty_frames : bool
        Also train on frames without any label (as background); otherwise only frames
        with at least one labelled pixel are used.
    name : str
        Image name, used for the frame names and in error messages.

    Returns
    -------
    TrainingFrames

    Raises
    ------
    ValueError
        When the shapes differ, the image is not 2-D or a stack, or no frame is usable.
    """
    image_shape, labels_shape = tuple(np.shape(image)), tuple(np.shape(labels))
    if len(image_shape) < 2:
        raise ValueError(f"The image '{name}' has shape {image_shape}; it must be 2-D or a stack.")
    if image_shape != labels_shape:
        raise ValueError(
            f"The labels (shape {labels_shape}) do not match the image '{name}' "
            f"(shape {image_shape}); pick the labels painted on this image."
        )
    frames_image = np.asarray(image).reshape(-1, *image_shape[-2:])
    frames_labels = np.asarray(labels).reshape(-1, *image_shape[-2:])
    if frames_labels.size and np.issubdtype(frames_labels.dtype, np.signedinteger):
        low = int(frames_labels.min())
        if low < 0:
            raise ValueError(
                f"The labels for '{name}' contain negative values (min {low}); labels must be "
                "0 for background and positive ids for nuclei."
            )
    keep = np.ones(len(frames_image), bool) if use_empty_frames else labelled_frames(labels)
    indices = np.flatnonzero(keep)
    if indices.size == 0:
        raise ValueError(
            f"No labelled frame in '{name}': paint some nuclei first, or tick "
            "'empty frames are background'."
        )
    single = len(frames_image) == 1
    return TrainingFrames(
        images=[np.array(frames_image[i], copy=True) for i in indices],
        labels=[np.array(frames_labels[i], copy=True) for i in indices],
        names=[name if single else f"{name} [{i}]" for i in indices],
        n_total=len(frames_image),
    )


def current_frame_index(viewer: Any, layer: Any) -> tuple[int, ...]:
    """Index of the frame of ``layer`` shown in the viewer (``()`` for a 2-D layer)."""
    shape = tuple(layer.data.shape)
    leading = len(shape) - 2 - (1 if getattr(layer, "rgb", False) else 0)
    if leading <= 0:
        return ()
    try:
        position = layer.world_to_data(viewer.dims.point)
        coords = [int(round(float(c))) for c in list(position)[:leading]]
    except (AttributeError, IndexError, TypeError, ValueError):
        step = list(viewer.dims.current_step)
        coords = [int(c) for c in step[-len(shape) :][:leading]]
    return tuple(int(np.clip(c, 0, n - 1)) for c, n in zip(coords, shape[:leading]))


def unique_layer_name(viewer: Any, base: str) -> str:
    """``base``, or ``base [2]``, ``base [3]``... if a layer already has that name."""
    names = {layer.name for layer in viewer.layers}
    name, number = base, 1
    while name in names:
        number += 1
        name = f"{base} [{number}]"
    return name


def find_owned_layer(viewer: Any, role: str, source: str) -> Any | None:
    """The plugin's layer of ``role`` made from the layer named ``source``, if any."""
    for layer in viewer.layers:
        owner = layer.metadata.get(OWNER_KEY)
        if isinstance(owner, dict) and owner.get("role") == role and owner.get("source") == source:
            return layer
    return None


def put_output_layer(
    viewer: Any,
    role: str,
    source: str,
    data: np.ndarray,
    kind: str,
    name: str,
    extra: dict[str, Any] | None = None,
    **layer_kwargs: Any,
) -> Any:
    """Replace the data of the plugin's ``role`` layer for ``source``, or add the layer.

    Parameters
    ----------
    viewer : napari.Viewer
    role : str
        ``"probabilities"``, ``"nuclei"`` or ``"errors"``.
    source : str
        Name of the image layer the output belongs to.
    data : numpy.ndarray
        New layer data.
    kind : str
        ``"image"`` or ``"labels"``.
    name : str
        Wanted layer name (made unique when a user layer has it).
    extra : dict, optional
        More ownership metadata (e.g. the model name).
    **layer_kwargs
        Passed to ``viewer.add_image`` / ``viewer.add_labels`` for a new layer.

    Returns
    -------
    napari.layers.Layer
    """
    owner = {"role": role, "source": source, **(extra or {})}
    layer = find_owned_layer(viewer, role, source)
    if layer is not None:
        layer.data = data
        layer.metadata[OWNER_KEY] = owner
        return layer
    add = viewer.add_image if kind == "image" else viewer.add_labels
    return add(
        data, name=unique_layer_name(viewer, name), metadata={OWNER_KEY: owner}, **layer_kwargs
    )


def layer_pixel_size(layer: Any) -> dict[str, float] | None:
    """The pixel size (micrometres by axis ``z``, ``y``, ``x``) of an image layer.

    The layer's ``scale`` counts where its ``units`` are lengths (set by a reader or by
    hand); otherwise the metadata of the file it was opened from, when there is one. A
    scale in pixels is not a size: None then.
    """
    n_spatial = min(3, len(layer.scale))
    axes = ("z", "y", "x")[-n_spatial:]
    units = getattr(layer, "units", None) or ("pixel",) * len(layer.scale)
    size = {}
    for axis, step, unit in zip(axes, layer.scale[-n_spatial:], tuple(units)[-n_spatial:]):
        value = micrometres(step, str(unit))
        if value is not None:
            size[axis] = value
    if "y" in size and "x" in size:
        return size
    path = getattr(getattr(layer, "source", None), "path", None)
    return file_pixel_size(path) if path else None
