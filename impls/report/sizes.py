"""The report's *Input size* section: the epoch against the pixels per image, with both floors.

Read from the runs' measurements (:mod:`impls.results`): the input-size sweep's
``size`` cases and the floors measured at each size (``size-limit``,
``size-compute``); the native 28 × 28 point is the main run (``epoch``, the
``limit`` and the ``compute`` floor). The numbers that set a point against
another (× limit, × floor, the fitted exponent) are computed here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from impls.config import LR_RULE
from impls.report.runs import Run
from impls.report.text import markdown_table, number
from impls.results import IMAGE_SIZE, Measurement, TrainingResult


@dataclass
class Point:
    """One implementation at one size: its measurement and the test accuracy compared."""

    entry: Measurement
    case: TrainingResult
    accuracy: float | None  # after the sweep's epochs (the main run: at that same epoch)


@dataclass
class SizeSweep:
    """One run's input-size sweep: each implementation's points and both floors, by size."""

    run: Run
    epochs: int  # epochs before the accuracy compared (the sweep's warm-up + rounds)
    points: dict[tuple[str, str], dict[int, Point]] = field(default_factory=dict)
    limits: dict[int, Measurement] = field(default_factory=dict)
    floors: dict[int, Measurement] = field(default_factory=dict)

    @property
    def sizes(self) -> list[int]:
        return sorted({size for points in self.points.values() for size in points})


def size_sweep(run: Run) -> SizeSweep | None:
    """``run``'s input-size sweep with its native point, or None when it ran none."""
    swept = run.trained("size")
    if not swept:
        return None
    epochs = max(len(case.history) for _, case in swept)
    sweep = SizeSweep(run, epochs)
    for entry, case in swept:
        sweep.points.setdefault((case.implementation, case.device), {})[case.size] = Point(
            entry, case, case.final_test_accuracy
        )
    for entry, case in run.trained("epoch"):  # the native point: the main run
        record = case.history[min(epochs, len(case.history)) - 1]
        sweep.points.setdefault((case.implementation, case.device), {})[IMAGE_SIZE] = Point(
            entry, case, record.test_accuracy
        )
    for entry in run.entries:
        size = getattr(entry.case, "size", IMAGE_SIZE)
        if entry.kind in ("limit", "size-limit"):
            sweep.limits.setdefault(size, entry)
        elif entry.kind in ("compute", "size-compute"):
            sweep.floors.setdefault(size, entry)
    return sweep


def fitted_exponent(sizes: Sequence[int], seconds: Sequence[float]) -> float | None:
    """The slope of log(seconds) against log(pixels per image), least squares; None below
    two sizes. 1.0: the time grows in proportion to the pixels."""
    if len(sizes) < 2:
        return None
    xs = [math.log(size * size) for size in sizes]
    ys = [math.log(value) for value in seconds]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def _curves(sweep: SizeSweep) -> dict[str, tuple[list[int], list[float]]]:
    """Each implementation's (sizes, median seconds), then the floors', by label."""
    curves = {}
    for (impl, device), points in sweep.points.items():
        label = impl if device == "cpu" else f"{impl} ({device})"
        sizes = sorted(points)
        curves[label] = (sizes, [points[size].entry.median for size in sizes])
    limit_sizes = sorted(sweep.limits)
    curves["limit (read once)"] = (limit_sizes, [sweep.limits[s].median for s in limit_sizes])
    floor_sizes = sorted(sweep.floors)
    curves["compute floor"] = (floor_sizes, [sweep.floors[s].floor_seconds for s in floor_sizes])
    return curves


def size_table(sweep: SizeSweep, size: int, *, with_machine: bool):
    """One row per implementation at ``size``: epoch, examples/s, × both floors, accuracy."""
    import pandas as pd

    limit, floor = sweep.limits.get(size), sweep.floors.get(size)
    rows = []
    for (impl, device), points in sweep.points.items():
        point = points.get(size)
        if point is None:
            continue
        median = point.entry.median
        row = {"machine": sweep.run.label} if with_machine else {}
        row.update(
            {
                "implementation": impl,
                "device": device,
                "epoch (s)": f"{number(median)} ({number(point.entry.timing.iqr, 2)})",
                "examples/s": f"{point.entry.examples_per_second:,.0f}",
                "× limit": f"{number(median / limit.median)}×" if limit else "—",
                "× compute floor": f"{number(median / floor.floor_seconds)}×" if floor else "—",
                f"test acc. (epoch {sweep.epochs})": number(point.accuracy),
                "lr": number(point.case.learning_rate),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows).sort_values("implementation") if rows else None


def plot_sizes(sweep: SizeSweep, path: Path) -> Path:
    """Log-log: median epoch against pixels per image, each implementation and both floors."""
    from impls.figures import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
    for label, (sizes, seconds) in _curves(sweep).items():
        if not sizes:
            continue
        exponent = fitted_exponent(sizes, seconds)
        text = f"{label} (exponent {exponent:.2f})" if exponent is not None else label
        is_floor = label in ("limit (read once)", "compute floor")
        style = {"linestyle": "--", "color": "#777777" if "limit" in label else "#000000"}
        ax.plot(
            [size * size for size in sizes],
            seconds,
            marker="" if is_floor else "o",
            label=text,
            **(style if is_floor else {}),
        )
    pixels = [size * size for size in sweep.sizes]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(pixels, [f"{size}×{size}\n{size * size}" for size in sweep.sizes])
    ax.minorticks_off()
    ax.set_xlabel("pixels per image (log scale)")
    ax.set_ylabel("seconds per epoch (median; log scale)")
    ax.set_title(f"Epoch time against input size — {sweep.run.label}", fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def size_section(runs: Sequence[Run], figures: Path, rel: str, *, multi: bool) -> list[str]:
    """The *Input size* section's Markdown lines, drawing its figures; none without a sweep."""
    sweeps = [sweep for sweep in map(size_sweep, runs) if sweep is not None]
    if not sweeps:
        return []
    lines = [
        "## Input size",
        "",
        "The book's loader takes a size (`load_data_fashion_mnist(batch_size, resize=64)`): "
        "each implementation trained on the images resized bit for bit as torchvision's "
        "`Resize` does (cached once resized; d2l-reference resizes every image every epoch "
        f"in its loader's workers, as the book does). Learning rate: {LR_RULE}. "
        "Each swept size is one warm-up epoch and then the timed ones, without evaluation in "
        "between; 28 × 28 is the main run. *× limit* and *× compute floor* set the median "
        "against both floors measured at that size. Test accuracy after the same number of "
        "epochs at every size.",
        "",
    ]
    for index, sweep in enumerate(sweeps):
        for size in sweep.sizes:
            table = size_table(sweep, size, with_machine=multi)
            if table is not None:
                lines += [f"### {size} × {size}", "", markdown_table(table), ""]
        name = "input_size.png" if len(sweeps) == 1 else f"input_size_{index + 1}.png"
        plot_sizes(sweep, figures / name)
        exponents = []
        for label, (sizes, seconds) in _curves(sweep).items():
            exponent = fitted_exponent(sizes, seconds)
            if exponent is not None:
                exponents.append(f"{label} {exponent:.2f}")
        lines += [
            f"![Epoch time against pixels per image]({rel}/{name})",
            "",
            "Fitted exponents (slope of log epoch time against log pixels per image; 1.0 = "
            "linear in pixels): " + ", ".join(exponents) + ".",
            "",
        ]
    return lines
