"""The Fashion-MNIST loader every implementation and benchmark uses (NumPy only).

Finding the files, in order: an explicit directory, ``$FMBENCH_DATA_DIR``, the
download cache (the repo's ``data/``), Debian's ``dataset-fashion-mnist``
package; failing all, a download from the mirrors into the cache. Each file may
be gzipped or not. Whatever the source, a file is used only once its
decompressed content matches the SHA-256 in :data:`FASHION_MNIST`; a verified
copy is kept decompressed in the cache so the next load skips gzip.

Entry points: :func:`load_fashion_mnist` (arrays), :func:`fetch` (files and
where each came from), :class:`MinibatchOrder` (the shared batch order).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import struct
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA_DIR_ENV = "FMBENCH_DATA_DIR"
CACHE_DIR_ENV = "FMBENCH_CACHE_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SIZE = 28
NUM_CLASSES = 10

CLASS_NAMES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip

_IDX_UBYTE = 0x08


class DataError(Exception):
    """Base class of every loader error; the message says what to do."""


class CorruptFileError(DataError):
    """A file is not valid IDX (or not valid gzip), or its contents are out of range."""


class ChecksumError(DataError):
    """A file's decompressed content does not have the expected SHA-256."""


class DownloadError(DataError):
    """Every mirror failed for a file."""


class DatasetNotFoundError(DataError):
    """No verified copy anywhere, and downloading failed or was not allowed."""


@dataclass(frozen=True)
class IdxFile:
    """One file of a dataset: its name, expected content hash and shape."""

    name: str  # decompressed file name, e.g. "train-images-idx3-ubyte"
    sha256: str  # of the decompressed content
    kind: str  # "images" or "labels"

    @property
    def ndim(self) -> int:
        return 3 if self.kind == "images" else 1


@dataclass(frozen=True)
class DatasetSpec:
    """Which files make a dataset and where they can be downloaded from."""

    name: str
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile
    mirrors: tuple[str, ...]
    debian_dir: Path | None = DEBIAN_DIR

    @property
    def files(self) -> tuple[IdxFile, ...]:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)


FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    train_images=IdxFile(
        "train-images-idx3-ubyte",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "images",
    ),
    train_labels=IdxFile(
        "train-labels-idx1-ubyte",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "labels",
    ),
    test_images=IdxFile(
        "t10k-images-idx3-ubyte",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "images",
    ),
    test_labels=IdxFile(
        "t10k-labels-idx1-ubyte",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        "labels",
    ),
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
)


@dataclass(frozen=True)
class FashionMNIST:
    """The dataset as NumPy arrays: uint8 images (N, 28, 28), int64 labels (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    sources: tuple[str, ...] = ()  # where each of the four files came from

    @property
    def num_train(self) -> int:
        return len(self.train_labels)

    @property
    def num_test(self) -> int:
        return len(self.test_labels)


@dataclass(frozen=True)
class FetchedFile:
    """A verified file: where its content came from and where it is now."""

    spec: IdxFile
    origin: str  # the path or URL the content was read from
    path: Path  # a local, decompressed or gzipped copy holding it
    array: np.ndarray = field(repr=False)  # the decoded, verified content


# --------------------------------------------------------------------------- IDX


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


# ---------------------------------------------------------------- reading files


def _read_content(path: Path) -> bytearray:
    """The decompressed bytes of ``path`` (gzip recognised by its magic, not its name).

    Returned as a ``bytearray`` read straight into place, so arrays decoded from
    it are writable without another copy.
    """
    try:
        with path.open("rb") as handle:
            raw = bytearray(os.fstat(handle.fileno()).st_size)
            del raw[handle.readinto(raw) :]  # in place: no second copy of a 47 MB file
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error})") from error
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return bytearray(gzip.decompress(raw))
    except (EOFError, OSError, zlib.error) as error:
        raise CorruptFileError(
            f"{path}: truncated or corrupt gzip data ({error}); delete it or replace it"
        ) from error


def _sha256(content: bytes | bytearray) -> str:
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


def _candidates(directory: Path, spec: IdxFile) -> list[Path]:
    """The copies of ``spec`` present in ``directory``: decompressed first, then gzipped."""
    paths = [directory / spec.name, directory / f"{spec.name}.gz"]
    return [path for path in paths if path.is_file()]


def _write_atomically(target: Path, content: bytes | bytearray) -> None:
    """Write ``content`` to ``target`` via a temporary file and a rename.

    A reader (another process loading into the same cache) sees either no file
    or a complete one; an error or Ctrl-C leaves no partial file behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes it 0600: others could not read the cache
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import, rather than flipped while other threads run


# -------------------------------------------------------------------- download

_RETRYABLE_HTTP = frozenset({408, 429})  # 4xx codes that mean "try again", not "not here"


def download(url: str, *, timeout: float, retries: int, chunk_bytes: int = 1 << 20) -> bytes:
    """The body at ``url``, retried ``retries`` times; raises ``DownloadError`` with the cause."""
    reason = "not tried"
    attempts = 0
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(0.25 * 2 ** (attempt - 1), 2.0))
        attempts += 1
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                declared = response.headers.get("Content-Length")
                chunks = []
                while chunk := response.read(chunk_bytes):
                    chunks.append(chunk)
                body = b"".join(chunks)
            # http.client ends a read early without error when the server closes the
            # connection: a body shorter than its Content-Length is a broken download.
            if declared is not None and declared.isdigit() and len(body) != int(declared):
                raise http.client.IncompleteRead(body, int(declared) - len(body))
            return body
        except urllib.error.HTTPError as error:
            error.close()
            reason = f"HTTP {error.code} {error.reason}"
            if 400 <= error.code < 500 and error.code not in _RETRYABLE_HTTP:
                break  # the file is not there: retrying will not help
        except http.client.IncompleteRead as error:
            reason = f"connection closed after {len(error.partial)} bytes of the body"
            if error.expected:
                reason += f", {error.expected} bytes short"
        except (OSError, ValueError, http.client.HTTPException) as error:
            cause = getattr(error, "reason", error)  # URLError wraps the real cause
            if isinstance(cause, (ValueError, http.client.InvalidURL)):
                # a malformed mirror URL: retrying will not help
                reason = f"invalid URL ({cause})"
                break
            if isinstance(cause, TimeoutError):
                reason = f"no answer within the {timeout:g} s timeout ({cause or 'timed out'})"
            else:
                reason = f"{type(cause).__name__}: {cause}"
    tries = f" ({attempts} attempts)" if attempts > 1 else ""
    raise DownloadError(f"{url}: {reason}{tries}")


def _download_verified(
    spec: IdxFile, mirrors: Sequence[str], *, timeout: float, retries: int, failures: list[str]
) -> tuple[str, bytearray] | None:
    """Try each mirror in turn; the first verified content wins."""
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{spec.name}.gz"
        try:
            compressed = download(url, timeout=timeout, retries=retries)
        except DownloadError as error:
            failures.append(f"  download {error}")
            continue
        try:
            content = bytearray(
                gzip.decompress(compressed) if compressed[:2] == b"\x1f\x8b" else compressed
            )
            verify(content, spec, url)
        except DataError as error:  # names the URL already
            failures.append(f"  download {error}")
            continue
        except (EOFError, OSError, zlib.error) as error:
            failures.append(f"  download {url}: truncated or corrupt gzip data ({error})")
            continue
        return url, content
    return None


# ---------------------------------------------------------------------- lookup


def default_cache_dir() -> Path:
    """Where downloads and decompressed copies go.

    ``$FMBENCH_CACHE_DIR`` if set; else the repo's ``data/`` when running from a
    source checkout (or an editable install); else ``~/.cache/fmbench``.
    """
    if env := os.environ.get(CACHE_DIR_ENV):
        return Path(env).expanduser()
    repo_data = Path(__file__).resolve().parent.parent / "data"
    if (repo_data / "README.md").is_file():
        return repo_data
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fmbench"


def _search_dirs(
    data_dir: str | os.PathLike[str] | None, cache: Path, spec: DatasetSpec
) -> list[tuple[str, Path, bool]]:
    """(label, directory, is_cache) in search order; explicit places come first."""
    places: list[tuple[str, Path, bool]] = []
    if data_dir is not None:
        places.append(("--data-dir", Path(data_dir).expanduser(), False))
    if env := os.environ.get(DATA_DIR_ENV):
        places.append((f"${DATA_DIR_ENV}", Path(env).expanduser(), False))
    places.append(("cache", cache, True))
    if spec.debian_dir is not None:
        places.append(("Debian package dataset-fashion-mnist", spec.debian_dir, False))
    return places


def fetch(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    spec: DatasetSpec = FASHION_MNIST,
    timeout: float = 30.0,
    retries: int = 2,
) -> dict[str, FetchedFile]:
    """Find, verify and cache every file of ``spec``; keyed by file name.

    A file found in an explicit place (``data_dir``, ``$FMBENCH_DATA_DIR``) that
    fails verification is an error: the user pointed at it. A bad copy in the
    cache is deleted and replaced; a bad Debian copy is passed over.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_home = cache / spec.name
    places = _search_dirs(data_dir, cache_home, spec)
    for label, directory, _ in places:
        if label.startswith(("--", "$")) and not directory.is_dir():
            raise DataError(f"{label} {directory} is not a readable directory")
    fetched: dict[str, FetchedFile] = {}
    for file_spec in spec.files:
        fetched[file_spec.name] = _fetch_one(
            file_spec,
            places,
            cache_home,
            spec,
            download=download,
            timeout=timeout,
            retries=retries,
        )
    return fetched


def _fetch_one(
    file_spec: IdxFile,
    places: list[tuple[str, Path, bool]],
    cache_home: Path,
    spec: DatasetSpec,
    *,
    download: bool,
    timeout: float,
    retries: int,
) -> FetchedFile:
    failures: list[str] = []
    for label, directory, is_cache in places:
        found = _candidates(directory, file_spec)
        if not found:
            failures.append(f"  {label}: {directory}: not there")
        for path in found:
            try:
                content = _read_content(path)
                array = verify(content, file_spec, str(path))
            except DataError as error:
                if is_cache:
                    path.unlink(missing_ok=True)  # never reuse a bad cached copy
                    failures.append(f"  {label}: removed bad copy: {error}")
                    continue
                if not label.startswith("Debian"):
                    raise
                failures.append(f"  {label}: {error}")
                continue
            if path.suffix == ".gz":  # keep a decompressed copy so the next load skips gzip
                _write_atomically(cache_home / file_spec.name, content)
            return FetchedFile(file_spec, str(path), path, array)
    if download:
        result = _download_verified(
            file_spec, spec.mirrors, timeout=timeout, retries=retries, failures=failures
        )
        if result is not None:
            url, content = result
            target = cache_home / file_spec.name
            _write_atomically(target, content)
            return FetchedFile(file_spec, url, target, parse_idx(content, file_spec, url))
    else:
        failures.append("  download: not allowed (download=False)")
    raise DatasetNotFoundError(
        f"no verified copy of {file_spec.name} could be found or downloaded. Looked in:\n"
        + "\n".join(failures)
        + "\nFix it either way: connect to the internet so it can be downloaded into "
        f"{cache_home}, or install the files (as root: apt-get install dataset-fashion-mnist) "
        f"or pass a directory holding them (--data-dir or ${DATA_DIR_ENV})."
    )


# --------------------------------------------------------------------- loading


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    resize: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    spec: DatasetSpec = FASHION_MNIST,
    timeout: float = 30.0,
    retries: int = 2,
) -> FashionMNIST:
    """Fashion-MNIST as uint8 images (N, 28, 28) and int64 labels, verified.

    The seed's ``load_data_fashion_mnist``, minus the ``DataLoader``: batching
    is :class:`MinibatchOrder`'s job and each framework converts the arrays once.
    ``resize`` gives square images of that side, like torchvision's ``Resize``
    (see :func:`resize_images`). Use :func:`to_float32` for the ``ToTensor`` view.
    """
    files = fetch(
        data_dir,
        cache_dir=cache_dir,
        download=download,
        spec=spec,
        timeout=timeout,
        retries=retries,
    )
    arrays = {name: fetched.array for name, fetched in files.items()}
    for images_spec, labels_spec in (
        (spec.train_images, spec.train_labels),
        (spec.test_images, spec.test_labels),
    ):
        n_images, n_labels = len(arrays[images_spec.name]), len(arrays[labels_spec.name])
        if n_images != n_labels:
            raise CorruptFileError(
                f"{images_spec.name} holds {n_images} images but {labels_spec.name} "
                f"holds {n_labels} labels"
            )
    train_images = arrays[spec.train_images.name]
    test_images = arrays[spec.test_images.name]
    if resize is not None:
        train_images = resize_images(train_images, resize)
        test_images = resize_images(test_images, resize)
    return FashionMNIST(
        train_images=train_images,
        train_labels=arrays[spec.train_labels.name].astype(np.int64),
        test_images=test_images,
        test_labels=arrays[spec.test_labels.name].astype(np.int64),
        sources=tuple(files[f.name].origin for f in spec.files),
    )


def to_float32(images: np.ndarray) -> np.ndarray:
    """Pixels scaled to [0, 1] in float32, bit-for-bit what torchvision's ``ToTensor`` gives."""
    # ToTensor divides a float32 tensor by 255; IEEE division is exact-rounded, so this matches.
    return images.astype(np.float32) / np.float32(255)


def class_names(labels: Sequence[int] | np.ndarray) -> list[str]:
    """Text labels for numeric ones (the seed's ``get_fashion_mnist_labels``)."""
    return [CLASS_NAMES[int(label)] for label in labels]


# ---------------------------------------------------------------------- resize


def _pil_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) interpolation matrix of PIL's antialiased bilinear filter (triangle kernel)."""
    scale = in_size / out_size
    support = max(scale, 1.0)  # downscaling widens the kernel: that is the antialiasing
    centers = (np.arange(out_size) + 0.5) * scale
    taps = np.arange(in_size) + 0.5
    weights = np.clip(1.0 - np.abs(taps[None, :] - centers[:, None]) / support, 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Square-resize uint8 images (N, H, W) like torchvision's ``Resize(size)`` on PIL images.

    Same antialiased bilinear filter as PIL, computed in float64 then rounded to
    uint8; PIL's fixed-point arithmetic can differ by one grey level (1/255 after
    ``to_float32``), which is the tolerance the tests hold it to.
    """
    if size < 1:
        raise ValueError(f"resize must be a positive side length, got {size}")
    _, height, width = images.shape
    rows = _pil_bilinear_weights(height, size)
    cols = _pil_bilinear_weights(width, size)
    out = np.empty((len(images), size, size), dtype=np.uint8)
    step = 4096  # bound the float64 temporaries
    for start in range(0, len(images), step):
        block = images[start : start + step].astype(np.float64)
        resized = rows @ block @ cols.T  # separable: rows, then columns
        out[start : start + step] = np.clip(np.rint(resized), 0, 255)
    return out


# ------------------------------------------------------------------ minibatches


@dataclass(frozen=True)
class MinibatchOrder:
    """The minibatch order every implementation consumes, from one seed.

    Training: a fresh permutation each epoch (the seed's ``shuffle=True``), cut
    into consecutive batches with the last partial batch kept. Test: file order.
    PCG64 streams are the same on every platform, so the same seed gives the same
    order on any machine.
    """

    num_examples: int
    batch_size: int
    seed: int

    def epoch(self, epoch: int) -> np.ndarray:
        """The permutation of training indices for ``epoch`` (counted from 0)."""
        rng = np.random.default_rng([self.seed, 1, epoch])
        return rng.permutation(self.num_examples)

    @property
    def num_batches(self) -> int:
        return -(-self.num_examples // self.batch_size)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """``epoch``'s minibatches as index arrays."""
        return split_batches(self.epoch(epoch), self.batch_size)


def check_order(order: np.ndarray, num_examples: int) -> np.ndarray:
    """``order`` as a 1-D integer array of indices below ``num_examples``, or a ValueError."""
    order = np.asarray(order)
    if order.ndim != 1 or len(order) == 0:
        raise ValueError(
            f"an epoch's order must be a non-empty 1-D array of example indices, "
            f"got shape {order.shape}"
        )
    if not np.issubdtype(order.dtype, np.integer):
        raise ValueError(f"an epoch's order must hold integer indices, got {order.dtype}")
    if order.min() < 0 or order.max() >= num_examples:
        raise ValueError(
            f"an epoch's order holds indices outside 0..{num_examples - 1} "
            f"(from {order.min()} to {order.max()})"
        )
    return order


def split_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive slices of ``batch_size`` indices; the last may be shorter."""
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def batch_bounds(num_examples: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each batch over ``num_examples`` in order (test-set evaluation)."""
    for start in range(0, num_examples, batch_size):
        yield start, min(start + batch_size, num_examples)
