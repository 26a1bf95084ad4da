"""The loader's public face (impls.data): arrays, constants, re-exports, the minibatch order.

Finding and downloading the files is tested in ``test_fetch.py``, the IDX format
in ``test_idx.py``; the ``real_data`` tests compare the arrays with torchvision.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest

from impls import data, idx, resize_cache
from impls import fetch as fetching
from impls.data import (
    CLASS_NAMES,
    FASHION_MNIST,
    CorruptFileError,
    DatasetSpec,
    IdxFile,
    MinibatchOrder,
    batch_bounds,
    check_order,
    class_names,
    encode_idx,
    fetch,
    load_fashion_mnist,
    resize_images,
    split_batches,
    to_float32,
)

NAMES = tuple(f.name for f in FASHION_MNIST.files)


@pytest.fixture(autouse=True)
def _no_ambient_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's own data directory or cache."""
    monkeypatch.delenv("FMBENCH_DATA_DIR", raising=False)
    monkeypatch.delenv("FMBENCH_CACHE_DIR", raising=False)


def _write_dataset(directory: Path, n_train: int = 12, n_labels: int = 12) -> DatasetSpec:
    """Four small IDX files in ``directory`` (5 test examples); the spec that accepts them."""
    rng = np.random.default_rng(7)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_labels, dtype=np.uint8),
        rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 5, dtype=np.uint8),
    )
    directory.mkdir(parents=True)
    files = []
    for name, kind, array in zip(NAMES, ("images", "labels") * 2, arrays, strict=True):
        content = encode_idx(array)
        (directory / name).write_bytes(content)
        files.append(IdxFile(name, hashlib.sha256(content).hexdigest(), kind))
    return DatasetSpec("tiny-fashion", *files, mirrors=(), debian_dir=None)


# ------------------------------------------------------------------ the loader


def test_load_resize_gives_resized_images(tmp_path):
    spec = _write_dataset(tmp_path / "mine")
    plain = load_fashion_mnist(tmp_path / "mine", cache_dir=tmp_path / "cache", spec=spec)
    loaded = load_fashion_mnist(
        tmp_path / "mine", cache_dir=tmp_path / "cache", spec=spec, resize=14
    )
    assert loaded.train_images.shape == (12, 14, 14)
    assert loaded.test_images.shape == (5, 14, 14)
    np.testing.assert_array_equal(loaded.train_images, resize_images(plain.train_images, 14))
    np.testing.assert_array_equal(loaded.train_labels, plain.train_labels)


def _tiny(seed: int = 3) -> data.FashionMNIST:
    rng = np.random.default_rng(seed)
    return data.FashionMNIST(
        train_images=rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        train_labels=np.arange(6, dtype=np.int64) % 10,
        test_images=rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        test_labels=np.arange(2, dtype=np.int64),
    )


def _no_resizing(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, a resize must come from the cache: computing one fails the test."""

    def refuse(images, size):
        raise AssertionError("resized again instead of read from the cache")

    monkeypatch.setattr(resize_cache, "resize_images", refuse)


def test_at_size_resizes_once_then_reads_the_cache(tmp_path, monkeypatch):
    native = _tiny()
    first = native.at_size(40, tmp_path)
    assert first.side == 40 and first.num_inputs == 1600 and first.original is native
    np.testing.assert_array_equal(first.test_images, resize_images(native.test_images, 40))
    np.testing.assert_array_equal(first.train_labels, native.train_labels)
    _no_resizing(monkeypatch)
    again = native.at_size(40, tmp_path)
    np.testing.assert_array_equal(again.train_images, first.train_images)
    assert native.at_size(None, tmp_path) is native and native.at_size(28, tmp_path) is native
    assert first.at_size(40, tmp_path) is first and first.at_size(None) is native


def test_cached_resizes_are_keyed_by_size_and_source_content(tmp_path):
    one, other = _tiny(3).train_images, _tiny(4).train_images
    paths = {
        resize_cache.cache_path(one, 40, tmp_path),
        resize_cache.cache_path(one, 41, tmp_path),
        resize_cache.cache_path(other, 40, tmp_path),
        resize_cache.cache_path(one[:5], 40, tmp_path),
    }
    assert len(paths) == 4
    assert resize_cache.cache_path(one.copy(), 40, tmp_path) in paths


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "not a zip", "wrong shape"])
def test_a_bad_cached_resize_is_recomputed_with_one_warning(tmp_path, caplog, damage):
    images = _tiny().train_images
    expected = resize_cache.cached_resize(images, 40, tmp_path)
    path = resize_cache.cache_path(images, 40, tmp_path)
    content = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(content[: len(content) // 2])
    elif damage == "flipped byte":
        with np.load(path) as stored:
            crc = stored["crc32"]
            flipped = stored["images"].copy()
        flipped[0, 0, 0] ^= 1
        np.savez(path, images=flipped, crc32=crc)
    elif damage == "not a zip":
        path.write_bytes(b"not a cached resize")
    else:
        np.savez(path, images=expected[:, :20], crc32=np.uint32(0))
    with caplog.at_level("WARNING"):
        again = resize_cache.cached_resize(images, 40, tmp_path)
    np.testing.assert_array_equal(again, expected)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "recomputing a bad cached resize" in warning and "\n" not in warning
    np.testing.assert_array_equal(resize_cache._read(path, expected.shape), expected)  # repaired


def test_an_unwritable_resize_cache_costs_time_only(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    images = _tiny().train_images
    with caplog.at_level("WARNING"):
        resized = resize_cache.cached_resize(images, 40, blocker)
    np.testing.assert_array_equal(resized, resize_images(images, 40))
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "cannot cache the resized images" in warning


def test_count_mismatch_between_images_and_labels(tmp_path):
    spec = _write_dataset(tmp_path / "mine", n_labels=11)  # 11 labels for 12 images
    with pytest.raises(CorruptFileError, match=f"{NAMES[0]} holds 12 images but {NAMES[1]} "):
        load_fashion_mnist(tmp_path / "mine", cache_dir=tmp_path / "cache", spec=spec)


REEXPORTED = {
    idx: ("DataError", "CorruptFileError", "ChecksumError", "IdxFile", "encode_idx", "verify"),
    fetching: (
        "DownloadError",
        "DatasetNotFoundError",
        "FASHION_MNIST",
        "fetch",
        "default_cache_dir",
    ),
}


@pytest.mark.parametrize("module", list(REEXPORTED), ids=lambda module: module.__name__)
def test_data_reexports_the_one_definition_of_each_name(module):
    for name in REEXPORTED[module]:
        assert getattr(data, name) is getattr(module, name), name
        assert name in data.__all__


@pytest.mark.parametrize(
    "error, status",
    [
        (idx.CorruptFileError, 1),
        (idx.ChecksumError, 1),
        (fetching.DownloadError, 1),
        (fetching.DatasetNotFoundError, 1),
        (fetching.DataDirError, 2),  # the user's --data-dir or $FMBENCH_DATA_DIR: a usage error
    ],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_every_loader_error_reaches_the_user_as_one_line(
    error, status, monkeypatch, capsys, tmp_path
):
    """Whatever the loader raises, ``fmbench`` says it in one line, without a traceback."""
    from impls import cli

    def load(*args, **kwargs):
        raise error("what went wrong, and what to do")

    monkeypatch.setattr(cli, "load_fashion_mnist", load)
    out = tmp_path / "run"
    assert cli.main(["train", "numpy", "--quiet", "--out", str(out)]) == status
    assert capsys.readouterr().err == "fmbench: error: what went wrong, and what to do\n"
    assert not out.exists()


# ---------------------------------------------------------------- minibatches


def test_epoch_cut_into_full_training_set_batches():
    order = MinibatchOrder(num_examples=60000, seed=0)
    batches = split_batches(order.epoch(0), 256)  # as every trainer cuts it
    assert len(batches) == 235
    assert [len(b) for b in batches[:-1]] == [256] * 234
    assert len(batches[-1]) == 96  # the last partial batch is kept
    np.testing.assert_array_equal(np.concatenate(batches), order.epoch(0))


@pytest.mark.parametrize("num_examples", [0, -1])
def test_minibatch_order_needs_an_example(num_examples):
    with pytest.raises(ValueError, match=f"at least one example, got {num_examples}"):
        MinibatchOrder(num_examples, seed=0)


def test_minibatch_order_every_index_once_and_new_permutation_each_epoch():
    order = MinibatchOrder(60000, seed=0)
    epochs = [order.epoch(e) for e in range(3)]
    for perm in epochs:
        assert perm.shape == (60000,)
        np.testing.assert_array_equal(np.sort(perm), np.arange(60000))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.arange(60000))


def test_minibatch_order_same_seed_same_order_other_seed_differs():
    a = MinibatchOrder(60000, seed=0)
    b = MinibatchOrder(60000, seed=0)
    other = MinibatchOrder(60000, seed=1)
    for epoch in (0, 5):
        np.testing.assert_array_equal(a.epoch(epoch), b.epoch(epoch))
        assert not np.array_equal(a.epoch(epoch), other.epoch(epoch))


def test_minibatch_order_seed0_is_pinned():
    """A regression guard: changing how the order is seeded changes every benchmark's batches."""
    order = MinibatchOrder(60000, seed=0)
    assert order.epoch(0)[:8].tolist() == [48620, 20956, 45422, 160, 38118, 21607, 35262, 34040]
    assert order.epoch(1)[:4].tolist() == [41257, 1778, 53543, 15777]
    assert MinibatchOrder(10, seed=0).epoch(0).tolist() == [9, 1, 3, 8, 7, 6, 0, 4, 2, 5]


def test_split_batches_and_batch_bounds():
    order = np.arange(10)[::-1]
    assert [b.tolist() for b in split_batches(order, 4)] == [[9, 8, 7, 6], [5, 4, 3, 2], [1, 0]]
    bounds = list(batch_bounds(10000, 256))
    assert len(bounds) == 40
    assert bounds[0] == (0, 256)
    assert bounds[-1] == (9984, 10000)
    assert all(stop == start for (_, stop), (start, _) in itertools.pairwise(bounds))
    assert list(batch_bounds(512, 256)) == [(0, 256), (256, 512)]


# ------------------------------------------------------------------ real data


def test_class_names():
    expected = ("t-shirt", "trouser", "pullover", "dress", "coat")
    expected += ("sandal", "shirt", "sneaker", "bag", "ankle boot")  # DATASET.md, by label
    assert expected == CLASS_NAMES
    assert class_names(np.array([9, 0, 5])) == ["ankle boot", "t-shirt", "sandal"]
    assert class_names([]) == []


@pytest.mark.real_data
def test_real_data_shapes_dtypes_and_labels(real_data):
    assert real_data.train_images.shape == (60000, 28, 28)
    assert real_data.test_images.shape == (10000, 28, 28)
    assert real_data.train_images.dtype == real_data.test_images.dtype == np.uint8
    assert real_data.train_labels.shape == (60000,)
    assert real_data.test_labels.shape == (10000,)
    for labels, per_class in ((real_data.train_labels, 6000), (real_data.test_labels, 1000)):
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), [per_class] * 10)
    assert (real_data.num_train, real_data.num_test) == (60000, 10000)
    # the first training example of Fashion-MNIST is an ankle boot, the second a t-shirt
    assert class_names(real_data.train_labels[:2]) == ["ankle boot", "t-shirt"]
    assert len(real_data.sources) == 4


@pytest.mark.real_data
def test_to_float32_equals_totensor_bitwise(real_data):
    torch = pytest.importorskip("torch")
    transforms = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    every_value = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    images = real_data.train_images[:500]
    ours = to_float32(images)
    assert ours.dtype == np.float32
    reference = torch.stack([transforms.ToTensor()(Image.fromarray(im, mode="L")) for im in images])
    assert np.array_equal(ours.view(np.uint32), reference[:, 0].numpy().view(np.uint32))
    every = transforms.ToTensor()(Image.fromarray(every_value[0], mode="L"))[0].numpy()
    np.testing.assert_array_equal(to_float32(every_value)[0].view(np.uint32), every.view(np.uint32))


@pytest.mark.real_data
@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_arrays_equal_torchvision_dataset(real_data, tmp_path, train):
    datasets = pytest.importorskip("torchvision.datasets")
    raw = tmp_path / "FashionMNIST" / "raw"  # torchvision 0.29 reads decompressed files here
    raw.mkdir(parents=True)
    for name, fetched in fetch(download=False).items():
        if fetched.path.suffix == ".gz":
            (raw / name).write_bytes(gzip.decompress(fetched.path.read_bytes()))
        else:
            (raw / name).symlink_to(fetched.path.resolve())
    theirs = datasets.FashionMNIST(str(tmp_path), train=train, download=False)
    images = real_data.train_images if train else real_data.test_images
    labels = real_data.train_labels if train else real_data.test_labels
    np.testing.assert_array_equal(images, theirs.data.numpy())
    np.testing.assert_array_equal(labels, theirs.targets.numpy())
    assert theirs.targets.numpy().dtype == labels.dtype == np.int64


@pytest.mark.real_data
@pytest.mark.parametrize("size", [64, 112, 56, 37, 20, 14], ids=lambda size: f"to-{size}")
def test_resize_is_bit_exact_to_torchvision_resize_then_totensor(real_data, size):
    """The book's per-image pipeline, Resize(size) then ToTensor on PIL images: the same floats."""
    transforms = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    # 300 images spread over the training set, and the first 100 of the test set.
    images = np.concatenate([real_data.train_images[::200], real_data.test_images[:100]])
    pipeline = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
    reference = np.stack([pipeline(Image.fromarray(im, mode="L")).numpy()[0] for im in images])
    ours = to_float32(resize_images(images, size))
    assert ours.shape == reference.shape == (400, size, size)
    assert np.array_equal(ours, reference), f"{np.count_nonzero(ours != reference)} pixels differ"


def test_resize_keeps_the_native_size_and_refuses_a_bad_one():
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(resize_images(images, 28), images)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="resize must be a positive whole side length"):
            resize_images(images, bad)


def test_check_order_accepts_a_permutation_and_refuses_the_rest():
    order = MinibatchOrder(100, seed=0).epoch(0)
    np.testing.assert_array_equal(check_order(list(order), 100), order)
    for bad, message in (
        (np.array([0, 100]), r"outside 0\.\.99 \(from 0 to 100\)"),
        (np.array([-1, 5]), r"outside 0\.\.99 \(from -1 to 5\)"),
        (np.array([0.0, 1.0]), "integer indices, got float64"),
        (np.zeros((2, 2), dtype=np.int64), r"1-D array .* shape \(2, 2\)"),
        (np.array([], dtype=np.int64), "non-empty"),
    ):
        with pytest.raises(ValueError, match=message):
            check_order(bad, 100)


def test_check_order_refuses_a_repeated_index_and_allows_part_of_a_permutation():
    with pytest.raises(ValueError, match=r"repeats example indices \(index 0 appears 60000 times"):
        check_order(np.zeros(60000, dtype=np.int64), 60000)
    with pytest.raises(ValueError, match=r"index 7 appears 2 times"):
        check_order(np.array([9, 7, 5, 7], dtype=np.uint16), 10)
    part = np.array([5, 3, 8, 0])  # tests train on part of the set: no repeat, no error
    np.testing.assert_array_equal(check_order(part, 10), part)
