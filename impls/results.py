"""The result format: what a run records, as dataclasses, and how it is stored.

One definition serves every writer and reader:

* :class:`EpochRecord` is one epoch of training, written by the shared loop
  (:mod:`impls.training`) for ``fmbench train`` and for the benchmark worker
  alike, and sent over the worker's pipe with :meth:`EpochRecord.as_dict`;
* each benchmark case is stored as pytest-benchmark's ``extra_info``: a
  :class:`TrainingResult` (the main epoch run and the sweep points), a
  :class:`ReadLimit`, a :class:`ComputeFloor` or a :class:`StartupResult`,
  written with :func:`to_extra_info` and read back, validated, with
  :func:`from_extra_info`;
* pytest-benchmark's own statistics of a case are a :class:`Timing`, and a
  :class:`Measurement` pairs it with the case: every number derived from a
  case (examples/s, GB/s, the compute floor, time to accuracy) is computed
  here and nowhere else.

Only raw facts are stored as fields; every derived number is a property. Readers
accept files written before this module (schema 1): their extra derived keys
are ignored, since the same numbers are recomputed from the raw ones.

The clocks: an :class:`EpochRecord`'s seconds come from ``time.perf_counter``
around ``Trainer.train_epoch`` / ``evaluate`` in the process that trains; so do
:class:`Timing`'s rounds from schema 4 on, the benchmark storing the worker's
clock in pytest-benchmark's record. Before, :class:`Timing` was pytest-benchmark's
clock in the pytest process, which added the request's round trip (1 to 30 ms,
mostly a memory sampler reading /proc during PyTorch's epochs). Before schema 5 the
main run timed its canary (after a 50 ms pause, in most such runs) before every timed
round, which slowed the shortest epochs; from schema 5 a visit's timed rounds run back
to back.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from impls.config import TrainConfig
from impls.idx import IMAGE_SIZE
from impls.stored import (
    ResultError,
    Stored,
    check_fraction,
    check_non_negative,
    check_positive,
    is_number,
)

SCHEMA = 5


# ------------------------------------------------------------------- epochs


@dataclass(frozen=True)
class EpochRecord(Stored):
    """One epoch of training (counted from 1); test figures are None when not evaluated."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float | None
    test_accuracy: float | None
    train_seconds: float  # Trainer.train_epoch alone, in the process that trains
    eval_seconds: float | None
    # Within train_seconds, the time spent combining the replicas' gradients, where the
    # data-parallel engine lets the trainer time it apart (EpochStats); None: one replica,
    # not measurable (XLA's all-reduce inside a compiled epoch), or an older file.
    communication_seconds: float | None = None

    def validate(self, where: str) -> None:
        check_fraction(self.train_accuracy, f"{where}.train_accuracy")
        check_fraction(self.test_accuracy, f"{where}.test_accuracy")
        for name in ("train_seconds", "communication_seconds"):
            check_non_negative(getattr(self, name), f"{where}.{name}")


def cumulative_train_seconds(history: Sequence[EpochRecord]) -> list[float]:
    """Training seconds up to and including each epoch (evaluation excluded)."""
    return list(itertools.accumulate(record.train_seconds for record in history))


def time_to_accuracy(history: Sequence[EpochRecord], target: float) -> float | None:
    """Cumulative training seconds until test accuracy first reaches ``target``, or None."""
    for record, seconds in zip(history, cumulative_train_seconds(history), strict=True):
        if record.test_accuracy is not None and record.test_accuracy >= target:
            return seconds
    return None


def final_test_accuracy(history: Sequence[EpochRecord]) -> float | None:
    """The test accuracy of the last evaluated epoch, or None."""
    evaluated = [r.test_accuracy for r in history if r.test_accuracy is not None]
    return evaluated[-1] if evaluated else None


def best_test_accuracy(history: Sequence[EpochRecord]) -> float | None:
    """The highest test accuracy of any evaluated epoch, or None."""
    evaluated = [r.test_accuracy for r in history if r.test_accuracy is not None]
    return max(evaluated) if evaluated else None


def communication_medians(records: Sequence[EpochRecord]) -> tuple[float, float] | None:
    """The median communication seconds of ``records`` and the median of each epoch's share
    of its training seconds (one clock: the trainer's), or None unless every record has it."""
    if not records or any(record.communication_seconds is None for record in records):
        return None
    seconds = [record.communication_seconds for record in records]
    shares = [s / r.train_seconds for s, r in zip(seconds, records, strict=True) if r.train_seconds]
    return statistics.median(seconds), statistics.median(shares)  # type: ignore[type-var]


def epochs_to_accuracy(history: Sequence[EpochRecord], target: float) -> int | None:
    """The epoch (counted from 1) after which test accuracy first reaches ``target``, or None."""
    for record in history:
        if record.test_accuracy is not None and record.test_accuracy >= target:
            return record.epoch
    return None


# -------------------------------------------------------------------- cases


@dataclass(frozen=True)
class SeedRun(Stored):
    """A case trained again from another seed's initial weights and minibatch order."""

    seed: int
    history: list[EpochRecord]

    def validate(self, where: str) -> None:
        if final_test_accuracy(self.history) is None:
            raise ResultError(f"{where}.history has no evaluated epoch")


@dataclass(frozen=True)
class TrainingResult(Stored):
    """An implementation trained in a worker: the main epoch run or one sweep point.

    ``warmup_epochs`` untimed epochs come first in ``history``, then one per timed round.
    """

    # "loader": the baseline's epoch with another number of DataLoader workers;
    # "replicas": a point of the data-parallel sweep (R=1 timed beside the others).
    KINDS: ClassVar[tuple[str, ...]] = ("epoch", "batch", "threads", "size", "loader", "replicas")

    kind: str
    implementation: str
    device: str
    threads: int
    batch_size: int
    num_train: int
    history: list[EpochRecord]
    config: dict = dataclasses.field(default_factory=dict)
    runtime: dict = dataclasses.field(default_factory=dict)
    build_seconds: float | None = None
    import_seconds: float | None = None
    # From starting the worker process to its first reply (Python, the worker's own
    # imports, the dataset load), and of that the dataset load. The worker is a fresh
    # process: these, the import and the build are what a user waits for before epoch 1.
    process_start_seconds: float | None = None
    data_load_seconds: float | None = None
    warmup_epochs: int = 1
    target_accuracy: float | None = None
    predictions: list[int] | None = None
    peak_rss_bytes: int | None = None
    peak_rss_children_bytes: int | None = None
    # The peak of this process's and its children's proportional set sizes summed, each
    # page counted once; recorded for implementations that start processes of their own.
    peak_tree_pss_bytes: int | None = None
    # One mark per timed round, in the order run: True when the canary of its visit or of
    # the next (``RunSection.canary``) was slow, i.e. the round ran during a spell of the host.
    spell_rounds: list[bool] | None = None
    # The main run's other seeds (--seeds), in the order run; ``history`` is the first
    # seed's (``config["seed"]``), and the timed rounds are every seed's, pooled.
    more_seeds: list[SeedRun] | None = None
    size: int = IMAGE_SIZE  # the images' side (the input-size sweep); files before it: 28
    loader_workers: int | None = None  # DataLoader workers asked for ("loader" kind)
    # Data-parallel replicas sharing ``threads`` (TrainConfig.replicas); files before it: 1.
    replicas: int = 1
    # What combining the replicas' gradients costs, in seconds by name, measured apart from
    # the timed epochs by the trainer's own ``measure_communication`` (None: it has none).
    communication_apart: dict[str, float | None] | None = None

    def validate(self, where: str) -> None:
        check_positive(self.size, f"{where}.size")
        if not 1 <= self.replicas <= self.threads:
            raise ResultError(
                f"{where}.replicas is {self.replicas}, not between 1 and the {self.threads} threads"
            )
        if not self.history:
            raise ResultError(f"{where}.history is empty")
        if final_test_accuracy(self.history) is None:
            raise ResultError(f"{where}.history has no evaluated epoch")
        check_positive(self.num_train, f"{where}.num_train")
        check_fraction(self.target_accuracy, f"{where}.target_accuracy")
        if self.predictions is not None and any(not 0 <= p < 10 for p in self.predictions):
            raise ResultError(f"{where}.predictions holds a label outside 0..9")

    @property
    def per_round(self) -> int:
        """What one timed round processes: the training examples."""
        return self.num_train

    @property
    def final_test_accuracy(self) -> float:
        return final_test_accuracy(self.history)  # type: ignore[return-value]

    @property
    def threads_per_replica(self) -> int:
        """Each replica's share of the threads, by :class:`~impls.config.TrainConfig`'s rule."""
        return TrainConfig(threads=self.threads, replicas=self.replicas).threads_per_replica

    @property
    def seed_runs(self) -> list[SeedRun]:
        """Every seed's run, the first seed's first (its seed None if the config lacks it)."""
        first = SeedRun(self.config.get("seed"), self.history)  # type: ignore[arg-type]
        return [first, *(self.more_seeds or ())]

    @property
    def learning_rate(self) -> float | None:
        """The learning rate the case trained with (its config's), if recorded."""
        lr = self.config.get("lr")
        return float(lr) if is_number(lr) else None

    @property
    def first_epoch_seconds(self) -> float:
        """Training seconds of every warm-up epoch, summed (the first epoch when there are none).

        Not the first epoch alone, despite the name; start-up costs (compilation) show here."""
        return sum(r.train_seconds for r in self.history[: max(self.warmup_epochs, 1)])

    @property
    def time_to_accuracy_seconds(self) -> float | None:
        """Training seconds until the target accuracy (first seed; start-up not included)."""
        if self.target_accuracy is None:
            return None
        return time_to_accuracy(self.history, self.target_accuracy)

    def ready_seconds(self, build_seconds: float | None = None) -> float | None:
        """From starting a fresh process to a built trainer: start-up, import, build
        (tracing, compiling); ``build_seconds`` replaces the run's own build (one timed
        with an empty or a filled compilation cache). None when a part was not recorded
        (files before schema 3)."""
        build = self.build_seconds if build_seconds is None else build_seconds
        parts = (self.process_start_seconds, self.import_seconds, build)
        return None if None in parts else sum(parts)  # type: ignore[arg-type]

    def time_to_result_seconds(
        self, history: Sequence[EpochRecord] | None = None, build_seconds: float | None = None
    ) -> float | None:
        """From a fresh process to the target accuracy: :meth:`ready_seconds` plus every
        training epoch until the target (evaluation excluded), for ``history`` (a seed's;
        default the first seed's). None when not reached or not recorded."""
        if self.target_accuracy is None:
            return None
        training = time_to_accuracy(
            self.history if history is None else history, self.target_accuracy
        )
        ready = self.ready_seconds(build_seconds)
        return None if training is None or ready is None else ready + training


@dataclass(frozen=True, kw_only=True)
class _Floor(Stored):
    """What both floors record: the threads they ran with and what exactly was timed."""

    threads: int
    what: str = ""
    device: str = "cpu"
    size: int = IMAGE_SIZE  # the images' side the floor was measured at; files before it: 28


@dataclass(frozen=True, kw_only=True)
class ReadLimit(_Floor):
    """The read floor: one pass over ``bytes`` of the training set with ``threads`` threads."""

    KINDS: ClassVar[tuple[str, ...]] = ("limit", "size-limit")  # size-: the input-size sweep's

    bytes: int
    kind: str = "limit"
    implementation: str = "limit"

    def validate(self, where: str) -> None:
        check_positive(self.bytes, f"{where}.bytes")

    @property
    def per_round(self) -> int:
        """What one timed round processes: the bytes read."""
        return self.bytes


@dataclass(frozen=True, kw_only=True)
class ComputeFloor(_Floor):
    """One large float32 matrix product, whose rate prices an epoch's ``epoch_flops``."""

    KINDS: ClassVar[tuple[str, ...]] = ("compute", "size-compute")

    flops_per_call: int
    epoch_flops: int
    kind: str = "compute"
    implementation: str = "compute"

    def validate(self, where: str) -> None:
        check_positive(self.flops_per_call, f"{where}.flops_per_call")
        check_positive(self.epoch_flops, f"{where}.epoch_flops")

    @property
    def per_round(self) -> int:
        """What one timed round computes: the product's floating-point operations."""
        return self.flops_per_call


@dataclass(frozen=True)
class StartupResult(Stored):
    """A start-up measurement (``startup`` names it); per-round parts where it has them."""

    KINDS: ClassVar[tuple[str, ...]] = ("startup",)

    startup: str
    implementation: str
    device: str
    what: str
    threads: int | None = None
    kind: str = "startup"
    command: str | None = None
    summary: str | None = None
    sources: list[str] | None = None
    build_seconds: list[float] | None = None
    compile_seconds: list[float | None] | None = None
    first_epoch_seconds: list[float] | None = None
    compilation_cache_warm: list[bool | None] | None = None


@dataclass(frozen=True)
class LoaderResult(Stored):
    """An implementation's own DataLoader iterated for an epoch, no training: its input
    pipeline alone (``load_batches``), with ``loader_workers`` worker processes."""

    KINDS: ClassVar[tuple[str, ...]] = ("loader-only",)

    implementation: str
    device: str
    threads: int
    batch_size: int
    loader_workers: int
    num_train: int
    kind: str = "loader-only"
    runtime: dict = dataclasses.field(default_factory=dict)

    def validate(self, where: str) -> None:
        check_positive(self.num_train, f"{where}.num_train")
        check_non_negative(self.loader_workers, f"{where}.loader_workers")

    @property
    def per_round(self) -> int:
        """What one timed round processes: the training examples."""
        return self.num_train


CaseResult = TrainingResult | ReadLimit | ComputeFloor | StartupResult | LoaderResult
RESULT_TYPES: dict[str, type] = {
    kind: cls
    for cls in (TrainingResult, ReadLimit, ComputeFloor, StartupResult, LoaderResult)
    for kind in cls.KINDS
}
KINDS = tuple(RESULT_TYPES)
TRAINING_KINDS = TrainingResult.KINDS
# pytest-benchmark's group of each kind: the limit shares the epoch group, so
# pytest-benchmark's own table shows every epoch as a multiple of it.
GROUPS = {
    "limit": "epoch",
    "epoch": "epoch",
    "batch": "sweep: batch size",
    "threads": "sweep: threads",
    "compute": "compute floor",
    "startup": "start-up",
    "size": "sweep: input size",
    "size-limit": "sweep: input size",
    "size-compute": "compute floor",
    "loader": "baseline: loader workers",
    "loader-only": "baseline: loader workers",
    "replicas": "sweep: replicas",
}
SIZE_KINDS = ("size", "size-limit", "size-compute")  # the input-size sweep and its floors


def to_extra_info(result: CaseResult) -> dict[str, Any]:
    """``result`` as pytest-benchmark's ``extra_info`` (JSON-ready)."""
    return result.as_dict()


def from_extra_info(info: Any, where: str = "extra_info") -> CaseResult:
    """The case stored in ``info``, every field checked (a :class:`ResultError` names it)."""
    if not isinstance(info, Mapping):
        raise ResultError(f"{where} is {type(info).__name__}, not an object")
    if not info:
        raise ResultError(f"{where} is empty: not written by fmbench's benchmarks/ suite")
    kind = info.get("kind")
    if kind not in RESULT_TYPES:
        raise ResultError(f"{where}.kind is {kind!r}, expected one of {list(RESULT_TYPES)}")
    if kind in TRAINING_KINDS and "warmup_epochs" not in info and "timed_rounds" in info:
        # schema 1 stored the timed rounds; the warm-up epochs are the rest of the history
        history = info.get("history")
        if isinstance(history, list) and is_number(info["timed_rounds"]):
            info = {**info, "warmup_epochs": max(len(history) - int(info["timed_rounds"]), 1)}
    return RESULT_TYPES[kind].from_dict(info, where)


# ------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing(Stored):
    """pytest-benchmark's statistics of a case's timed rounds, in seconds.

    ``data`` is every round's seconds in the order run (pytest-benchmark's
    ``--benchmark-save-data``, always on in ``benchmarks/``; absent before schema 3):
    the sample the statistical comparison of two runs is made on.
    """

    median: float
    q1: float
    q3: float
    iqr: float
    min: float
    max: float
    rounds: int
    data: list[float] | None = None

    def validate(self, where: str) -> None:
        for name in ("q1", "q3", "iqr", "min", "max"):
            check_non_negative(getattr(self, name), f"{where}.{name}")
        check_positive(self.median, f"{where}.median")
        check_positive(self.rounds, f"{where}.rounds")
        if self.data is not None:
            if len(self.data) != self.rounds:
                raise ResultError(f"{where}.data holds {len(self.data)} rounds, not {self.rounds}")
            for i, seconds in enumerate(self.data):
                check_positive(seconds, f"{where}.data[{i}]")


@dataclass(frozen=True)
class Measurement:
    """One benchmark of a run: its case and its timing; every derived number is here."""

    name: str
    fullname: str
    group: str
    timing: Timing
    case: CaseResult

    def __post_init__(self) -> None:
        marks = self.spell_rounds
        if marks is not None and len(marks) != self.timing.rounds:
            raise ResultError(
                f"benchmark {self.fullname!r}: spell_rounds holds {len(marks)} marks "
                f"for {self.timing.rounds} timed rounds"
            )

    @property
    def kind(self) -> str:
        return self.case.kind

    @property
    def implementation(self) -> str:
        return self.case.implementation

    @property
    def median(self) -> float:
        return self.timing.median

    @property
    def spell_rounds(self) -> list[bool] | None:
        """Which timed rounds ran during a spell of the host (None: not recorded)."""
        return getattr(self.case, "spell_rounds", None)

    @property
    def quiet_rounds(self) -> list[float] | None:
        """The seconds of the rounds outside spells (None without per-round data and marks)."""
        marks, data = self.spell_rounds, self.timing.data
        if marks is None or data is None:
            return None
        return [seconds for seconds, spell in zip(data, marks, strict=True) if not spell]

    @property
    def quiet_median(self) -> float | None:
        """The median of :attr:`quiet_rounds` (None when not recorded or every round was hit)."""
        quiet = self.quiet_rounds
        return statistics.median(quiet) if quiet else None

    def key(self) -> tuple:
        """What identifies the same measurement in another run."""
        case = self.case
        return (
            case.kind,
            case.implementation,
            case.device,
            getattr(case, "threads", None),
            getattr(case, "batch_size", None),
            getattr(case, "startup", None),
            getattr(case, "size", IMAGE_SIZE),
            getattr(case, "loader_workers", None),
            getattr(case, "replicas", 1),
        )

    def _rate(self, kind: type | tuple[type, ...], unit: float = 1.0) -> float | None:
        """The case's amount per round (examples, bytes, FLOP) per second, for a ``kind`` case."""
        if not isinstance(self.case, kind):
            return None
        return self.case.per_round / self.median / unit

    @property
    def examples_per_second(self) -> float | None:
        return self._rate((TrainingResult, LoaderResult))

    @property
    def gigabytes_per_second(self) -> float | None:
        return self._rate(ReadLimit, unit=1e9)

    @property
    def flops_per_second(self) -> float | None:
        return self._rate(ComputeFloor)

    @property
    def floor_seconds(self) -> float | None:
        """An epoch's matrix products at this product's rate (the compute floor)."""
        if not isinstance(self.case, ComputeFloor):
            return None
        return self.case.epoch_flops / self.case.flops_per_call * self.median


def median_of(values: Sequence[float | None] | None) -> float | None:
    """The median of the numbers among ``values`` (a start-up round each), or None."""
    numbers = [v for v in values or () if v is not None]
    return statistics.median(numbers) if numbers else None
