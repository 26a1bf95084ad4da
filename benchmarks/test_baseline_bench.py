"""The baseline broken down: how much of the book's epoch is its input pipeline.

d2l-reference streams every batch through torchvision's per-image ``ToTensor``
and a ``DataLoader`` with the book's 4 worker processes (2 cores here). For
each number of workers in ``--loader-workers`` (default 0, 2, 4), two points:

* ``loader``: the whole training epoch with that many workers (with the book's 4,
  the main run's epochs when it runs, the same configuration: that point is then
  deselected, :func:`bench_cases.timed_by_the_main_run`);
* ``loader-only``: the same loader iterated for an epoch with no training
  (``load_batches``): the input pipeline alone.

So a reader sees the framework's share of the baseline's epoch apart from the
pipeline's, and what the book's choice of workers costs on this machine.
"""

from __future__ import annotations

import time

import bench_cases
import bench_schedule
import bench_workers
import pytest
from bench_options import Settings
from test_softmax_bench import _start, _sweep

from impls.results import LoaderResult, to_extra_info

pytestmark = [
    pytest.mark.sweep,
    pytest.mark.filterwarnings("ignore:Benchmark fixture was not used at all"),
]


def test_loader_workers(
    benchmark,
    settings: Settings,
    workers: bench_workers.WorkerPool,
    loader_case: bench_cases.Case,
) -> None:
    """The baseline's training epoch with ``loader_workers`` DataLoader workers."""
    result = _sweep(benchmark, settings, workers, loader_case, settings.loader_rounds)
    assert result.loader_workers == result.runtime["num_workers"] == loader_case.loader_workers


def test_loader_alone(
    benchmark,
    settings: Settings,
    workers: bench_workers.WorkerPool,
    loader_only_case: bench_cases.Case,
) -> None:
    """The baseline's DataLoader iterated for an epoch, no training: the pipeline alone."""
    case = loader_only_case
    benchmark.group = case.group
    build = _start(workers, case, epochs=1)
    worker = workers.get(case)
    start = time.perf_counter()
    examples = worker.request("load_batches")["examples"]  # the warm-up: workers, caches
    timeout = bench_workers.epoch_timeout(
        time.perf_counter() - start, settings.epoch_timeout_factor, settings.epoch_timeout_min
    )
    rounds = [
        worker.request("load_batches", timeout=timeout)["seconds"]
        for _ in range(settings.loader_rounds)
    ]
    bench_schedule.record_rounds(benchmark, rounds)  # the worker's clock, as for epochs
    result = LoaderResult(
        implementation=case.impl,
        device=case.device,
        threads=case.threads,
        batch_size=case.batch_size,
        loader_workers=case.loader_workers,
        num_train=examples,
        runtime=build["runtime"],
    )
    benchmark.extra_info.update(to_extra_info(result))
    assert examples == worker.hello["num_train"]
    assert result.runtime["num_workers"] == case.loader_workers
