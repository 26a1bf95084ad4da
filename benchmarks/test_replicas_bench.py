"""The replicas sweep: data-parallel training at R replicas, the threads held equal.

Every implementation with a data-parallel engine (``Implementation.data_parallel``:
PyTorch's DistributedDataParallel, JAX's sharding over a device mesh) trains at each
of ``--replicas`` (default 1 and 2) with the run's threads shared among the replicas
(R of threads/R each), so the points differ by the engine alone: synchronous SGD on
the same global minibatches, whose gradients the engine combines at every step. R=1
is the main configuration, timed again here beside the others: each point runs in a
worker of its own (JAX's host devices are fixed when it starts; DDP starts its
replicas inside the worker), and the points' visits alternate (bench_schedule.py's
:class:`~bench_schedule.ReplicaSweep`), so a spell of the host hits them alike.
On the CPU a point above the usable cores is skipped, saying why.
"""

from __future__ import annotations

import bench_cases
import bench_schedule
import pytest
from bench_options import Settings
from test_softmax_bench import _scheduled

pytestmark = [
    pytest.mark.sweep,
    pytest.mark.filterwarnings("ignore:Benchmark fixture was not used at all"),
]


# An implementation's points are timed inside its first point's test.
@pytest.mark.timeout(0)
def test_replicas(
    benchmark,
    settings: Settings,
    replica_sweep: bench_schedule.ReplicaSweep,
    replicas_case: bench_cases.Case,
) -> None:
    """One point: R replicas' epochs (a warm-up, then visits of 1 untimed + 2 timed), the
    test accuracy after each, the communication seconds where the engine times them."""
    why = bench_cases.replicas_unfit(replicas_case)
    if why is not None:
        pytest.skip(f"{replicas_case.impl}: {why}")
    result = _scheduled(benchmark, settings, replica_sweep, replicas_case)
    assert result.replicas == result.config["replicas"] == replicas_case.replicas
    assert len(result.history) == settings.replica_epochs
