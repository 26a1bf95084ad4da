"""The run-level parts of a benchmark file, as dataclasses: what a run says besides its cases.

A pytest-benchmark JSON file written by ``benchmarks/`` holds, beside its cases
(:mod:`impls.results`):

* ``machine_info``, pytest-benchmark's facts about the machine (:class:`MachineInfo`), with
  fmbench's own under ``machine_info["fmbench"]`` (:class:`MachineFacts`, written by
  ``benchmarks/bench_machine.py``);
* ``commit_info``, pytest-benchmark's commit (:class:`CommitInfo`);
* the top-level ``fmbench`` section (:class:`RunSection`, written by ``benchmarks/conftest.py``):
  the run's settings, every test with its outcome (:class:`Outcome`) and the sample images
  the predictions grid is drawn on (:class:`Sample`).

They are read like the cases, with :meth:`from_dict`: every field the report uses is typed
and range-checked, and a bad one is a :class:`~impls.stored.ResultError` naming it. Keys
the report does not use are ignored, and what older files may lack is optional.
"""

from __future__ import annotations

import base64
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from impls.stored import ResultError, Stored, check_fraction, check_non_negative, check_positive

# How a benchmark test ended: pytest's outcomes, "error" (failed outside its call) and
# "not run" (the run stopped before it).
OUTCOMES = ("passed", "failed", "skipped", "error", "not run")
FAILED = ("failed", "error")
SCHEDULES = ("round-robin", "blocks")
# A visit of the round-robin: one untimed epoch, then this many timed. After the other
# implementations' epochs a short epoch runs cold (Numba's: 29 ms against 17 ms back to
# back, measured; not the others' spinning threads: a longer pause did not help): its
# threads asleep, its caches and TLB taken. The untimed epoch warms them again.
VISIT_TIMED = 2
# The pause before each canary: a BLAS's idle threads spin for tens of milliseconds after a
# product (OpenBLAS's do), which would slow the canary. Followed by an untimed epoch, not a
# timed one, where a visit has one: a core left idle this long makes the next short epoch
# slow (PERFORMANCE.md).
VISIT_PAUSE_SECONDS = 0.05


def visits(epochs: int, schedule: str = "round-robin") -> list[tuple[int, int]]:
    """A schedule's visits to each implementation for ``epochs`` epochs after the warm-up,
    as (untimed, timed) epochs. Round-robin: ``VISIT_TIMED + 1`` epochs a visit (the last
    may be shorter), the first untimed when it has more than one. Blocks: one visit of every
    epoch, timed (nothing comes between an implementation's epochs to warm up after). Every
    implementation trains the same epochs whatever the schedule."""
    if schedule == "blocks":
        return [(0, epochs)]
    size = VISIT_TIMED + 1
    lengths = [min(size, epochs - start) for start in range(0, epochs, size)]
    return [(1, length - 1) if length > 1 else (0, 1) for length in lengths]


def timed_epochs(epochs: int, schedule: str) -> int:
    """How many of ``epochs`` (the warm-up included) a schedule times, per seed."""
    return len(timed_epoch_numbers(epochs, schedule))


def timed_epoch_numbers(epochs: int, schedule: str) -> list[int]:
    """Which of ``epochs`` (counted from 1, the first the warm-up) a schedule times, per seed:
    every later one (blocks), the last ones of each visit (round-robin)."""
    numbers, done = [], 1
    for untimed, timed in visits(epochs - 1, schedule):
        numbers += range(done + untimed + 1, done + untimed + timed + 1)
        done += untimed + timed
    return numbers


# ------------------------------------------------------------------ machine


@dataclass(frozen=True)
class BlasLibrary(Stored):
    """One BLAS library NumPy loaded (threadpoolctl's ``threadpool_info``)."""

    internal_api: str | None = None
    version: str | None = None
    architecture: str | None = None
    num_threads: int | None = None

    def validate(self, where: str) -> None:
        check_positive(self.num_threads, f"{where}.num_threads")


@dataclass(frozen=True)
class FrameworkUse(Stored):
    """What one implementation's worker ran on (``bench_machine.framework_table``)."""

    device_name: str | None = None


@dataclass(frozen=True)
class LoadAverage(Stored):
    """The load averages (1, 5, 15 minutes) at the start and the end of the run."""

    start: list[float] | None = None
    end: list[float] | None = None

    def validate(self, where: str) -> None:
        for name in ("start", "end"):
            if any(value < 0 for value in getattr(self, name) or ()):
                raise ResultError(f"{where}.{name} holds a negative load")


@dataclass(frozen=True)
class OtherCpuUse(Stored):
    """How many CPUs other processes kept busy, on average, over ``wall_seconds``."""

    wall_seconds: float
    other_cpus: float
    other_cpu_seconds: float | None = None

    def validate(self, where: str) -> None:
        check_positive(self.wall_seconds, f"{where}.wall_seconds")
        check_non_negative(self.other_cpus, f"{where}.other_cpus")


@dataclass(frozen=True)
class MachineFacts(Stored):
    """``machine_info["fmbench"]``: the machine, its load and the software, as fmbench saw them."""

    cpu_model: str | None = None
    logical_cpus: int | None = None
    physical_cores: int | None = None
    memory_bytes: int | None = None
    os: str | None = None
    python: str | None = None
    threads: int | None = None  # asked of every framework
    versions: dict[str, str | None] | None = None  # distribution -> version (None: absent)
    numpy_blas: list[BlasLibrary] | None = None
    frameworks: dict[str, FrameworkUse] | None = None  # implementation -> what it ran on
    load_average: LoadAverage | None = None
    other_cpu_use: OtherCpuUse | None = None

    def validate(self, where: str) -> None:
        for name in ("logical_cpus", "physical_cores", "memory_bytes", "threads"):
            check_positive(getattr(self, name), f"{where}.{name}")


@dataclass(frozen=True)
class CpuInfo(Stored):
    """pytest-benchmark's ``machine_info["cpu"]`` (py-cpuinfo): the CPU's name, and its family
    and model, which tell apart CPUs that a VM names alike (``AMD EPYC``)."""

    brand_raw: str | None = None
    family: int | None = None
    model: int | None = None


@dataclass(frozen=True)
class MachineInfo(Stored):
    """pytest-benchmark's ``machine_info``: the keys the report uses, and fmbench's own facts."""

    node: str | None = None
    system: str | None = None
    python_version: str | None = None
    cpu: CpuInfo | None = None
    fmbench: MachineFacts | None = None

    @property
    def facts(self) -> MachineFacts:
        """fmbench's facts (all unknown when the file has none)."""
        return self.fmbench or MachineFacts()

    @property
    def cpu_name(self) -> str | None:
        """The CPU model: fmbench's, else py-cpuinfo's."""
        return self.facts.cpu_model or (self.cpu.brand_raw if self.cpu else None)

    @property
    def cpu_family_model(self) -> tuple[int, int] | None:
        """The CPU's family and model numbers, where recorded."""
        if self.cpu is None or self.cpu.family is None or self.cpu.model is None:
            return None
        return self.cpu.family, self.cpu.model


@dataclass(frozen=True)
class CommitInfo(Stored):
    """pytest-benchmark's ``commit_info``: the commit, and whether the tree had changes."""

    id: str | None = None
    dirty: bool | None = None


# ------------------------------------------------------------ the fmbench section


@dataclass(frozen=True)
class RunSettings(Stored):
    """The run's options (``bench_options.Settings``): those the report states."""

    epochs: int | None = None  # of the main run, the first one warm-up
    threads: int | None = None
    batch_size: int | None = None
    sweep_rounds: int | None = None
    target_accuracy: float | None = None
    quick: bool = False
    # How the main run's timed rounds were ordered: "round-robin" (an epoch of each
    # implementation in turn) or "blocks" (each implementation's rounds back to back,
    # the only order before schema 3).
    schedule: str = "blocks"
    seeds: list[int] | None = None  # the main run's seeds, the first one its history's

    def validate(self, where: str) -> None:
        if self.schedule not in SCHEDULES:
            raise ResultError(f"{where}.schedule is {self.schedule!r}, not one of {SCHEDULES}")
        for name in ("epochs", "threads", "batch_size", "sweep_rounds"):
            check_positive(getattr(self, name), f"{where}.{name}")
        check_fraction(self.target_accuracy, f"{where}.target_accuracy")


@dataclass(frozen=True)
class RegistryEntry(Stored):
    """An implementation as the registry described it when the run was made."""

    summary: str = ""
    follows_shared_order: bool = True
    data_parallel: str | None = None  # its engine for replicas (None: one device; older files)


@dataclass(frozen=True)
class Outcome(Stored):
    """One benchmark test of the run (an item of ``fmbench.tests``) and how it ended."""

    nodeid: str
    outcome: str
    kind: str | None = None
    impl: str | None = None
    implementation: str | None = None  # what some files call ``impl``
    device: str | None = None
    reason: str | None = None
    # Wall seconds of its setup, call and teardown (a session fixture's setup counts in the
    # first test that asked for it, its teardown in the last); None: never started, or a
    # file from before it was recorded.
    seconds: float | None = None

    def validate(self, where: str) -> None:
        check_non_negative(self.seconds, f"{where}.seconds")
        if self.outcome not in OUTCOMES:
            raise ResultError(
                f"{where}.outcome is {self.outcome!r}, expected one of {list(OUTCOMES)}"
            )

    @property
    def failed(self) -> bool:
        return self.outcome in FAILED

    @property
    def name(self) -> str:
        """What the test measured: the implementation, else the kind (limit, compute)."""
        return self.impl or self.implementation or self.kind or "?"


@dataclass(frozen=True)
class Sample(Stored):
    """The first test images (uint8, ``shape`` = images × height × width) and their labels."""

    images_uint8_base64: str
    shape: list[int]
    labels: list[int]

    @property
    def pixels(self) -> bytes:
        """The images' bytes, row-major in ``shape``."""
        return base64.b64decode(self.images_uint8_base64, validate=True)

    def validate(self, where: str) -> None:
        if len(self.shape) != 3 or any(size <= 0 for size in self.shape):
            raise ResultError(f"{where}.shape is {self.shape!r}, not [images, height, width]")
        if len(self.labels) != self.shape[0]:
            raise ResultError(
                f"{where}.labels has {len(self.labels)} labels for {self.shape[0]} images"
            )
        if any(not 0 <= label < 10 for label in self.labels):
            raise ResultError(f"{where}.labels holds a label outside 0..9")
        try:
            size = len(self.pixels)
        except ValueError as error:  # binascii.Error, or a character outside ASCII
            raise ResultError(f"{where}.images_uint8_base64 is not base64 ({error})") from None
        if size != math.prod(self.shape):
            raise ResultError(
                f"{where}.images_uint8_base64 holds {size} bytes, not the "
                f"{math.prod(self.shape)} of shape {self.shape}"
            )


def quiet_canary(seconds: Sequence[float]) -> float:
    """The canary's time on a quiet host: the lower quartile of a run's canaries, which
    holds while spells cover less than three quarters of the run (a median would not,
    past a half)."""
    if len(seconds) == 1:
        return seconds[0]
    return statistics.quantiles(seconds, n=4, method="inclusive")[0]


@dataclass(frozen=True)
class Canary(Stored):
    """The small fixed workload timed at the start of every visit of the main run.

    A round ran during a spell of the host (other work slowing this run's threads)
    when the canary of its visit or of the next took over ``threshold`` times the
    run's quiet canary, the lower quartile of ``seconds``; its case's
    ``spell_rounds`` holds the marks. Before schema 5 a canary came before every
    timed round instead.
    """

    what: str
    threads: int
    threshold: float
    seconds: list[float]  # every canary, in the order run

    @property
    def quiet(self) -> float:
        """The run's quiet canary, the yardstick of a slow one (:func:`quiet_canary`)."""
        return quiet_canary(self.seconds)

    @property
    def slow(self) -> int:
        """How many canaries took over ``threshold`` times the quiet canary."""
        return sum(seconds > self.threshold * self.quiet for seconds in self.seconds)

    def validate(self, where: str) -> None:
        check_positive(self.threads, f"{where}.threads")
        if not self.threshold > 1:
            raise ResultError(f"{where}.threshold is {self.threshold}, not above 1")
        if not self.seconds:
            raise ResultError(f"{where}.seconds is empty")
        for i, seconds in enumerate(self.seconds):
            check_positive(seconds, f"{where}.seconds[{i}]")


@dataclass(frozen=True)
class InjectedSpell(Stored):
    """A spell the run made on purpose (``--inject-spell``): CPU-burning processes."""

    start_seconds: float  # after the main run's first timed epoch started
    seconds: float
    processes: int
    pids: list[int] | None = None  # the burners started; empty if the run ended first

    def validate(self, where: str) -> None:
        check_positive(self.seconds, f"{where}.seconds")
        check_positive(self.processes, f"{where}.processes")


@dataclass(frozen=True, kw_only=True)
class RunSection(Stored):
    """The top-level ``fmbench`` section: the run's identity, settings and tests."""

    tests: list[Outcome]
    schema: int = 1  # the result format's version (impls.results.SCHEMA when written)
    run_id: str | None = None
    settings: RunSettings | None = None
    registry: dict[str, RegistryEntry] | None = None
    sweep_excluded: dict[str, str] | None = None  # implementation -> why
    sample: Sample | None = None
    canary: Canary | None = None
    injected_spells: list[InjectedSpell] | None = None
    run_seconds: float | None = None  # the benchmark session's wall time, up to its results

    def validate(self, where: str) -> None:
        check_positive(self.schema, f"{where}.schema")
        check_positive(self.run_seconds, f"{where}.run_seconds")
