"""PyTorch's data-parallel trainers: shares of a minibatch, and replica processes that fail.

Agreement with one replica on the real data is in ``test_conformance.py``; here, on
the small synthetic data, the edge of a minibatch smaller than the replicas, and what
happens when a replica raises, is killed, hangs, or the caller is interrupted or drops
the trainer: a clear error in bounded time, and no replica process left behind.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import re
import signal
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
psutil = pytest.importorskip("psutil")

from replica_faults import HangsWhenTraining, RaisesWhenTraining  # noqa: E402

from impls.config import TrainConfig  # noqa: E402
from impls.data import MinibatchOrder  # noqa: E402
from impls.registry import make_trainer  # noqa: E402
from impls.torch_nn import TorchNNTrainer  # noqa: E402
from impls.torch_parallel import ParallelTrainer  # noqa: E402
from impls.torch_support import share_bounds  # noqa: E402
from impls.training import init_params  # noqa: E402

# Tolerances of the conformance suite: only the float32 summation order differs.
RTOL = 1e-4
ATOL = 1e-5


@pytest.fixture(autouse=True)
def no_replica_left_behind():
    """After every test, no replica process of this one is alive."""
    yield
    alive = [child.name for child in multiprocessing.active_children()]
    assert not [name for name in alive if name.startswith("fmbench-replica")], alive


def assert_stopped(pids: list[int | None]) -> None:
    """Every one of ``pids`` has ended and been reaped: none is this process's child."""
    assert all(pid is not None for pid in pids)
    children = {child.pid for child in psutil.Process().children(recursive=True)}
    assert not children & set(pids)
    assert not any(psutil.pid_exists(pid) for pid in pids)


def two_replicas() -> TrainConfig:
    return TrainConfig(threads=2, replicas=2, batch_size=64)


# ------------------------------------------------------------------ shares


@pytest.mark.parametrize(("size", "replicas"), [(256, 2), (96, 4), (7, 3), (2, 3), (1, 4)])
def test_shares_cut_a_minibatch_into_near_equal_consecutive_parts(size, replicas):
    start = 500
    parts = [share_bounds(start, start + size, rank, replicas) for rank in range(replicas)]
    assert parts[0][0] == start and parts[-1][1] == start + size
    assert all(parts[i][1] == parts[i + 1][0] for i in range(replicas - 1))
    lengths = [stop - begin for begin, stop in parts]
    assert max(lengths) - min(lengths) <= 1 and min(lengths) >= 0


@pytest.mark.parametrize("name", ["torch-nn", "torch-scratch"])
def test_minibatches_smaller_than_the_replicas_leave_shares_empty(name, tiny_data):
    """Batches of 2 (the last of 1) over 3 replicas: some shares are empty at every step,
    and the steps are still one device's."""
    # The random images' squared norms are about 260: lr 0.1 would overshoot every step,
    # and a chaotic run amplifies rounding; this lr keeps the steps contracting.
    config = TrainConfig(threads=3, replicas=3, batch_size=2, lr=1e-3)
    order = MinibatchOrder(tiny_data.num_train, 0).epoch(0)[:301]
    single = make_trainer(name, tiny_data, init_params(config), config.replace(replicas=1))
    expected = single.train_epoch(order)
    trainer = make_trainer(name, tiny_data, init_params(config), config)
    try:
        stats = trainer.train_epoch(order)
        params = trainer.parameters()
    finally:
        trainer.close()
    assert_stopped(trainer.pids)
    assert stats.loss == pytest.approx(expected.loss, rel=RTOL)
    assert abs(stats.accuracy - expected.accuracy) * len(order) <= 3  # near-ties may flip
    np.testing.assert_allclose(params.weights, single.parameters().weights, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(params.bias, single.parameters().bias, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ faults


def test_a_killed_replica_is_a_clear_error_and_stops_the_others(tiny_data):
    config = two_replicas()
    trainer = make_trainer("torch-nn", tiny_data, init_params(config), config)
    order = MinibatchOrder(tiny_data.num_train, 0)
    trainer.train_epoch(order.epoch(0))
    victim = trainer.pids[1]
    os.kill(victim, signal.SIGKILL)
    message = rf"during train_epoch, replica 1 \(pid {victim}\) was killed by SIGKILL"
    with pytest.raises(RuntimeError, match=message + r".*stopped all replicas"):
        trainer.train_epoch(order.epoch(1))
    assert_stopped(trainer.pids)
    with pytest.raises(RuntimeError, match=r"replicas are stopped .*build a new trainer"):
        trainer.parameters()


def test_a_replica_that_raises_is_a_clear_error_and_stops_the_others(tiny_data):
    config = two_replicas()
    trainer = ParallelTrainer(RaisesWhenTraining, tiny_data, init_params(config), config)
    order = MinibatchOrder(tiny_data.num_train, 0).epoch(0)
    message = "during train_epoch, replica 1 failed: ValueError: replica 1 was told to fail"
    with pytest.raises(RuntimeError, match=re.escape(message)):
        trainer.train_epoch(order)
    assert_stopped(trainer.pids)


def test_a_hung_replica_is_stopped_after_the_timeout(tiny_data):
    config = two_replicas()
    trainer = ParallelTrainer(
        HangsWhenTraining, tiny_data, init_params(config), config, timeout_s=2
    )
    order = MinibatchOrder(tiny_data.num_train, 0).epoch(0)
    # Replica 0 waits in the all-reduce for replica 1, so neither answers.
    message = "replicas 0, 1 did not answer train_epoch within 2 s (hung); stopped all replicas"
    with pytest.raises(RuntimeError, match=re.escape(message)):
        trainer.train_epoch(order)
    assert_stopped(trainer.pids)


def test_an_interrupted_request_stops_every_replica(tiny_data):
    """Ctrl-C while the replicas train: the interrupt goes on, the replicas are stopped."""
    config = two_replicas()
    trainer = ParallelTrainer(HangsWhenTraining, tiny_data, init_params(config), config)
    order = MinibatchOrder(tiny_data.num_train, 0).epoch(0)
    interrupt = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    interrupt.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.train_epoch(order)
    finally:
        interrupt.cancel()
    assert_stopped(trainer.pids)


def test_a_dropped_trainer_stops_its_replicas(tiny_data):
    config = two_replicas()
    trainer = ParallelTrainer(TorchNNTrainer, tiny_data, init_params(config), config)
    pids = trainer.pids
    assert all(psutil.pid_exists(pid) for pid in pids)
    del trainer
    gc.collect()
    assert_stopped(pids)
