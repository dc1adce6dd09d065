"""Export trained models for other tools: TorchScript, ONNX and bioimage.io model packages.

- :func:`export_torchscript` and :func:`export_onnx` write the network alone (input: the
  normalised image, output: logits). The graph pads height and width to a multiple of
  ``2**depth`` itself (reflect padding recorded in the graph, as
  :class:`~napari_unet_nuclei.nn.network.UNet` does), so it takes any ``H, W >= 2**depth``,
  with dynamic batch, height and width.
- :func:`export_bioimageio` writes a zip model package in the current bioimage.io format
  (``bioimageio.spec`` model description 0.5): ``pytorch_state_dict`` weights with their
  architecture (:mod:`napari_unet_nuclei.nn.portable_unet`, copied into the package), TorchScript
  and ONNX weights converted from them, the ``scale_range`` pre-processing that equals our
  percentile normalisation, a ``sigmoid`` post-processing, a test input/output pair made by our
  own :func:`~napari_unet_nuclei.prediction.inference.predict`, a cover image and a README. The package is
  checked with bioimageio.spec's own validator before it is kept.
- :func:`import_bioimageio` reads such a package back into a
  :class:`~napari_unet_nuclei.nn.model.NucleiModel`. Only packages written by this plugin are
  accepted, and their weights are read with ``torch.load(weights_only=True)``: nothing in a
  package is ever unpickled or run.

torch, onnx and bioimageio.spec are imported inside the functions that need them
(``pip install "napari-unet-nuclei[export]"``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_unet_nuclei.nn.model import NucleiModel

from napari_unet_nuclei.workflows.bioimageio_export import export_bioimageio
from napari_unet_nuclei.workflows.network_export import export_onnx, export_torchscript

__all__ = ["EXPORT_FORMATS", "export_model"]

#: Export formats: name -> (usual file suffix, one-line description for pickers and --help).
EXPORT_FORMATS: dict[str, tuple[str, str]] = {
    "bioimageio": (".zip", "bioimage.io model package (zip)"),
    "onnx": (".onnx", "ONNX network (normalised image in, logits out)"),
    "torchscript": (".pt", "TorchScript network (normalised image in, logits out)"),
}


def export_model(model: NucleiModel, path: str | os.PathLike, format: str, **options: Any) -> Path:
    """Export ``model`` to ``path`` in one of :data:`EXPORT_FORMATS`.

    Parameters
    ----------
    model : NucleiModel
        A trained model.
    path : str or path-like
        Target file.
    format : str
        ``"bioimageio"``, ``"onnx"`` or ``"torchscript"``.
    **options
        Passed to the format's function.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    exporters: dict[str, Callable[..., Path]] = {
        "bioimageio": export_bioimageio,
        "onnx": export_onnx,
        "torchscript": export_torchscript,
    }
    if format not in exporters:
        raise ValueError(
            f"Unknown export format {format!r}; choose one of {', '.join(exporters)}."
        )
    return exporters[format](model, path, **options)
