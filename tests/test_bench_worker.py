"""The benchmark worker: its own measurements, and epochs run by the shared loop."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_workers

from impls.config import TrainConfig
from impls.registry import train

BIG = 400 * 2**20  # far above a NumPy worker's own peak (about 130 MiB)


def test_peak_memory_is_the_workers_own(real_data) -> None:
    """A worker started by a large process reports its own peak, not its parent's."""
    pytest.importorskip("threadpoolctl")
    ballast = np.ones(BIG, dtype=np.uint8)  # touched: resident in this process
    worker = bench_workers.Worker("numpy", "cpu", 1, timeout=120)
    try:
        worker.request("load")
        bench_workers.request_build(worker, {"device": "cpu", "threads": 1, "batch_size": 256})
        info = worker.request("info")
    finally:
        worker.close()
    assert ballast.sum() == BIG
    # The worker holds the uint8 dataset (55 MB) and Python: more than 60 MiB, far less than BIG.
    assert 60 * 2**20 < info["peak_rss_bytes"] < BIG


def test_worker_epochs_are_the_shared_loops_epochs(real_data) -> None:
    """The bench worker runs fmbench train's loop: same order, same losses, same accuracy."""
    pytest.importorskip("threadpoolctl")
    config = TrainConfig(epochs=2, threads=1, seed=3)
    history, _ = train("numpy", real_data, config)
    worker = bench_workers.Worker("numpy", "cpu", 1, timeout=120)
    try:
        worker.request("load")
        bench_workers.request_build(worker, {"device": "cpu", "threads": 1, "seed": 3})
        epochs = bench_workers.EpochRequests(worker)
        epochs.warm_up(1)
        epochs.setup()
        epochs.train()
        records = epochs.finish()
    finally:
        worker.close()
    assert [r.epoch for r in records] == [1, 2]
    for ours, theirs in zip(records, history.records, strict=True):
        assert (ours.train_loss, ours.train_accuracy) == (theirs.train_loss, theirs.train_accuracy)
        assert (ours.test_loss, ours.test_accuracy) == (theirs.test_loss, theirs.test_accuracy)
        assert ours.train_seconds > 0 and ours.eval_seconds > 0


def test_the_pool_keeps_several_workers_alive_only_when_asked(real_data) -> None:
    """The main run keeps every worker; a dead one is left to its own case to report."""
    pytest.importorskip("threadpoolctl")
    from bench_cases import Case

    pool = bench_workers.WorkerPool(None, 120)
    one, two = (Case("epoch", "numpy", "cpu", threads, 256) for threads in (1, 2))
    try:
        first = pool.get(one, keep_others=True)
        second = pool.get(two, keep_others=True)
        assert first.alive() and second.alive() and pool.get(one, keep_others=True) is first
        first.kill()
        assert pool.get(two, keep_others=True) is second
        with pytest.raises(bench_workers.WorkerError, match="worker is not running"):
            first.request("train")  # its own error, not a closed file's
        replacement = pool.get(one)  # not keeping others: a fresh worker, the other stopped
        assert replacement is not first and replacement.alive() and not second.alive()
    finally:
        pool.close()
    assert not replacement.alive()


TREE_MEMORY_SCRIPT = """
import json, subprocess, sys, time

import bench_worker

HOLD = "import time; b = bytearray(200 * 2**20); time.sleep(%s)"
subprocess.run([sys.executable, "-c", HOLD % 0.2], check=True)  # before the build: ignored
memory = bench_worker.TreeMemory()
memory.mark()  # the build
memory.arm()
with memory:
    time.sleep(0.3)
before = memory.peak, memory.during
# A child that lives across epochs (a replica): sampled when armed, not during requests.
child = subprocess.Popen([sys.executable, "-c", HOLD % 60])
try:
    time.sleep(1.5)  # the child's pages are touched
    memory.arm()
    persistent = memory.peak, memory.during
finally:
    child.kill()
    child.wait()
# Children that live within an epoch (DataLoader workers): once one has come and gone,
# the tree is sampled while each request runs.
memory.peak = None
subprocess.run([sys.executable, "-c", HOLD % 0.2], check=True)
memory.arm()
with memory:
    child = subprocess.Popen([sys.executable, "-c", HOLD % 60])
    try:
        time.sleep(1.5)
    finally:
        child.kill()
        child.wait()
print(json.dumps({"before": before, "persistent": persistent,
                  "transient": [memory.peak, memory.during]}))
"""


def test_tree_memory_counts_children_without_sampling_epochs_it_need_not() -> None:
    """Nothing sampled without children since the build; live children sampled when armed
    (untimed); children that come and go within epochs sampled during requests.

    In a fresh process: this one may have started children already."""
    pytest.importorskip("psutil")
    import json
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", TREE_MEMORY_SCRIPT],
        env=bench_workers.worker_env(1) | {"PYTHONPATH": str(bench_workers.HERE)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    assert peaks["before"] == [None, False]  # no child since the build: nothing sampled
    persistent_peak, persistent_during = peaks["persistent"]
    assert persistent_peak > 200 * 2**20 and not persistent_during
    transient_peak, transient_during = peaks["transient"]
    assert transient_peak > 200 * 2**20 and transient_during
