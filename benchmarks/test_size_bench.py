"""The input-size sweep: every implementation at each swept image side, and both floors there.

The book's loader takes a size (``load_data_fashion_mnist(batch_size, resize=64)``):
how an implementation's epoch grows with the pixels per image shows where its
fixed costs stop mattering and where it becomes bound by memory or by arithmetic.
Each point trains on the images resized once (bit for bit torchvision's
``Resize``, cached), d2l-reference resizing each image every epoch as the book
does, with the learning rate of :data:`impls.config.LR_RULE`. The native 28 × 28
point is the main run's (``test_softmax_bench.test_epoch``). The floors here
are the main ones measured on the resized training set, first, like those.
"""

from __future__ import annotations

import bench_cases
import bench_floors
import bench_workers
import pytest
from bench_options import Settings
from test_softmax_bench import _sweep

from impls.data import to_float32
from impls.results import GROUPS, ComputeFloor, ReadLimit, to_extra_info

pytestmark = [
    pytest.mark.sweep,
    pytest.mark.filterwarnings("ignore:Benchmark fixture was not used at all"),
]


def _time(benchmark, settings: Settings, kind: str, measure) -> None:
    """Time ``measure`` for the swept floors' rounds, then release it."""
    benchmark.group = GROUPS[kind]
    try:
        rounds = settings.size_floor_rounds
        benchmark.pedantic(measure, rounds=rounds, warmup_rounds=1, iterations=1)
    finally:
        measure.close()
    assert benchmark.stats.stats.median > 0


def test_read_limit_at_size(benchmark, settings: Settings, dataset, floor_size: int) -> None:
    """The read limit at ``floor_size``: one read of the float32 training set of that size."""
    resized = dataset.at_size(floor_size)  # and the workers read the cache this fills
    pixels = to_float32(resized.train_images).reshape(resized.num_train, -1)
    reader = bench_floors.ReadOnce(pixels, settings.threads)
    del pixels  # the reader's blocks hold it; gone with the reader
    _time(benchmark, settings, "size-limit", reader)
    result = ReadLimit(
        kind="size-limit",
        size=floor_size,
        bytes=reader.nbytes,
        threads=reader.threads,
        what=f"np.sum over the float32 training set at {floor_size} x {floor_size} "
        f"({resized.num_train} x {resized.num_inputs}), as the read limit at 28",
    )
    benchmark.extra_info.update(to_extra_info(result))


def test_compute_floor_at_size(benchmark, settings: Settings, dataset, floor_size: int) -> None:
    """The compute floor at ``floor_size``: that size's epoch products at the best GEMM rate."""
    gemm = bench_floors.PeakGemm(settings.threads)
    _time(benchmark, settings, "size-compute", gemm)
    result = ComputeFloor(
        kind="size-compute",
        size=floor_size,
        threads=gemm.threads,
        flops_per_call=gemm.flops,
        epoch_flops=bench_floors.epoch_flops(dataset.num_train, floor_size * floor_size),
        what=f"np.matmul of two {gemm.size} x {gemm.size} float32 matrices, the rate applied "
        f"to the epoch's products at {floor_size} x {floor_size}",
    )
    benchmark.extra_info.update(to_extra_info(result))


def test_sweep_size(
    benchmark, settings: Settings, workers: bench_workers.WorkerPool, size_case: bench_cases.Case
) -> None:
    """One size: a warm-up epoch, then timed epochs; the test accuracy after the last."""
    result = _sweep(benchmark, settings, workers, size_case, settings.size_rounds)
    assert result.size == result.config["resize"] == size_case.size
