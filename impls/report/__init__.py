"""Comparison reports from the benchmark suite's pytest-benchmark JSON.

``nox -s bench`` runs ``benchmarks/`` and then this package; ``nox -s report --
FILES`` (or ``python -m impls.report FILES``) rebuilds a report from saved
runs, merging several machines into one table with the machine as a column.

The report is Markdown (tables by pandas' ``to_markdown``) plus PNG figures
(matplotlib, Agg) referenced by relative path::

    OUT/README.md
    OUT/figures/epoch_time.png, accuracy_by_epoch.png, accuracy_by_time.png, predictions.png

It is written atomically, after every input is validated (:mod:`.build`).
pandas, tabulate and matplotlib are imported inside the functions: the core
package needs only NumPy (``pip install 'fmbench[bench]'`` brings them).

Modules: :mod:`.runs` (loading, validation, previous runs), :mod:`.frame` (the
results frame and the comparison rule), :mod:`.tables`, :mod:`.plots`,
:mod:`.markdown` (:func:`render`), :mod:`.build` (:func:`build_report`) and
:mod:`.cli` (:func:`main`).
"""

from impls.report.build import REPORT_NAME, build_report
from impls.report.cli import main
from impls.report.frame import BASELINE, RELATIVE_NOISE_FLOOR, compare, results_frame
from impls.report.markdown import BUSY_OTHER_CPUS, FIGURES_DIR, MIN_ROUNDS, render
from impls.report.plots import plot_accuracy, plot_epoch_times
from impls.report.runs import (
    CASE_KEYS,
    DEFAULT_STORAGE,
    EXTRA_KEYS,
    GROUP_KINDS,
    HISTORY_KEYS,
    STAT_KEYS,
    Entry,
    ReportError,
    Run,
    find_previous,
    load_run,
    load_runs,
    newest_saved,
)
from impls.report.tables import (
    NOISY_IQR_FRACTION,
    machine_table,
    main_table,
    noise_table,
    settings_table,
    sweep_table,
)

__all__ = [
    "BASELINE",
    "BUSY_OTHER_CPUS",
    "CASE_KEYS",
    "DEFAULT_STORAGE",
    "EXTRA_KEYS",
    "FIGURES_DIR",
    "GROUP_KINDS",
    "HISTORY_KEYS",
    "MIN_ROUNDS",
    "NOISY_IQR_FRACTION",
    "RELATIVE_NOISE_FLOOR",
    "REPORT_NAME",
    "STAT_KEYS",
    "Entry",
    "ReportError",
    "Run",
    "build_report",
    "compare",
    "find_previous",
    "load_run",
    "load_runs",
    "machine_table",
    "main",
    "main_table",
    "newest_saved",
    "noise_table",
    "plot_accuracy",
    "plot_epoch_times",
    "render",
    "results_frame",
    "settings_table",
    "sweep_table",
]
