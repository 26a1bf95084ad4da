"""Softmax regression in PyTorch "from scratch" (the book's section 3.6).

The book's own ``softmax``, ``cross_entropy``, ``accuracy`` and minibatch
``sgd`` on plain tensors; autograd computes the gradients. Unlike the book,
softmax and loss subtract the row maximum (log-sum-exp), so large logits give
finite results. The dataset is moved to the device once, as float32 (N, 784);
the device, thread and data helpers come from :mod:`impls.torch_support`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from impls.config import TrainConfig
from impls.data import FashionMNIST, check_order
from impls.protocol import EpochStats, Evaluation, Params
from impls.torch_support import (
    apply_threads,
    available_devices,
    evaluate_batches,
    flat_images,
    host_sum,
    resolve_device,
    runtime_info,
    synchronize,
    tensor_batches,
    to_device,
)

__all__ = ["available_devices", "make_trainer"]

# ---------------------------------------------------------------------- maths


def net(weights: torch.Tensor, bias: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Logits (N, 10) of flattened images (N, 784)."""
    return images @ weights + bias


def _shifted(logits: torch.Tensor) -> torch.Tensor:
    """Logits minus each row's maximum, so exp() cannot overflow."""
    # The shift is a constant for autograd: softmax does not depend on it, and
    # detaching keeps rounding noise from flowing back through max().
    return logits - logits.max(dim=1, keepdim=True).values.detach()


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise probabilities (the book's ``softmax``, made stable)."""
    exps = _shifted(logits).exp()
    return exps / exps.sum(dim=1, keepdim=True)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise log-probabilities via log-sum-exp."""
    shifted = _shifted(logits)
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example loss: minus the log of the probability picked by the label."""
    # The book takes log(softmax(...)[rows, labels]); staying in log space keeps
    # a vanishing probability from becoming log(0) = -inf.
    rows = torch.arange(len(labels), device=labels.device)
    return -log_softmax(logits)[rows, labels]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions, as a tensor left on the device (no sync)."""
    return (logits.argmax(dim=1) == labels).sum()


def sgd(params: list[torch.Tensor], lr: float, batch_size: int) -> None:
    """Minibatch SGD on a summed loss's gradients, which it then zeroes (the book's ``sgd``)."""
    with torch.no_grad():
        for param in params:
            param -= lr * param.grad / batch_size
            param.grad.zero_()


# ---------------------------------------------------------------------- state


class TorchScratchTrainer:
    """The protocol's stateful shell: W and b as leaf tensors, the data on the device."""

    def __init__(self, data: FashionMNIST, params: Params, config: TrainConfig) -> None:
        self._config = config
        self._device = resolve_device(config.device)
        self._threads = apply_threads(config.threads)
        self._train_x, self._train_y, self._test_x, self._test_y = to_device(data, self._device)
        # W lives transposed, (10, 784) row-major, and enters net() as the view .t():
        # MKL runs x @ W and its gradient 1.7x faster in that layout on this CPU
        # (torch.profiler: aten::mm 236 -> ~70 us a call; epoch 0.158 -> 0.121 s).
        # Same values, same maths. The copy matters: torch.tensor(W.T) keeps W.T's
        # column-major strides, which would undo the point.
        self._weights_t = torch.tensor(
            np.ascontiguousarray(params.weights.T), device=self._device, requires_grad=True
        )
        self._bias = torch.tensor(params.bias, device=self._device, requires_grad=True)

    def train_epoch(self, order: np.ndarray) -> EpochStats:
        order = check_order(order, len(self._train_y))
        apply_threads(self._config.threads)
        index = torch.as_tensor(order, dtype=torch.int64).to(self._device)
        batch_loss_sums: list[torch.Tensor] = []
        correct = torch.zeros((), dtype=torch.int64, device=self._device)
        for start in range(0, len(index), self._config.batch_size):
            batch = index[start : start + self._config.batch_size]
            # index_select: the same rows as self._train_x[batch], several times faster on CPU.
            images = self._train_x.index_select(0, batch)
            labels = self._train_y.index_select(0, batch)
            logits = net(self._weights_t.t(), self._bias, images)
            losses = cross_entropy(logits, labels)
            losses.sum().backward()
            # The actual batch length, so the shorter last batch also takes its mean.
            sgd([self._weights_t, self._bias], self._config.lr, len(batch))
            batch_loss_sums.append(losses.detach().sum())
            correct += accuracy(logits.detach(), labels)
        synchronize(self._device)
        return EpochStats(host_sum(batch_loss_sums) / len(order), int(correct) / len(order))

    def evaluate(self) -> Evaluation:
        apply_threads(self._config.threads)
        return evaluate_batches(
            tensor_batches(self._test_x, self._test_y),
            lambda images: net(self._weights_t.t(), self._bias, images),
            lambda logits, labels: cross_entropy(logits, labels).sum(),
            self._device,
        )

    def predict(self, images: np.ndarray) -> np.ndarray:
        apply_threads(self._config.threads)
        with torch.no_grad():
            logits = net(self._weights_t.t(), self._bias, flat_images(images, self._device))
        return logits.argmax(dim=1).cpu().numpy().astype(np.int64)

    def parameters(self) -> Params:
        return Params(
            self._weights_t.detach().t().contiguous().to("cpu", copy=True).numpy(),
            self._bias.detach().to("cpu", copy=True).numpy(),
        )

    def runtime_info(self) -> Mapping[str, object]:
        return runtime_info(self._device, self._threads)


def make_trainer(data: FashionMNIST, params: Params, config: TrainConfig) -> TorchScratchTrainer:
    return TorchScratchTrainer(data, params, config)
