"""Model files: one ``.pt`` file with weights and plain-data configuration.

Files are data, never code: they are read with ``torch.load(weights_only=True)``, which
refuses any pickled object other than tensors and plain containers. Saving writes a
temporary file next to the target and renames it, so an interrupted save leaves an older
file intact.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from napari_unet_nuclei.io._file_checks import one_line, zip_problem
from napari_unet_nuclei.io.builtin_models import (
    BUILTIN_MODELS,
    builtin_model_path,
    builtin_name_of,
    is_builtin_name,
)
from napari_unet_nuclei.io.file_writing import atomic_path
from napari_unet_nuclei.io.model_errors import ModelFileError
from napari_unet_nuclei.nn.model import NucleiModel
from napari_unet_nuclei.nn.network import UNetConfig, build_unet
from napari_unet_nuclei.nn.normalization import NormalizationConfig

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ModelFileError",
    "load_model",
    "save_model",
    "weights_checksum",
]

FORMAT_NAME = "napari-unet-nuclei-model"
FORMAT_VERSION = 1


def plain_data(value: Any) -> Any:
    """Convert a summary to types that ``weights_only`` loading accepts."""
    if isinstance(value, dict):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if value is None:
        return None
    for kind in (bool, int, float, str):  # subclasses (numpy scalars, TorchVersion) too
        if isinstance(value, kind):
            return kind(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def weights_checksum(state: dict[str, Any]) -> str:
    """SHA-256 of a state dict's names, shapes, dtypes and bytes (to detect damaged files)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor):
            raise ModelFileError(f"the weight {key!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_to_dict(model: NucleiModel) -> dict[str, Any]:
    """Return the model as the dictionary stored in a file."""
    state = {k: v.detach().cpu().clone() for k, v in model.network.state_dict().items()}
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": model.name,
        "architecture": model.config.to_dict(),
        "normalization": model.normalization.to_dict(),
        "threshold": float(model.threshold),
        "summary": plain_data(model.summary),
        "state_dict": state,
        "weights_sha256": weights_checksum(state),
    }


def model_from_dict(data: Any, source: str = "the data") -> NucleiModel:
    """Rebuild a model from :func:`model_to_dict` output, checking format and version."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{source} is a PyTorch file but not a napari-unet-nuclei model "
            "(no 'format' entry); train or export a model with this plugin."
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{source} uses model format version {version}, newer than this plugin reads "
            f"(up to {FORMAT_VERSION}); update napari-unet-nuclei."
        )
    expected = data.get("weights_sha256")
    if expected is not None:
        state = data.get("state_dict")
        try:
            actual = weights_checksum(state) if isinstance(state, dict) else None
        except ModelFileError as error:
            raise ModelFileError(f"{source} is damaged: {error}") from error
        if actual != expected:
            raise ModelFileError(
                f"{source} is damaged: its weights do not match the checksum stored when it was "
                "saved (the file was corrupted or modified); use another copy of the model."
            )
    try:
        config = UNetConfig.from_dict(data["architecture"])
        _check_weight_shapes(config, data["state_dict"], source)
        network = build_unet(config)
        network.load_state_dict(data["state_dict"])
        normalization = NormalizationConfig.from_dict(data["normalization"])
        network.eval()
        return NucleiModel(
            network=network,
            normalization=normalization,
            threshold=float(data.get("threshold", 0.5)),
            summary=dict(data.get("summary", {})),
            name=str(data.get("name", "unet")),
        )
    except ModelFileError:
        raise
    except Exception as error:  # any malformed entry (types, values, shapes)
        raise ModelFileError(
            f"{source} is damaged or incomplete: {type(error).__name__}: {one_line(error)}."
        ) from error


def _check_weight_shapes(config: UNetConfig, state: Any, source: str) -> None:
    """Compare the stored weights with the declared architecture before building it.

    The network is first built on torch's ``meta`` device (no memory), so a file that
    declares an enormous architecture is refused instead of allocated.
    """
    with torch.device("meta"):
        skeleton = build_unet(config)
    expected = {key: tuple(value.shape) for key, value in skeleton.state_dict().items()}
    if not isinstance(state, dict) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise ModelFileError(f"{source} is damaged or incomplete: its weights are not tensors.")
    stored = {str(key): tuple(value.shape) for key, value in state.items()}
    if stored != expected:
        wrong = sorted(set(stored) ^ set(expected)) or sorted(
            key for key in expected if stored[key] != expected[key]
        )
        raise ModelFileError(
            f"{source} is damaged or incomplete: its weights do not fit the architecture it "
            f"declares ({len(wrong)} tensor(s) missing, extra or of another shape, e.g. "
            f"{wrong[0]!r})."
        )


def save_model(model: NucleiModel, path: str | os.PathLike) -> Path:
    """Save a model to one ``.pt`` file, atomically.

    Parameters
    ----------
    model : NucleiModel
        The model to save.
    path : str or path-like
        Target file; its folder is created when missing.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        torch.save(model_to_dict(model), stream)
        stream.flush()
        os.fsync(stream.fileno())
    return path


_DATA_MODULES = ("torch", "collections", "numpy", "_codecs", "builtins.set")


def _names_code(path: Path) -> bool:
    """Whether the file's pickle names a Python global other than torch's data types.

    Read with :mod:`pickletools` (nothing is executed): tells a crafted file from a
    damaged one for the error message. Garbage that cannot be parsed names nothing.
    """
    import pickletools

    try:
        raw = path.read_bytes()
        if raw[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                small = name and archive.getinfo(name).file_size <= len(raw) * 64
                raw = archive.read(name) if small else b""
    except Exception:  # zipfile and zlib raise many types for damaged archives
        return False
    strings: list[str] = []
    try:
        for opcode, arg, _position in pickletools.genops(raw):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
            elif opcode.name in ("GLOBAL", "INST"):
                module = str(arg).replace(" ", ".")
                if not module.startswith(_DATA_MODULES):
                    return True
            elif opcode.name == "STACK_GLOBAL":
                module = ".".join(strings[-2:])
                if not module.startswith(_DATA_MODULES):
                    return True
    except Exception:  # garbage ends the scan; what was seen counts
        return False
    return False


def load_model(path: str | os.PathLike, map_location: str = "cpu") -> NucleiModel:
    """Load a model saved by :func:`save_model`, without running any code from the file.

    Parameters
    ----------
    path : str or path-like
        A ``.pt`` model file, or the name of a built-in model (``"fluo-nuclei"``, see
        :mod:`napari_unet_nuclei.io.builtin_models`), whose file is checked by SHA-256.
    map_location : str
        Device the weights are loaded to.

    Returns
    -------
    NucleiModel

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ModelFileError
        The file is not a model of this plugin, is damaged, holds objects other than
        tensors and plain data, declares more than may be read into memory or an
        architecture its weights do not fit, or comes from a newer format version. Any
        exception of the loader becomes this error, with one sentence naming the file.
    """
    if is_builtin_name(path) and not Path(path).is_file():
        path = builtin_model_path(str(path))
    else:
        shipped = builtin_name_of(path)
        if shipped is not None:
            path = builtin_model_path(shipped)  # the shipped file, checked
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Model file not found: {path} (built-in models: {', '.join(BUILTIN_MODELS)})."
        )
    problem = _declared_size_problem(path)
    if problem:
        raise ModelFileError(f"{path} was refused: it {problem}; it is not a model file.")
    try:
        with warnings.catch_warnings():
            # torch's note on pickle protocols, irrelevant to the user (the file is refused)
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" not in str(error).lower() and not _names_code(path):
            raise ModelFileError(
                f"{path} is not a readable model file (truncated, corrupted or another kind of "
                f"file): {_what_it_is(path) or 'it holds no valid model data'}."
            ) from error
        raise ModelFileError(
            f"{path} was refused: it contains objects other than tensors and plain data, "
            "so it could run code when loaded. Only load model files saved by this plugin."
        ) from error
    except Exception as error:  # torch's loader raises any type for a damaged file
        # (e.g. IndexError for a text file whose first letter is a pickle opcode)
        detail = _what_it_is(path) or f"{type(error).__name__}: {one_line(error)}"
        raise ModelFileError(
            f"{path} is not a readable model file (truncated, corrupted or another kind of "
            f"file): {detail}."
        ) from error
    model = model_from_dict(data, source=str(path))
    builtin = BUILTIN_MODELS.get(builtin_name_of(path) or "")
    if builtin is not None and builtin.nucleus_diameter is not None:
        model.summary.setdefault("nucleus_diameter", builtin.nucleus_diameter)
    return model


def _what_it_is(path: Path) -> str | None:
    """What the file is when its first bytes say so (``"it is empty"``, ``"it is a text
    file"``, ``"it is a truncated or damaged zip archive"``), else None."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(512)
    except OSError:
        return None
    if not head:
        return "it is empty"
    if head.startswith(b"PK\x03\x04"):  # model files are zip archives
        try:
            zipfile.ZipFile(path).close()
        except Exception:  # BadZipFile, OSError...
            return "it is a truncated or damaged zip archive"
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # may be cut inside a character: judge the rest
        text = head[:-4].decode("utf-8", errors="replace")
    if "\ufffd" not in text and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "it is a text file"
    return None


def _declared_size_problem(path: Path) -> str | None:
    """Refuse a zip archive whose members declare more bytes than may be read into memory
    (a zip bomb, or a damaged directory claiming huge sizes), before torch reads it."""
    try:
        with open(path, "rb") as stream:
            if stream.read(4) != b"PK\x03\x04":
                return None
    except OSError:  # torch's loader says what is wrong
        return None
    return zip_problem(path)
