"""Image to nuclei: the network's outputs, tiled, then one id per nucleus.

:func:`predict_instances` is the one public call for objects. An object-aware model
(``model.object_maps`` not empty) tells touching nuclei apart with its own maps
(:func:`~napari_unet_nuclei.prediction.instances.instances_from_maps`); a probability-only model
(the lab's U-Net, older ``.pt`` files) is split with the distance-transform watershed as
before (:func:`~napari_unet_nuclei.prediction.instances.instances_from_probabilities`).

A stack is labelled frame by frame. ``stack_axis="frames"`` (time points or unrelated
images) gives ids unique in the whole stack; ``stack_axis="z"`` finds 3-D nuclei in the
stacked probabilities (:func:`~napari_unet_nuclei.prediction.volumes.nuclei_in_volume`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from napari_unet_nuclei.events import FrameDone, TileDone, run_to_end
from napari_unet_nuclei.nn.model import NucleiModel
from napari_unet_nuclei.prediction.inference import check_image
from napari_unet_nuclei.prediction.instances import InstanceConfig
from napari_unet_nuclei.workflows.segment import STACK_AXES, SegmentOutputs, iter_segment

__all__ = ["STACK_AXES", "default_instance_config", "iter_predict_instances", "predict_instances"]


def default_instance_config(model: NucleiModel, threshold: float | None = None) -> InstanceConfig:
    """The instance settings a model segments with by default.

    Parameters
    ----------
    model : NucleiModel
        The model; its default threshold and object maps choose the settings.
    threshold : float, optional
        Use this probability threshold instead of the model's.

    Returns
    -------
    InstanceConfig
    """
    config = InstanceConfig(seeds=model.instance_seeds)
    stored = model.summary.get("instance_config")  # chosen when the model was made
    if isinstance(stored, dict):
        fields = InstanceConfig.__dataclass_fields__
        with contextlib.suppress(TypeError, ValueError):  # a bad entry: the defaults
            config = InstanceConfig(**{k: v for k, v in stored.items() if k in fields})
    if config.uses_object_map and config.seeds not in model.object_maps:
        config = replace(config, seeds=model.instance_seeds)
    return replace(config, threshold=float(model.threshold if threshold is None else threshold))


def iter_predict_instances(
    model: NucleiModel,
    image: Any,
    *,
    threshold: float | None = None,
    instance_config: InstanceConfig | None = None,
    stack_axis: str = "frames",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    probabilities_out: Any = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> Generator[TileDone | FrameDone, None, np.ndarray]:
    """Segment nuclei as objects, yielding progress events; return the labels.

    Parameters are those of :func:`predict_instances`.

    Yields
    ------
    TileDone or FrameDone
        Progress after each batch of tiles and after each frame.
    """
    config = instance_config or default_instance_config(model)
    labels = np.zeros(check_image(image), np.int32)
    outputs = SegmentOutputs(probabilities=probabilities_out, labels=labels)
    yield from iter_segment(
        model,
        image,
        outputs,
        threshold=threshold,
        instances=config,
        stack_axis=stack_axis,
        spacing=spacing,
        read="frames",
        should_stop=should_stop,
        **options,
    )
    return labels


def predict_instances(
    model: NucleiModel,
    image: Any,
    *,
    threshold: float | None = None,
    instance_config: InstanceConfig | None = None,
    stack_axis: str = "frames",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    probabilities_out: Any = None,
    progress: Callable[[TileDone | FrameDone], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> np.ndarray:
    """Nuclei as objects: int32 instance labels of the image's shape.

    Parameters
    ----------
    model : NucleiModel
        A trained model, e.g. ``load_model("fluo-nuclei")``, the built-in one.
    image : array-like
        2-D image ``(H, W)`` or stack ``(..., H, W)`` of any real dtype and size; tiled
        like :func:`~napari_unet_nuclei.predict`.
    threshold : float, optional
        Nucleus probability threshold; the model's default when omitted.
    instance_config : InstanceConfig, optional
        Seeds, ``min_size``...; by default the model's (its object maps when it has them,
        see :func:`default_instance_config`).
    stack_axis : {"frames", "z"}
        For a stack: ``"frames"`` labels every frame on its own (ids unique in the
        stack); ``"z"`` finds 3-D nuclei in a ``(Z, H, W)`` stack from its stacked
        probabilities (:func:`~napari_unet_nuclei.prediction.volumes.nuclei_in_volume`).
    spacing : sequence of float
        ``"z"`` only: the voxel size along z, y, x, for 3-D distances.
    probabilities_out : array-like, optional
        An array of the image's shape that receives the nucleus probabilities too.
    progress : callable, optional
        Called with each progress event.
    should_stop : callable, optional
        Polled between tiles and frames; when it returns True,
        :class:`~napari_unet_nuclei.prediction.inference.InferenceCancelled` is raised.
    **options
        ``tile_size``, ``overlap``, ``batch_size``, ``device``, ``precision``,
        ``backend``, ``test_time_augmentation`` (see :func:`~napari_unet_nuclei.predict`).

    Returns
    -------
    numpy.ndarray
        int32 labels: 0 = background, one id per nucleus.
    """
    return run_to_end(
        iter_predict_instances(
            model,
            image,
            threshold=threshold,
            instance_config=instance_config,
            stack_axis=stack_axis,
            spacing=spacing,
            probabilities_out=probabilities_out,
            should_stop=should_stop,
            **options,
        ),
        progress,
    )
