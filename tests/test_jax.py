"""The JAX implementation: gradients, compiled epochs, devices, dtypes, compilation cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")

from impls import jax_optax, numpy_softmax  # noqa: E402
from impls.config import TrainConfig  # noqa: E402
from impls.data import FashionMNIST, MinibatchOrder, split_batches, to_float32  # noqa: E402
from impls.protocol import Params, Trainer  # noqa: E402
from impls.training import init_params, train  # noqa: E402


def _flat(images: np.ndarray) -> np.ndarray:
    return to_float32(images).reshape(len(images), -1)


def _numpy_epoch(data: FashionMNIST, config: TrainConfig, order: np.ndarray):
    trainer = numpy_softmax.make_trainer(data, init_params(config), config)
    return trainer.train_epoch(order), trainer.parameters()


def _loop_epoch(data: FashionMNIST, config: TrainConfig, order: np.ndarray):
    """A plain Python loop of jitted steps, one per minibatch: the reference for the scan."""
    optimizer = optax.sgd(config.lr)
    # The divisor goes in traced, as the trainer passes it (a constant would let XLA
    # turn x / 255 into x * (1/255), which rounds differently).
    step = jax.jit(lambda *args, divisor: jax_optax.gather_step(optimizer, divisor, *args))
    params = jax_optax.to_linear(init_params(config))
    opt_state = optimizer.init(params)
    pixels = data.train_images.reshape(data.num_train, -1)
    labels = data.train_labels.astype(np.int32)
    loss_sums, corrects = [], []
    for index in split_batches(order, config.batch_size):
        params, opt_state, loss, correct = step(
            params, opt_state, pixels, labels, index.astype(np.int32), divisor=np.float32(255)
        )
        loss_sums.append(float(loss))
        corrects.append(int(correct))
    return jax_optax.to_params(params), loss_sums, corrects


def _assert_same_steps(scanned: Params, looped: Params) -> None:
    """The compiled epoch took the same steps as the loop: equal but for the last bit.

    XLA fuses the uint8 -> float32 conversion into the dot differently inside the
    scan than in a standalone step, so a few products round differently (seen:
    at most 5e-8 absolute); a batch taken out of order or dropped moves the
    weights by ~1e-3.
    """
    np.testing.assert_allclose(scanned.weights, looped.weights, rtol=0, atol=1e-7)
    np.testing.assert_allclose(scanned.bias, looped.bias, rtol=0, atol=1e-7)


def test_protocol_and_available_devices(tiny_data, default_config):
    assert "cpu" in jax_optax.available_devices()
    trainer = jax_optax.make_trainer(tiny_data, init_params(default_config), default_config)
    assert isinstance(trainer, Trainer)


@pytest.mark.real_data
def test_gradient_equals_handwritten_numpy(real_data, default_config):
    index = MinibatchOrder(real_data.num_train, 256, 0).batches(0)[0]
    images, labels = _flat(real_data.train_images[index]), real_data.train_labels[index]
    params = init_params(default_config)
    # a second point, away from the near-uniform start, where the gradient is less symmetric
    _, _, first = numpy_softmax.loss_and_grads(params, images, labels)
    moved = numpy_softmax.sgd_update(params, first, 5.0)
    for point in (params, moved):
        losses, _, expected = numpy_softmax.loss_and_grads(point, images, labels)
        grad_fn = jax.grad(lambda p: jax_optax.batch_loss(p, images, labels)[0])
        grads = grad_fn(jax_optax.to_linear(point))
        assert grads.weights_t.dtype == np.float32
        np.testing.assert_allclose(grads.weights_t.T, expected.weights, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(grads.bias, expected.bias, rtol=1e-4, atol=1e-7)
        _, (jax_losses, _) = jax_optax.batch_loss(jax_optax.to_linear(point), images, labels)
        np.testing.assert_allclose(jax_losses, losses, rtol=1e-5, atol=1e-5)


@pytest.mark.real_data
def test_one_epoch_agrees_with_numpy_and_equals_python_loop(real_data, default_config):
    order = MinibatchOrder(real_data.num_train, default_config.batch_size, 0).epoch(0)
    trainer = jax_optax.make_trainer(real_data, init_params(default_config), default_config)
    stats = trainer.train_epoch(order)
    params = trainer.parameters()

    reference_stats, reference = _numpy_epoch(real_data, default_config, order)
    np.testing.assert_allclose(params.weights, reference.weights, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(params.bias, reference.bias, rtol=1e-4, atol=1e-5)
    assert stats.loss == pytest.approx(reference_stats.loss, rel=1e-5)
    assert stats.accuracy == pytest.approx(reference_stats.accuracy, abs=2 / real_data.num_train)

    looped, loss_sums, corrects = _loop_epoch(real_data, default_config, order)
    assert len(loss_sums) == 235  # 234 full batches and the last one of 96
    _assert_same_steps(params, looped)
    assert stats.loss == pytest.approx(sum(loss_sums) / len(order), rel=1e-7)
    assert stats.accuracy == sum(corrects) / len(order)


@pytest.mark.parametrize(
    ("batch_size", "num_batches"),
    [(256, 3), (200, 3), (64, 10), (600, 1), (1000, 1)],
    ids=["partial-last", "exact", "many", "one-full", "one-partial"],
)
def test_minibatches_like_numpy(tiny_data, batch_size, num_batches):
    config = TrainConfig(batch_size=batch_size, threads=2, epochs=2)
    order = MinibatchOrder(tiny_data.num_train, batch_size, 0)
    assert order.num_batches == num_batches
    trainer = jax_optax.make_trainer(tiny_data, init_params(config), config)
    reference = numpy_softmax.make_trainer(tiny_data, init_params(config), config)
    for epoch in range(2):
        stats = trainer.train_epoch(order.epoch(epoch))
        expected = reference.train_epoch(order.epoch(epoch))
        assert stats.loss == pytest.approx(expected.loss, rel=1e-5)
        assert stats.accuracy == pytest.approx(expected.accuracy, abs=1 / tiny_data.num_train)
    params, expected_params = trainer.parameters(), reference.parameters()
    np.testing.assert_allclose(params.weights, expected_params.weights, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(params.bias, expected_params.bias, rtol=1e-4, atol=1e-5)

    looped, loss_sums, _ = _loop_epoch(tiny_data, config, order.epoch(0))
    fresh = jax_optax.make_trainer(tiny_data, init_params(config), config)
    fresh.train_epoch(order.epoch(0))
    assert len(loss_sums) == num_batches
    _assert_same_steps(fresh.parameters(), looped)


def test_orders_of_other_lengths_compile_on_demand(tiny_data, default_config):
    trainer = jax_optax.make_trainer(tiny_data, init_params(default_config), default_config)
    subset = MinibatchOrder(tiny_data.num_train, 256, 0).epoch(0)[:300]
    trainer.train_epoch(subset)
    assert set(trainer.runtime_info()["compile_seconds_by_program"]) == {
        "train_epoch[600]", "train_epoch[300]", "evaluate",
    }  # fmt: skip


@pytest.mark.parametrize(
    "order", [np.array([], dtype=np.int64), np.array([0, 600]), np.array([-1])]
)
def test_bad_orders_are_refused(tiny_data, default_config, order):
    trainer = jax_optax.make_trainer(tiny_data, init_params(default_config), default_config)
    with pytest.raises(ValueError, match=r"example|outside"):
        trainer.train_epoch(order)


def test_evaluate_and_predict_agree_with_numpy(tiny_data, default_config):
    trainer = jax_optax.make_trainer(tiny_data, init_params(default_config), default_config)
    trainer.train_epoch(MinibatchOrder(tiny_data.num_train, 256, 0).epoch(0))
    params = trainer.parameters()
    reference = numpy_softmax.make_trainer(tiny_data, params, default_config)
    evaluation, expected = trainer.evaluate(), reference.evaluate()
    assert evaluation.loss == pytest.approx(expected.loss, rel=1e-5)
    assert evaluation.accuracy == expected.accuracy
    predicted = trainer.predict(tiny_data.test_images)
    assert predicted.dtype == np.int64
    assert predicted.shape == (tiny_data.num_test,)
    np.testing.assert_array_equal(predicted, reference.predict(tiny_data.test_images))


def test_unknown_platform_lists_the_present_ones():
    present = jax_optax.available_devices()
    has_gpu = any(name in present for name in jax_optax.GPU_PLATFORMS)
    for name in ("tpu", "gpu", "cuda", "rocm", "metal"):
        if name in present or (name == "gpu" and has_gpu):
            continue
        with pytest.raises(ValueError, match=r"platforms present: .*cpu"):
            jax_optax.select_device(name)
    assert jax_optax.select_device("CPU").platform == "cpu"


def test_unknown_platform_in_config(tiny_data):
    config = TrainConfig(device="no-such-platform", threads=2)
    with pytest.raises(ValueError, match=r"no-such-platform.*platforms present: .*cpu"):
        jax_optax.make_trainer(tiny_data, init_params(config), config)


def test_float32_even_with_x64_enabled(tiny_data, default_config):
    with jax.enable_x64(True):
        trainer = jax_optax.make_trainer(tiny_data, init_params(default_config), default_config)
        stats = trainer.train_epoch(MinibatchOrder(tiny_data.num_train, 256, 0).epoch(0))
        info = trainer.runtime_info()
        params = trainer.parameters()
    assert info["x64_enabled"] is True
    assert np.isfinite(stats.loss)
    assert params.weights.dtype == np.float32 and params.bias.dtype == np.float32
    assert params.weights.shape == (784, 10) and params.bias.shape == (10,)


def test_x64_program_is_refused():
    wide = jax.ShapeDtypeStruct((3,), np.float64)
    with jax.enable_x64(True), pytest.raises(TypeError, match="float64"):
        jax_optax._compile(jax.jit(lambda x: x * 2), wide)


def test_runtime_info(tiny_data, default_config):
    info = jax_optax.make_trainer(tiny_data, init_params(default_config), default_config)
    info = info.runtime_info()
    assert info["device"] == "cpu" and info["device_name"].startswith("cpu")
    assert info["jax"] == jax.__version__ and info["optax"] == optax.__version__
    assert info["threads"] == 2
    assert isinstance(info["threads_applied"], bool) and info["threads_how"]
    assert info["compile_seconds"] > 0
    assert set(info["compile_seconds_by_program"]) == {"train_epoch[600]", "evaluate"}
    json.dumps(info)  # reports store it as JSON


_SUBPROCESS = textwrap.dedent(
    """
    import json
    import numpy as np
    from impls import jax_optax
    from impls.config import TrainConfig
    from impls.data import FashionMNIST
    from impls.training import init_params

    rng = np.random.default_rng(0)
    data = FashionMNIST(
        rng.integers(0, 256, (300, 28, 28), dtype=np.uint8), rng.integers(0, 10, 300),
        rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), rng.integers(0, 10, 50),
    )
    config = TrainConfig(threads=1)
    trainer = jax_optax.make_trainer(data, init_params(config), config)
    print(json.dumps(dict(trainer.runtime_info())))
    """
)


def _fresh_process(cache_dir) -> dict:
    env = {**os.environ, jax_optax.CACHE_DIR_ENV: str(cache_dir)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    result = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_fresh_processes_cold_then_warm_cache_and_threads(tmp_path):
    cold = _fresh_process(tmp_path / "cache")
    assert cold["compilation_cache_dir"] == str(tmp_path / "cache")
    assert cold["compilation_cache_entries_before"] == 0
    assert cold["compilation_cache_warm"] is False
    assert cold["compilation_cache_misses"] == 2
    warm = _fresh_process(tmp_path / "cache")
    assert warm["compilation_cache_entries_before"] >= 2
    assert warm["compilation_cache_warm"] is True
    assert warm["compilation_cache_hits"] == 2
    # threads=1 is applied in a fresh process: by affinity where there are several cores
    assert warm["threads"] == warm["threads_effective"] == 1
    assert warm["threads_applied"] is True
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:
        assert "affinity" in warm["threads_how"]


@pytest.mark.slow
@pytest.mark.real_data
def test_default_run_reaches_the_books_accuracy(real_data, default_config):
    history, trainer = train("jax", real_data, default_config)
    assert len(history.records) == 10
    assert history.final.test_accuracy >= 0.82
    assert trainer.parameters().weights.dtype == np.float32


def test_threads_that_cannot_be_applied_say_so(tiny_data, default_config):
    jax_optax.make_trainer(tiny_data, init_params(default_config), default_config)
    effective = jax_optax._backend_setup["pool_threads"]  # this process's backends are up now
    if effective is None:
        pytest.skip("XLA's pool size is unknown here")
    config = default_config.replace(threads=effective + 1)
    info = jax_optax.make_trainer(tiny_data, init_params(config), config).runtime_info()
    assert info["threads"] == effective + 1 and info["threads_effective"] == effective
    assert info["threads_applied"] is False
    assert "could not be applied" in info["threads_how"]
