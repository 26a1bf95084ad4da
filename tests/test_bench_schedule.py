"""The main run's schedule: rounds interleaved, failures kept apart, spells found and injected."""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_options
import bench_schedule
import bench_workers
from bench_cases import Case

from impls.run_info import timed_epoch_numbers, timed_epochs, visits

EPOCHS = 7  # one warm-up epoch, then two visits of one untimed and two timed epochs
TIMED = 4
VISITS = 2


def settings(schedule: str, seeds=(0,), epochs: int = EPOCHS) -> bench_options.Settings:
    return bench_options.Settings(
        impls=("a", "b", "c"), devices=("cpu",), threads=1, quick=False, epochs=epochs,
        sweep_rounds=1, limit_rounds=1, target_accuracy=0.8, batch_sizes=(256,),
        sweep_threads=(1,), sweeps=False, sweep_slow=False, data_dir=None, worker_timeout=10.0,
        schedule=schedule, seeds=seeds,
    )  # fmt: skip


class FakeWorker:
    """Answers every request; logs its ``train`` requests; may fail on the n-th one."""

    def __init__(self, impl: str, log: list[str], fail_on_train: int | None = None) -> None:
        self.impl, self.log, self.fail_on_train, self.trains = impl, log, fail_on_train, 0

    def request(self, cmd: str, *, timeout: float | None = None, **fields) -> dict:
        if cmd == "train":
            self.trains += 1
            if self.trains == self.fail_on_train:
                raise bench_workers.WorkerError(f"{self.impl} worker died during 'train'")
            self.log.append(self.impl)
            return {"record": RECORD}
        if cmd == "history":
            return {"history": [RECORD] * self.trains}
        if cmd == "predict":
            return {"predictions": [self.trains % 10] * fields["count"]}
        if cmd == "info":
            return {"peak_rss_bytes": 100 + self.trains, "peak_rss_children_bytes": 0,
                    "peak_tree_pss_bytes": None}  # fmt: skip
        if cmd == "measure_communication":
            return {"communication": {"after_epochs_seconds": float(self.trains)}}
        return {}


RECORD = {
    "epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8, "test_loss": 0.5,
    "test_accuracy": 0.8, "train_seconds": 0.1, "eval_seconds": 0.01,
}  # fmt: skip


class FakePool:
    """The :class:`bench_workers.WorkerPool` calls the schedule makes, on fake workers."""

    def __init__(self, workers: dict[str, FakeWorker], missing: tuple[str, ...] = ()) -> None:
        self.workers, self.missing, self.discarded, self.builds = workers, missing, [], []

    def build(self, case: Case, *, keep_others: bool = False, **config) -> dict:
        assert keep_others, "the main run needs every worker alive at once"
        if case.impl in self.missing:
            raise bench_workers.WorkerSkip("framework missing")
        self.builds.append((case.impl, config["seed"]))
        return {"config": config}

    def get(self, case: Case, *, keep_others: bool = False) -> FakeWorker:
        assert keep_others
        return self.workers[case.impl]

    def discard(self, case: Case) -> None:
        self.discarded.append(case.impl)


class FakeCanary:
    """A canary whose n-th timing is given: slow where a spell is pretended."""

    def __init__(self, seconds: list[float]) -> None:
        self._planned, self.seconds = list(seconds), []

    def __call__(self) -> int:
        self.seconds.append(self._planned[len(self.seconds)])
        return len(self.seconds) - 1

    def close(self) -> None:
        pass


def schedule_of(
    schedule: str, *, fail: dict[str, int] | None = None, missing=(), seeds=(0,), epochs=EPOCHS
):
    """A main run over fake implementations a, b, c; returns (run, cases, train log, pool)."""
    log: list[str] = []
    fail = fail or {}
    workers = {name: FakeWorker(name, log, fail.get(name)) for name in "abc"}
    pool = FakePool(workers, missing)
    cases = [Case("epoch", name, "cpu", 1, 256) for name in "abc"]
    main = bench_schedule.MainRun(settings(schedule, seeds, epochs), pool, cases)
    return main, cases, log, pool


@pytest.fixture(autouse=True)
def _no_settling(monkeypatch) -> None:
    monkeypatch.setattr(bench_schedule, "VISIT_PAUSE_SECONDS", 0.0)


def cycles_of(log: list[str], impls: int = 3) -> list[tuple[str, ...]]:
    """The order of each round-robin cycle in a train log (after the warm-ups), checking
    that each visit is three epochs of one implementation in a row."""
    epochs = log[impls:]
    visits = [tuple(epochs[i : i + 3]) for i in range(0, len(epochs), 3)]
    assert all(len(set(visit)) == 1 for visit in visits), visits
    names = [visit[0] for visit in visits]
    return [tuple(names[i : i + impls]) for i in range(0, len(names), impls)]


def timed_sequence(log: list[str], impls: int = 3) -> list[str]:
    """The timed epochs of a train log in the order run: each visit's last two."""
    epochs = log[impls:]
    return [name for i in range(0, len(epochs), 3) for name in epochs[i + 1 : i + 3]]


def test_visits_open_with_an_untimed_epoch_and_every_schedule_trains_the_same_epochs() -> None:
    assert visits(9) == [(1, 2)] * 3 and visits(4) == [(1, 2), (0, 1)]
    assert visits(2) == [(1, 1)] and visits(1) == [(0, 1)]
    assert [timed_epochs(10, "round-robin"), timed_epochs(10, "blocks")] == [6, 9]
    assert [timed_epochs(5, "round-robin"), timed_epochs(3, "round-robin")] == [3, 1]
    assert timed_epochs(2, "round-robin") == 1
    assert timed_epochs(EPOCHS, "round-robin") == TIMED
    assert timed_epoch_numbers(EPOCHS, "round-robin") == [3, 4, 6, 7]
    assert timed_epoch_numbers(5, "round-robin") == [3, 4, 5]  # a last visit of one epoch
    assert timed_epoch_numbers(4, "blocks") == [2, 3, 4]
    # Blocks times every epoch, in one visit per implementation.
    assert visits(5, "blocks") == [(0, 5)]


@pytest.mark.parametrize("schedule", ["round-robin", "blocks"])
@pytest.mark.parametrize("epochs", [2, 3, 4, 5, 10])
def test_every_schedule_trains_the_epochs_asked_and_times_its_share(schedule, epochs) -> None:
    main, cases, log, _ = schedule_of(schedule, epochs=epochs)
    runs = [main.outcome(case) for case in cases]
    assert all(log.count(name) == epochs for name in "abc")
    # Each round is the worker's clock around train_epoch, not the request's round trip.
    assert all(run.seconds == [RECORD["train_seconds"]] * timed_epochs(epochs, schedule)
               for run in runs)  # fmt: skip


def test_round_robin_visits_each_implementation_in_turn_in_shuffled_orders() -> None:
    main, cases, log, _ = schedule_of("round-robin")
    runs = [main.outcome(case) for case in cases]
    assert log[:3] == ["a", "b", "c"]  # the warm-ups
    cycles = cycles_of(log)
    assert len(cycles) == 2 and all(sorted(cycle) == ["a", "b", "c"] for cycle in cycles)
    assert all(one != next_one for one, next_one in itertools.pairwise(cycles)), cycles
    assert all(log.count(name) == EPOCHS for name in "abc")  # the same epochs for all
    assert all(len(run.seconds) == TIMED and run.error is None for run in runs)
    assert len(main.canary.seconds) == 3 * VISITS + 1  # one before each visit, one after
    assert all(len(run.spell_rounds) == TIMED for run in runs)
    again, again_cases, again_log, _ = schedule_of("round-robin")
    again.outcome(again_cases[0])
    assert again_log == log  # shuffled the same way every run


def test_each_seed_builds_every_implementation_afresh_and_the_rounds_are_pooled() -> None:
    main, cases, log, pool = schedule_of("round-robin", seeds=(5, 6))
    runs = [main.outcome(case) for case in cases]
    assert pool.builds == [("a", 5), ("b", 5), ("c", 5), ("a", 6), ("b", 6), ("c", 6)]
    assert log[3 * EPOCHS : 3 * EPOCHS + 3] == ["a", "b", "c"]  # the second seed's warm-up
    for run in runs:
        assert [seed for seed, _ in run.histories] == [5, 6]
        assert len(run.seconds) == len(run.spell_rounds) == 2 * TIMED
        assert run.predictions == [EPOCHS % 10] * 18  # the first seed's model, after its epochs
    # A canary before each visit and one after each seed's last visit.
    assert len(main.canary.seconds) == 2 * (3 * VISITS + 1)


def test_blocks_times_each_implementation_back_to_back() -> None:
    main, cases, log, _ = schedule_of("blocks")
    main.outcome(cases[0])
    assert log[3:] == ["a"] * (EPOCHS - 1) + ["b"] * (EPOCHS - 1) + ["c"] * (EPOCHS - 1)
    assert len(main.runs[cases[0]].seconds) == EPOCHS - 1
    assert len(main.canary.seconds) == 3 + 1  # one before each block, one after the last


@pytest.mark.parametrize(("schedule", "visit_epochs"), [("round-robin", 3), ("blocks", EPOCHS - 1)])
def test_a_visit_pauses_and_times_the_canary_then_runs_its_epochs_back_to_back(
    monkeypatch, schedule, visit_epochs
) -> None:
    """No pause and no canary between a visit's epochs: a core left idle for the pause
    makes the next short epoch slow, which the timed epochs must not pay."""
    main, cases, log, _ = schedule_of(schedule)
    events = log  # the workers append their implementation to it at each epoch

    def pause(seconds: float) -> None:
        events.append("pause")

    class LoggedCanary(FakeCanary):
        def __call__(self) -> int:
            events.append("canary")
            return super().__call__()

    visits_run = 3 * (EPOCHS - 1) // visit_epochs
    main.canary = LoggedCanary([1.0] * (visits_run + 1))
    monkeypatch.setattr(bench_schedule.time, "sleep", pause)
    main.outcome(cases[0])
    after_warm_ups, size = log[3:], 2 + visit_epochs
    for start in range(0, visits_run * size, size):
        visit = after_warm_ups[start : start + size]
        assert visit[:2] == ["pause", "canary"] and len(set(visit[2:])) == 1, visit
    assert after_warm_ups[visits_run * size :] == ["pause", "canary"]  # after the seed's last


def test_a_failing_implementation_keeps_its_error_and_the_others_go_on() -> None:
    main, cases, log, pool = schedule_of("round-robin", fail={"b": 4}, missing=("c",))
    a, b, c = (main.outcome(case) for case in cases)
    assert isinstance(c.error, bench_workers.WorkerSkip) and c.seconds == []
    assert isinstance(b.error, bench_workers.WorkerError) and len(b.seconds) == 1
    assert a.error is None and len(a.seconds) == TIMED
    assert pool.discarded == ["c", "b"]  # each freed once, when it failed
    assert log.count("b") == 3  # warm-up, untimed and one timed epoch; never asked again


class FakeReplicaPool(FakePool):
    """A pool whose workers are the replicas sweep's points, one per case."""

    def __init__(self, workers: dict[str, FakeWorker]) -> None:
        super().__init__(workers)
        self.kept: list[list[str]] = []

    def build(self, case: Case, *, keep_others: bool = False, **config) -> dict:
        assert keep_others, "a sweep's points need their workers alive at once"
        self.builds.append((case.id, config["seed"], config["epochs"]))
        return {"config": config}

    def get(self, case: Case, *, keep_others: bool = False) -> FakeWorker:
        return self.workers[case.id]

    def keep_only(self, cases) -> None:
        self.kept.append([case.id for case in cases])


def test_the_replicas_sweep_alternates_each_implementations_points() -> None:
    """One schedule per implementation: its points built first (the first seed only, the
    sweep's epochs), then visits alternating between them; the other's workers left alone."""
    cases = [Case("replicas", impl, "cpu", 2, 256, replicas=r) for impl in "ab" for r in (1, 2)]
    log: list[str] = []
    pool = FakeReplicaPool({case.id: FakeWorker(case.id, log) for case in cases})
    sweep = bench_schedule.ReplicaSweep(settings("round-robin", seeds=(5, 6)), pool, cases)
    a1, a2, b1, b2 = (case.id for case in cases)
    first = sweep.outcome(cases[0])
    assert pool.kept == [[a1, a2]] and set(log) == {a1, a2}
    assert pool.builds == [(a1, 5, 7), (a2, 5, 7)]  # the first seed, 1 + 2 visits x 3 epochs
    assert log[:2] == [a1, a2]  # the warm-ups, then one visit of 3 epochs each, in turn
    visits = [log[i] for i in range(2, len(log), 3)]
    assert visits in ([a1, a2, a2, a1], [a2, a1, a1, a2])  # each opens one cycle of two
    assert all(log[i : i + 3] == [log[i]] * 3 for i in range(2, len(log), 3))
    second = sweep.outcome(cases[1])
    assert len(first.seconds) == len(second.seconds) == 4 and second.error is None
    # R=2's communication measured apart once its epochs were done, its memory taken before.
    assert second.communication_apart == {"after_epochs_seconds": 7.0}
    assert second.memory["peak_rss_bytes"] == 107
    assert first.communication_apart is None and first.memory is None
    assert [seed for seed, _ in first.histories] == [5]
    sweep.outcome(cases[2])
    assert pool.kept == [[a1, a2], [b1, b2]] and log.count(b1) == log.count(b2) == 7


def test_replicas_beyond_the_cores_or_the_threads_do_not_fit(monkeypatch) -> None:
    import bench_cases

    monkeypatch.setattr(bench_cases, "usable_cores", lambda: 4)
    assert bench_cases.replicas_unfit(Case("replicas", "a", "cpu", 4, 256, replicas=4)) is None
    assert "8 replicas on the CPU need a core each; 4 usable here" in (
        bench_cases.replicas_unfit(Case("replicas", "a", "cpu", 8, 256, replicas=8))
    )
    assert "4 replicas need a thread each; the run has 2" in (
        bench_cases.replicas_unfit(Case("replicas", "a", "cpu", 2, 256, replicas=4))
    )
    # Off the CPU the cores do not bound the replicas: the engine says how many devices fit.
    assert bench_cases.replicas_unfit(Case("replicas", "a", "cuda", 8, 256, replicas=8)) is None


def test_the_rounds_beside_a_slow_canary_are_marked() -> None:
    main, cases, log, _ = schedule_of("round-robin")
    # Counting visits and canaries from 0, canary k opens visit k and closes visit k - 1:
    # canary 2, slow, marks the rounds of visits 1 and 2 (timed positions 2 to 5), no other.
    main.canary = FakeCanary([1.0, 1.1, 3.0, 1.0, 0.95, 1.05, 1.0])
    runs = {case.impl: main.outcome(case) for case in cases}
    timed = timed_sequence(log)
    for impl, run in runs.items():
        positions = [i for i, name in enumerate(timed) if name == impl]
        assert run.spell_rounds == [2 <= i <= 5 for i in positions], impl
    assert sum(sum(run.spell_rounds) for run in runs.values()) == 4


def test_a_slow_canary_after_a_seed_marks_that_seeds_last_visit_alone() -> None:
    main, cases, log, _ = schedule_of("round-robin", seeds=(0, 1))
    per_seed = 3 * VISITS + 1
    slow_end = [1.0] * (per_seed - 1) + [3.0] + [1.0] * per_seed
    main.canary = FakeCanary(slow_end)
    runs = {case.impl: main.outcome(case) for case in cases}
    last_visit = log[3 + 3 * (EPOCHS - 1) - 1]  # the first seed's last epoch's implementation
    for impl, run in runs.items():
        marked = [i for i, spell in enumerate(run.spell_rounds) if spell]
        assert marked == ([TIMED - 2, TIMED - 1] if impl == last_visit else []), impl


def test_spells_are_found_even_when_they_cover_most_of_the_run() -> None:
    """The quiet canary is the lower quartile: a median would call a long spell the norm."""
    seconds = [1.0, 1.0, 3.0, 3.1, 2.9, 3.0, 1.0]
    marks = bench_schedule.spell_marks(seconds, before=[0, 1, 2, 3, 4, 5], threshold=1.5)
    assert marks == [False, True, True, True, True, True]
    assert bench_schedule.spell_marks([1.0], before=[], threshold=1.5) == []


def test_the_canary_times_a_real_product() -> None:
    pytest.importorskip("threadpoolctl")
    canary = bench_schedule.Canary(threads=1)
    assert [canary(), canary()] == [0, 1]
    record = canary.record()
    assert record.threshold == bench_schedule.SPELL_THRESHOLD and len(record.seconds) == 2
    assert all(seconds > 0 for seconds in record.seconds)
    assert "256 x 256" in record.what
    canary.close()


@pytest.mark.parametrize(
    ("text", "expected"), [("6:4", (6.0, 4.0)), ("0:0.5", (0.0, 0.5)), ("12.5:4", (12.5, 4.0))]
)
def test_an_injected_spell_is_given_as_at_and_seconds(text, expected) -> None:
    assert bench_options._spell(text) == expected


@pytest.mark.parametrize("text", ["6", "a:b", "6:0", "-1:4", "6:4:2", "inf:4", "6:nan"])
def test_a_bad_injected_spell_is_refused_naming_it(text) -> None:
    with pytest.raises(pytest.UsageError, match="--inject-spell"):
        bench_options._spell(text)


def _wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_injected_spells_burn_when_asked_and_close_stops_them() -> None:
    injector = bench_schedule.SpellInjector([(0.0, 60.0), (3600.0, 1.0)], processes=2)
    injector.start(time.monotonic())
    try:
        assert _wait_for(lambda: len(injector.burners) == 2)
        assert all(burner.poll() is None for burner in injector.burners)  # still burning
    finally:
        injector.close()
    assert all(burner.poll() is not None for burner in injector.burners)
    time.sleep(0.2)
    assert len(injector.burners) == 2  # the spell an hour away never started
    first, second = injector.records()
    assert (first.start_seconds, first.seconds, first.processes) == (0.0, 60.0, 2)
    assert sorted(first.pids) == sorted(burner.pid for burner in injector.burners)
    assert (second.start_seconds, second.seconds, second.pids) == (3600.0, 1.0, [])
