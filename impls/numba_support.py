"""Numba plumbing for :mod:`impls.numba_fused`: code generation, cache, threads, memory, ``exp``.

Not an implementation itself (it is not in the registry); only the Numba module
imports it. Numba fixes its code generator, and each kernel's cache directory,
when the first kernel is defined, so :data:`SETUP` is decided once, at import:

Vectors. LLVM tunes code for Intel's AVX-512 CPUs to prefer 256-bit vectors.
Where the CPU has AVX-512, fmbench asks for the host's features minus
``prefer-256-bit``, so the kernels' loops use 512-bit registers (PERFORMANCE.md:
epochs 1.15 to 1.3 times faster). This holds for all Numba code of the process;
it is skipped when ``$NUMBA_CPU_NAME`` or ``$NUMBA_CPU_FEATURES`` is set, and has
no effect when Numba compiled something before (``runtime_info``'s ``vector_bits``
says what the code generator uses).

Cache. Numba's on-disk cache (``cache=True``) goes to ``$FMBENCH_NUMBA_CACHE_DIR``
(empty: off), else ``$NUMBA_CACHE_DIR``, else ``numba-cache`` under
:func:`impls.data.default_cache_dir`, in a subdirectory named after this file's
hash: Numba checks a cached kernel against its own module's source only, not
against the helpers below that it inlines. :class:`Compiler` compiles a kernel
ahead of time and records the time and whether the cache served it (the
dispatcher's own hit and miss counts).

Threads. ``numba.set_num_threads`` is bounded by ``NUMBA_NUM_THREADS`` (by
default, the cores) and holds for the calling thread only: the trainer applies
it before every call. The kernels' buffers are a :class:`Workspace`; their
helpers :func:`prefetch_row` (LLVM's prefetch, which Numba lacks), :func:`row`,
:func:`share`, :func:`exp` (a vectorisable ``expf``) and the threads' step counters'
atomic operations (LLVM's, which Numba lacks too): :func:`load_acquire`,
:func:`add_release` and :func:`compare_and_swap`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from impls import registry
from impls.compile_cache import CompileLog, choose_directory
from impls.data import NUM_CLASSES, default_cache_dir, pixels_per_image

if TYPE_CHECKING:
    from impls.protocol import Params

CACHE_DIR_ENV = registry.get("numba").compile_cache_env
CACHE_LINE = 64  # bytes
FLOATS_PER_LINE = CACHE_LINE // 4  # float32 values


def configure() -> dict[str, Any]:
    """Choose the vector width and the cache directory; returns what was decided."""
    if numba.config.CPU_NAME is None and numba.config.CPU_FEATURES is None:
        from numba.core.codegen import get_host_cpu_features

        features = get_host_cpu_features()
        if "+avx512f" in features.split(","):
            numba.config.CPU_FEATURES = features + ",-prefer-256-bit"
    if numba.config.CACHE_DIR:  # $NUMBA_CACHE_DIR, read by Numba when it was imported
        default, default_by = Path(numba.config.CACHE_DIR), "$NUMBA_CACHE_DIR"
    else:
        default, default_by = default_cache_dir() / "numba-cache", "fmbench default"
    path, set_by = choose_directory(CACHE_DIR_ENV, default, default_by)
    if path is None:
        return {"compilation_cache_dir": None, "compilation_cache_set_by": set_by}
    version = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    try:
        (path / f"support-{version}").mkdir(parents=True, exist_ok=True)
        if not os.access(path / f"support-{version}", os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as error:
        return {"compilation_cache_dir": None, "compilation_cache_set_by": f"off: {error}"}
    numba.config.CACHE_DIR = str(path / f"support-{version}")
    return {"compilation_cache_dir": str(path), "compilation_cache_set_by": set_by}


SETUP = configure()
CACHE = SETUP["compilation_cache_dir"] is not None  # the kernels' cache=...


def _code_features() -> list[str]:
    """The CPU features Numba's code generator targets in this process (``+avx2``, ...)."""
    from numba.core.registry import cpu_target

    return str(getattr(cpu_target.target_context.codegen(), "_tm_features", "")).split(",")


def vector_bits() -> int:
    """The vector width Numba's code generator prefers in this process: 512 or 256 bits."""
    return 512 if "-prefer-256-bit" in _code_features() else 256


def vector_registers() -> int:
    """The vector registers the generated code has: 32 with AVX-512, else 16."""
    return 32 if "+avx512f" in _code_features() else 16


def cache_entries(directory: str | None) -> int | None:
    """The number of compiled functions in the cache ``directory`` (None: no cache)."""
    if not directory or not os.path.isdir(directory):
        return None
    return sum(name.endswith(".nbc") for _, _, names in os.walk(directory) for name in names)


class Compiler:
    """One trainer's ahead-of-time compilations, with the cache state they started from."""

    def __init__(self) -> None:
        entries = cache_entries(SETUP["compilation_cache_dir"])
        self._log = CompileLog({**SETUP, "compilation_cache_entries_before": entries})

    def compile(self, name: str, kernel: Any, *args: Any) -> None:
        """Compile ``kernel`` for the types of ``args`` now (or load it from the cache)."""
        signature = tuple(numba.typeof(arg) for arg in args)
        self._log.run(name, lambda: kernel.compile(signature), lambda: _cache_counts(kernel))

    def info(self) -> dict[str, Any]:
        """The cache and the compile times, for the trainer's ``runtime_info``."""
        return self._log.info()


def _cache_counts(kernel: Any) -> tuple[int, int]:
    """The kernel's cache hits and misses so far (Numba counts them per kernel)."""
    stats = kernel.stats
    return sum(stats.cache_hits.values()), sum(stats.cache_misses.values())


def apply_threads(threads: int) -> int:
    """Set Numba's thread count for the calling thread; returns the count applied."""
    applied = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(applied)
    return applied


def threads_info(threads: int, applied: int) -> dict[str, Any]:
    """What ``runtime_info`` says about threads (the layer is known after a parallel run)."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        layer = None
    how = "numba.set_num_threads before every call"
    if applied != threads:
        how += f"; capped at NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}"
    return {
        "threads": threads,
        "threads_effective": applied,
        "threads_applied": applied == threads,
        "threads_how": how,
        "threading_layer": layer,
    }


class Workspace(NamedTuple):
    """Each slot's copy of the parameters and its buffers, sized by the block, not the batch.

    A slot is one thread's share of every batch. Each slot's part of each array
    fills whole cache lines: no two threads write into one line.
    """

    weights: np.ndarray  # (threads, 10, 784 padded to whole cache lines): W, transposed
    biases: np.ndarray  # (threads, 16): b, padded to a cache line
    grads: np.ndarray  # (threads, 2, 10, same): partial lr * dW, this step's and the last's
    bias_grads: np.ndarray  # (threads, 2, 16): partial lr * db
    logits: np.ndarray  # (threads, 10, block + 8): the block's logits, softmax, dlogits
    stats: np.ndarray  # (threads, 3, block): per example: largest logit, exp sum, true logit
    progress: np.ndarray  # (threads, 16) int64: batches claimed [0], done [8]: a line each
    totals: np.ndarray  # (threads, 8) float64: summed loss, correct count


def as_rows(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images as rows of uint8 pixels, and labels as uint8: one byte each, so that the
    training set's 60 KB of labels stay in cache while the order jumps around.

    The pixels are always copied: NumPy asks Linux to back a large array it allocates
    with 2 MB pages (``madvise``), and the kernels read rows at random, each from
    another 4 KB page; with 2 MB pages their addresses stay in the TLB.
    """
    pixels = np.array(images, dtype=np.uint8, order="C").reshape(
        len(images), pixels_per_image(images)
    )
    return pixels, np.ascontiguousarray(labels, dtype=np.uint8)


def workspace(params: Params, threads: int, block: int) -> Workspace:
    """A workspace for ``threads`` threads and blocks of ``block`` rows, holding ``params``.

    W's rows (one per class) are padded with zeros to whole cache lines, whatever the
    images' size: the kernels read only the pixels' columns, and the update adds zeros.
    """
    inputs = len(params.weights)
    padded = -(-inputs // FLOATS_PER_LINE) * FLOATS_PER_LINE
    work = Workspace(
        aligned_zeros((threads, NUM_CLASSES, padded)),
        aligned_zeros((threads, 16)),
        aligned_zeros((threads, 2, NUM_CLASSES, padded)),
        aligned_zeros((threads, 2, 16)),
        aligned_zeros((threads, NUM_CLASSES, block + 8)),
        aligned_zeros((threads, 3, block)),
        aligned_zeros((threads, 16), np.int64),
        aligned_zeros((threads, 8), np.float64),
    )
    work.weights[:, :, :inputs] = params.weights.T
    work.biases[:, :NUM_CLASSES] = params.bias
    return work


def aligned_zeros(shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """Zeros that start on a cache line, ``shape[0]`` parts of whole lines each."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes // shape[0] % CACHE_LINE:
        raise ValueError(f"{shape}: each part must be a whole number of cache lines")
    raw = np.zeros(nbytes + CACHE_LINE, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start : start + nbytes].view(dtype).reshape(shape)


# ------------------------------------------------------------- kernel helpers


@intrinsic
def prefetch_row(typingctx, array, index, into_l1):
    """Start loading row ``index`` of a 2-D C-contiguous array into the caches, line by line:
    into every level, or (``into_l1`` False) into L2 and below only."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        start = cgutils.get_item_pointer(context, builder, array_type, view, [args[1], zero])
        base = builder.bitcast(start, ir.IntType(8).as_pointer())
        line = context.get_constant(types.intp, CACHE_LINE)
        # A row need not start on a line: one more line than its length covers it.
        stop = builder.add(cgutils.unpack_tuple(builder, view.strides, 2)[0], line)
        i32 = ir.IntType(32)
        prototype = ir.FunctionType(ir.VoidType(), [base.type, i32, i32, i32])
        prefetch = cgutils.get_or_insert_function(builder.module, prototype, "llvm.prefetch.p0")
        with cgutils.for_range_slice(builder, zero, stop, line) as (offset, _):
            address = builder.gep(base, [offset])
            with builder.if_else(args[2]) as (into_l1, into_l2):  # a read, of data, kept ...
                with into_l1:
                    builder.call(prefetch, [address, i32(0), i32(3), i32(1)])  # ... everywhere
                with into_l2:
                    builder.call(prefetch, [address, i32(0), i32(2), i32(1)])  # ... from L2 on
        return context.get_dummy_value()

    return types.void(array, index, types.boolean), codegen


def _item_pointer(context, builder, signature, args):
    """The address of ``array[i, j]`` for an intrinsic's arguments ``(array, i, j, ...)``."""
    view = context.make_array(signature.args[0])(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, signature.args[0], view, args[1:3])


@intrinsic
def load_acquire(typingctx, array, i, j):
    """``array[i, j]`` (int64) read atomically: what its writer wrote before it is visible."""

    def codegen(context, builder, signature, args):
        return builder.load_atomic(_item_pointer(context, builder, signature, args), "acquire", 8)

    return types.int64(array, i, j), codegen


@intrinsic
def add_release(typingctx, array, i, j, value):
    """Add ``value`` to ``array[i, j]`` (int64) atomically, after everything written before."""

    def codegen(context, builder, signature, args):
        pointer = _item_pointer(context, builder, signature, args)
        value = context.cast(builder, args[3], signature.args[3], types.int64)
        return builder.atomic_rmw("add", pointer, value, "seq_cst")

    return types.int64(array, i, j, value), codegen


@intrinsic
def compare_and_swap(typingctx, array, i, j, expected):
    """Whether ``array[i, j]`` (int64) was ``expected`` and is now ``expected + 1``, atomically:
    of the threads that try, one gets True."""

    def codegen(context, builder, signature, args):
        pointer = _item_pointer(context, builder, signature, args)
        old = context.cast(builder, args[3], signature.args[3], types.int64)
        new = builder.add(old, ir.Constant(old.type, 1))
        return builder.extract_value(builder.cmpxchg(pointer, old, new, "seq_cst"), 1)

    return types.boolean(array, i, j, expected), codegen


@numba.njit(inline="always", error_model="numpy")
def row(pixels, index, i, rows, ahead, into_l1):
    """Row ``index[i]`` of ``pixels`` (past ``rows``, the last one again: padding), prefetching
    row ``index[i + ahead]`` (:func:`prefetch_row`) if ``index`` goes that far."""
    if i + ahead < len(index):
        prefetch_row(pixels, index[i + ahead], into_l1)
    return pixels[index[min(i, rows - 1)]]


@numba.njit(inline="always")
def argmax(logits, i):
    """The class with the largest logit in column ``i`` of ``logits`` (the first of equals)."""
    best = 0
    for c in range(1, NUM_CLASSES):
        if logits[c, i] > logits[best, i]:
            best = c
    return best


@numba.njit(inline="always")
def share(num_rows, threads):
    """Rows per thread: an even number, so that only the last thread can have an odd block."""
    per_thread = (num_rows + threads - 1) // threads
    return per_thread + per_thread % 2


@intrinsic
def float32_from_bits(typingctx, bits):
    """The float32 whose IEEE 754 bits are the int32 ``bits``."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


# Cephes' expf: e**x = 2**n * e**r, n = round(x / ln 2), |r| <= ln(2) / 2, e**r by a polynomial.
LOG2E, LN2_HI, LN2_LO = (np.float32(v) for v in (1.44269504088896341, 0.693359375, -2.12194440e-4))
EXP_POLY = tuple(
    np.float32(p)
    for p in (
        *(1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3),
        *(4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1),
    )
)
EXP_MIN = np.float32(-87.33)  # below it, e**x is no longer a normal float32


@numba.njit(inline="always", error_model="numpy")
def exp(x):
    """e**x of a float32 ``x <= 0`` in plain arithmetic, so that LLVM vectorises loops of it.

    A loop that calls libm's ``expf`` stays scalar. Within 2 ulp of the exact
    value (tests/test_numba.py); below :data:`EXP_MIN` it gives e**EXP_MIN (about
    1.2e-38), not a subnormal or 0; NaN stays NaN.
    """
    if x < EXP_MIN:
        x = EXP_MIN
    n = np.floor(x * LOG2E + np.float32(0.5))
    r = x - n * LN2_HI - n * LN2_LO
    p0, p1, p2, p3, p4, p5 = EXP_POLY
    poly = ((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5
    value = (poly * r * r + r + 1) * float32_from_bits((np.int32(n) + 127) << 23)
    return value if x == x else x  # NaN in, NaN out
