"""The textbook maths in plain NumPy: the oracle every implementation's step is held to.

The implementations run fast paths (a fused in-place step, transposed layouts,
uint8 on the device); this is the book's form, kept in the tests only:
:func:`loss_and_grads` gives the gradient of the batch's mean loss,
:func:`sgd_update` takes one step. Finite differences check the oracle itself
(``test_numpy_softmax.py``).
"""

from __future__ import annotations

import numpy as np

from impls.protocol import Params


def loss_and_grads(
    params: Params, images: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, Params]:
    """Per-example losses, logits and the gradient of the batch's mean loss, as in the book.

    d(mean CE)/d(logits) = (softmax - onehot) / n, then chain through x @ W + b.
    """
    logits = images @ params.weights + params.bias
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
    """A new ``params - lr * grads``."""
    lr32 = np.float32(lr)
    return Params(params.weights - lr32 * grads.weights, params.bias - lr32 * grads.bias)
