"""The shared training loop (the seed's ``train_ch3``), framework-free.

:class:`EpochRunner` runs one epoch of any :class:`~impls.protocol.Trainer` in
the shared minibatch order, stops a diverging run with a clear error, and
records the epoch as an :class:`~impls.results.EpochRecord`. :func:`fit`
(behind ``fmbench train``) and the benchmark worker both drive it, so an
epoch is run, checked, timed and recorded the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from impls.config import TrainConfig
from impls.data import NUM_CLASSES, NUM_INPUTS, FashionMNIST, MinibatchOrder
from impls.protocol import Params, Trainer
from impls.results import EpochRecord

# A mean cross-entropy this large means confidently wrong by a factor e^1000:
# with a stable loss, a diverging run can stay finite, so finiteness alone is not enough.
DIVERGED_LOSS = 1e3


class DivergenceError(RuntimeError):
    """The training loss became non-finite or exploded."""


@dataclass
class History:
    """Per-epoch records of one run, plus what was applied to get them."""

    implementation: str
    config: TrainConfig
    records: list[EpochRecord] = field(default_factory=list)
    runtime: dict[str, object] = field(default_factory=dict)

    @property
    def final(self) -> EpochRecord:
        return self.records[-1]

    def column(self, name: str) -> list[float]:
        return [getattr(record, name) for record in self.records]

    def as_dict(self) -> dict[str, object]:
        return {
            "implementation": self.implementation,
            "config": self.config.as_dict(),
            "runtime": dict(self.runtime),
            "records": [record.as_dict() for record in self.records],
        }


Callback = Callable[[EpochRecord], None]


def init_params(config: TrainConfig, num_inputs: int = NUM_INPUTS) -> Params:
    """The shared initial parameters: W (num_inputs, 10) ~ N(0, init_std^2), b = 0, from
    ``config.seed``; ``num_inputs`` is the data's pixels per image (``FashionMNIST.num_inputs``)."""
    rng = np.random.default_rng([config.seed, 0])
    weights = rng.normal(0.0, config.init_std, size=(num_inputs, NUM_CLASSES))
    return Params(weights.astype(np.float32), np.zeros(NUM_CLASSES, dtype=np.float32))


def check_finite(loss: float, epoch: int, config: TrainConfig) -> None:
    """Raise :class:`DivergenceError` when ``loss`` shows the run has diverged."""
    if not math.isfinite(loss) or loss > DIVERGED_LOSS:
        raise DivergenceError(
            f"training diverged at epoch {epoch}: mean train loss {loss:.4g} with lr {config.lr}; "
            "try a smaller learning rate (--lr)"
        )


class EpochRunner:
    """Runs a trainer's epochs in the shared order, one at a time, and keeps their records.

    :meth:`prepare` draws the next epoch's order (outside any clock),
    :meth:`train` trains one epoch and records it, :meth:`evaluate` adds the
    test figures to the latest record. The seconds in a record are
    ``time.perf_counter`` around ``train_epoch`` and ``evaluate`` alone.
    """

    def __init__(self, trainer: Trainer, config: TrainConfig, num_train: int) -> None:
        self.trainer = trainer
        self.config = config
        self.order = MinibatchOrder(num_train, config.seed)
        self.history: list[EpochRecord] = []
        self._next_order: np.ndarray | None = None

    def prepare(self) -> None:
        """Draw the next epoch's order now, so that :meth:`train` times training alone."""
        self._next_order = self.order.epoch(len(self.history))

    def train(self) -> EpochRecord:
        """Train the next epoch; a diverging loss raises :class:`DivergenceError`."""
        if self._next_order is None:
            self.prepare()
        order, self._next_order = self._next_order, None
        start = time.perf_counter()
        stats = self.trainer.train_epoch(order)
        seconds = time.perf_counter() - start
        epoch = len(self.history) + 1
        check_finite(stats.loss, epoch, self.config)
        record = EpochRecord(
            epoch=epoch,
            train_loss=stats.loss,
            train_accuracy=stats.accuracy,
            test_loss=None,
            test_accuracy=None,
            train_seconds=seconds,
            eval_seconds=None,
            communication_seconds=stats.communication_seconds,
        )
        self.history.append(record)
        return record

    def evaluate(self) -> EpochRecord:
        """Evaluate on the test set; the latest record gets the figures."""
        start = time.perf_counter()
        evaluation = self.trainer.evaluate()
        seconds = time.perf_counter() - start
        record = dataclasses.replace(
            self.history[-1],
            test_loss=evaluation.loss,
            test_accuracy=evaluation.accuracy,
            eval_seconds=seconds,
        )
        self.history[-1] = record
        return record


def fit(
    trainer: Trainer,
    data: FashionMNIST,
    config: TrainConfig,
    *,
    implementation: str = "",
    callbacks: Sequence[Callback] = (),
) -> History:
    """Train for ``config.epochs`` epochs, evaluating after each; return the history."""
    runner = EpochRunner(trainer, config, data.num_train)
    for _ in range(config.epochs):
        runner.train()
        record = runner.evaluate()
        for callback in callbacks:
            callback(record)
    return History(implementation, config, runner.history, dict(trainer.runtime_info()))
