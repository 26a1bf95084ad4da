"""Comparison reports from the benchmark suite's pytest-benchmark JSON.

``nox -s bench`` runs ``benchmarks/`` and then this package; ``nox -s report --
FILES`` (or ``python -m impls.report FILES``) rebuilds a report from saved
runs, merging several machines into one table with the machine as a column.

The report is Markdown (tables by pandas' ``to_markdown``) plus PNG figures
(matplotlib, Agg) referenced by relative path::

    OUT/README.md
    OUT/figures/epoch_time.png, accuracy_by_epoch.png, accuracy_by_time.png, predictions.png
    OUT/results.csv   one tidy row per implementation, device, sweep point and seed

It is written atomically, after ``OUT`` and every input are checked (:mod:`.build`): a
bad input or ``OUT`` is one line naming the file and the problem, and two builds into one
``OUT`` at once leave one whole report, its README with its own figures.
pandas, tabulate and matplotlib are imported inside the functions: the core
package needs only NumPy (``pip install 'fmbench[bench]'`` brings them; the command
line says so in one line when one is missing).

The result format (what each benchmark case records, and every number derived
from it) is :mod:`impls.results`, and :mod:`impls.run_info` for the run-level sections
(machine, commit, settings, tests, sample images); the report reads files with both. Modules:
:mod:`.runs` (loading and validation into :class:`Run` objects), :mod:`.previous`
(the autosave folder: the run to compare with), :mod:`.frame` (the results frame:
comparisons between measurements), :mod:`.comparison` (the rules that flag a change
from the previous run: a U test on the rounds, else the IQR rule), :mod:`.spells`
(the schedule, the canary and the rounds in a spell), :mod:`.history` (each machine's
runs over time), :mod:`.seeds` (every seed's numbers as one tidy frame; accuracy over
seeds), :mod:`.result_time` (time to result from a fresh process), :mod:`.tidy`
(``results.csv``), :mod:`.text` (number formatting, Markdown tables), :mod:`.tables`,
:mod:`.plots`, :mod:`.markdown` (the text), :mod:`.build` (:func:`build_report`) and :mod:`.cli`
(:func:`main`).
"""

from impls.report.build import build_report
from impls.report.cli import main
from impls.report.comparison import compare
from impls.report.frame import results_frame
from impls.report.previous import DEFAULT_STORAGE, find_previous, load_saved, newest
from impls.report.runs import ReportError, Run, load_run, load_runs

__all__ = [
    "DEFAULT_STORAGE",
    "ReportError",
    "Run",
    "build_report",
    "compare",
    "find_previous",
    "load_run",
    "load_runs",
    "load_saved",
    "main",
    "newest",
    "results_frame",
]
