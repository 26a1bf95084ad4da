"""Softmax regression with PyTorch's building blocks (the book's concise section 3.7).

``nn.Sequential(nn.Flatten(), nn.Linear(784, 10))``, ``nn.CrossEntropyLoss``
(stable: it works on logits with log-sum-exp) and ``torch.optim.SGD``. The
weights start from the shared initial parameters; ``nn.Linear`` stores them
transposed, (10, 784). The dataset is moved to the device once, as float32
(N, 784). With replicas (:mod:`impls.torch_parallel`) the module is wrapped in
``DistributedDataParallel`` and each replica steps on its share of every minibatch.

Two registry entries: ``torch-nn`` (:func:`make_trainer`) runs each step eagerly;
``torch-compile`` (:func:`make_compiled_trainer`, opt-in for the benchmark) runs
:func:`logits_and_loss` through ``torch.compile`` (inductor; the backward comes
compiled with it, the optimizer stays eager). Of what was measured (one process,
10 interleaved epochs, 1 and 2 threads, the 2-vCPU VM): forward and loss compiled
245 and 225 ms an epoch, the model alone 280 and 250, the whole step 280 and 250
(dynamo breaks it at ``backward()`` and inside ``optimizer.step``), eager 213 and 183.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import numpy as np
import torch
from torch import nn

from impls.config import TrainConfig
from impls.data import FashionMNIST, batch_bounds, check_order
from impls.protocol import EpochStats, Evaluation, Params, Trainer
from impls.torch_parallel import Replicas, make_replicated
from impls.torch_support import (
    Accumulator,
    InductorCompiler,
    apply_threads,
    build_net,
    check_cpp_compiler,
    count_correct,
    evaluate_batches,
    flat_images,
    linear_params,
    place,
    runtime_info,
    shuffled_batches,
    synchronize,
    tensor_batches,
    torch_devices,
)


def logits_and_loss(
    net: nn.Module, loss: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's forward: the batch's logits and its loss by ``loss`` (what torch-compile
    compiles)."""
    logits = net(images)
    return logits, loss(logits, labels)


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
        self._forward = partial(logits_and_loss, self._model, self._summed_loss)  # compiled: below
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
            logits, loss_sum = self._forward(images, labels)
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


class CompiledTorchNNTrainer(TorchNNTrainer):
    """torch-nn with each step's forward and loss through ``torch.compile``, compiled while
    it is built (one device: the entry takes no replicas).

    Evaluation and prediction run the same parameters eagerly: only training is compiled.
    """

    def __init__(self, data: FashionMNIST, params: Params, config: TrainConfig) -> None:
        super().__init__(data, params, config)
        self._compiler = InductorCompiler()
        check_cpp_compiler(self._device)
        self._forward = partial(torch.compile(logits_and_loss), self._model, self._summed_loss)
        # Compile now, so that the first epoch times training only: each batch length an
        # epoch has, the full batches first (dynamo then makes the batch dimension dynamic, so
        # that one more graph serves every other length).
        lengths = {stop - start for start, stop in batch_bounds(data.num_train, config.batch_size)}
        for length in sorted(lengths, reverse=True):
            self._compiler.run(f"step[{length}]", partial(self._warm_up, length, data.num_inputs))

    def _warm_up(self, length: int, num_inputs: int) -> None:
        """Forward and backward on a batch of zeros, no optimizer step: the weights stay the
        shared initial ones."""
        images = torch.zeros((length, num_inputs), device=self._device)
        labels = torch.zeros(length, dtype=torch.int64, device=self._device)
        self._forward(images, labels)[1].backward()
        self._optimizer.zero_grad()
        synchronize(self._device)

    def runtime_info(self) -> Mapping[str, object]:
        info = dict(super().runtime_info())
        info["strategy"] = "torch.compile (inductor) of forward + loss, per batch; float32"
        return {**info, **self._compiler.info()}


def make_trainer(data: FashionMNIST, params: Params, config: TrainConfig) -> Trainer:
    """The ``torch-nn`` entry: eager, on one device or over ``config.replicas`` (DDP)."""
    return make_replicated(TorchNNTrainer, data, params, config)


def make_compiled_trainer(
    data: FashionMNIST, params: Params, config: TrainConfig
) -> CompiledTorchNNTrainer:
    """The ``torch-compile`` entry: forward and loss compiled by ``torch.compile`` (inductor)."""
    return CompiledTorchNNTrainer(data, params, config)


available_devices = torch_devices  # the protocol's name for the PyTorch devices present
