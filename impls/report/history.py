"""The history of a machine: its runs in date order, as a figure and a table (asv's graphs).

For each machine among the reported runs, :func:`machine_histories` gathers its runs:

* several reported runs of one machine (the committed reference runs, say) are its history
  as given, so the report is rebuilt alike wherever it is rebuilt;
* a single reported run joins the runs saved for its machine (``.benchmarks/``, searched
  once by :func:`impls.report.previous.load_saved`), smoke runs only with smoke runs, as
  the previous run is chosen (:func:`impls.report.previous.comparable`).

:func:`history_lines` draws each machine's median epoch per implementation with its
interquartile range against the run (log scale), and tabulates the last
:data:`LAST_RUNS` runs; a machine with a single run gets one line instead.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from impls.figures import pyplot, save_figure
from impls.report.frame import BASELINE
from impls.report.plots import plain_log_ticks
from impls.report.previous import comparable, same_run
from impls.report.runs import Run, machine_label
from impls.report.text import markdown_table, number, with_device

LAST_RUNS = 8  # rows of the history table
MAX_TICK_LABELS = 12  # on the figure's run axis; more runs: every n-th labelled


@dataclass(frozen=True)
class MachineHistory:
    """One machine's runs in date order; ``reported``: those this report is about."""

    machine: str
    runs: list[Run]
    reported: list[Run]

    def is_reported(self, run: Run) -> bool:
        return any(run is other for other in self.reported)


def _date_order(one: Run, other: Run) -> int:
    """-1, 0 or 1 as ``one`` was recorded before, with or after ``other``."""
    return -1 if one.recorded_before(other) else (1 if other.recorded_before(one) else 0)


def machine_histories(runs: Sequence[Run], saved: Sequence[Run]) -> list[MachineHistory]:
    """Each reported machine's history, in the order its first run was reported."""
    histories = []
    done: list[Run] = []
    for run in runs:
        if any(comparable(run, other) for other in done):
            continue
        reported = [other for other in runs if comparable(other, run)]
        done.append(run)
        chosen = list(reported)
        if len(reported) == 1:
            for candidate in saved:  # the reported run itself may be saved too: kept once
                if comparable(candidate, run) and not any(same_run(candidate, c) for c in chosen):
                    chosen.append(candidate)
        chosen.sort(key=functools.cmp_to_key(_date_order))
        histories.append(MachineHistory(machine_label(run), chosen, reported))
    return histories


def _series(history: MachineHistory) -> dict[str, list[tuple[int, float, float, float]]]:
    """Per implementation (and device, where not the CPU): (run index, median, q1, q3)."""
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for index, run in enumerate(history.runs):
        for entry in run.of_kind("epoch"):
            name = with_device(entry.implementation, entry.case.device)
            timing = entry.timing
            series.setdefault(name, []).append((index, timing.median, timing.q1, timing.q3))
    return series


def _run_tick(run: Run) -> str:
    """A run on the figure's axis: its date and short commit."""
    commit = (run.commit_info.id or "unknown")[:7] + ("*" if run.commit_info.dirty else "")
    return f"{run.short_date}\n{commit}"


def plot_history(history: MachineHistory, path: Path) -> Path:
    """Each implementation's median epoch per run, q1 to q3 as bars, log scale."""
    plt = pyplot()
    count = len(history.runs)
    fig, ax = plt.subplots(figsize=(min(6 + 0.6 * count, 16), 4.6), layout="constrained")
    series = _series(history)
    for name in sorted(series, key=lambda name: -series[name][-1][1]):  # slowest on top
        index, median, q1, q3 = zip(*series[name], strict=True)
        errors = [[max(m - low, 0) for m, low in zip(median, q1, strict=True)],
                  [max(high - m, 0) for m, high in zip(median, q3, strict=True)]]  # fmt: skip
        style = "--" if name.startswith(BASELINE) else "-"
        ax.errorbar(index, median, yerr=errors, fmt=style, marker="o", markersize=4, capsize=3,
                    label=name)  # fmt: skip
    for index, run in enumerate(history.runs):
        if history.is_reported(run) and len(history.reported) < count:
            ax.axvspan(index - 0.4, index + 0.4, color="#ffe699", alpha=0.5, linewidth=0)
    step = math.ceil(count / MAX_TICK_LABELS)
    ticks = list(range(0, count, step))
    ax.set_xticks(ticks, [_run_tick(history.runs[i]) for i in ticks], fontsize=7)
    ax.set_xlim(-0.6, count - 0.4)
    ax.set_yscale("log")
    plain_log_ticks(ax.yaxis)
    ax.set_ylabel("seconds per epoch (median; bars: q1 to q3)")
    ax.set_xlabel("run (date UTC, commit; * uncommitted changes)")
    ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Epoch time, run by run: {history.machine}", fontsize=10)
    fig.legend(loc="outside right upper", fontsize=8)
    return save_figure(fig, path)


def history_table(history: MachineHistory, last: int = LAST_RUNS):
    """The last ``last`` runs, oldest first: date, commit, threads, each implementation's
    median epoch [s] (columns fastest first, as in the newest run)."""
    import pandas as pd

    series = _series(history)
    names = sorted(series, key=lambda name: series[name][-1][1])
    runs = list(enumerate(history.runs))[-last:]
    marked = len(history.reported) < len(history.runs)  # else every row is this report's
    table = []
    for index, run in runs:
        this = marked and history.is_reported(run)
        record = {
            "run (UTC)": run.short_date + (" (this report)" if this else ""),
            "commit": f"`{run.commit}`",
            "threads": str(run.settings.threads or "—"),
        }
        for name in names:
            medians = [median for i, median, _, _ in series[name] if i == index]
            record[name] = number(medians[0]) if medians else "—"
        table.append(record)
    return pd.DataFrame(table)


def figure_name(position: int, count: int) -> str:
    """The history figure's file name: one machine, ``history.png``; else numbered."""
    return "history.png" if count == 1 else f"history-{position + 1}.png"


def history_lines(histories: Sequence[MachineHistory], figures: Path, rel: str) -> list[str]:
    """The *History* section: per machine, its figure and its last runs, or one line."""
    if not histories:
        return []
    lines = ["## History", ""]
    for position, history in enumerate(histories):
        count = len(history.runs)
        if count < 2:
            lines += [
                f"*{history.machine}: one run so far, no history to draw (every saved run of "
                "a machine is drawn here, in date order, once there are two).*",
                "",
            ]
            continue
        name = figure_name(position, len(histories))
        plot_history(history, figures / name)
        lines += [
            f"**{history.machine}**: {count} runs in date order; each implementation's median "
            "epoch with its interquartile range"
            + (", the runs of this report shaded" if len(history.reported) < count else "")
            + ". Median epoch [s] of "
            + (f"the last {LAST_RUNS}:" if count > LAST_RUNS else "each:"),
            "",
            f"![History of {history.machine}]({rel}/{name})",
            "",
            markdown_table(history_table(history)),
            "",
        ]
    return lines
