"""What makes implementations interchangeable: the ``Trainer`` protocol.

An implementation module (one per framework, see :mod:`impls.registry`) defines
two functions with these exact names:

``make_trainer(data, params, config) -> Trainer``
    Receives the dataset once (NumPy, uint8 images), converts it at its own
    boundary and keeps it on its device. ``params`` are the shared initial
    weights, identical for every implementation.
``available_devices() -> list[str]``
    The devices this framework can use here, e.g. ``["cpu", "cuda"]``.

``make_trainer`` raises :class:`DeviceUnavailableError` when ``config.device``
is not one of them. No module here imports a framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from impls.config import TrainConfig
    from impls.data import FashionMNIST


class DeviceUnavailableError(ValueError):
    """The device a config asks for is not available to this framework here."""


class Params(NamedTuple):
    """Softmax-regression parameters as float32 NumPy arrays."""

    weights: np.ndarray  # (784, 10)
    bias: np.ndarray  # (10,)


@dataclass(frozen=True)
class EpochStats:
    """What one training epoch reports: the mean per-example loss and accuracy.

    Both are accumulated over the epoch's minibatches as training goes, like the
    seed's ``train_epoch_ch3``.
    """

    loss: float
    accuracy: float
    # Seconds the epoch spent combining the replicas' gradients, where a data-parallel
    # trainer can measure it apart (None: one replica, or not measurable). Its
    # runtime_info()["communication_clock"] says what that clock covers, or why there is none.
    communication_seconds: float | None = None


@dataclass(frozen=True)
class Evaluation:
    """Mean per-example loss and accuracy on the test set."""

    loss: float
    accuracy: float


@runtime_checkable
class Trainer(Protocol):
    """A stateful softmax-regression model bound to one dataset and device.

    Every call that returns numbers has finished its device work (synchronised),
    so the caller may stop a timer right after it.
    """

    def train_epoch(self, order: np.ndarray) -> EpochStats:
        """Run one epoch over the training set in ``order`` (a permutation).

        Consecutive slices of ``config.batch_size`` indices are the minibatches
        (:func:`impls.data.batch_bounds`); the last one may be shorter and is kept.
        Each step uses its batch's mean loss.
        """
        ...

    def evaluate(self) -> Evaluation:
        """Loss and accuracy on the test set with the current parameters."""
        ...

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predicted labels (int64) for uint8 images of shape (N, 28, 28)."""
        ...

    def parameters(self) -> Params:
        """The current parameters, copied to NumPy float32."""
        ...

    def runtime_info(self) -> Mapping[str, object]:
        """Settings actually applied (device name, threads, workers...) for reports."""
        ...


class TrainerFactory(Protocol):
    """The signature of every module's ``make_trainer``."""

    def __call__(self, data: FashionMNIST, params: Params, config: TrainConfig) -> Trainer: ...
