"""Softmax regression in NumPy with hand-written gradients (the book's section 3.6).

The maths is four functions: :func:`forward` (logits), :func:`cross_entropy`
(per-example losses), :func:`count_correct` and :func:`train_step`, one SGD step
on one batch. :class:`NumpyTrainer` holds the state and runs exactly those.
float32 throughout; the loss subtracts each row's maximum (log-sum-exp), so
logits of any size give finite results.

:func:`train_step` is the textbook step -- softmax, gradient of the mean loss
``(softmax - onehot) / n`` chained through ``x @ W + b``, then ``W -= lr * dW`` --
written into preallocated buffers and updating the parameters in place, on
uint8 pixels converted batch by batch. The tests hold it bitwise equal to the
plain textbook functions.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from impls.config import TrainConfig
from impls.data import (
    EVAL_BATCH,
    NUM_CLASSES,
    NUM_INPUTS,
    FashionMNIST,
    batch_bounds,
    check_order,
    pixels_per_image,
    to_float32,
)
from impls.protocol import DeviceUnavailableError, EpochStats, Evaluation, Params

IMAGE_BUFFERS = 3  # float32 image buffers the steps rotate through (see Workspace)

# ---------------------------------------------------------------------- maths


def forward(params: Params, images: np.ndarray) -> np.ndarray:
    """Logits (N, 10) of flattened float32 images (N, 784)."""
    return images @ params.weights + params.bias


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example loss: minus the log-probability of the true class."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def count_correct(logits: np.ndarray, labels: np.ndarray) -> int:
    """Number of correct predictions (the book's ``accuracy``)."""
    return int(np.count_nonzero(logits.argmax(axis=1) == labels))


class Workspace:
    """The buffers :func:`train_step` writes into, sized for the largest batch.

    The float32 images rotate through :data:`IMAGE_BUFFERS` buffers rather than
    reusing one: with two BLAS threads, the other core holds part of the last
    batch's images in its cache, and converting the next batch into that same
    buffer would first have to take those lines back from it. By the time a
    buffer comes round again, the other core's copies have left its cache.
    """

    def __init__(self, batch_size: int, num_inputs: int = NUM_INPUTS) -> None:
        self.pixels = np.empty((batch_size, num_inputs), dtype=np.uint8)
        self._images = np.empty((IMAGE_BUFFERS, batch_size, num_inputs), dtype=np.float32)
        self._turn = 0
        self.logits = np.empty((batch_size, NUM_CLASSES), dtype=np.float32)
        self.probs = np.empty((batch_size, NUM_CLASSES), dtype=np.float32)
        self.grad_weights = np.empty((num_inputs, NUM_CLASSES), dtype=np.float32)
        self.rows = np.arange(batch_size)

    def next_images(self, n: int) -> np.ndarray:
        """The next image buffer of the ring, its first ``n`` rows."""
        self._turn = (self._turn + 1) % IMAGE_BUFFERS
        return self._images[self._turn, :n]


def train_step(
    params: Params, pixels: np.ndarray, labels: np.ndarray, lr: float, work: Workspace
) -> tuple[float, int]:
    """One SGD step on uint8 ``pixels`` (n, 784), updating ``params`` in place.

    Returns the batch's summed loss and its number of correct predictions. Per
    step it allocates nothing the size of a batch, and it reads uint8 pixels, a
    quarter of the bytes of float32 ones.
    """
    n = len(labels)
    images, logits, probs, rows = (
        work.next_images(n),
        work.logits[:n],
        work.probs[:n],
        work.rows[:n],
    )
    # Division, not multiplication by 1/255: bit-for-bit the float32 x/255 of to_float32.
    np.divide(pixels, np.float32(255), out=images, dtype=np.float32)
    np.matmul(images, params.weights, out=logits)
    logits += params.bias
    correct = count_correct(logits, labels)
    np.subtract(logits, logits.max(axis=1, keepdims=True), out=logits)  # now shifted
    np.exp(logits, out=probs)
    sums = probs.sum(axis=1, keepdims=True)
    loss_sum = float((np.log(sums[:, 0]) - logits[rows, labels]).sum(dtype=np.float64))
    probs /= sums  # softmax
    probs[rows, labels] -= 1.0
    probs /= np.float32(n)  # d(mean loss)/d(logits)
    lr32 = np.float32(lr)
    np.matmul(images.T, probs, out=work.grad_weights)
    work.grad_weights *= lr32
    np.subtract(params.weights, work.grad_weights, out=params.weights)
    np.subtract(params.bias, lr32 * probs.sum(axis=0), out=params.bias)
    return loss_sum, correct


# ---------------------------------------------------------------------- state


class NumpyTrainer:
    """The protocol's stateful shell: the parameters, the data and the step's buffers."""

    def __init__(self, data: FashionMNIST, params: Params, config: TrainConfig) -> None:
        from threadpoolctl import ThreadpoolController

        if config.device != "cpu":
            raise DeviceUnavailableError(
                f"numpy runs on the CPU only, not on device {config.device!r}"
            )
        self._config = config
        self._threads = ThreadpoolController()
        # uint8 kept as is: train_step converts each batch.
        self._train_pixels = np.ascontiguousarray(data.train_images.reshape(data.num_train, -1))
        self._train_y = data.train_labels
        # No batch is larger than the training set, whatever the batch size asks for.
        self._work = Workspace(min(config.batch_size, data.num_train), data.num_inputs)
        self._test_x = to_float32(data.test_images).reshape(data.num_test, -1)
        self._test_y = data.test_labels
        # Copies: train_step updates them in place.
        self._params = Params(
            params.weights.astype(np.float32, copy=True), params.bias.astype(np.float32, copy=True)
        )

    def _limit_threads(self):
        return self._threads.limit(limits=self._config.threads, user_api="blas")

    def train_epoch(self, order: np.ndarray) -> EpochStats:
        order = check_order(order, len(self._train_y))
        total_loss, correct = 0.0, 0
        with self._limit_threads():
            for start, stop in batch_bounds(len(order), self._config.batch_size):
                index = order[start:stop]
                pixels = self._work.pixels[: len(index)]
                # mode="clip": under the default "raise", np.take gathers into a
                # temporary and then copies it into out (numpy's docs). The order
                # was checked above, so nothing is clipped.
                np.take(self._train_pixels, index, axis=0, out=pixels, mode="clip")
                loss_sum, batch_correct = train_step(
                    self._params, pixels, self._train_y[index], self._config.lr, self._work
                )
                total_loss += loss_sum
                correct += batch_correct
        return EpochStats(total_loss / len(order), correct / len(order))

    def evaluate(self) -> Evaluation:
        total_loss, correct = 0.0, 0
        with self._limit_threads():
            for start, stop in batch_bounds(len(self._test_y), EVAL_BATCH):
                logits = forward(self._params, self._test_x[start:stop])
                labels = self._test_y[start:stop]
                total_loss += float(cross_entropy(logits, labels).sum(dtype=np.float64))
                correct += count_correct(logits, labels)
        return Evaluation(total_loss / len(self._test_y), correct / len(self._test_y))

    def predict(self, images: np.ndarray) -> np.ndarray:
        with self._limit_threads():
            logits = forward(
                self._params, to_float32(images).reshape(len(images), pixels_per_image(images))
            )
        return logits.argmax(axis=1).astype(np.int64)

    def parameters(self) -> Params:
        return Params(self._params.weights.copy(), self._params.bias.copy())

    def runtime_info(self) -> Mapping[str, object]:
        blas = [
            f"{info['internal_api']} {info.get('version') or ''}".strip()
            for info in self._threads.select(user_api="blas").info()
        ]
        return {
            "strategy": "eager, per batch: uint8 rows gathered and converted, fused in-place step",
            "device": "cpu",
            "threads": self._config.threads,
            "blas": ", ".join(blas),
        }


def make_trainer(data: FashionMNIST, params: Params, config: TrainConfig) -> NumpyTrainer:
    return NumpyTrainer(data, params, config)


def available_devices() -> list[str]:
    return ["cpu"]
