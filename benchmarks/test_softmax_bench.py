"""The benchmarks: the read-once limit, the compute floor, each implementation's epoch, sweeps.

Groups (``benchmark.group``, :data:`impls.results.GROUPS`): ``epoch`` holds the
limit and the main run of every implementation, so pytest-benchmark's own
table already shows each as a multiple of the limit; ``compute floor`` times
one large matrix product, whose rate gives the time of an epoch's products;
``sweep: batch size`` and ``sweep: threads`` hold the sweeps. Each test stores
its case's result (:mod:`impls.results`) as ``extra_info``.
"""

from __future__ import annotations

import bench_cases
import bench_floors
import bench_schedule
import bench_workers
import pytest
from bench_options import Settings

from impls.results import (
    GROUPS,
    ComputeFloor,
    ReadLimit,
    SeedRun,
    TrainingResult,
    to_extra_info,
)

# A test that skips or fails before timing anything is reported as such, not warned about.
pytestmark = pytest.mark.filterwarnings("ignore:Benchmark fixture was not used at all")


def _start(workers: bench_workers.WorkerPool, case: bench_cases.Case, epochs: int) -> dict:
    try:
        return workers.build(case, epochs=epochs)
    except bench_workers.WorkerSkip as reason:
        pytest.skip(f"{case.impl}: {reason}")


def _time_floor(benchmark, settings: Settings, kind: str, measure) -> None:
    """Time ``measure`` (a floor measurement) for the floors' rounds, then release it."""
    benchmark.group = GROUPS[kind]
    try:
        benchmark.pedantic(measure, rounds=settings.limit_rounds, warmup_rounds=1, iterations=1)
    finally:
        measure.close()
    assert benchmark.stats.stats.median > 0


def test_read_limit(benchmark, settings: Settings, train_float32) -> None:
    """The limit: read the float32 training set once (an epoch must read every pixel)."""
    reader = bench_floors.ReadOnce(train_float32, settings.threads)
    _time_floor(benchmark, settings, "limit", reader)
    result = ReadLimit(
        bytes=reader.nbytes,
        threads=reader.threads,
        what=(
            "np.sum over the float32 training set (60000 x 784), one contiguous block of rows "
            "per thread: every byte read once, nothing written"
        ),
    )
    benchmark.extra_info.update(to_extra_info(result))


def test_compute_floor(benchmark, settings: Settings, dataset) -> None:
    """The compute floor: an epoch's matrix products at this machine's best float32 rate."""
    gemm = bench_floors.PeakGemm(settings.threads)
    _time_floor(benchmark, settings, "compute", gemm)
    result = ComputeFloor(
        threads=gemm.threads,
        flops_per_call=gemm.flops,
        epoch_flops=bench_floors.epoch_flops(dataset.num_train),
        what=(
            f"np.matmul of two {gemm.size} x {gemm.size} float32 matrices: the BLAS's best "
            "rate, applied to the epoch's products (forward and weight gradient)"
        ),
    )
    benchmark.extra_info.update(to_extra_info(result))


def _measure(
    benchmark,
    settings: Settings,
    case: bench_cases.Case,
    workers,
    *,
    warmup: int,
    rounds: int,
    evaluate_each: bool,
):
    """Build ``case``'s trainer, run ``warmup`` untimed epochs, then ``rounds`` timed ones."""
    benchmark.group = case.group
    build = _start(workers, case, epochs=warmup + rounds)
    worker = workers.get(case)
    epochs = bench_workers.EpochRequests(
        worker,
        evaluate_each_epoch=evaluate_each,
        timeout_factor=settings.epoch_timeout_factor,
        timeout_min=settings.epoch_timeout_min,
    )
    epochs.warm_up(warmup)
    bench_schedule.record_rounds(benchmark, epochs.time_rounds(rounds))
    return epochs, _fields(case, worker, build, epochs.finish(), warmup=warmup)


def _fields(case: bench_cases.Case, worker, build: dict, history: list, *, warmup: int) -> dict:
    """The :class:`TrainingResult` fields every training case records."""
    return {
        "kind": case.kind,
        "implementation": case.impl,
        "device": case.device,
        "threads": case.threads,
        "batch_size": case.batch_size,
        "size": case.size,
        "loader_workers": case.loader_workers,
        "replicas": case.replicas,
        "num_train": worker.hello["num_train"],
        "history": history,
        "config": build["config"],
        "runtime": build["runtime"],
        "build_seconds": build["build_seconds"],
        "import_seconds": build["import_seconds"],
        "process_start_seconds": build["process_start_seconds"],
        "data_load_seconds": build["data_load_seconds"],
        "warmup_epochs": warmup,
    }


def _scheduled(benchmark, settings: Settings, schedule, case: bench_cases.Case) -> TrainingResult:
    """Record ``case``'s rounds, timed by ``schedule`` (a :class:`bench_schedule.MainRun` or
    :class:`bench_schedule.ReplicaSweep`), and its result: the first seed's history, the
    others' as more seeds, its predictions, spell marks and memory."""
    benchmark.group = case.group
    run = schedule.outcome(case)
    if isinstance(run.error, bench_workers.WorkerSkip):
        pytest.skip(f"{case.impl}: {run.error}")
    if run.error is not None:
        raise run.error
    bench_schedule.record_rounds(benchmark, run.seconds)
    (first_seed, history), *more = run.histories
    result = TrainingResult(
        **_fields(case, run.epochs.worker, run.build, history, warmup=1),
        target_accuracy=settings.target_accuracy,
        predictions=run.predictions,
        spell_rounds=run.spell_rounds,
        more_seeds=[SeedRun(seed, seed_history) for seed, seed_history in more] or None,
        communication_apart=run.communication_apart,
        **(run.memory or run.epochs.memory()),
    )
    schedule.release(case)
    benchmark.extra_info.update(to_extra_info(result))
    assert result.config["seed"] == first_seed == settings.seeds[0]
    assert 0 < result.final_test_accuracy <= 1
    return result


# The schedule runs inside the first case's test; each request has its own timeout.
@pytest.mark.timeout(0)
def test_epoch(
    benchmark, settings: Settings, main_run: bench_schedule.MainRun, epoch_case: bench_cases.Case
) -> None:
    """Steady-state epoch time: epoch 1 is warm-up, epochs 2..E the timed rounds.

    Every implementation's rounds are timed in one schedule (bench_schedule.py,
    round-robin by default) the first time a case asks; each test then records
    its own rounds and reads its worker's history, predictions and memory."""
    result = _scheduled(benchmark, settings, main_run, epoch_case)
    assert [len(r.history) for r in result.seed_runs] == [settings.epochs] * len(settings.seeds)


def _sweep(
    benchmark, settings: Settings, workers: bench_workers.WorkerPool, case, rounds: int
) -> TrainingResult:
    """One sweep point: warm-up epochs, then ``rounds`` timed epochs without evaluation in
    between; its result recorded and returned."""
    _, fields = _measure(
        benchmark,
        settings,
        case,
        workers,
        warmup=settings.sweep_warmup,
        rounds=rounds,
        evaluate_each=False,
    )
    result = TrainingResult(**fields)
    benchmark.extra_info.update(to_extra_info(result))
    assert 0 < result.final_test_accuracy <= 1
    return result


@pytest.mark.sweep
def test_sweep_batch_size(
    benchmark, settings: Settings, workers: bench_workers.WorkerPool, batch_case: bench_cases.Case
) -> None:
    _sweep(benchmark, settings, workers, batch_case, settings.sweep_rounds)


@pytest.mark.sweep
def test_sweep_threads(
    benchmark, settings: Settings, workers: bench_workers.WorkerPool, threads_case: bench_cases.Case
) -> None:
    _sweep(benchmark, settings, workers, threads_case, settings.sweep_rounds)
