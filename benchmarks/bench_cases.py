"""What the suite measures: one case per implementation, device, thread count and batch size.

The tests are parametrized with these cases (``pytest_generate_tests`` in
conftest.py) and ordered by :func:`run_order`: the main run's cases first (their
epochs interleaved by one schedule, bench_schedule.py), then every sweep point
of one worker (implementation, device, threads) in a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from bench_options import BOOK_SIZE, SWEEP_EXCLUDED, Settings

from impls.config import BOOK_LOADER_WORKERS, TrainConfig, lr_at_size, usable_cores
from impls.data import IMAGE_SIZE
from impls.registry import REGISTRY
from impls.results import GROUPS

# Start-up measurements beyond the epoch: which implementations' ``fmbench train``
# is timed end to end, and which keep a persistent compilation cache (and the
# environment variable that points it elsewhere), timed cold and warm.
CLI_STARTUP_IMPLS = ("numpy",)
COMPILE_CACHE_ENV = {
    impl.name: impl.compile_cache_env for impl in REGISTRY.values() if impl.compile_cache_env
}

# The floors: test function name -> the kind its result records.
FLOOR_TESTS = {
    "test_read_limit": "limit",
    "test_compute_floor": "compute",
    "test_read_limit_at_size": "size-limit",
    "test_compute_floor_at_size": "size-compute",
}
FLOOR_SIZE_FIXTURE = "floor_size"  # the floors at each swept size take theirs from it


@dataclass(frozen=True)
class Case:
    """One benchmark: an implementation on a device at a thread count and batch size."""

    kind: str  # "epoch", "batch", "threads", "size", "loader", "loader-only" or "replicas"
    impl: str
    device: str
    threads: int
    batch_size: int
    size: int = IMAGE_SIZE  # the images' side: the input-size sweep's (else the native 28)
    loader_workers: int | None = None  # the baseline breakdown's (else the implementation's)
    replicas: int = 1  # the replicas sweep's: data-parallel replicas sharing ``threads``

    @property
    def id(self) -> str:
        suffix = {
            "epoch": "",
            "batch": f"-batch{self.batch_size}",
            "threads": f"-threads{self.threads}",
            "size": f"-size{self.size}",
            "loader": f"-workers{self.loader_workers}",
            "loader-only": f"-workers{self.loader_workers}-data-only",
            "replicas": f"-replicas{self.replicas}",
        }
        return f"{self.impl}-{self.device}{suffix[self.kind]}"

    @property
    def build_settings(self) -> dict[str, object]:
        """The config's fields this case sets beyond device, threads and batch size: at
        another image size, the size and the learning rate its rule gives
        (:func:`impls.config.lr_at_size`); the DataLoader's workers, where given; the
        replicas, beyond one."""
        settings: dict[str, object] = {}
        if self.size != IMAGE_SIZE:
            settings.update(resize=self.size, lr=lr_at_size(TrainConfig.lr, self.size))
        if self.loader_workers is not None:
            settings["loader_workers"] = self.loader_workers
        if self.replicas != 1:
            settings["replicas"] = self.replicas
        return settings

    def train_config(self) -> TrainConfig:
        """The configuration the case's worker builds with (the request adds the seed)."""
        return TrainConfig(
            device=self.device,
            threads=self.threads,
            batch_size=self.batch_size,
            **self.build_settings,  # type: ignore[arg-type]
        )

    @property
    def group(self) -> str:
        return GROUPS[self.kind]


@dataclass(frozen=True)
class StartupCase:
    """One start-up measurement: ``name`` is ``load-cache``, ``cli-train``, ``compile-cold``
    or ``compile-warm``; ``impl`` is ``data`` for the loader."""

    name: str
    impl: str
    device: str
    threads: int
    kind: str = "startup"

    @property
    def id(self) -> str:
        return f"{self.impl}-{self.device}-{self.name}"

    @property
    def group(self) -> str:
        return GROUPS[self.kind]


def swept_sizes(settings: Settings) -> list[int]:
    """The input-size sweep's sides besides the native 28, whose point is the main run."""
    return [size for size in dict.fromkeys(settings.sizes) if size != IMAGE_SIZE]


def size_cases(settings: Settings) -> list[Case]:
    """The input-size sweep: every implementation at each swept size; a slow one only at the
    book's 64 (every size with ``--sweep-slow``)."""
    return [
        Case("size", impl, device, settings.threads, settings.batch_size, size)
        for impl in settings.impls
        for device in settings.devices
        for size in swept_sizes(settings)
        if impl not in SWEEP_EXCLUDED or settings.sweep_slow or size == BOOK_SIZE
    ]


def loader_cases(settings: Settings, kind: str) -> list[Case]:
    """The baseline broken down: each implementation with a DataLoader of its own, at each
    number of workers, training (``loader``) or only iterating its batches (``loader-only``)."""
    return [
        Case(kind, impl, device, settings.threads, settings.batch_size, loader_workers=workers)
        for impl in settings.impls
        if REGISTRY[impl].own_loader
        for device in settings.devices
        for workers in settings.loader_workers
    ]


def replica_cases(settings: Settings) -> list[Case]:
    """The replicas sweep: each implementation with a data-parallel engine at each number of
    replicas, the run's threads shared among them (those that do not fit skip, saying why:
    :func:`replicas_unfit`)."""
    return [
        Case("replicas", impl, device, settings.threads, settings.batch_size, replicas=replicas)
        for impl in settings.impls
        if REGISTRY[impl].data_parallel and (impl not in SWEEP_EXCLUDED or settings.sweep_slow)
        for device in settings.devices
        for replicas in settings.replicas
    ]


def replicas_unfit(case: Case) -> str | None:
    """Why ``case``'s replicas cannot run here (more than its threads, or on the CPU more
    than the usable cores), or None. Other devices' limits are their engine's to tell."""
    cores = usable_cores()
    if case.device == "cpu" and case.replicas > cores:
        return (
            f"{case.replicas} replicas on the CPU need a core each; {cores} usable here "
            f"(--replicas to choose the points)"
        )
    if case.replicas > case.threads:
        return (
            f"{case.replicas} replicas need a thread each; the run has {case.threads} (--threads)"
        )
    return None


def training_cases(settings: Settings, kind: str) -> list[Case]:
    """The cases of ``kind``: the main run (``epoch``) or a sweep (``batch``, ``threads``,
    ``size``, ``loader``, ``loader-only``, ``replicas``)."""
    if kind == "size":
        return size_cases(settings)
    if kind in ("loader", "loader-only"):
        return loader_cases(settings, kind)
    if kind == "replicas":
        return replica_cases(settings)
    cases = []
    for impl in settings.impls:
        if kind != "epoch" and impl in SWEEP_EXCLUDED and not settings.sweep_slow:
            continue
        for device in settings.devices:
            if kind == "epoch":
                cases.append(Case(kind, impl, device, settings.threads, settings.batch_size))
            elif kind == "batch":
                cases += [
                    Case(kind, impl, device, settings.threads, size)
                    for size in settings.batch_sizes
                ]
            else:
                cases += [
                    Case(kind, impl, device, threads, settings.batch_size)
                    for threads in settings.sweep_threads
                ]
    return cases


def startup_cases(settings: Settings, name: str) -> list[StartupCase]:
    """The start-up measurements called ``name`` (``load`` or ``cli`` or ``compile``)."""
    if name == "load":
        return [StartupCase("load-cache", "data", "cpu", settings.threads)]
    if name == "cli":
        return [
            StartupCase("cli-train", impl, "cpu", settings.threads)
            for impl in settings.impls
            if impl in CLI_STARTUP_IMPLS and "cpu" in settings.devices
        ]
    return [
        StartupCase(f"compile-{cache}", impl, device, settings.threads)
        for impl in settings.impls
        if impl in COMPILE_CACHE_ENV
        for device in settings.devices
        for cache in ("cold", "warm")
    ]


# The fixture each test takes its case from, and how its cases are made.
TRAINING_FIXTURES = {
    "epoch_case": "epoch",
    "batch_case": "batch",
    "threads_case": "threads",
    "size_case": "size",
    "loader_case": "loader",
    "loader_only_case": "loader-only",
    "replicas_case": "replicas",
}
STARTUP_FIXTURES = {"load_case": "load", "cli_case": "cli", "compile_case": "compile"}
CASE_FIXTURES = (*TRAINING_FIXTURES, *STARTUP_FIXTURES)


def parametrize(metafunc: pytest.Metafunc, settings: Settings) -> None:
    """Give each test taking a case fixture one call per case, with readable ids."""
    for fixture, name in STARTUP_FIXTURES.items():
        if fixture in metafunc.fixturenames:
            found = startup_cases(settings, name)
            metafunc.parametrize(fixture, found, ids=[case.id for case in found])
    for fixture, kind in TRAINING_FIXTURES.items():
        if fixture in metafunc.fixturenames:
            found = training_cases(settings, kind)
            metafunc.parametrize(fixture, found, ids=[case.id for case in found])
    if FLOOR_SIZE_FIXTURE in metafunc.fixturenames:
        sizes = swept_sizes(settings)
        metafunc.parametrize(FLOOR_SIZE_FIXTURE, sizes, ids=[f"size{size}" for size in sizes])


def item_case(item: pytest.Item) -> Case | StartupCase | None:
    """The case a collected test runs, or None (the floors)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name in CASE_FIXTURES:
        if name in params:
            return params[name]
    return None


def timed_by_the_main_run(items: Sequence[pytest.Item]) -> list[pytest.Item]:
    """The baseline's training points at the book's DataLoader workers whose implementation's
    main run is among ``items``: the same configuration, which the report reads there."""
    main = {
        (case.impl, case.device)
        for case in map(item_case, items)
        if isinstance(case, Case) and case.kind == "epoch"
    }
    return [
        item
        for item in items
        if isinstance(case := item_case(item), Case)
        and case.kind == "loader"
        and case.loader_workers == BOOK_LOADER_WORKERS
        and (case.impl, case.device) in main
    ]


def has_no_case(item: pytest.Item) -> bool:
    """Whether ``item`` is pytest's placeholder for an empty case list (nothing to measure)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(
        name in params and not isinstance(params[name], Case | StartupCase)
        for name in CASE_FIXTURES
    ) or (FLOOR_SIZE_FIXTURE in params and not isinstance(params[FLOOR_SIZE_FIXTURE], int))


def run_order(settings: Settings):
    """The sort key of the test items: floors first, then the main run (every implementation
    in one schedule), then each worker's sweep points in a row, start-up last."""
    impl_rank = {name: rank for rank, name in enumerate(settings.impls)}
    kind_rank = {
        "epoch": 0, "batch": 1, "threads": 2, "size": 3, "loader": 4, "loader-only": 5,
        "replicas": 6,
    }  # fmt: skip

    def key(item: pytest.Item) -> tuple:
        case = item_case(item)
        if case is None:  # the floors first, on a quiet machine
            return (0,)
        if isinstance(case, StartupCase):  # after the epochs: they start processes
            return (2, case.impl, case.device, case.name)
        # The default thread count first, so that worker is reused by the sweeps.
        return (
            1,
            case.kind != "epoch",
            impl_rank[case.impl],
            case.device,
            case.threads != settings.threads,
            case.threads,
            kind_rank[case.kind],
            case.batch_size,
            case.size,
            -1 if case.loader_workers is None else case.loader_workers,
            case.replicas,
        )

    return key


def describe(item: pytest.Item) -> dict:
    """What the run's JSON lists for a test besides its outcome: kind, group, case fields."""
    case = item_case(item)
    if case is None:
        kind = FLOOR_TESTS.get(getattr(item, "originalname", ""), "limit")
        params = getattr(getattr(item, "callspec", None), "params", {})
        size = {"size": params[FLOOR_SIZE_FIXTURE]} if FLOOR_SIZE_FIXTURE in params else {}
        return {"kind": kind, "group": GROUPS[kind], **size}
    return {**vars(case), "group": case.group}
