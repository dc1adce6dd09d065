"""Read the lab's pickled tensors without letting the file run code.

The lab ships its data as ``pickle.dump((X, Y), f)`` where ``X`` and ``Y`` are
``torch.FloatTensor``. A pickle is a small program: loading one with :func:`pickle.load`
can call any importable function (``os.system``, ``builtins.exec``, ...). This module reads
such files with a restricted unpickler that only knows the handful of functions needed to
rebuild torch tensors and numpy arrays, and refuses the file before anything in it runs if
it names anything else.

Two passes protect the reader:

1. every global the file names is listed from its opcodes (nothing is executed) and the
   file is refused with :class:`UnsafeFileError` if any of them is not allowed;
2. the file is then loaded by :class:`_RestrictedUnpickler`, whose ``find_class`` enforces
   the same allow-list, so a file crafted to hide a global from the first pass still
   cannot reach it.

Files written by ``torch.save`` (zip archives and the legacy format) are handed to
``torch.load(weights_only=True)``, torch's own restricted loader.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import pickletools
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from napari_unet_nuclei.io._file_checks import (
    file_problem,
    format_bytes,
    one_line,
    read_limit_bytes,
    zip_problem,
)

__all__ = ["ALLOWED_GLOBALS", "UnsafeFileError", "load_tensor_pickle", "torch_refusal_reason"]

#: Legacy ``torch.save`` files begin with this pickled integer.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_ZIP_MAGIC = b"PK\x03\x04"


class UnsafeFileError(ValueError):
    """A pickle file names code that could run when it is loaded; it was not loaded."""


def torch_refusal_reason(error: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused a file.

    torch's message spans many lines of advice (including how to load the file unsafely);
    only the reason is kept, e.g. ``"it names the Python global 'getattr'"``.
    """
    import re

    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it names the Python global '{found.group(1)}'"
    found = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    if found:
        return found.group(1).strip().rstrip(".")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _load_storage_from_bytes(data: bytes) -> Any:
    """Replacement for ``torch.storage._load_from_bytes`` that cannot run code.

    A pickled torch storage is a nested ``torch.save`` file; torch itself reads it with
    ``weights_only=False``. Here it is read with ``weights_only=True``.
    """
    import torch

    if not isinstance(data, (bytes, bytearray)):
        raise UnsafeFileError(
            f"A pickled torch storage holds {type(data).__name__}, not bytes: the file is "
            "malformed or crafted and was not loaded."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation notice
        try:
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as exc:
            raise UnsafeFileError(
                "A tensor in the file holds data that torch's safe loader refused "
                f"({torch_refusal_reason(exc)}); the file was not loaded."
            ) from exc
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafeFileError(
            f"A pickled torch storage decoded to {type(storage).__name__}, not a storage: "
            "the file is malformed or crafted and was not loaded."
        )
    return storage


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> Any:
    """Checked version of ``torch._utils._rebuild_tensor_v2`` (no hooks, no metadata)."""
    import torch

    def _ints(value: Any) -> bool:
        return isinstance(value, tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )

    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafeFileError(
            f"A pickled tensor refers to {type(storage).__name__} instead of a storage: the "
            "file is malformed or crafted and was not loaded."
        )
    if not (isinstance(storage_offset, int) and _ints(size) and _ints(stride)):
        raise UnsafeFileError("A pickled tensor has a malformed shape; the file was not loaded.")
    if backward_hooks:  # an empty OrderedDict is what torch writes
        raise UnsafeFileError(
            "A pickled tensor carries backward hooks (code); the file was not loaded."
        )
    if metadata:
        raise UnsafeFileError("A pickled tensor carries extra metadata; the file was not loaded.")
    return torch._utils._rebuild_tensor_v2(
        storage, storage_offset, size, stride, bool(requires_grad), OrderedDict()
    )


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it: latin-1 text back to bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeFileError(
            "The file calls _codecs.encode in an unusual way; it was not loaded."
        )
    return text.encode("latin1")


def _numpy_function(submodule: str, name: str) -> Callable[..., Any]:
    """Resolve ``numpy._core.<submodule>.<name>`` (numpy 2) or ``numpy.core...`` (numpy 1)."""
    try:
        module = importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy 1.x
        module = importlib.import_module(f"numpy.core.{submodule}")
    return getattr(module, name)


def _allowed() -> dict[tuple[str, str], Callable[[], Any]]:
    """Map each allowed ``(module, name)`` to a factory for the object it resolves to."""
    table: dict[tuple[str, str], Callable[[], Any]] = {
        ("torch._utils", "_rebuild_tensor_v2"): lambda: _rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): lambda: _load_storage_from_bytes,
        ("collections", "OrderedDict"): lambda: OrderedDict,
        ("_codecs", "encode"): lambda: _codecs_encode,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }
    for core in ("numpy.core", "numpy._core"):
        for module, name in (
            (f"{core}.multiarray", "_reconstruct"),
            (f"{core}.multiarray", "scalar"),
            (f"{core}.numeric", "_frombuffer"),
        ):
            table[(module, name)] = lambda m=module, n=name: _numpy_function(
                m.rsplit(".", 1)[1], n
            )
    return table


_ALLOWED = _allowed()
#: The ``module.name`` globals a tensor pickle may name.
ALLOWED_GLOBALS: frozenset[str] = frozenset(f"{m}.{n}" for m, n in _ALLOWED)


def _refuse(module: str, name: str, path: str) -> UnsafeFileError:
    return UnsafeFileError(
        f"Refused to load {path!r}: it names the Python global '{module}.{name}', which is "
        "not needed to rebuild tensors or arrays. A pickle that names other code may run "
        "that code when loaded, so the file was NOT loaded and nothing in it was run. "
        "Only load pickles you trust with pickle.load; better, convert the data once to "
        ".npz (numpy.savez) and use that file."
    )


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: io.BufferedIOBase, path: str) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise _refuse(module, name, self._path)
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(
            f"Refused to load {self._path!r}: it uses pickle persistent ids ({pid!r:.60}), "
            "which plain pickled tensors never need. If it was written by torch.save, load "
            "it with torch.load(path, weights_only=True)."
        )


def _scan_globals(data: bytes) -> list[tuple[str, str]]:
    """List the globals a pickle names, from its opcodes alone (nothing is executed).

    ``GLOBAL`` opcodes carry the name; ``STACK_GLOBAL`` takes the two strings most recently
    pushed or fetched from the memo. An adversarial file could confuse this tracking, which
    is why :class:`_RestrictedUnpickler` enforces the same rule while loading.
    """
    found: list[tuple[str, str]] = []
    memo: dict[int, Any] = {}
    strings: list[Any] = []  # values pushed recently: str, or None for anything else
    last: Any = None
    for opcode, arg, _pos in pickletools.genops(data):
        name = opcode.name
        if name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            found.append((module, attr))
            last = None
        elif name == "STACK_GLOBAL":
            # Names that cannot be tracked here are left to find_class.
            if len(strings) >= 2 and isinstance(strings[-1], str) and isinstance(strings[-2], str):
                found.append((strings[-2], strings[-1]))
            strings = [*strings[:-2], None]  # the resolved global replaces the two names
            last = None
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            strings.append(arg)
            last = arg
        elif name == "MEMOIZE":
            memo[len(memo)] = last
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = last
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            last = memo.get(int(arg))
            strings.append(last)
        elif name not in ("FRAME", "PROTO"):
            last = None
            strings.append(None)
        if len(strings) > 64:
            strings = strings[-64:]
    return found


def _nbytes(value: Any) -> int:
    """Bytes of an array or tensor (0 for anything else, or when torch cannot tell)."""
    if not (isinstance(value, np.ndarray) or hasattr(value, "untyped_storage")):
        return 0
    try:
        return int(value.nbytes)
    except Exception:  # e.g. a sparse tensor: converting it fails later, with a sentence
        return 0


def _to_numpy(value: Any, path: str) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16
            value = value.float()
        return value.numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise ValueError(
                f"{path!r} holds a numpy array of Python objects (dtype=object); only numeric "
                "arrays are supported. Save numeric arrays instead."
            )
        return value
    raise ValueError(
        f"{path!r} holds a {type(value).__name__} where a tensor or array was expected. "
        "The file must hold a tensor, an array, or a tuple/list of them, e.g. (X, Y)."
    )


def _load_torch_save(path: str) -> Any:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            return torch.load(path, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as exc:
            reason = str(exc).lower()
            if not any(word in reason for word in ("global", "allowlist", "can only")):
                # torch's safe loader met bytes it cannot parse: damaged, not crafted
                raise ValueError(
                    f"{path!r} could not be read as a torch.save file ({_one_line(exc)})."
                ) from exc
            raise UnsafeFileError(
                f"Refused to load {path!r}: torch's safe loader (weights_only=True) found "
                f"objects other than tensors and plain containers ({torch_refusal_reason(exc)}). "
                "The file was NOT loaded."
            ) from exc
        except Exception as exc:  # torch's loader raises any type for a damaged file
            raise ValueError(
                f"{path!r} could not be read as a torch.save file ({type(exc).__name__}: "
                f"{_one_line(exc)})."
            ) from exc


def _one_line(error: BaseException) -> str:

    return one_line(error)


def load_tensor_pickle(path: str | os.PathLike[str]) -> tuple[np.ndarray, ...]:
    """Load a pickle of torch tensors / numpy arrays without running code from the file.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``pickle.dump`` holding one tensor or array, or a tuple/list of
        them (the lab's ``nuclei_cells_segmentations.pck`` holds ``(X, Y)``). Files written
        by ``torch.save`` are read with ``torch.load(weights_only=True)``.

    Returns
    -------
    tuple of numpy.ndarray
        The arrays in file order, on the CPU, with their dtype (float32 for FloatTensor).

    Raises
    ------
    UnsafeFileError
        If the file names any Python global other than those needed to rebuild tensors and
        arrays (see :data:`ALLOWED_GLOBALS`). Nothing from the file is run in that case.
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a valid pickle or does not hold tensors/arrays.
    """
    path_str = os.fspath(path)
    problem = file_problem(path_str)
    if problem == "does not exist":
        raise FileNotFoundError(f"Pickle file not found: {path_str}")
    if problem:
        raise ValueError(f"{path_str!r} cannot be read as a pickle of tensors: it {problem}.")
    size, limit = os.stat(path_str).st_size, read_limit_bytes()
    if size > limit:
        raise ValueError(
            f"{path_str!r} is {format_bytes(size)}, more than the {format_bytes(limit)} that "
            "may be read into memory here."
        )
    with open(path_str, "rb") as handle:
        data = handle.read()
    if not data:
        raise ValueError(f"{path_str!r} is empty; expected a pickle of tensors (X, Y).")
    if data[:4] == _ZIP_MAGIC:
        problem = zip_problem(path_str, limit)
        if problem:
            raise ValueError(f"{path_str!r} was refused: it {problem}.")
        obj = _load_torch_save(path_str)
    else:
        try:
            for module, name in _scan_globals(data):
                if (module, name) not in _ALLOWED:
                    raise _refuse(module, name, path_str)
        except UnsafeFileError:
            raise
        except Exception as exc:  # pickletools raises ValueError (and others) on garbage
            raise ValueError(
                f"{path_str!r} is not a valid pickle file ({_one_line(exc)}). Expected a file "
                "written by pickle.dump((X, Y), f) with tensors or arrays."
            ) from exc
        try:
            obj = _RestrictedUnpickler(io.BytesIO(data), path_str).load()
        except UnsafeFileError as exc:
            if path_str in str(exc):
                raise
            raise UnsafeFileError(f"Refused to load {path_str!r}: {exc}") from exc
        except Exception as exc:  # the unpickler raises any type for damaged data
            raise ValueError(
                f"{path_str!r} could not be read as a pickle of tensors ({type(exc).__name__}: "
                f"{_one_line(exc)}). Expected a file written by pickle.dump((X, Y), f)."
            ) from exc
        if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
            obj = _load_torch_save(path_str)
    items = obj if isinstance(obj, (tuple, list)) else (obj,)
    if not items:
        raise ValueError(f"{path_str!r} holds an empty {type(obj).__name__}; expected arrays.")
    # Arrays a crafted file declares are allocated but not yet touched: check their size
    # before anything reads them.
    declared = sum(_nbytes(item) for item in items)
    if declared > limit:
        raise ValueError(
            f"{path_str!r} declares arrays of {format_bytes(declared)}, more than the "
            f"{format_bytes(limit)} that may be read into memory here."
        )
    try:
        return tuple(_to_numpy(item, path_str) for item in items)
    except ValueError:
        raise
    except Exception as exc:  # a tensor numpy cannot hold (sparse, quantized, complex32...)
        raise ValueError(
            f"{path_str!r} holds a tensor that cannot become an array ({type(exc).__name__}: "
            f"{_one_line(exc)})."
        ) from exc
