"""Writing a file so that it is either whole or not there: the one home of that rule.

Every file the package writes (model files, exports, project records and masks, nucleus
tables) is written under a hidden temporary name beside its target and renamed onto it
when complete: an interrupted write (a crash, a full disk, Ctrl+C) never leaves a
half-written file under the real name, nor destroys the earlier one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Give a temporary path beside ``path``; rename it onto ``path`` when the block ends.

    Parameters
    ----------
    path : path-like
        The file to write; its folder is created when missing.
    suffix : str
        Ending of the temporary name (writers that choose the format by the ending, such
        as ``.tif`` or ``.zip``, need it).

    Yields
    ------
    pathlib.Path
        Where to write. It exists, empty, when the block starts.

    Raises
    ------
    BaseException
        Whatever the block raises; the temporary file is removed and ``path`` is left as
        it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
