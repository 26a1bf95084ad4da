"""The Fashion-MNIST loader every implementation and benchmark uses (NumPy only).

This module is the loader's public face: import from here. It holds the arrays
(:class:`FashionMNIST`, :func:`load_fashion_mnist`, :func:`to_float32`,
:func:`resize_images`, exact to torchvision's ``Resize``, and cached by
:meth:`FashionMNIST.at_size`), the dataset's constants, and the minibatch order every
implementation shares (:class:`MinibatchOrder`, :func:`check_order`, and
:func:`batch_bounds`, the one cut into batches). The machinery underneath lives in
two modules whose public names are re-exported here: :mod:`impls.idx` (the IDX
format, its checks and the error hierarchy) and :mod:`impls.fetch` (the search
order, downloads, verification and the cache; see ``data/README.md``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from impls.fetch import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    FASHION_MNIST,
    DataDirError,
    DatasetNotFoundError,
    DatasetSpec,
    DownloadError,
    FetchedFile,
    default_cache_dir,
    fetch,
)
from impls.idx import (
    IMAGE_SIZE,
    NUM_CLASSES,
    ChecksumError,
    CorruptFileError,
    DataError,
    IdxFile,
    encode_idx,
    parse_idx,
    verify,
)
from impls.resize import check_size, resize_images
from impls.resize_cache import cached_resize

__all__ = [
    "CACHE_DIR_ENV",
    "CLASS_NAMES",
    "DATA_DIR_ENV",
    "EVAL_BATCH",
    "FASHION_MNIST",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "NUM_INPUTS",
    "ChecksumError",
    "CorruptFileError",
    "DataDirError",
    "DataError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DownloadError",
    "FashionMNIST",
    "FetchedFile",
    "IdxFile",
    "MinibatchOrder",
    "batch_bounds",
    "check_order",
    "class_names",
    "default_cache_dir",
    "encode_idx",
    "fetch",
    "load_fashion_mnist",
    "parse_idx",
    "pixels_per_image",
    "resize_images",
    "split_batches",
    "to_float32",
    "verify",
]

NUM_INPUTS = IMAGE_SIZE * IMAGE_SIZE  # pixels per image: the model's inputs

CLASS_NAMES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip


# --------------------------------------------------------------------- loading


@dataclass(frozen=True)
class FashionMNIST:
    """The dataset as NumPy arrays: uint8 images (N, 28, 28), int64 labels (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    sources: tuple[str, ...] = ()  # where each of the four files came from
    # The native-size dataset these images were resized from (None: they are native), for
    # a pipeline that resizes image by image as the book does (d2l-reference).
    original: FashionMNIST | None = None

    @property
    def num_train(self) -> int:
        return len(self.train_labels)

    @property
    def side(self) -> int:
        """The side length of the (square) images."""
        return self.train_images.shape[1]

    @property
    def num_inputs(self) -> int:
        """Pixels per image: the model's inputs (:data:`NUM_INPUTS` at the native size)."""
        return pixels_per_image(self.train_images)

    def at_size(
        self, size: int | None, cache_dir: str | os.PathLike[str] | None = None
    ) -> FashionMNIST:
        """This dataset with its images resized to ``size`` (None: as they are), from the cache
        where it holds them (:func:`~impls.resize_cache.cached_resize`)."""
        native = self if self.original is None else self.original
        if size is None or size == native.side:
            return native
        if size == self.side:
            return self
        return FashionMNIST(
            train_images=cached_resize(native.train_images, size, cache_dir),
            train_labels=native.train_labels,
            test_images=cached_resize(native.test_images, size, cache_dir),
            test_labels=native.test_labels,
            sources=native.sources,
            original=native,
        )

    @property
    def num_test(self) -> int:
        return len(self.test_labels)


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
    ``resize`` gives square images of that side, bit for bit torchvision's ``Resize``
    (see :func:`resize_images`), computed once and then read from the cache
    (:meth:`FashionMNIST.at_size`). Use :func:`to_float32` for the ``ToTensor`` view.
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
    if resize is not None:
        check_size(resize)  # a bad size fails before the work
    native = FashionMNIST(
        train_images=arrays[spec.train_images.name],
        train_labels=arrays[spec.train_labels.name].astype(np.int64),
        test_images=arrays[spec.test_images.name],
        test_labels=arrays[spec.test_labels.name].astype(np.int64),
        sources=tuple(files[f.name].origin for f in spec.files),
    )
    return native.at_size(resize, cache_dir)


def to_float32(images: np.ndarray) -> np.ndarray:
    """Pixels scaled to [0, 1] in float32, bit-for-bit what torchvision's ``ToTensor`` gives."""
    # ToTensor divides a float32 tensor by 255; IEEE division is exact-rounded, so this matches.
    return images.astype(np.float32) / np.float32(255)


def pixels_per_image(images: np.ndarray) -> int:
    """Pixels in each of ``images`` (N, H, W): the model's inputs; known for N = 0 too."""
    return int(np.prod(images.shape[1:]))


def class_names(labels: Sequence[int] | np.ndarray) -> list[str]:
    """Text labels for numeric ones (the seed's ``get_fashion_mnist_labels``)."""
    return [CLASS_NAMES[int(label)] for label in labels]


# ------------------------------------------------------------------ minibatches


@dataclass(frozen=True)
class MinibatchOrder:
    """The order in which every implementation visits the training set, from one seed.

    A fresh permutation each epoch (the seed's ``shuffle=True``); the trainers
    cut it into consecutive batches of ``TrainConfig.batch_size`` (the batch
    size's one owner) with :func:`batch_bounds`, the last partial batch kept.
    PCG64 streams are the same on every platform, so the same seed gives the
    same order on any machine.
    """

    num_examples: int
    seed: int

    def __post_init__(self) -> None:
        if self.num_examples < 1:
            raise ValueError(f"an order needs at least one example, got {self.num_examples}")

    def epoch(self, epoch: int) -> np.ndarray:
        """The permutation of training indices for ``epoch`` (counted from 0)."""
        rng = np.random.default_rng([self.seed, 1, epoch])
        return rng.permutation(self.num_examples)


def check_order(order: np.ndarray, num_examples: int) -> np.ndarray:
    """``order`` as a 1-D integer array of distinct indices below ``num_examples``, or a ValueError.

    A permutation, or a part of one (tests train on a subset): no index twice.
    Runs inside every timed epoch, so each check is one O(n) pass (no sort).
    """
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
    seen = np.zeros(num_examples, dtype=bool)
    seen[order] = True
    if np.count_nonzero(seen) < len(order):
        counts = np.bincount(order.astype(np.intp), minlength=num_examples)
        first = int(np.flatnonzero(counts > 1)[0])
        raise ValueError(
            f"an epoch's order repeats example indices (index {first} appears "
            f"{counts[first]} times): it must be a permutation, or part of one"
        )
    return order


EVAL_BATCH = 2048  # test examples per evaluation batch, in every trainer that batches them


def batch_bounds(num_examples: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each consecutive batch of ``batch_size`` over ``num_examples``.

    The one cut: trainers cut an epoch's order with it (``batch_bounds(len(order),
    batch_size)``) and the test set into :data:`EVAL_BATCH` batches. The last
    batch is shorter when ``batch_size`` does not divide ``num_examples``.
    """
    for start in range(0, num_examples, batch_size):
        yield start, min(start + batch_size, num_examples)


def split_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``order`` cut into its minibatches, as the trainers cut it (:func:`batch_bounds`)."""
    return [order[start:stop] for start, stop in batch_bounds(len(order), batch_size)]
