"""The floors an epoch is set against: one read of the training set, and the compute floor.

Both run in the pytest process with the same thread count as the implementations.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from impls.data import NUM_CLASSES, NUM_INPUTS


class ReadOnce:
    """Reads every element of a float32 array exactly once, with ``threads`` threads.

    Each thread sums one contiguous block of rows (``np.sum``, which streams the
    block through SIMD registers and releases the GIL); the partial sums are
    added. Nothing is written back, so the memory traffic is the array's size.
    """

    def __init__(self, array: np.ndarray, threads: int) -> None:
        if array.dtype != np.float32 or not array.flags.c_contiguous:
            raise ValueError("ReadOnce needs a C-contiguous float32 array")
        self.nbytes = array.nbytes
        self.threads = max(1, min(threads, len(array)))
        self._blocks = np.array_split(array, self.threads)
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def __call__(self) -> float:
        if self._pool is None:
            return float(self._blocks[0].sum(dtype=np.float32))
        return float(sum(self._pool.map(lambda block: block.sum(dtype=np.float32), self._blocks)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


class PeakGemm:
    """One large float32 matrix product (``size`` cubed) with ``threads`` BLAS threads.

    Its rate is the best this machine's BLAS does in float32, the yardstick for
    the compute floor: an epoch's matrix products at that rate.
    """

    def __init__(self, threads: int, size: int = 2048, seed: int = 0) -> None:
        from threadpoolctl import threadpool_limits

        rng = np.random.default_rng(seed)
        self.threads, self.size = threads, size
        self.flops = 2 * size**3
        self._a = rng.random((size, size), dtype=np.float32)
        self._b = rng.random((size, size), dtype=np.float32)
        self._out = np.empty((size, size), dtype=np.float32)
        self._limits = threadpool_limits(limits=threads, user_api="blas")

    def __call__(self) -> None:
        np.matmul(self._a, self._b, out=self._out)

    def close(self) -> None:
        self._limits.restore_original_limits()


def epoch_flops(num_train: int, num_inputs: int = NUM_INPUTS) -> int:
    """Floating-point operations of an epoch's matrix products: x @ W and x.T @ dlogits."""
    return 2 * (2 * num_train * num_inputs * NUM_CLASSES)
