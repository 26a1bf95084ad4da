"""The benchmark suite's pytest hooks and fixtures.

Run it from the repository root (``nox -s bench`` does, then builds the report)::

    python -m pytest benchmarks --benchmark-json=run.json [--impl numpy] [--quick] ...

The suite sits outside the default test paths (``tests/``) and runs under the
project's pytest configuration; the ``sweep`` and ``startup`` markers are
registered here, so ``--strict-markers`` holds. ``-m "not sweep"`` (or
``--no-sweeps``) runs the main comparison only. Options: bench_options.py;
cases: bench_cases.py; workers: bench_workers.py; floors: bench_floors.py.

What goes into the JSON besides pytest-benchmark's own fields:

* each benchmark's ``extra_info``: its case's result, as defined by
  :mod:`impls.results` (the report reads it with the same definitions);
* ``machine_info["fmbench"]`` (bench_machine.py): CPU, cores, memory, load,
  versions, BLAS, the threads each framework actually used, device names;
* ``fmbench`` (top level): the options, every test's outcome (a skipped or
  failed implementation is listed with its reason) and wall time, the session's
  wall time, and the first test images so that the report can draw the
  predictions grid without the dataset.
"""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path

import bench_cases
import bench_machine
import bench_options
import bench_schedule
import bench_workers
import numpy as np
import pytest

from impls import registry
from impls.data import DataError, load_fashion_mnist, to_float32
from impls.figures import PREDICTION_COUNT
from impls.results import SCHEMA

SETTINGS_KEY = pytest.StashKey[bench_options.Settings]()
STATE_KEY = pytest.StashKey[dict]()
# pytest_runtest_logreport has no config argument: the session's state is kept here too.
_STATE: dict[str, dict] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    bench_options.add_options(parser)


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its options
def pytest_configure(config: pytest.Config) -> None:
    # Every round's seconds are the sample runs are compared on: --benchmark-json keeps
    # them anyway; this keeps them in the autosaved copy under .benchmarks/ too.
    config.option.benchmark_save_data = True
    timer = config.getoption("benchmark_timer", "time.perf_counter")
    if timer != "time.perf_counter":
        raise pytest.UsageError(
            f"--benchmark-timer {timer}: the main run's schedule times its rounds with "
            "time.perf_counter, pytest-benchmark's default; leave the option out"
        )
    config.addinivalue_line(
        "markers", "sweep: a sweep point: batch size, threads, input size, loader, replicas"
    )
    config.addinivalue_line("markers", "startup: a start-up measurement (benchmarks/)")
    if not config.pluginmanager.hasplugin("benchmark"):
        raise pytest.UsageError("benchmarks/ needs pytest-benchmark: pip install 'fmbench[bench]'")
    config.stash[SETTINGS_KEY] = bench_options.resolve_settings(config)
    config.stash[STATE_KEY] = {
        "run_id": uuid.uuid4().hex,
        "started": time.monotonic(),
        "seconds": {},  # nodeid -> wall seconds of its setup, call and teardown
        "load_start": bench_machine.load_average(),
        "cpu_start": bench_machine.cpu_counters(),
        "tests": {},  # nodeid -> what the test measures
        "outcomes": {},  # nodeid -> {"outcome", "reason", "when"}
        "frameworks": {},  # implementation -> what its worker reported
        "sample": None,
        "main_run": None,  # the main run's schedule, once a test asked for it
        "spells": bench_schedule.SpellInjector(
            config.stash[SETTINGS_KEY].inject_spells, processes=config.stash[SETTINGS_KEY].threads
        ),
    }
    _STATE["state"] = config.stash[STATE_KEY]


def pytest_unconfigure(config: pytest.Config) -> None:
    state = _STATE.pop("state", None)
    if state is not None:
        state["spells"].close()  # no burner outlives the run


# ------------------------------------------------------------------ test cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    bench_cases.parametrize(metafunc, metafunc.config.stash[SETTINGS_KEY])


@pytest.hookimpl(trylast=True)
@pytest.hookimpl(trylast=True)  # after -k and -m have chosen what runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop sweeps and start-up measurements when asked, and the baseline's points the main
    run times; order the rest so each worker's cases run in a row, the start-up last."""
    settings = config.stash[SETTINGS_KEY]
    dropped = [] if settings.sweeps else ["sweep"]
    dropped += [] if settings.startup else ["startup"]
    in_main_run = bench_cases.timed_by_the_main_run(items)
    kept = [
        item
        for item in items
        if not any(item.get_closest_marker(m) for m in dropped)
        and not bench_cases.has_no_case(item)
        and item not in in_main_run
    ]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept
    items.sort(key=bench_cases.run_order(settings))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Record what will run (after every plugin's deselection, e.g. ``-k``)."""
    tests = session.config.stash[STATE_KEY]["tests"]
    for item in session.items:
        tests[item.nodeid] = bench_cases.describe(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A benchmark whose test did not pass is not saved as a measurement.

    pytest-benchmark marks a benchmark errored only for an ``Exception``: a
    ``pytest.fail`` or ``pytest.skip`` inside a timed function leaves it a record
    without rounds, on which its JSON writer crashes, losing every other result.
    """
    outcome = yield
    fixture = getattr(item, "funcargs", {}).get("benchmark")
    if outcome.excinfo is not None and fixture is not None:
        fixture.has_error = True


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    return str(longrepr).strip().splitlines()[-1] if longrepr else ""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    state = _STATE.get("state")
    if state is None:
        return
    seconds = state["seconds"]
    seconds[report.nodeid] = seconds.get(report.nodeid, 0.0) + report.duration
    outcomes = state["outcomes"]
    previous = outcomes.get(report.nodeid)
    if previous is not None and previous["outcome"] != "passed":
        return  # keep the first problem (a teardown error after a failure adds nothing)
    if report.when == "call" or report.outcome != "passed":
        outcome = report.outcome if report.when == "call" or report.skipped else "error"
        outcomes[report.nodeid] = {
            "outcome": outcome,
            "when": report.when,
            "reason": "" if report.passed else _reason(report),
        }


# -------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> bench_options.Settings:
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def dataset(pytestconfig: pytest.Config, settings: bench_options.Settings):
    """The verified dataset (downloaded into the cache if needed, so workers find it)."""
    try:
        data = load_fashion_mnist(settings.data_dir)
    except DataError as error:
        pytest.fail(f"the benchmarks need Fashion-MNIST: {error}", pytrace=False)
    count = PREDICTION_COUNT
    sample = data.test_images[:count]
    pytestconfig.stash[STATE_KEY]["sample"] = {
        "images_uint8_base64": base64.b64encode(np.ascontiguousarray(sample).tobytes()).decode(),
        "shape": list(sample.shape),
        "labels": [int(label) for label in data.test_labels[:count]],
    }
    return data


@pytest.fixture(scope="session")
def train_float32(dataset) -> np.ndarray:
    """The training images as the (60000, 784) float32 array the implementations train on."""
    return to_float32(dataset.train_images).reshape(dataset.num_train, -1)


@pytest.fixture(scope="session")
def workers(pytestconfig: pytest.Config, settings: bench_options.Settings, dataset):
    frameworks = pytestconfig.stash[STATE_KEY]["frameworks"]

    def record(impl: str, info: dict) -> None:
        frameworks.setdefault(impl, info)

    pool = bench_workers.WorkerPool(settings.data_dir, settings.worker_timeout, on_info=record)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def filled_compile_caches() -> dict[tuple[str, str], Path]:
    """Per (implementation, device), a compilation cache a cold compile round filled: the
    warm rounds start from it rather than paying a compile of their own to fill one."""
    return {}


@pytest.fixture(scope="session")
def main_run(request: pytest.FixtureRequest, settings: bench_options.Settings, workers):
    """The main run's schedule over every selected ``test_epoch`` case (run on first use)."""
    cases = [bench_cases.item_case(item) for item in request.session.items]
    cases = [case for case in cases if isinstance(case, bench_cases.Case)]
    epoch_cases = [case for case in cases if case.kind == "epoch"]
    state = request.config.stash[STATE_KEY]
    schedule = bench_schedule.MainRun(
        settings,
        workers,
        epoch_cases,
        spells=state["spells"],
        reused=frozenset(workers.key_of(case) for case in cases if case.kind != "epoch"),
    )
    state["main_run"] = schedule
    return schedule


@pytest.fixture(scope="session")
def replica_sweep(request: pytest.FixtureRequest, settings: bench_options.Settings, workers):
    """The replicas sweep's schedules over every selected point that fits here."""
    cases = [bench_cases.item_case(item) for item in request.session.items]
    cases = [case for case in cases if isinstance(case, bench_cases.Case)]
    points = [
        case
        for case in cases
        if case.kind == "replicas" and bench_cases.replicas_unfit(case) is None
    ]
    return bench_schedule.ReplicaSweep(
        settings,
        workers,
        points,
        reused=frozenset(workers.key_of(case) for case in cases if case.kind != "replicas"),
    )


# ------------------------------------------------------- pytest-benchmark hooks


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    settings = config.stash[SETTINGS_KEY]
    state = config.stash[STATE_KEY]
    machine_info["fmbench"] = bench_machine.machine_facts(
        cpu_info=machine_info.get("cpu") or {},
        threads=settings.threads,
        thread_env=bench_workers.thread_env(settings.threads),
        load_start=state["load_start"],
        cpu_start=state["cpu_start"],
        frameworks=state["frameworks"],
    )


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    settings = config.stash[SETTINGS_KEY]
    state = config.stash[STATE_KEY]
    not_run = {"outcome": "not run", "reason": "", "when": ""}
    output_json["fmbench"] = {
        "schema": SCHEMA,
        "run_id": state["run_id"],
        "settings": settings.as_dict(),
        "sweep_excluded": {} if settings.sweep_slow else dict(bench_options.SWEEP_EXCLUDED),
        "registry": {
            name: {
                "summary": impl.summary,
                "follows_shared_order": impl.follows_shared_order,
                "data_parallel": impl.data_parallel,
            }
            for name, impl in registry.REGISTRY.items()
        },
        "tests": [
            {
                "nodeid": nodeid,
                **described,
                **state["outcomes"].get(nodeid, not_run),
                "seconds": _rounded(state["seconds"].get(nodeid)),
            }
            for nodeid, described in state["tests"].items()
        ],
        "sample": state["sample"],
        "canary": _canary(state["main_run"]),
        "injected_spells": [spell.as_dict() for spell in state["spells"].records()],
        "cwd": str(Path.cwd()),
        # pytest-benchmark writes its JSON twice (--benchmark-json, the autosave): one time.
        "run_seconds": state.setdefault(
            "run_seconds", round(time.monotonic() - state["started"], 1)
        ),
    }


def _rounded(seconds: float | None) -> float | None:
    """A test's wall time to the millisecond; None for a test that never started."""
    return None if seconds is None else round(seconds, 3)


def _canary(schedule: bench_schedule.MainRun | None) -> dict | None:
    """The main run's canary as the JSON stores it, or None when no main run was timed."""
    if schedule is None or not schedule.canary.seconds:
        return None
    return schedule.canary.record().as_dict()
