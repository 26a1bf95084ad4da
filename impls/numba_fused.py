"""Softmax regression in Numba: one compiled, multi-threaded kernel per epoch, kept in cache.

The book's maths, compiled: :func:`forward` (:func:`forward_two_rows` or
:func:`forward_one_row`), :func:`count_correct`, :func:`cross_entropy`,
:func:`backward`, :func:`update`, :func:`train_share` (a slot's share of one SGD step),
:func:`train_step` (a step, as one thread runs it) and :func:`run_epoch` (a step per batch
of ``data.batch_bounds``). Plumbing: numba_support.

Blocking. Each batch's rows are split into one share per thread (a slot), taken
:data:`BLOCK` rows at a time. :func:`forward` reads their uint8 pixels where they lie
(prefetched) and takes two rows against the ten classes at once (twenty accumulators, each
a vector of pixels; one row, ten, where the CPU has 16 vector registers, not AVX-512's 32)
against W (transposed, in L1); the softmax runs across the block's rows;
:func:`backward` adds four rows at a time into the slot's partial dW (in L1), reading the
rows again from cache and prefetching the next block's into L2.

Threads. One parallel region per epoch: each thread runs its slot's share of a step, marks
it done and waits, spinning, until every slot has done the step (:func:`train_step`). The
hand-off: each slot keeps its own copy of W and b and, at the next step, adds every slot's
partial gradient into it, all in one order (the copies stay equal bit for bit). A share
still unclaimed after :data:`STEAL_AFTER` spins is run by the waiting thread, so a thread
that is late (or that the threading layer never starts) costs time, never a deadlock; the
bits do not depend on which thread ran a share.

Pixels stay integers 0..255 (exact); the 1/255 multiplies logits and dlogits instead.
Fast-math: :func:`forward` reassociates sums (``reassoc``: to vectorise them) and fuses
multiply-adds (``contract``); :func:`backward` and :func:`update` only fuse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial

import numba
import numpy as np
from numba import prange

from impls import numba_support  # first: it configures Numba before any kernel is defined
from impls.config import TrainConfig
from impls.data import NUM_CLASSES, FashionMNIST, batch_bounds, check_order
from impls.protocol import DeviceUnavailableError, EpochStats, Evaluation, Params

BLOCK = 64  # rows a thread takes at a time: their 50 KB of pixels stay in its L1/L2 caches
AHEAD = 8  # rows forward prefetches ahead (backward prefetches the next block)
TO_UNIT = np.float32(1 / 255)  # pixel value 0..255 -> [0, 1]
DOT, FUSE = {"reassoc", "contract"}, {"contract"}  # forward's fast-math flags; the others'
STEAL_AFTER = 1 << 16  # spins at the end of a step before a thread runs a missing share itself
CLAIMED, DONE = 0, 8  # columns of work.progress: steps claimed, steps done, a cache line apart
kernel = partial(numba.njit, cache=numba_support.CACHE, error_model="numpy")
row = numba_support.row

# ---------------------------------------------------------------------- maths


@kernel(fastmath=DOT)
def forward_two_rows(w, bias, pixels, index, rows, logits):
    """Logits ``x @ W + b`` (``w``: W transposed) of the images ``pixels[index[:rows]]``, into
    columns of ``logits``; each accumulator sums a row's products with a class's weights."""
    for i in range(0, rows, 2):
        u, v = (
            row(pixels, index, i, rows, AHEAD, True),
            row(pixels, index, i + 1, rows, AHEAD, True),
        )
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = np.float32(0)
        b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = b8 = b9 = np.float32(0)
        for k in range(pixels.shape[1]):
            x, y = np.float32(u[k]), np.float32(v[k])  # pixel values, 0..255
            a0, b0, a1, b1 = a0 + x * w[0, k], b0 + y * w[0, k], a1 + x * w[1, k], b1 + y * w[1, k]
            a2, b2, a3, b3 = a2 + x * w[2, k], b2 + y * w[2, k], a3 + x * w[3, k], b3 + y * w[3, k]
            a4, b4, a5, b5 = a4 + x * w[4, k], b4 + y * w[4, k], a5 + x * w[5, k], b5 + y * w[5, k]
            a6, b6, a7, b7 = a6 + x * w[6, k], b6 + y * w[6, k], a7 + x * w[7, k], b7 + y * w[7, k]
            a8, b8, a9, b9 = a8 + x * w[8, k], b8 + y * w[8, k], a9 + x * w[9, k], b9 + y * w[9, k]
        sums = (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9), (b0, b1, b2, b3, b4, b5, b6, b7, b8, b9)
        for c in range(NUM_CLASSES):
            logits[c, i] = sums[0][c] * TO_UNIT + bias[c]
            logits[c, i + 1] = sums[1][c] * TO_UNIT + bias[c]


@kernel(fastmath=DOT)
def forward_one_row(w, bias, pixels, index, rows, logits):
    """:func:`forward_two_rows` one row at a time: ten accumulators, for 16 vector registers."""
    for i in range(rows):
        u = row(pixels, index, i, rows, AHEAD, True)
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = np.float32(0)
        for k in range(pixels.shape[1]):
            x = np.float32(u[k])  # a pixel value, 0..255
            a0, a1, a2, a3 = a0 + x * w[0, k], a1 + x * w[1, k], a2 + x * w[2, k], a3 + x * w[3, k]
            a4, a5, a6, a7 = a4 + x * w[4, k], a5 + x * w[5, k], a6 + x * w[6, k], a7 + x * w[7, k]
            a8, a9 = a8 + x * w[8, k], a9 + x * w[9, k]
        sums = (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9)
        for c in range(NUM_CLASSES):
            logits[c, i] = sums[c] * TO_UNIT + bias[c]


# Two rows' twenty accumulators fit in AVX-512's 32 vector registers, not in AVX2's 16.
forward = forward_two_rows if numba_support.vector_registers() == 32 else forward_one_row


@kernel(inline="always")
def count_correct(logits, labels, index, rows):
    """How many examples (columns) have their largest logit at their class ``labels[index[i]]``."""
    correct = 0
    for i in range(rows):
        correct += numba_support.argmax(logits, i) == labels[index[i]]
    return correct


@kernel(inline="always")
def cross_entropy(logits, labels, index, rows, stats):
    """The examples' summed loss, minus the log-probability of the true class (log-sum-exp);
    leaves their softmax in ``logits``. Each loop runs across the examples, in vectors."""
    top, total, true = stats[0], stats[1], stats[2]
    top[:rows], total[:rows] = logits[0, :rows], 0
    for c in range(1, NUM_CLASSES):
        for i in range(rows):
            top[i] = max(top[i], logits[c, i])
    for i in range(rows):
        true[i] = logits[labels[index[i]], i] - top[i]
    for c in range(NUM_CLASSES):
        for i in range(rows):
            logits[c, i] = numba_support.exp(logits[c, i] - top[i])
            total[i] += logits[c, i]
    loss = 0.0
    for i in range(rows):
        loss += math.log(total[i]) - true[i]
    for c in range(NUM_CLASSES):
        for i in range(rows):
            logits[c, i] /= total[i]
    return loss


@kernel(fastmath=FUSE)
def backward(pixels, index, dlogits, rows, grads):
    """Add ``x.T @ dlogits`` of the images ``pixels[index[:rows]]`` into ``grads`` (10, 784):
    four rows at a time, in four fused multiply-adds (``g + a * x + ...``: left to right)."""
    for i in range(0, rows, 4):  # prefetching the next block's rows, for forward
        u, v = (
            row(pixels, index, i, rows, BLOCK, False),
            row(pixels, index, i + 1, rows, BLOCK, False),
        )
        s, t = (
            row(pixels, index, i + 2, rows, BLOCK, False),
            row(pixels, index, i + 3, rows, BLOCK, False),
        )
        a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = dlogits[:, i]
        b0, b1, b2, b3, b4, b5, b6, b7, b8, b9 = dlogits[:, i + 1]
        d0, d1, d2, d3, d4, d5, d6, d7, d8, d9 = dlogits[:, i + 2]
        e0, e1, e2, e3, e4, e5, e6, e7, e8, e9 = dlogits[:, i + 3]
        for k in range(pixels.shape[1]):
            x, y, z, q = np.float32(u[k]), np.float32(v[k]), np.float32(s[k]), np.float32(t[k])
            grads[0, k] = grads[0, k] + a0 * x + b0 * y + d0 * z + e0 * q
            grads[1, k] = grads[1, k] + a1 * x + b1 * y + d1 * z + e1 * q
            grads[2, k] = grads[2, k] + a2 * x + b2 * y + d2 * z + e2 * q
            grads[3, k] = grads[3, k] + a3 * x + b3 * y + d3 * z + e3 * q
            grads[4, k] = grads[4, k] + a4 * x + b4 * y + d4 * z + e4 * q
            grads[5, k] = grads[5, k] + a5 * x + b5 * y + d5 * z + e5 * q
            grads[6, k] = grads[6, k] + a6 * x + b6 * y + d6 * z + e6 * q
            grads[7, k] = grads[7, k] + a7 * x + b7 * y + d7 * z + e7 * q
            grads[8, k] = grads[8, k] + a8 * x + b8 * y + d8 * z + e8 * q
            grads[9, k] = grads[9, k] + a9 * x + b9 * y + d9 * z + e9 * q


@kernel(fastmath=FUSE)
def update(weights_t, bias, work, step):
    """``W -= lr * dW`` and ``b -= lr * db`` of step ``step``, one slot's part after another."""
    grads, bias_grads, p = work.grads, work.bias_grads, step % 2
    for t in range(len(grads)):
        for c in range(NUM_CLASSES):
            bias[c] -= bias_grads[t, p, c]
            for k in range(weights_t.shape[1]):  # the padding too: its gradients are 0
                weights_t[c, k] -= grads[t, p, c, k]


@kernel
def train_share(pixels, labels, index, lr, work, slot, step):
    """Slot ``slot``'s share of SGD step ``step`` (from 0) on the batch ``pixels[index]``: the
    hand-off (the last step into the slot's copy of W and b), then its rows' gradient."""
    n, slots = len(index), len(work.weights)
    share = numba_support.share(n, slots)
    scale = np.float32(lr) / np.float32(n)  # lr * d(mean loss)/d(logits) = lr * (p - onehot) / n
    weights_t, bias, logits = work.weights[slot], work.biases[slot], work.logits[slot]
    if step > 0:
        update(weights_t, bias, work, step - 1)
    grads, bias_grads = work.grads[slot, step % 2], work.bias_grads[slot, step % 2]
    grads[:], bias_grads[:] = 0, 0
    loss, correct, end = 0.0, 0, min(n, (slot + 1) * share)
    for start in range(slot * share, end, BLOCK):
        block, rows = index[start:end], min(BLOCK, end - start)  # this block: block[:rows]
        forward(weights_t, bias, pixels, block, rows, logits)
        correct += count_correct(logits, labels, block, rows)
        loss += cross_entropy(logits, labels, block, rows, work.stats[slot])
        for i in range(rows):
            logits[labels[block[i]], i] -= 1  # softmax - onehot
        for c in range(NUM_CLASSES):
            column = np.float32(0)
            for i in range(rows):
                column += logits[c, i]
                logits[c, i] *= scale * TO_UNIT  # backward multiplies by pixels 0..255
            bias_grads[c] += column * scale
        logits[:, rows : rows + 3] = 0  # padding: backward's rows past the last add nothing
        backward(pixels, block, logits, rows, grads)
    work.totals[slot, 0] += loss
    work.totals[slot, 1] += correct
    numba_support.add_release(work.progress, slot, DONE, 1)


@kernel
def train_step(pixels, labels, index, lr, work, thread, step):
    """SGD step ``step`` (from 0) on the batch ``pixels[index]`` as thread ``thread`` runs it: its
    slot's share, then a wait until every slot has done the step. A share still unclaimed after
    :data:`STEAL_AFTER` spins is run here: its thread is late, or not running at all."""
    if claim(work.progress, thread, step):
        train_share(pixels, labels, index, lr, work, thread, step)
    for slot in range(len(work.weights)):
        spins = 0
        while numba_support.load_acquire(work.progress, slot, DONE) <= step:
            spins += 1
            if spins > STEAL_AFTER and claim(work.progress, slot, step):
                train_share(pixels, labels, index, lr, work, slot, step)


@kernel(inline="always")
def claim(progress, slot, step):
    """Whether this thread is the one to run slot ``slot``'s share of step ``step``."""
    if numba_support.load_acquire(progress, slot, CLAIMED) != step:
        return False
    return numba_support.compare_and_swap(progress, slot, CLAIMED, step)


@kernel(parallel=True)
def run_epoch(pixels, labels, order, bounds, lr, work):
    """SGD steps on the batches ``order[start:stop]`` of ``bounds``, in turn; the summed loss
    and correct count. Each thread runs its slot's share of a step, then waits for the others'."""
    slots = len(work.weights)
    for slot in range(slots):
        work.progress[slot, CLAIMED] = work.progress[slot, DONE] = 0
        work.totals[slot, 0] = work.totals[slot, 1] = 0
    for thread in prange(slots):
        own = np.int64(thread)  # prange's index is unsigned: one specialisation, not two
        for b in range(len(bounds)):
            train_step(pixels, labels, order[bounds[b, 0] : bounds[b, 1]], lr, work, own, b)
    loss, correct = 0.0, 0
    for slot in range(slots):  # the last step, into every copy
        update(work.weights[slot], work.biases[slot], work, len(bounds) - 1)
        loss, correct = loss + work.totals[slot, 0], correct + int(work.totals[slot, 1])
    return loss, correct


@kernel
def score(pixels, labels, predicted, work):
    """Summed loss and correct count over ``pixels``, the predictions into ``predicted``."""
    loss, correct, index, logits = 0.0, 0, np.arange(len(pixels)), work.logits[0]
    for start in range(0, len(index), BLOCK):
        block, rows = index[start:], min(BLOCK, len(index) - start)
        forward(work.weights[0], work.biases[0], pixels, block, rows, logits)
        for i in range(rows):
            predicted[start + i] = numba_support.argmax(logits, i)
        correct += count_correct(logits, labels, block, rows)
        loss += cross_entropy(logits, labels, block, rows, work.stats[0])
    return loss, correct


# ---------------------------------------------------------------------- state


class NumbaTrainer:
    """The protocol's stateful shell: the uint8 data and the workspace, which holds W and b."""

    def __init__(self, data: FashionMNIST, params: Params, config: TrainConfig) -> None:
        if config.device != "cpu":
            raise DeviceUnavailableError(f"numba runs on the CPU only, not on {config.device!r}")
        self._config, self._threads = config, config.threads or numba.config.NUMBA_NUM_THREADS
        self._applied = numba_support.apply_threads(self._threads)
        self._train = numba_support.as_rows(data.train_images, data.train_labels)
        self._test = numba_support.as_rows(data.test_images, data.test_labels)
        self._work = numba_support.workspace(params, self._applied, BLOCK)
        # Compile now (or load from the cache), then start the threads with an empty batch.
        self._compiler = numba_support.Compiler()
        self._compiler.compile("run_epoch", run_epoch, *self._epoch_args(np.arange(1), [(0, 0)]))
        self._compiler.compile("score", score, *self._test, np.empty(0, np.int64), self._work)
        run_epoch(*self._epoch_args(np.arange(1), [(0, 0)]))

    def _epoch_args(self, order: np.ndarray, bounds: list[tuple[int, int]]) -> tuple:
        numba_support.apply_threads(self._threads)
        order, bounds_array = np.ascontiguousarray(order, np.int64), np.array(bounds, np.int64)
        return (*self._train, order, bounds_array, self._config.lr, self._work)

    def train_epoch(self, order: np.ndarray) -> EpochStats:
        order = check_order(order, len(self._train[1]))
        bounds = list(batch_bounds(len(order), self._config.batch_size))
        loss, correct = run_epoch(*self._epoch_args(order, bounds))
        return EpochStats(loss / len(order), correct / len(order))

    def evaluate(self) -> Evaluation:  # one thread: 10,000 images take a few milliseconds
        loss, correct = score(*self._test, np.empty(len(self._test[1]), np.int64), self._work)
        return Evaluation(loss / len(self._test[1]), correct / len(self._test[1]))

    def predict(self, images: np.ndarray) -> np.ndarray:
        predicted = np.empty(len(images), np.int64)
        score(*numba_support.as_rows(images, np.zeros(len(images))), predicted, self._work)
        return predicted

    def parameters(self) -> Params:
        weights_t, bias = self._work.weights[0], self._work.biases[0]
        inputs = self._train[0].shape[1]  # W's rows past them are the workspace's padding
        return Params(np.ascontiguousarray(weights_t[:, :inputs].T), bias[:NUM_CLASSES].copy())

    def runtime_info(self) -> Mapping[str, object]:
        fastmath = {"forward": sorted(DOT), "backward, update": sorted(FUSE)}
        threads = numba_support.threads_info(self._threads, self._applied)
        return {"strategy": "one fused compiled kernel per batch, threads in one region per "
                "epoch; uint8 rows gathered in cache",
                "device": "cpu", "numba": numba.__version__, **threads, "fastmath": fastmath,
                "vector_bits": numba_support.vector_bits(),
                "vector_registers": numba_support.vector_registers(),
                "forward_rows": 2 if forward is forward_two_rows else 1,
                **self._compiler.info()}  # fmt: skip


def make_trainer(data: FashionMNIST, params: Params, config: TrainConfig) -> NumbaTrainer:
    return NumbaTrainer(data, params, config)


def available_devices() -> list[str]:
    return ["cpu"]
