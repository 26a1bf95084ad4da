"""The IDX file format of (Fashion-)MNIST: decode with every check, encode, verify by SHA-256.

Content only: no paths, no network. :func:`verify` is the one gate every file
passes, wherever it came from: it must parse as IDX and the SHA-256 of its
decompressed content must match its :class:`IdxFile`. Also home to the loader's
error hierarchy (:class:`DataError` and the content errors); ``impls.fetch``
adds the errors of finding and downloading.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 28  # side of a Fashion-MNIST image: the header check holds files to it
NUM_CLASSES = 10  # labels are 0..9: the label check holds files to it

_IDX_UBYTE = 0x08  # the IDX type byte of unsigned bytes, the only type these files use
MAX_UNKNOWN_SIZE = 1 << 26  # cap on a file of unknown size: 64 MiB (largest real: 47 MB)
_SIZE_SLACK = 4096  # over a known size: enough for parse_idx to name a few trailing bytes itself


class DataError(Exception):
    """Base class of every loader error; the message says what to do."""


class CorruptFileError(DataError):
    """A file is not valid IDX (or not valid gzip), or its contents are out of range."""


class ChecksumError(DataError):
    """A file's decompressed content does not have the expected SHA-256."""


@dataclass(frozen=True)
class IdxFile:
    """One file of a dataset: its name, expected content hash, shape and size."""

    name: str  # decompressed file name, e.g. "train-images-idx3-ubyte"
    sha256: str  # of the decompressed content
    kind: str  # "images" or "labels"
    size: int | None = None  # bytes of the decompressed file, header included, if known

    @property
    def ndim(self) -> int:
        return 3 if self.kind == "images" else 1

    @property
    def max_bytes(self) -> int:
        """The most decompressed bytes worth reading: the cap that stops a gzip bomb."""
        return MAX_UNKNOWN_SIZE if self.size is None else self.size + _SIZE_SLACK

    @property
    def max_raw_bytes(self) -> int:
        """The most bytes of a file or download worth reading, gzipped or not."""
        return 2 * self.max_bytes  # gzip adds next to nothing, even to incompressible data


def parse_idx(raw: bytes | bytearray | memoryview, spec: IdxFile, origin: str = "") -> np.ndarray:
    """Decode an IDX file of unsigned bytes, checking every header field.

    Raises :class:`CorruptFileError` (never ``assert``) naming the file and the
    problem, so the checks hold under ``python -O``.
    """
    where = f"{spec.name} ({origin})" if origin else spec.name
    if len(raw) < 4:
        raise CorruptFileError(f"{where}: {len(raw)} bytes, too short for an IDX header")
    zero_a, zero_b, type_byte, ndim = bytes(raw[:4])
    if zero_a or zero_b:
        raise CorruptFileError(
            f"{where}: bad IDX magic {bytes(raw[:4]).hex()}: the first two bytes must be zero"
        )
    if type_byte != _IDX_UBYTE:
        raise CorruptFileError(
            f"{where}: IDX type byte 0x{type_byte:02x}, expected 0x08 (unsigned byte)"
        )
    if ndim != spec.ndim:
        other = {1: "a labels file", 3: "an images file"}.get(ndim, "neither images nor labels")
        raise CorruptFileError(
            f"{where}: IDX header declares {ndim} dimensions, expected {spec.ndim} for "
            f"{spec.kind}; this looks like {other} (files swapped?)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptFileError(f"{where}: truncated inside the IDX header")
    dims = struct.unpack(f">{ndim}I", bytes(raw[4:header]))
    if spec.kind == "images" and dims[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise CorruptFileError(
            f"{where}: images are {dims[1]}x{dims[2]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    expected = int(np.prod(dims))
    payload = len(raw) - header
    if payload < expected:
        raise CorruptFileError(
            f"{where}: truncated: {payload} bytes of data, the header promises {expected}"
        )
    if payload > expected:
        raise CorruptFileError(
            f"{where}: {payload - expected} trailing bytes after the {expected} the header declares"
        )
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    if spec.kind == "labels" and array.size and int(array.max()) >= NUM_CLASSES:
        bad = int(np.argmax(array >= NUM_CLASSES))
        raise CorruptFileError(
            f"{where}: label {int(array[bad])} at index {bad} is outside 0..{NUM_CLASSES - 1}"
        )
    return array


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array (used to write test fixtures and caches)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _sha256(content: bytes | bytearray) -> str:
    """The SHA-256 of ``content`` in lowercase hex, the form :class:`IdxFile` stores."""
    return hashlib.sha256(content).hexdigest()


def verify(content: bytes | bytearray, spec: IdxFile, origin: str) -> np.ndarray:
    """Parse ``content`` and check its SHA-256; return the decoded array."""
    array = parse_idx(content, spec, origin)
    actual = _sha256(content)
    if actual != spec.sha256:
        raise ChecksumError(
            f"{spec.name} from {origin}: SHA-256 of the decompressed content is {actual}, "
            f"expected {spec.sha256}"
        )
    return array
