"""Softmax regression in NumPy with hand-written gradients.

Pure functions of ``(params, batch)`` do the maths; :class:`NumpyTrainer` holds
the state. float32 throughout; softmax and loss subtract the row maximum
(log-sum-exp), so logits of any size give finite results.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from impls.config import TrainConfig
from impls.data import NUM_CLASSES, FashionMNIST, batch_bounds, check_order, to_float32
from impls.protocol import EpochStats, Evaluation, Params

EVAL_BATCH = 2048


def available_devices() -> list[str]:
    return ["cpu"]


def forward(params: Params, images: np.ndarray) -> np.ndarray:
    """Logits (N, 10) of flattened float32 images (N, 784)."""
    return images @ params.weights + params.bias


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    exps = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exps / exps.sum(axis=1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example loss: minus the log-probability of the true class."""
    return -log_softmax(logits)[np.arange(len(labels)), labels]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> int:
    """Number of correct predictions (the seed's ``accuracy``)."""
    return int((logits.argmax(axis=1) == labels).sum())


def loss_and_grads(
    params: Params, images: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, Params]:
    """Per-example losses, logits and the gradient of the batch's mean loss.

    d(mean CE)/d(logits) = (softmax - onehot) / n, then chain through x @ W + b.
    """
    logits = forward(params, images)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exps = np.exp(shifted)
    sums = exps.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    losses = np.log(sums[:, 0]) - shifted[rows, labels]
    dlogits = exps / sums
    dlogits[rows, labels] -= 1.0
    dlogits /= np.float32(len(labels))
    return losses, logits, Params(images.T @ dlogits, dlogits.sum(axis=0))


def sgd_update(params: Params, grads: Params, lr: float) -> Params:
    lr32 = np.float32(lr)
    return Params(params.weights - lr32 * grads.weights, params.bias - lr32 * grads.bias)


IMAGE_BUFFERS = 3


class Workspace:
    """Buffers the training steps reuse, sized for the largest batch.

    The float32 images rotate through :data:`IMAGE_BUFFERS` buffers. With two
    BLAS threads the other core reads part of each batch's images into its own
    cache, and converting the next batch into that same buffer must first take
    those lines back from it: the conversion took 21 ms an epoch instead of 11
    (perf_counter around each statement). With three buffers the other core's
    copies have left its cache by the time a buffer comes round again: epoch
    73.6 -> 62.8 ms (epochs of both variants interleaved in one process).
    """

    def __init__(self, batch_size: int, num_inputs: int, num_outputs: int) -> None:
        self.pixels = np.empty((batch_size, num_inputs), dtype=np.uint8)
        self._images = np.empty((IMAGE_BUFFERS, batch_size, num_inputs), dtype=np.float32)
        self._turn = 0
        self.logits = np.empty((batch_size, num_outputs), dtype=np.float32)
        self.probs = np.empty((batch_size, num_outputs), dtype=np.float32)
        self.grad_weights = np.empty((num_inputs, num_outputs), dtype=np.float32)
        self.rows = np.arange(batch_size)

    def next_images(self, n: int) -> np.ndarray:
        """The next image buffer of the ring, its first ``n`` rows."""
        self._turn = (self._turn + 1) % IMAGE_BUFFERS
        return self._images[self._turn, :n]


def sgd_step(
    params: Params, pixels: np.ndarray, labels: np.ndarray, lr: float, work: Workspace
) -> tuple[float, int]:
    """One SGD step on uint8 ``pixels`` (n, 784), updating ``params`` in place.

    The same arithmetic as ``loss_and_grads`` then ``sgd_update`` (the tests hold
    them bitwise equal), written into ``work``'s buffers: per step it allocates
    nothing the size of a batch, and it converts uint8 to float32 on the fly, so
    an epoch reads 47 MB of pixels instead of 188 MB. Returns the batch's summed
    loss and its number of correct predictions.
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
    correct = int(np.count_nonzero(logits.argmax(axis=1) == labels))
    np.subtract(logits, logits.max(axis=1, keepdims=True), out=logits)  # now shifted
    np.exp(logits, out=probs)
    sums = probs.sum(axis=1, keepdims=True)
    loss_sum = float((np.log(sums[:, 0]) - logits[rows, labels]).sum(dtype=np.float64))
    probs /= sums
    probs[rows, labels] -= 1.0
    probs /= np.float32(n)  # d(mean loss)/d(logits)
    lr32 = np.float32(lr)
    np.matmul(images.T, probs, out=work.grad_weights)
    work.grad_weights *= lr32
    np.subtract(params.weights, work.grad_weights, out=params.weights)
    np.subtract(params.bias, lr32 * probs.sum(axis=0), out=params.bias)
    return loss_sum, correct


class NumpyTrainer:
    """The protocol's stateful shell around the pure functions above."""

    def __init__(self, data: FashionMNIST, params: Params, config: TrainConfig) -> None:
        from threadpoolctl import ThreadpoolController

        if config.device != "cpu":
            raise ValueError(f"numpy runs on the CPU only, not on device {config.device!r}")
        self._config = config
        self._threads = ThreadpoolController()
        # uint8 kept as is: sgd_step converts each batch (4x fewer bytes read per epoch).
        self._train_pixels = np.ascontiguousarray(data.train_images.reshape(data.num_train, -1))
        self._train_y = data.train_labels
        self._work = Workspace(config.batch_size, self._train_pixels.shape[1], NUM_CLASSES)
        self._test_x = to_float32(data.test_images).reshape(data.num_test, -1)
        self._test_y = data.test_labels
        # Copies: sgd_step updates them in place.
        self._params = Params(
            params.weights.astype(np.float32, copy=True), params.bias.astype(np.float32, copy=True)
        )

    def _limit_threads(self):
        return self._threads.limit(limits=self._config.threads, user_api="blas")

    def train_epoch(self, order: np.ndarray) -> EpochStats:
        order = check_order(order, len(self._train_y))
        batch = self._config.batch_size
        total_loss, correct = 0.0, 0
        with self._limit_threads():
            for start in range(0, len(order), batch):
                index = order[start : start + batch]
                pixels = self._work.pixels[: len(index)]
                # mode="clip": under the default "raise", np.take gathers into a
                # temporary and copies it into out (numpy's docs). The order was
                # checked above, so nothing is clipped. 12.2 -> 7.0 ms an epoch.
                np.take(self._train_pixels, index, axis=0, out=pixels, mode="clip")
                loss_sum, batch_correct = sgd_step(
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
                correct += accuracy(logits, labels)
        return Evaluation(total_loss / len(self._test_y), correct / len(self._test_y))

    def predict(self, images: np.ndarray) -> np.ndarray:
        with self._limit_threads():
            logits = forward(self._params, to_float32(images).reshape(len(images), -1))
        return logits.argmax(axis=1).astype(np.int64)

    def parameters(self) -> Params:
        return Params(self._params.weights.copy(), self._params.bias.copy())

    def runtime_info(self) -> Mapping[str, object]:
        blas = [
            f"{info['internal_api']} {info.get('version') or ''}".strip()
            for info in self._threads.select(user_api="blas").info()
        ]
        return {"device": "cpu", "threads": self._config.threads, "blas": ", ".join(blas)}


def make_trainer(data: FashionMNIST, params: Params, config: TrainConfig) -> NumpyTrainer:
    return NumpyTrainer(data, params, config)
