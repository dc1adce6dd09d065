"""The network alone for other tools: TorchScript and ONNX files (normalised image in,
logits out), with the padding recorded in the graph so that any size >= ``2**depth`` runs."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_unet_nuclei.io.file_writing import atomic_path

if TYPE_CHECKING:
    from napari_unet_nuclei.nn.model import NucleiModel
    from napari_unet_nuclei.nn.portable_unet import PortableUNet


__all__ = ["ExportError", "export_onnx", "export_torchscript", "portable_network"]


class ExportError(RuntimeError):
    """A model could not be exported (missing optional package, invalid package...)."""


# --------------------------------------------------------------------------------------
# Networks for export
# --------------------------------------------------------------------------------------


def portable_network(model: NucleiModel) -> PortableUNet:
    """Return a CPU :class:`~napari_unet_nuclei.nn.portable_unet.PortableUNet` with the weights.

    Parameters
    ----------
    model : NucleiModel
        A trained model; it is not modified.

    Returns
    -------
    PortableUNet
        In eval mode (BatchNorm uses the running statistics), on the CPU, with one output
        channel: the nucleus logit (an object-aware network's extra maps are left out).
    """
    from napari_unet_nuclei.nn.portable_unet import PortableUNet

    cfg = model.config
    network = PortableUNet(cfg.features, cfg.depth, cfg.in_channels)
    state = {k: v.detach().cpu() for k, v in model.network.state_dict().items()}
    # Exports carry the nucleus logit only (what bioimage.io consumers and the lab use);
    # the object maps of an object-aware network stay with the plugin's own .pt file.
    state["head.weight"], state["head.bias"] = state["head.weight"][:1], state["head.bias"][:1]
    network.load_state_dict(state, strict=True)
    return network.eval()


def _example_input(model: NucleiModel) -> Any:
    import torch

    side = max(64, 2 * model.config.size_multiple)
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, model.config.in_channels, side, side, generator=generator)


def _atomic_target(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary)`` next to ``path``, then rename it to ``path``."""
    with atomic_path(path) as temporary:
        write(temporary)
    return Path(path)


def _trace(model: NucleiModel) -> Any:
    """Trace the portable network and check it on a size the trace did not see."""
    import torch

    network = portable_network(model)
    example = _example_input(model)
    with warnings.catch_warnings():
        # torch.jit.trace is in maintenance mode and says so in a DeprecationWarning.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(network, example, check_trace=False)
            # The padding must have been recorded, not frozen: try another, odd size.
            other = torch.rand(2, example.shape[1], example.shape[2] + 3, example.shape[3] - 5)
            difference = float((traced(other) - network(other)).abs().max())
    if not difference <= 1e-4:
        raise ExportError(
            f"The traced network differs from PyTorch by {difference:g} on a new input size."
        )
    return traced


def export_torchscript(model: NucleiModel, path: str | os.PathLike) -> Path:
    """Write the network as a TorchScript file (``torch.jit.load`` reads it).

    Parameters
    ----------
    model : NucleiModel
        A trained model.
    path : str or path-like
        Target file, written atomically.

    Returns
    -------
    pathlib.Path
        The written path.

    Notes
    -----
    Input: the normalised image (see ``model.normalization``), float32 ``(B, C, H, W)``
    with ``H, W >= 2**depth``; output: logits ``(B, 1, H, W)``.
    """
    traced = _trace(model)
    return _atomic_target(path, lambda target: traced.save(str(target)))


def export_onnx(model: NucleiModel, path: str | os.PathLike, opset: int = 17) -> Path:
    """Write the network as an ONNX file with dynamic batch, height and width.

    Parameters
    ----------
    model : NucleiModel
        A trained model.
    path : str or path-like
        Target file (``.onnx``), written atomically.
    opset : int
        ONNX operator set (17 by default; reflect padding needs at least 11).

    Returns
    -------
    pathlib.Path
        The written path.

    Notes
    -----
    Input ``input``: the normalised image, float32 ``(batch, C, height, width)`` with
    ``height, width >= 2**depth``; output ``logits``: ``(batch, 1, height, width)``. The
    normalisation percentiles and the threshold are stored as ONNX metadata
    (``napari_unet_nuclei.*`` keys) when the ``onnx`` package is installed.

    This uses torch's TorchScript-based exporter (``dynamo=False``), which torch 2.13
    deprecates but which exports this network in about a second at any opset. The
    ``torch.export``-based exporter also gives a correct graph (checked with torch 2.13 and
    onnxscript 0.7) but needs onnxscript, takes 15-20 s on two cores and cannot go below
    opset 18 for ``Pad``.
    """
    import torch

    network = portable_network(model)
    example = _example_input(model)
    axes = {0: "batch", 2: "height", 3: "width"}

    def write(target: Path) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.onnx.export(
                network,
                (example,),
                str(target),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": axes, "logits": axes},
                do_constant_folding=True,
            )
        _add_onnx_metadata(target, model)

    return _atomic_target(path, write)


def _add_onnx_metadata(path: Path, model: NucleiModel) -> None:
    try:
        import onnx
    except ImportError:  # metadata is a convenience; the graph is complete without it
        return
    from napari_unet_nuclei.io.model_io import FORMAT_NAME

    proto = onnx.load(str(path))
    metadata = {
        "napari_unet_nuclei.format": FORMAT_NAME,
        "napari_unet_nuclei.architecture": json.dumps(
            {**model.config.to_dict(), "object_maps": []}  # the nucleus logit only
        ),
        "napari_unet_nuclei.nn.normalization": json.dumps(model.normalization.to_dict()),
        "napari_unet_nuclei.threshold": repr(float(model.threshold)),
        "napari_unet_nuclei.output": "logits; probability = sigmoid(logits)",
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "napari-unet-nuclei"
    onnx.save(proto, str(path))
