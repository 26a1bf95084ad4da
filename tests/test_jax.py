"""The JAX implementation: gradients, compiled epochs, devices, dtypes, compilation cache.

Gradients are held to the NumPy oracle of ``tests/oracles.py``; the
compiled epoch to a plain Python loop of jitted steps.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")

from fresh_process import RANDOM_DATA, fresh_runtime_infos  # noqa: E402
from oracles import loss_and_grads, sgd_update  # noqa: E402  (the NumPy oracle)

from impls import host_devices, jax_optax, jax_support, numpy_softmax  # noqa: E402
from impls.config import ConfigError, TrainConfig  # noqa: E402
from impls.data import FashionMNIST, MinibatchOrder, split_batches, to_float32  # noqa: E402
from impls.protocol import DeviceUnavailableError, Params  # noqa: E402
from impls.registry import train  # noqa: E402
from impls.training import init_params  # noqa: E402


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
    step = jax.jit(lambda *args, divisor: jax_optax.train_step(optimizer, divisor, *args))
    params = jax_optax.to_linear(init_params(config))
    opt_state = optimizer.init(params)
    pixels = data.train_images.reshape(data.num_train, -1)
    labels = data.train_labels.astype(np.int32)
    loss_sums, corrects = [], []
    for index in split_batches(order, config.batch_size):
        params, opt_state, loss, correct = step(
            params, opt_state, pixels[index], labels[index], divisor=np.float32(255)
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


def _mean_loss(params, images, labels):
    return jax_optax.cross_entropy(jax_optax.forward(params, images), labels).mean()


@pytest.mark.real_data
def test_gradient_and_step_equal_the_numpy_oracle(real_data, default_config):
    index = split_batches(MinibatchOrder(real_data.num_train, 0).epoch(0), 256)[0]
    pixels = real_data.train_images[index].reshape(len(index), -1)
    images, labels = _flat(real_data.train_images[index]), real_data.train_labels[index]
    params = init_params(default_config)
    # a second point, away from the near-uniform start, where the gradient is less symmetric
    _, _, first = loss_and_grads(params, images, labels)
    moved = sgd_update(params, first, 5.0)
    optimizer = optax.sgd(default_config.lr)
    for point in (params, moved):
        losses, logits, expected = loss_and_grads(point, images, labels)
        linear = jax_optax.to_linear(point)
        grads = jax.grad(_mean_loss)(linear, images, labels)
        assert grads.weights_t.dtype == np.float32
        np.testing.assert_allclose(grads.weights_t.T, expected.weights, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(grads.bias, expected.bias, rtol=1e-4, atol=1e-7)
        jax_losses = jax_optax.cross_entropy(jax_optax.forward(linear, images), labels)
        np.testing.assert_allclose(jax_losses, losses, rtol=1e-5, atol=1e-5)
        # the step the trainer runs: from uint8 pixels, on the batch mean
        stepped, _, loss_sum, correct = jax_optax.train_step(
            optimizer, np.float32(255), linear, optimizer.init(linear), pixels, labels
        )
        step = sgd_update(point, expected, default_config.lr)
        np.testing.assert_allclose(jax_optax.to_params(stepped).weights, step.weights, atol=1e-7)
        np.testing.assert_allclose(jax_optax.to_params(stepped).bias, step.bias, atol=1e-7)
        assert float(loss_sum) == pytest.approx(float(losses.sum()), rel=1e-5)
        assert int(correct) == int((logits.argmax(axis=1) == labels).sum())


@pytest.mark.real_data
def test_one_epoch_agrees_with_numpy_and_equals_python_loop(real_data, default_config):
    order = MinibatchOrder(real_data.num_train, 0).epoch(0)
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
    order = MinibatchOrder(tiny_data.num_train, 0)
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
    subset = MinibatchOrder(tiny_data.num_train, 0).epoch(0)[:300]
    trainer.train_epoch(subset)
    assert set(trainer.runtime_info()["compile_seconds_by_program"]) == {
        "train_epoch[600]", "train_epoch[300]", "evaluate",
    }  # fmt: skip


def test_evaluate_and_predict_agree_with_numpy(tiny_data, default_config):
    trainer = jax_optax.make_trainer(tiny_data, init_params(default_config), default_config)
    trainer.train_epoch(MinibatchOrder(tiny_data.num_train, 0).epoch(0))
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
    has_gpu = any(name in present for name in jax_support.GPU_PLATFORMS)
    for name in ("tpu", "gpu", "cuda", "rocm", "metal"):
        if name in present or (name == "gpu" and has_gpu):
            continue
        with pytest.raises(DeviceUnavailableError, match=r"platforms present: .*cpu"):
            jax_support.select_device(name)
    assert jax_support.select_device("CPU").platform == "cpu"


def test_unknown_platform_in_config(tiny_data):
    config = TrainConfig(device="no-such-platform", threads=2)
    with pytest.raises(DeviceUnavailableError, match=r"no-such-platform.*platforms present: .*cpu"):
        jax_optax.make_trainer(tiny_data, init_params(config), config)


def test_float32_even_with_x64_enabled(tiny_data, default_config):
    with jax.enable_x64(True):
        trainer = jax_optax.make_trainer(tiny_data, init_params(default_config), default_config)
        stats = trainer.train_epoch(MinibatchOrder(tiny_data.num_train, 0).epoch(0))
        info = trainer.runtime_info()
        params = trainer.parameters()
    assert info["x64_enabled"] is True
    assert np.isfinite(stats.loss)
    assert params.weights.dtype == np.float32 and params.bias.dtype == np.float32
    assert params.weights.shape == (784, 10) and params.bias.shape == (10,)


def test_x64_program_is_refused():
    wide = jax.ShapeDtypeStruct((3,), np.float64)
    with jax.enable_x64(True), pytest.raises(TypeError, match="float64"):
        jax_support.compile_ahead(jax.jit(lambda x: x * 2), wide)


def test_runtime_info(tiny_data, default_config):
    info = jax_optax.make_trainer(tiny_data, init_params(default_config), default_config)
    info = info.runtime_info()
    assert info["device"] == "cpu" and info["device_name"].startswith("cpu")
    assert info["jax"] == jax.__version__ and info["optax"] == optax.__version__
    assert isinstance(info["threads_applied"], bool) and info["threads_how"]
    assert info["compile_seconds"] > 0
    assert set(info["compile_seconds_by_program"]) == {"train_epoch[600]", "evaluate"}
    json.dumps(info)  # reports store it as JSON


def _fresh_process(cache_dir) -> list[dict]:
    """The runtime_info of a first trainer (1 thread) and a second (2) in a new process:
    the first sizes XLA's pools, the second cannot change them."""
    return fresh_runtime_infos(
        "impls.jax_optax", jax_support.CACHE_DIR_ENV, cache_dir, unset="JAX_COMPILATION_CACHE_DIR"
    )


def test_fresh_processes_cold_then_warm_cache_and_threads(tmp_path):
    cold, _ = _fresh_process(tmp_path / "cache")
    assert cold["compilation_cache_dir"] == str(tmp_path / "cache")
    assert cold["compilation_cache_entries_before"] == 0
    assert cold["compilation_cache_warm"] is False
    assert cold["compilation_cache_misses"] == 2
    warm, second = _fresh_process(tmp_path / "cache")
    assert warm["compilation_cache_entries_before"] >= 2
    assert warm["compilation_cache_warm"] is True
    assert warm["compilation_cache_hits"] == 2
    # threads=1 is applied in a fresh process: by affinity where there are several cores
    assert warm["threads"] == warm["threads_effective"] == 1
    assert warm["threads_applied"] is True
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:
        assert "affinity" in warm["threads_how"]
    # a later trainer asking for another count runs with the first one, and says so
    assert second["threads"] == 2 and second["threads_effective"] == 1
    assert second["threads_applied"] is False
    assert "could not be applied" in second["threads_how"]


@pytest.mark.slow
@pytest.mark.real_data
def test_default_run_reaches_the_books_accuracy(real_data, default_config):
    history, trainer = train("jax", real_data, default_config)
    assert len(history.records) == 10
    assert history.final.test_accuracy >= 0.82
    assert trainer.parameters().weights.dtype == np.float32


# ------------------------------------------------------------ data-parallel replicas


def test_replicas_beyond_the_devices_jax_started_with_are_a_clear_error(tiny_data):
    """This process's JAX has its CPU devices already: more replicas cannot be had any more."""
    devices = len(jax.devices("cpu"))  # started here if nothing started it before
    config = TrainConfig(threads=devices + 1, replicas=devices + 1)
    flag = f"XLA_FLAGS=--xla_force_host_platform_device_count={devices + 1}"
    with pytest.raises(ConfigError, match=f"JAX started with {devices} in this process.*{flag}"):
        jax_optax.make_trainer(tiny_data, init_params(config), config)


def test_one_replica_has_no_communication_to_measure(tiny_data, default_config):
    trainer = jax_optax.make_trainer(tiny_data, init_params(default_config), default_config)
    with pytest.raises(ValueError, match="one replica"):
        trainer.measure_communication(MinibatchOrder(tiny_data.num_train, 0).epoch(0))


_REPLICAS = RANDOM_DATA + textwrap.dedent(
    """
    import json
    import numpy as np
    from impls import jax_optax
    from impls.config import TrainConfig
    from impls.data import MinibatchOrder
    from impls.training import init_params

    data = random_data(600, 100)
    config = TrainConfig(threads=2, replicas=2, batch_size=64)
    trainer = jax_optax.make_trainer(data, init_params(config), config)
    before = trainer.parameters()
    measured = trainer.measure_communication(MinibatchOrder(600, 0).epoch(0))
    untouched = bool(np.array_equal(trainer.parameters().weights, before.weights))
    print(json.dumps({"info": dict(trainer.runtime_info()), "measured": measured,
                      "untouched": untouched}))
    """
)


def test_replicas_in_a_fresh_process_without_xla_flags(tmp_path):
    """A first trainer asks JAX for its host devices itself; runtime_info says where it runs,
    and the communication is measured apart, leaving the trainer as it was."""
    env = {**os.environ, jax_support.CACHE_DIR_ENV: str(tmp_path / "cache")}
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [sys.executable, "-c", _REPLICAS], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    info, measured = out["info"], out["measured"]
    assert info["replicas"] == 2 and info["devices"] == ["cpu:0", "cpu:1"]
    assert info["threads"] == 2 and info["threads_per_replica"] == 1
    assert "batch split over 2 devices" in info["strategy"]
    assert 0 < measured["collective_seconds"] < measured["profiled_epoch_seconds"]
    assert measured["all_reduce_alone_seconds"] > 0
    assert out["untouched"]


_PROCESS_OF_TWO = RANDOM_DATA + textwrap.dedent(
    """
    import json
    import numpy as np
    from impls import jax_optax, numpy_softmax
    from impls.config import TrainConfig
    from impls.data import MinibatchOrder
    from impls.training import init_params

    data = random_data(600, 50)
    config = TrainConfig(threads=2, replicas=2, batch_size=64)
    order = MinibatchOrder(600, 0).epoch(0)
    trainer = jax_optax.make_trainer(data, init_params(config), config)
    trainer.train_epoch(order)
    reference = numpy_softmax.make_trainer(data, init_params(config), config.replace(replicas=1))
    reference.train_epoch(order)
    weights = trainer.parameters().weights
    info = trainer.runtime_info()
    print(json.dumps({
        "from_numpy": float(np.abs(weights - reference.parameters().weights).max()),
        "checksum": float(weights.astype(np.float64).sum()),
        "devices": info["devices"], "processes": info["processes"], "threads": info["threads"],
        "evaluation": trainer.evaluate().loss,
    }))
    """
)


def test_two_processes_train_one_run_over_the_network(tmp_path):
    """Two processes on 127.0.0.1 (jax.distributed, gloo), one host device each: the same
    steps as NumPy's, and the same weights in both."""
    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = []
    try:
        for rank in (0, 1):
            env = {
                **os.environ,
                host_devices.COORDINATOR_ENV: f"127.0.0.1:{port}",
                host_devices.PROCESSES_ENV: "2",
                host_devices.PROCESS_ID_ENV: str(rank),
                jax_support.CACHE_DIR_ENV: str(tmp_path / "cache"),
            }
            env.pop("XLA_FLAGS", None)
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", _PROCESS_OF_TWO],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        results = [process.communicate(timeout=240) for process in processes]
    finally:
        for process in processes:
            process.kill()  # no process left behind, whatever happened
            process.wait()
    assert [process.returncode for process in processes] == [0, 0], results[0][1][-2000:]
    outs = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in results]
    assert outs[0]["devices"] == outs[1]["devices"] and len(outs[0]["devices"]) == 2
    assert all(out["processes"] == 2 and out["threads"] == 1 for out in outs)
    assert all(out["from_numpy"] < 1e-5 for out in outs)
    assert outs[0]["checksum"] == outs[1]["checksum"]
    assert outs[0]["evaluation"] == outs[1]["evaluation"]
