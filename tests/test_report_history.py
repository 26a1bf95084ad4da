"""The report on a noisy machine: runs compared on their rounds, spells shown, history drawn.

The documents are the synthetic runs of ``test_report`` given what schema 3 adds: every
round's seconds (``stats.data``), the main run's spell marks, its canary, injected spells
and schedule. Expected numbers (medians, ratios, p values) are computed here with the
standard library and scipy, apart from the code under test.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("tabulate")
pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

from scipy.stats import mannwhitneyu
from test_report import BASELINE_MEDIAN, REFERENCE_RUNS, find, make_run, row_of, write

from impls import report
from impls.report import comparison as comparing
from impls.report import history as histories
from impls.report.runs import machine_label
from impls.report.text import number, present, rounded

# ------------------------------------------------------------------ helpers


def stats_of(data: list[float]) -> dict:
    """pytest-benchmark's statistics of ``data``, with the rounds themselves (schema 3)."""
    q1, _, q3 = statistics.quantiles(data, n=4)
    median = statistics.median(data)
    return {
        "min": min(data), "max": max(data), "mean": statistics.fmean(data), "stddev": 0.0,
        "rounds": len(data), "median": median, "iqr": q3 - q1, "q1": q1, "q3": q3,
        "iqr_outliers": 0, "stddev_outliers": 0, "outliers": "0;0", "ld15iqr": min(data),
        "hd15iqr": max(data), "ops": 1 / median, "total": sum(data), "iterations": 1,
        "data": list(data),
    }  # fmt: skip


def with_rounds(document: dict, impl: str, data: list[float], spells=None) -> dict:
    """``document`` with ``impl``'s main-run rounds (and their spell marks) set to these."""
    benchmark = find(document, "epoch", impl)
    benchmark["stats"] = stats_of(data)
    if spells is not None:
        benchmark["extra_info"]["spell_rounds"] = list(spells)
    return document


def spread(centre: float, width: float, rounds: int = 9) -> list[float]:
    """``rounds`` seconds evenly from ``centre - width / 2`` to ``centre + width / 2``."""
    return [centre - width / 2 + width * i / (rounds - 1) for i in range(rounds)]


def pair(tmp_path: Path, before: dict, after: dict):
    """The frame comparing ``after`` with ``before`` (written and loaded as files)."""
    before["fmbench"]["run_id"], after["fmbench"]["run_id"] = "before", "after"
    after["datetime"] = "2026-01-05T10:00:00+00:00"
    old = report.load_runs([write(tmp_path / "before.json", before)])
    new = report.load_runs([write(tmp_path / "after.json", after)])
    return report.results_frame(new, old), old, new


NUMPY = spread(0.5, 0.01)


# ----------------------------------------------------- comparing two runs


def test_a_large_significant_change_is_flagged_with_its_p_value(tmp_path: Path) -> None:
    """25 % slower, every round: the U test finds it though the IQRs (0.375 s) exceed the
    change (0.25 s), so the IQR rule alone would have called it noise."""
    rounds = spread(1.0, 0.6)
    slower = [seconds + 0.25 for seconds in rounds]
    before = with_rounds(make_run(), "numpy", rounds)
    after = with_rounds(make_run(), "numpy", slower)
    frame, old, new = pair(tmp_path, before, after)
    row = row_of(frame, "epoch", "numpy")
    p_value = mannwhitneyu(slower, rounds, alternative="two-sided").pvalue
    assert row["rule"] == comparing.U_TEST
    assert row["p_value"] == pytest.approx(p_value) and p_value < comparing.SIGNIFICANCE
    assert row["delta_pct"] == pytest.approx(25.0)
    assert row["verdict"] == "regression"
    assert row["iqr_s"] > 0.25  # beyond what the IQR rule flags
    assert comparing.compare(new[0].entries[1], old[0].entries[1])["verdict"] == "regression"
    text = report.build_report(new, tmp_path / "out", previous=old).read_text()
    assert f"+25.0 % ▲ slower** (p = {number(p_value, 2)})" in text  # the Δ cell
    assert f"{number(1.0)} s → {number(1.25)} s (+25.0 %, slower; p = {number(p_value, 2)}" in text
    assert f"Mann-Whitney U test on the two runs' rounds gives p < {comparing.SIGNIFICANCE:g}" in (
        text
    )


def test_a_small_significant_change_is_not_flagged(tmp_path: Path) -> None:
    rounds = spread(1.0, 0.01)
    slower = [seconds * 1.05 for seconds in rounds]
    frame, _, _ = pair(
        tmp_path, with_rounds(make_run(), "numpy", rounds), with_rounds(make_run(), "numpy", slower)
    )
    row = row_of(frame, "epoch", "numpy")
    assert row["p_value"] < 0.001  # significant, but 5 % is below the minimum change
    assert row["delta_pct"] == pytest.approx(5.0)
    assert row["verdict"] == "within noise"


def test_a_large_insignificant_change_is_not_flagged(tmp_path: Path) -> None:
    rounds = [0.5, 0.7, 0.9, 1.0, 1.0, 1.3, 1.6, 1.8, 2.0]
    after = [0.55, 0.75, 0.95, 1.1, 1.2, 1.35, 1.65, 1.85, 2.1]
    frame, _, _ = pair(
        tmp_path, with_rounds(make_run(), "numpy", rounds), with_rounds(make_run(), "numpy", after)
    )
    row = row_of(frame, "epoch", "numpy")
    assert row["delta_pct"] == pytest.approx(20.0) and row["p_value"] > 0.5
    assert row["verdict"] == "within noise"


def test_rounds_in_a_spell_are_left_out_of_the_comparison(tmp_path: Path) -> None:
    """Six of nine rounds three times slower in a spell: compared on the quiet three, the
    run matches the previous one; on every round it would be flagged."""
    spells = [False, True, True, False, True, True, True, True, False]
    after = [seconds * (3 if spell else 1) for seconds, spell in zip(NUMPY, spells, strict=True)]
    frame, _, _ = pair(
        tmp_path,
        with_rounds(make_run(), "numpy", NUMPY),
        with_rounds(make_run(), "numpy", after, spells),
    )
    row = row_of(frame, "epoch", "numpy")
    quiet = [seconds for seconds, spell in zip(after, spells, strict=True) if not spell]
    assert row["compared_median_s"] == pytest.approx(statistics.median(quiet))
    assert row["median_s"] == pytest.approx(statistics.median(after))  # the table's median
    assert row["verdict"] == "within noise"
    unmarked = with_rounds(make_run(), "numpy", after, [False] * 9)
    frame, _, _ = pair(tmp_path, with_rounds(make_run(), "numpy", NUMPY), unmarked)
    assert row_of(frame, "epoch", "numpy")["verdict"] == "regression"


def test_when_spells_leave_too_few_rounds_the_iqr_rule_judges(tmp_path: Path) -> None:
    """Two quiet rounds of nine before, none after: the previous run's two quiet rounds
    against every round after would compare the host's spells, not the code."""
    slow = [seconds * 1.3 for seconds in NUMPY]
    before_marks = [True] * 7 + [False] * 2
    before = with_rounds(make_run(), "numpy", slow[:7] + NUMPY[7:], before_marks)
    after = with_rounds(make_run(), "numpy", slow, [True] * 9)
    frame, _, _ = pair(tmp_path, before, after)
    row = row_of(frame, "epoch", "numpy")
    assert row["rule"] == comparing.IQR_RULE and not present(row["p_value"])
    assert row["previous_median_s"] == pytest.approx(statistics.median(slow[:7] + NUMPY[7:]))
    assert row["compared_median_s"] == pytest.approx(statistics.median(slow))
    assert row["verdict"] == "within noise"


@pytest.mark.parametrize("rounds_stored", ["neither", "before only", "three each"])
def test_without_enough_rounds_the_iqr_rule_stands(tmp_path: Path, rounds_stored: str) -> None:
    """Older files (no rounds stored) and too few rounds for the test: judged as before,
    by the IQR rule, which the report names."""
    before, after = make_run(numpy_median=0.5), make_run(numpy_median=0.8)
    if rounds_stored == "before only":
        with_rounds(before, "numpy", NUMPY)
    elif rounds_stored == "three each":
        with_rounds(before, "numpy", [0.49, 0.5, 0.51])
        with_rounds(after, "numpy", [0.79, 0.8, 0.81])
    frame, old, new = pair(tmp_path, before, after)
    row = row_of(frame, "epoch", "numpy")
    assert row["rule"] == comparing.IQR_RULE and not present(row["p_value"])
    assert row["verdict"] == "regression"
    assert row["noise_s"] == pytest.approx(max(0.1 * 0.5, row["iqr_s"]))
    text = report.build_report(new, tmp_path / "out", previous=old).read_text()
    assert "more than the noise" in text and "IQR rule" in text
    assert "Mann-Whitney" not in text  # no measurement was compared by the test


def test_can_be_significant() -> None:
    """The smallest two-sided p of a U test, 2 / C(n + m, n), below 0.05 or not."""
    assert not comparing.can_be_significant(3, 3)  # 2 / 20
    assert not comparing.can_be_significant(3, 4)  # 2 / 35
    assert comparing.can_be_significant(4, 4)  # 2 / 70
    assert not comparing.can_be_significant(0, 9)


# ------------------------------------------------------------------ spells


def spelled_run() -> dict:
    """Round-robin, canary and an injected spell; numpy and the baseline each hit twice."""
    document = make_run()
    marks = [False, False, True, True, False, False, False, False, False]
    with_rounds(document, "numpy", [0.5, 0.51, 1.5, 1.6, 0.49, 0.52, 0.5, 0.48, 0.5], marks)
    baseline = [9.0, 9.2, 27.0, 26.0, 8.8, 9.1, 9.0, 8.9, 9.3]
    with_rounds(document, "d2l-reference", baseline, marks)
    document["fmbench"]["settings"]["schedule"] = "round-robin"
    document["fmbench"]["canary"] = {
        "what": "a 256 × 784 by 784 × 256 float32 product",
        "threads": 2,
        "threshold": 1.5,
        "seconds": [0.010, 0.011, 0.030, 0.031, 0.010, 0.012, 0.010, 0.009, 0.010, 0.010],
    }
    document["fmbench"]["injected_spells"] = [
        {"start_seconds": 6.0, "seconds": 4.0, "processes": 2}
    ]
    return document


def test_spell_rounds_and_the_ratios_without_them(tmp_path: Path) -> None:
    document = spelled_run()
    path = write(tmp_path / "run.json", document)
    frame = report.results_frame(report.load_runs([path]))
    numpy = row_of(frame, "epoch", "numpy")
    numpy_rounds = find(document, "epoch", "numpy")["stats"]["data"]
    baseline_rounds = find(document, "epoch", "d2l-reference")["stats"]["data"]
    quiet = [0, 1, 4, 5, 6, 7, 8]
    numpy_quiet = statistics.median(numpy_rounds[i] for i in quiet)
    baseline_quiet = statistics.median(baseline_rounds[i] for i in quiet)
    assert numpy["spell_rounds"] == 2
    assert numpy["quiet_median_s"] == pytest.approx(numpy_quiet)
    assert numpy["quiet_speedup_vs_baseline"] == pytest.approx(baseline_quiet / numpy_quiet)
    speedup = statistics.median(baseline_rounds) / statistics.median(numpy_rounds)
    assert numpy["speedup_vs_baseline"] == pytest.approx(speedup)
    text = report.build_report([path], tmp_path / "out").read_text()
    (line,) = [row for row in text.splitlines() if row.startswith("| numpy ") and " of 9 " in row]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    # Rounded to what the spread allows: numpy's IQR / median, and a ratio's both in quadrature.
    spreads = [find(document, "epoch", impl)["stats"] for impl in ("numpy", "d2l-reference")]
    numpy_spread, ratio_spread = (
        spreads[0]["iqr"] / spreads[0]["median"],
        math.hypot(*(s["iqr"] / s["median"] for s in spreads)),
    )
    assert cells[2:] == [
        "2 of 9",
        rounded(statistics.median(numpy_rounds), numpy_spread),
        rounded(numpy_quiet, numpy_spread),
        f"{rounded(speedup, ratio_spread)}×",
        f"{rounded(baseline_quiet / numpy_quiet, ratio_spread)}×",
    ]
    assert "2 CPU-burning processes for 4 s from 6 s after the first timed epoch began" in text
    quiet = "the run's quiet canary (their lower quartile, 10.0 ms): 2 of 10 canaries did"
    assert f"more than 1.5× {quiet}" in text
    assert "- **Schedule** of the main run's timed rounds: round-robin" in text


@pytest.mark.parametrize(
    ("schema", "cadence"),
    [
        (5, "each visit opens with a 50 ms pause and a canary"),
        (4, "before every timed round the run timed a canary"),
    ],
)
def test_the_method_says_when_the_canary_ran(tmp_path: Path, schema, cadence) -> None:
    """From schema 5 once a visit, before its epochs; before, before every timed round."""
    document = spelled_run()
    document["fmbench"]["schema"] = schema
    text = report.build_report([write(tmp_path / "run.json", document)], tmp_path / "out")
    assert cadence in text.read_text()


def test_runs_from_before_and_after_the_visit_pause_are_compared_with_a_caveat(
    tmp_path: Path,
) -> None:
    older, newer = spelled_run(), make_run(run_id="newer")
    older["fmbench"].update(schema=4, run_id="older")
    older["datetime"] = "2026-01-01T10:00:00+00:00"
    paths = [write(tmp_path / "older.json", older), write(tmp_path / "newer.json", newer)]
    caveat = "In the runs written before schema 5 ("
    text = report.build_report(paths, tmp_path / "both").read_text()
    assert caveat in text and "the canary, after a 50 ms pause in most such runs" in text
    alone = report.build_report(paths[1:], tmp_path / "newer").read_text()
    assert caveat not in alone
    no_canary = make_run(run_id="older")  # no canary, no pause: nothing to warn about
    no_canary["fmbench"]["schema"] = 4
    paths[0] = write(tmp_path / "older.json", no_canary)
    assert caveat not in report.build_report(paths, tmp_path / "plain").read_text()


def test_no_spell_table_without_marks_and_one_line_without_spells(tmp_path: Path) -> None:
    plain = report.build_report([write(tmp_path / "a.json", make_run())], tmp_path / "a")
    assert "### Rounds in a spell" not in plain.read_text()
    document = make_run()
    with_rounds(document, "numpy", NUMPY, [False] * 9)
    quiet = report.build_report([write(tmp_path / "b.json", document)], tmp_path / "b")
    text = quiet.read_text()
    assert "No timed round of the main run ran during a spell of the host" in text
    assert "| 0 of 9 " not in text


def test_spell_marks_must_match_the_rounds(tmp_path: Path) -> None:
    document = with_rounds(make_run(), "numpy", NUMPY, [False] * 8)
    with pytest.raises(report.ReportError, match="spell_rounds holds 8 marks for 9 timed rounds"):
        report.load_run(write(tmp_path / "bad.json", document))


# ----------------------------------------------------------------- history


def history_storage(tmp_path: Path, count: int) -> Path:
    """``count`` saved runs of box-a, one a day, written in reverse date order (file names
    do not give the order), numpy's median rising 0.01 s a day; plus a smoke run, a run of
    another machine and the newest run saved twice (``last-run.json`` and its autosave)."""
    storage = tmp_path / ".benchmarks"
    for day in reversed(range(count)):
        document = make_run(numpy_median=0.5 + 0.01 * day, run_id=f"day{day}",
                            when=f"2026-01-{day + 1:02d}T10:00:00+00:00")  # fmt: skip
        write(storage / "Linux" / f"{count - day:04d}_run.json", document)
    write(storage / "last-run.json", document := json.loads(json.dumps(document)))
    quick = make_run(numpy_median=5.0, run_id="quick", when="2026-01-02T12:00:00+00:00")
    quick["fmbench"]["settings"]["quick"] = True
    write(storage / "Linux" / "quick.json", quick)
    write(storage / "Linux" / "other.json", make_run("box-z", run_id="z"))
    return storage


def test_history_orders_a_machines_runs_by_date(tmp_path: Path) -> None:
    storage = history_storage(tmp_path, 10)
    saved = report.load_saved(storage)
    newest = report.newest(run for run in saved if run.run_id == "day9")
    (history,) = histories.machine_histories([newest], saved)
    assert [run.run_id for run in history.runs] == [f"day{day}" for day in range(10)]
    assert history.reported == [newest]
    table = histories.history_table(history)
    assert len(table) == histories.LAST_RUNS == 8
    dates = list(table["run (UTC)"])
    assert dates[0] == "2026-01-03 10:00" and dates[-1] == "2026-01-10 10:00 (this report)"
    assert list(table["numpy"]) == [number(0.5 + 0.01 * day) for day in range(2, 10)]
    assert set(table["d2l-reference"]) == {number(BASELINE_MEDIAN)}


def test_the_report_draws_the_history_from_storage(tmp_path: Path) -> None:
    storage = history_storage(tmp_path, 3)
    out = tmp_path / "out"
    assert report.main([str(storage / "last-run.json"), "--out", str(out),
                        "--storage", str(storage)]) == 0  # fmt: skip
    text = (out / "README.md").read_text()
    assert "## History" in text and "3 runs in date order" in text
    assert "](figures/history.png)" in text
    assert (out / "figures" / "history.png").stat().st_size > 1000
    assert text.count("(this report) |") == 1
    assert report.main([str(storage / "last-run.json"), "--out", str(out), "--storage",
                        str(storage), "--history", "none"]) == 0  # fmt: skip
    assert "## History" not in (out / "README.md").read_text()
    assert not (out / "figures" / "history.png").exists()


def test_one_run_is_one_line_not_an_empty_figure(tmp_path: Path) -> None:
    path = write(tmp_path / "run.json", make_run())
    out = tmp_path / "out"
    assert report.main([str(path), "--out", str(out), "--storage", str(tmp_path / "none")]) == 0
    text = (out / "README.md").read_text()
    section = text[text.index("## History") :].split("\n## ")[0]
    assert len([line for line in section.splitlines()[1:] if line]) == 1
    assert "one run so far" in section
    assert not (out / "figures" / "history.png").exists()


def test_a_missing_history_folder_is_refused(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "run.json", make_run())
    args = [str(path), "--out", str(tmp_path / "out"), "--history", str(tmp_path / "nowhere")]
    assert report.main(args) == 2
    assert "--history" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_several_runs_of_one_machine_are_their_own_history(tmp_path: Path) -> None:
    """The committed reference runs (schema 1, no rounds stored): their history is the runs
    given, whatever is saved on the machine rebuilding the report; the Method states their
    schedule (blocks) and that no canary was recorded."""
    storage = tmp_path / ".benchmarks"
    for path in REFERENCE_RUNS:  # saved copies of the same machine, one of them later
        document = json.loads(path.read_text())
        document["fmbench"]["run_id"] = "elsewhere"
        document["datetime"] = "2027-01-01T00:00:00"
        write(storage / path.name, document)
    out = tmp_path / "ref"
    args = [*map(str, REFERENCE_RUNS), "--out", str(out), "--previous", "none",
            "--storage", str(storage)]  # fmt: skip
    assert report.main(args) == 0
    text = (out / "README.md").read_text()
    assert f"{len(REFERENCE_RUNS)} runs in date order" in text
    assert "2027-01-01" not in text and "(this report)" not in text
    assert (out / "figures" / "history.png").stat().st_size > 1000
    assert "- **Schedule** of the main run's timed rounds: blocks" in text
    assert "no canary was recorded" in text
    assert "### Rounds in a spell" not in text


def _on_cpu(family: int, model: int, run_id: str, when: str) -> dict:
    """A run of box-a on an ``AMD EPYC`` (a VM's name for several CPUs) of this generation."""
    document = make_run(run_id=run_id, when=when)
    document["machine_info"]["fmbench"]["cpu_model"] = "AMD EPYC"
    document["machine_info"]["cpu"].update(brand_raw="AMD EPYC", family=family, model=model)
    return document


def test_a_cpu_of_another_generation_is_another_machine(tmp_path: Path) -> None:
    """Two VMs with the same host name and CPU name but CPUs of different generations: never
    each other's previous run, each its own history, told apart by name."""
    storage = tmp_path / ".benchmarks"
    write(storage / "Linux" / "0001_zen5.json", _on_cpu(26, 2, "zen5", "2026-01-01T10:00:00"))
    write(storage / "Linux" / "0002_zen3.json", _on_cpu(25, 1, "zen3", "2026-01-02T10:00:00"))
    later = write(tmp_path / "later.json", _on_cpu(26, 2, "zen5-b", "2026-01-03T10:00:00"))
    saved = report.load_saved(storage)
    current = report.load_run(later)
    assert report.find_previous(current, saved).run_id == "zen5"  # not zen3, the newer one
    assert machine_label(current) == "box-a (AMD EPYC, family 26 model 2, 2 CPUs)"
    runs = report.load_runs([storage / "Linux" / "0002_zen3.json", later])
    assert [run.label for run in runs] == [
        "box-a (AMD EPYC, family 25 model 1, 2 CPUs)",
        "box-a (AMD EPYC, family 26 model 2, 2 CPUs)",
    ]
    assert len(histories.machine_histories(runs, saved)) == 2
    zen3 = report.load_run(storage / "Linux" / "0002_zen3.json")
    assert report.find_previous(zen3, [current]) is None
