"""The report's *Data parallel* section: each engine's epoch at R replicas, the threads held equal.

Read from the replicas sweep's cases (kind ``replicas``, ``benchmarks/test_replicas_bench.py``).
Per implementation and device the R=1 point, timed beside the others, is the reference: the
speed-up is its median over R's, the scaling efficiency the speed-up over R. The time spent
communicating is the trainer's own clock (:attr:`impls.results.EpochRecord.communication_seconds`)
over the timed epochs, where the engine lets it be measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from impls.report.frame import mib
from impls.report.runs import Run
from impls.report.tables import noisy_mark
from impls.report.text import markdown_table, number, plural, rounded
from impls.results import Measurement, TrainingResult, communication_medians
from impls.run_info import RegistryEntry, timed_epoch_numbers

# What a trainer's runtime_info says of its communication clock: what it covers, or why
# the engine leaves nothing to time apart.
CLOCK_KEY = "communication_clock"
NO_CLOCK = "the trainer reports no clock of its own for combining gradients"
UNSAID_CLOCK = "timed by the trainer, which does not say what its clock covers"


@dataclass(frozen=True)
class Point:
    """One implementation at R replicas: its measurement and its case."""

    entry: Measurement
    case: TrainingResult

    @property
    def spread(self) -> float:
        return self.entry.timing.iqr / self.entry.timing.median

    def communication(self, schedule: str) -> tuple[float, float] | None:
        """The median seconds communicating per timed epoch and their median share of it."""
        epochs = timed_epoch_numbers(len(self.case.history), schedule)
        return communication_medians([self.case.history[epoch - 1] for epoch in epochs])


def replica_points(run: Run) -> dict[tuple[str, str], dict[int, Point]]:
    """``run``'s replicas sweep: (implementation, device) -> replicas -> point."""
    points: dict[tuple[str, str], dict[int, Point]] = {}
    for entry, case in run.trained("replicas"):
        points.setdefault((case.implementation, case.device), {})[case.replicas] = Point(
            entry, case
        )
    return points


def _seconds(point: Point) -> str:
    """'median (IQR)', the median rounded to what its IQR allows, marked noisy."""
    timing = point.entry.timing
    return f"{rounded(timing.median, point.spread)} ({number(timing.iqr, 2)})" + noisy_mark(
        point.spread
    )


def _rounds(point: Point) -> str:
    """The timed rounds, and how many of them ran in a spell of the host."""
    marks = point.entry.spell_rounds
    spells = sum(marks) if marks else 0
    return str(point.entry.timing.rounds) + (f" ({spells} in a spell)" if spells else "")


def _memory(case: TrainingResult) -> str:
    """At R>1, the worker's peak RSS and with the processes it started for its replicas
    (DDP's). R=1 runs in the main run's worker, whose peak holds every earlier measurement
    of it (the input-size sweep's 3 GB at 112 × 112): the main table has its memory."""
    if case.replicas == 1:
        return "main table"
    own, tree = mib(case.peak_rss_bytes), mib(case.peak_tree_pss_bytes)
    return number(own, 3) + (f" ({number(tree, 3)} with its processes)" if tree else "")


def _ratio(value: float | None, spread: float | None, replicas: int, unit: str) -> str:
    """A ratio to R=1, rounded to what both IQRs allow; R=1's own is the reference."""
    if replicas == 1 and value is not None:
        return "reference"
    return "—" if value is None else f"{rounded(value, spread)}{unit}"


def _engine(run: Run, impl: str, case: TrainingResult) -> str:
    """The implementation's data-parallel engine, as the run's registry named it."""
    entry = (run.fmbench.registry or {}).get(impl, RegistryEntry())
    return entry.data_parallel or str(case.runtime.get("data_parallel") or "—")


def replicas_table(run: Run, *, with_machine: bool):
    """One row per implementation, device and number of replicas."""
    import pandas as pd

    schedule = run.settings.schedule
    rows = []
    for (impl, device), points in sorted(replica_points(run).items()):
        reference = points.get(1)
        for replicas, point in sorted(points.items()):
            case = point.case
            speedup = spread = None
            if reference is not None:
                speedup = reference.entry.median / point.entry.median
                spread = math.hypot(reference.spread, point.spread)
            measured = point.communication(schedule)
            if replicas == 1:
                seconds = share = "— (one replica)"
            elif measured is None:
                apart = any(v is not None for v in (case.communication_apart or {}).values())
                seconds, share = ("measured apart (below)" if apart else "not measured"), "—"
            else:
                seconds, share = number(measured[0], 2), f"{measured[1]:.1%}"
            accuracy = case.final_test_accuracy
            change = None if reference is None else accuracy - reference.case.final_test_accuracy
            row = {"machine": run.label} if with_machine else {}
            row.update(
                {
                    "implementation": impl,
                    "device": device,
                    "engine": _engine(run, impl, case),
                    "replicas": replicas,
                    "threads per replica": case.threads_per_replica,
                    "epoch [s] median (IQR)": _seconds(point),
                    "rounds": _rounds(point),
                    "speed-up vs 1": _ratio(speedup, spread, replicas, "×"),
                    "efficiency": _ratio(
                        None if speedup is None else speedup / replicas, spread, replicas, ""
                    ),
                    "communication [s/epoch]": seconds,
                    "of the epoch": share,
                    f"test acc. (epoch {len(case.history)})": f"{accuracy:.4f}",
                    "Δ acc. vs 1": "—" if change is None else f"{change:+.4f}",
                    "peak RSS [MiB]": _memory(case),
                }
            )
            rows.append(row)
    return pd.DataFrame(rows) if rows else None


def _apart_text(measured: dict[str, float | None]) -> str:
    """A trainer's measurements apart from the epochs, by name: 'collective 0.012 s, ...'."""
    parts = [
        f"{name.removesuffix('_seconds').replace('_', ' ')} "
        + ("—" if seconds is None else f"{number(seconds, 2)} s")
        for name, seconds in measured.items()
    ]
    return ", ".join(parts)


def _clock_lines(runs: Sequence[Run]) -> list[str]:
    """Per implementation (and run, when several): what its communication clock covers, or
    why it has none, and what its trainer measured apart from the timed epochs."""
    lines = []
    for run in runs:
        for (impl, device), points in sorted(replica_points(run).items()):
            name = impl if device == "cpu" else f"{impl} ({device})"
            if len(runs) > 1:
                name += f", {run.label}"
            beyond = [(r, p) for r, p in sorted(points.items()) if r > 1]
            if not beyond:
                continue
            clock = beyond[0][1].case.runtime.get(CLOCK_KEY)
            timed = any(p.communication(run.settings.schedule) for _, p in beyond)
            text = str(clock) if clock else (UNSAID_CLOCK if timed else NO_CLOCK)
            apart = [
                f"{_apart_text(p.case.communication_apart)} at {plural(r, 'replica')}"
                for r, p in beyond
                if p.case.communication_apart
            ]
            if apart:
                text += "; measured apart from the timed epochs, untimed: " + "; ".join(apart)
            lines.append(f"- *{name}*: {text}.")
    return lines


def replicas_section(runs: Sequence[Run], *, multi: bool) -> list[str]:
    """The *Data parallel* section's Markdown lines; none without a replicas sweep."""
    tables = [t for t in (replicas_table(run, with_machine=multi) for run in runs) if t is not None]
    if not tables:
        return []
    threads = sorted({case.threads for run in runs for _, case in run.trained("replicas")})
    lines = ["## Data parallel", ""]
    for table in tables:
        lines += [markdown_table(table), ""]
    lines += [
        "R replicas train one run by synchronous SGD on the shared global minibatches: each "
        "replica takes its share of every batch and the framework's own engine combines the "
        "gradients, weighted by examples, so that every step is the single-device step and "
        "the test accuracy should match R=1's (*Δ acc.*, after the same epochs from the same "
        "seed). The threads are held equal: the run's "
        f"{' / '.join(plural(t, 'thread') for t in threads)} shared as threads/R per replica, "
        "so that a point differs from R=1 by the engine alone, not by more cores. R=1 is the "
        "main configuration (one device), timed again here beside the others: each point "
        "runs in a worker process of its own, built and warmed up before any is timed, and "
        "the points' visits alternate as the main run's implementations do (an untimed "
        "epoch, then the timed ones; no evaluation inside the clock), so a spell of the host "
        "hits them alike. *Speed-up*: R=1's median / this median; *efficiency*: speed-up / "
        "R (1 would be perfect scaling); both rounded to the digits the two IQRs leave. "
        "*Communication*: the median, over the timed epochs, of the seconds the trainer "
        "itself timed combining gradients (its own clock, inside `train_epoch`), and the "
        "median of its share of those epochs; *not measured* where the "
        "engine leaves nothing to time apart inside an epoch (XLA's all-reduce inside a compiled "
        "program), *measured apart* where the trainer measured it outside the timed epochs "
        "instead (below). *Peak RSS*: the worker's, and with the "
        "processes it started (DDP's replicas), their proportional set sizes summed; R=1 runs "
        "in the main run's worker, whose peak holds its earlier measurements too (the main "
        "table has its memory). What each clock covers:",
        "",
        *_clock_lines(runs),
        "",
    ]
    return lines
