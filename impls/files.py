"""Writing a file all or nothing: the one helper behind the dataset cache, histories and figures.

Standard library only, so the loader (:mod:`impls.fetch`) and the figures
(:mod:`impls.figures`) share it without either importing the other's needs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# The umask, read once at import rather than flipped while other threads run: the only
# portable way to read it is to set it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Create ``path`` (and its folders) with ``write(file)``, all or nothing; return ``path``.

    ``write`` fills a new temporary file beside ``path`` (a hidden ``.part``
    file of its own, from :func:`tempfile.mkstemp`), which is flushed to disk
    and then replaces ``path`` in one rename (``os.replace``). A reader, another
    process say, sees the old file or the whole new one; a failure on the way
    (a full disk, Ctrl-C) leaves ``path`` as it was and no temporary file behind.
    The new file's permissions follow the umask, like any file ``open`` creates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as file:  # owns fd from here on: closed whatever happens
            os.fchmod(file.fileno(), 0o666 & ~_UMASK)  # mkstemp makes it 0600
            write(file)
            file.flush()
            os.fsync(file.fileno())  # the data on disk before the name points at it
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return path
