"""Finding, downloading, verifying and caching the files (impls.fetch), through the loader.

The search order, the cache, the mirrors and their failures, exercised the way
users meet them: through :func:`~impls.data.load_fashion_mnist` and
:func:`~impls.fetch.fetch`. Everything runs on tiny generated IDX files and a
local HTTP server on 127.0.0.1 (an ephemeral port): no test touches the network.
"""

from __future__ import annotations

import collections
import errno
import gzip
import hashlib
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from impls.data import FashionMNIST, load_fashion_mnist
from impls.fetch import (
    FASHION_MNIST,
    DataDirError,
    DatasetNotFoundError,
    DatasetSpec,
    download,
    fetch,
)
from impls.idx import ChecksumError, CorruptFileError, DataError, IdxFile, encode_idx

REPO = Path(__file__).resolve().parent.parent
NAMES = tuple(f.name for f in FASHION_MNIST.files)
TIMEOUT = 1.0  # seconds; every download in these tests is local

# ------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def _no_ambient_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's own data directory or cache."""
    monkeypatch.delenv("FMBENCH_DATA_DIR", raising=False)
    monkeypatch.delenv("FMBENCH_CACHE_DIR", raising=False)


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _gzip(content: bytes, level: int = 9, mtime: int = 0) -> bytes:
    return gzip.compress(content, compresslevel=level, mtime=mtime)


@dataclass
class Tiny:
    """A small dataset with real shapes (12 train, 5 test): contents and arrays by name."""

    arrays: dict[str, np.ndarray]
    contents: dict[str, bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.contents = {name: encode_idx(array) for name, array in self.arrays.items()}

    def spec(self, mirrors: tuple[str, ...] = (), debian_dir: Path | None = None) -> DatasetSpec:
        def idx(name: str, kind: str) -> IdxFile:  # sized: the caps stay small
            return IdxFile(name, _sha256(self.contents[name]), kind, len(self.contents[name]))

        return DatasetSpec(
            name="tiny-fashion",
            train_images=idx(NAMES[0], "images"),
            train_labels=idx(NAMES[1], "labels"),
            test_images=idx(NAMES[2], "images"),
            test_labels=idx(NAMES[3], "labels"),
            mirrors=mirrors,
            debian_dir=debian_dir,
        )

    def write(self, directory: Path, *, gz: bool = False, level: int = 9, mtime: int = 0) -> Path:
        """Write the four files into ``directory`` (gzipped as the Debian package ships them)."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in self.contents.items():
            if gz:
                (directory / f"{name}.gz").write_bytes(_gzip(content, level, mtime))
            else:
                (directory / name).write_bytes(content)
        return directory

    def check(self, loaded: FashionMNIST) -> None:
        np.testing.assert_array_equal(loaded.train_images, self.arrays[NAMES[0]])
        np.testing.assert_array_equal(loaded.train_labels, self.arrays[NAMES[1]])
        np.testing.assert_array_equal(loaded.test_images, self.arrays[NAMES[2]])
        np.testing.assert_array_equal(loaded.test_labels, self.arrays[NAMES[3]])
        assert loaded.train_images.dtype == np.uint8
        assert loaded.train_labels.dtype == np.int64
        assert loaded.test_labels.dtype == np.int64


def _make_arrays(n_train: int = 12, n_test: int = 5, seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }


@pytest.fixture
def tiny() -> Tiny:
    return Tiny(_make_arrays())


@dataclass
class Reply:
    """One scripted answer of the test server."""

    status: int = 200
    body: bytes | None = None  # None: the file served at that path
    declared_length: int | None = None  # a Content-Length that lies about the body
    delay: float = 0.0


class _Handler(BaseHTTPRequestHandler):
    server: LocalServer

    def do_GET(self) -> None:
        reply = self.server.next_reply(self.path)
        if reply.delay:
            time.sleep(reply.delay)
        if self.path in self.server.barriers:
            self.server.barriers[self.path].wait()
        body = reply.body
        if body is None:
            body = self.server.files.get(self.path)
        if reply.status != 200:
            self.send_error(reply.status)
            return
        if body is None:
            self.send_error(404)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/gzip")
        length = len(body) if reply.declared_length is None else reply.declared_length
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest's output clean


class LocalServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 whose answers each test programs.

    ``serve(mirror, contents)`` publishes gzipped files under ``/<mirror>/``;
    ``plan(path, *replies)`` queues scripted replies for a path, used before the
    served file; ``requests`` logs every path asked for, in order.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.plans: dict[str, collections.deque[Reply]] = {}
        self.barriers: dict[str, threading.Barrier] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()

    def url(self, mirror: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{mirror}/"

    def serve(self, mirror: str, contents: dict[str, bytes]) -> str:
        for name, content in contents.items():
            self.files[f"/{mirror}/{name}.gz"] = _gzip(content)
        return self.url(mirror)

    def plan(self, path: str, *replies: Reply) -> None:
        self.plans.setdefault(path, collections.deque()).extend(replies)

    def next_reply(self, path: str) -> Reply:
        with self._lock:
            self.requests.append(path)
            queue = self.plans.get(path)
            return queue.popleft() if queue else Reply()

    def count(self, path: str) -> int:
        return self.requests.count(path)

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up waiting
            super().handle_error(request, client_address)


@pytest.fixture
def server():
    httpd = LocalServer()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def silent_url():
    """A URL whose server accepts the connection (the kernel's backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/silent/"
    finally:
        sock.close()


@pytest.fixture
def garbage_url():
    """A URL whose server answers every request with something that is not HTTP."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.05)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1.0)
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/junk/"
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def _load(spec: DatasetSpec, cache: Path, data_dir: Path | None = None, **kwargs):
    kwargs.setdefault("timeout", TIMEOUT)
    kwargs.setdefault("retries", 1)
    return load_fashion_mnist(data_dir, cache_dir=cache, spec=spec, **kwargs)


def _files_under(directory: Path) -> list[str]:
    """Every file below ``directory`` (hidden ``.part`` files included), relative, sorted."""
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _corrupt(content: bytes) -> bytes:
    """Same length and a valid header, one pixel changed: only the checksum can tell."""
    flipped = bytearray(content)
    flipped[-1] ^= 0x01
    return bytes(flipped)


# -------------------------------------------------------- finding local files


@pytest.mark.parametrize("gz", [False, True], ids=["decompressed", "gzipped"])
def test_load_from_explicit_dir(tiny, tmp_path, gz):
    source = tiny.write(tmp_path / "mine", gz=gz)
    loaded = _load(tiny.spec(), tmp_path / "cache", source, download=False)
    tiny.check(loaded)
    suffix = ".gz" if gz else ""
    assert loaded.sources == tuple(str(source / f"{name}{suffix}") for name in NAMES)
    assert (loaded.num_train, loaded.num_test) == (12, 5)


def test_truncated_gz_in_explicit_dir_raises(tiny, tmp_path):
    source = tiny.write(tmp_path / "mine", gz=True)
    target = source / f"{NAMES[0]}.gz"
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="truncated or corrupt gzip") as caught:
        _load(tiny.spec(), tmp_path / "cache", source, download=False)
    assert str(target) in str(caught.value)


@pytest.mark.parametrize("layout", ["two-members", "zero-padded", "trailing-garbage"])
def test_gz_members_and_padding_are_read_like_gzip_does(tiny, tmp_path, layout):
    source = tiny.write(tmp_path / "mine", gz=True)
    content = tiny.contents[NAMES[0]]
    (source / f"{NAMES[0]}.gz").write_bytes(
        {
            "two-members": _gzip(content[:1000]) + _gzip(content[1000:]),
            "zero-padded": _gzip(content) + bytes(512),
            "trailing-garbage": _gzip(content) + b"junk",
        }[layout]
    )
    if layout == "trailing-garbage":
        with pytest.raises(CorruptFileError, match="truncated or corrupt gzip"):
            _load(tiny.spec(), tmp_path / "cache", source, download=False)
    else:
        tiny.check(_load(tiny.spec(), tmp_path / "cache", source, download=False))


def test_checksum_mismatch_in_explicit_dir_names_file_hashes_and_place(tiny, tmp_path):
    source = tiny.write(tmp_path / "mine")
    bad = _corrupt(tiny.contents[NAMES[2]])
    (source / NAMES[2]).write_bytes(bad)
    spec = tiny.spec()
    with pytest.raises(ChecksumError) as caught:
        _load(spec, tmp_path / "cache", source, download=False)
    message = str(caught.value)
    assert NAMES[2] in message
    assert str(source / NAMES[2]) in message
    assert _sha256(bad) in message
    assert spec.test_images.sha256 in message


def test_debian_recompressed_copy_is_accepted(tiny, tmp_path):
    upstream = tiny.write(tmp_path / "upstream", gz=True, level=9, mtime=1_500_000_000)
    debian = tiny.write(tmp_path / "debian", gz=True, level=1, mtime=1_591_000_000)
    for name in NAMES:
        assert (upstream / f"{name}.gz").read_bytes() != (debian / f"{name}.gz").read_bytes()
    tiny.check(_load(tiny.spec(debian_dir=upstream), tmp_path / "cache1", download=False))
    loaded = _load(tiny.spec(debian_dir=debian), tmp_path / "cache2", download=False)
    tiny.check(loaded)
    assert loaded.sources == tuple(str(debian / f"{name}.gz") for name in NAMES)


PLACES = ("explicit", "env", "cache", "debian", "download")


@pytest.mark.parametrize("first", PLACES)
def test_search_order(tiny, tmp_path, monkeypatch, server, first):
    """Explicit dir > $FMBENCH_DATA_DIR > cache > Debian dir > download: the first one wins."""
    dirs = {
        "explicit": tmp_path / "explicit",
        "env": tmp_path / "env",
        "cache": tmp_path / "cache" / "tiny-fashion",
        "debian": tmp_path / "debian",
    }
    present = PLACES[PLACES.index(first) :]
    for place, directory in dirs.items():
        directory.mkdir(parents=True)
        if place in present:
            tiny.write(directory, gz=place == "debian")
    monkeypatch.setenv("FMBENCH_DATA_DIR", str(dirs["env"]))
    mirror = server.serve("m", tiny.contents)
    spec = tiny.spec(mirrors=(mirror,), debian_dir=dirs["debian"])
    loaded = _load(spec, tmp_path / "cache", dirs["explicit"])
    tiny.check(loaded)
    if first == "download":
        expected = tuple(f"{mirror}{name}.gz" for name in NAMES)
    else:
        suffix = ".gz" if first == "debian" else ""
        expected = tuple(str(dirs[first] / f"{name}{suffix}") for name in NAMES)
    assert loaded.sources == expected
    assert server.requests == ([f"/m/{name}.gz" for name in NAMES] if first == "download" else [])


def test_gz_source_is_cached_decompressed_and_next_load_reads_cache(tiny, tmp_path):
    debian = tiny.write(tmp_path / "debian", gz=True)
    spec = tiny.spec(debian_dir=debian)
    first = _load(spec, tmp_path / "cache", download=False)
    assert first.sources == tuple(str(debian / f"{name}.gz") for name in NAMES)
    home = tmp_path / "cache" / "tiny-fashion"
    assert _files_under(home) == sorted(NAMES)
    for name in NAMES:
        assert (home / name).read_bytes() == tiny.contents[name]
        # the cache gets the umask's permissions, not mkstemp's owner-only 0600
        assert (home / name).stat().st_mode & 0o777 == 0o666 & ~_umask()
    second = _load(spec, tmp_path / "cache", download=False)
    tiny.check(second)
    assert second.sources == tuple(str(home / name) for name in NAMES)


def test_gzipped_copy_in_cache_is_decompressed_beside_it(tiny, tmp_path):
    home = tiny.write(tmp_path / "cache" / "tiny-fashion", gz=True)
    tiny.check(_load(tiny.spec(), tmp_path / "cache", download=False))
    second = _load(tiny.spec(), tmp_path / "cache", download=False)
    assert second.sources == tuple(str(home / name) for name in NAMES)


@pytest.mark.parametrize("replacement", ["debian", "download"])
def test_corrupt_cached_file_is_replaced_by_verified_copy(tiny, tmp_path, server, replacement):
    home = tiny.write(tmp_path / "cache" / "tiny-fashion")
    (home / NAMES[0]).write_bytes(_corrupt(tiny.contents[NAMES[0]]))
    (home / NAMES[3]).write_bytes(tiny.contents[NAMES[3]][:-1])  # truncated as well
    debian = tiny.write(tmp_path / "debian", gz=True) if replacement == "debian" else None
    mirror = server.serve("m", tiny.contents)
    loaded = _load(tiny.spec(mirrors=(mirror,), debian_dir=debian), tmp_path / "cache")
    tiny.check(loaded)
    fresh = str(debian / f"{NAMES[0]}.gz") if debian else f"{mirror}{NAMES[0]}.gz"
    assert loaded.sources[0] == fresh
    assert loaded.sources[1:3] == (str(home / NAMES[1]), str(home / NAMES[2]))
    assert loaded.sources[3] == fresh.replace(NAMES[0], NAMES[3])
    assert _files_under(home) == sorted(NAMES)
    for name in NAMES:
        assert (home / name).read_bytes() == tiny.contents[name]


def test_corrupt_cached_file_is_removed_even_when_the_next_source_is_not_cached(tiny, tmp_path):
    home = tiny.write(tmp_path / "cache" / "tiny-fashion")
    (home / NAMES[2]).write_bytes(_corrupt(tiny.contents[NAMES[2]]))
    debian = tiny.write(tmp_path / "debian")  # decompressed: read in place, not copied
    loaded = _load(tiny.spec(debian_dir=debian), tmp_path / "cache", download=False)
    tiny.check(loaded)
    assert loaded.sources[2] == str(debian / NAMES[2])
    assert not (home / NAMES[2]).exists()


def test_corrupt_cached_file_with_nowhere_else_to_go_is_removed_and_reported(tiny, tmp_path):
    home = tiny.write(tmp_path / "cache" / "tiny-fashion")
    (home / NAMES[0]).write_bytes(_corrupt(tiny.contents[NAMES[0]]))
    with pytest.raises(DatasetNotFoundError) as caught:
        _load(tiny.spec(), tmp_path / "cache", download=False)
    assert f"cache: removed bad copy: {NAMES[0]} from {home / NAMES[0]}" in str(caught.value)
    assert _files_under(home) == sorted(NAMES[1:])


@pytest.mark.parametrize("how", ["argument", "env"])
def test_corrupt_file_in_explicit_dir_raises_rather_than_being_skipped(
    tiny, tmp_path, monkeypatch, how
):
    tiny.write(tmp_path / "cache" / "tiny-fashion")  # a good copy the loader must not fall back to
    mine = tiny.write(tmp_path / "mine")
    (mine / NAMES[1]).write_bytes(_corrupt(tiny.contents[NAMES[1]]))
    if how == "env":
        monkeypatch.setenv("FMBENCH_DATA_DIR", str(mine))
    with pytest.raises(ChecksumError, match=str(mine / NAMES[1])):
        _load(tiny.spec(), tmp_path / "cache", mine if how == "argument" else None)


def test_nothing_anywhere_without_download_lists_every_place(tiny, tmp_path, monkeypatch):
    mine, env, debian = (tmp_path / d for d in ("mine", "env", "debian"))
    for directory in (mine, env, debian):
        directory.mkdir()
    monkeypatch.setenv("FMBENCH_DATA_DIR", str(env))
    with pytest.raises(DatasetNotFoundError) as caught:
        _load(tiny.spec(debian_dir=debian), tmp_path / "cache", mine, download=False)
    message = str(caught.value)
    for place in (mine, env, tmp_path / "cache" / "tiny-fashion", debian):
        assert f"{place}: not there" in message
    assert "download: not allowed (download=False)" in message
    assert "apt-get install dataset-fashion-mnist" in message


# ------------------------------------------------------------------ downloads


def test_download_then_cache_serves_the_next_load(tiny, tmp_path, server):
    mirror = server.serve("m", tiny.contents)
    spec = tiny.spec(mirrors=(mirror,))
    first = _load(spec, tmp_path / "cache")
    tiny.check(first)
    assert first.sources == tuple(f"{mirror}{name}.gz" for name in NAMES)
    home = tmp_path / "cache" / "tiny-fashion"
    assert _files_under(home) == sorted(NAMES)
    second = _load(spec, tmp_path / "cache", download=False)
    tiny.check(second)
    assert second.sources == tuple(str(home / name) for name in NAMES)
    assert len(server.requests) == 4  # the second load asked for nothing


def test_mirror_404_falls_through_to_second_mirror(tiny, tmp_path, server):
    broken = server.url("gone")  # serves nothing: every file is a 404
    good = server.serve("good", tiny.contents)
    loaded = _load(tiny.spec(mirrors=(broken, good)), tmp_path / "cache", retries=2)
    tiny.check(loaded)
    assert loaded.sources == tuple(f"{good}{name}.gz" for name in NAMES)
    for name in NAMES:
        assert server.count(f"/gone/{name}.gz") == 1  # a 404 is not retried
        assert server.count(f"/good/{name}.gz") == 1


@pytest.mark.parametrize(
    "statuses", [(500, 503), (429, 408)], ids=["server-errors", "try-again-4xx"]
)
def test_transient_http_error_is_retried(tiny, tmp_path, server, statuses):
    mirror = server.serve("m", tiny.contents)
    path = f"/m/{NAMES[0]}.gz"
    server.plan(path, *(Reply(status=status) for status in statuses))
    loaded = _load(tiny.spec(mirrors=(mirror,)), tmp_path / "cache", retries=2)
    tiny.check(loaded)
    assert loaded.sources[0] == f"{mirror}{NAMES[0]}.gz"
    assert server.count(path) == 3


def test_answer_slower_than_timeout_is_retried(tiny, tmp_path, server):
    mirror = server.serve("m", tiny.contents)
    path = f"/m/{NAMES[1]}.gz"
    server.plan(path, Reply(delay=1.0))
    start = time.monotonic()
    loaded = _load(tiny.spec(mirrors=(mirror,)), tmp_path / "cache", timeout=0.3, retries=1)
    tiny.check(loaded)
    assert loaded.sources[1] == f"{mirror}{NAMES[1]}.gz"
    assert server.count(path) == 2
    assert time.monotonic() - start < 0.9  # the second try did not wait for the first answer


def test_short_body_is_retried(tiny, tmp_path, server):
    mirror = server.serve("m", tiny.contents)
    path = f"/m/{NAMES[0]}.gz"
    whole = server.files[path]
    server.plan(path, Reply(body=whole[: len(whole) // 2], declared_length=len(whole)))
    tiny.check(_load(tiny.spec(mirrors=(mirror,)), tmp_path / "cache", retries=1))
    assert server.count(path) == 2


def test_every_mirror_failing_gives_one_error_listing_urls_places_and_fixes(tiny, tmp_path, server):
    first, second = server.url("a"), server.url("b")
    for name in NAMES:
        server.plan(f"/b/{name}.gz", *[Reply(status=500)] * 3)
    debian = tmp_path / "debian"
    mine = tiny.write(tmp_path / "mine")
    (mine / NAMES[0]).unlink()
    spec = tiny.spec(mirrors=(first, second), debian_dir=debian)
    with pytest.raises(DatasetNotFoundError) as caught:
        _load(spec, tmp_path / "cache", mine, retries=1)
    message = str(caught.value)
    assert f"no verified copy of {NAMES[0]}" in message
    assert f"{first}{NAMES[0]}.gz: HTTP 404" in message
    assert f"{second}{NAMES[0]}.gz: HTTP 500" in message
    assert "(2 attempts)" in message
    for place in (mine, tmp_path / "cache" / "tiny-fashion", debian):
        assert str(place) in message
    assert "connect to the internet" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message
    assert "$FMBENCH_DATA_DIR" in message
    assert _files_under(tmp_path / "cache") == []


def test_server_that_never_answers_times_out(tiny, tmp_path, silent_url):
    start = time.monotonic()
    with pytest.raises(DatasetNotFoundError) as caught:
        _load(tiny.spec(mirrors=(silent_url,)), tmp_path / "cache", timeout=0.5, retries=0)
    elapsed = time.monotonic() - start
    assert 0.4 < elapsed < 3.0
    assert f"{silent_url}{NAMES[0]}.gz: no answer within the 0.5 s timeout" in str(caught.value)


@pytest.mark.parametrize(
    ("mirror", "failure"),
    [  # a server that answers garbage may recover, so it is retried; a malformed URL is not
        (None, r"BadStatusLine\('SSH-2\.0.*'\) \(3 attempts\)"),
        ("http://127.0.0.1:notaport/", r"invalid URL \([^()]*notaport[^()]*\)"),
        ("gopher://127.0.0.1/", r"invalid URL \([^()]*gopher://[^()]*\)"),
    ],
    ids=["not-http", "bad-port", "unknown-scheme"],
)
def test_broken_mirror_is_a_reported_failure_not_a_crash(
    tiny, tmp_path, server, garbage_url, mirror, failure
):
    broken = mirror or garbage_url
    good = server.serve("good", tiny.contents)
    spec = tiny.spec(mirrors=(broken, good))
    tiny.check(_load(spec, tmp_path / "cache", retries=0))  # the next mirror still serves it
    with pytest.raises(DatasetNotFoundError) as caught:
        _load(tiny.spec(mirrors=(broken,)), tmp_path / "cache2", retries=2)
    [line] = [line for line in str(caught.value).splitlines() if line.startswith("  download")]
    assert re.fullmatch(rf"  download {re.escape(broken)}{NAMES[0]}\.gz: {failure}", line), line


@pytest.mark.parametrize(
    "broken",
    ["short-body", "truncated-gzip", "wrong-checksum", "not-gzip-nor-idx"],
)
def test_failed_download_leaves_nothing_in_cache(tiny, tmp_path, server, broken):
    mirror = server.serve("m", tiny.contents)
    path = f"/m/{NAMES[0]}.gz"
    whole = server.files[path]
    reply = {
        "short-body": Reply(body=whole[:-50], declared_length=len(whole)),
        "truncated-gzip": Reply(body=whole[:-50]),
        "wrong-checksum": Reply(body=_gzip(_corrupt(tiny.contents[NAMES[0]]))),
        "not-gzip-nor-idx": Reply(body=b"<html>captive portal</html>"),
    }[broken]
    server.plan(path, reply, reply)
    expected = {
        "short-body": r"connection broken mid-body \(IncompleteRead\(",
        "truncated-gzip": "truncated or corrupt gzip",
        "wrong-checksum": "SHA-256 of the decompressed content",
        "not-gzip-nor-idx": "bad IDX magic",
    }[broken]
    with pytest.raises(DatasetNotFoundError, match=expected):
        _load(tiny.spec(mirrors=(mirror,)), tmp_path / "cache", retries=1)
    assert _files_under(tmp_path / "cache") == []


def test_interrupt_while_writing_cache_leaves_no_partial_file(tiny, tmp_path, server, monkeypatch):
    mirror = server.serve("m", tiny.contents)

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _load(tiny.spec(mirrors=(mirror,)), tmp_path / "cache")
    assert server.count(f"/m/{NAMES[0]}.gz") == 1  # it got as far as writing
    assert _files_under(tmp_path / "cache") == []


class _Terminal(io.StringIO):
    """A stand-in for stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "not-a-terminal"])
def test_progress_bar_only_on_a_terminal(tiny, server, monkeypatch, terminal):
    pytest.importorskip("tqdm")  # the bar's optional dependency
    mirror = server.serve("m", tiny.contents)
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    body = download(f"{mirror}{NAMES[0]}.gz", timeout=TIMEOUT, retries=0)
    assert body == server.files[f"/m/{NAMES[0]}.gz"]
    if terminal:
        assert "100%|" in stderr.getvalue()  # tqdm's bar, filled
        assert "B/s]" in stderr.getvalue()  # and its byte rate
    else:
        assert stderr.getvalue() == ""


_LOAD_FROM_DISK = """
import json, sys
from impls.data import DatasetSpec, IdxFile, load_fashion_mnist
args = json.loads(sys.argv[1])
files = [IdxFile(name, sha, kind) for name, sha, kind in args["files"]]
spec = DatasetSpec("tiny-fashion", *files, mirrors=(), debian_dir=None)
load_fashion_mnist(args["dir"], cache_dir=args["cache"], spec=spec, download=False)
print(json.dumps(sorted(name for name in ("pooch", "requests", "tqdm") if name in sys.modules)))
"""


def test_loading_from_disk_does_not_import_the_downloader(tiny, tmp_path):
    """pooch, requests and tqdm (~60 ms of start-up) are imported by the first download only."""
    spec = tiny.spec()
    args = {
        "files": [(f.name, f.sha256, f.kind) for f in spec.files],
        "dir": str(tiny.write(tmp_path / "mine", gz=True)),
        "cache": str(tmp_path / "cache"),
    }
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_FROM_DISK, json.dumps(args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


_CONCURRENT_LOAD = """
import hashlib, json, sys
from pathlib import Path
from impls.data import DatasetSpec, IdxFile, load_fashion_mnist
args = json.loads(sys.argv[1])
files = [IdxFile(name, sha, kind) for name, sha, kind in args["files"]]
spec = DatasetSpec("tiny-fashion", *files, mirrors=(args["mirror"],), debian_dir=None)
loaded = load_fashion_mnist(cache_dir=args["cache"], spec=spec, timeout=10, retries=0)
arrays = (loaded.train_images, loaded.train_labels, loaded.test_images, loaded.test_labels)
print(json.dumps({"sources": loaded.sources,
                  "digests": [hashlib.sha256(a.tobytes()).hexdigest() for a in arrays]}))
"""


def test_two_processes_loading_into_empty_cache(tiny, tmp_path, server):
    mirror = server.serve("m", tiny.contents)
    for name in NAMES:  # each file is sent only once both processes are asking for it
        server.barriers[f"/m/{name}.gz"] = threading.Barrier(2, timeout=20)
    spec = tiny.spec(mirrors=(mirror,))
    args = json.dumps(
        {
            "files": [(f.name, f.sha256, f.kind) for f in spec.files],
            "mirror": mirror,
            "cache": str(tmp_path / "cache"),
        }
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMBENCH_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT_LOAD, args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    first, second = (json.loads(out) for out, _ in outputs)
    assert first["digests"] == second["digests"]
    arrays = [
        tiny.arrays[name].astype(np.int64 if "labels" in name else np.uint8) for name in NAMES
    ]
    assert first["digests"] == [hashlib.sha256(a.tobytes()).hexdigest() for a in arrays]
    assert first["sources"] == second["sources"] == [f"{mirror}{name}.gz" for name in NAMES]
    assert all(server.count(f"/m/{name}.gz") == 2 for name in NAMES)
    home = tmp_path / "cache" / "tiny-fashion"
    assert _files_under(tmp_path / "cache") == sorted(f"tiny-fashion/{name}" for name in NAMES)
    for name in NAMES:
        assert (home / name).read_bytes() == tiny.contents[name]


# ------------------------------------------ faults: a verified copy in hand is never lost


def _cache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The loader's warning lines (logger ``impls.fetch``), each checked to be one line."""
    lines = [r.getMessage() for r in caplog.records if r.name == "impls.fetch"]
    assert all("\n" not in line and line.startswith("fmbench: warning: ") for line in lines)
    return lines


def _raise(error: OSError):
    def fail(*args, **kwargs):
        raise error

    return fail


CACHE_FAULTS = ("cache-is-a-file", "env-names-a-file", "entry-is-a-dir", "no-permission")
CACHE_FAULTS += ("disk-full", "read-only-fs")


@pytest.mark.parametrize("source", ["gzipped-dir", "download"])
@pytest.mark.parametrize("fault", CACHE_FAULTS)
def test_unwritable_cache_costs_one_warning_not_the_load(
    tiny, tmp_path, server, monkeypatch, caplog, fault, source
):
    """Root ignores permission bits: each fault is one that root meets too, or an injected one."""
    caplog.set_level(logging.WARNING, logger="impls.fetch")
    cache = tmp_path / "cache"
    home = cache / "tiny-fashion"
    expected_error = {
        "cache-is-a-file": "Not a directory",
        "env-names-a-file": "Not a directory",
        "entry-is-a-dir": "Is a directory",
        "no-permission": "Permission denied",
        "disk-full": "No space left on device",
        "read-only-fs": "Read-only file system",
    }[fault]
    if fault in ("cache-is-a-file", "env-names-a-file"):
        cache.write_bytes(b"not a directory")
    else:
        (home / NAMES[0]).mkdir(parents=True)
        (home / NAMES[0] / "stray").write_bytes(b"")
    if fault == "env-names-a-file":
        monkeypatch.setenv("FMBENCH_CACHE_DIR", str(cache))
    for name, code, call in [
        ("no-permission", errno.EACCES, (tempfile, "mkstemp")),
        ("disk-full", errno.ENOSPC, (os, "fsync")),
        ("read-only-fs", errno.EROFS, (os, "replace")),
    ]:
        if fault == name:
            monkeypatch.setattr(*call, _raise(OSError(code, os.strerror(code))))
    mirror = server.serve("m", tiny.contents)
    mine = tiny.write(tmp_path / "mine", gz=True) if source == "gzipped-dir" else None
    spec = tiny.spec(mirrors=(mirror,))
    cache_dir = None if fault == "env-names-a-file" else cache
    files = fetch(mine, cache_dir=cache_dir, spec=spec, timeout=TIMEOUT, retries=0)
    for name in NAMES:
        np.testing.assert_array_equal(files[name].array, tiny.arrays[name])
        if source == "download":
            assert files[name].origin == f"{mirror}{name}.gz"
            assert files[name].path is None  # nothing local holds it
        else:
            assert files[name].path == mine / f"{name}.gz"
    [line] = _cache_warnings(caplog)  # one line for the whole load, not one per file
    assert f"cannot write {home / NAMES[0]}" in line
    assert expected_error in line
    assert "FMBENCH_CACHE_DIR" in line and f"make {home} a writable directory" in line
    assert not [p for p in tmp_path.rglob("*.part")]  # no temporary file left behind


@pytest.mark.parametrize("failing", ["fchmod", "write", "fsync", "replace"])
def test_atomic_write_that_fails_closes_its_file_and_leaves_the_target(
    failing, tmp_path, monkeypatch
):
    from impls.files import write_atomically

    target = tmp_path / "cache" / NAMES[0]
    target.parent.mkdir()
    target.write_bytes(b"the earlier copy")
    opened: list[int] = []
    real_mkstemp = tempfile.mkstemp

    def recording_mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        opened.append(fd)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", recording_mkstemp)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(file) -> None:
        file.write(b"the new ")
        if failing == "write":
            raise full
        file.write(b"copy")

    if failing != "write":
        monkeypatch.setattr(os, failing, _raise(full))
    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, write)
    (fd,) = opened
    with pytest.raises(OSError) as closed:
        os.fstat(fd)  # the temporary file's descriptor is closed, whatever failed
    assert closed.value.errno == errno.EBADF
    assert target.read_bytes() == b"the earlier copy"
    assert _files_under(tmp_path) == [f"cache/{NAMES[0]}"]


def test_atomic_write_replaces_the_target_with_umask_permissions(tmp_path):
    from impls.files import write_atomically

    target = tmp_path / "new" / "folder" / "history.json"
    assert write_atomically(target, lambda file: file.write(b"{}")) == target
    assert target.read_bytes() == b"{}"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    write_atomically(target, lambda file: file.write(b"[]"))
    assert target.read_bytes() == b"[]" and _files_under(tmp_path) == ["new/folder/history.json"]


_LOAD_WITH_WARNINGS = """
import json, sys
from impls.data import DatasetSpec, IdxFile, load_fashion_mnist
args = json.loads(sys.argv[1])
files = [IdxFile(name, sha, kind) for name, sha, kind in args["files"]]
spec = DatasetSpec("tiny-fashion", *files, mirrors=(), debian_dir=None)
loaded = load_fashion_mnist(args["dir"], spec=spec, download=False)
print(loaded.num_train)
"""


def test_unwritable_cache_is_one_line_on_stderr_in_a_plain_process(tiny, tmp_path):
    """No logging set up (as in ``fmbench data``): the warning is one bare line, no traceback."""
    spec = tiny.spec()
    (tmp_path / "cache").write_bytes(b"")
    args = {"files": [(f.name, f.sha256, f.kind) for f in spec.files]}
    args["dir"] = str(tiny.write(tmp_path / "mine", gz=True))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMBENCH_")}
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_WITH_WARNINGS, json.dumps(args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**env, "FMBENCH_CACHE_DIR": str(tmp_path / "cache")},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "12\n"
    [line] = result.stderr.splitlines()
    assert line.startswith(f"fmbench: warning: cannot write {tmp_path / 'cache'}")


@pytest.mark.parametrize("fault", ["missing", "a-file", "no-permission"])
@pytest.mark.parametrize("how", ["argument", "env"])
def test_explicit_dir_that_is_not_readable_is_a_data_dir_error(
    tiny, tmp_path, monkeypatch, how, fault
):
    """``--data-dir`` and ``$FMBENCH_DATA_DIR`` fail alike: the CLI makes it a usage error."""
    tiny.write(tmp_path / "cache" / "tiny-fashion")  # a good copy that must not hide the mistake
    place = tmp_path / "mine"
    if fault == "a-file":
        place.write_bytes(b"")
    elif fault == "no-permission":
        tiny.write(place).chmod(0)
        real_access = os.access
        if os.geteuid() == 0:  # root reads it anyway: answer as the bits say for anyone else

            def access(path, mode, **kwargs):
                if Path(path) == place:
                    return False
                return real_access(path, mode, **kwargs)

            monkeypatch.setattr(os, "access", access)
    if how == "env":
        monkeypatch.setenv("FMBENCH_DATA_DIR", str(place))
    label = "--data-dir" if how == "argument" else r"\$FMBENCH_DATA_DIR"
    try:
        with pytest.raises(DataDirError, match=rf"^{label} {place} is not a readable directory$"):
            _load(tiny.spec(), tmp_path / "cache", place if how == "argument" else None)
    finally:
        if place.is_dir():
            place.chmod(0o755)


def _gzip_bomb(size: int = 16 << 20) -> bytes:
    """``size`` zero bytes, gzipped: about a thousandth of that on the wire."""
    return _gzip(bytes(size), level=9)


@pytest.mark.parametrize("poison", ["checksum", "truncated", "gzip-bomb"])
def test_bad_cached_copy_is_deleted_with_one_warning_naming_it(tiny, tmp_path, caplog, poison):
    caplog.set_level(logging.WARNING, logger="impls.fetch")
    home = tiny.write(tmp_path / "cache" / "tiny-fashion")
    bad = home / (f"{NAMES[0]}.gz" if poison == "gzip-bomb" else NAMES[0])
    bad.write_bytes(
        {
            "checksum": _corrupt(tiny.contents[NAMES[0]]),
            "truncated": tiny.contents[NAMES[0]][:-1],
            "gzip-bomb": _gzip_bomb(),
        }[poison]
    )
    if poison == "gzip-bomb":
        (home / NAMES[0]).unlink()
    debian = tiny.write(tmp_path / "debian", gz=True)
    loaded = _load(tiny.spec(debian_dir=debian), tmp_path / "cache", download=False)
    tiny.check(loaded)
    assert loaded.sources[0] == str(debian / f"{NAMES[0]}.gz")
    [line] = _cache_warnings(caplog)
    assert line.startswith("fmbench: warning: deleted a bad cached copy: ")
    assert str(bad) in line
    why = {
        "checksum": "SHA-256 of the decompressed content is",
        "truncated": "truncated: 9407 bytes of data",
        "gzip-bomb": "decompresses to over the 13,520-byte cap",
    }[poison]
    assert why in line
    assert _files_under(home) == sorted(NAMES)  # the bad copy replaced by a verified one
    assert (home / NAMES[0]).read_bytes() == tiny.contents[NAMES[0]]


@pytest.mark.parametrize("fallback", [True, False], ids=["fallback", "no-fallback"])
def test_bad_cached_copy_that_cannot_be_deleted_is_passed_over(
    tiny, tmp_path, monkeypatch, caplog, fallback
):
    caplog.set_level(logging.WARNING, logger="impls.fetch")
    home = tiny.write(tmp_path / "cache" / "tiny-fashion")
    bad = home / NAMES[2]
    bad.write_bytes(_corrupt(tiny.contents[NAMES[2]]))
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.parent == home:  # the cache refuses: a read-only directory
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    debian = tiny.write(tmp_path / "debian", gz=True) if fallback else None
    if fallback:
        loaded = _load(tiny.spec(debian_dir=debian), tmp_path / "cache", download=False)
        tiny.check(loaded)
        assert loaded.sources[2] == str(debian / f"{NAMES[2]}.gz")
    else:
        with pytest.raises(DatasetNotFoundError) as caught:
            _load(tiny.spec(), tmp_path / "cache", download=False)
        assert f"cache: bad copy left in place ([Errno {errno.EACCES}]" in str(caught.value)
    [line] = _cache_warnings(caplog)
    assert f"cannot delete a bad cached copy ([Errno {errno.EACCES}] Permission denied" in line
    assert f"{NAMES[2]} from {bad}: SHA-256" in line
    assert bad.read_bytes() == _corrupt(tiny.contents[NAMES[2]])  # still there, and said so


@pytest.mark.parametrize("where", ["explicit-dir", "debian", "download"])
def test_gzip_bomb_is_refused_at_the_cap_without_filling_memory(tiny, tmp_path, server, where):
    bomb = _gzip_bomb()
    spec = tiny.spec()
    cap = spec.train_images.max_bytes
    assert cap == len(tiny.contents[NAMES[0]]) + 4096 == 13_520
    mine = debian = None
    mirrors: tuple[str, ...] = ()
    if where == "download":
        mirrors = (server.serve("m", tiny.contents),)
        server.files[f"/m/{NAMES[0]}.gz"] = bomb
        culprit = f"{mirrors[0]}{NAMES[0]}.gz"
    else:
        directory = tiny.write(tmp_path / where, gz=True)
        (directory / f"{NAMES[0]}.gz").write_bytes(bomb)
        mine, debian = (directory, None) if where == "explicit-dir" else (None, directory)
        culprit = str(directory / f"{NAMES[0]}.gz")
    import pooch  # noqa: F401  (imported before measuring: its import is not the load's memory)

    tracemalloc.start()
    try:
        with pytest.raises(DataError) as caught:
            _load(tiny.spec(mirrors=mirrors, debian_dir=debian), tmp_path / "cache", mine)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert type(caught.value) is (
        CorruptFileError if where == "explicit-dir" else DatasetNotFoundError
    )
    assert f"{culprit}: decompresses to over the 13,520-byte cap for {NAMES[0]}" in str(
        caught.value
    )
    assert peak < 4 << 20  # the bomb holds 16 MiB: it was never inflated


def test_oversized_download_is_cut_off_at_the_cap_and_not_retried(tiny, tmp_path, server):
    huge, good = server.url("huge"), server.serve("good", tiny.contents)
    path = f"/huge/{NAMES[0]}.gz"
    server.files[path] = b"\x1f\x8b" + bytes(4 << 20)  # 4 MiB, of which the cap reads ~27 KiB
    spec = tiny.spec(mirrors=(huge, good))
    cap = spec.train_images.max_raw_bytes
    assert cap == 2 * 13_520
    loaded = _load(spec, tmp_path / "cache", retries=2)
    tiny.check(loaded)
    assert loaded.sources[0] == f"{good}{NAMES[0]}.gz"
    assert server.count(path) == 1  # a body over the cap is not asked for again
    with pytest.raises(DatasetNotFoundError) as caught:
        _load(tiny.spec(mirrors=(huge,)), tmp_path / "cache2", retries=2)
    assert f"download {huge}{NAMES[0]}.gz: the body passed the {cap:,}-byte cap; refused" in str(
        caught.value
    )


def test_oversized_local_file_is_refused_unread(tiny, tmp_path):
    mine = tiny.write(tmp_path / "mine")
    (mine / NAMES[1]).write_bytes(tiny.contents[NAMES[1]] + bytes(1 << 20))
    cap = tiny.spec().train_labels.max_raw_bytes
    with pytest.raises(CorruptFileError) as caught:
        _load(tiny.spec(), tmp_path / "cache", mine)
    message = str(caught.value)
    assert f"{mine / NAMES[1]}: {len(tiny.contents[NAMES[1]]) + (1 << 20):,} bytes" in message
    assert f"over the {cap:,}-byte cap for {NAMES[1]}; not read" in message


def test_fashion_mnist_sizes_are_what_the_idx_headers_declare():
    examples = {"train": 60_000, "t10k": 10_000}
    for spec in FASHION_MNIST.files:
        n = examples[spec.name.split("-")[0]]
        header = 4 + 4 * spec.ndim
        assert spec.size == header + n * (28 * 28 if spec.kind == "images" else 1)
    assert [f.size for f in FASHION_MNIST.files] == [47_040_016, 60_008, 7_840_016, 10_008]


def test_mirrors_try_https_before_plain_http():
    schemes = [mirror.split("://")[0] for mirror in FASHION_MNIST.mirrors]
    assert schemes == sorted(schemes, key=lambda scheme: scheme != "https")
    assert schemes[0] == "https"
    assert "http" in schemes  # the plain-http mirror stays as a fallback
