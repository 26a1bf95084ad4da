"""Every measurement as one pandas DataFrame, with the numbers that set one against another.

A measurement's own derived numbers (examples/s, GB/s, the compute rate and
floor, first epoch, time to accuracy) are the properties of
:class:`impls.results.Measurement` and its case, copied into the frame as they
are; the numbers that set one measurement against another (speed-up, × limit,
× floor, with and without the rounds in a spell) are computed here, and only here; the
change from the previous run is judged by :func:`impls.report.comparison.compare`.
pandas is imported inside :func:`results_frame`, not at import time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from impls.report.comparison import COLUMNS as COMPARISON_COLUMNS
from impls.report.comparison import compare
from impls.report.previous import pair_previous
from impls.report.runs import Run
from impls.report.seeds import seed_frame, seed_summary
from impls.results import IMAGE_SIZE, Measurement, StartupResult, TrainingResult, median_of

BASELINE = "d2l-reference"
MIB = 2**20


def _row(run: Run, index: int, entry: Measurement) -> dict[str, Any]:
    """One measurement's own numbers; the comparisons are added by :func:`results_frame`."""
    case, timing = entry.case, entry.timing
    row: dict[str, Any] = {
        "machine": run.label,
        "run": index,
        "kind": entry.kind,
        "group": entry.group,
        "name": entry.name,
        "implementation": entry.implementation,
        "device": case.device,
        "threads": getattr(case, "threads", None),
        "batch_size": getattr(case, "batch_size", None),
        "size": getattr(case, "size", IMAGE_SIZE),
        "replicas": getattr(case, "replicas", 1),
        "median_s": timing.median,
        "q1_s": timing.q1,
        "q3_s": timing.q3,
        "iqr_s": timing.iqr,
        "iqr_fraction": timing.iqr / timing.median,
        "rounds": timing.rounds,
        "spell_rounds": None if entry.spell_rounds is None else sum(entry.spell_rounds),
        "quiet_median_s": entry.quiet_median,
        "min_s": timing.min,
        "max_s": timing.max,
        "examples_per_s": entry.examples_per_second,
        "first_epoch_s": None,
        "final_test_accuracy": None,
        "time_to_accuracy_s": None,
        "peak_rss_mib": None,
        "peak_rss_children_mib": None,
        "peak_tree_pss_mib": None,
        "speedup_vs_baseline": None,
        "quiet_speedup_vs_baseline": None,
        "speedup_baseline_device": None,
        "speedup_spread": None,
        "limit_multiple": None,
        "limit_spread": None,
        "startup": None,
        "strategy": None,
        "what": getattr(case, "what", None),
        "build_s": None,
        "compile_s": None,
        "gigabytes_per_s": entry.gigabytes_per_second,
        "flops_per_s": entry.flops_per_second,
        "floor_s": entry.floor_seconds,
        "floor_multiple": None,
        "floor_limit_multiple": None,
    }
    if isinstance(case, TrainingResult):
        row.update(
            first_epoch_s=case.first_epoch_seconds,
            final_test_accuracy=case.final_test_accuracy,
            time_to_accuracy_s=case.time_to_accuracy_seconds,
            peak_rss_mib=mib(case.peak_rss_bytes),
            peak_rss_children_mib=mib(case.peak_rss_children_bytes),
            peak_tree_pss_mib=mib(case.peak_tree_pss_bytes),
            build_s=case.build_seconds,
            strategy=case.runtime.get("strategy"),
        )
    elif isinstance(case, StartupResult):
        row.update(
            startup=case.startup,
            first_epoch_s=median_of(case.first_epoch_seconds),
            build_s=median_of(case.build_seconds),
            compile_s=median_of(case.compile_seconds),
        )
    return row


def results_frame(
    runs: Sequence[Run],
    previous: Sequence[Run] = (),
    pairs: dict[int, tuple[Run, bool]] | None = None,
):
    """Every measurement of every run as one numeric DataFrame (one row per benchmark).

    Columns: machine, run, kind, group, name, implementation, device, threads,
    batch_size, size (the images' side), replicas (data-parallel), median_s, q1_s, q3_s,
    iqr_s, iqr_fraction (IQR / median), rounds, spell_rounds (how many of them ran during a
    spell of the host) and quiet_median_s (the median of the others; both None where not
    recorded), min_s, max_s, examples_per_s, first_epoch_s, final_test_accuracy,
    time_to_accuracy_s, peak_rss_mib, peak_rss_children_mib, peak_tree_pss_mib, startup, what,
    build_s, compile_s, gigabytes_per_s (the limit row's read rate), flops_per_s
    and floor_s (the compute row: its rate, and an epoch's products at that
    rate); then the comparisons: speedup_vs_baseline (epoch rows: the
    baseline's median on the same device, else on the CPU, / this median) and
    speedup_baseline_device (the device of that baseline median: not the row's
    own when the CPU baseline stood in), quiet_speedup_vs_baseline (the same with both
    quiet medians), limit_multiple (epoch
    and limit rows: median / the limit's median), floor_multiple (epoch rows:
    median / floor_s), floor_limit_multiple (the compute row: floor_s / the
    limit's median), speedup_spread and limit_spread (the relative spread of
    those two ratios, :func:`_spread`) and, when a previous run matches, previous_median_s,
    compared_median_s, delta_s, delta_pct, p_value, noise_s, rule, verdict
    (:func:`impls.report.comparison.compare`). Start-up rows give
    the median over their rounds of ``first_epoch_s``, ``build_s`` and
    ``compile_s`` where they have them, and training rows their seeds' accuracy and time to
    result (:func:`impls.report.seeds.seed_summary`). ``pairs``: :func:`pair_previous` of
    ``runs`` and ``previous``, when the caller has it already.
    """
    import pandas as pd

    if pairs is None:
        pairs = pair_previous(runs, previous)
    rows = []
    for index, run in enumerate(runs):
        limit, compute = run.limit, run.compute
        floor = compute.floor_seconds if compute is not None else None
        of_baseline = [e for e in run.of_kind("epoch") if e.implementation == BASELINE]
        baselines = {e.case.device: e.median for e in of_baseline}
        quiet_baselines = {e.case.device: e.quiet_median for e in of_baseline}
        spreads = {e.case.device: e for e in of_baseline}
        previous_entries = {}
        if index in pairs:
            previous_entries = {e.key(): e for e in pairs[index][0].entries}
        for entry in run.entries:
            row = _row(run, index, entry)
            if entry.kind == "epoch":
                device = entry.case.device if entry.case.device in baselines else "cpu"
                if device in baselines:  # else no baseline on this machine
                    row["speedup_vs_baseline"] = baselines[device] / entry.median
                    row["speedup_spread"] = _spread(entry, spreads[device])
                    row["speedup_baseline_device"] = device
                    quiet = (quiet_baselines[device], entry.quiet_median)
                    if None not in quiet:
                        row["quiet_speedup_vs_baseline"] = quiet[0] / quiet[1]
                if floor is not None:
                    row["floor_multiple"] = entry.median / floor
            if entry.kind in ("epoch", "limit") and limit is not None:
                row["limit_multiple"] = entry.median / limit.median
                row["limit_spread"] = _spread(entry, limit)
            if entry.kind == "compute" and limit is not None:
                row["floor_limit_multiple"] = row["floor_s"] / limit.median
            before = previous_entries.get(entry.key())
            if before is not None:
                row.update(compare(entry, before))
            rows.append(row)
    frame = pd.DataFrame(rows)
    for column in COMPARISON_COLUMNS:
        if column not in frame:
            frame[column] = None
    return frame.merge(seed_summary(seed_frame(runs)), on=["run", "name"], how="left")


def _spread(one: Measurement, other: Measurement) -> float:
    """The relative spread of one median over another: their IQR / median, added in
    quadrature (what a ratio's digits are rounded to)."""
    return math.hypot(*(m.timing.iqr / m.timing.median for m in (one, other)))


def mib(value: int | None) -> float | None:
    """Bytes in MiB, or None."""
    return value / MIB if value is not None else None
