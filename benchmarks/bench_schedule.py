"""The main run's schedule: every implementation's timed epochs, spread over the run.

A shared VM has spells of 10-20 s in which multi-threaded code runs 2-3x slower.
With each implementation's rounds back to back (``--schedule blocks``), a spell
falls on one implementation and moves every ratio in its row. The default
``round-robin`` schedule builds and warms up every implementation first, then
runs cycles of one timed epoch of each, the order rotated by one each cycle, so
a spell hits every implementation alike and each one's median stays put.

A :class:`Canary`, a small fixed multi-threaded product, is timed before each
timed epoch and once after the last: a round ran during a spell when the canary
just before or just after it took over :data:`SPELL_THRESHOLD` times the run's
quiet canary (:func:`quiet_canary`). :class:`SpellInjector` makes such spells on purpose
(``--inject-spell``) to show that the schedule holds.

Every timed epoch is timed as pytest-benchmark times a round (``perf_counter``
around the ``train`` request); each case's test then records its rounds into
its own benchmark with :func:`record_rounds`.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import bench_workers
import numpy as np
from bench_cases import Case
from bench_options import Settings

from impls.figures import PREDICTION_COUNT
from impls.results import EpochRecord
from impls.run_info import Canary as CanaryRecord
from impls.run_info import InjectedSpell

SPELL_THRESHOLD = 1.5  # a canary this many times its median marks a spell
CANARY_SIZE = 384  # the product's side: about a millisecond on two cores, quiet
CANARY_REPEATS = 3  # the best of these is the canary's time: one preemption is no spell


class Canary:
    """A fixed float32 product with the run's thread count, timed as the best of a few."""

    def __init__(self, threads: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.threads = threads
        self._a = rng.random((CANARY_SIZE, CANARY_SIZE), dtype=np.float32)
        self._b = rng.random((CANARY_SIZE, CANARY_SIZE), dtype=np.float32)
        self._out = np.empty_like(self._a)
        self.seconds: list[float] = []

    @property
    def what(self) -> str:
        return (
            f"np.matmul of two {CANARY_SIZE} x {CANARY_SIZE} float32 matrices with "
            f"{self.threads} BLAS thread(s), the best of {CANARY_REPEATS}, in the pytest process"
        )

    def __call__(self) -> int:
        """Time the canary; return its index in :attr:`seconds`."""
        from threadpoolctl import threadpool_limits

        best = float("inf")
        with threadpool_limits(limits=self.threads, user_api="blas"):
            for _ in range(CANARY_REPEATS):
                start = time.perf_counter()
                np.matmul(self._a, self._b, out=self._out)
                best = min(best, time.perf_counter() - start)
        self.seconds.append(best)
        return len(self.seconds) - 1

    def record(self) -> CanaryRecord:
        return CanaryRecord(
            what=self.what, threads=self.threads, threshold=SPELL_THRESHOLD, seconds=self.seconds
        )


def quiet_canary(canary_seconds: Sequence[float]) -> float:
    """The canary's time on a quiet host: its lower quartile, which holds while spells
    cover less than three quarters of the run (a median would not, past a half)."""
    if len(canary_seconds) == 1:
        return canary_seconds[0]
    return statistics.quantiles(canary_seconds, n=4, method="inclusive")[0]


def spell_marks(
    canary_seconds: Sequence[float], before: Sequence[int], threshold: float
) -> list[bool]:
    """Whether each round ran in a spell, given the index of the canary timed just before it
    (the one just after it is the next canary timed, whoever's round came next)."""
    if not before:
        return []
    slow = threshold * quiet_canary(canary_seconds)
    return [max(canary_seconds[i], canary_seconds[i + 1]) > slow for i in before]


@dataclass
class CaseRun:
    """One implementation's part of the main run: its worker's epochs, rounds and canaries."""

    case: Case
    epochs: bench_workers.EpochRequests | None = None
    build: dict = field(default_factory=dict)  # the first seed's build
    histories: list[tuple[int, list[EpochRecord]]] = field(default_factory=list)  # per seed
    predictions: list[int] = field(default_factory=list)  # the first seed's model
    seconds: list[float] = field(default_factory=list)
    canary_before: list[int] = field(default_factory=list)  # per round, the canary's index
    error: Exception | None = None  # raised again by the case's own test
    spell_rounds: list[bool] = field(default_factory=list)


class MainRun:
    """Builds, warms up and times every case of the main run in one schedule.

    Nothing runs until the first case's test asks for its :meth:`outcome`; a case
    that fails (a missing framework, a worker that dies or hangs) keeps its error
    for its own test and is left out of the later cycles, the others go on.
    """

    def __init__(
        self, settings: Settings, workers: bench_workers.WorkerPool, cases: Sequence[Case]
    ) -> None:
        self.settings, self.workers = settings, workers
        self.canary = Canary(settings.threads)
        self.runs = {case: CaseRun(case) for case in cases}
        self._done = False

    def outcome(self, case: Case) -> CaseRun:
        """``case``'s part of the run, running the whole schedule the first time."""
        if not self._done:
            self._done = True
            self._run()
        return self.runs[case]

    def _run(self) -> None:
        for seed in self.settings.seeds:
            for run in self.runs.values():
                self._guard(run, partial(self._warm_up, seed=seed))
            self._time_rounds([run for run in self.runs.values() if run.error is None])
            self.canary()  # the one after the seed's last round
            for run in self.runs.values():
                self._guard(run, partial(self._keep_seed, seed=seed))
        for run in self.runs.values():
            if run.error is None:
                run.spell_rounds = spell_marks(
                    self.canary.seconds, run.canary_before, SPELL_THRESHOLD
                )

    def _time_rounds(self, live: list[CaseRun]) -> None:
        """One seed's timed epochs of every live case, in the settings' schedule."""
        rounds = self.settings.epochs - 1
        if self.settings.schedule == "blocks":
            for run in live:
                for _ in range(rounds):
                    self._guard(run, self._time_epoch)
        else:
            for cycle in range(rounds):
                shift = cycle % len(live) if live else 0
                for run in live[shift:] + live[:shift]:
                    self._guard(run, self._time_epoch)

    def _guard(self, run: CaseRun, step: Callable[[CaseRun], None]) -> None:
        """Run ``step`` unless the case already failed; keep its error, free its worker."""
        if run.error is not None:
            return
        try:
            step(run)
        except Exception as error:  # reported by the case's own test
            run.error = error
            self.workers.discard(run.case)

    def _warm_up(self, run: CaseRun, seed: int) -> None:
        """Build the case's trainer from ``seed`` and train its untimed first epoch."""
        settings = self.settings
        build = self.workers.build(run.case, keep_others=True, epochs=settings.epochs, seed=seed)
        run.build = run.build or build
        run.epochs = bench_workers.EpochRequests(
            self.workers.get(run.case, keep_others=True),
            evaluate_each_epoch=True,
            timeout_factor=settings.epoch_timeout_factor,
            timeout_min=settings.epoch_timeout_min,
        )
        run.epochs.warm_up(1)

    def _keep_seed(self, run: CaseRun, seed: int) -> None:
        """Fetch the seed's history (and, for the first seed, the model's predictions)."""
        run.histories.append((seed, run.epochs.finish()))
        if not run.predictions:
            reply = run.epochs.request("predict", count=PREDICTION_COUNT)
            run.predictions = reply["predictions"]

    def _time_epoch(self, run: CaseRun) -> None:
        run.epochs.setup()
        before = self.canary()
        start = time.perf_counter()
        run.epochs.train()
        run.seconds.append(time.perf_counter() - start)
        run.canary_before.append(before)


def record_rounds(benchmark, seconds: Sequence[float]) -> None:
    """Give pytest-benchmark's fixture rounds timed outside it, as ``pedantic`` would.

    pytest-benchmark times one test's rounds back to back; the schedule needs
    every implementation's rounds interleaved, so it times them itself (the same
    clock) and stores them here, with the fixture's own statistics and storage.
    """
    if not hasattr(benchmark, "_make_stats") or getattr(benchmark, "_mode", None):
        raise RuntimeError(
            "this pytest-benchmark has no BenchmarkFixture._make_stats, or the fixture was "
            "used already: the schedule cannot record its rounds (pip install 'fmbench[bench]')"
        )
    if not seconds:
        raise ValueError("no timed rounds to record")
    benchmark._mode = "fmbench schedule"  # what pedantic sets: the fixture counts as used
    stats = benchmark._make_stats(1)
    for duration in seconds:
        stats.update(duration)


# ------------------------------------------------------------ injected spells

_BURN = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end: pass\n"
)


class SpellInjector:
    """Starts CPU-burning processes at chosen seconds after ``started`` (``--inject-spell``)."""

    def __init__(self, spells: Sequence[tuple[float, float]], processes: int) -> None:
        self.spells, self.processes = list(spells), processes
        self._timers: list[threading.Timer] = []
        self._burners: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._closed = False

    def start(self, started: float) -> None:
        """Arm a timer per spell, counting from ``started`` (a ``time.monotonic`` reading)."""
        for at, seconds in self.spells:
            delay = max(0.0, started + at - time.monotonic())
            timer = threading.Timer(delay, self._burn, args=(seconds,))
            timer.daemon = True
            timer.start()
            self._timers.append(timer)

    def _burn(self, seconds: float) -> None:
        with self._lock:
            if self._closed:
                return
            self._burners += [
                subprocess.Popen([sys.executable, "-c", _BURN, str(seconds)])
                for _ in range(self.processes)
            ]

    def records(self) -> list[InjectedSpell]:
        return [
            InjectedSpell(start_seconds=at, seconds=seconds, processes=self.processes)
            for at, seconds in self.spells
        ]

    def close(self) -> None:
        """Cancel the spells not started; stop every burner still running."""
        with self._lock:
            self._closed = True
        for timer in self._timers:
            timer.cancel()
        for burner in self._burners:
            if burner.poll() is None:
                burner.kill()
            burner.wait()
