"""Nuclei as objects: instance labels from a probability map with a seeded watershed.

A pixel mask (``probability >= threshold``) merges nuclei that touch. Here each nucleus gets
its own id: the distance to the background (or the smoothed probability) has one peak per
nucleus; peaks are kept when they stand out from their neighbours, and a watershed grows
one region from each peak inside the mask (scikit-image).

The peak test is scale-free, so the defaults work from 10x to 63x (nuclei of 100 to 20,000
pixels in the Kromp et al. 2020 images): on the distance map two touching nuclei are split
when the neck between them is narrower than ``neck_ratio`` times the width of the smaller
nucleus.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from napari_unet_nuclei.events import FrameDone, run_to_end
from napari_unet_nuclei.io.array_reading import frame_indices
from napari_unet_nuclei.nn.object_targets import OBJECT_MAPS

__all__ = [
    "SEEDS",
    "InstanceConfig",
    "instances_from_maps",
    "instances_from_mask",
    "instances_from_probabilities",
    "iter_instances",
    "label_stack",
]


SEEDS = ("distance", "probability", *OBJECT_MAPS)


@dataclass(frozen=True)
class InstanceConfig:
    """Settings of the seeded watershed that turns probabilities into nuclei.

    Parameters
    ----------
    threshold : float
        Probability at or above which a pixel is nucleus.
    seeds : {"distance", "probability", "centre", "boundary"}
        Where the seeds come from: peaks of the distance to the background (shape, the
        default for probability-only models: splits touching round nuclei where a neck
        shows), peaks of the smoothed probability (for a model that predicts lower values
        between nuclei), or an object-aware network's own maps: the peaks of its
        ``"centre"`` map (predicted distance to the nucleus border) or the parts its
        ``"boundary"`` map (where nuclei touch) leaves apart.
    seed_threshold : float
        ``"boundary"`` seeds: a seed is a connected region of the mask where the boundary
        map stays below this (0-1).
    neck_ratio : float
        ``"distance"`` seeds: two touching nuclei are split when the neck between them is
        narrower than this fraction of the smaller one's width (0-1; lower splits less).
    min_peak_height : float
        ``"probability"`` and ``"centre"`` seeds: how far (in probability, or in the
        centre map's units) a peak must rise above the saddle to its neighbour.
    sigma : float
        Gaussian smoothing (pixels) of the distance or probability map before peaks are
        sought; removes peaks from ragged borders.
    min_size : int
        Objects (and holes) smaller than this many pixels are removed (filled).
    connectivity : int
        1 (4-neighbours) or 2 (8-neighbours) for connected regions.
    """

    threshold: float = 0.5
    seeds: Literal["distance", "probability", "centre", "boundary"] = "distance"
    seed_threshold: float = 0.5
    neck_ratio: float = 0.8
    min_peak_height: float = 0.1
    sigma: float = 1.0
    min_size: int = 30
    connectivity: int = 1

    def __post_init__(self) -> None:
        if self.seeds not in SEEDS:
            raise ValueError(
                f"InstanceConfig.seeds must be one of {', '.join(map(repr, SEEDS))}, got "
                f"{self.seeds!r}."
            )
        if not 0.0 < self.seed_threshold < 1.0:
            raise ValueError(
                f"InstanceConfig.seed_threshold must be between 0 and 1 (exclusive), got "
                f"{self.seed_threshold}."
            )
        if not 0.0 < self.neck_ratio < 1.0:
            raise ValueError(
                f"InstanceConfig.neck_ratio must be between 0 and 1 (exclusive), got "
                f"{self.neck_ratio}; 0.8 suits nuclei."
            )
        if self.min_peak_height <= 0:
            raise ValueError(
                f"InstanceConfig.min_peak_height must be > 0, got {self.min_peak_height}."
            )
        if self.sigma < 0:
            raise ValueError(f"InstanceConfig.sigma must be >= 0, got {self.sigma}.")
        if self.min_size < 0:
            raise ValueError(f"InstanceConfig.min_size must be >= 0, got {self.min_size}.")
        if self.connectivity not in (1, 2):
            raise ValueError(
                f"InstanceConfig.connectivity must be 1 or 2, got {self.connectivity}."
            )

    @property
    def uses_object_map(self) -> bool:
        """Whether the seeds come from one of the network's object maps."""
        return self.seeds in OBJECT_MAPS

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-compatible dictionary."""
        return asdict(self)


def _clean_mask(mask: np.ndarray, config: InstanceConfig) -> np.ndarray:
    """Fill holes and remove objects smaller than ``config.min_size`` pixels."""
    from scipy import ndimage as ndi

    if config.min_size <= 1:
        return mask
    structure = ndi.generate_binary_structure(2, config.connectivity)
    holes, _ = ndi.label(~mask, structure=structure)
    sizes = np.bincount(holes.ravel())
    fill = sizes < config.min_size
    fill[0] = False
    border = np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])
    fill[border] = False
    mask = mask | fill[holes]
    objects, _ = ndi.label(mask, structure=structure)
    sizes = np.bincount(objects.ravel())
    keep = sizes >= config.min_size
    keep[0] = False
    return keep[objects]


def _seed_landscape(
    mask: np.ndarray, probabilities: np.ndarray | None, config: InstanceConfig
) -> tuple[np.ndarray, float]:
    """Return the map whose peaks are nuclei and the peak height ``h`` for h-maxima."""
    from scipy import ndimage as ndi

    if config.seeds == "probability" and probabilities is not None:
        landscape = np.where(mask, probabilities, 0).astype(np.float32)
        if config.sigma > 0:
            landscape = ndi.gaussian_filter(landscape, config.sigma)
        return landscape, config.min_peak_height
    distance = ndi.distance_transform_edt(mask).astype(np.float32)
    if config.sigma > 0:
        distance = ndi.gaussian_filter(distance, config.sigma)
    # On log(1 + d) a peak rising h above its saddle means saddle / peak < exp(-h): a ratio,
    # hence the same rule for nuclei of every size.
    np.log1p(distance, out=distance)
    return distance, float(-np.log(config.neck_ratio))


def instances_from_mask(
    mask: np.ndarray,
    config: InstanceConfig | None = None,
    *,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Split a 2-D nucleus mask into nuclei with a seeded watershed.

    Parameters
    ----------
    mask : numpy.ndarray
        2-D mask; nucleus is ``> 0`` (or True).
    config : InstanceConfig, optional
        Settings; the defaults when omitted (``config.threshold`` is not used here).
    probabilities : numpy.ndarray, optional
        The probabilities the mask came from; needed for ``seeds="probability"``.

    Returns
    -------
    numpy.ndarray
        int32 labels of the mask's shape: 0 = background, 1..N = nuclei (consecutive).
    """
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    config = config or InstanceConfig()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(
            f"instances_from_mask expects a 2-D mask, got shape {mask.shape}; use "
            "label_stack for stacks."
        )
    if config.seeds == "probability" and probabilities is None:
        raise ValueError(
            "InstanceConfig(seeds='probability') needs the probabilities: pass "
            "probabilities=..., or use seeds='distance'."
        )
    mask = _clean_mask(mask > 0, config)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    landscape, height = _seed_landscape(mask, probabilities, config)
    footprint = ndi.generate_binary_structure(2, config.connectivity)
    parts, _ = ndi.label(mask, structure=footprint)
    square = np.ones((3, 3), bool)
    # h-maxima part by part (each in its box with a one-pixel margin): the same peaks as on
    # the whole image, without the cost of a morphological reconstruction over the
    # background. Parts with one peak (most nuclei) get it in one vectorised step; the
    # others go through skimage.
    boxes = [
        tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        for box in ndi.find_objects(parts)
    ]
    peaks, handled = _single_peak_h_maxima(landscape, mask, parts, boxes, height)
    for number in np.flatnonzero(~handled[1:]) + 1:
        box = boxes[number - 1]
        own = parts[box] == number
        crop = np.where(own, landscape[box], 0).astype(np.float32)
        peaks[box] |= h_maxima(crop, height, footprint=square).astype(bool) & own
    markers, _ = ndi.label(peaks, structure=square)
    # Every connected part of the mask gets at least one seed (a part without a clear peak
    # is one nucleus).
    markers = _add_unseeded_parts(markers, mask, parts, footprint)
    labels = watershed(-landscape, markers, mask=mask, connectivity=config.connectivity)
    return _without_small(labels, config.min_size)


def _single_peak_h_maxima(
    landscape: np.ndarray,
    mask: np.ndarray,
    parts: np.ndarray,
    boxes: list[tuple[slice, ...]],
    height: float,
) -> tuple[np.ndarray, np.ndarray]:
    """skimage's ``h_maxima`` of every part of the mask that has a single peak.

    A part (zero around it, as in its own crop) with a single regional maximum ``m``
    reconstructs to ``min(f, m - h - r)`` (``r``: skimage's float resolution term), so its
    h-maxima are the pixels where ``f - min(f, m - h - r) >= h``: computed here for all such
    parts at once, with the same float32 operations as skimage. A part counts as
    single-peaked when exactly one 8-connected group of local maxima lies in it and it
    touches no other part, even diagonally (its crop then holds no other part's pixels).

    Parameters
    ----------
    landscape, mask : numpy.ndarray
        The map whose peaks are sought, and the nucleus mask.
    parts : numpy.ndarray
        The mask's connected parts (ids 1..N).
    boxes : list of tuple of slice
        Each part's box with a one-pixel margin (clipped to the image), by id - 1.
    height : float
        ``h`` of the h-maxima.

    Returns
    -------
    numpy.ndarray
        Boolean peaks of the single-peaked parts.
    numpy.ndarray
        Per part id (index 0 unused): whether it was handled here (a single-peaked part
        whose range is below ``h`` is handled and has no peak, as in skimage).
    """
    from scipy import ndimage as ndi

    n_parts = len(boxes)
    square = np.ones((3, 3), bool)
    peaks = np.zeros(mask.shape, bool)
    if n_parts == 0:
        return peaks, np.zeros(1, bool)
    values = np.where(mask, landscape, 0).astype(np.float32)
    local = mask & (values == ndi.maximum_filter(values, footprint=square, mode="constant"))
    groups, n_groups = ndi.label(local, structure=square)
    group_part = np.zeros(n_groups + 1, np.int64)
    group_part[groups[local]] = parts[local]
    groups_per_part = np.bincount(group_part[1:], minlength=n_parts + 1)
    # Parts that share an 8-connected component with another part touch it diagonally.
    joined, _ = ndi.label(mask, structure=square)
    component_of_part = np.zeros(n_parts + 1, np.int64)
    component_of_part[parts[mask]] = joined[mask]
    parts_per_component = np.bincount(component_of_part[1:])
    alone = parts_per_component[component_of_part] == 1
    single = (groups_per_part == 1) & alone
    single[0] = False
    top = np.zeros(n_parts + 1, np.float32)
    np.maximum.at(top, parts[mask], values[mask])
    low = np.zeros(n_parts + 1, np.float32)
    # skimage returns no maxima when h exceeds the crop's range: the crop's minimum is the
    # zero around the part, unless the part fills its (image-clipped) box.
    sizes = np.bincount(parts.ravel(), minlength=n_parts + 1)
    for number in np.flatnonzero(single):
        box = boxes[number - 1]
        if int(np.prod([s.stop - s.start for s in box])) == sizes[number]:
            low[number] = values[box].min()
    with_peak = single & ~(height > (top - low))
    resolution = np.float32(2 * np.finfo(np.float32).resolution)
    shifted_top = top - height - resolution * np.abs(top)
    on = with_peak[parts]
    f = values[on]
    peaks[on] = (f - np.minimum(f, shifted_top[parts[on]])) >= height
    return peaks, single


def _without_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """int32 labels 1..N without the objects smaller than ``min_size`` pixels."""
    from skimage.segmentation import relabel_sequential

    if min_size > 1:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            labels[small[labels]] = 0
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32, copy=False)


def _add_unseeded_parts(
    markers: np.ndarray, mask: np.ndarray, parts: np.ndarray, footprint: np.ndarray
) -> np.ndarray:
    """Give every connected part of ``mask`` (``parts``: its labels with ``footprint``)
    without a marker a marker of its own."""
    from scipy import ndimage as ndi

    n_parts = int(parts.max()) if parts.size else 0
    if n_parts:
        seeded = np.zeros(n_parts + 1, bool)
        seeded[parts[markers > 0]] = True
        unseeded = ~seeded[parts] & mask
        if unseeded.any():
            extra, _ = ndi.label(unseeded, structure=footprint)
            markers[extra > 0] = extra[extra > 0] + markers.max()
    return markers


def instances_from_maps(
    probabilities: np.ndarray,
    maps: dict[str, np.ndarray],
    config: InstanceConfig | None = None,
) -> np.ndarray:
    """Instance labels from an object-aware network's outputs (one 2-D frame).

    The nucleus mask is ``probabilities >= config.threshold`` (holes and specks removed as
    in :func:`instances_from_mask`). Seeds come from the network's own maps:
    - ``"centre"``: the peaks of the predicted centre map (distance to the nucleus
      border, 1 at the centre) that rise at least ``config.min_peak_height`` above the
      saddle to a neighbouring peak; each nucleus then grows over the descending centre
      map (watershed) inside the mask;
    - ``"boundary"``: connected regions of the mask where the predicted boundary map
      (where nuclei touch) stays below ``config.seed_threshold``; each grows over the
      rising boundary map inside the mask.

    A part of the mask without a seed is one nucleus. With ``seeds`` ``"distance"`` or
    ``"probability"`` the maps are ignored (:func:`instances_from_mask`).

    Parameters
    ----------
    probabilities : numpy.ndarray
        2-D nucleus probabilities.
    maps : dict of str to numpy.ndarray
        The network's object maps as probabilities in [0, 1], by name.
    config : InstanceConfig, optional
        Threshold, seeds, ``min_size``...

    Returns
    -------
    numpy.ndarray
        int32 labels: 0 = background, 1..N = nuclei (consecutive).
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    config = config or InstanceConfig()
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if not config.uses_object_map:
        return instances_from_probabilities(probabilities, config)
    if config.seeds not in maps:
        raise ValueError(
            f"InstanceConfig(seeds={config.seeds!r}) needs the network's {config.seeds!r} map, "
            f"but it predicts {sorted(maps) or 'no object maps'}; use seeds='distance'."
        )
    landscape = np.asarray(maps[config.seeds], dtype=np.float32)
    if landscape.shape != probabilities.shape:
        raise ValueError(
            f"The {config.seeds!r} map has shape {landscape.shape}, the probabilities "
            f"{probabilities.shape}; give maps of one frame."
        )
    mask = _clean_mask(probabilities >= config.threshold, config)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    footprint = ndi.generate_binary_structure(2, config.connectivity)
    if config.seeds == "centre":
        from skimage.morphology import h_maxima

        inside = np.where(mask, landscape, 0).astype(np.float32)
        cores = h_maxima(inside, config.min_peak_height, footprint=np.ones((3, 3), bool))
        cores = cores.astype(bool) & mask
        flood, joins = -landscape, np.ones((3, 3), bool)  # a peak's plateau is one seed
    else:
        cores = (landscape < config.seed_threshold) & mask
        flood, joins = landscape, footprint
    markers, _ = ndi.label(cores, structure=joins)
    parts, _ = ndi.label(mask, structure=footprint)
    markers = _add_unseeded_parts(markers, mask, parts, footprint)
    labels = watershed(flood, markers, mask=mask, connectivity=config.connectivity)
    return _without_small(labels, config.min_size)


def instances_from_probabilities(
    probabilities: np.ndarray, config: InstanceConfig | None = None
) -> np.ndarray:
    """Instance labels (one id per nucleus) from a 2-D probability map.

    Parameters
    ----------
    probabilities : numpy.ndarray
        2-D nucleus probabilities in [0, 1] (e.g. from :func:`~napari_unet_nuclei.predict`).
    config : InstanceConfig, optional
        Threshold, seeds, ``min_size``...; the defaults when omitted.

    Returns
    -------
    numpy.ndarray
        int32 labels: 0 = background, 1..N = nuclei.
    """
    config = config or InstanceConfig()
    probabilities = np.asarray(probabilities, dtype=np.float32)
    return instances_from_mask(
        probabilities >= config.threshold, config, probabilities=probabilities
    )


def iter_instances(
    probabilities: Any,
    config: InstanceConfig | None = None,
    *,
    maps: dict[str, Any] | None = None,
    stack_axis: str = "frames",
    out: Any = None,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Any, None, Any]:
    """Label every 2-D frame of a probability stack, yielding a ``FrameDone`` per frame.

    Ids are unique across the whole stack (frame ``k`` continues after the last id of
    frame ``k - 1``), so the result is one napari labels layer whose features table has
    one row per nucleus. With ``stack_axis="z"`` the stack is then labelled as one volume
    (:func:`~napari_unet_nuclei.prediction.volumes.nuclei_in_volume`).

    Parameters
    ----------
    probabilities : array-like
        ``(..., H, W)`` probabilities; numpy, zarr or dask (read one frame at a time).
    config : InstanceConfig, optional
        Watershed settings.
    maps : dict of str to array-like, optional
        An object-aware network's maps, of the probabilities' shape, by name (see
        :func:`instances_from_maps`); needed for ``"centre"`` or ``"boundary"`` seeds.
    stack_axis : {"frames", "z"}
        What the leading axis of a 3-D stack is.
    out : array-like, optional
        Integer array of the same shape to write into (e.g. zarr); a new int32 numpy array
        when omitted.
    should_stop : callable, optional
        Called after each frame; when it returns True, ``InferenceCancelled`` is raised.

    Yields
    ------
    FrameDone
        After each frame.

    Returns
    -------
    array-like
        The labels.
    """
    from napari_unet_nuclei.prediction.inference import InferenceCancelled

    shape = tuple(probabilities.shape)
    if len(shape) < 2:
        raise ValueError(f"Expected a 2-D map or a stack (..., H, W), got shape {shape}.")
    if stack_axis not in ("frames", "z"):
        raise ValueError(f"stack_axis must be 'frames' or 'z', got {stack_axis!r}.")
    if out is None:
        out = np.zeros(shape, np.int32)
    elif tuple(out.shape) != shape:
        raise ValueError(
            f"Output array shape {tuple(out.shape)} differs from the probabilities' {shape}."
        )
    limit = np.iinfo(out.dtype).max if np.issubdtype(out.dtype, np.integer) else 2**31 - 1
    indices = frame_indices(shape)
    offset = 0
    frame_maps = maps or {}
    for number, index in enumerate(indices):
        labels = instances_from_maps(
            np.asarray(probabilities[index]),
            {name: np.asarray(values[index]) for name, values in frame_maps.items()},
            config,
        )
        count = int(labels.max())
        if offset + count > limit:
            raise ValueError(
                f"More than {limit} nuclei do not fit the {out.dtype} output; use a wider "
                "integer dtype (uint32)."
            )
        if offset:
            labels[labels > 0] += offset
        out[index] = labels
        offset += count
        yield FrameDone(number, len(indices))
        if should_stop is not None and should_stop():
            raise InferenceCancelled("Instance labelling was cancelled.")
    if stack_axis == "z" and len(shape) == 3:
        from napari_unet_nuclei.prediction.volumes import nuclei_in_volume

        threshold = (config or InstanceConfig()).threshold
        out[...] = nuclei_in_volume(
            np.asarray(probabilities), threshold, slice_labels=np.asarray(out)
        )
    return out


def label_stack(probabilities: Any, config: InstanceConfig | None = None) -> np.ndarray:
    """Instance labels of a 2-D map or of every frame of a stack (ids unique in the stack).

    Parameters
    ----------
    probabilities : array-like
        ``(H, W)`` or ``(..., H, W)`` probabilities.
    config : InstanceConfig, optional
        Watershed settings.

    Returns
    -------
    numpy.ndarray
        int32 labels of the same shape.
    """
    return run_to_end(iter_instances(probabilities, config), None)
