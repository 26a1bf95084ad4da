"""The report's *Run time*: where a benchmark run's wall time went, part by part.

Read from each test's own wall time (``fmbench.tests[].seconds``: setup, call and
teardown) and the session's (``fmbench.run_seconds``); a run from before both were
recorded has no column. The main run's time per implementation is its epochs and
evaluations by its worker's own clock.
"""

from __future__ import annotations

from collections.abc import Sequence

from impls.report.runs import Run
from impls.report.text import markdown_table, with_device

# A test's kind -> the part of the run it belongs to, in the order the table lists them.
PARTS = {
    "epoch": "main run",
    "limit": "floors at 28 × 28",
    "compute": "floors at 28 × 28",
    "size": "input-size sweep (its floors included)",
    "size-limit": "input-size sweep (its floors included)",
    "size-compute": "input-size sweep (its floors included)",
    "batch": "batch-size sweep",
    "threads": "thread sweep",
    "loader": "baseline breakdown",
    "loader-only": "baseline breakdown",
    "replicas": "replicas sweep",
    "startup": "start-up",
}
OTHER = "other tests"  # a kind this table does not know (a newer file's)
OUTSIDE = "outside any test (collection, pytest between tests, machine and commit info)"
ORDER = [*dict.fromkeys(PARTS.values()), OTHER, OUTSIDE]
ROUNDING = 1.0  # seconds: how far the stored times' sum may pass the session's by rounding


def seconds_by_part(run: Run) -> dict[str, float] | None:
    """Seconds per part of ``run`` (:data:`ORDER`'s, those it had), or None if not recorded."""
    if run.fmbench.run_seconds is None:
        return None
    seconds: dict[str, float] = {}
    for test in run.tests():
        if test.seconds is not None:
            part = PARTS.get(test.kind or "", OTHER)
            seconds[part] = seconds.get(part, 0.0) + test.seconds
    outside = run.fmbench.run_seconds - sum(seconds.values())
    # The session's time is stored to 0.1 s, the tests' to 1 ms: a hair below 0 is rounding.
    seconds[OUTSIDE] = 0.0 if -ROUNDING < outside < 0 else outside
    return {part: seconds[part] for part in ORDER if part in seconds}


def main_run_seconds(run: Run) -> dict[str, float]:
    """Each implementation's (and device's, where not the CPU) training and evaluation
    seconds in the main run, every seed, the largest first."""
    spent: dict[str, float] = {}
    for _, case in run.trained("epoch"):
        name = with_device(case.implementation, case.device)
        spent[name] = spent.get(name, 0.0) + sum(
            record.train_seconds + (record.eval_seconds or 0.0)
            for seed_run in case.seed_runs
            for record in seed_run.history
        )
    return dict(sorted(spent.items(), key=lambda item: -item[1]))


def _minutes(seconds: float | None) -> str:
    """Seconds as minutes to the hundredth (one scale down the column); '—' if absent."""
    return "—" if seconds is None else f"{seconds / 60:.2f}"


def _overlap(seconds: dict[str, float]) -> list[str]:
    """A note when the tests' times add up to more than the session's (they overlapped)."""
    if seconds[OUTSIDE] >= 0:
        return []
    return [
        f"the tests' times add up to {-seconds[OUTSIDE]:.0f} s more than the session's: "
        "they overlapped (tests run in parallel)"
    ]


def run_time_section(runs: Sequence[Run], *, multi: bool) -> list[str]:
    """The *Run time* section's lines (none when no run recorded its tests' times)."""
    import pandas as pd

    by_run = {id(run): seconds_by_part(run) for run in runs}
    recorded = [run for run in runs if by_run[id(run)] is not None]
    if not recorded:
        return []
    present = {part for run in recorded for part in by_run[id(run)]}
    names = [part for part in ORDER if part in present]
    columns = {"part of the run": [*names, "whole run"]}
    for run in recorded:
        seconds = by_run[id(run)]
        column = f"minutes ({run.label})" if multi else "minutes"
        cells = [_minutes(seconds.get(part)) for part in names]
        columns[column] = [*cells, _minutes(run.fmbench.run_seconds)]
    lines = ["## Run time", "", markdown_table(pd.DataFrame(columns)), ""]
    lines.append(
        "Each test's wall time summed by the part of the run it belongs to: its setup "
        "(a worker's start, the dataset's first load: in the first test that needs them), "
        "its timed rounds and untimed warm-up and evaluation, its teardown; *whole run*: the "
        "benchmark session from its start to its results, so not `nox`'s own start, its "
        "install check, Python's start or the report."
    )
    for run in recorded:
        prefix = f"- {run.label}: " if multi else ""
        spent = main_run_seconds(run)
        if spent:
            listed = ", ".join(f"{name} {_minutes(s)}" for name, s in spent.items())
            lines.append(
                f"{prefix}In the main run, each implementation's epochs and evaluations, every "
                f"seed, by its worker's clock (minutes): {listed}; the rest of the main run is "
                "the workers' start and builds, the canary and its pauses, and predictions."
            )
        lines += [f"{prefix}*Note:* {note}." for note in _overlap(by_run[id(run)])]
    silent = [run.label for run in runs if by_run[id(run)] is None]
    if silent:
        lines.append(f"Not recorded by the older run(s): {', '.join(silent)}.")
    lines.append("")
    return lines
