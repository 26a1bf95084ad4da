"""Spells of the host in the report: the schedule that spreads them, the rounds they hit.

A spell is a stretch of seconds in which a shared machine runs this run's threads
slower, whatever the code. The run's schedule (``RunSettings.schedule``) decides whether
a spell lands on every implementation alike (round-robin) or on one (blocks); its canary
(``RunSection.canary``) marks the timed rounds that ran during one
(``Measurement.spell_rounds``). This module writes the Method's bullets on both and the
table giving the main run's medians and speed-ups with and without those rounds (the
numbers are the frame's: :mod:`.frame`).
"""

from __future__ import annotations

from collections.abc import Sequence

from impls.report.frame import BASELINE
from impls.report.runs import Run
from impls.report.text import markdown_table, number, present, rounded
from impls.run_info import VISIT_PAUSE_SECONDS, VISIT_TIMED, Canary

SCHEDULE_TEXT = {
    "round-robin": (
        "round-robin: a visit to each implementation in turn, each in its own persistent "
        f"worker: one untimed epoch that warms its threads and caches again after the "
        f"others' epochs, then {VISIT_TIMED} timed ones; each cycle in a shuffled order unlike "
        "the one before, so that a spell of the host (seconds in which a shared machine runs "
        "the same code up to 3× slower) falls on every implementation alike instead of on one "
        "implementation's rounds, and the ratios between them hold"
    ),
    "blocks": (
        "blocks: each implementation's timed rounds back to back (`--schedule blocks`, and "
        "every run written before schema 3), so a spell of the host that falls on one "
        "implementation's block slows that row alone and moves every ratio in it; the "
        "round-robin schedule spreads a spell over all of them"
    ),
}


def method_lines(runs: Sequence[Run]) -> list[str]:
    """The Method's bullets on the schedule of the timed rounds and on the canary."""
    by_schedule: dict[str, list[str]] = {}
    for run in runs:
        by_schedule.setdefault(run.settings.schedule, []).append(run.label)
    if len(by_schedule) == 1:
        (name,) = by_schedule
        schedule = f"- **Schedule** of the main run's timed rounds: {SCHEDULE_TEXT[name]}."
    else:
        schedule = (
            "- **Schedule** of the main run's timed rounds, which differs between the runs: "
            + (
                "; ".join(
                    f"{SCHEDULE_TEXT[name]} ({', '.join(labels)})"
                    for name, labels in by_schedule.items()
                )
            )
            + "."
        )
    lines = [schedule]
    canaries = [(run, run.fmbench.canary) for run in runs]
    if any(canary is not None for _, canary in canaries):
        multi = len(runs) > 1
        parts = [
            _canary_text(canary, run.label if multi else None, run.fmbench.schema)
            for run, canary in canaries
            if canary is not None
        ]
        missing = [run.label for run, canary in canaries if canary is None]
        text = "- **Spells**: " + " ".join(parts)
        if missing:
            text += f" No canary was recorded in {', '.join(missing)} (written before schema 3)."
        lines.append(
            text + " *Rounds in a spell* gives the main medians and speed-ups with and "
            "without the rounds so marked."
        )
    else:
        lines.append(
            "- **Spells**: no canary was recorded (runs written before schema 3), so the "
            "rounds that ran during a spell of the host cannot be told apart; the Noise "
            "table's spread is the only sign of one."
        )
    return lines


# How the canary sat before schema 5, and what that cost: said once, for every old run.
BEFORE_SCHEMA_5 = (
    "the canary, after a 50 ms pause in most such runs, came just before every timed round, "
    "which slowed the shortest epochs (Numba's by up to half)"
)


def _canary_text(canary: Canary, label: str | None, schema: int) -> str:
    """How one run's canary marks spells, and how many of its canaries were slow."""
    where = f" ({label})" if label else ""
    if schema >= 5:
        cadence = (
            f"each visit opens with a {1000 * VISIT_PAUSE_SECONDS:g} ms pause and a "
            f"canary{where}, {canary.what}, and its epochs then run back to back, as "
            "`fmbench train` runs them; a round counts as in a spell when the canary of its "
            "visit or of the next"
        )
    else:
        cadence = (
            f"before every timed round the run timed a canary{where}, {canary.what} (a run "
            f"written before schema 5: {BEFORE_SCHEMA_5}); a round counts as in a spell when "
            "the canary just before or just after it"
        )
    return (
        f"{cadence} took more than {canary.threshold:g}× the run's quiet canary (their lower "
        f"quartile, {number(1000 * canary.quiet)} ms): {canary.slow} of "
        f"{len(canary.seconds)} canaries did."
    )


def pause_caveat(runs: Sequence[Run]) -> str:
    """A caveat when runs with a canary before every timed round (before schema 5) are
    compared with runs whose visits' rounds ran back to back."""
    old = [run for run in runs if run.fmbench.schema < 5 and run.fmbench.canary is not None]
    if not old or all(run.fmbench.schema < 5 for run in runs):
        return ""
    return (
        f" In the runs written before schema 5 ({', '.join(run.label for run in old)}) "
        f"{BEFORE_SCHEMA_5}; from schema 5 a visit's timed rounds run back to back: "
        "*compare such runs with care*."
    )


def _started(spell) -> str:
    """Whether the spell's burners started (files that name them), as a clause."""
    if spell.pids is None:
        return ""
    return "" if spell.pids else " (it never started: the main run ended first)"


def _injected_lines(runs: Sequence[Run], multi: bool) -> list[str]:
    """One line per spell a run made on purpose (``--inject-spell``)."""
    lines = []
    for run in runs:
        for spell in run.fmbench.injected_spells or ():
            lines.append(
                f"- Injected on purpose (`--inject-spell`){f' in {run.label}' if multi else ''}: "
                f"{spell.processes} CPU-burning process{'es' if spell.processes > 1 else ''} "
                f"for {spell.seconds:g} s from {spell.start_seconds:g} s after the first "
                f"timed epoch began{_started(spell)}."
            )
    return lines


def spell_table(frame, *, with_machine: bool):
    """The main run's rows with spell marks: rounds hit, medians and speed-ups with and
    without them (None when no run recorded marks)."""
    import pandas as pd

    rows = frame[(frame["kind"] == "epoch") & frame["spell_rounds"].map(present)]
    if rows.empty:
        return None
    table = []
    for _, row in rows.sort_values(["run", "median_s"]).iterrows():
        record = {"machine": row["machine"]} if with_machine else {}
        record.update(
            {
                "implementation": row["implementation"],
                "device": row["device"] or "—",
                "timed rounds in a spell": f"{int(row['spell_rounds'])} of {int(row['rounds'])}",
                "epoch [s], all rounds": rounded(row["median_s"], row["iqr_fraction"]),
                "epoch [s], quiet rounds": rounded(row["quiet_median_s"], row["iqr_fraction"]),
                "speed-up, all rounds": _times(row["speedup_vs_baseline"], row),
                "speed-up, quiet rounds": _times(row["quiet_speedup_vs_baseline"], row),
            }
        )
        table.append(record)
    return pd.DataFrame(table)


def _times(value, row) -> str:
    """A speed-up as 'N×', rounded to what the row's spread allows, or '—'."""
    return f"{rounded(value, row['speedup_spread'])}×" if present(value) else "—"


def spell_lines(runs: Sequence[Run], frame) -> list[str]:
    """The *Rounds in a spell* section (nothing when no run recorded spell marks)."""
    multi = len(runs) > 1
    table = spell_table(frame, with_machine=multi)
    injected = _injected_lines(runs, multi)
    if table is None:
        return ["### Rounds in a spell", "", *injected, ""] if injected else []
    lines = ["### Rounds in a spell", ""]
    marked = frame[(frame["kind"] == "epoch") & frame["spell_rounds"].map(present)]
    if not marked["spell_rounds"].sum():
        lines.append(
            "No timed round of the main run ran during a spell of the host (by the canary: "
            "see Method)."
        )
    else:
        lines += [
            "Timed rounds of the main run that ran during a spell of the host (by the canary: "
            f"see Method), and each implementation's median and speed-up vs {BASELINE} with "
            "all its rounds and with the quiet ones alone (its rounds outside a spell).",
            "",
            markdown_table(table),
        ]
    lines += ["", *injected] if injected else []
    return [*lines, ""]
