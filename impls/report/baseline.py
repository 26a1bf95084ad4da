"""The report's *Baseline breakdown*: how much of the book's epoch is its input pipeline.

Read from the ``loader`` cases (d2l-reference's training epoch with N DataLoader
workers; with the book's number, the main run's ``epoch`` case, the same configuration)
and the ``loader-only`` cases (its loader iterated for an epoch with no
training, :class:`impls.results.LoaderResult`) of ``benchmarks/test_baseline_bench.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from impls.report.runs import Run
from impls.report.tables import NOISY_IQR_FRACTION
from impls.report.text import markdown_table, number
from impls.results import Measurement


def _seconds(entry: Measurement | None) -> str:
    """A median with its IQR, marked noisy past the report's rule; '—' if not measured."""
    if entry is None:
        return "—"
    noisy = entry.timing.iqr > NOISY_IQR_FRACTION * entry.median
    return f"{number(entry.median)} ({number(entry.timing.iqr, 2)})" + (" *noisy*" if noisy else "")


def breakdown_table(run: Run, *, with_machine: bool):
    """One row per implementation and number of workers: epoch, loader alone, its share."""
    import pandas as pd

    def by_point(kind: str) -> dict[tuple, Measurement]:
        return {
            (m.implementation, m.case.device, m.case.loader_workers): m for m in run.of_kind(kind)
        }

    epochs, alone = by_point("loader"), by_point("loader-only")
    # The main run's epochs stand for the point of its own configuration (the book's workers),
    # which the bench then does not train again.
    from_main = {
        (m.implementation, m.case.device, m.case.runtime.get("num_workers")): m
        for m in run.of_kind("epoch")
        if m.case.runtime.get("num_workers") is not None
    }
    main_points = {
        point for point in from_main if point not in epochs and point[:2] in {p[:2] for p in alone}
    }
    epochs.update({point: from_main[point] for point in main_points})
    rows = []
    for point in sorted(set(epochs) | set(alone)):
        impl, device, workers = point
        epoch, loader = epochs.get(point), alone.get(point)
        share = loader.median / epoch.median if epoch and loader else None
        row = {"machine": run.label} if with_machine else {}
        row.update(
            {
                "implementation": impl,
                "device": device,
                "DataLoader workers": workers,
                "training epoch [s] (IQR)": _seconds(epoch)
                + (" (main run)" if point in main_points else ""),
                "loader alone [s] (IQR)": _seconds(loader),
                "loader / epoch": "—" if share is None else f"{share:.0%}",
                "the rest [s]": number(epoch.median - loader.median) if share else "—",
            }
        )
        rows.append(row)
    return pd.DataFrame(rows) if rows else None


def baseline_section(runs: Sequence[Run], *, multi: bool) -> list[str]:
    """The *Baseline breakdown* section's Markdown lines; none without its measurements."""
    tables = [
        t for t in (breakdown_table(run, with_machine=multi) for run in runs) if t is not None
    ]
    if not tables:
        return []
    lines = [
        "## Baseline breakdown",
        "",
        "The book's pipeline (d2l-reference) streams every batch through torchvision's "
        "per-image `ToTensor` and a `DataLoader`; the book asks for 4 worker processes "
        "(`get_dataloader_workers`), the main run's setting. *Loader alone* iterates that "
        "loader for an epoch with no training (sampler, per-image transforms, workers, "
        "collation); *the rest* is what training adds, the framework's share. The loader's "
        "time overlaps training when it has workers, so *loader / epoch* is the input "
        "pipeline's weight, not a sum of parts. One warm-up epoch, then the timed ones; "
        "*(main run)*: the main run's epochs, which are that configuration, not trained again.",
        "",
    ]
    for table in tables:
        lines += [markdown_table(table), ""]
    return lines
