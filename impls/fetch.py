"""Finding, downloading, verifying and caching the dataset's files (NumPy; pooch to download).

Search order for each file: an explicit directory, ``$FMBENCH_DATA_DIR``, the
download cache (the repo's ``data/``), Debian's ``dataset-fashion-mnist``
package; failing all, a download from the mirrors (pooch) into the cache. Each
file may be gzipped or not. Whatever the source, a file is used only once
:func:`impls.idx.verify` accepts its decompressed content; a verified copy is
kept decompressed in the cache so the next load skips gzip. The cache only saves
time: a cache that cannot be written costs one warning (logger ``impls.fetch``), not
the load. Sizes are capped (:attr:`impls.idx.IdxFile.max_bytes`): no gzip bomb or
endless download fills the memory.

Entry point: :func:`fetch` (verified arrays and where each came from);
:mod:`impls.data` builds the loader on it.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from impls.files import write_atomically
from impls.idx import CorruptFileError, DataError, IdxFile, parse_idx, verify

DATA_DIR_ENV = "FMBENCH_DATA_DIR"
CACHE_DIR_ENV = "FMBENCH_CACHE_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_log = logging.getLogger(__name__)


class DownloadError(DataError):
    """Every mirror failed for a file."""


class DataDirError(DataError):
    """An explicit data directory (``--data-dir``, ``$FMBENCH_DATA_DIR``) is not a readable one."""


class DatasetNotFoundError(DataError):
    """No verified copy anywhere, and downloading failed or was not allowed."""


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


FASHION_MNIST = DatasetSpec(  # each file: name; SHA-256, kind and size of the decompressed content
    name="fashion-mnist",
    train_images=IdxFile("train-images-idx3-ubyte",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", "images", 47_040_016),
    train_labels=IdxFile("train-labels-idx1-ubyte",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", "labels", 60_008),
    test_images=IdxFile("t10k-images-idx3-ubyte",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", "images", 7_840_016),
    test_labels=IdxFile("t10k-labels-idx1-ubyte",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", "labels", 10_008),
    mirrors=(  # https first; S3's website endpoint speaks plain http only (SHA-256 still checks it)
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class FetchedFile:
    """A verified file: where its content came from and where it is now."""

    spec: IdxFile
    origin: str  # the path or URL the content was read from
    path: Path | None  # a local copy holding it (maybe gzipped); None: a download left uncached
    array: np.ndarray = field(repr=False)  # the decoded, verified content


# ---------------------------------------------------------------- reading files


def _read_content(path: Path, spec: IdxFile) -> bytearray:
    """The decompressed bytes of ``path`` (gzip recognised by its magic, not its name).

    Returned as a ``bytearray`` read straight into place, so arrays decoded from
    it are writable without another copy.
    """
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > spec.max_raw_bytes:
                raise CorruptFileError(
                    f"{path}: {size:,} bytes, over the {spec.max_raw_bytes:,}-byte cap for "
                    f"{spec.name}; not read (the wrong file?)"
                )
            raw = bytearray(size)
            del raw[handle.readinto(raw) :]  # in place: no second copy of a 47 MB file
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error})") from error
    if raw[:2] != b"\x1f\x8b":
        return raw
    return _gunzip(raw, spec, str(path), "; delete it or replace it")


def _gunzip(raw: bytearray | bytes, spec: IdxFile, where: str, fix: str = "") -> bytearray:
    """Every gzip member of ``raw`` decompressed, stopping past ``spec.max_bytes`` of output."""
    cap, out, rest = spec.max_bytes, bytearray(), memoryview(raw)
    try:
        while rest:
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip wrapper, CRC checked
            out += inflater.decompress(rest, cap + 1 - len(out))  # never more than the cap + 1
            if len(out) > cap:
                raise CorruptFileError(
                    f"{where}: decompresses to over the {cap:,}-byte cap for {spec.name}; "
                    "refused (a gzip bomb or the wrong file)"
                )
            if not inflater.eof:
                raise zlib.error("the data end before the end of the gzip stream")
            rest = memoryview(inflater.unused_data.lstrip(b"\0"))  # next member; zero padding
    except zlib.error as error:
        raise CorruptFileError(f"{where}: truncated or corrupt gzip data ({error}){fix}") from error
    return out


def _candidates(directory: Path, spec: IdxFile) -> list[Path]:
    """The copies of ``spec`` present in ``directory``: decompressed first, then gzipped."""
    paths = [directory / spec.name, directory / f"{spec.name}.gz"]
    return [path for path in paths if os.path.isfile(path)]  # an OSError counts as absent


# -------------------------------------------------------------------- download

_RETRYABLE_HTTP = frozenset({408, 429})  # 4xx codes that mean "try again", not "not here"


class _BodyTooBig(Exception):
    """A download passed its cap (no ``OSError``: nothing in requests may catch it)."""


class _CappedBody(io.BytesIO):
    """An in-memory body that raises :class:`_BodyTooBig` rather than grow past ``cap`` bytes."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def write(self, chunk: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(chunk) > self.cap:
            raise _BodyTooBig
        return super().write(chunk)


def download(
    url: str, *, timeout: float, retries: int, chunk_bytes: int = 1 << 20, max_bytes: int = 1 << 27
) -> bytes:
    """The body at ``url``, retried ``retries`` times; raises ``DownloadError`` with the cause.

    A body over ``max_bytes`` (128 MiB unless given) is refused once past it, not retried.

    pooch's ``HTTPDownloader`` (requests underneath) does the transfer: the
    timeout, redirects, a body shorter than its Content-Length reported as an
    error, a progress bar on a terminal. It writes into memory, not a file: the
    cache keeps the decompressed content, written only once verified, so a failed
    or interrupted download leaves nothing behind. (``pooch.retrieve`` would stage
    the ``.gz`` on disk for nothing, and with ``known_hash=None`` it logs that
    file's SHA-256 as the hash to pin: the wrong one here, where the content's counts.)

    The retry loop is ours because pooch's (``retry_if_failed``) retries every
    failure, a 404 or a malformed URL included, and waits 1 s, 2 s, ... between
    tries: a file missing from one mirror should fall through to the next at once.
    """
    # Imported on the first download, not with this module: pooch brings requests and
    # tqdm, whose import time a load from the cache should not pay. requests comes with pooch.
    import pooch
    import requests

    downloader = pooch.HTTPDownloader(
        timeout=timeout, progressbar=_progress_bar_wanted(), chunk_size=chunk_bytes
    )
    reason = "not tried"
    attempts = 0
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(0.25 * 2 ** (attempt - 1), 2.0))
        attempts += 1
        body = _CappedBody(max_bytes)
        try:
            downloader(url, body, None)
            return body.getvalue()
        except _BodyTooBig:
            reason = f"the body passed the {max_bytes:,}-byte cap; refused (a broken mirror?)"
            break
        except requests.HTTPError as error:
            status = error.response.status_code
            reason = f"HTTP {status} {error.response.reason}"
            if 400 <= status < 500 and status not in _RETRYABLE_HTTP:
                break  # the file is not there: retrying will not help
        except requests.Timeout as error:
            reason = f"no answer within the {timeout:g} s timeout ({type(error).__name__})"
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema,
        ) as error:
            reason = f"invalid URL ({error})"
            break  # a malformed mirror URL: retrying will not help
        except requests.exceptions.ChunkedEncodingError as error:
            reason = f"connection broken mid-body ({_root_cause(error)!r})"
        except (requests.RequestException, ValueError) as error:  # ValueError: a bad header
            reason = repr(_root_cause(error))  # repr: a server's garbage cannot break the line
    tries = f" ({attempts} attempts)" if attempts > 1 else ""
    raise DownloadError(f"{url}: {reason}{tries}")


def _progress_bar_wanted() -> bool:
    """A bar only on an interactive stderr, and only where tqdm (an optional extra) is installed."""
    if sys.stderr is None or not sys.stderr.isatty():
        return False
    return importlib.util.find_spec("tqdm") is not None


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception requests and urllib3 wrapped (BadStatusLine, IncompleteRead, ...)."""
    while True:
        inner = getattr(error, "reason", None)  # urllib3's MaxRetryError keeps it there
        if not isinstance(inner, BaseException):
            inner = next(
                (arg for arg in reversed(error.args) if isinstance(arg, BaseException)), None
            )
        if inner is None:
            return error
        error = inner


def _download_verified(
    spec: IdxFile, mirrors: Sequence[str], *, timeout: float, retries: int, failures: list[str]
) -> tuple[str, bytearray] | None:
    """Try each mirror in turn; the first verified content wins."""
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{spec.name}.gz"
        try:
            body = download(url, timeout=timeout, retries=retries, max_bytes=spec.max_raw_bytes)
            content = _gunzip(body, spec, url) if body[:2] == b"\x1f\x8b" else bytearray(body)
            verify(content, spec, url)
        except DataError as error:  # names the URL already
            failures.append(f"  download {error}")
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
    """(label, directory, is_cache) in search order; an explicit place must be a readable dir."""
    places: list[tuple[str, Path, bool]] = []
    if data_dir is not None:
        places.append(("--data-dir", Path(data_dir).expanduser(), False))
    if env := os.environ.get(DATA_DIR_ENV):
        places.append((f"${DATA_DIR_ENV}", Path(env).expanduser(), False))
    for label, directory, _ in places:  # the explicit places, all checked before any search
        if not (directory.is_dir() and os.access(directory, os.R_OK | os.X_OK)):
            raise DataDirError(f"{label} {directory} is not a readable directory")
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
    fails verification is an error: the user pointed at it; one that is not a readable
    directory is a :class:`DataDirError`. A bad copy in the cache is deleted (one warning
    line) and replaced; a bad Debian copy is passed over.
    """
    home = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache = _Cache(home / spec.name)
    places = _search_dirs(data_dir, cache.home, spec)
    fetched: dict[str, FetchedFile] = {}
    for file_spec in spec.files:
        fetched[file_spec.name] = _fetch_one(
            file_spec, places, cache, spec, download=download, timeout=timeout, retries=retries
        )
    return fetched


class _Cache:
    """The download cache of one load. It only saves time: on an OS error, one warning, no crash."""

    def __init__(self, home: Path) -> None:
        self.home, self.writable = home, True  # writable until a write or a deletion fails

    def store(self, file_spec: IdxFile, content: bytearray) -> Path | None:
        """Keep a verified copy; its path, or None where the cache cannot take it."""
        target = self.home / file_spec.name
        if self.writable:
            try:
                write_atomically(target, lambda file: file.write(content))
                return target
            except OSError as error:
                self._give_up(f"cannot write {target} ({error})")
        return None

    def discard(self, path: Path, problem: DataError) -> str:
        """Delete a bad cached copy, saying so; the line for the report should all else fail."""
        try:
            path.unlink(missing_ok=True)  # never reuse a bad cached copy
        except OSError as error:
            self._give_up(f"cannot delete a bad cached copy ({error}): {problem}")
            return f"bad copy left in place ({error}): {problem}"
        _log.warning("fmbench: warning: deleted a bad cached copy: %s", problem)
        return f"removed bad copy: {problem}"

    def _give_up(self, what: str) -> None:
        self.writable = False
        _log.warning(
            f"fmbench: warning: {what}; going on with the verified data, uncached. Fix: make "
            f"{self.home} a writable directory (deleting it is safe) or set ${CACHE_DIR_ENV} to one"
        )


def _fetch_one(
    file_spec: IdxFile,
    places: list[tuple[str, Path, bool]],
    cache: _Cache,
    spec: DatasetSpec,
    *,
    download: bool,
    timeout: float,
    retries: int,
) -> FetchedFile:
    """The first verified copy of one file, from the places in order, else the mirrors."""
    failures: list[str] = []
    for label, directory, is_cache in places:
        found = _candidates(directory, file_spec)
        if not found:
            failures.append(f"  {label}: {directory}: not there")
        for path in found:
            try:
                content = _read_content(path, file_spec)
                array = verify(content, file_spec, str(path))
            except DataError as error:
                if is_cache:
                    failures.append(f"  {label}: {cache.discard(path, error)}")
                    continue
                if not label.startswith("Debian"):
                    raise
                failures.append(f"  {label}: {error}")
                continue
            if path.suffix == ".gz":  # keep a decompressed copy so the next load skips gzip
                cache.store(file_spec, content)
            return FetchedFile(file_spec, str(path), path, array)
    if download:
        result = _download_verified(
            file_spec, spec.mirrors, timeout=timeout, retries=retries, failures=failures
        )
        if result is not None:
            url, content = result
            target = cache.store(file_spec, content)
            return FetchedFile(file_spec, url, target, parse_idx(content, file_spec, url))
    else:
        failures.append("  download: not allowed (download=False)")
    raise DatasetNotFoundError(
        f"no verified copy of {file_spec.name} could be found or downloaded. Looked in:\n"
        + "\n".join(failures)
        + "\nFix it either way: connect to the internet so it can be downloaded into "
        f"{cache.home}, or install the files (as root: apt-get install dataset-fashion-mnist) "
        f"or pass a directory holding them (--data-dir or ${DATA_DIR_ENV})."
    )
