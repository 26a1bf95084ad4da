"""``results.csv``: every training result as one tidy row per implementation, device, sweep
point and seed, for a user's own analysis.

The per-seed numbers are :func:`impls.report.seeds.seed_frame`'s; the timing columns are
the case's (pytest-benchmark's statistics of its timed rounds, every seed's pooled) and
so repeat on each seed's row. pandas is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence

from impls.report.frame import mib
from impls.report.runs import Run
from impls.report.seeds import seed_frame
from impls.results import TRAINING_KINDS

# The run and the case first, then the timing, then the seed's numbers.
LEADING = ["run_file", "run_id", "date", "commit", "dirty", "machine", "kind", "implementation",
           "device", "strategy", "threads", "batch_size", "size", "loader_workers",
           "replicas", "seed"]  # fmt: skip
WHOLE = ["threads", "batch_size", "size", "loader_workers", "replicas", "seed", "rounds",
         "spell_rounds", "epochs", "epochs_to_target"]  # fmt: skip
TIMING = ["rounds", "median_epoch_s", "iqr_s", "q1_s", "q3_s", "spell_rounds",
          "examples_per_s", "peak_rss_mib", "peak_rss_children_mib",
          "peak_tree_pss_mib"]  # fmt: skip


def _case_rows(runs: Sequence[Run]) -> list[dict]:
    """One row per training case of every run: the run and the case's timing."""
    rows = []
    for index, run in enumerate(runs):
        for entry, case in (pair for kind in TRAINING_KINDS
                            for pair in run.trained(kind)):  # fmt: skip
            timing = entry.timing
            spells = entry.spell_rounds
            rows.append(
                {
                    "run": index,
                    "name": entry.name,
                    "run_file": run.path.name,
                    "run_id": run.run_id,
                    "date": run.datetime,
                    "commit": run.commit_info.id,
                    "dirty": run.commit_info.dirty,
                    "rounds": timing.rounds,
                    "median_epoch_s": timing.median,
                    "iqr_s": timing.iqr,
                    "q1_s": timing.q1,
                    "q3_s": timing.q3,
                    "spell_rounds": None if spells is None else sum(spells),
                    "examples_per_s": entry.examples_per_second,
                    "peak_rss_mib": mib(case.peak_rss_bytes),
                    "peak_rss_children_mib": mib(case.peak_rss_children_bytes),
                    "peak_tree_pss_mib": mib(case.peak_tree_pss_bytes),
                }
            )
    return rows


def results_table(runs: Sequence[Run]):
    """The rows of ``results.csv``: :data:`LEADING`, :data:`TIMING`, then every other
    column of :func:`seed_frame` (accuracy, time to target and each part of the time to
    result, per seed)."""
    import pandas as pd

    seeds = seed_frame(runs)
    cases = pd.DataFrame(_case_rows(runs), columns=["run", "name", *LEADING[:5], *TIMING])
    table = seeds.merge(cases, on=["run", "name"], how="left")
    rest = [c for c in seeds.columns if c not in (*LEADING, "run", "name")]
    table = table[LEADING + TIMING + rest]
    for column in WHOLE:  # counts stay counts where a row has none (pandas' nullable ints)
        table[column] = table[column].astype("Int64")
    return table


def write_results_csv(runs: Sequence[Run], path) -> None:
    """Write :func:`results_table` to ``path`` (the build's staging folder)."""
    results_table(runs).to_csv(path, index=False)
