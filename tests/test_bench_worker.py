"""The benchmark worker's own measurements, checked against what they must not include."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import harness

BIG = 400 * 2**20  # far above a NumPy worker's own peak (about 130 MiB)


def test_peak_memory_is_the_workers_own(real_data) -> None:
    """A worker started by a large process reports its own peak, not its parent's."""
    pytest.importorskip("threadpoolctl")
    ballast = np.ones(BIG, dtype=np.uint8)  # touched: resident in this process
    worker = harness.Worker("numpy", "cpu", 1, timeout=120)
    try:
        worker.request("load")
        harness.request_build(worker, {"device": "cpu", "threads": 1, "batch_size": 256})
        info = worker.request("info")
    finally:
        worker.close()
    assert ballast.sum() == BIG
    # The worker holds the uint8 dataset (55 MB) and Python: more than 60 MiB, far less than BIG.
    assert 60 * 2**20 < info["peak_rss_bytes"] < BIG
