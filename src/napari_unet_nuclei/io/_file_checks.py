"""Checks every file reader makes before parsing or allocating, and one-line error text.

The readers of this package (model files, lab data, images, zarr, project, ledger,
measurement tables, bioimage.io packages) turn any failure into their own error with one
sentence. This module holds what they share:

- :func:`file_problem`: why a path cannot be read as a file at all (missing, a folder, a
  device or pipe that would block or never end);
- :func:`read_limit_bytes`: how many bytes one image may take in memory, tied to the
  memory available, so that a header declaring a 100,000 x 100,000 image is refused before
  anything is allocated;
- :func:`tiff_problem`: the declared size and the segment layout of a TIFF, checked
  against that limit and the file size;
- :func:`one_line`: the first line of an exception, shortened, for messages.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "MAX_READ_BYTES_ENV",
    "file_problem",
    "format_bytes",
    "one_line",
    "quiet_tifffile",
    "read_json",
    "read_limit_bytes",
    "tiff_problem",
    "zip_problem",
]

#: Environment variable that sets :func:`read_limit_bytes` (in bytes).
MAX_READ_BYTES_ENV = "NAPARI_UNET_NUCLEI_MAX_READ_BYTES"
#: Upper bound of :func:`read_limit_bytes` without the environment variable: no 2-D image
#: this package reads whole is larger (larger TIFF stacks are read lazily by the batch).
_DEFAULT_CAP = 4 << 30


def one_line(error: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``error`` (its type name when it has none), shortened.

    Parameters
    ----------
    error : BaseException
        Any exception.
    limit : int
        Longest text returned; longer text ends with ``...``.

    Returns
    -------
    str
        One line without a trailing full stop.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text.rstrip(".")


def file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as a regular file, or None when it can be.

    Symbolic links are followed. Devices, pipes and sockets are refused because reading
    them may block forever (a pipe) or never end (``/dev/zero``).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str or None
        A phrase such as ``"does not exist"`` or ``"is a folder, not a file"``.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return "is a symbolic link to a file that does not exist"
        return "does not exist"
    except OSError as error:  # a symlink loop, a name too long, no permission...
        return f"cannot be opened ({one_line(error)})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a device, pipe or socket, which may never end)"
    return None


def _available_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unsupported here
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def read_limit_bytes() -> int:
    """The most bytes one image (or array) read whole may take in memory.

    Half of the memory available now, at most 4 GiB; the environment variable
    ``NAPARI_UNET_NUCLEI_MAX_READ_BYTES`` sets it instead.

    Returns
    -------
    int
        A number of bytes, at least 64 MiB.
    """
    text = os.environ.get(MAX_READ_BYTES_ENV, "").strip()
    if text:
        try:
            return max(1, int(float(text)))
        except ValueError:
            pass
    available = _available_memory()
    limit = _DEFAULT_CAP if available is None else min(_DEFAULT_CAP, available // 2)
    return max(limit, 64 << 20)


def format_bytes(count: int | float) -> str:
    """``"10.0 GB"``, ``"512 MB"``, ``"12 kB"`` (decimal units)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            value = count / size
            return f"{value:.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{int(count)} bytes"


def declared_bytes(shape: Any, itemsize: int) -> int:
    """Bytes of an array of ``shape`` and ``itemsize`` (Python integers: no overflow)."""
    return math.prod(int(n) for n in shape) * int(itemsize)


def too_large(shape: Any, itemsize: int, limit: int | None = None) -> str | None:
    """A phrase when an array of ``shape`` would exceed ``limit`` bytes, else None."""
    limit = read_limit_bytes() if limit is None else limit
    nbytes = declared_bytes(shape, itemsize)
    if nbytes <= limit:
        return None
    dims = " x ".join(f"{int(n):,}" for n in shape)
    return (
        f"declares a {dims} array ({format_bytes(nbytes)}), more than the "
        f"{format_bytes(limit)} that may be read into memory here"
    )


def zip_problem(path: str | os.PathLike[str] | IO[bytes], limit: int | None = None) -> str | None:
    """A phrase when the zip archive at ``path`` (or in a binary stream) declares more
    bytes than ``limit`` (by default :func:`read_limit_bytes`).

    Members are sized from the archive's directory (nothing is decompressed), so a zip
    bomb, or a damaged directory claiming huge sizes, is refused before it is read. Files
    that are not readable zip archives give None: their own reader says what they are.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except Exception:  # not a readable archive
        return None
    limit = read_limit_bytes() if limit is None else limit
    if declared > limit:
        return (
            f"is a zip archive whose members declare {format_bytes(declared)}, more than the "
            f"{format_bytes(limit)} that may be read into memory here"
        )
    return None


def read_json(path: str | os.PathLike[str], max_bytes: int = 256 << 20) -> Any:
    """Parse a small JSON file (an index, a ledger, a split), refusing what cannot be one.

    Parameters
    ----------
    path : str or path-like
        The file.
    max_bytes : int
        Larger files are refused before being read.

    Returns
    -------
    Any
        The parsed value.

    Raises
    ------
    ValueError
        With a phrase for a path that is not a regular file, a file that is too large, not
        UTF-8 or not JSON (also for nesting too deep to parse). ``OSError`` when the file
        cannot be read.
    """
    import json

    problem = file_problem(path)
    if problem:
        raise ValueError(f"it {problem}")
    size = os.stat(path).st_size
    if size > max_bytes:
        raise ValueError(f"it is {format_bytes(size)}, too large for this kind of file")
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"it is not UTF-8 text ({one_line(error)})") from error
    except RecursionError as error:
        raise ValueError("it nests too deeply to be read") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"it is not valid JSON ({one_line(error)})") from error


@contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's log messages about damaged files while reading one.

    The reader's own error says what is wrong; tifffile's warnings would otherwise print
    extra lines on the terminal.
    """
    logger = logging.getLogger("tifffile")

    def drop(_record: logging.LogRecord) -> bool:
        return False

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def tiff_problem(tif: Any, limit: int | None) -> str | None:
    """What makes an open ``tifffile.TiffFile`` unreadable, checked before reading pixels.

    Parameters
    ----------
    tif : tifffile.TiffFile
        The open file.
    limit : int or None
        Most bytes the first series may declare (None: no limit, for lazy reading).

    Returns
    -------
    str or None
        A phrase (``"holds no image"``, ``"declares a 100,000 x 100,000 array ..."``,
        ``"is truncated ..."``), or None when the header is consistent.
    """
    import numpy as np

    series = tif.series
    if not series:
        return "holds no image"
    first = series[0]
    shape = tuple(int(n) for n in first.shape)
    if not shape or min(shape) < 1:
        return "holds an empty image"
    itemsize = np.dtype(first.dtype).itemsize
    if limit is not None:
        problem = too_large(shape, itemsize, limit)
        if problem:
            return problem
    page = first.keyframe
    if getattr(tif, "is_lsm", False) or getattr(page, "is_lsm", False):
        return None  # Zeiss LSM files keep their strips their own way; tifffile knows it
    offsets = tuple(page.dataoffsets)
    counts = tuple(page.databytecounts)
    expected = math.prod(int(n) for n in getattr(page, "chunked", ()) or (len(offsets),))
    if len(offsets) != expected or len(counts) != len(offsets):
        return (
            f"is damaged: its header declares {expected:,} strips or tiles for a "
            f"{' x '.join(f'{int(n):,}' for n in page.shape)} image but lists {len(offsets):,}"
        )
    size = Path(tif.filehandle.path).stat().st_size if tif.filehandle.path else None
    if size is not None and any(
        count and offset + count > size for offset, count in zip(offsets, counts)
    ):
        return "is truncated: its pixel data goes past the end of the file"
    whole_bytes = int(getattr(page, "bitspersample", 8)) % 8 == 0  # not 1-bit (packed) masks
    if page.compression == 1 and whole_bytes and sum(counts) < int(page.nbytes):
        return "is truncated: it holds fewer pixel bytes than its header declares"
    return None
