"""The benchmarks: the read-once limit, the compute floor, each implementation's epoch, sweeps.

Groups (``benchmark.group``): ``epoch`` holds the limit and the main run of
every implementation, so pytest-benchmark's own table already shows each as a
multiple of the limit; ``compute floor`` times one large matrix product, whose
rate gives the time of an epoch's products; ``sweep: batch size`` and ``sweep:
threads`` hold the sweeps. Everything the report needs besides the timings is in
``extra_info``.
"""

from __future__ import annotations

import time

import harness
import pytest

# A test that skips or fails before timing anything is reported as such, not warned about.
pytestmark = pytest.mark.filterwarnings("ignore:Benchmark fixture was not used at all")


def _start(workers: harness.WorkerPool, case: harness.Case, **config: object) -> dict:
    try:
        return workers.build(case, **config)
    except harness.WorkerSkip as reason:
        pytest.skip(f"{case.impl}: {reason}")


def _memory(worker: harness.Worker) -> dict:
    info = worker.request("info")
    return {
        "peak_rss_bytes": info["peak_rss_bytes"],
        "peak_rss_children_bytes": info["peak_rss_children_bytes"],
        "memory_scope": (
            "worker process running only this implementation (VmHWM on Linux, else ru_maxrss)"
        ),
    }


def _case_info(case: harness.Case, build: dict) -> dict:
    return {
        "implementation": case.impl,
        "device": case.device,
        "threads": case.threads,
        "batch_size": case.batch_size,
        "runtime": build["runtime"],
        "config": build["config"],
        "build_seconds": build["build_seconds"],
        "import_seconds": build["import_seconds"],
    }


def test_read_limit(benchmark, settings: harness.Settings, train_float32) -> None:
    """The limit: read the float32 training set once (an epoch must read every pixel)."""
    benchmark.group = harness.GROUP_EPOCH
    reader = harness.ReadOnce(train_float32, settings.threads)
    try:
        benchmark.pedantic(reader, rounds=settings.limit_rounds, warmup_rounds=1, iterations=1)
    finally:
        reader.close()
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        kind="limit",
        implementation="limit",
        device="cpu",
        what=(
            "np.sum over the float32 training set (60000 x 784), one contiguous block of rows "
            "per thread: every byte read once, nothing written"
        ),
        bytes=reader.nbytes,
        threads=reader.threads,
        batch_size=None,
        gigabytes_per_second=reader.nbytes / median / 1e9,
    )
    assert median > 0


def test_compute_floor(benchmark, settings: harness.Settings, dataset) -> None:
    """The compute floor: an epoch's matrix products at this machine's best float32 rate."""
    benchmark.group = harness.GROUP_COMPUTE
    gemm = harness.PeakGemm(settings.threads)
    try:
        benchmark.pedantic(gemm, rounds=settings.limit_rounds, warmup_rounds=1, iterations=1)
    finally:
        gemm.close()
    rate = gemm.flops / benchmark.stats.stats.median
    flops = harness.epoch_flops(dataset.num_train)
    benchmark.extra_info.update(
        kind="compute",
        implementation="compute",
        device="cpu",
        what=(
            f"np.matmul of two {gemm.size} x {gemm.size} float32 matrices: the BLAS's best "
            "rate, applied to the epoch's products (forward and weight gradient)"
        ),
        threads=gemm.threads,
        batch_size=None,
        flops_per_call=gemm.flops,
        gigaflops_per_second=rate / 1e9,
        epoch_flops=flops,
        floor_seconds=flops / rate,
    )
    assert rate > 0


def test_epoch(
    benchmark, settings: harness.Settings, workers: harness.WorkerPool, epoch_case: harness.Case
) -> None:
    """Steady-state epoch time: epoch 1 is warm-up, epochs 2..E the timed rounds."""
    case = epoch_case
    benchmark.group = case.group
    build = _start(workers, case, epochs=settings.epochs)
    worker = workers.get(case)
    loop = harness.EpochLoop(worker)
    first = loop.run_untimed()
    benchmark.pedantic(loop.train, setup=loop.setup, rounds=settings.epochs - 1, iterations=1)
    final = loop.finish()
    predictions = worker.request("predict", count=harness.PREDICTION_COUNT)["predictions"]
    median = benchmark.stats.stats.median
    num_train = worker.hello["num_train"]
    history = loop.history
    benchmark.extra_info.update(
        kind="epoch",
        **_case_info(case, build),
        epochs=len(history),
        timed_rounds=len(history) - 1,
        first_epoch_seconds=first,
        num_train=num_train,
        examples_per_second=num_train / median,
        final_test_accuracy=final["test_accuracy"],
        target_accuracy=settings.target_accuracy,
        time_to_accuracy_seconds=harness.time_to_accuracy(history, settings.target_accuracy),
        history=history,
        predictions=predictions,
        overhead_seconds_max=max(r["train_seconds"] - r["worker_seconds"] for r in history),
        **_memory(worker),
    )
    assert len(history) == settings.epochs
    assert 0 < final["test_accuracy"] <= 1


def _sweep(benchmark, settings: harness.Settings, workers: harness.WorkerPool, case) -> None:
    """One sweep point: a warm-up epoch, then timed epochs without evaluation in between."""
    benchmark.group = case.group
    build = _start(workers, case)
    worker = workers.get(case)
    loop = harness.EpochLoop(worker, evaluate_each_epoch=False)
    warmup_start = time.perf_counter()
    for _ in range(settings.sweep_warmup):
        loop.run_untimed()
    first = time.perf_counter() - warmup_start
    benchmark.pedantic(loop.train, setup=loop.setup, rounds=settings.sweep_rounds, iterations=1)
    final = loop.finish()
    num_train = worker.hello["num_train"]
    benchmark.extra_info.update(
        kind=case.kind,
        **_case_info(case, build),
        epochs=len(loop.history),
        timed_rounds=settings.sweep_rounds,
        first_epoch_seconds=first,
        num_train=num_train,
        examples_per_second=num_train / benchmark.stats.stats.median,
        final_test_accuracy=final["test_accuracy"],
        history=loop.history,
    )
    assert 0 < final["test_accuracy"] <= 1


@pytest.mark.sweep
def test_sweep_batch_size(
    benchmark, settings: harness.Settings, workers: harness.WorkerPool, batch_case: harness.Case
) -> None:
    _sweep(benchmark, settings, workers, batch_case)


@pytest.mark.sweep
def test_sweep_threads(
    benchmark, settings: harness.Settings, workers: harness.WorkerPool, threads_case: harness.Case
) -> None:
    _sweep(benchmark, settings, workers, threads_case)
