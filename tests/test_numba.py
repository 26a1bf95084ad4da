"""The Numba implementation: the fused step against the NumPy oracle, the epoch against
NumPy's, the vectorisable exp, threads, and the on-disk compile cache cold then warm.

Gradients are held to the oracle of ``tests/oracles.py``. The kernels use
fast-math (``reassoc`` and ``contract`` in forward, ``contract`` elsewhere) and
fold the pixels' 1/255 into the logits; the tolerances below are the float32
ones the conformance suite uses, and the measured differences sit far inside them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from fresh_process import RANDOM_DATA, fresh_runtime_infos  # noqa: E402
from oracles import loss_and_grads, sgd_update  # noqa: E402  (the NumPy oracle)

from impls import numba_fused, numba_support, numpy_softmax  # noqa: E402
from impls.config import TrainConfig  # noqa: E402
from impls.data import FashionMNIST, MinibatchOrder, split_batches, to_float32  # noqa: E402
from impls.protocol import Params  # noqa: E402
from impls.training import init_params  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5  # the conformance suite's, after one epoch


def _steps(data: FashionMNIST, params: Params, batches: list[np.ndarray], threads: int):
    """The compiled steps on ``batches``, in one ``run_epoch`` from ``params``: the new
    parameters, the summed loss and the correct count."""
    pixels, labels = numba_support.as_rows(data.train_images, data.train_labels)
    work = numba_support.workspace(params, numba_support.apply_threads(threads), numba_fused.BLOCK)
    order = np.ascontiguousarray(np.concatenate(batches), dtype=np.int64)
    stops = np.cumsum([len(batch) for batch in batches])
    bounds = np.stack([stops - [len(batch) for batch in batches], stops], axis=1)
    loss, correct = numba_fused.run_epoch(pixels, labels, order, bounds, 0.1, work)
    # Every thread's copy of the parameters is the same, bit for bit.
    for t in range(1, len(work.weights)):
        np.testing.assert_array_equal(work.weights[t], work.weights[0])
        np.testing.assert_array_equal(work.biases[t], work.biases[0])
    return Params(work.weights[0].T.copy(), work.biases[0, :10].copy()), loss, correct


def _oracle_steps(data: FashionMNIST, params: Params, batches: list[np.ndarray], lr: float):
    loss, correct = 0.0, 0
    for batch in batches:
        images = to_float32(data.train_images[batch]).reshape(len(batch), -1)
        labels = data.train_labels[batch]
        losses, logits, grads = loss_and_grads(params, images, labels)
        loss += float(losses.sum(dtype=np.float64))
        correct += int((logits.argmax(axis=1) == labels).sum())
        params = sgd_update(params, grads, lr)
    return params, loss, correct


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sizes", [(256,), (37,), (1,), (256, 96), (5, 64, 3)], ids=str)
def test_steps_equal_the_numpy_oracle(tiny_data, threads, sizes):
    """Full, short, odd and single-example batches; several in a row test the hand-off."""
    order = MinibatchOrder(tiny_data.num_train, 0).epoch(0)
    stops = np.cumsum(sizes)
    batches = [order[stop - size : stop] for stop, size in zip(stops, sizes, strict=True)]
    params = init_params(TrainConfig())
    # a second point, away from the near-uniform start, where the gradient is less symmetric
    images = to_float32(tiny_data.train_images[order[:256]]).reshape(256, -1)
    first = loss_and_grads(params, images, tiny_data.train_labels[order[:256]])[2]
    for start in (params, sgd_update(params, first, 5.0)):
        stepped, loss, correct = _steps(tiny_data, start, batches, threads)
        expected, expected_loss, expected_correct = _oracle_steps(tiny_data, start, batches, 0.1)
        assert stepped.weights.dtype == np.float32 and stepped.bias.dtype == np.float32
        np.testing.assert_allclose(stepped.weights, expected.weights, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(stepped.bias, expected.bias, rtol=1e-5, atol=1e-7)
        assert loss == pytest.approx(expected_loss, rel=1e-5)
        assert correct == expected_correct


@pytest.mark.timeout(300, method="thread")  # a deadlock ends the run instead of stalling it
def test_a_slot_whose_thread_never_comes_is_run_by_another_thread(tiny_data):
    """Two slots on one thread: the thread runs its own share of each step, then, after
    ``STEAL_AFTER`` spins, the other slot's; the bits are those of two threads."""
    order = MinibatchOrder(tiny_data.num_train, 0).epoch(0)
    batches = [order[start : start + 96] for start in range(0, 480, 96)]
    pixels, labels = numba_support.as_rows(tiny_data.train_images, tiny_data.train_labels)
    params = init_params(TrainConfig())
    results = []
    for threads in (2, 1):
        work = numba_support.workspace(params, 2, numba_fused.BLOCK)
        numba_support.apply_threads(threads)  # 1: prange's two iterations run one after the other
        bounds = np.array([(start, start + 96) for start in range(0, 480, 96)], np.int64)
        loss, correct = numba_fused.run_epoch(pixels, labels, order, bounds, 0.1, work)
        np.testing.assert_array_equal(work.progress[:, numba_fused.CLAIMED], [5, 5])
        np.testing.assert_array_equal(work.progress[:, numba_fused.DONE], [5, 5])
        np.testing.assert_array_equal(work.weights[1], work.weights[0])
        results.append((work.weights[0].copy(), work.biases[0].copy(), loss, correct))
    for two, one in zip(*results, strict=True):
        np.testing.assert_array_equal(one, two)
    expected, expected_loss, expected_correct = _oracle_steps(tiny_data, params, batches, 0.1)
    np.testing.assert_allclose(results[1][0].T, expected.weights, rtol=1e-5, atol=1e-7)
    assert (results[1][2], results[1][3]) == (
        pytest.approx(expected_loss, rel=1e-5),
        expected_correct,
    )


def test_atomic_counters():
    """The step counters' primitives: one claim of a step succeeds, adds are seen in full."""

    @numba.njit
    def claims(progress):
        first = numba_support.compare_and_swap(progress, 1, 0, 4)  # 4 -> 5
        second = numba_support.compare_and_swap(progress, 1, 0, 4)  # already 5: refused
        old = numba_support.add_release(progress, 1, 8, 3)
        return first, second, old, numba_support.load_acquire(progress, 1, 8)

    progress = numba_support.aligned_zeros((2, 16), np.int64)
    progress[1, 0], progress[1, 8] = 4, 2
    assert claims(progress) == (True, False, 2, 5)
    assert progress[1, 0] == 5 and progress[1, 8] == 5 and not progress[0].any()


@pytest.mark.parametrize(
    ("batch_size", "num_batches"),
    [(256, 3), (200, 3), (64, 10), (77, 8), (600, 1), (1000, 1)],
    ids=["partial-last", "exact", "many", "odd", "one-full", "one-partial"],
)
def test_minibatches_like_numpy(tiny_data, batch_size, num_batches, monkeypatch):
    config = TrainConfig(batch_size=batch_size, threads=2)
    order = MinibatchOrder(tiny_data.num_train, 0)
    trainer = numba_fused.make_trainer(tiny_data, init_params(config), config)
    reference = numpy_softmax.make_trainer(tiny_data, init_params(config), config)
    cuts, shared_cut = [], numba_fused.batch_bounds

    def recording(num_examples: int, size: int):
        cuts.append((num_examples, size))
        return shared_cut(num_examples, size)

    monkeypatch.setattr(numba_fused, "batch_bounds", recording)
    for epoch in range(2):
        stats = trainer.train_epoch(order.epoch(epoch))
        expected = reference.train_epoch(order.epoch(epoch))
        assert stats.loss == pytest.approx(expected.loss, rel=1e-5)
        assert stats.accuracy == pytest.approx(expected.accuracy, abs=1 / tiny_data.num_train)
    assert cuts == [(tiny_data.num_train, batch_size)] * 2  # the shared cut, every epoch
    assert len(split_batches(order.epoch(0), batch_size)) == num_batches
    params, expected_params = trainer.parameters(), reference.parameters()
    np.testing.assert_allclose(params.weights, expected_params.weights, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(params.bias, expected_params.bias, rtol=RTOL, atol=ATOL)


@pytest.mark.real_data
def test_one_epoch_agrees_with_numpy_far_inside_the_tolerance(real_data, default_config):
    """The fast-math kernels after 235 steps: within the suite's tolerance, by a wide margin."""
    order = MinibatchOrder(real_data.num_train, 0).epoch(0)
    trainer = numba_fused.make_trainer(real_data, init_params(default_config), default_config)
    reference = numpy_softmax.make_trainer(real_data, init_params(default_config), default_config)
    stats, expected = trainer.train_epoch(order), reference.train_epoch(order)
    params, expected_params = trainer.parameters(), reference.parameters()
    np.testing.assert_allclose(params.weights, expected_params.weights, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(params.bias, expected_params.bias, rtol=RTOL, atol=ATOL)
    # Measured: at most 2e-7 apart, fifty times inside the bound.
    assert np.abs(params.weights - expected_params.weights).max() < ATOL / 10
    assert stats.loss == pytest.approx(expected.loss, rel=1e-6)
    assert abs(stats.accuracy - expected.accuracy) * real_data.num_train <= 3
    evaluation, expected_evaluation = trainer.evaluate(), reference.evaluate()
    assert evaluation.loss == pytest.approx(expected_evaluation.loss, rel=1e-5)
    assert abs(evaluation.accuracy - expected_evaluation.accuracy) * real_data.num_test <= 3


def test_evaluate_and_predict_agree_with_numpy(tiny_data, default_config):
    trainer = numba_fused.make_trainer(tiny_data, init_params(default_config), default_config)
    trainer.train_epoch(MinibatchOrder(tiny_data.num_train, 0).epoch(0))
    reference = numpy_softmax.make_trainer(tiny_data, trainer.parameters(), default_config)
    evaluation, expected = trainer.evaluate(), reference.evaluate()
    assert evaluation.loss == pytest.approx(expected.loss, rel=1e-5)
    assert evaluation.accuracy == expected.accuracy
    predicted = trainer.predict(tiny_data.test_images)
    assert predicted.dtype == np.int64 and predicted.shape == (tiny_data.num_test,)
    np.testing.assert_array_equal(predicted, reference.predict(tiny_data.test_images))
    np.testing.assert_array_equal(trainer.predict(tiny_data.test_images[3:4]), predicted[3:4])


@pytest.mark.parametrize(
    "forward", [numba_fused.forward_two_rows, numba_fused.forward_one_row], ids=["two", "one"]
)
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_either_forward_gives_the_logits(forward, rows):
    """Both forwards, not only the one this CPU's vector registers pick, and an odd last row."""
    rng = np.random.default_rng(rows)
    pixels = rng.integers(0, 256, (100, 784), dtype=np.uint8)
    index = rng.permutation(100)
    w = rng.normal(0, 0.01, (10, 784)).astype(np.float32)
    bias = rng.normal(0, 0.1, 16).astype(np.float32)
    logits = np.full((10, numba_fused.BLOCK + 8), np.nan, np.float32)
    forward(w, bias, pixels, index, rows, logits)
    expected = pixels[index[:rows]].astype(np.float64) @ w.T.astype(np.float64) / 255 + bias[:10]
    np.testing.assert_allclose(logits[:, :rows].T, expected, rtol=1e-5, atol=1e-5)


def test_exp_is_within_two_ulp_and_keeps_nan():
    @numba.njit
    def exp_all(x, out):
        for i in range(len(x)):
            out[i] = numba_support.exp(x[i])

    x = np.linspace(numba_support.EXP_MIN, 0, 1_000_001).astype(np.float32)
    x = np.concatenate([x, np.float32([-1e-30, -0.0])])
    out = np.empty_like(x)
    exp_all(x, out)
    exact = np.exp(x.astype(np.float64))
    ulps = np.abs(out - exact) / np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 2
    special = np.array([np.nan, -np.inf, -1000, np.float32(numba_support.EXP_MIN)], np.float32)
    out = np.empty_like(special)
    exp_all(special, out)
    assert np.isnan(out[0])
    assert 0 < out[1] == out[2] == out[3] < 2e-38  # clamped: e**EXP_MIN, a normal float32


def test_runtime_info(tiny_data):
    config = TrainConfig(threads=1)
    info = numba_fused.make_trainer(tiny_data, init_params(config), config).runtime_info()
    assert info["device"] == "cpu" and info["numba"] == numba.__version__
    assert info["threads"] == info["threads_effective"] == 1 and info["threads_applied"] is True
    assert info["threading_layer"] in ("omp", "tbb", "workqueue")  # the pool ran at build
    assert info["fastmath"] == {
        "forward": ["contract", "reassoc"],
        "backward, update": ["contract"],
    }
    assert info["vector_bits"] in (256, 512)
    # Two rows at a time need AVX-512's 32 vector registers for their twenty accumulators.
    assert info["forward_rows"] == (2 if info["vector_registers"] == 32 else 1)
    assert set(info["compile_seconds_by_program"]) == {"run_epoch", "score"}
    json.dumps(info)  # reports store it as JSON


def test_threads_are_applied_and_capped(tiny_data):
    most = numba.config.NUMBA_NUM_THREADS
    for threads in sorted({1, min(2, most)}):
        config = TrainConfig(threads=threads)
        trainer = numba_fused.make_trainer(tiny_data, init_params(config), config)
        numba.set_num_threads(most)  # whatever the caller did meanwhile,
        trainer.train_epoch(MinibatchOrder(tiny_data.num_train, 0).epoch(0))
        assert numba.get_num_threads() == threads  # every call applies the trainer's count
        assert trainer.runtime_info()["threads_effective"] == threads
    config = TrainConfig(threads=most + 3)
    info = numba_fused.make_trainer(tiny_data, init_params(config), config).runtime_info()
    assert info["threads"] == most + 3 and info["threads_effective"] == most
    assert info["threads_applied"] is False and "NUMBA_NUM_THREADS" in info["threads_how"]


def _fresh_process(cache_dir) -> list[dict]:
    """The runtime_info of a first trainer (1 thread) and a second (2) in a new process, each
    after an epoch: the second finds the kernels compiled in that process."""
    return fresh_runtime_infos(
        "impls.numba_fused",
        numba_support.CACHE_DIR_ENV,
        cache_dir,
        unset="NUMBA_CACHE_DIR",
        train_first_epoch=True,
    )


def test_fresh_processes_cold_then_warm_cache(tmp_path):
    cold, again = _fresh_process(tmp_path / "cache")
    assert cold["compilation_cache_dir"] == str(tmp_path / "cache")
    assert cold["compilation_cache_entries_before"] == 0
    assert cold["compilation_cache_warm"] is False
    assert cold["compilation_cache_misses"] == 2 and cold["compilation_cache_hits"] == 0
    assert cold["compile_seconds"] > 0
    assert again["compilation_cache_warm"] is None  # compiled earlier in the same process
    warm, _ = _fresh_process(tmp_path / "cache")
    assert warm["compilation_cache_entries_before"] >= 2
    assert warm["compilation_cache_warm"] is True
    assert warm["compilation_cache_hits"] == 2 and warm["compilation_cache_misses"] == 0
    assert warm["compile_seconds"] < cold["compile_seconds"]
    assert warm["threads"] == warm["threads_effective"] == 1


def test_cache_off_when_the_variable_is_empty(tmp_path):
    env = {**os.environ, numba_support.CACHE_DIR_ENV: ""}
    code = "from impls import numba_support as s; print(s.CACHE, s.SETUP['compilation_cache_dir'])"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "None"]


def test_the_step_kernels_compile_once_each(tmp_path):
    """prange's index is unsigned and the stealing loop's signed: passed on as it is, the
    step kernels compiled twice each (a build took 47 s against 29 s). Compiled from an
    empty cache in a fresh process, where the callees' signatures are all recorded."""
    code = RANDOM_DATA + textwrap.dedent(
        """
        from impls import numba_fused
        from impls.config import TrainConfig
        from impls.training import init_params

        config = TrainConfig(threads=2)
        numba_fused.make_trainer(random_data(300, 50), init_params(config), config)
        print(len(numba_fused.train_step.signatures), len(numba_fused.train_share.signatures))
        """
    )
    env = {**os.environ, numba_support.CACHE_DIR_ENV: str(tmp_path / "cache")}
    env.pop("NUMBA_CACHE_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split()[-2:] == ["1", "1"]


@pytest.mark.slow
@pytest.mark.real_data
def test_default_run_reaches_the_books_accuracy(real_data, default_config):
    from impls.registry import train

    history, trainer = train("numba", real_data, default_config)
    assert len(history.records) == 10
    assert history.final.test_accuracy >= 0.82
    assert trainer.parameters().weights.dtype == np.float32
