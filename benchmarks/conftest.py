"""The benchmark suite's options, fixtures and pytest-benchmark hooks.

Run it from the repository root (``nox -s bench`` does, then builds the report)::

    python -m pytest benchmarks --benchmark-json=run.json [--impl numpy] [--quick] ...

The suite sits outside the default test paths (``tests/``) and runs under the
project's pytest configuration; the ``sweep`` marker is registered here, so
``--strict-markers`` holds. ``-m "not sweep"`` (or ``--no-sweeps``) runs the
main comparison only.

What goes into the JSON besides pytest-benchmark's own fields:

* ``machine_info["fmbench"]``: CPU, cores, memory, load, versions, BLAS, the
  threads each framework actually used, device names, git commit;
* ``fmbench`` (top level): the options, every test's outcome (a skipped or
  failed implementation is listed with its reason), and the first test images
  so that the report can draw the predictions grid without the dataset.
"""

from __future__ import annotations

import base64
import importlib.metadata
import os
import platform
import subprocess
import time
import uuid
from pathlib import Path

import harness
import numpy as np
import pytest

from impls import registry
from impls.data import DataError, load_fashion_mnist, to_float32

SETTINGS_KEY = pytest.StashKey["harness.Settings"]()
STATE_KEY = pytest.StashKey[dict]()
# pytest_runtest_logreport has no config argument: the session's state is kept here too.
_STATE: dict[str, dict] = {}

DEFAULT_EPOCHS = 10
QUICK_EPOCHS = 2
DEFAULT_SWEEP_ROUNDS = 5
DEFAULT_LIMIT_ROUNDS = 30
DEFAULT_STARTUP_ROUNDS = 5
FLOOR_TESTS = {
    "test_read_limit": {"kind": "limit", "group": harness.GROUP_EPOCH},
    "test_compute_floor": {"kind": "compute", "group": harness.GROUP_COMPUTE},
}
DEFAULT_TARGET_ACCURACY = 0.82


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise pytest.UsageError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise pytest.UsageError(f"expected positive integers, got {text!r}")
    return values


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fmbench", "fmbench benchmarks (benchmarks/)")
    add = group.addoption
    add(
        "--impl",
        action="append",
        default=[],
        metavar="NAME",
        help="implementation to benchmark (repeatable; default: all of "
        f"{', '.join(registry.REGISTRY)})",
    )
    add(
        "--device",
        action="append",
        default=[],
        metavar="DEVICE",
        help="device to run on (repeatable; default cpu); a device an implementation lacks is "
        "reported as skipped",
    )
    add(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads for every framework (default: the number of cores)",
    )
    add(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_EPOCHS} epochs (1 timed round), 1 round per sweep point",
    )
    add(
        "--epochs",
        type=int,
        default=None,
        metavar="N",
        help=f"epochs of the main run (default {DEFAULT_EPOCHS}); the first is warm-up, "
        "the rest are the timed rounds",
    )
    add(
        "--sweep-rounds",
        type=int,
        default=None,
        metavar="N",
        help="timed rounds per sweep point, after one warm-up epoch "
        f"(default {DEFAULT_SWEEP_ROUNDS})",
    )
    add(
        "--target-accuracy",
        type=float,
        default=DEFAULT_TARGET_ACCURACY,
        metavar="ACC",
        help=f"test accuracy for time-to-accuracy (default {DEFAULT_TARGET_ACCURACY})",
    )
    add(
        "--batch-sizes",
        default="64,256,1024",
        metavar="LIST",
        help="batch sizes of the batch-size sweep (default 64,256,1024)",
    )
    add(
        "--sweep-threads",
        default="1,2",
        metavar="LIST",
        help="thread counts of the thread sweep (default 1,2)",
    )
    add("--no-sweeps", action="store_true", help="skip both sweeps")
    add(
        "--no-startup",
        action="store_true",
        help="skip the start-up measurements (dataset load, cold `fmbench train`, compile cache)",
    )
    add(
        "--startup-rounds",
        type=int,
        default=None,
        metavar="N",
        help=f"rounds of each start-up measurement, each in a fresh process where it starts "
        f"one (default {DEFAULT_STARTUP_ROUNDS})",
    )
    add(
        "--sweep-slow",
        action="store_true",
        help=f"also sweep the slow implementations ({', '.join(harness.SWEEP_EXCLUDED)})",
    )
    add(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="directory holding the Fashion-MNIST files (else the usual search)",
    )
    add(
        "--worker-timeout",
        type=float,
        default=900.0,
        metavar="S",
        help="seconds to wait for any one worker request before killing it (default 900)",
    )


def _settings(config: pytest.Config) -> harness.Settings:
    option = config.getoption
    impls = tuple(dict.fromkeys(option("impl"))) or tuple(registry.REGISTRY)
    for name in impls:
        if name not in registry.REGISTRY:
            raise pytest.UsageError(
                f"--impl {name!r}: unknown; known implementations: {', '.join(registry.REGISTRY)}"
            )
    threads = option("threads") or os.cpu_count() or 1
    if threads < 1:
        raise pytest.UsageError(f"--threads must be positive, got {threads}")
    quick = option("quick")
    epochs = option("epochs") or (QUICK_EPOCHS if quick else DEFAULT_EPOCHS)
    if epochs < 2:
        raise pytest.UsageError("--epochs must be at least 2 (one warm-up epoch, one timed)")
    sweep_rounds = option("sweep_rounds") or (1 if quick else DEFAULT_SWEEP_ROUNDS)
    startup_rounds = option("startup_rounds")
    if startup_rounds is None:
        startup_rounds = 1 if quick else DEFAULT_STARTUP_ROUNDS
    elif startup_rounds < 1:
        raise pytest.UsageError(f"--startup-rounds must be positive, got {startup_rounds}")
    target = option("target_accuracy")
    if not 0 < target <= 1:
        raise pytest.UsageError(f"--target-accuracy must be in (0, 1], got {target}")
    return harness.Settings(
        impls=impls,
        devices=tuple(dict.fromkeys(option("device"))) or ("cpu",),
        threads=threads,
        quick=quick,
        epochs=epochs,
        sweep_rounds=sweep_rounds,
        limit_rounds=5 if quick else DEFAULT_LIMIT_ROUNDS,
        target_accuracy=target,
        batch_sizes=_int_list(option("batch_sizes")),
        sweep_threads=_int_list(option("sweep_threads")),
        sweeps=not option("no_sweeps"),
        sweep_slow=option("sweep_slow"),
        data_dir=option("data_dir"),
        worker_timeout=option("worker_timeout"),
        startup=not option("no_startup"),
        startup_rounds=startup_rounds,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sweep: a batch-size or thread sweep point (benchmarks/)")
    config.addinivalue_line("markers", "startup: a start-up measurement (benchmarks/)")
    if not config.pluginmanager.hasplugin("benchmark"):
        raise pytest.UsageError("benchmarks/ needs pytest-benchmark: pip install 'fmbench[bench]'")
    settings = _settings(config)
    config.stash[SETTINGS_KEY] = settings
    config.stash[STATE_KEY] = {
        "run_id": uuid.uuid4().hex,
        "load_start": _loadavg(),
        "cpu_start": _cpu_counters(),
        "cases": {},  # nodeid -> case fields
        "outcomes": {},  # nodeid -> {"outcome", "reason"}
        "frameworks": {},  # implementation -> what its worker reported
        "sample": None,
    }
    _STATE["state"] = config.stash[STATE_KEY]


def _cpu_counters() -> dict[str, float] | None:
    """Busy CPU seconds of the whole machine and of this process tree, and a clock."""
    try:
        import resource

        import psutil
    except ImportError:  # Windows has no resource module; psutil is optional
        return None
    times = psutil.cpu_times()
    busy = sum(
        getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal")
    )
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):  # workers, once reaped
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    return {"busy": busy, "own": own, "clock": time.monotonic()}


def _other_cpu_use(start: dict[str, float] | None) -> dict[str, float] | None:
    """How many CPUs, on average, other processes kept busy while the benchmarks ran."""
    end = _cpu_counters()
    if start is None or end is None:
        return None
    wall = end["clock"] - start["clock"]
    if wall <= 0:
        return None
    other = (end["busy"] - start["busy"]) - (end["own"] - start["own"])
    return {"wall_seconds": wall, "other_cpu_seconds": other, "other_cpus": max(other, 0) / wall}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ------------------------------------------------------------------ test cases


def _cases(settings: harness.Settings, kind: str) -> list[harness.Case]:
    cases = []
    for impl in settings.impls:
        if kind != "epoch" and impl in harness.SWEEP_EXCLUDED and not settings.sweep_slow:
            continue
        for device in settings.devices:
            if kind == "epoch":
                cases.append(
                    harness.Case(kind, impl, device, settings.threads, settings.batch_size)
                )
            elif kind == "batch":
                cases += [
                    harness.Case(kind, impl, device, settings.threads, size)
                    for size in settings.batch_sizes
                ]
            else:
                cases += [
                    harness.Case(kind, impl, device, threads, settings.batch_size)
                    for threads in settings.sweep_threads
                ]
    return cases


def _startup_cases(settings: harness.Settings, name: str) -> list[harness.StartupCase]:
    """The start-up measurements called ``name`` (``load`` or ``cli`` or ``compile``)."""
    if name == "load":
        return [harness.StartupCase("load-cache", "data", "cpu", settings.threads)]
    if name == "cli":
        return [
            harness.StartupCase("cli-train", impl, "cpu", settings.threads)
            for impl in settings.impls
            if impl in harness.CLI_STARTUP_IMPLS and "cpu" in settings.devices
        ]
    return [
        harness.StartupCase(f"compile-{cache}", impl, device, settings.threads)
        for impl in settings.impls
        if impl in harness.COMPILE_CACHE_ENV
        for device in settings.devices
        for cache in ("cold", "warm")
    ]


STARTUP_FIXTURES = {"load_case": "load", "cli_case": "cli", "compile_case": "compile"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    settings = metafunc.config.stash[SETTINGS_KEY]
    for fixture, name in STARTUP_FIXTURES.items():
        if fixture in metafunc.fixturenames:
            startup_cases = _startup_cases(settings, name)
            metafunc.parametrize(fixture, startup_cases, ids=[case.id for case in startup_cases])
    for fixture, kind in (
        ("epoch_case", "epoch"),
        ("batch_case", "batch"),
        ("threads_case", "threads"),
    ):
        if fixture in metafunc.fixturenames:
            cases = _cases(settings, kind)
            metafunc.parametrize(fixture, cases, ids=[case.id for case in cases])


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop sweeps and start-up measurements when asked; order the rest so each worker's
    cases run in a row, and the start-up measurements last."""
    settings = config.stash[SETTINGS_KEY]
    dropped = [] if settings.sweeps else ["sweep"]
    dropped += [] if settings.startup else ["startup"]
    kept = [
        item
        for item in items
        if not any(item.get_closest_marker(m) for m in dropped) and not _has_no_case(item)
    ]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept
    impl_rank = {name: rank for rank, name in enumerate(settings.impls)}
    kind_rank = {"epoch": 0, "batch": 1, "threads": 2}

    def key(item: pytest.Item) -> tuple:
        case = _item_case(item)
        if case is None:  # the read-once limit first, on a quiet machine
            return (0,)
        if isinstance(case, harness.StartupCase):  # after the epochs: they start processes
            return (2, case.impl, case.device, case.name)
        # The default thread count first, so that worker is reused by the sweeps.
        return (
            1,
            impl_rank[case.impl],
            case.device,
            case.threads != settings.threads,
            case.threads,
            kind_rank[case.kind],
            case.batch_size,
        )

    items.sort(key=key)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Record what will run (after every plugin's deselection, e.g. ``-k``)."""
    state = session.config.stash[STATE_KEY]
    for item in session.items:
        case = _item_case(item)
        state["cases"][item.nodeid] = (
            FLOOR_TESTS.get(item.originalname, {"kind": "limit", "group": harness.GROUP_EPOCH})
            if case is None
            else {**vars(case), "group": case.group}
        )


CASE_FIXTURES = ("epoch_case", "batch_case", "threads_case", *STARTUP_FIXTURES)


def _item_case(item: pytest.Item) -> harness.Case | harness.StartupCase | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    for name in CASE_FIXTURES:
        if name in callspec.params:
            return callspec.params[name]
    return None


def _has_no_case(item: pytest.Item) -> bool:
    """Whether ``item`` is pytest's placeholder for an empty case list (nothing to measure)."""
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    return any(
        name in params and not isinstance(params[name], harness.Case | harness.StartupCase)
        for name in CASE_FIXTURES
    )


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


def pytest_unconfigure(config: pytest.Config) -> None:
    _STATE.pop("state", None)


# -------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> harness.Settings:
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def dataset(pytestconfig: pytest.Config, settings: harness.Settings):
    """The verified dataset (downloaded into the cache if needed, so workers find it)."""
    try:
        data = load_fashion_mnist(settings.data_dir)
    except DataError as error:
        pytest.fail(f"the benchmarks need Fashion-MNIST: {error}", pytrace=False)
    sample = data.test_images[: harness.PREDICTION_COUNT]
    pytestconfig.stash[STATE_KEY]["sample"] = {
        "images_uint8_base64": base64.b64encode(np.ascontiguousarray(sample).tobytes()).decode(),
        "shape": list(sample.shape),
        "labels": [int(label) for label in data.test_labels[: harness.PREDICTION_COUNT]],
    }
    return data


@pytest.fixture(scope="session")
def train_float32(dataset) -> np.ndarray:
    """The training images as the (60000, 784) float32 array the implementations train on."""
    return to_float32(dataset.train_images).reshape(dataset.num_train, -1)


@pytest.fixture(scope="session")
def workers(pytestconfig: pytest.Config, settings: harness.Settings, dataset):
    frameworks = pytestconfig.stash[STATE_KEY]["frameworks"]

    def record(impl: str, info: dict) -> None:
        frameworks.setdefault(impl, info)

    pool = harness.WorkerPool(settings.data_dir, settings.worker_timeout, on_info=record)
    yield pool
    pool.close()


# ------------------------------------------------------- pytest-benchmark hooks


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=harness.REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def _memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None


def _physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except ImportError:
        return None


def _numpy_blas() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [
        {key: pool.get(key) for key in ("internal_api", "version", "num_threads", "architecture")}
        for pool in threadpool_info()
        if pool.get("user_api") == "blas"
    ]


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    settings = config.stash[SETTINGS_KEY]
    state = config.stash[STATE_KEY]
    cpu = machine_info.get("cpu") or {}
    frameworks = {}
    for impl, info in state["frameworks"].items():
        runtime = info.get("runtime", {})
        frameworks[impl] = {
            "device": info.get("device"),
            "device_name": runtime.get("device_name") or runtime.get("device"),
            "threads_requested": info.get("threads"),
            "threads": runtime.get("threads"),
            "runtime": runtime,
        }
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    machine_info["fmbench"] = {
        "cpu_model": cpu.get("brand_raw") or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "usable_cpus": affinity,
        "memory_bytes": _memory_bytes(),
        "os": f"{platform.system()} {platform.release()}",
        "threads": settings.threads,
        "thread_env": harness.thread_env(settings.threads),  # what each worker is started with
        "load_average": {"start": state["load_start"], "end": _loadavg()},
        # Busy CPU time of the machine minus this run's own (pytest and its reaped workers).
        "other_cpu_use": _other_cpu_use(state["cpu_start"]),
        "versions": {
            name: _version(name)
            for name in (
                "numpy",
                "torch",
                "torchvision",
                "jax",
                "jaxlib",
                "optax",
                "pytest-benchmark",
                "fmbench",
            )
        },
        "python": platform.python_version(),
        "numpy_blas": _numpy_blas(),
        "frameworks": frameworks,
        "git": {
            "commit": _git("rev-parse", "HEAD"),
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        },
    }


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    settings = config.stash[SETTINGS_KEY]
    state = config.stash[STATE_KEY]
    tests = []
    for nodeid, case in state["cases"].items():
        outcome = state["outcomes"].get(nodeid, {"outcome": "not run", "reason": "", "when": ""})
        tests.append({"nodeid": nodeid, **case, **outcome})
    output_json["fmbench"] = {
        "schema": 1,
        "run_id": state["run_id"],
        "settings": settings.as_dict(),
        "sweep_excluded": {} if settings.sweep_slow else dict(harness.SWEEP_EXCLUDED),
        "registry": {
            name: {"summary": impl.summary, "follows_shared_order": impl.follows_shared_order}
            for name, impl in registry.REGISTRY.items()
        },
        "tests": tests,
        "sample": state["sample"],
        "cwd": str(Path.cwd()),
    }
