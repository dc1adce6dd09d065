"""Export a U-Net to an ONNX graph, in this process or in a helper process.

torch's exporter imports the ``onnx`` package, and ``onnx`` imports ``ml_dtypes``, whose
extension module holds Python's lock for about a second while it loads. In a thread that
shares the process with other work (napari's window, a dask worker's heartbeat) that second
is a freeze of everything else, whichever thread imports it. :func:`export_graph`
therefore exports in a helper process (``python -m napari_unet_nuclei.nn.onnx_export``)
when it is called off the main thread, and in this process on the main thread (a command
line run, a script), where nothing else waits. The helper gets the weights as a tensor
file read back with ``torch.load(weights_only=True)`` (no pickled objects) and writes the
graph to a file; the graph is the same either way.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from napari_unet_nuclei.nn.portable_unet import PortableUNet

__all__ = [
    "OPSET",
    "export_graph",
    "export_in_helper_process",
    "export_in_this_process",
    "helper_environment",
]

#: The ONNX opset of exported graphs.
OPSET = 17
#: Longest wait for the helper process (seconds) before exporting in this process.
HELPER_TIMEOUT_S = 300

_log = logging.getLogger(__name__)


def _architecture(network: torch.nn.Module) -> tuple[int, int, int, int]:
    config = network.config
    return config.features, config.depth, config.in_channels, config.out_channels


def _export_portable(architecture: Sequence[int], state: dict[str, torch.Tensor]) -> bytes:
    portable = PortableUNet(*architecture)
    portable.load_state_dict(state)
    portable.eval()
    size = portable.multiple * 4
    buffer = io.BytesIO()
    with torch.no_grad(), _quiet():
        torch.onnx.export(
            portable,
            (torch.zeros(1, 1, size, size),),
            buffer,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch", 2: "y", 3: "x"}},
            dynamo=False,
            opset_version=OPSET,
        )
    return buffer.getvalue()


def _cpu_state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu() for name, value in network.state_dict().items()}


def export_in_this_process(network: torch.nn.Module) -> bytes:
    """The ONNX graph of ``network`` (a :class:`~napari_unet_nuclei.nn.network.UNet`).

    Parameters
    ----------
    network : torch.nn.Module
        A U-Net with a ``config`` (features, depth, channels).

    Returns
    -------
    bytes
        A serialised ONNX model with input ``image`` ``(batch, 1, y, x)`` (any batch and
        any multiple of the network's size multiple) and output ``logits``.
    """
    return _export_portable(_architecture(network), _cpu_state(network))


def helper_environment() -> dict[str, str]:
    """This process's environment, with this package first on ``PYTHONPATH``: a helper
    ``python -m napari_unet_nuclei...`` imports the same package as its parent, installed
    or not."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, path]))}


def export_in_helper_process(network: torch.nn.Module) -> bytes:
    """:func:`export_in_this_process`, run in a helper Python process.

    Raises
    ------
    RuntimeError
        When the helper fails or does not finish within ``HELPER_TIMEOUT_S``; the message
        holds the last line the helper wrote.
    """
    env = helper_environment()
    with tempfile.TemporaryDirectory(prefix="napari-unet-nuclei-export-") as folder:
        weights, graph = Path(folder) / "weights.pt", Path(folder) / "graph.onnx"
        torch.save(_cpu_state(network), weights)
        command = [sys.executable, "-m", __name__, str(weights), str(graph)]
        command += [str(value) for value in _architecture(network)]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, env=env, timeout=HELPER_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise RuntimeError(f"The ONNX export helper did not run: {error}") from error
        if done.returncode != 0 or not graph.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1].strip()
            raise RuntimeError(f"The ONNX export helper failed: {last}")
        return graph.read_bytes()


def export_graph(network: torch.nn.Module) -> bytes:
    """The ONNX graph of ``network``: exported in a helper process off the main thread,
    in this process on it (see the module's docstring).

    If the helper cannot run (no Python executable, a frozen application) the graph is
    exported in this process, as on the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        try:
            return export_in_helper_process(network)
        except RuntimeError as error:
            _log.debug("%s; exporting in this process", error)
    return export_in_this_process(network)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main(argv: Sequence[str] | None = None) -> None:
    """The helper: ``WEIGHTS GRAPH FEATURES DEPTH IN_CHANNELS OUT_CHANNELS``."""
    parser = argparse.ArgumentParser(description="Export a U-Net's weights to ONNX.")
    parser.add_argument("weights", type=Path)
    parser.add_argument("graph", type=Path)
    parser.add_argument("architecture", type=int, nargs=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a small export beside the caller's work
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    args.graph.write_bytes(_export_portable(args.architecture, state))


if __name__ == "__main__":
    main()
