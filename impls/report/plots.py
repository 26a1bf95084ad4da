"""The report's figures (matplotlib, Agg backend), each saved as a PNG.

matplotlib is imported inside the functions (through :func:`impls.figures.pyplot`);
the predictions grid is drawn by :func:`impls.figures.plot_predictions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from impls.figures import plot_predictions, pyplot, save_figure
from impls.report.frame import BASELINE
from impls.report.runs import Run
from impls.report.text import number, with_device
from impls.results import TrainingResult, cumulative_train_seconds


def _impl_label(impl: str, device: str | None) -> str:
    """The implementation's name, with its device when that is not the CPU."""
    return impl if device in (None, "cpu") else f"{impl} ({device})"


def _joined_label(members: list[tuple[str, str]], multi: bool) -> str:
    """'a = b' for identical curves; with several machines, grouped per machine; wrapped."""
    import textwrap

    by_machine: dict[str, list[str]] = {}
    for name, machine in members:
        by_machine.setdefault(machine, []).append(name)
    parts = [
        " = ".join(names) + (f" ({machine})" if multi else "")
        for machine, names in by_machine.items()
    ]
    return textwrap.fill("; ".join(parts), width=60)


def plot_epoch_times(frame, path: Path, *, multi: bool) -> Path:
    """Horizontal log-scale bars of the median epoch time, IQR as error bars."""
    plt = pyplot()
    rows = frame[frame["kind"].isin(["epoch", "limit"])].sort_values(["median_s"], ascending=False)
    labels = []
    for _, row in rows.iterrows():
        name = "limit (read once)" if row["kind"] == "limit" else row["implementation"]
        name = with_device(name, row["device"])
        labels.append(f"{name} — {row['machine']}" if multi else name)
    medians = rows["median_s"].to_numpy(dtype=float)
    lower = medians - rows["q1_s"].to_numpy(dtype=float)
    upper = rows["q3_s"].to_numpy(dtype=float) - medians
    colors = ["#999999" if kind == "limit" else "#4472c4" for kind in rows["kind"]]
    colors = [
        "#c0504d" if impl == BASELINE else color
        for impl, color in zip(rows["implementation"], colors, strict=True)
    ]
    width = 10.5 if multi else 7.5  # room for the machine in each label
    fig, ax = plt.subplots(figsize=(width, 0.45 * len(rows) + 1.4), layout="constrained")
    positions = range(len(rows))
    ax.barh(positions, medians, xerr=[lower.clip(0), upper.clip(0)], color=colors, capsize=3)
    ax.set_yticks(list(positions), labels)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per epoch (median; whiskers: interquartile range; log scale)")
    for position, median, q3 in zip(positions, medians, rows["q3_s"], strict=True):
        ax.annotate(
            f"{number(median)} s",
            (max(median, q3), position),
            va="center",
            fontsize=8,
            xytext=(4, 0),
            textcoords="offset points",
        )
    ax.set_xlim(right=max(rows["q3_s"].max(), medians.max()) * 4)
    plain_log_ticks(ax.xaxis)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.set_title("Steady-state epoch time (epoch 1 excluded)")
    return save_figure(fig, path)


def from_fresh_process(runs: Sequence[Run]) -> bool:
    """Whether every main case recorded its time to a built trainer (schema 3): the time axis
    then starts at a fresh process, as the time to result does; else at the first epoch."""
    return all(case.ready_seconds() is not None for run in runs for _, case in run.trained())


def plot_accuracy(runs: Sequence[Run], path: Path, *, by: str, target: float | None) -> Path:
    """Test accuracy after each epoch (the first seed's) against the epoch number or the time
    (:func:`from_fresh_process`: from a fresh process, or training alone)."""
    plt = pyplot()
    fresh = from_fresh_process(runs)
    multi = len(runs) > 1
    fig, ax = plt.subplots(figsize=(10, 4.6) if multi else (7, 4.2), layout="constrained")
    series: dict[tuple, list[tuple[str, str]]] = {}  # identical curves: drawn once, labels joined
    styles: dict[tuple, str] = {}
    for run in runs:
        for entry, case in run.trained("epoch"):
            start = case.ready_seconds() if fresh else 0.0
            times = [start + seconds for seconds in cumulative_train_seconds(case.history)]
            points = [
                (record.epoch if by == "epoch" else seconds, record.test_accuracy)
                for record, seconds in zip(case.history, times, strict=True)
                if record.test_accuracy is not None  # an epoch without evaluation: no point
            ]
            x, accuracy = tuple(p[0] for p in points), tuple(p[1] for p in points)
            name = _impl_label(entry.implementation, case.device)
            series.setdefault((x, accuracy), []).append((name, run.label))
            styles.setdefault((x, accuracy), "--" if entry.implementation == BASELINE else "-")
    for (x, accuracy), members in series.items():
        label = _joined_label(members, multi)
        ax.plot(x, accuracy, styles[(x, accuracy)], marker="o", markersize=3, label=label)
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            f"target {target:g}",
            (0.01, target),
            xycoords=("axes fraction", "data"),
            va="bottom",
            fontsize=8,
            color="grey",
        )
    if by == "epoch":
        ax.set_xlabel("epoch")
        ax.set_title("Test accuracy after each epoch")
    else:
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
        ax.set_xlabel(
            "seconds from a fresh process: start-up, import, build, training epochs "
            "(evaluation excluded; log scale)"
            if fresh
            else "cumulative training wall time [s] (evaluation excluded; log scale)"
        )
        ax.set_title(
            "Test accuracy against time to result"
            if fresh
            else "Test accuracy against training time"
        )
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    if multi:  # long labels: beside the plot, not over it
        fig.legend(loc="outside right upper", fontsize=7)
    else:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plain_log_ticks(axis) -> None:
    """Ticks at 1, 2, 5 × 10^k, labelled as plain numbers, on a log-scaled axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def predictions_figure(run: Run, case: TrainingResult, path: Path) -> str | None:
    """Draw the predictions grid of ``case`` (one of ``run``'s) on the run's sample images;
    return why not, or None."""
    import numpy as np

    sample = run.fmbench.sample  # validated on loading: its size matches its shape
    predictions = case.predictions
    if sample is None or not predictions:
        return "the run stored no sample images or predictions"
    images = np.frombuffer(sample.pixels, dtype=np.uint8).reshape(sample.shape)
    count = min(len(predictions), len(images))
    plot_predictions(
        images[:count],
        np.asarray(sample.labels[:count]),
        np.asarray(predictions[:count]),
        path,
        count=count,
    )
    return None
