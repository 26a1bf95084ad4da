"""Comparing a measurement with the same one in the previous run, and the rules that flag a change.

With every round's seconds on both sides (``Timing.data``, schema 3), the two runs'
rounds are compared as asv compares them: a two-sided Mann-Whitney U test
(:func:`scipy.stats.mannwhitneyu`) says whether they differ, and the ratio of their
medians says by how much; a change is flagged only when it is both significant
(p < :data:`SIGNIFICANCE`) and large (by more than :data:`MIN_CHANGE`). Rounds the run
marked as in a spell of the host (``Measurement.spell_rounds``) are left out of its
sample: a spell is the machine's, not the code's.

Without per-round data on either side (older files), or with too few rounds (outside
spells) for the test ever to reach significance, the older rule stands: the median moved
by more than the larger of both runs' IQRs and by more than :data:`MIN_CHANGE`. Each
comparison says which rule it used. scipy is imported inside :func:`compare`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from impls.report.runs import Run
from impls.report.text import number, plural
from impls.results import SIZE_KINDS, Measurement

SIGNIFICANCE = 0.05  # the U test's p value below which two runs' rounds differ
# The change a flag needs, by either rule: the medians differ by more than this fraction of
# the previous one. Back-to-back quiet runs of the same code on a shared VM differ by a
# few per cent, which a test on many rounds can find significant.
MIN_CHANGE = 0.10
U_TEST = "U test"
IQR_RULE = "IQR rule"
COLUMNS = (
    "previous_median_s", "compared_median_s", "delta_s", "delta_pct", "p_value", "noise_s",
    "rule", "verdict",
)  # fmt: skip


def samples(
    current: Measurement, previous: Measurement
) -> tuple[list[float] | None, list[float] | None]:
    """The rounds the test compares: each run's rounds outside a spell (every round, where a
    run marked none); None when not stored, or when too few are left for the test (the IQR
    rule judges then: one run's few quiet rounds against the other's all would compare
    the host, not the code)."""
    now, before = _outside_spells(current), _outside_spells(previous)
    if now is not None and before is not None and can_be_significant(len(now), len(before)):
        return now, before
    return None, None


def _outside_spells(measurement: Measurement) -> list[float] | None:
    """A run's rounds outside a spell; every round where it marked none (None: not stored)."""
    quiet = measurement.quiet_rounds
    return quiet if quiet is not None else measurement.timing.data


def can_be_significant(size: int, other_size: int) -> bool:
    """Whether a two-sided U test on samples of these sizes can reach :data:`SIGNIFICANCE`
    (its smallest p value, samples wholly apart, is 2 / C(size + other_size, size))."""
    return size > 0 and other_size > 0 and 2 / math.comb(size + other_size, size) < SIGNIFICANCE


def compare(current: Measurement, previous: Measurement) -> dict[str, Any]:
    """The change from ``previous`` to ``current``, the rule it was judged by, the verdict.

    Keys (:data:`COLUMNS`): previous_median_s and compared_median_s (the medians compared),
    delta_s, delta_pct, p_value (U test) or noise_s (IQR rule), rule, verdict (regression,
    improvement or within noise).
    """
    now, before = samples(current, previous)
    if now is not None and before is not None:
        from scipy.stats import mannwhitneyu

        p_value = float(mannwhitneyu(now, before, alternative="two-sided").pvalue)
        now_median, before_median = statistics.median(now), statistics.median(before)
        delta = now_median - before_median
        beyond = p_value < SIGNIFICANCE and abs(delta) > MIN_CHANGE * before_median
        return _result(now_median, before_median, beyond, rule=U_TEST, p_value=p_value)
    delta = current.median - previous.median
    noise = max(current.timing.iqr, previous.timing.iqr, MIN_CHANGE * previous.median)
    return _result(current.median, previous.median, abs(delta) > noise, rule=IQR_RULE, noise=noise)


def _result(
    now: float,
    before: float,
    beyond_noise: bool,
    *,
    rule: str,
    p_value: float | None = None,
    noise: float | None = None,
) -> dict[str, Any]:
    """The comparison's keys (:data:`COLUMNS`) for medians ``now`` and ``before``."""
    delta = now - before
    verdict = "within noise"
    if beyond_noise:
        verdict = "regression" if delta > 0 else "improvement"
    return {
        "previous_median_s": before,
        "compared_median_s": now,
        "delta_s": delta,
        "delta_pct": 100.0 * delta / before,
        "p_value": p_value,
        "noise_s": noise,
        "rule": rule,
        "verdict": verdict,
    }


def method_line(rules: Sequence[str]) -> str:
    """The Method's bullet on *Δ vs previous*: the rules the report used, and their thresholds."""
    used = set(rules)
    text = (
        "- **Δ vs previous**: change of the median epoch time from the previous saved run of "
        "the same machine; ▲ slower / ▼ faster only when it is more than "
        f"{100 * MIN_CHANGE:.0f} % of the previous median and beyond the noise, *(noise)* "
        "otherwise."
    )
    if U_TEST in used:
        text += (
            f" Where both runs stored every round ({U_TEST}): beyond the noise means a "
            f"two-sided Mann-Whitney U test on the two runs' rounds gives p < {SIGNIFICANCE:g} "
            "(the cell gives p), the rounds a run marked as in a spell of the host left out; "
            "the change is that of the two samples' medians."
        )
    if IQR_RULE in used:
        text += (
            f" {'Elsewhere' if U_TEST in used else 'Here'} ({IQR_RULE}: a run without every "
            "round's seconds, written before schema 3, or too few rounds outside spells for the "
            "test): "
            "beyond the noise means the median moved by more than the larger of both runs' "
            "IQRs."
        )
    return text + (
        " A significant change can still be the machine's (other load, clock, memory "
        "placement): re-run to confirm a flagged change."
    )


def _point(row) -> str:
    """What a flagged row measured: its group, implementation, device and sweep point."""
    point = f"{row['group']}: {row['implementation']} {row['device']}"
    if row["kind"] == "batch":
        point += f", batch {int(row['batch_size'])}"
    elif row["kind"] == "threads":
        point += f", {plural(int(row['threads']), 'thread')}"
    elif row["kind"] == "startup":
        point += f", {row['startup']}"
    elif row["kind"] in SIZE_KINDS:
        point += f", {int(row['size'])} × {int(row['size'])}"
    elif row["kind"] == "replicas":
        point += f", {plural(int(row['replicas']), 'replica')}"
    return point


def _evidence(row) -> str:
    """Why a flagged change is beyond the noise: the U test's p, or the IQR rule's noise."""
    if row["rule"] == U_TEST:
        return f"{p_text(row['p_value'])}, {U_TEST}"
    return f"more than the noise {number(row['noise_s'], 2)} s, {IQR_RULE}"


def p_text(p_value: float) -> str:
    """'p = 0.046' (two significant digits), or 'p < 0.0001'."""
    return "p < 0.0001" if p_value < 1e-4 else f"p = {number(p_value, 2)}"


def comparison_lines(runs: Sequence[Run], pairs: dict[int, tuple[Run, bool]], frame) -> list[str]:
    """The *Compared with the previous run* section: each run's previous run, then every
    change flagged (both significant and large), largest first."""
    lines = ["### Compared with the previous run", ""]
    for index, (before, same_machine) in sorted(pairs.items()):
        lines.append(
            f"- {runs[index].label}: previous run `{before.path}` ({before.short_date} UTC, "
            f"commit `{before.commit}`)"
            + ("" if same_machine else " — **from another machine**: deltas mix hardware")
        )
    flagged = frame[frame["verdict"].isin(["regression", "improvement"])]
    lines.append("")
    if flagged.empty:
        lines.append(f"No change beyond the noise and larger than {100 * MIN_CHANGE:.0f} %.")
    for _, row in flagged.sort_values("delta_pct", ascending=False).iterrows():
        slower = row["verdict"] == "regression"
        lines.append(
            f"- {'**regression**' if slower else 'improvement'} — {_point(row)}: "
            f"{number(row['previous_median_s'])} s → {number(row['compared_median_s'])} s "
            f"({row['delta_pct']:+.1f} %, {'slower' if slower else 'faster'}; "
            f"{_evidence(row)})"
        )
    counts = frame["rule"].value_counts()
    judged = [f"{plural(int(counts[rule]), 'measurement')} by the {rule}"
              for rule in (U_TEST, IQR_RULE) if rule in counts]  # fmt: skip
    return [*lines, "", f"Judged: {' and '.join(judged)} (see Method).", ""]
