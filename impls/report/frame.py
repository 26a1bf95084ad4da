"""Every measurement as one pandas DataFrame, and the rule that flags a change.

pandas is imported inside :func:`results_frame`, not at import time.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from impls.report.runs import Entry, Run, _number, _pair_previous

BASELINE = "d2l-reference"
# A run is flagged slower (or faster) than the previous one when its median moved
# by more than the larger of both runs' IQRs and by more than this fraction.
RELATIVE_NOISE_FLOOR = 0.10


def compare(current: Entry, previous: Entry) -> dict[str, Any]:
    """The change from ``previous`` to ``current`` and whether it is beyond the noise.

    Rule: the median moved by more than max(IQR of both runs, 10 % of the
    previous median). Slower is a regression, faster an improvement. The
    floor is there because back-to-back runs of the same code on a shared VM
    differ by more than either run's IQR.
    """
    delta = current.median - previous.median
    noise = max(current.stats["iqr"], previous.stats["iqr"], RELATIVE_NOISE_FLOOR * previous.median)
    verdict = "within noise"
    if delta > noise:
        verdict = "regression"
    elif -delta > noise:
        verdict = "improvement"
    return {
        "previous_median_s": previous.median,
        "delta_s": delta,
        "delta_pct": 100.0 * delta / previous.median,
        "noise_s": noise,
        "verdict": verdict,
    }


def results_frame(runs: Sequence[Run], previous: Sequence[Run] = ()):
    """Every measurement of every run as one numeric DataFrame (one row per benchmark).

    Columns: machine, run, kind, group, implementation, device, threads,
    batch_size, median_s, q1_s, q3_s, iqr_s, rounds, min_s, max_s,
    examples_per_s, first_epoch_s, final_test_accuracy, time_to_accuracy_s,
    peak_rss_mib, speedup_vs_baseline, limit_multiple, startup, what, build_s,
    compile_s, flops_per_s and floor_s (the compute row: its rate, and an epoch's
    products at that rate), floor_multiple (epoch rows: median / floor_s), and,
    when a previous run
    matches, previous_median_s, delta_s, delta_pct, noise_s, verdict. Start-up
    rows give the median over their rounds of ``first_epoch_s``, ``build_s`` and
    ``compile_s`` where they have them.
    """
    import pandas as pd

    pairs = _pair_previous(runs, previous)
    rows = []
    for index, run in enumerate(runs):
        limit = run.limit
        compute = run.compute
        rate = compute.info["flops_per_call"] / compute.median if compute else None
        floor = compute.info["epoch_flops"] / rate if compute else None
        baselines = {
            e.info["device"]: e.median for e in run.of_kind("epoch") if e.implementation == BASELINE
        }
        previous_entries = {}
        if index in pairs:
            previous_entries = {e.key(): e for e in pairs[index][0].entries}
        for entry in run.entries:
            info, stats = entry.info, entry.stats
            row: dict[str, Any] = {
                "machine": run.label,
                "run": index,
                "kind": entry.kind,
                "group": entry.group,
                "name": entry.name,
                "implementation": entry.implementation,
                "device": info.get("device"),
                "threads": info.get("threads"),
                "batch_size": info.get("batch_size"),
                "median_s": stats["median"],
                "q1_s": stats["q1"],
                "q3_s": stats["q3"],
                "iqr_s": stats["iqr"],
                "rounds": int(stats["rounds"]),
                "min_s": stats["min"],
                "max_s": stats["max"],
                "examples_per_s": (info["num_train"] / stats["median"])
                if "num_train" in info
                else None,
                "first_epoch_s": info.get("first_epoch_seconds"),
                "final_test_accuracy": info.get("final_test_accuracy"),
                "time_to_accuracy_s": info.get("time_to_accuracy_seconds"),
                "peak_rss_mib": _mib(info.get("peak_rss_bytes")),
                "peak_rss_children_mib": _mib(info.get("peak_rss_children_bytes")),
                "speedup_vs_baseline": None,
                "limit_multiple": None,
                "startup": info.get("startup"),
                "what": info.get("what"),
                "build_s": _median(info.get("build_seconds")),
                "compile_s": _median(info.get("compile_seconds")),
                "flops_per_s": rate if entry.kind == "compute" else None,
                "floor_s": floor if entry.kind == "compute" else None,
                "floor_multiple": None,
            }
            if entry.kind == "startup":
                row["first_epoch_s"] = _median(info.get("first_epoch_seconds"))
            if entry.kind == "epoch":
                baseline = baselines.get(info["device"], baselines.get("cpu"))
                if baseline is not None:
                    row["speedup_vs_baseline"] = baseline / stats["median"]
            if entry.kind in ("epoch", "limit") and limit is not None:
                row["limit_multiple"] = stats["median"] / limit.median
            if entry.kind == "epoch" and floor is not None:
                row["floor_multiple"] = stats["median"] / floor
            before = previous_entries.get(entry.key())
            if before is not None:
                row.update(compare(entry, before))
            rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ("previous_median_s", "delta_s", "delta_pct", "noise_s", "verdict"):
        if column not in frame:
            frame[column] = None
    return frame


def _median(values: Any) -> float | None:
    """The median of a list of numbers (a start-up round each), a number as is, else None."""
    if _number(values):
        return float(values)
    numbers = [v for v in values if _number(v)] if isinstance(values, list) else []
    return statistics.median(numbers) if numbers else None


def _mib(value: Any) -> float | None:
    """Bytes in MiB, or None when not a number."""
    return value / 2**20 if _number(value) else None
