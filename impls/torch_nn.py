"""Softmax regression with PyTorch's building blocks (the book's concise section 3.7).

``nn.Sequential(nn.Flatten(), nn.Linear(784, 10))``, ``nn.CrossEntropyLoss``
(stable: it works on logits with log-sum-exp) and ``torch.optim.SGD``. The
weights start from the shared initial parameters; ``nn.Linear`` stores them
transposed, (10, 784). The dataset is moved to the device once, as float32
(N, 784). With replicas (:mod:`impls.torch_parallel`) the module is wrapped in
``DistributedDataParallel`` and each replica steps on its share of every minibatch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from impls.config import TrainConfig
from impls.data import FashionMNIST, check_order
from impls.protocol import EpochStats, Evaluation, Params, Trainer
from impls.torch_parallel import Replicas, make_replicated
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
    """The protocol's stateful shell around the module, its loss and its optimiser: on
    ``replicas``, one replica's (the default: a single device)."""

    def __init__(
        self,
        data: FashionMNIST,
        params: Params,
        config: TrainConfig,
        replicas: Replicas | None = None,
    ) -> None:
        self._config = config
        self._replicas = replicas or Replicas()
        self._device, self._threads, on_device = place(data, config)
        self._train_x, self._train_y, self._test_x, self._test_y = on_device
        self._net = build_net(params, self._device)
        # On replicas, DDP: the forward pass through it arms the gradients' sum.
        self._model = self._replicas.wrap(self._net)
        self._summed_loss = nn.CrossEntropyLoss(reduction="sum")
        self._optimizer = torch.optim.SGD(self._net.parameters(), lr=config.lr)

    def train_epoch(self, order: np.ndarray) -> EpochStats:
        order = check_order(order, len(self._train_y))
        apply_threads(self._config.threads_per_replica)
        self._model.train()
        sums = Accumulator(self._device)
        batches = shuffled_batches(
            self._train_x, self._train_y, order, self._config.batch_size, self._replicas.share
        )
        for images, labels, batch_length in batches:
            logits = self._model(images)
            loss_sum = self._summed_loss(logits, labels)
            self._optimizer.zero_grad()
            # The minibatch's mean loss, as the protocol asks (the last, shorter one takes its
            # own), is the sum over its shares of each one's sum / its length: the replicas'
            # gradients of these parts are summed, not averaged.
            (loss_sum / batch_length).backward()
            self._optimizer.step()
            sums.add(loss_sum.detach(), count_correct(logits.detach(), labels), len(labels))
        return self._replicas.epoch_stats(sums)

    def evaluate(self) -> Evaluation:
        apply_threads(self._config.threads_per_replica)
        self._net.eval()
        return evaluate_batches(
            tensor_batches(self._test_x, self._test_y), self._net, self._summed_loss, self._device
        )

    def predict(self, images: np.ndarray) -> np.ndarray:
        apply_threads(self._config.threads_per_replica)
        self._net.eval()
        with torch.no_grad():
            logits = self._net(flat_images(images, self._device))
        return logits.argmax(dim=1).cpu().numpy().astype(np.int64)

    def parameters(self) -> Params:
        return linear_params(self._net[1])

    def runtime_info(self) -> Mapping[str, object]:
        return self._replicas.runtime_info(
            "eager, per batch: float32 on device, nn.Linear, optim.SGD",
            runtime_info(self._device, self._threads),
            engine="DDP",
        )


def make_trainer(data: FashionMNIST, params: Params, config: TrainConfig) -> Trainer:
    return make_replicated(TorchNNTrainer, data, params, config)


available_devices = torch_devices  # the protocol's name for the PyTorch devices present
