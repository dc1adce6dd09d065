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

:func:`export_in_helper_process` runs an export in a separate Python process (the command
line's ``export``): ``onnx`` imports ``ml_dtypes``, whose extension holds Python's lock for
about a second while it loads, a freeze of every other thread (napari's window) when the
export runs in a worker thread; the helper can also be stopped at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_unet_nuclei.nn.model import NucleiModel

from napari_unet_nuclei.workflows.bioimageio_export import export_bioimageio
from napari_unet_nuclei.workflows.network_export import export_onnx, export_torchscript

__all__ = [
    "EXPORT_FORMATS",
    "IMPORTS_ONNX",
    "ExportCancelled",
    "export_in_helper_process",
    "export_model",
]

#: Export formats: name -> (usual file suffix, one-line description for pickers and --help).
EXPORT_FORMATS: dict[str, tuple[str, str]] = {
    "bioimageio": (".zip", "bioimage.io model package (zip)"),
    "onnx": (".onnx", "ONNX network (normalised image in, logits out)"),
    "torchscript": (".pt", "TorchScript network (normalised image in, logits out)"),
}
#: The formats whose export imports ``onnx`` (see :func:`export_in_helper_process`).
IMPORTS_ONNX = frozenset({"bioimageio", "onnx"})
#: How often a helper export checks its stop event (seconds).
_POLL_S = 0.1


class ExportCancelled(Exception):
    """The export was stopped before it completed; nothing was written."""


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
    _check_format(format)
    exporters: dict[str, Callable[..., Path]] = {
        "bioimageio": export_bioimageio,
        "onnx": export_onnx,
        "torchscript": export_torchscript,
    }
    return exporters[format](model, path, **options)


def _check_format(format: str) -> None:
    """Refuse a format that is not one of :data:`EXPORT_FORMATS`, naming those that are."""
    if format not in EXPORT_FORMATS:
        raise ValueError(
            f"Unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}."
        )


def export_in_helper_process(
    model: NucleiModel,
    path: str | os.PathLike,
    format: str,
    *,
    stop: threading.Event | None = None,
) -> Path:
    """:func:`export_model` in a helper Python process (``napari-unet-nuclei export``).

    The model goes to the helper as a model file (:func:`~napari_unet_nuclei.io.model_io.save_model`,
    read back without unpickling), so the export is the one this process would write.

    Parameters
    ----------
    model : NucleiModel
        A trained model.
    path : str or path-like
        Target file, written atomically by the helper.
    format : str
        ``"bioimageio"``, ``"onnx"`` or ``"torchscript"``.
    stop : threading.Event, optional
        Set it to stop the helper at once.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    ExportCancelled
        ``stop`` was set before the helper finished; ``path`` is left as it was.
    RuntimeError
        The helper failed; the message is the sentence it gave.
    """
    from napari_unet_nuclei.io.model_io import save_model
    from napari_unet_nuclei.nn.onnx_export import helper_environment

    _check_format(format)
    with tempfile.TemporaryDirectory(prefix="napari-unet-nuclei-export-") as folder:
        model_file = save_model(model, Path(folder) / "model.pt")
        command = [
            sys.executable,
            "-m",
            "napari_unet_nuclei.cli",
            "export",
            "--model",
            str(model_file),
        ]
        command += ["--format", format, "--out", str(path)]
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=helper_environment(),
        )
        while True:
            try:
                _, errors = process.communicate(timeout=_POLL_S)
                break
            except subprocess.TimeoutExpired:
                if stop is not None and stop.is_set():
                    process.kill()
                    process.communicate()
                    raise ExportCancelled(f"the export to {Path(path).name} was stopped") from None
    if process.returncode != 0:
        last = (errors.strip().splitlines() or ["no output"])[-1].strip()
        raise RuntimeError(last.split(" error: ", 1)[-1])
    return Path(path)
