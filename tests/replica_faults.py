"""Replica trainers that fail on purpose, for the data-parallel fault tests.

Spawned replica processes import this module by name: the spawn hands them this
process's import path, which holds the tests' folder.
"""

from __future__ import annotations

import time

from impls.torch_nn import TorchNNTrainer


class RaisesWhenTraining(TorchNNTrainer):
    """Replica 1 raises in its first epoch, leaving replica 0 waiting in the all-reduce."""

    def __init__(self, data, params, config, replicas=None) -> None:
        super().__init__(data, params, config, replicas)
        self._fails = replicas is not None and replicas.rank == 1

    def train_epoch(self, order):
        if self._fails:
            raise ValueError("replica 1 was told to fail")
        return super().train_epoch(order)


class HangsWhenTraining(TorchNNTrainer):
    """Replica 1 never finishes an epoch, leaving replica 0 waiting in the all-reduce."""

    def __init__(self, data, params, config, replicas=None) -> None:
        super().__init__(data, params, config, replicas)
        self._hangs = replicas is not None and replicas.rank == 1

    def train_epoch(self, order):
        while self._hangs:
            time.sleep(1)
        return super().train_epoch(order)
