"""The main run's schedule: every implementation's timed epochs, spread over the run.

A shared VM has spells of 10-20 s in which multi-threaded code runs 2-3x slower.
With each implementation's rounds back to back (``--schedule blocks``), a spell
falls on one implementation and moves every ratio in its row. The default
``round-robin`` schedule builds and warms up every implementation first, then
runs cycles of one *visit* to each: an untimed epoch that warms its threads and
caches again, then :data:`impls.run_info.VISIT_TIMED` timed epochs. Each cycle runs in a
shuffled order unlike the cycle before (so no implementation always follows the
same one), so a spell hits every implementation alike and each one's median
stays put. Every implementation trains the same epochs in either schedule.

Each visit opens with a short pause (:data:`VISIT_PAUSE_SECONDS`) and a :class:`Canary`, a
small fixed product on every thread at once; its epochs then run back to back, as
``fmbench train`` runs them (a pause before each timed epoch slowed the shortest
epochs by half: PERFORMANCE.md). A round ran during a spell when the canary of its
visit or of the visit after it (or the one after each seed's last visit) took over
:data:`SPELL_THRESHOLD` times the run's quiet canary (:func:`quiet_canary`).
:class:`SpellInjector` makes such spells on purpose (``--inject-spell``, counted from
the first timed round) to show that the schedule holds. ``--schedule blocks`` times
every epoch after the warm-up, one visit of them all per implementation.

Every timed epoch's round is the worker's own ``perf_counter`` around ``train_epoch``;
each case's test then records its rounds into its own benchmark with
:func:`record_rounds`.
"""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import bench_workers
import numpy as np
from bench_cases import Case
from bench_options import Settings

from impls.figures import PREDICTION_COUNT
from impls.results import EpochRecord
from impls.run_info import VISIT_PAUSE_SECONDS, InjectedSpell, quiet_canary, visits
from impls.run_info import Canary as CanaryRecord

SPELL_THRESHOLD = 1.5  # a canary this many times the quiet canary marks a spell
CANARY_SIZE = 256  # each thread's products: 0.25 ms each on this 2-core VM, quiet
# Products per thread: about 4 ms in all. A canary shorter than the kernel's scheduling
# period does not see CPU-bound competitors (a thread that wakes runs first): one product
# took 1.4x as long beside two burning processes, sixteen 2.2x (measured).
CANARY_PRODUCTS = 16


class Canary:
    """Fixed products on each of ``threads`` threads at once, timed together.

    Python threads, each calling a one-thread BLAS, so nothing is left spinning after it
    (a multi-threaded BLAS call would keep its pool busy into the round that follows).
    """

    def __init__(self, threads: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.threads = threads
        shape = (CANARY_SIZE, CANARY_SIZE)
        self._pairs = [
            (rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32))
            for _ in range(threads)
        ]
        self._outs = [np.empty(shape, dtype=np.float32) for _ in range(threads)]
        self._pool = ThreadPoolExecutor(threads)
        self.seconds: list[float] = []

    @property
    def what(self) -> str:
        return (
            f"{CANARY_PRODUCTS} products of two {CANARY_SIZE} x {CANARY_SIZE} float32 "
            f"matrices on each of {self.threads} thread(s) at once (a one-thread BLAS each), "
            "in the pytest process"
        )

    def _products(self, index: int) -> None:
        a, b = self._pairs[index]
        for _ in range(CANARY_PRODUCTS):
            np.matmul(a, b, out=self._outs[index])

    def __call__(self) -> int:
        """Time the canary; return its index in :attr:`seconds`."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            start = time.perf_counter()
            list(self._pool.map(self._products, range(self.threads)))
            self.seconds.append(time.perf_counter() - start)
        return len(self.seconds) - 1

    def record(self) -> CanaryRecord:
        return CanaryRecord(
            what=self.what, threads=self.threads, threshold=SPELL_THRESHOLD, seconds=self.seconds
        )

    def close(self) -> None:
        self._pool.shutdown()


def spell_marks(
    canary_seconds: Sequence[float], before: Sequence[int], threshold: float
) -> list[bool]:
    """Whether each round ran in a spell, given the index of its visit's canary (the one
    after it is the next canary timed, whoever's visit came next)."""
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
    canary_before: list[int] = field(default_factory=list)  # per round, its visit's canary
    error: Exception | None = None  # raised again by the case's own test
    spell_rounds: list[bool] = field(default_factory=list)
    communication_apart: dict[str, float | None] | None = None  # the replicas sweep's
    memory: dict | None = None  # peak memory taken before any untimed measurement after it


class MainRun:
    """Builds, warms up and times every case of the main run in one schedule (or of one
    implementation's replicas sweep: :class:`ReplicaSweep`).

    Nothing runs until the first case's test asks for its :meth:`outcome`; a case
    that fails (a missing framework, a worker that dies or hangs) keeps its error
    for its own test and is left out of the later cycles, the others go on. A
    case's worker is stopped once its test has recorded (:meth:`release`), unless
    a later test (a sweep point) uses the same worker: ``reused`` holds those keys.
    """

    def __init__(
        self,
        settings: Settings,
        workers: bench_workers.WorkerPool,
        cases: Sequence[Case],
        *,
        spells: SpellInjector | None = None,
        reused: frozenset[tuple] = frozenset(),
    ) -> None:
        self.settings, self.workers, self.spells, self.reused = settings, workers, spells, reused
        self.canary = Canary(settings.threads)
        self.runs = {case: CaseRun(case) for case in cases}
        self._order = random.Random(0)  # each cycle's order: shuffled, the same every run
        self._started = False
        self._done = False

    def outcome(self, case: Case) -> CaseRun:
        """``case``'s part of the run, running the whole schedule the first time."""
        if not self._done:
            self._done = True
            try:
                self._run()
            except BaseException as error:  # a timeout or an interrupt: no case is complete
                for run in self.runs.values():
                    if run.error is None:
                        run.error = RuntimeError(
                            f"the main run stopped before this case was measured "
                            f"({type(error).__name__}: {error})"
                        )
                raise
            finally:
                self.canary.close()
        return self.runs[case]

    def release(self, case: Case) -> None:
        """Stop ``case``'s worker once its test has recorded, unless a later test uses it."""
        if bench_workers.WorkerPool.key_of(case) not in self.reused:
            self.workers.discard(case)

    def _run(self) -> None:
        for seed in self.settings.seeds:
            for run in self.runs.values():
                self._guard(run, partial(self._warm_up, seed=seed))
            live = [run for run in self.runs.values() if run.error is None]
            if not live:
                return
            self._time_rounds(live)
            self._paused_canary()  # the one after the seed's last visit
            for run in live:
                self._guard(run, partial(self._keep_seed, seed=seed))
        for run in self.runs.values():
            if run.error is None:
                run.spell_rounds = spell_marks(
                    self.canary.seconds, run.canary_before, SPELL_THRESHOLD
                )

    def _time_rounds(self, live: list[CaseRun]) -> None:
        """One seed's timed epochs of every live case, in the settings' schedule."""
        if not self._started and self.spells is not None:
            self.spells.start(time.monotonic())  # spells count from the first timed round
        self._started = True
        epochs = self.settings.epochs - 1  # after the warm-up
        if self.settings.schedule == "blocks":
            for run in live:
                for untimed, timed in visits(epochs, "blocks"):
                    self._guard(run, partial(self._visit, untimed=untimed, timed=timed))
            return
        previous: list[CaseRun] = []
        for untimed, timed in visits(epochs):
            order = self._order.sample(live, len(live))
            while len(live) > 1 and order == previous:  # never the same order twice running
                order = self._order.sample(live, len(live))
            for run in order:
                self._guard(run, partial(self._visit, untimed=untimed, timed=timed))
            previous = order

    def after(self, case: Case, step: Callable[[CaseRun], None]) -> None:
        """Run ``step`` on ``case``'s part once the schedule has run, untimed; an error is
        the case's own, as in the schedule."""
        self._guard(self.runs[case], step)

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

    def _paused_canary(self) -> int:
        """Time the canary after a pause; return its index."""
        time.sleep(VISIT_PAUSE_SECONDS)
        return self.canary()

    def _visit(self, run: CaseRun, untimed: int, timed: int) -> None:
        """One visit: a pause and the canary, then ``untimed`` epochs that warm the case's
        threads and caches again, then ``timed`` epochs back to back."""
        canary = self._paused_canary()
        for _ in range(untimed):
            run.epochs.setup()
            run.epochs.train()
        for _ in range(timed):
            run.epochs.setup()
            run.seconds.append(run.epochs.train())
            run.canary_before.append(canary)


class ReplicaSweep:
    """The replicas sweep: each implementation's points (R replicas) in a schedule of their own.

    Run the main run's way (:class:`MainRun`) on the sweep's epochs and the first seed: every
    point of one implementation and device built and warmed up, its workers alive together,
    then visits alternating between the points in the run's ``--schedule``, so a spell of the
    host hits R=1 and R=2 alike and their ratio holds. One implementation at a time: no other
    implementation's replicas stand idle beside its epochs.
    """

    def __init__(
        self,
        settings: Settings,
        workers: bench_workers.WorkerPool,
        cases: Sequence[Case],
        *,
        reused: frozenset[tuple] = frozenset(),
    ) -> None:
        self.settings = dataclasses.replace(
            settings, epochs=settings.replica_epochs, seeds=settings.seeds[:1], inject_spells=()
        )
        self.workers, self.cases, self.reused = workers, list(cases), reused
        self._schedules: dict[tuple[str, str], MainRun] = {}

    def outcome(self, case: Case) -> CaseRun:
        """``case``'s part of its implementation's sweep, running the sweep the first time:
        the schedule, then each point's communication measured apart (untimed)."""
        key = (case.impl, case.device)
        if key not in self._schedules:
            points = [other for other in self.cases if (other.impl, other.device) == key]
            self.workers.keep_only(points)
            schedule = MainRun(self.settings, self.workers, points, reused=self.reused)
            self._schedules[key] = schedule
            schedule.outcome(case)
            for point in points:
                if point.replicas > 1:
                    schedule.after(point, _measure_communication)
        return self._schedules[key].outcome(case)

    def release(self, case: Case) -> None:
        self._schedules[(case.impl, case.device)].release(case)


def _measure_communication(run: CaseRun) -> None:
    """Ask the point's trainer what combining its gradients costs, apart from its epochs
    (its peak memory taken first: the measurement's own is not the training's)."""
    run.memory = run.epochs.memory()
    run.communication_apart = run.epochs.request("measure_communication")["communication"]


def record_rounds(benchmark, seconds: Sequence[float]) -> None:
    """Give pytest-benchmark's fixture rounds timed outside it, as ``pedantic`` would.

    pytest-benchmark times one test's rounds back to back, from this process; an
    epoch's round is the worker's own clock around ``train_epoch`` (the request's
    round trip is not the framework's), interleaved with the other implementations'
    by the schedule, so the rounds are stored here, with the fixture's own statistics
    and storage.
    """
    if not hasattr(benchmark, "_make_stats") or getattr(benchmark, "_mode", None):
        raise RuntimeError(
            "this pytest-benchmark has no BenchmarkFixture._make_stats, or the fixture was "
            "used already: the schedule cannot record its rounds (pip install 'fmbench[bench]')"
        )
    if not seconds:
        raise ValueError("no timed rounds to record")
    if benchmark.disabled:  # --benchmark-disable: nothing is recorded
        return
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
        self._burners: dict[int, list[subprocess.Popen]] = {}  # spell index -> its burners
        self._lock = threading.Lock()
        self._closed = False

    def start(self, started: float) -> None:
        """Arm a timer per spell, counting from ``started`` (a ``time.monotonic`` reading)."""
        for index, (at, seconds) in enumerate(self.spells):
            delay = max(0.0, started + at - time.monotonic())
            timer = threading.Timer(delay, self._burn, args=(index, seconds))
            timer.daemon = True
            timer.start()
            self._timers.append(timer)

    def _burn(self, index: int, seconds: float) -> None:
        with self._lock:
            if self._closed:
                return
            self._burners[index] = [
                subprocess.Popen([sys.executable, "-c", _BURN, str(seconds)])
                for _ in range(self.processes)
            ]

    @property
    def burners(self) -> list[subprocess.Popen]:
        with self._lock:
            return [burner for started in self._burners.values() for burner in started]

    def records(self) -> list[InjectedSpell]:
        with self._lock:
            pids = {index: [b.pid for b in started] for index, started in self._burners.items()}
        return [
            InjectedSpell(
                start_seconds=at, seconds=seconds, processes=self.processes, pids=pids.get(i, [])
            )
            for i, (at, seconds) in enumerate(self.spells)
        ]

    def close(self) -> None:
        """Cancel the spells not started; stop every burner still running."""
        with self._lock:
            self._closed = True
        for timer in self._timers:
            timer.cancel()
        for burner in self.burners:
            if burner.poll() is None:
                burner.kill()
            burner.wait()
