"""The report's *Run time*: where a benchmark run's wall time went, part by part.

Read from each test's own wall time (``fmbench.tests[].seconds``: setup, call and
teardown) and the session's (``fmbench.run_seconds``), which runs from before
both were recorded lack: the section is then left out. The main run's share of
each implementation is its epochs and evaluations by its worker's own clock.
"""

from __future__ import annotations

from collections.abc import Sequence

from impls.report.runs import Run
from impls.report.text import markdown_table, number, plural

# A test's kind -> the part of the run it belongs to, in the order the table lists them.
PARTS = {
    "epoch": "main run",
    "limit": "floors",
    "compute": "floors",
    "size": "input-size sweep",
    "size-limit": "input-size sweep",
    "size-compute": "input-size sweep",
    "batch": "batch-size sweep",
    "threads": "thread sweep",
    "loader": "baseline breakdown",
    "loader-only": "baseline breakdown",
    "replicas": "replicas sweep",
    "startup": "start-up",
}
REST = "the rest (collection, workers stopping between tests, writing the JSON)"


def parts(run: Run) -> dict[str, float] | None:
    """Seconds per part of ``run`` (:data:`PARTS`, then the rest), or None if not recorded."""
    if run.fmbench.run_seconds is None:
        return None
    seconds = dict.fromkeys(dict.fromkeys(PARTS.values()), 0.0)
    for test in run.tests():
        if test.seconds is not None:
            part = PARTS.get(test.kind or "", REST)
            seconds[part] = seconds.get(part, 0.0) + test.seconds
    seconds = {part: value for part, value in seconds.items() if value > 0}
    seconds[REST] = max(0.0, run.fmbench.run_seconds - sum(seconds.values()))
    return seconds


def main_run_shares(run: Run) -> dict[str, float]:
    """Each implementation's training and evaluation seconds in the main run, every seed."""
    shares: dict[str, float] = {}
    for _, case in run.trained("epoch"):
        spent = sum(
            record.train_seconds + (record.eval_seconds or 0.0)
            for seed_run in case.seed_runs
            for record in seed_run.history
        )
        shares[case.implementation] = shares.get(case.implementation, 0.0) + spent
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def run_time_section(runs: Sequence[Run], *, multi: bool) -> list[str]:
    """The *Run time* section's lines (none when no run recorded its tests' times)."""
    import pandas as pd

    timed = [(run, parts(run)) for run in runs]
    timed = [(run, seconds) for run, seconds in timed if seconds is not None]
    if not timed:
        return []
    names = list(dict.fromkeys(part for _, seconds in timed for part in seconds))
    columns = {"part of the run": [*names, "whole run"]}
    for run, seconds in timed:
        column = f"minutes ({run.label})" if multi else "minutes"
        whole = run.fmbench.run_seconds
        columns[column] = [number(seconds.get(part, 0.0) / 60, 2) for part in names]
        columns[column].append(number(whole / 60, 2))
    lines = ["## Run time", "", markdown_table(pd.DataFrame(columns)), ""]
    lines.append(
        "Each test's wall time (its setup, timed rounds, untimed warm-up and evaluation, and "
        "teardown; a worker's start counts in the first test that needs it), summed by part; "
        "*whole run*: the benchmark session from its start to writing its JSON (the report "
        "and `nox`'s own start come on top)."
    )
    for run, _ in timed:
        shares = main_run_shares(run)
        if shares:
            seeds = max(len(case.seed_runs) for _, case in run.trained("epoch"))
            listed = ", ".join(f"{impl} {number(s / 60, 2)}" for impl, s in shares.items())
            lines.append(
                f"{f'- {run.label}: i' if multi else 'I'}n the main run, each implementation's "
                f"epochs and evaluations ({plural(seeds, 'seed')}), minutes by its worker's "
                f"clock: {listed}."
            )
    lines.append("")
    return lines
