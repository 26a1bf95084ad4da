"""The benchmark suite's command-line options and the one :class:`Settings` resolved from them.

Every setting is resolved here, once: the other modules read ``Settings``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from bench_workers import DEFAULT_TIMEOUT

from impls import registry
from impls.config import BOOK_LOADER_WORKERS, LR_RULE, TrainConfig, usable_cores
from impls.run_info import SCHEDULES, VISIT_TIMED

DEFAULT_EPOCHS = 10
DEFAULT_SEEDS = 3
# A compile from an empty cache is long (Numba's 24 to 27 s on 2 cores) and steady
# (rounds of one run within 5 %): one round, whose filled cache the warm rounds then use.
DEFAULT_COLD_ROUNDS = 1
DEFAULT_LOADER_WORKERS = (0, 2, BOOK_LOADER_WORKERS)
DEFAULT_LOADER_ROUNDS = 2
QUICK_EPOCHS = 2
DEFAULT_SWEEP_ROUNDS = 3  # each sweep point's timed epochs: a median and an IQR
DEFAULT_LIMIT_ROUNDS = 30
QUICK_LIMIT_ROUNDS = 5
DEFAULT_STARTUP_ROUNDS = 3
DEFAULT_TARGET_ACCURACY = 0.82
DEFAULT_EPOCH_TIMEOUT_FACTOR = 20.0
DEFAULT_EPOCH_TIMEOUT_MIN = 30.0
DEFAULT_SIZES = (28, 64, 112)  # the input-size sweep: the native size, the book's 64, and 4x 28
DEFAULT_SIZE_ROUNDS = 2  # few: an epoch at 112 x 112 costs 16 of 28 x 28's
SIZE_FLOOR_ROUNDS = 10  # rounds of each floor at a swept size (the float32 set is 3 GB at 112)
BOOK_SIZE = 64  # the book's resize: the one size the slow implementations run at by default
DEFAULT_REPLICAS = (1, 2)  # the data-parallel sweep's replicas; 1 is always swept (the reference)
# Visits to each replicas point, alternating with the others' (1 untimed + VISIT_TIMED timed
# epochs each): few, since each point beyond 1 starts a process (and DDP its replicas).
DEFAULT_REPLICA_VISITS = 2

# Implementations left out of the sweeps by default, and why (--sweep-slow includes them).
SWEEP_EXCLUDED = {
    "d2l-reference": (
        "the slowest by far (3 to 9 s per epoch on a 2-core CPU, 20 to 50 times the others): "
        "the two sweeps would add 30 of its epochs, 2 to 5 minutes; --sweep-slow includes it"
    ),
}


@dataclass(frozen=True)
class Settings:
    """The options of one benchmark session, resolved."""

    impls: tuple[str, ...]
    devices: tuple[str, ...]
    threads: int
    quick: bool
    epochs: int  # main run: the first epoch is warm-up, the other epochs - 1 are timed rounds
    sweep_rounds: int  # timed rounds per sweep point, after the warm-up epochs
    limit_rounds: int
    target_accuracy: float
    batch_sizes: tuple[int, ...]
    sweep_threads: tuple[int, ...]
    sweeps: bool
    sweep_slow: bool
    data_dir: str | None
    worker_timeout: float
    epoch_timeout_factor: float = DEFAULT_EPOCH_TIMEOUT_FACTOR
    epoch_timeout_min: float = DEFAULT_EPOCH_TIMEOUT_MIN
    startup: bool = True
    startup_rounds: int = DEFAULT_STARTUP_ROUNDS
    cold_rounds: int = DEFAULT_COLD_ROUNDS
    batch_size: int = TrainConfig.batch_size
    sweep_warmup: int = 1
    schedule: str = "round-robin"  # of the main run's timed rounds (bench_schedule.py)
    seeds: tuple[int, ...] = (TrainConfig.seed,)  # the main run trains once per seed
    inject_spells: tuple[tuple[float, float], ...] = ()  # (start, seconds) of each spell
    loader_workers: tuple[int, ...] = DEFAULT_LOADER_WORKERS
    loader_rounds: int = DEFAULT_LOADER_ROUNDS
    sizes: tuple[int, ...] = DEFAULT_SIZES
    size_rounds: int = DEFAULT_SIZE_ROUNDS
    size_floor_rounds: int = SIZE_FLOOR_ROUNDS
    size_lr_rule: str = LR_RULE
    replicas: tuple[int, ...] = DEFAULT_REPLICAS
    replica_visits: int = DEFAULT_REPLICA_VISITS

    @property
    def replica_epochs(self) -> int:
        """The epochs each replicas point trains: a warm-up, then its visits."""
        return 1 + self.replica_visits * (1 + VISIT_TIMED)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _int_list(text: str, minimum: int = 1) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise pytest.UsageError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < minimum:
        kind = "positive integers" if minimum == 1 else f"integers of at least {minimum}"
        raise pytest.UsageError(f"expected {kind}, got {text!r}")
    return values


def _spell(text: str) -> tuple[float, float]:
    """``AT:SECONDS`` of ``--inject-spell`` as two non-negative numbers, the length positive."""
    try:
        at, seconds = (float(part) for part in text.split(":"))
    except ValueError:
        raise pytest.UsageError(
            f"--inject-spell {text!r}: expected AT:SECONDS, e.g. 6:4 (a 4 s spell 6 s into the run)"
        ) from None
    if not (0 <= at < float("inf") and 0 < seconds < float("inf")):
        raise pytest.UsageError(f"--inject-spell {text!r}: AT must be >= 0 and SECONDS > 0")
    return at, seconds


def add_options(parser: pytest.Parser) -> None:
    """Register the ``fmbench`` option group (``python -m pytest benchmarks --help``)."""
    group = parser.getgroup("fmbench", "fmbench benchmarks (benchmarks/)")
    add = group.addoption
    add(
        "--impl",
        action="append",
        default=[],
        metavar="NAME",
        help="implementation to benchmark (repeatable; default: all but the opt-in ones, "
        f"{', '.join(registry.benchmarked_by_default())}); opt-in, run only when named: "
        + "; ".join(
            f"{name} ({impl.opt_in})" for name, impl in registry.REGISTRY.items() if impl.opt_in
        ),
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
        help="threads for every framework (default: the usable cores, by CPU affinity)",
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
    add(
        "--loader-workers",
        default=",".join(map(str, DEFAULT_LOADER_WORKERS)),
        metavar="LIST",
        help="DataLoader workers of the baseline breakdown (default "
        f"{','.join(map(str, DEFAULT_LOADER_WORKERS))}): d2l-reference's epoch, and its loader "
        "alone, at each",
    )
    add(
        "--loader-rounds",
        type=int,
        default=None,
        metavar="N",
        help="timed rounds per point of the baseline breakdown, after a warm-up "
        f"(default {DEFAULT_LOADER_ROUNDS})",
    )
    add(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        metavar="LIST",
        help="image sides of the input-size sweep (default "
        f"{','.join(map(str, DEFAULT_SIZES))}; 28 is the main run's); the slow implementations "
        f"run at {BOOK_SIZE}, the book's resize, only (--sweep-slow: at every size)",
    )
    add(
        "--size-rounds",
        type=int,
        default=None,
        metavar="N",
        help=f"timed rounds per input size, after a warm-up epoch (default {DEFAULT_SIZE_ROUNDS})",
    )
    add(
        "--replicas",
        default=",".join(map(str, DEFAULT_REPLICAS)),
        metavar="LIST",
        help="data-parallel replicas of the replicas sweep (default "
        f"{','.join(map(str, DEFAULT_REPLICAS))}; 1 is always included, the reference): every "
        "implementation with a data-parallel engine, the threads held equal (R replicas of "
        "threads/R each); on the CPU a point above the usable cores is skipped",
    )
    add(
        "--replica-visits",
        type=int,
        default=None,
        metavar="N",
        help="visits to each replicas point, alternating with the implementation's other "
        f"points (1 untimed + {VISIT_TIMED} timed epochs each; default "
        f"{DEFAULT_REPLICA_VISITS}, 1 with --quick)",
    )
    add(
        "--no-sweeps",
        action="store_true",
        help="skip the sweeps (batch size, threads, input size, baseline breakdown, replicas)",
    )
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
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help=f"train the main run from N seeds (default {DEFAULT_SEEDS}, 1 with --quick): "
        "each seed its own initial weights and minibatch order, the same for every "
        "implementation; accuracy is given as mean and sd over them",
    )
    add(
        "--seed",
        type=int,
        default=TrainConfig.seed,
        metavar="S",
        help=f"the first seed (default {TrainConfig.seed}); the others follow it: S+1, S+2...",
    )
    add(
        "--schedule",
        choices=SCHEDULES,
        default="round-robin",
        help="order of the main run's timed epochs: round-robin (default: a visit of three "
        "epochs, two timed, to each implementation in turn, so a slow spell of the host hits "
        "all alike) or blocks (each implementation's epochs back to back, every one timed)",
    )
    add(
        "--inject-spell",
        action="append",
        default=[],
        metavar="AT:SECONDS",
        help="make a spell on purpose: as many CPU-burning processes as threads, AT seconds "
        "after the main run's first timed epoch starts, for SECONDS (repeatable; shows what "
        "the schedule withstands)",
    )
    add(
        "--cold-rounds",
        type=int,
        default=None,
        metavar="N",
        help="rounds of each compile from an empty cache (compile-cold), each in a fresh "
        f"process (default {DEFAULT_COLD_ROUNDS})",
    )
    add(
        "--sweep-slow",
        action="store_true",
        help=f"also sweep the slow implementations ({', '.join(SWEEP_EXCLUDED)})",
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
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="seconds a worker may take to start, import, build or run its warm-up epoch "
        f"before it is killed (default {DEFAULT_TIMEOUT:g})",
    )
    add(
        "--epoch-timeout-factor",
        type=float,
        default=DEFAULT_EPOCH_TIMEOUT_FACTOR,
        metavar="K",
        help="after the warm-up, a request may take K times the slowest warm-up epoch "
        f"(default {DEFAULT_EPOCH_TIMEOUT_FACTOR:g}) ...",
    )
    add(
        "--epoch-timeout-min",
        type=float,
        default=DEFAULT_EPOCH_TIMEOUT_MIN,
        metavar="S",
        help=f"... and at least S seconds (default {DEFAULT_EPOCH_TIMEOUT_MIN:g}); an "
        "implementation that hangs is killed and not tried again in the run",
    )


def _given_or(value: int | None, default: int) -> int:
    """The option's value when given (0 included, so that it is refused), else the default."""
    return default if value is None else value


def resolve_settings(config: pytest.Config) -> Settings:
    """The session's :class:`Settings`; a bad option is a ``pytest.UsageError`` naming it."""
    option = config.getoption
    impls = tuple(dict.fromkeys(option("impl"))) or registry.benchmarked_by_default()
    for name in impls:
        if name not in registry.REGISTRY:
            raise pytest.UsageError(
                f"--impl {name!r}: unknown; known implementations: {', '.join(registry.REGISTRY)}"
            )
    threads = option("threads")
    if threads is None:
        threads = usable_cores()
    elif threads < 1:
        raise pytest.UsageError(f"--threads must be positive, got {threads}")
    quick = option("quick")
    epochs = _given_or(option("epochs"), QUICK_EPOCHS if quick else DEFAULT_EPOCHS)
    if epochs < 2:
        raise pytest.UsageError("--epochs must be at least 2 (one warm-up epoch, one timed)")
    sweep_rounds = _given_or(option("sweep_rounds"), 1 if quick else DEFAULT_SWEEP_ROUNDS)
    if sweep_rounds < 1:
        raise pytest.UsageError(f"--sweep-rounds must be positive, got {sweep_rounds}")
    seed_count = _given_or(option("seeds"), 1 if quick else DEFAULT_SEEDS)
    if seed_count < 1:
        raise pytest.UsageError(f"--seeds must be positive, got {seed_count}")
    if option("seed") < 0:
        raise pytest.UsageError(f"--seed must be non-negative, got {option('seed')}")
    startup_rounds = option("startup_rounds")
    if startup_rounds is None:
        startup_rounds = 1 if quick else DEFAULT_STARTUP_ROUNDS
    elif startup_rounds < 1:
        raise pytest.UsageError(f"--startup-rounds must be positive, got {startup_rounds}")
    cold_rounds = _given_or(option("cold_rounds"), min(startup_rounds, DEFAULT_COLD_ROUNDS))
    if cold_rounds < 1:
        raise pytest.UsageError(f"--cold-rounds must be positive, got {cold_rounds}")
    for name in ("worker_timeout", "epoch_timeout_factor", "epoch_timeout_min"):
        if not option(name) > 0:
            flag = "--" + name.replace("_", "-")
            raise pytest.UsageError(f"{flag} must be positive, got {option(name)}")
    size_rounds = _given_or(option("size_rounds"), 1 if quick else DEFAULT_SIZE_ROUNDS)
    if size_rounds < 1:
        raise pytest.UsageError(f"--size-rounds must be positive, got {size_rounds}")
    loader_rounds = _given_or(option("loader_rounds"), 1 if quick else DEFAULT_LOADER_ROUNDS)
    if loader_rounds < 1:
        raise pytest.UsageError(f"--loader-rounds must be positive, got {loader_rounds}")
    replica_visits = _given_or(option("replica_visits"), 1 if quick else DEFAULT_REPLICA_VISITS)
    if replica_visits < 1:
        raise pytest.UsageError(f"--replica-visits must be positive, got {replica_visits}")
    target = option("target_accuracy")
    if not 0 < target <= 1:
        raise pytest.UsageError(f"--target-accuracy must be in (0, 1], got {target}")
    return Settings(
        impls=impls,
        devices=tuple(dict.fromkeys(option("device"))) or ("cpu",),
        threads=threads,
        quick=quick,
        epochs=epochs,
        sweep_rounds=sweep_rounds,
        limit_rounds=QUICK_LIMIT_ROUNDS if quick else DEFAULT_LIMIT_ROUNDS,
        target_accuracy=target,
        batch_sizes=_int_list(option("batch_sizes")),
        sweep_threads=_int_list(option("sweep_threads")),
        sweeps=not option("no_sweeps"),
        sweep_slow=option("sweep_slow"),
        # Workers and commands run from the repository root: a relative path is made
        # absolute here, against the directory the suite was started from.
        data_dir=str(Path(option("data_dir")).expanduser().resolve())
        if option("data_dir")
        else None,
        worker_timeout=option("worker_timeout"),
        epoch_timeout_factor=option("epoch_timeout_factor"),
        epoch_timeout_min=option("epoch_timeout_min"),
        startup=not option("no_startup"),
        startup_rounds=startup_rounds,
        cold_rounds=cold_rounds,
        schedule=option("schedule"),
        seeds=tuple(range(option("seed"), option("seed") + seed_count)),
        inject_spells=tuple(_spell(text) for text in option("inject_spell")),
        loader_workers=_int_list(option("loader_workers"), minimum=0),
        loader_rounds=loader_rounds,
        sizes=_int_list(option("sizes")),
        size_rounds=size_rounds,
        size_floor_rounds=QUICK_LIMIT_ROUNDS if quick else SIZE_FLOOR_ROUNDS,
        replicas=tuple(sorted({1, *_int_list(option("replicas"))})),
        replica_visits=replica_visits,
    )
