"""The baseline: the book's PyTorch pipeline as a reader runs it (sections 3.5 and 3.7).

torchvision's ``FashionMNIST`` dataset with the per-sample ``ToTensor``
transform (after ``Resize`` when the data were resized, as the book's ``resize``
argument does), a shuffling ``DataLoader`` with the book's 4 worker processes
(``get_dataloader_workers``), ``nn.Sequential(nn.Flatten(), nn.Linear)``,
``nn.CrossEntropyLoss`` and ``torch.optim.SGD``, looped over as in
``train_epoch_ch3``. Batches stream from the loader to the device every epoch;
the per-sample conversion and the worker start-up are the costs this baseline
exists to show, so they are kept.

Unlike every other implementation it **ignores the shared minibatch order**
passed to ``train_epoch``: it shuffles as the book does, with the loader's own
sampler, seeded from ``config.seed`` through a ``torch.Generator`` so runs are
repeatable (the registry marks it ``follows_shared_order=False``). It starts
from the shared initial parameters.

torchvision reads the very arrays given to :func:`make_trainer`: they are
written as IDX files into a temporary ``root/FashionMNIST/raw/``, where
torchvision looks for them, and read back with ``download=False``, so it never
downloads. The datasets hold the data in memory, so the directory is removed
straight after.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from impls.config import BOOK_LOADER_WORKERS, TrainConfig
from impls.data import FASHION_MNIST, FashionMNIST, encode_idx, to_float32
from impls.protocol import EpochStats, Evaluation, Params
from impls.torch_support import (
    Accumulator,
    apply_threads,
    build_net,
    count_correct,
    evaluate_batches,
    linear_params,
    resolve_device,
    runtime_info,
    torch_devices,
)

BOOK_WORKERS = BOOK_LOADER_WORKERS  # the book's get_dataloader_workers()
# A worker that has not delivered its probe sample by then is taken as unable to run.
PROBE_TIMEOUT_S = 60

# ----------------------------------------------------------------------- data


def write_raw_files(data: FashionMNIST, root: Path) -> None:
    """Lay ``data`` out as the decompressed IDX files torchvision expects under ``root``."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for spec, array in (
        (FASHION_MNIST.train_images, data.train_images),
        (FASHION_MNIST.train_labels, data.train_labels),
        (FASHION_MNIST.test_images, data.test_images),
        (FASHION_MNIST.test_labels, data.test_labels),
    ):
        (raw / spec.name).write_bytes(encode_idx(array))


def book_transform(data: FashionMNIST) -> tuple[FashionMNIST, Callable]:
    """The images torchvision reads, and its per-sample transform, as the book's loader has them.

    Resized data are given back at their original size with ``Resize`` in the
    transform (``load_data_fashion_mnist(batch_size, resize)``): each image is
    resized as a PIL image, every epoch, in the loader's workers.
    """
    if data.original is None:
        return data, transforms.ToTensor()
    return data.original, transforms.Compose([transforms.Resize(data.side), transforms.ToTensor()])


def load_datasets(data: FashionMNIST) -> tuple[datasets.FashionMNIST, datasets.FashionMNIST]:
    """torchvision's train and test datasets (the book's transform per sample) holding ``data``."""
    source, transform = book_transform(data)
    with tempfile.TemporaryDirectory(prefix="fmbench-torchvision-") as root:
        write_raw_files(source, Path(root))
        return tuple(  # type: ignore[return-value]
            datasets.FashionMNIST(root=root, train=train, transform=transform, download=False)
            for train in (True, False)
        )


def usable_workers(dataset: Dataset, wanted: int) -> tuple[int, str]:
    """``wanted`` if DataLoader worker processes can start here, else 0 and the reason."""
    # Some sandboxes forbid the shared memory or semaphores workers need; trying
    # is the only reliable test. One sample per worker keeps the probe cheap.
    if wanted == 0:
        return 0, ""
    probe = Subset(dataset, range(min(wanted, len(dataset))))
    loader = DataLoader(probe, batch_size=1, num_workers=wanted, timeout=PROBE_TIMEOUT_S)
    try:
        for _ in loader:
            pass
    except (RuntimeError, OSError) as error:
        return 0, f"worker processes could not start ({type(error).__name__}: {error})"
    return wanted, ""


# ---------------------------------------------------------------------- state


class D2LReferenceTrainer:
    """The book's training loop behind the protocol; the loaders own data and order."""

    def __init__(self, data: FashionMNIST, params: Params, config: TrainConfig) -> None:
        self._config = config
        num_workers = BOOK_WORKERS if config.loader_workers is None else config.loader_workers
        self._device = resolve_device(config.device)
        self._threads = apply_threads(config.threads)
        train_set, test_set = load_datasets(data)
        self._num_workers, self._workers_note = usable_workers(train_set, num_workers)
        # Capped at the set's size, the same batches: some torch versions' BatchSampler
        # allocates a list of batch_size entries up front.
        self._train_iter = DataLoader(
            train_set,
            batch_size=min(config.batch_size, len(train_set)),
            shuffle=True,
            num_workers=self._num_workers,
            generator=torch.Generator().manual_seed(config.seed),
        )
        self._test_iter = DataLoader(
            test_set,
            batch_size=min(config.batch_size, len(test_set)),
            shuffle=False,
            num_workers=self._num_workers,
        )
        self._net = build_net(params, self._device)
        # The book's loss keeps per-example values: their mean drives SGD, their sum the stats.
        self._loss = nn.CrossEntropyLoss(reduction="none")
        self._updater = torch.optim.SGD(self._net.parameters(), lr=config.lr)

    def train_epoch(self, order: np.ndarray) -> EpochStats:
        # ``order`` is deliberately unused: the loader shuffles, as in the book.
        apply_threads(self._config.threads)
        self._net.train()
        sums = Accumulator(self._device)
        for images, labels in self._train_iter:
            images, labels = images.to(self._device), labels.to(self._device)
            logits = self._net(images)
            losses = self._loss(logits, labels)
            self._updater.zero_grad()
            losses.mean().backward()
            self._updater.step()
            # Kept on the device (the book calls float() here, a sync per batch on a GPU).
            correct = count_correct(logits.detach(), labels)
            sums.add(losses.detach().sum(), correct, len(labels))
        return EpochStats(*sums.means())

    def load_batches(self) -> int:
        """Iterate the training loader once, as an epoch does, without training: the input
        pipeline alone (sampler, per-image transforms, workers, collation). Returns the
        examples delivered."""
        apply_threads(self._config.threads)
        return sum(len(labels) for _, labels in self._train_iter)

    def evaluate(self) -> Evaluation:
        apply_threads(self._config.threads)
        self._net.eval()
        return evaluate_batches(
            self._test_iter,
            self._net,
            lambda logits, labels: self._loss(logits, labels).sum(),
            self._device,
        )

    def predict(self, images: np.ndarray) -> np.ndarray:
        apply_threads(self._config.threads)
        self._net.eval()
        # to_float32 is bit-for-bit ToTensor, without a PIL image per sample: not timed work.
        pixels = torch.from_numpy(to_float32(images)).to(self._device)
        with torch.no_grad():
            logits = self._net(pixels)
        return logits.argmax(dim=1).cpu().numpy().astype(np.int64)

    def parameters(self) -> Params:
        return linear_params(self._net[1])

    def runtime_info(self) -> Mapping[str, object]:
        info: dict[str, object] = {
            "strategy": (
                "eager, per batch: the book's DataLoader, ToTensor per image in "
                f"{self._num_workers} worker process(es)"
            ),
            **runtime_info(self._device, self._threads),
            "torchvision": torchvision.__version__,
            "num_workers": self._num_workers,
        }
        if self._workers_note:
            info["num_workers_note"] = self._workers_note
        return info


def make_trainer(data: FashionMNIST, params: Params, config: TrainConfig) -> D2LReferenceTrainer:
    return D2LReferenceTrainer(data, params, config)


available_devices = torch_devices  # the protocol's name for the PyTorch devices present
