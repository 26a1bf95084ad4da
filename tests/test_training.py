"""The config, the shared fit loop and the registry."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from impls import config as config_module
from impls import host_devices, registry
from impls.config import ConfigError, TrainConfig, usable_cores
from impls.data import MinibatchOrder
from impls.protocol import EpochStats, Evaluation, Params
from impls.registry import train
from impls.results import EpochRecord
from impls.stored import ResultError
from impls.training import DIVERGED_LOSS, DivergenceError, EpochRunner, fit, init_params


@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", 0.0),
        ("lr", -1.0),
        ("batch_size", 0),
        ("epochs", 0),
        ("threads", 0),
        ("seed", -1),
        ("lr", math.nan),
        ("lr", math.inf),
        ("init_std", math.inf),
        ("init_std", math.nan),
        ("init_std", -0.1),
        ("loader_workers", -1),
        ("replicas", 0),
        ("replicas", True),
    ],
    ids=lambda v: str(v),
)
def test_config_rejects_out_of_range_values(field, value):
    with pytest.raises(ConfigError, match=field.replace("_", " ")):
        TrainConfig(**{field: value})


def test_config_is_frozen_and_resolves_threads_to_the_usable_cores(monkeypatch):
    config = TrainConfig()
    with pytest.raises(AttributeError):
        config.lr = 1.0  # type: ignore[misc]
    # The one rule: the CPU affinity, not the machine's core count.
    monkeypatch.setattr(config_module.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(config_module.os, "cpu_count", lambda: 64)
    assert usable_cores() == 3
    assert config.resolved().threads == 3
    assert TrainConfig(threads=7).resolved().threads == 7


def test_replicas_share_the_threads_and_need_one_each():
    assert TrainConfig(threads=4, replicas=2).threads_per_replica == 2
    assert TrainConfig(threads=3, replicas=2).threads_per_replica == 1
    assert TrainConfig(replicas=2).threads_per_replica is None  # until resolved
    with pytest.raises(ConfigError, match="2 replicas need at least one thread each"):
        TrainConfig(threads=1, replicas=2)


def test_a_single_device_implementation_refuses_replicas(real_data):
    with pytest.raises(ConfigError, match="numpy runs on one device only"):
        registry.build_trainer("numpy", real_data, TrainConfig(replicas=2, threads=2))


def test_usable_cores_falls_back_to_the_core_count_without_affinity(monkeypatch):
    monkeypatch.delattr(config_module.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(config_module.os, "cpu_count", lambda: 5)
    assert usable_cores() == 5


def test_initial_params_are_seeded_float32_with_zero_bias():
    params = init_params(TrainConfig())
    assert params.weights.shape == (784, 10) and params.weights.dtype == np.float32
    assert params.bias.dtype == np.float32 and not params.bias.any()
    assert abs(params.weights.std() - 0.01) < 0.001
    np.testing.assert_array_equal(params.weights, init_params(TrainConfig()).weights)


class _ScriptedTrainer:
    """A trainer that reports a given loss sequence and records the orders it saw."""

    def __init__(self, losses):
        self.losses = list(losses)
        self.orders = []

    def train_epoch(self, order):
        self.orders.append(order.copy())
        return EpochStats(self.losses.pop(0), 0.5)

    def evaluate(self):
        return Evaluation(1.0, 0.25)

    def predict(self, images):
        return np.zeros(len(images), dtype=np.int64)

    def parameters(self):
        return init_params(TrainConfig())

    def runtime_info(self):
        return {"device": "cpu"}


def test_fit_feeds_the_shared_order_and_records_history(tiny_data):
    config = TrainConfig(epochs=3, threads=1)
    trainer = _ScriptedTrainer([0.9, 0.8, 0.7])
    history = fit(trainer, tiny_data, config, implementation="scripted")
    assert [r.epoch for r in history.records] == [1, 2, 3]
    assert history.column("train_loss") == [0.9, 0.8, 0.7]
    assert history.final.test_accuracy == 0.25
    assert all(r.train_seconds >= 0 and r.eval_seconds >= 0 for r in history.records)
    for order in trainer.orders:
        assert sorted(order) == list(range(tiny_data.num_train))
    assert not np.array_equal(trainer.orders[0], trainer.orders[1])
    assert history.runtime == {"device": "cpu"}


def test_fit_calls_callbacks_each_epoch(tiny_data):
    seen = []
    fit(_ScriptedTrainer([1.0, 1.0]), tiny_data, TrainConfig(epochs=2), callbacks=[seen.append])
    assert [record.epoch for record in seen] == [1, 2]


@pytest.mark.parametrize(
    "loss", [math.nan, math.inf, DIVERGED_LOSS * 10], ids=["nan", "inf", "huge"]
)
def test_fit_stops_a_diverging_run_naming_epoch_and_lr(tiny_data, loss):
    config = TrainConfig(epochs=3, lr=0.5)
    with pytest.raises(DivergenceError, match=r"epoch 2.*lr 0\.5"):
        fit(_ScriptedTrainer([0.9, loss, 0.5]), tiny_data, config)


def test_huge_learning_rate_diverges_for_real(real_data):
    with pytest.raises(DivergenceError, match=r"lr 1000000\.0"):
        train("numpy", real_data, TrainConfig(lr=1e6, epochs=2, threads=2))


def test_registry_unknown_name_lists_the_known_ones():
    with pytest.raises(registry.UnknownImplementationError, match="numpy, torch-scratch"):
        registry.get("tensorflow")


def test_registry_missing_framework_is_reported_not_raised(monkeypatch):
    fake = registry.Implementation(
        "fake", "impls.fake_framework", ("no_such_framework_xyz",), "fake", "nothing"
    )
    monkeypatch.setitem(registry.REGISTRY, "fake", fake)
    assert not fake.is_installed()
    assert fake.missing() == ["no_such_framework_xyz"]
    with pytest.raises(registry.MissingFrameworkError, match=r"pip install 'fmbench\[fake\]'"):
        registry.make_trainer("fake", None, Params(None, None), TrainConfig())


class _CommunicatingTrainer(_ScriptedTrainer):
    """A data-parallel trainer's report: seconds spent combining gradients."""

    def train_epoch(self, order):
        return dataclasses.replace(super().train_epoch(order), communication_seconds=0.25)


def test_epoch_record_keeps_the_seconds_spent_combining_gradients(tiny_data):
    history = fit(_CommunicatingTrainer([0.9]), tiny_data, TrainConfig(epochs=1, threads=1))
    record = history.final
    assert record.communication_seconds == 0.25
    assert EpochRecord.from_dict(record.as_dict()) == record
    stored = {**record.as_dict(), "communication_seconds": -1.0}
    with pytest.raises(ResultError, match=r"communication_seconds is -1\.0, negative"):
        EpochRecord.from_dict(stored, "epoch")
    del stored["communication_seconds"]  # written before replicas: one device
    assert EpochRecord.from_dict(stored).communication_seconds is None


def test_epoch_runner_trains_in_the_shared_order_then_evaluates(tiny_data, monkeypatch):
    config = TrainConfig(seed=4, threads=1)
    trainer = _ScriptedTrainer([0.9, 0.8])
    runner = EpochRunner(trainer, config, tiny_data.num_train)
    drawn = []
    real_epoch = MinibatchOrder.epoch

    def counted_epoch(self, epoch):
        drawn.append(epoch)
        return real_epoch(self, epoch)

    monkeypatch.setattr(MinibatchOrder, "epoch", counted_epoch)
    trained = runner.train()
    assert drawn == [0]  # train() draws the order itself when none was prepared
    assert (trained.epoch, trained.train_loss, trained.test_accuracy) == (1, 0.9, None)
    evaluated = runner.evaluate()
    assert (evaluated.test_loss, evaluated.test_accuracy) == (1.0, 0.25)
    assert evaluated.train_seconds == trained.train_seconds and evaluated.eval_seconds >= 0
    runner.prepare()  # drawn ahead, outside the clock
    assert drawn == [0, 1]
    runner.train()
    assert drawn == [0, 1]  # train() used the prepared order, without drawing again
    assert [r.epoch for r in runner.history] == [1, 2]
    assert runner.history[0] == evaluated and runner.history[1].test_accuracy is None
    order = MinibatchOrder(tiny_data.num_train, config.seed)
    for epoch, seen in enumerate(trainer.orders):
        np.testing.assert_array_equal(seen, order.epoch(epoch))


def test_epoch_runner_refuses_a_diverging_epoch_before_recording_it(tiny_data):
    runner = EpochRunner(_ScriptedTrainer([math.inf]), TrainConfig(), tiny_data.num_train)
    with pytest.raises(DivergenceError, match="epoch 1"):
        runner.train()
    assert runner.history == []


def test_jax_replicas_on_the_cpu_need_host_devices_before_jax_starts():
    config = TrainConfig(replicas=2, threads=2)
    flags = "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=8"
    env = host_devices.xla_host_devices(config, {"XLA_FLAGS": flags})
    # The earlier count is replaced, the other flags kept.
    assert env == {
        "XLA_FLAGS": "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2"
    }
    assert registry.environment_for("jax", config)["XLA_FLAGS"].endswith("device_count=2")
    assert registry.environment_for("jax", TrainConfig()) == {}
    assert registry.environment_for("jax", config.replace(device="cuda")) == {}
    assert registry.environment_for("numpy", config) == {}
    assert registry.environment_for("jax-step", config) == registry.environment_for("jax", config)


def test_the_host_device_count_xla_flags_give():
    assert host_devices.flagged_host_devices({}) == 1
    assert host_devices.flagged_host_devices({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}) == 1
    flags = "--xla_force_host_platform_device_count=8 --xla_force_host_platform_device_count=3"
    assert host_devices.flagged_host_devices({"XLA_FLAGS": flags}) == 3  # the last one counts


def test_a_jax_run_over_several_processes_is_described_whole_or_refused():
    env = {
        host_devices.COORDINATOR_ENV: "10.0.0.1:1234",
        host_devices.PROCESSES_ENV: "2",
        host_devices.PROCESS_ID_ENV: "1",
    }
    assert host_devices.jax_processes({}) is None
    group = host_devices.jax_processes(env)
    assert group == host_devices.ProcessGroup("10.0.0.1:1234", 2, 1)
    # Each process holds its share of the replicas, so its XLA_FLAGS ask for that many.
    assert host_devices.local_replicas(4, group) == 2
    config = TrainConfig(replicas=4, threads=4)
    assert host_devices.xla_host_devices(config, env)["XLA_FLAGS"].endswith("device_count=2")
    with pytest.raises(ConfigError, match="3 replicas cannot be shared equally by 2 processes"):
        host_devices.local_replicas(3, group)
    with pytest.raises(ConfigError, match=f"{host_devices.PROCESS_ID_ENV} unset"):
        host_devices.jax_processes({**env, host_devices.PROCESS_ID_ENV: ""})
    with pytest.raises(ConfigError, match="must be integers"):
        host_devices.jax_processes({**env, host_devices.PROCESSES_ENV: "two"})
    with pytest.raises(ConfigError, match=r"must be in 0\.\.1, got 2"):
        host_devices.jax_processes({**env, host_devices.PROCESS_ID_ENV: "2"})


def test_a_compile_log_times_each_compilation_and_counts_its_cache_lookups(tmp_path):
    """The bookkeeping Numba's and torch.compile's trainers share (impls.compile_cache)."""
    from impls.compile_cache import CompileLog

    counts = {"hits": 0, "misses": 0}

    def lookups() -> tuple[int, int]:
        return counts["hits"], counts["misses"]

    cache = {"compilation_cache_dir": str(tmp_path), "compilation_cache_entries_before": 0}
    log = CompileLog(cache)
    counts["hits"] = 5  # lookups made before the trainer's compilations are not its own
    log.run("a", lambda: counts.update(hits=counts["hits"] + 2), lookups)
    log.run("b", lambda: counts.update(misses=1), lookups)
    info = log.info()
    assert (info["compilation_cache_hits"], info["compilation_cache_misses"]) == (2, 1)
    assert info["compilation_cache_warm"] is False  # one compilation missed the cache
    assert set(info["compile_seconds_by_program"]) == {"a", "b"}
    assert info["compile_seconds"] >= 0 and info["compilation_cache_dir"] == str(tmp_path)
    warm = CompileLog(cache)
    warm.run("a", lambda: counts.update(hits=counts["hits"] + 1), lookups)
    assert warm.info()["compilation_cache_warm"] is True
