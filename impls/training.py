"""The shared training loop (the seed's ``train_ch3``), framework-free.

``fit`` drives any :class:`~impls.protocol.Trainer` through the epochs in the
shared minibatch order, evaluates after each, times training apart from
evaluation and stops a diverging run with a clear error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from impls.config import TrainConfig
from impls.data import FashionMNIST, MinibatchOrder
from impls.protocol import Params, Trainer

NUM_INPUTS = 28 * 28
NUM_OUTPUTS = 10
# A mean cross-entropy this large means confidently wrong by a factor e^1000:
# with a stable loss, a diverging run can stay finite, so finiteness alone is not enough.
DIVERGED_LOSS = 1e3


class DivergenceError(RuntimeError):
    """The training loss became non-finite or exploded."""


@dataclass(frozen=True)
class EpochRecord:
    """One row of the history (epochs counted from 1)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    train_seconds: float
    eval_seconds: float


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
            "records": [asdict(record) for record in self.records],
        }


Callback = Callable[[EpochRecord], None]


def init_params(config: TrainConfig) -> Params:
    """The shared initial parameters: W ~ N(0, init_std^2), b = 0, from ``config.seed``."""
    rng = np.random.default_rng([config.seed, 0])
    weights = rng.normal(0.0, config.init_std, size=(NUM_INPUTS, NUM_OUTPUTS))
    return Params(weights.astype(np.float32), np.zeros(NUM_OUTPUTS, dtype=np.float32))


def check_finite(loss: float, epoch: int, config: TrainConfig) -> None:
    """Raise :class:`DivergenceError` when ``loss`` shows the run has diverged."""
    if not math.isfinite(loss) or loss > DIVERGED_LOSS:
        raise DivergenceError(
            f"training diverged at epoch {epoch}: mean train loss {loss:.4g} with lr {config.lr}; "
            "try a smaller learning rate (--lr)"
        )


def fit(
    trainer: Trainer,
    data: FashionMNIST,
    config: TrainConfig,
    *,
    implementation: str = "",
    callbacks: Sequence[Callback] = (),
) -> History:
    """Train for ``config.epochs`` epochs, evaluating after each; return the history."""
    order = MinibatchOrder(data.num_train, config.batch_size, config.seed)
    history = History(implementation, config, runtime=dict(trainer.runtime_info()))
    for epoch in range(config.epochs):
        start = time.perf_counter()
        stats = trainer.train_epoch(order.epoch(epoch))
        trained = time.perf_counter()
        check_finite(stats.loss, epoch + 1, config)
        evaluation = trainer.evaluate()
        evaluated = time.perf_counter()
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=stats.loss,
            train_accuracy=stats.accuracy,
            test_loss=evaluation.loss,
            test_accuracy=evaluation.accuracy,
            train_seconds=trained - start,
            eval_seconds=evaluated - trained,
        )
        history.records.append(record)
        for callback in callbacks:
            callback(record)
    return history


def train(
    implementation: str,
    data: FashionMNIST,
    config: TrainConfig,
    *,
    callbacks: Sequence[Callback] = (),
) -> tuple[History, Trainer]:
    """Build ``implementation`` from the shared initial parameters and ``fit`` it."""
    from impls import registry

    config = config.resolved()
    trainer = registry.make_trainer(implementation, data, init_params(config), config)
    history = fit(trainer, data, config, implementation=implementation, callbacks=callbacks)
    return history, trainer
