"""Softmax regression in PyTorch "from scratch" (the book's section 3.6).

The maths is four functions on plain tensors: :func:`forward` (logits),
:func:`cross_entropy` (per-example losses), :func:`count_correct` (the one in
:mod:`impls.torch_support`, which the ``nn`` trainers count with too) and
:func:`train_step`, one minibatch SGD step (the book's ``sgd``) on gradients
from autograd. :class:`TorchScratchTrainer` holds the state and runs exactly
those. Unlike the book, the loss stays in log space and subtracts each row's
maximum (log-sum-exp), so large logits give finite losses. The dataset is moved
to the device once, as float32 (N, 784); the device, thread and data helpers
come from :mod:`impls.torch_support`. With replicas (:mod:`impls.torch_parallel`)
each steps on its share of every minibatch, its gradients summed over the replicas
by one ``all_reduce`` (DDP would need a module and a forward pass through its
wrapper; the book's ``sgd`` needs only the sums).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from impls.config import TrainConfig
from impls.data import FashionMNIST, check_order
from impls.protocol import EpochStats, Evaluation, Params, Trainer
from impls.torch_parallel import Replicas, make_replicated
from impls.torch_support import (
    Accumulator,
    apply_threads,
    count_correct,
    evaluate_batches,
    flat_images,
    place,
    runtime_info,
    shuffled_batches,
    tensor_batches,
    torch_devices,
)

# ---------------------------------------------------------------------- maths
# count_correct(logits, labels), the book's accuracy, is imported from torch_support.


def forward(weights_t: torch.Tensor, bias: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Logits (N, 10) of flattened images (N, 784); ``weights_t`` is W transposed, (10, 784)."""
    return images @ weights_t.t() + bias


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example loss: minus the log of the probability picked by the label."""
    # The shift is a constant for autograd: softmax does not depend on it, and
    # detaching keeps rounding noise from flowing back through max().
    shifted = logits - logits.max(dim=1, keepdim=True).values.detach()
    # The book takes log(softmax(...)[rows, labels]); staying in log space keeps
    # a vanishing probability from becoming log(0) = -inf.
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    rows = torch.arange(len(labels), device=labels.device)
    return -log_probs[rows, labels]


def train_step(
    weights_t: torch.Tensor,
    bias: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    batch_length: int | None = None,
    sum_gradients: Callable[[Sequence[torch.Tensor]], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on one batch, in place: the batch's loss sum and correct count.

    Backward on the summed loss, then the book's ``sgd``: divide by the batch's
    actual length (so a shorter last batch also takes its mean) and zero the
    gradients. On replicas the images are one replica's share of a minibatch of
    ``batch_length`` examples, and ``sum_gradients`` first adds up every share's
    gradients: the step is the whole minibatch's. Both results stay on the device.
    """
    logits = forward(weights_t, bias, images)
    losses = cross_entropy(logits, labels)
    losses.sum().backward()
    if sum_gradients is not None:
        sum_gradients([weights_t.grad, bias.grad])
    divisor = len(labels) if batch_length is None else batch_length
    with torch.no_grad():
        for param in (weights_t, bias):
            param -= lr * param.grad / divisor
            param.grad.zero_()
    return losses.detach().sum(), count_correct(logits.detach(), labels)


# ---------------------------------------------------------------------- state


class TorchScratchTrainer:
    """The protocol's stateful shell: W and b as leaf tensors, the data on the device; on
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
        # W lives transposed, (10, 784) row-major, as nn.Linear keeps it: MKL's fast
        # kernels for x @ W and its gradient take that layout. The copy matters:
        # torch.tensor(W.T) would keep W.T's column-major strides.
        self._weights_t = torch.tensor(
            np.ascontiguousarray(params.weights.T), device=self._device, requires_grad=True
        )
        self._bias = torch.tensor(params.bias, device=self._device, requires_grad=True)

    def train_epoch(self, order: np.ndarray) -> EpochStats:
        order = check_order(order, len(self._train_y))
        apply_threads(self._config.threads_per_replica)
        sums = Accumulator(self._device)
        batches = shuffled_batches(
            self._train_x, self._train_y, order, self._config.batch_size, self._replicas.share
        )
        for images, labels, batch_length in batches:
            loss_sum, correct = train_step(
                self._weights_t,
                self._bias,
                images,
                labels,
                self._config.lr,
                batch_length,
                self._replicas.sum_gradients,
            )
            sums.add(loss_sum, correct, len(labels))
        return self._replicas.epoch_stats(sums)

    def evaluate(self) -> Evaluation:
        apply_threads(self._config.threads_per_replica)
        return evaluate_batches(
            tensor_batches(self._test_x, self._test_y),
            lambda images: forward(self._weights_t, self._bias, images),
            lambda logits, labels: cross_entropy(logits, labels).sum(),
            self._device,
        )

    def predict(self, images: np.ndarray) -> np.ndarray:
        apply_threads(self._config.threads_per_replica)
        with torch.no_grad():
            logits = forward(self._weights_t, self._bias, flat_images(images, self._device))
        return logits.argmax(dim=1).cpu().numpy().astype(np.int64)

    def parameters(self) -> Params:
        return Params(
            self._weights_t.detach().t().contiguous().to("cpu", copy=True).numpy(),
            self._bias.detach().to("cpu", copy=True).numpy(),
        )

    def runtime_info(self) -> Mapping[str, object]:
        return self._replicas.runtime_info(
            "eager, per batch: float32 on device, autograd, hand-written SGD",
            runtime_info(self._device, self._threads),
            engine="all_reduce of gradients",
        )


def make_trainer(data: FashionMNIST, params: Params, config: TrainConfig) -> Trainer:
    return make_replicated(TorchScratchTrainer, data, params, config)


available_devices = torch_devices  # the protocol's name for the PyTorch devices present
