"""The report's time to result, seeds, strategies, settings, rounding and ``results.csv``.

The documents are the synthetic runs of ``test_report`` with what schema 3 adds for issue 17:
each main case's start-up parts (process start, dataset load, import, build), its other
seeds' histories and its strategy. Expected numbers are computed here from those raw
fields, apart from the code under test.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("tabulate")
pytest.importorskip("matplotlib")

from test_report import (
    BASELINE_MEDIAN,
    NUM_TRAIN,
    TARGET,
    _entry,
    _stats,
    _training,
    bench_nodeid,
    find,
    make_run,
    write,
)

from impls import report
from impls.report import plots
from impls.report.text import number, rounded, significant_digits
from impls.results import EpochRecord, SeedRun

START, DATA, IMPORT, BUILD = 0.5, 0.07, 0.2, 1.5  # the fake's start-up parts, seconds
COLD_BUILD, WARM_BUILD = 0.9, 0.2  # medians of make_run's compile-cold / -warm builds
SHIFTS = {7: 0.0, 8: 0.02, 9: -0.2}  # seed -> added to every test accuracy
CONFIG = {"lr": 0.1, "init_std": 0.01, "batch_size": 256, "epochs": 10, "seed": 7}


def shifted(history: list[EpochRecord], shift: float) -> list[EpochRecord]:
    """``history`` with every test accuracy moved by ``shift`` (another seed's curve)."""
    return [
        dataclasses.replace(r, test_accuracy=round(r.test_accuracy + shift, 4)) for r in history
    ]


def with_parts(document: dict, impl: str, *, build: float = BUILD, seeds=SHIFTS) -> dict:
    """``impl``'s main case given start-up parts, a strategy and a run per seed of ``seeds``."""
    info = find(document, "epoch", impl)["extra_info"]
    first, *others = seeds
    history = [EpochRecord.from_dict(r) for r in info["history"]]
    info.update(
        process_start_seconds=START, data_load_seconds=DATA, import_seconds=IMPORT,
        build_seconds=build, config={**CONFIG, "seed": first},
        more_seeds=[SeedRun(s, shifted(history, seeds[s])).as_dict() for s in others],
    )  # fmt: skip
    info["history"] = [r.as_dict() for r in shifted(history, seeds[first])]
    info["runtime"]["strategy"] = f"{impl} strategy, per batch"
    return document


def add_jax(document: dict, median: float = 0.04) -> dict:
    """A jax main case beside make_run's compile-cold / -warm rounds of jax."""
    nodeid = bench_nodeid("test_epoch", "jax-cpu")
    case = _training("epoch", "jax", median)
    document["benchmarks"].append(_entry(nodeid, case, _stats(median, median / 50)))
    document["fmbench"]["tests"] = [t for t in document["fmbench"]["tests"] if t["impl"] != "jax"]
    document["fmbench"]["tests"].append(
        {"nodeid": nodeid, "kind": "epoch", "impl": "jax", "device": "cpu", "outcome": "passed"}
    )
    return document


def full_run() -> dict:
    """numpy with three seeds (one never reaches the target), jax and d2l-reference with one."""
    document = add_jax(make_run())
    document["fmbench"]["settings"]["seeds"] = list(SHIFTS)
    with_parts(document, "numpy")
    with_parts(document, "jax", build=0.6, seeds={7: 0.0})
    with_parts(document, "d2l-reference", seeds={7: 0.0})
    return document


def training_to_target(median: float, shift: float) -> float | None:
    """Training seconds of ``test_report._history(median, 10)`` moved by ``shift`` until the
    target: the warm-up epoch counts twice the median."""
    for epoch in range(1, 11):
        if 0.705 + 0.02 * epoch + shift >= TARGET - 1e-9:
            return median * (epoch + 1)
    return None


def build(tmp_path: Path, document: dict, name: str = "run") -> tuple[str, Path]:
    out = tmp_path / f"{name}-out"
    text = report.build_report([write(tmp_path / f"{name}.json", document)], out).read_text()
    return text, out


def line_of(text: str, *needles: str) -> str:
    """The one line of ``text`` holding every needle."""
    (line,) = [row for row in text.splitlines() if all(n in row for n in needles)]
    return line


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


# ------------------------------------------------------------------ time to result


def test_a_known_build_time_shows_in_the_time_to_result(tmp_path: Path) -> None:
    """One seed: the total is start + import + build + training to the target; a build of
    1.5 s instead of 0.1 s moves it by 1.4 s."""
    slow = with_parts(make_run(), "numpy", seeds={7: 0.0})
    fast = with_parts(make_run(), "numpy", build=0.1, seeds={7: 0.0})
    training = training_to_target(0.5, 0.0)
    for document, built in ((slow, BUILD), (fast, 0.1)):
        text, _ = build(tmp_path, document, f"build-{built}")
        total = START + IMPORT + built + training
        main = line_of(text, "| numpy ", "numpy strategy, per batch")
        assert cells(main)[-2] == number(total)  # time to 0.82 from a fresh process
        row = line_of(text, "| numpy ", "| as run ")
        assert cells(row)[2:] == [
            "as run", f"{number(START)} ({number(DATA)})", number(IMPORT), number(built),
            "1 of 1", "6", number(training), number(total),
        ]  # fmt: skip
    frame = report.results_frame(report.load_runs([write(tmp_path / "s.json", slow)]))
    numpy = frame[(frame["kind"] == "epoch") & (frame["implementation"] == "numpy")].iloc[0]
    assert numpy["time_to_result_s_median"] == pytest.approx(START + IMPORT + BUILD + training)


def test_cold_and_warm_builds_get_their_own_rows(tmp_path: Path) -> None:
    """jax's rows take the compile-cold / compile-warm medians for the build; numpy, which
    the run did not time that way, has one row."""
    text, _ = build(tmp_path, full_run())
    training = training_to_target(0.04, 0.0)
    for label, built in (
        ("as run", 0.6),
        ("from an empty compilation cache", COLD_BUILD),
        ("from a filled compilation cache", WARM_BUILD),
    ):
        row = cells(line_of(text, "| jax ", f"| {label} "))
        assert row[5] == number(built) and row[-1] == number(START + IMPORT + built + training)
    numpy_rows = [r for r in text.splitlines() if r.startswith("| numpy ") and "cache" in r]
    assert numpy_rows == []
    assert "Time to result" in text and "stand in for the run's own build" in text


def test_time_to_result_over_seeds_and_the_seeds_that_missed(tmp_path: Path) -> None:
    """Three seeds of numpy: two reach the target, at epochs 6 and 5; the median and range
    are over those two, and the third is named with its best accuracy."""
    text, _ = build(tmp_path, full_run())
    ready = START + IMPORT + BUILD
    totals = [ready + training_to_target(0.5, SHIFTS[s]) for s in (7, 8)]
    low, high = sorted(totals)
    expected = f"{number(statistics.median(totals))} ({number(low)}–{number(high)})"
    main = cells(line_of(text, "| numpy ", "numpy strategy, per batch"))
    assert main[-2] == f"{expected}; 2 of 3 seeds"
    row = cells(line_of(text, "| numpy ", "| as run "))
    assert row[6:] == [
        "2 of 3", "5.5 (5–6)",
        f"{number(statistics.median(t - ready for t in totals))} "
        f"({number(low - ready)}–{number(high - ready)})",
        expected,
    ]  # fmt: skip
    assert "Not reached within the run's epochs: numpy seed 9 (best 0.7050)." in text
    assert f"reached is {0.705:g}." in text  # the lowest best accuracy, a multiple of 0.005


# ------------------------------------------------------------------------- seeds


def test_accuracy_is_the_mean_and_sd_over_seeds(tmp_path: Path) -> None:
    text, _ = build(tmp_path, full_run())
    final = [0.905 + SHIFTS[s] for s in SHIFTS]  # the last epoch's: 0.705 + 0.02 × 10
    cell = f"{statistics.fmean(final):.4f} ± {statistics.stdev(final):.4f}"
    main = cells(line_of(text, "| numpy ", "numpy strategy, per batch"))
    assert main[8] == cell
    seeds_row = cells(line_of(text, "| numpy ", "after epochs"))
    assert seeds_row[3:] == ["3", cell, cell, "2 of 3, after epochs 5–6"]
    one = cells(line_of(text, "| d2l-reference ", "| 1 of 1, after "))
    assert one[3:5] == ["1", "0.9050"]  # one seed: no sd
    assert "Each implementation trained from 1 or 3 seeds" in text


def test_implementations_that_agree_seed_by_seed_are_named(tmp_path: Path) -> None:
    document = add_jax(make_run())
    for impl in ("numpy", "jax"):
        with_parts(document, impl)
    text, _ = build(tmp_path, document)
    assert "seed by seed (shared initial weights and minibatch order): numpy = jax (3 seeds)" in (
        text
    )
    with_parts(document, "jax", seeds={7: 0.0, 8: 0.01, 9: -0.2})
    text, _ = build(tmp_path, document, "apart")
    assert "seed by seed" not in text


# ------------------------------------------------------------- table contents


def test_strategy_column_and_settings_in_the_header(tmp_path: Path) -> None:
    text, _ = build(tmp_path, full_run())
    header = line_of(text, "| implementation ", "| strategy ", "| epoch [s]")
    assert cells(header)[:3] == ["implementation", "device", "strategy"]
    assert cells(line_of(text, "| numpy ", "numpy strategy"))[2] == "numpy strategy, per batch"
    assert cells(line_of(text, "| d2l-reference ", "× (baseline) "))[2] == (
        "d2l-reference strategy, per batch"
    )
    assert (
        "training: learning rate 0.1, initial weights' std 0.01, batch size 256, "
        "3 seeds (7, 8, 9)" in text
    )
    assert "10 epochs per implementation and seed (1 warm-up + 9 timed)" in text
    old, _ = build(tmp_path, make_run(), "old")  # no strategy recorded, one seed
    assert cells(line_of(old, "| numpy ", "| 42× "))[2] == "—"


def test_sweep_cells_give_accuracy_and_mark_noise(tmp_path: Path) -> None:
    document = make_run()
    noisy = next(
        b for b in document["benchmarks"]
        if b["extra_info"]["kind"] == "batch" and b["extra_info"]["batch_size"] == 64
    )  # fmt: skip
    noisy["stats"] = _stats(0.5, 0.1, rounds=5)  # IQR 20 % of the median
    text, _ = build(tmp_path, document)
    row = cells(line_of(text, "| numpy ", "| 0.50 s (0.10)"))
    accuracy = f"acc {0.705 + 0.02 * 3:.4f}"  # the sweep point's last (only evaluated) epoch
    assert row[2] == f"0.50 s (0.10) · 120,000/s · {accuracy} *noisy*"
    assert row[3].endswith(accuracy) and "noisy" not in row[3]  # IQR 2 %
    assert "*acc*: test accuracy after the point's last epoch" in text


def test_main_table_rounds_to_what_the_iqr_allows(tmp_path: Path) -> None:
    """numpy's IQR is 4.5 % of its median: its examples/s, speed-up and × limit keep the
    digits down to the place of their spread (a ratio's: both IQRs in quadrature)."""
    text, _ = build(tmp_path, make_run(numpy_median=0.5, numpy_iqr=0.0225))
    row = cells(line_of(text, "| numpy ", "| 0.50 (0.022) "))
    speedup = math.hypot(0.045, 0.2 / BASELINE_MEDIAN)
    assert row[4] == "120,000"  # 60000 / 0.5
    assert row[5] == f"{rounded(BASELINE_MEDIAN / 0.5, speedup)}×" == "18.0×"  # ± 0.9
    limit = math.hypot(0.045, 0.05)
    assert row[6] == f"{rounded(0.5 / 0.012, limit)}×" == "42×"  # 41.7 ± 2.8
    assert "*noisy*" not in row[3]
    wide, _ = build(tmp_path, make_run(numpy_iqr=0.1), "wide")  # 20 %
    assert cells(line_of(wide, "| numpy ", "| 42× "))[3] == "0.50 (0.10) *noisy*"


def test_rounded() -> None:
    assert rounded(67.2, 0.045) == "67"
    assert rounded(1313951, 0.045, grouped=True) == "1,310,000"
    assert rounded(1313951, 0.001, grouped=True) == "1,310,000"  # never more than 3 digits
    assert rounded(0.0839, 0.0) == "0.0839"  # no spread known: 3 digits
    assert rounded(0.0839, 0.5) == "0.084"  # never fewer than 2
    assert rounded(99.96, 0.0) == "100"
    assert rounded(None, 0.1) == "—" and rounded(0, 0.1) == "0"
    assert [significant_digits(100, s) for s in (0.2, 0.02, 0.002, 0.0)] == [2, 3, 3, 3]
    assert significant_digits(0.9, 0.2) == 2 and significant_digits(5.0, 0.01) == 3


def test_the_uint8_read_is_derived_from_the_float32_read(tmp_path: Path) -> None:
    text, _ = build(tmp_path, full_run())
    line = line_of(text, "Limit: reading the float32 training set")
    expected = rounded(1000 * 0.012 / 4, 0.05)
    assert f"({number(NUM_TRAIN * 784 / 1e6)} MB, what " in line
    assert f"about {expected} ms at that rate (derived from the float32 read" in line
    assert "what jax, numpy read" not in line  # only those whose strategy says uint8
    document = full_run()
    find(document, "epoch", "numpy")["extra_info"]["runtime"]["strategy"] = "uint8, per batch"
    assert "(47.0 MB, what numpy read)" in build(tmp_path, document, "u8")[0]


def test_no_previous_run_is_said_plainly(tmp_path: Path) -> None:
    alone, _ = build(tmp_path, make_run())
    assert "*No previous run on this machine was found or given" in alone
    before = write(tmp_path / "before.json", make_run(run_id="old"))
    after = write(tmp_path / "after.json", make_run(run_id="new", when="2026-01-05T10:00:00"))
    compared = report.build_report([after], tmp_path / "c", previous=before).read_text()
    assert "No previous run" not in compared and "Δ vs previous" in compared


# ------------------------------------------------------------------ the figure


def test_the_time_axis_starts_at_a_fresh_process(tmp_path: Path, monkeypatch) -> None:
    """With every part recorded each curve starts at start + import + build + the first
    epoch; without (schema 1, 2) at the first epoch, and the text says which."""
    drawn = {}
    real = plots.save_figure

    def keep(fig, path):
        drawn[Path(path).name] = [line.get_xdata() for line in fig.axes[0].get_lines()]
        return real(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    document = full_run()
    text, _ = build(tmp_path, document)
    starts = sorted(x[0] for x in drawn["accuracy_by_time.png"] if len(x) > 2)
    ready = START + IMPORT
    assert starts == pytest.approx(
        sorted([ready + 0.6 + 0.08, ready + BUILD + 1.0, ready + BUILD + 2 * BASELINE_MEDIAN])
    )
    assert "each curve starts when its trainer was built in a fresh process" in text
    old, _ = build(tmp_path, make_run(), "old")
    starts = sorted(x[0] for x in drawn["accuracy_by_time.png"] if len(x) > 2)
    assert starts == pytest.approx(sorted([1.0, 2 * BASELINE_MEDIAN]))
    assert "these runs did not record the start-up before it" in old


# ----------------------------------------------------------------- results.csv


def test_results_csv_has_a_row_per_case_and_seed(tmp_path: Path) -> None:
    document = full_run()
    text, out = build(tmp_path, document)
    assert "[`results.csv`](results.csv)" in text
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    sweeps = [b for b in document["benchmarks"] if b["extra_info"]["kind"] in ("batch", "threads")]
    assert len(rows) == 3 + 1 + 1 + len(sweeps)  # numpy's 3 seeds, jax, d2l-reference, sweeps
    for column in ("run_file", "machine", "kind", "implementation", "device", "strategy",
                   "threads", "batch_size", "seed", "median_epoch_s", "iqr_s", "rounds",
                   "examples_per_s", "final_test_accuracy", "best_test_accuracy",
                   "training_to_target_s", "time_to_result_s",
                   "time_to_result_empty_cache_s"):  # fmt: skip
        assert column in rows[0], column
    numpy = [r for r in rows if r["implementation"] == "numpy" and r["kind"] == "epoch"]
    assert [r["seed"] for r in numpy] == ["7", "8", "9"]
    for row in numpy:
        shift = SHIFTS[int(row["seed"])]
        assert float(row["final_test_accuracy"]) == pytest.approx(0.905 + shift)
        assert float(row["median_epoch_s"]) == pytest.approx(0.5)
        assert float(row["examples_per_s"]) == pytest.approx(NUM_TRAIN / 0.5)
        training = training_to_target(0.5, shift)
        if training is None:
            assert row["time_to_result_s"] == "" and row["epochs_to_target"] == ""
        else:
            assert float(row["time_to_result_s"]) == pytest.approx(
                START + IMPORT + BUILD + training
            )
    (jax,) = [r for r in rows if r["implementation"] == "jax" and r["kind"] == "epoch"]
    training = training_to_target(0.04, 0.0)
    assert float(jax["time_to_result_filled_cache_s"]) == pytest.approx(
        START + IMPORT + WARM_BUILD + training
    )
    batch = [r for r in rows if r["kind"] == "batch"]
    assert sorted(int(r["batch_size"]) for r in batch) == [64, 256, 1024]


def test_old_runs_give_results_csv_with_their_parts_missing(tmp_path: Path) -> None:
    from test_report import REFERENCE_RUNS

    out = tmp_path / "ref"
    report.build_report(REFERENCE_RUNS[:1], out)
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert {r["implementation"] for r in epochs} >= {"numpy", "jax", "d2l-reference"}
    assert all(r["process_start_s"] == "" and r["time_to_result_s"] == "" for r in epochs)
    assert all(r["training_to_target_s"] != "" for r in epochs)
