"""Softmax regression with PyTorch's building blocks (the book's concise section 3.7).

``nn.Sequential(nn.Flatten(), nn.Linear(784, 10))``, ``nn.CrossEntropyLoss``
(stable: it works on logits with log-sum-exp) and ``torch.optim.SGD``. The
weights start from the shared initial parameters; ``nn.Linear`` stores them
transposed, (10, 784). The dataset is moved to the device once, as float32
(N, 784).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from impls.config import TrainConfig
from impls.data import FashionMNIST, check_order
from impls.protocol import EpochStats, Evaluation, Params
from impls.torch_support import (
    Accumulator,
    apply_threads,
    build_net,
    count_correct,
    evaluate_batches,
    flat_images,
    linear_params,
    place,
    runtime_info,
    shuffled_batches,
    tensor_batches,
    torch_devices,
)


class TorchNNTrainer:
    """The protocol's stateful shell around the module, its loss and its optimiser."""

    def __init__(self, data: FashionMNIST, params: Params, config: TrainConfig) -> None:
        self._config = config
        self._device, self._threads, on_device = place(data, config)
        self._train_x, self._train_y, self._test_x, self._test_y = on_device
        self._net = build_net(params, self._device)
        # Mean over each batch, as the protocol asks: the last, shorter batch takes its own mean.
        self._loss = nn.CrossEntropyLoss(reduction="mean")
        self._summed_loss = nn.CrossEntropyLoss(reduction="sum")
        self._optimizer = torch.optim.SGD(self._net.parameters(), lr=config.lr)

    def train_epoch(self, order: np.ndarray) -> EpochStats:
        order = check_order(order, len(self._train_y))
        apply_threads(self._config.threads)
        self._net.train()
        sums = Accumulator(self._device)
        batches = shuffled_batches(self._train_x, self._train_y, order, self._config.batch_size)
        for images, labels in batches:
            logits = self._net(images)
            loss = self._loss(logits, labels)
            self._optimizer.zero_grad()
            loss.backward()
            self._optimizer.step()
            # Mean times count gives the batch's sum, for the epoch's per-example mean.
            correct = count_correct(logits.detach(), labels)
            sums.add(loss.detach() * len(labels), correct, len(labels))
        return EpochStats(*sums.means())

    def evaluate(self) -> Evaluation:
        apply_threads(self._config.threads)
        self._net.eval()
        return evaluate_batches(
            tensor_batches(self._test_x, self._test_y), self._net, self._summed_loss, self._device
        )

    def predict(self, images: np.ndarray) -> np.ndarray:
        apply_threads(self._config.threads)
        self._net.eval()
        with torch.no_grad():
            logits = self._net(flat_images(images, self._device))
        return logits.argmax(dim=1).cpu().numpy().astype(np.int64)

    def parameters(self) -> Params:
        return linear_params(self._net[1])

    def runtime_info(self) -> Mapping[str, object]:
        return {
            "strategy": "eager, per batch: float32 on device, nn.Linear, optim.SGD",
            **runtime_info(self._device, self._threads),
        }


def make_trainer(data: FashionMNIST, params: Params, config: TrainConfig) -> TorchNNTrainer:
    return TorchNNTrainer(data, params, config)


available_devices = torch_devices  # the protocol's name for the PyTorch devices present
