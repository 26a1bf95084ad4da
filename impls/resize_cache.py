"""The resized images, computed once per size and source and kept on disk (NumPy only).

A cached file is keyed by the side length and the SHA-256 of the source images'
bytes (and their shape), so a different dataset, or a changed one, never reads
another's resize; :data:`VERSION` names the resampling, so a change to it does
too. Each file holds the images and their CRC-32: a copy that is truncated, not
an ``.npz`` file, of the wrong shape or whose bytes changed is recomputed, with
one warning line, never an error. A cache that cannot be written costs time only
(one warning line too).
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from impls.fetch import default_cache_dir
from impls.files import write_atomically
from impls.resize import resize_images

VERSION = "pil-bilinear-1"  # the resampling the cached images come from (impls.resize)
FOLDER = "resized"  # under the cache directory (default_cache_dir)

_log = logging.getLogger(__name__)


def source_digest(images: np.ndarray) -> str:
    """SHA-256 of ``images``' shape and bytes: what a cached resize is keyed by."""
    digest = hashlib.sha256(f"{VERSION} {images.dtype} {images.shape}".encode())
    digest.update(np.ascontiguousarray(images).data)
    return digest.hexdigest()


def cache_path(images: np.ndarray, size: int, cache_dir: str | os.PathLike[str] | None) -> Path:
    """Where the resize of ``images`` to ``size`` is kept."""
    home = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return home / FOLDER / f"{size}x{size}-{source_digest(images)[:32]}.npz"


def _read(path: Path, expected: tuple[int, ...]) -> np.ndarray:
    """The images stored at ``path``, or a ValueError/OSError saying what is wrong with them."""
    with np.load(path, allow_pickle=False) as stored:
        images, crc = stored["images"], int(stored["crc32"])
    if images.dtype != np.uint8 or images.shape != expected:
        raise ValueError(f"holds {images.dtype} {images.shape}, expected uint8 {expected}")
    if zlib.crc32(images.data) != crc:
        raise ValueError("its bytes do not match their CRC-32")
    return images


def _write(path: Path, images: np.ndarray) -> None:
    crc = np.uint32(zlib.crc32(images.data))
    write_atomically(path, lambda file: np.savez(file, images=images, crc32=crc))


def cached_resize(
    images: np.ndarray, size: int, cache_dir: str | os.PathLike[str] | None = None
) -> np.ndarray:
    """:func:`~impls.resize.resize_images` of ``images`` to ``size``, from the cache when there."""
    path = cache_path(images, size, cache_dir)
    expected = (len(images), size, size)
    if path.is_file():
        try:
            return _read(path, expected)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            _log.warning("fmbench: warning: recomputing a bad cached resize %s (%s)", path, error)
    resized = resize_images(images, size)
    try:
        _write(path, resized)
    except OSError as error:
        _log.warning(
            "fmbench: warning: cannot cache the resized images in %s (%s); going on uncached",
            path.parent,
            error.strerror or error,
        )
    return resized
