"""How the network runs fast on this machine: precision, memory layout, runtimes.

Training and inference ask this module for the numeric precision to compute in and for a
*runner* that maps a batch of normalised tiles to logits. Support is detected at run
time, with a fallback to plain float32:

* CUDA: float16 autocast (mixed precision).
* CPU with native bfloat16 (AVX512-BF16 or AMX; ``torch.ops.mkldnn`` tells): bfloat16
  autocast with channels-last convolutions. On CPUs without it bfloat16 is emulated and
  several times *slower* than float32, so it is never chosen there.
* Other CPUs: channels-last float32 convolutions, or ONNX Runtime when installed.
* Apple MPS: float32.

A network's ONNX graph is exported once per set of weights and kept in a cache folder
(:func:`onnx_cache_folder`): a model already exported on this machine, the built-in one
included, starts without the exporter. The export itself is
:func:`~napari_unet_nuclei.nn.onnx_export.export_graph` (in a helper process off the main
thread: the exporter's ``onnx`` import holds Python's lock for about a second).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet_nuclei.nn.onnx_export import OPSET, export_graph

__all__ = [
    "BACKENDS",
    "CACHE_ENV",
    "PRECISIONS",
    "autocast",
    "cpu_supports_bf16",
    "make_runner",
    "onnx_cache_folder",
    "onnxruntime_available",
    "resolve_backend",
    "resolve_precision",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "onnxruntime")

#: A runner maps normalised float32 tiles ``(B, H, W)`` to float32 logits ``(B, H, W)``.
Runner = Callable[[np.ndarray], np.ndarray]


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's own check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def onnxruntime_available() -> bool:
    """Whether ONNX Runtime and the ONNX exporter's dependencies can be imported.

    ``onnx`` (which torch's exporter needs) is looked up without importing it: its import
    is slow, and a graph found in the cache does not need it.
    """
    try:
        if importlib.util.find_spec("onnx") is None:
            return False
        import onnxruntime  # noqa: F401
    except (ImportError, ValueError):
        return False
    return True


def resolve_precision(precision: str, device: torch.device, training: bool = False) -> str:
    """Return the precision to compute in: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Parameters
    ----------
    precision : str
        ``"auto"`` or one of ``"fp32"``, ``"bf16"``, ``"fp16"``. ``"auto"`` is float16
        mixed precision on CUDA; for inference, bfloat16 on a CPU that computes it natively
        (masks agree with float32 masks to an IoU above 0.995 on the ``paper_42_37`` test
        images, see ``benchmarks/speed.py``); float32 elsewhere. CPU *training* is float32
        under ``"auto"`` on every CPU: bfloat16 training changed which touching nuclei a
        fine-tune learns to separate, so training gives the same model with and without
        native bfloat16 (``"bf16"`` still trains in bfloat16 when asked for).
    device : torch.device
        Where the computation runs.
    training : bool
        Whether the precision is for training.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        For an unknown precision or one the device cannot use.
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}."
        )
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        if device.type == "cpu" and cpu_supports_bf16() and not training:
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            "float16 mixed precision needs a CUDA GPU; use precision='bf16' or 'fp32' here."
        )
    if precision == "bf16" and device.type == "mps":
        raise ValueError("bfloat16 is not supported on Apple MPS; use precision='fp32'.")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast context for a resolved precision (a no-op for ``"fp32"``)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ValueError(
            f"Expected a resolved precision 'fp32', 'bf16' or 'fp16', got {precision!r}."
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def resolve_backend(backend: str, device: torch.device, precision: str) -> str:
    """Return the inference runtime: ``"torch"`` or ``"onnxruntime"``.

    ``"auto"`` takes ONNX Runtime for float32 on the CPU when it is installed: on CPUs
    without native bfloat16 (AVX2) it ran 1.5x faster than PyTorch's channels-last
    convolutions. With bfloat16 PyTorch is used.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        if device.type == "cpu" and precision == "fp32" and onnxruntime_available():
            return "onnxruntime"
        return "torch"
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ValueError("The ONNX Runtime backend runs on the CPU; use backend='torch'.")
        if not onnxruntime_available():
            raise ValueError(
                "ONNX Runtime is not installed; `pip install onnxruntime onnx` or use "
                "backend='torch'."
            )
    return backend


def make_runner(
    network: torch.nn.Module,
    device: torch.device,
    precision: str = "fp32",
    backend: str = "torch",
    all_channels: bool = False,
) -> Runner:
    """Return a function computing logits of normalised tiles with ``network``.

    Parameters
    ----------
    network : torch.nn.Module
        The U-Net, in eval mode.
    device : torch.device
        Where to compute.
    precision : str
        A resolved precision (see :func:`resolve_precision`).
    backend : str
        ``"torch"`` or ``"onnxruntime"`` (see :func:`resolve_backend`).
    all_channels : bool
        Return every output channel (nucleus logit and object maps) as ``(B, C, H, W)``
        instead of the nucleus logit alone.

    Returns
    -------
    callable
        ``runner(tiles)`` with ``tiles`` a float32 array ``(B, H, W)``, returning float32
        logits ``(B, H, W)`` (``(B, C, H, W)`` with ``all_channels``). Each call runs in
        ``torch.inference_mode()``.
    """
    if backend == "onnxruntime":
        return _onnx_runner(network, all_channels)
    channels_last = device.type == "cpu"
    if channels_last:
        # oneDNN convolutions are faster in channels-last layout on CPU.
        network = network.to(memory_format=torch.channels_last)
    non_blocking = device.type == "cuda"

    def run(tiles: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(tiles, np.float32))[:, None]
        if non_blocking:
            tensor = tensor.pin_memory()
        tensor = tensor.to(device, non_blocking=non_blocking)
        if channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device, precision):
            logits = network(tensor)
            if not all_channels:
                logits = logits[:, 0]
            return logits.float().cpu().numpy()

    return run


_ONNX_LOCK = threading.Lock()
_ONNX_SESSIONS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[int, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


def _weights_version(network: torch.nn.Module) -> tuple[int, ...]:
    """Changes whenever a parameter or buffer is modified in place (training, loading)."""
    return tuple(t._version for t in network.state_dict(keep_vars=True).values())


def _onnx_runner(network: torch.nn.Module, all_channels: bool = False) -> Runner:
    """ONNX Runtime session of ``network`` (exported once per set of weights, cached)."""
    import onnxruntime as ort

    version = _weights_version(network)
    with _ONNX_LOCK:
        cached = _ONNX_SESSIONS.get(network)
        if cached is not None and cached[0] == version:
            session = cached[1]
        else:
            session = _onnx_session(network, ort)
            _ONNX_SESSIONS[network] = (version, session)

    def run(tiles: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(tiles, np.float32)[:, None]
        logits = session.run(None, {"image": batch})[0]
        return logits if all_channels else logits[:, 0]

    return run


#: Environment variable naming the cache folder (ONNX graphs go to its ``onnx/``).
CACHE_ENV = "NAPARI_UNET_NUCLEI_CACHE"
#: Exported graphs kept in the cache; the least recently used beyond this are deleted.
ONNX_CACHE_SIZE = 32


def onnx_cache_folder() -> Path | None:
    """Where exported ONNX graphs are kept: ``$NAPARI_UNET_NUCLEI_CACHE/onnx``, else the
    user cache folder of napari-unet-nuclei; None when neither can be found."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "onnx"
    try:
        import pooch

        return Path(pooch.os_cache("napari-unet-nuclei")) / "onnx"
    except Exception:  # no home folder: export every time
        return None


def _graph_key(network: torch.nn.Module) -> str:
    """SHA-256 of the architecture, the weights, torch's version and the opset."""
    config = network.config
    digest = hashlib.sha256(
        json.dumps(
            [
                config.features,
                config.depth,
                config.in_channels,
                config.out_channels,
                torch.__version__,
                OPSET,
            ]
        ).encode()
    )
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _onnx_graph(network: torch.nn.Module) -> bytes:
    """The network's ONNX graph: from the cache, or exported and then cached."""
    folder = onnx_cache_folder()
    path = folder / f"{_graph_key(network)}.onnx" if folder is not None else None
    if path is not None and path.is_file():
        try:
            graph = path.read_bytes()
            os.utime(path)  # recently used
            return graph
        except OSError:
            pass
    graph = export_graph(network)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            partial.write_bytes(graph)
            os.replace(partial, path)
            kept = sorted(path.parent.glob("*.onnx"), key=lambda p: p.stat().st_mtime)
            for old in kept[:-ONNX_CACHE_SIZE]:
                old.unlink(missing_ok=True)
        except OSError:  # a read-only or full disk: the graph is simply not kept
            pass
    return graph


def _onnx_session(network: torch.nn.Module, ort: Any) -> Any:
    graph = _onnx_graph(network)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
