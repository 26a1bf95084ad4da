"""Every registered implementation against the protocol and the NumPy reference.

Parametrized over :data:`impls.registry.REGISTRY`, so a new implementation is
tested as soon as it is registered. Implementations that follow the shared
minibatch order must reproduce NumPy's training within float32 rounding; those
that shuffle on their own (the d2l reference) must start from the same
parameters and train sensibly.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import pytest

from impls.config import ConfigError, TrainConfig, lr_at_size
from impls.data import FashionMNIST, MinibatchOrder, batch_bounds, to_float32
from impls.protocol import DeviceUnavailableError, EpochStats, Evaluation, Params, Trainer
from impls.registry import (
    REGISTRY,
    Implementation,
    build_trainer,
    close_trainer,
    environment_for,
    make_trainer,
    train,
)
from impls.training import History, init_params

REFERENCE = "numpy"

# Tolerance against NumPy after the same steps from the same start, in float32.
# Each implementation sums the 256-term gradients in its own order (BLAS, ATen,
# XLA blocking), so every step differs by a few ulps; the loss is convex and the
# step small, so these differences are damped rather than amplified, and after
# one epoch's 235 steps they stay near 235 * 1.2e-7 (float32 eps) * |W| (<= 0.25),
# about 7e-6 at worst. atol 1e-5 covers that for small weights, rtol 1e-4 for
# large ones. Measured: torch differs from NumPy by at most 1e-7 after one epoch,
# 6e-7 after ten, so the bound has ample headroom without hiding a real bug (a
# wrong learning rate, batch mean or gradient moves weights by 1e-3 or more).
RTOL = 1e-4
ATOL = 1e-5
# Accuracy is a count, and a prediction flips only when its two largest logits
# are within rounding (about 1e-5 here) of each other. With the real data fewer
# than 3 of 60,000 training examples come that close (measured: none within
# 1e-5, 2 within 1e-4), so a few flipped examples are allowed, no more.
ACCURACY_SLACK_EXAMPLES = 3
# Evaluation from identical parameters: only the float32 summation order differs.
EVAL_RTOL = 1e-5


def _param(impls: list[Implementation]) -> list[object]:
    return [pytest.param(impl, id=impl.name) for impl in impls]


ALL = _param(list(REGISTRY.values()))
ORDER_FOLLOWERS = _param(
    [impl for impl in REGISTRY.values() if impl.follows_shared_order and impl.name != REFERENCE]
)
OWN_ORDER = _param([impl for impl in REGISTRY.values() if not impl.follows_shared_order])


def load_module(impl: Implementation) -> ModuleType:
    """The implementation's module, or a skip saying what is missing."""
    missing = impl.missing()
    if missing:
        pytest.skip(f"{impl.name} needs {', '.join(missing)}, which is not installed")
    return impl.load()


def build(impl: Implementation, data: FashionMNIST, config: TrainConfig) -> Trainer:
    """A trainer of ``impl`` (its registry entry's factory) from the shared initial parameters."""
    load_module(impl)
    return make_trainer(impl.name, data, init_params(config), config)


@dataclass
class OneEpoch:
    """What one implementation did in its first epoch on the real data."""

    trainer: Trainer
    before: Evaluation
    stats: EpochStats
    params: Params


@pytest.fixture(scope="session")
def conformance_config() -> TrainConfig:
    return TrainConfig(threads=2)


@pytest.fixture(scope="session")
def one_epoch_runs(real_data: FashionMNIST, conformance_config: TrainConfig):
    """Run each implementation's first epoch once per session, on first request."""
    runs: dict[str, OneEpoch] = {}
    config = conformance_config
    order = MinibatchOrder(real_data.num_train, config.seed)

    def run(impl: Implementation) -> OneEpoch:
        if impl.name not in runs:
            trainer = build(impl, real_data, config)
            before = trainer.evaluate()
            stats = trainer.train_epoch(order.epoch(0))
            runs[impl.name] = OneEpoch(trainer, before, stats, trainer.parameters())
        return runs[impl.name]

    return run


@pytest.fixture(scope="session")
def full_runs(real_data: FashionMNIST, conformance_config: TrainConfig):
    """Each implementation's default 10-epoch run, done once per session on request."""
    runs: dict[str, tuple[History, Trainer]] = {}

    def run(impl: Implementation) -> tuple[History, Trainer]:
        if impl.name not in runs:
            load_module(impl)
            runs[impl.name] = train(impl.name, real_data, conformance_config)
        return runs[impl.name]

    return run


def examples_apart(accuracy: float, other: float, num_examples: int) -> int:
    """How many examples two accuracies over ``num_examples`` differ by."""
    return abs(round(accuracy * num_examples) - round(other * num_examples))


def assert_stats_close(actual, expected, num_examples: int, rtol: float = RTOL) -> None:
    """Mean loss within ``rtol``, accuracy within a few examples."""
    assert actual.loss == pytest.approx(expected.loss, rel=rtol)
    apart = examples_apart(actual.accuracy, expected.accuracy, num_examples)
    assert apart <= ACCURACY_SLACK_EXAMPLES


def assert_params_close(actual: Params, expected: Params) -> None:
    np.testing.assert_allclose(actual.weights, expected.weights, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(actual.bias, expected.bias, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ protocol


@pytest.mark.parametrize("impl", ALL)
def test_satisfies_the_protocol(impl, tiny_data, default_config):
    module = load_module(impl)
    assert "cpu" in module.available_devices()
    trainer = build(impl, tiny_data, default_config)
    # Every method of the protocol, taking the protocol's arguments under their names
    # (isinstance on a runtime-checkable protocol would only look for the names).
    methods = [name for name, member in vars(Trainer).items() if inspect.isfunction(member)]
    methods = [name for name in methods if not name.startswith("_")]
    assert methods, "no methods found on the protocol"
    for name in methods:
        expected = list(inspect.signature(getattr(Trainer, name)).parameters)[1:]  # no self
        assert list(inspect.signature(getattr(trainer, name)).parameters) == expected, name


@pytest.mark.parametrize("impl", ALL)
def test_parameters_are_float32_copies_of_the_initial_ones(impl, tiny_data, default_config):
    trainer = build(impl, tiny_data, default_config)
    initial = init_params(default_config)
    params = trainer.parameters()
    assert params.weights.dtype == np.float32 and params.weights.shape == (784, 10)
    assert params.bias.dtype == np.float32 and params.bias.shape == (10,)
    np.testing.assert_array_equal(params.weights, initial.weights)
    np.testing.assert_array_equal(params.bias, initial.bias)
    # A copy: changing it must not touch the trainer's state.
    params.weights[:] = 1.0
    params.bias[:] = 1.0
    np.testing.assert_array_equal(trainer.parameters().weights, initial.weights)
    np.testing.assert_array_equal(trainer.parameters().bias, initial.bias)


@pytest.mark.parametrize("impl", ALL)
def test_absent_device_is_a_clear_error(impl, default_config, tiny_data):
    present = load_module(impl).available_devices()
    absent = next((name for name in ("cuda", "mps") if name not in present), None)
    if absent is None:
        pytest.skip("every device this suite knows of is present")
    with pytest.raises(DeviceUnavailableError, match=re.escape(repr(absent))) as error:
        build(impl, tiny_data, default_config.replace(device=absent))
    message = str(error.value).lower()
    assert all(name in message for name in present), f"available devices not named: {message}"


@pytest.mark.parametrize(
    "impl", _param([impl for impl in REGISTRY.values() if impl.follows_shared_order])
)
@pytest.mark.parametrize(
    ("order", "message"),
    [
        ("past_the_end", r"indices outside 0\.\.\d+"),
        ("negative", r"indices outside 0\.\.\d+"),
        ("float", "integer indices"),
        ("empty", "non-empty 1-D"),
        ("repeated", r"repeats example indices \(index 0 appears \d+ times\)"),
    ],
)
def test_bad_order_is_a_clear_error(impl, order, message, tiny_data, default_config):
    """An order the shared MinibatchOrder could never produce is refused before training."""
    trainer = build(impl, tiny_data, default_config)
    n = tiny_data.num_train
    bad = {
        "past_the_end": np.array([0, 1, n]),
        "negative": np.array([0, -1, 2]),
        "float": np.arange(n, dtype=np.float64),
        "empty": np.array([], dtype=np.int64),
        "repeated": np.zeros(n, dtype=np.int64),
    }[order]
    with pytest.raises(ValueError, match=message):
        trainer.train_epoch(bad)
    params = trainer.parameters()  # nothing was trained
    np.testing.assert_array_equal(params.weights, init_params(default_config).weights)


@pytest.mark.parametrize("impl", ALL)
def test_predict_on_no_images_is_an_empty_int64_array(impl, tiny_data, default_config):
    predicted = build(impl, tiny_data, default_config).predict(np.zeros((0, 28, 28), np.uint8))
    assert predicted.dtype == np.int64 and predicted.shape == (0,)


@pytest.mark.parametrize("impl", ALL)
def test_batch_larger_than_the_training_set_is_one_batch(impl, tiny_data, default_config):
    """A batch size beyond the data is one batch per epoch, with buffers sized by the data."""
    huge = default_config.replace(batch_size=10**9)  # terabytes of buffers, if sized by it
    order = MinibatchOrder(tiny_data.num_train, huge.seed).epoch(0)
    trainer = build(impl, tiny_data, huge)
    stats = trainer.train_epoch(order)
    # One step on the whole set: the same for every order (d2l-reference shuffles its own).
    reference = build(REGISTRY[REFERENCE], tiny_data, huge.replace(batch_size=tiny_data.num_train))
    assert_stats_close(stats, reference.train_epoch(order), tiny_data.num_train)
    assert_params_close(trainer.parameters(), reference.parameters())


# Where each trainer that loops over its batches in Python takes the cut from. (JAX's
# compiled epoch cuts the same batches, a scan over the full ones: checked against NumPy.)
CUT_IN = {
    "numpy": "numpy_softmax",
    "torch-scratch": "torch_support",
    "torch-nn": "torch_support",
    "torch-compile": "torch_support",
    "jax-step": "jax_optax",
}


@pytest.mark.parametrize("impl", _param([REGISTRY[name] for name in CUT_IN]))
def test_trainer_cuts_the_order_with_the_shared_batch_bounds(impl, tiny_data, monkeypatch):
    config = TrainConfig(threads=2, batch_size=64)
    trainer = build(impl, tiny_data, config)
    module = importlib.import_module(f"impls.{CUT_IN[impl.name]}")
    cuts = []

    def recording(num_examples: int, batch_size: int):
        cuts.append((num_examples, batch_size))
        return batch_bounds(num_examples, batch_size)

    monkeypatch.setattr(module, "batch_bounds", recording)
    trainer.train_epoch(MinibatchOrder(tiny_data.num_train, 0).epoch(0)[:500])
    assert cuts == [(500, 64)]


@pytest.mark.parametrize("impl", ALL)
def test_runtime_info_reports_threads_and_device(impl, tiny_data):
    config = TrainConfig(threads=1)
    info = build(impl, tiny_data, config).runtime_info()
    assert info["threads"] == 1
    assert info["device"] == "cpu"


@pytest.mark.parametrize("impl", ALL)
def test_initial_evaluation_matches_numpy(impl, one_epoch_runs, real_data):
    reference = one_epoch_runs(REGISTRY[REFERENCE]).before
    before = one_epoch_runs(impl).before
    assert_stats_close(before, reference, real_data.num_test, rtol=EVAL_RTOL)


# ------------------------------------------- same start, same order: same steps


@pytest.mark.parametrize("impl", ORDER_FOLLOWERS)
def test_first_epoch_matches_numpy(impl, one_epoch_runs, real_data):
    reference = one_epoch_runs(REGISTRY[REFERENCE])
    run = one_epoch_runs(impl)
    assert_params_close(run.params, reference.params)
    assert_stats_close(run.stats, reference.stats, real_data.num_train)


RESIZED = 64  # the book's resize: conformance holds at a size other than the native 28


@pytest.fixture(scope="session")
def resized_first_epochs(real_data: FashionMNIST, conformance_config: TrainConfig):
    """Each implementation's parameters after its first epoch at 64 x 64, once per session."""
    data = real_data.at_size(RESIZED)
    config = conformance_config.replace(resize=RESIZED, lr=lr_at_size(0.1, RESIZED))
    order = MinibatchOrder(data.num_train, config.seed).epoch(0)
    runs: dict[str, tuple[EpochStats, Params]] = {}

    def run(impl: Implementation) -> tuple[EpochStats, Params]:
        if impl.name not in runs:  # the stats and weights only: the trainers' data are large
            load_module(impl)
            trainer, _ = build_trainer(impl.name, data, config)
            runs[impl.name] = trainer.train_epoch(order), trainer.parameters()
        return runs[impl.name]

    return run


@pytest.mark.parametrize("impl", ORDER_FOLLOWERS)
def test_first_epoch_at_64_matches_numpy(impl, resized_first_epochs, real_data):
    """The same tolerance as at 28 x 28, on 4096 weights per class instead of 784."""
    reference_stats, reference_params = resized_first_epochs(REGISTRY[REFERENCE])
    stats, params = resized_first_epochs(impl)
    assert params.weights.shape == (RESIZED * RESIZED, 10)
    assert_params_close(params, reference_params)
    assert_stats_close(stats, reference_stats, real_data.num_train)


# ------------------------------------- data parallel: R replicas, one device's steps

# PyTorch's data-parallel trainers, each replica a process of its own (torch.distributed).
TORCH_REPLICATED = _param([REGISTRY["torch-nn"], REGISTRY["torch-scratch"]])


@dataclass
class ReplicatedEpoch:
    """What a data-parallel trainer did in its first epoch on the real data, and after."""

    stats: EpochStats
    params: Params
    evaluation: Evaluation
    predictions: np.ndarray
    runtime: dict[str, object]


@pytest.fixture(scope="session")
def replicated_first_epochs(real_data: FashionMNIST, conformance_config: TrainConfig):
    """Each (implementation, replicas)'s first epoch, once per session; its replica
    processes are stopped as soon as it is measured, so few run at a time."""
    runs: dict[tuple[str, int], ReplicatedEpoch] = {}
    order = MinibatchOrder(real_data.num_train, conformance_config.seed).epoch(0)

    def run(impl: Implementation, replicas: int) -> ReplicatedEpoch:
        if (impl.name, replicas) not in runs:
            # One thread per replica: 4 processes on 2 cores are slow, not wrong.
            threads = max(conformance_config.threads or 1, replicas)
            config = conformance_config.replace(threads=threads, replicas=replicas)
            trainer = build(impl, real_data, config)
            try:
                runs[impl.name, replicas] = ReplicatedEpoch(
                    trainer.train_epoch(order),
                    trainer.parameters(),
                    trainer.evaluate(),
                    trainer.predict(real_data.test_images),
                    dict(trainer.runtime_info()),
                )
            finally:
                close_trainer(trainer)
        return runs[impl.name, replicas]

    return run


@pytest.mark.parametrize("replicas", [2, 4])
@pytest.mark.parametrize("impl", TORCH_REPLICATED)
def test_replicas_first_epoch_matches_one_replica(
    impl, replicas, replicated_first_epochs, one_epoch_runs, real_data
):
    """Every global minibatch split over the replicas, the last of 96 included, steps as
    one device does: the same weights after an epoch, within the suite's tolerance."""
    single = one_epoch_runs(impl)
    run = replicated_first_epochs(impl, replicas)
    assert_params_close(run.params, single.params)
    assert_stats_close(run.stats, single.stats, real_data.num_train)
    assert run.stats.communication_seconds is not None and run.stats.communication_seconds > 0
    assert_stats_close(run.evaluation, single.trainer.evaluate(), real_data.num_test)
    apart = np.count_nonzero(run.predictions != single.trainer.predict(real_data.test_images))
    assert apart <= ACCURACY_SLACK_EXAMPLES


@pytest.mark.parametrize("replicas", [2, 4])
@pytest.mark.parametrize("impl", TORCH_REPLICATED)
def test_replicas_runtime_info_names_the_engine(impl, replicas, replicated_first_epochs):
    info = replicated_first_epochs(impl, replicas).runtime
    assert info["replicas"] == replicas and info["backend"] == "gloo"
    assert info["threads_per_replica"] == 1 and info["threads"] == replicas
    assert info["launcher"] == "torch.multiprocessing (spawn)"
    strategy = info["strategy"]
    assert isinstance(strategy, str) and len(strategy) < 120
    assert f"over {replicas} processes (gloo), eager, per batch" in strategy


@pytest.mark.parametrize("impl", ALL)
def test_resized_data_give_the_same_answers_everywhere(impl, tiny_data, default_config, tmp_path):
    """At 40 x 40 every implementation, d2l-reference resizing image by image in its loader,
    evaluates the shared initial weights as NumPy does on the cached resize."""
    data = tiny_data.at_size(40, cache_dir=tmp_path)
    config = default_config.replace(resize=40)
    load_module(impl)
    reference, _ = build_trainer(REFERENCE, data, config)
    trainer, _ = build_trainer(impl.name, data, config)
    assert trainer.parameters().weights.shape == (1600, 10)
    assert_stats_close(trainer.evaluate(), reference.evaluate(), data.num_test, rtol=EVAL_RTOL)
    with pytest.raises(ConfigError, match=r"the images are 40x40 but the config asks for 28x28"):
        build_trainer(impl.name, data, default_config)


@pytest.mark.parametrize("impl", OWN_ORDER)
def test_own_order_implementation_trains(impl, one_epoch_runs):
    # Its shuffle differs, so only the outcome is comparable: one epoch of the
    # same SGD from the same start lands close to NumPy's (measured: within
    # 0.002 in loss and 0.004 in accuracy), and far from the untrained model.
    reference = one_epoch_runs(REGISTRY[REFERENCE])
    run = one_epoch_runs(impl)
    assert run.stats.loss < 0.5 * run.before.loss
    assert run.stats.loss == pytest.approx(reference.stats.loss, abs=0.05)
    assert run.stats.accuracy == pytest.approx(reference.stats.accuracy, abs=0.02)
    assert 0.7 < run.trainer.evaluate().accuracy < 0.9


# -------------------------------------- predictions follow from the parameters


@pytest.mark.parametrize("impl", ALL)
def test_predict_and_evaluate_follow_the_parameters(impl, one_epoch_runs, real_data):
    run = one_epoch_runs(impl)
    params = run.trainer.parameters()
    # The parameters' own answer, in float64 so NumPy adds no rounding of its own.
    pixels = to_float32(real_data.test_images).reshape(real_data.num_test, -1).astype(np.float64)
    logits = pixels @ params.weights.astype(np.float64) + params.bias
    expected = logits.argmax(axis=1)
    top_two = np.sort(logits, axis=1)[:, -2:]
    near_tie = top_two[:, 1] - top_two[:, 0] < 1e-4

    predicted = run.trainer.predict(real_data.test_images)
    assert predicted.dtype == np.int64 and predicted.shape == (real_data.num_test,)
    # The implementation's float32 logits may order a near-tie differently; nothing else.
    assert np.all((predicted == expected) | near_tie)

    shifted = logits - logits.max(axis=1, keepdims=True)
    true_class = shifted[np.arange(real_data.num_test), real_data.test_labels]
    mean_loss = (np.log(np.exp(shifted).sum(axis=1)) - true_class).mean()
    accuracy = (expected == real_data.test_labels).mean()
    evaluation = run.trainer.evaluate()
    assert evaluation.loss == pytest.approx(mean_loss, rel=EVAL_RTOL)
    assert examples_apart(evaluation.accuracy, accuracy, real_data.num_test) <= near_tie.sum()


# ----------------------------------------------------------- full default runs


@pytest.mark.slow
@pytest.mark.parametrize("impl", ALL)
def test_default_run_reaches_the_books_accuracy(impl, full_runs):
    history, _ = full_runs(impl)
    assert len(history.records) == 10
    assert history.final.test_accuracy >= 0.82
    losses = history.column("train_loss")
    assert losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("impl", ORDER_FOLLOWERS)
def test_default_run_tracks_numpy_every_epoch(impl, full_runs, real_data):
    # The same tolerance holds after ten epochs: the drift grows slowly (6e-7 measured).
    reference, reference_trainer = full_runs(REGISTRY[REFERENCE])
    history, trainer = full_runs(impl)
    for record, expected in zip(history.records, reference.records, strict=True):
        assert_stats_close(
            EpochStats(record.train_loss, record.train_accuracy),
            EpochStats(expected.train_loss, expected.train_accuracy),
            real_data.num_train,
        )
        assert_stats_close(
            Evaluation(record.test_loss, record.test_accuracy),
            Evaluation(expected.test_loss, expected.test_accuracy),
            real_data.num_test,
        )
    assert_params_close(trainer.parameters(), reference_trainer.parameters())


@pytest.mark.parametrize("impl", ORDER_FOLLOWERS)
def test_another_seed_changes_weights_and_order_alike_for_every_implementation(impl, tiny_data):
    """A seed (``--seeds`` in the benchmark) is the initial weights and the order for all:
    two epochs from seed 7 agree with NumPy's from seed 7, and differ from seed 0's."""
    runs = {}
    for name in (REFERENCE, impl.name):
        for seed in (0, 7):
            config = TrainConfig(seed=seed, threads=1, batch_size=64, epochs=2)
            trainer = build(REGISTRY[name], tiny_data, config)
            order = MinibatchOrder(tiny_data.num_train, seed)
            for epoch in range(config.epochs):
                trainer.train_epoch(order.epoch(epoch))
            runs[name, seed] = trainer.parameters()
    assert_params_close(runs[impl.name, 7], runs[REFERENCE, 7])
    assert_params_close(runs[impl.name, 0], runs[REFERENCE, 0])
    assert not np.allclose(runs[impl.name, 7].weights, runs[impl.name, 0].weights, atol=1e-3)


@pytest.mark.parametrize("impl", ALL)
def test_runtime_info_names_the_strategy(impl, tiny_data):
    """The report's strategy column comes from here: one short phrase per implementation."""
    strategy = build(impl, tiny_data, TrainConfig(threads=1)).runtime_info()["strategy"]
    assert isinstance(strategy, str) and 10 < len(strategy) < 120


# ------------------------------------------ data-parallel replicas: the same steps

# The implementations whose replicas are devices of one process (JAX's host devices on the CPU).
ONE_PROCESS_REPLICAS = _param([REGISTRY["jax"], REGISTRY["jax-step"]])
REPLICAS = (2, 4)
ODD_BATCH = 255  # neither 2 nor the last batch (75 examples) splits evenly over 2 replicas

# R replicas' first epochs in a fresh process: JAX fixes its CPU devices when it starts, and
# this one started long ago with one (the host devices come from registry.environment_for).
_REPLICA_EPOCHS = """
import sys
import numpy as np
from impls.config import TrainConfig
from impls.data import MinibatchOrder, load_fashion_mnist
from impls.registry import build_trainer

data = load_fashion_mnist(download=False)
for run in sys.argv[2:]:
    name, replicas, batch_size = run.split(":")
    config = TrainConfig(threads=max(2, int(replicas)), replicas=int(replicas),
                         batch_size=int(batch_size))
    trainer, _ = build_trainer(name, data, config)
    stats = trainer.train_epoch(MinibatchOrder(data.num_train, config.seed).epoch(0))
    params = trainer.parameters()
    np.savez(f"{sys.argv[1]}/{run.replace(':', '_')}.npz", weights=params.weights,
             bias=params.bias, loss=stats.loss, accuracy=stats.accuracy,
             replicas=trainer.runtime_info()["replicas"])
"""


@pytest.fixture(scope="session")
def replica_epochs(real_data, conformance_config, tmp_path_factory):
    """First epochs of JAX's entries at 2 and 4 replicas (and of jax at an odd batch size with
    1 and 2), all in one fresh process, on first request."""
    for impl in ONE_PROCESS_REPLICAS:
        load_module(impl.values[0])
    runs = [
        f"{impl.values[0].name}:{r}:{conformance_config.batch_size}"
        for impl in ONE_PROCESS_REPLICAS
        for r in REPLICAS
    ]
    runs += [f"jax:{r}:{ODD_BATCH}" for r in (1, 2)]
    folder = tmp_path_factory.mktemp("replicas")
    most = conformance_config.replace(replicas=max(REPLICAS), threads=max(REPLICAS))
    env = dict(os.environ)
    for impl in ONE_PROCESS_REPLICAS:
        env.update(environment_for(impl.values[0].name, most))
    command = [sys.executable, "-c", _REPLICA_EPOCHS, str(folder), *runs]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]

    def run(name: str, replicas: int, batch_size: int) -> tuple[EpochStats, Params, int]:
        saved = np.load(folder / f"{name}_{replicas}_{batch_size}.npz")
        stats = EpochStats(float(saved["loss"]), float(saved["accuracy"]))
        return stats, Params(saved["weights"], saved["bias"]), int(saved["replicas"])

    return run


@pytest.mark.parametrize("replicas", REPLICAS)
@pytest.mark.parametrize("impl", ONE_PROCESS_REPLICAS)
def test_replicas_take_the_single_device_steps(
    impl, replicas, replica_epochs, one_epoch_runs, conformance_config, real_data
):
    """R replicas, each on its share of every global batch (the last of 96 included), end the
    first epoch where one replica does, within the tolerance every implementation meets."""
    single = one_epoch_runs(impl)
    stats, params, ran = replica_epochs(impl.name, replicas, conformance_config.batch_size)
    assert ran == replicas
    assert_params_close(params, single.params)
    assert_stats_close(stats, single.stats, real_data.num_train)


def test_replicas_split_batches_they_do_not_divide(replica_epochs, real_data):
    """A batch of 255 and a last one of 75 over 2 replicas: XLA pads the shares, and the step
    is still the global batch's mean."""
    single_stats, single_params, _ = replica_epochs("jax", 1, ODD_BATCH)
    stats, params, ran = replica_epochs("jax", 2, ODD_BATCH)
    assert ran == 2
    assert_params_close(params, single_params)
    assert_stats_close(stats, single_stats, real_data.num_train)
