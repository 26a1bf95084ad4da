"""The report generator on synthetic pytest-benchmark JSON: numbers, merging, comparison.

Bad inputs are in ``test_report_inputs.py``, the output folder (a bad ``--out``, two
builds at once) in ``test_report_output.py``; both build on the runs made here.

The synthetic runs are written as ``benchmarks/`` writes them (schema 2): each case built
with :mod:`impls.results`' dataclasses and stored with ``to_extra_info``. Expected numbers
are computed here from the raw fields, apart from the code under test; the committed
schema-1 runs in ``tests/data/schema1/`` are checked the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("tabulate")
pytest.importorskip("matplotlib")

from impls import report, results
from impls.report import frame as results_frame
from impls.report import markdown as report_text
from impls.report import previous as previous_runs
from impls.report import runs as run_loading
from impls.report.tables import startup_table
from impls.report.text import number, rounded
from impls.results import (
    ComputeFloor,
    EpochRecord,
    ReadLimit,
    StartupResult,
    TrainingResult,
    to_extra_info,
)

NUM_TRAIN = 60000
TARGET = 0.82
BASELINE_MEDIAN = 9.0
LIMIT_MEDIAN = 0.012
COMPUTE_MEDIAN = 0.08


def _stats(median: float, iqr: float = 0.0, rounds: int = 9) -> dict:
    """pytest-benchmark's statistics of a case (its extra keys included)."""
    return {
        "min": median - iqr, "max": median + iqr, "mean": median, "stddev": iqr / 1.35,
        "rounds": rounds, "median": median, "iqr": iqr, "q1": median - iqr / 2,
        "q3": median + iqr / 2, "iqr_outliers": 0, "stddev_outliers": 0, "outliers": "0;0",
        "ld15iqr": median - iqr, "hd15iqr": median + iqr, "ops": 1 / median,
        "total": median * rounds, "iterations": 1,
    }  # fmt: skip


def _history(median: float, epochs: int, evaluated: bool = True) -> list[EpochRecord]:
    """A warm-up epoch twice as slow, then ``median`` each; accuracy 0.725, 0.745, ..."""
    return [
        EpochRecord(
            epoch=epoch,
            train_loss=1 / epoch,
            train_accuracy=0.7 + 0.01 * epoch,
            test_loss=1 / epoch if evaluated or epoch == epochs else None,
            test_accuracy=0.705 + 0.02 * epoch if evaluated or epoch == epochs else None,
            train_seconds=(2 if epoch == 1 else 1) * median,
            eval_seconds=0.01 if evaluated or epoch == epochs else None,
        )
        for epoch in range(1, epochs + 1)
    ]


def bench_nodeid(test: str, param: str) -> str:
    return f"benchmarks/test_softmax_bench.py::{test}[{param}]"


def _entry(nodeid: str, case: results.CaseResult, stats: dict) -> dict:
    """One benchmark as pytest-benchmark writes it, the case as ``to_extra_info`` stores it."""
    return {
        "group": results.GROUPS[case.kind],
        "name": nodeid.split("::")[1],
        "fullname": nodeid,
        "params": None,
        "stats": stats,
        "extra_info": to_extra_info(case),
    }


def _training(kind: str, impl: str, median: float, *, threads=2, batch_size=256) -> TrainingResult:
    main = kind == "epoch"
    return TrainingResult(
        kind=kind, implementation=impl, device="cpu", threads=threads, batch_size=batch_size,
        num_train=NUM_TRAIN, history=_history(median, 10 if main else 3, evaluated=main),
        runtime={"device": "cpu", "threads": threads, "backend": "test"}, build_seconds=0.1,
        import_seconds=0.2, target_accuracy=TARGET if main else None,
        predictions=[i % 10 for i in range(18)] if main else None,
        peak_rss_bytes=300 * 2**20 if main else None, peak_rss_children_bytes=0 if main else None,
    )  # fmt: skip


def _epoch_entry(impl: str, median: float, iqr: float = 0.0) -> dict:
    nodeid = bench_nodeid("test_epoch", f"{impl}-cpu")
    return _entry(nodeid, _training("epoch", impl, median), _stats(median, iqr))


def _sweep_entry(impl: str, kind: str, value: int, median: float) -> dict:
    param = f"{impl}-cpu-{'batch' if kind == 'batch' else 'threads'}{value}"
    test = "test_sweep_batch_size" if kind == "batch" else "test_sweep_threads"
    case = _training(
        kind,
        impl,
        median,
        threads=value if kind == "threads" else 2,
        batch_size=value if kind == "batch" else 256,
    )
    return _entry(bench_nodeid(test, param), case, _stats(median, median / 50, rounds=5))


STARTUP_TESTS = {"load-cache": "test_load_from_cache", "cli-train": "test_cli_train"}


def _startup_entry(name: str, impl: str, median: float, **parts: object) -> dict:
    test = STARTUP_TESTS.get(name, "test_compile")
    case = StartupResult(startup=name, implementation=impl, device="cpu", what=name, **parts)
    nodeid = f"benchmarks/test_startup_bench.py::{test}[{impl}-cpu-{name}]"
    return _entry(nodeid, case, _stats(median, median / 50, rounds=5))


COLD_PARTS = {
    "build_seconds": [0.8, 0.9, 1.0],
    "compile_seconds": [0.7, None, 0.9],
    "first_epoch_seconds": [0.1, 0.12, 0.3],
}


def _startup_entries(compile_warm_median: float) -> list[dict]:
    return [
        _startup_entry("compile-warm", "jax", compile_warm_median, build_seconds=[0.2] * 3,
                       compile_seconds=[0.15] * 3, first_epoch_seconds=[0.1] * 3),
        _startup_entry("cli-train", "numpy", 2.0, command="fmbench train numpy"),
        _startup_entry("compile-cold", "jax", 1.0, **COLD_PARTS),
        _startup_entry("load-cache", "data", 0.07, sources=["/cache/a"] * 4),
    ]  # fmt: skip


def make_run(
    node: str = "box-a",
    *,
    numpy_median: float = 0.5,
    numpy_iqr: float = 0.01,
    compile_warm_median: float = 0.3,
    when: str = "2026-01-02T10:00:00+00:00",
    run_id: str = "run-1",
    skipped: bool = True,
) -> dict:
    """A complete, valid document like ``benchmarks/`` writes."""
    limit = ReadLimit(bytes=NUM_TRAIN * 784 * 4, threads=2, what="np.sum")
    compute = ComputeFloor(threads=2, flops_per_call=2 * 2048**3, epoch_flops=4 * NUM_TRAIN * 7840)
    benchmarks = [
        _entry(
            bench_nodeid("test_read_limit", "2"), limit, _stats(LIMIT_MEDIAN, LIMIT_MEDIAN / 20, 30)
        ),
        _epoch_entry("numpy", numpy_median, numpy_iqr),
        _epoch_entry("d2l-reference", BASELINE_MEDIAN, 0.2),
    ]
    benchmarks += [_sweep_entry("numpy", "batch", size, numpy_median) for size in (64, 256, 1024)]
    benchmarks += [_sweep_entry("numpy", "threads", n, numpy_median * 2 / n) for n in (1, 2)]
    benchmarks += _startup_entries(compile_warm_median)
    benchmarks.append(
        _entry(bench_nodeid("test_compute_floor", "2"), compute, _stats(COMPUTE_MEDIAN, 0.0008, 30))
    )
    tests = [
        {"nodeid": b["fullname"], "kind": b["extra_info"]["kind"], "outcome": "passed",
         "impl": b["extra_info"]["implementation"], "device": "cpu", "reason": ""}
        for b in benchmarks
    ]  # fmt: skip
    if skipped:
        tests.append(
            {"nodeid": bench_nodeid("test_epoch", "jax-cpu"), "kind": "epoch", "impl": "jax",
             "device": "cpu", "outcome": "skipped", "reason": "jax: framework missing: needs jax"}
        )  # fmt: skip
        tests.append(
            {"nodeid": bench_nodeid("test_epoch", "torch-nn-cpu"), "kind": "epoch",
             "impl": "torch-nn", "device": "cpu", "outcome": "failed",
             "reason": "WorkerError: torch-nn: boom"}
        )  # fmt: skip
    return {
        "machine_info": {
            "node": node, "python_version": "3.11.7", "system": "Linux",
            "cpu": {"brand_raw": "Test CPU"},
            "fmbench": {
                "cpu_model": "Test CPU", "logical_cpus": 2, "physical_cores": 2,
                "memory_bytes": 8 * 2**30, "threads": 2,
                "load_average": {"start": [0.1, 0.1, 0.1], "end": [2.0, 1.0, 0.5]},
                "other_cpu_use": {"wall_seconds": 100, "other_cpu_seconds": 5, "other_cpus": 0.05},
                "versions": {"numpy": "2.0", "torch": "2.5"},
                "numpy_blas": [{"internal_api": "openblas", "version": "0.3"}],
                "frameworks": {"numpy": {"device_name": "cpu", "threads": 2}},
            },
        },
        "commit_info": {"id": "0123456789abcdef", "dirty": False},
        "benchmarks": benchmarks,
        "datetime": when,
        "version": "5.3.1",
        "fmbench": {
            "schema": results.SCHEMA, "run_id": run_id,
            "settings": {"epochs": 10, "threads": 2, "sweep_rounds": 5, "quick": False,
                         "target_accuracy": TARGET, "batch_size": 256},
            "sweep_excluded": {"d2l-reference": "too slow"},
            "registry": {
                "numpy": {"summary": "", "follows_shared_order": True},
                "d2l-reference": {"summary": "", "follows_shared_order": False},
            },
            "tests": tests,
            "sample": None,
        },
    }  # fmt: skip


def find(document: dict, kind: str, name: str | None = None) -> dict:
    """The benchmark of ``kind`` (and implementation or start-up ``name``) in ``document``."""
    return next(
        b
        for b in document["benchmarks"]
        if b["extra_info"]["kind"] == kind
        and name in (None, b["extra_info"].get("startup"), b["extra_info"]["implementation"])
    )


def expected(benchmark: dict) -> dict:
    """The derived numbers of one raw benchmark item, computed from its raw fields alone."""
    info, median = benchmark["extra_info"], benchmark["stats"]["median"]
    if info["kind"] == "limit":
        return {"gigabytes_per_s": info["bytes"] / median / 1e9}
    if info["kind"] == "compute":
        rate = info["flops_per_call"] / median
        return {"flops_per_s": rate, "floor_s": info["epoch_flops"] / rate}
    if info["kind"] == "startup":
        return {}
    history = info["history"]
    warmup = info.get("warmup_epochs", len(history) - info.get("timed_rounds", len(history) - 1))
    evaluated = [r["test_accuracy"] for r in history if r["test_accuracy"] is not None]
    tta, total, target = None, 0.0, info.get("target_accuracy")
    for record in history:
        total += record["train_seconds"]
        if target is not None and (record["test_accuracy"] or 0) >= target:
            tta = total
            break
    return {
        "examples_per_s": info["num_train"] / median,
        "first_epoch_s": sum(r["train_seconds"] for r in history[:warmup]),
        "final_test_accuracy": evaluated[-1],
        "time_to_accuracy_s": tta,
    }


def write(path: Path, document: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def assert_close(actual, value, what) -> None:
    """``actual`` (a frame cell, NaN when empty) is ``value`` (None when absent)."""
    if value is None:
        assert actual is None or actual != actual, what  # None or NaN
    else:
        assert actual == pytest.approx(value), what


def row_of(frame, kind: str, implementation: str, run: int = 0):
    rows = frame[
        (frame["kind"] == kind)
        & (frame["implementation"] == implementation)
        & (frame["run"] == run)
    ]
    assert len(rows) == 1
    return rows.iloc[0]


def earlier_report(tmp_path: Path) -> Path:
    """An output directory holding an earlier report, which bad input must leave alone."""
    out = tmp_path / "reports"
    (out / "figures").mkdir(parents=True)
    (out / "README.md").write_text("earlier report\n")
    (out / "figures" / "epoch_time.png").write_bytes(b"earlier figure")
    (out / "results.csv").write_text("earlier,results\n")
    return out


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return earlier_report(tmp_path)


# ----------------------------------------------------------- a valid report


def test_report_from_a_valid_run(tmp_path: Path, out_dir: Path) -> None:
    document = make_run()
    markdown = report.build_report([write(tmp_path / "run.json", document)], out_dir).read_text()
    numpy = find(document, "epoch", "numpy")
    numbers = expected(numpy)
    assert f"{number(BASELINE_MEDIAN / 0.5)}×" in markdown
    assert f"{numbers['examples_per_s']:,.0f}" in markdown
    assert f"{numbers['final_test_accuracy']:.4f}" in markdown
    # Skipped and failed implementations are listed with their reasons.
    for test in document["fmbench"]["tests"][-2:]:
        assert test["reason"] in markdown
    for name in ("epoch_time.png", "accuracy_by_epoch.png", "accuracy_by_time.png"):
        assert (out_dir / "figures" / name).stat().st_size > 1000
        assert f"figures/{name}" in markdown
    assert not (out_dir / "figures" / "predictions.png").exists()  # the run has no sample
    assert not list(tmp_path.glob(".reports.tmp-*")), "the staging directory is removed"
    # The rounds' clock, said once, in the Method; this run's rounds all have it.
    assert markdown.count("stored in pytest-benchmark's record") == 1
    assert "compare such runs with care" not in markdown


def test_results_frame_numbers(tmp_path: Path) -> None:
    """Every derived number of the frame, computed here from the raw fields."""
    document = make_run()
    frame = report.results_frame(report.load_runs([write(tmp_path / "run.json", document)]))
    for benchmark, (_, row) in zip(document["benchmarks"], frame.iterrows(), strict=True):
        for column, value in expected(benchmark).items():
            assert_close(row[column], value, (benchmark["name"], column))
    numpy = row_of(frame, "epoch", "numpy")
    first = find(document, "epoch", "numpy")["extra_info"]["history"][0]["train_seconds"]
    assert numpy["first_epoch_s"] == pytest.approx(first)
    assert numpy["time_to_accuracy_s"] == pytest.approx(first + 5 * 0.5)  # epoch 6: 0.825
    assert numpy["speedup_vs_baseline"] == pytest.approx(BASELINE_MEDIAN / 0.5)
    assert numpy["limit_multiple"] == pytest.approx(0.5 / LIMIT_MEDIAN)
    assert numpy["peak_rss_mib"] == pytest.approx(300)
    floor = expected(find(document, "compute"))["floor_s"]
    assert numpy["floor_multiple"] == pytest.approx(0.5 / floor)
    assert row_of(frame, "compute", "compute")["floor_limit_multiple"] == pytest.approx(
        floor / LIMIT_MEDIAN
    )
    cold = frame[frame["startup"] == "compile-cold"].iloc[0]
    assert cold["build_s"] == pytest.approx(statistics.median(COLD_PARTS["build_seconds"]))
    assert cold["compile_s"] == pytest.approx(statistics.median([0.7, 0.9]))  # None left out
    assert cold["first_epoch_s"] == pytest.approx(statistics.median([0.1, 0.12, 0.3]))


def test_compute_floor_and_limit_sentences(tmp_path: Path) -> None:
    document = make_run()
    path = report.build_report([write(tmp_path / "r.json", document)], tmp_path / "out")
    text = path.read_text()
    compute = find(document, "compute")["extra_info"]
    floor = expected(find(document, "compute"))
    gigaflops = compute["flops_per_call"] / COMPUTE_MEDIAN / 1e9
    assert f"{number(compute['epoch_flops'] / 1e9)} GFLOP" in text
    assert f"{number(1000 * floor['floor_s'])} ms" in text
    assert f"{number(gigaflops)} GFLOP/s" in text
    assert f"{number(floor['floor_s'] / LIMIT_MEDIAN)}×" in text
    assert f"{number(0.5 / floor['floor_s'])}×" in text  # numpy, the fastest
    gigabytes = expected(find(document, "limit"))["gigabytes_per_s"]
    assert f"{number(1000 * LIMIT_MEDIAN)} ms ({number(gigabytes)} GB/s" in text


def test_speedup_against_the_cpu_baseline_is_marked(tmp_path: Path) -> None:
    """A cuda row on a machine whose baseline ran on the CPU only: its speed-up is against
    the CPU baseline, and the cell and the text say so; the CPU rows are not marked."""
    document = make_run()
    nodeid = bench_nodeid("test_epoch", "torch-nn-cuda")
    case = dataclasses.replace(_training("epoch", "torch-nn", 0.05), device="cuda")
    document["benchmarks"].append(_entry(nodeid, case, _stats(0.05, 0.001)))
    document["fmbench"]["tests"].append(
        {"nodeid": nodeid, "kind": "epoch", "impl": "torch-nn", "device": "cuda",
         "outcome": "passed", "reason": ""}
    )  # fmt: skip
    path = write(tmp_path / "run.json", document)
    frame = report.results_frame(report.load_runs([path]))
    cuda = frame[frame["device"] == "cuda"].iloc[0]
    assert cuda["speedup_vs_baseline"] == pytest.approx(BASELINE_MEDIAN / 0.05)
    assert cuda["speedup_baseline_device"] == "cpu"
    text = report.build_report([path], tmp_path / "out").read_text()
    (row,) = [
        line
        for line in text.splitlines()
        if line.startswith("| torch-nn ") and " cuda " in line and " 0.050 (0.0010) " in line
    ]
    assert f"| {number(BASELINE_MEDIAN / 0.05)}× (vs cpu baseline) " in row
    assert text.count("(vs cpu baseline)") == 2  # the cuda row, and the text under the table
    assert "did not run on a row's device, against its CPU median instead" in text


def test_sweeps_state_what_they_held_fixed_as_they_ran(tmp_path: Path) -> None:
    """The thread sweep ran at batch size 128, which the run's settings do not record."""
    document = make_run()
    del document["fmbench"]["settings"]["batch_size"]
    for benchmark in document["benchmarks"]:
        if benchmark["extra_info"]["kind"] == "threads":
            benchmark["extra_info"]["batch_size"] = 128
    text = report.build_report([write(tmp_path / "r.json", document)], tmp_path / "o").read_text()
    assert "% of the median). At batch size 128.\n" in text
    assert "% of the median). At 2 threads.\n" in text  # the batch sweep's
    assert "| 1 thread " in text and "| 2 threads " in text  # the thread sweep's columns


def test_startup_table(tmp_path: Path) -> None:
    runs = report.load_runs([write(tmp_path / "run.json", make_run())])
    table = startup_table(report.results_frame(runs), with_machine=False, with_delta=False)
    assert list(table.iloc[:, 0]) == ["load-cache", "cli-train", "compile-cold", "compile-warm"]
    cold = table.iloc[2].to_dict()
    for part in ("build_seconds", "first_epoch_seconds"):
        assert number(statistics.median(COLD_PARTS[part])) in str(cold)
    assert number(statistics.median([0.7, 0.9])) in str(cold)


def test_cold_and_warm_compiles_are_compared_apart(tmp_path: Path, out_dir: Path) -> None:
    before = write(tmp_path / "before.json", make_run(run_id="old"))
    after = write(
        tmp_path / "after.json",
        make_run(compile_warm_median=0.6, run_id="new", when="2026-01-05T10:00:00+00:00"),
    )
    frame = report.results_frame(report.load_runs([after]), report.load_runs([before]))
    startup = frame[frame["kind"] == "startup"].set_index("startup")
    assert startup.loc["compile-warm", "verdict"] == "regression"
    assert startup.loc["compile-warm", "previous_median_s"] == pytest.approx(0.3)
    assert startup.loc["compile-cold", "verdict"] == "within noise"
    markdown = report.build_report([after], out_dir, previous=before).read_text()
    assert f"{number(0.3)} s → {number(0.6)} s ({100 * (0.6 - 0.3) / 0.3:+.1f} %" in markdown


def test_competing_load_is_reported(tmp_path: Path) -> None:
    quiet = report.build_report([write(tmp_path / "q.json", make_run())], tmp_path / "q")
    assert "0.05 of 2 CPUs" not in quiet.read_text()  # below BUSY_OTHER_CPUS: not mentioned
    document = make_run()
    document["machine_info"]["fmbench"]["other_cpu_use"]["other_cpus"] = 1.2
    busy = report.build_report([write(tmp_path / "b.json", document)], tmp_path / "b")
    assert "1.20 of 2 CPUs" in busy.read_text()


def test_build_report_takes_loaded_runs_without_reading_again(tmp_path: Path, monkeypatch):
    runs = report.load_runs([write(tmp_path / "run.json", make_run())])

    def no_reading(path):
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr(run_loading, "read_json", no_reading)
    assert report.build_report(runs, tmp_path / "out", previous=runs).is_file()


# ---------------------------------------------------- merging and comparing


def test_merging_two_machines(tmp_path: Path, out_dir: Path) -> None:
    a = write(tmp_path / "a.json", make_run("box-a", run_id="a"))
    b = write(tmp_path / "b.json", make_run("box-b", numpy_median=0.25, run_id="b"))
    runs = report.load_runs([a, b])
    assert "box-a" in runs[0].label and "box-b" in runs[1].label
    markdown = report.build_report(runs, out_dir).read_text()
    assert all(run.label in markdown for run in runs)
    frame = report.results_frame(runs)
    speedups = frame[(frame["kind"] == "epoch") & (frame["implementation"] == "numpy")]
    assert list(speedups["machine"]) == [run.label for run in runs]
    assert list(speedups["speedup_vs_baseline"]) == pytest.approx(
        [BASELINE_MEDIAN / 0.5, BASELINE_MEDIAN / 0.25]
    )


def test_same_machine_twice_is_told_apart_by_date(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", make_run(run_id="a"))
    b = write(tmp_path / "b.json", make_run(run_id="b", when="2026-01-03T10:00:00+00:00"))
    labels = [run.label for run in report.load_runs([a, b])]
    assert len(set(labels)) == 2 and "2026-01-03 10:00" in labels[1]


def test_comparison_marks_a_clear_regression(tmp_path: Path, out_dir: Path) -> None:
    before = write(tmp_path / "before.json", make_run(numpy_median=0.5, run_id="old"))
    after = write(
        tmp_path / "after.json",
        make_run(numpy_median=0.8, run_id="new", when="2026-01-05T10:00:00+00:00"),
    )
    markdown = report.build_report([after], out_dir, previous=before).read_text()
    assert f"{100 * (0.8 - 0.5) / 0.5:+.1f} % ▲ slower" in markdown
    frame = report.results_frame(report.load_runs([after]), report.load_runs([before]))
    verdicts = dict(zip(frame["name"] + "/" + frame["kind"], frame["verdict"], strict=True))
    assert verdicts["test_epoch[numpy-cpu]/epoch"] == "regression"
    assert verdicts["test_epoch[d2l-reference-cpu]/epoch"] == "within noise"


def test_change_within_noise_is_not_flagged(tmp_path: Path) -> None:
    before = report.load_runs([write(tmp_path / "b.json", make_run(numpy_iqr=0.2, run_id="x"))])
    after = report.load_runs(
        [write(tmp_path / "a.json", make_run(numpy_median=0.6, numpy_iqr=0.2, run_id="y"))]
    )
    row = row_of(report.results_frame(after, before), "epoch", "numpy")
    assert row["delta_pct"] == pytest.approx(100 * (0.6 - 0.5) / 0.5)
    assert row["verdict"] == "within noise"  # 0.1 s slower, but the IQR is 0.2 s


def test_compare_rule() -> None:
    def measured(median: float, iqr: float) -> results.Measurement:
        timing = results.Timing.from_dict(_stats(median, iqr))
        return results.Measurement("x", "x", "epoch", timing, ReadLimit(bytes=1, threads=1))

    assert report.compare(measured(1.15, 0.01), measured(1.0, 0.01))["verdict"] == "regression"
    assert report.compare(measured(1.08, 0.01), measured(1.0, 0.01))["verdict"] == "within noise"
    assert report.compare(measured(1.04, 0.0), measured(1.0, 0.0))["verdict"] == "within noise"
    assert report.compare(measured(0.80, 0.05), measured(1.0, 0.05))["verdict"] == "improvement"
    assert report.compare(measured(1.3, 0.4), measured(1.0, 0.0))["verdict"] == "within noise"


def test_previous_run_from_another_machine_is_marked(tmp_path: Path) -> None:
    a, b, b2 = (
        report.load_run(write(tmp_path / f"{name}.json", make_run(node, run_id=name)))
        for name, node in (("a", "box-a"), ("b", "box-b"), ("b2", "box-b"))
    )
    assert previous_runs.pair_previous([a], [b]) == {0: (b, False)}  # one each: compared
    assert previous_runs.pair_previous([a, b2], [b]) == {1: (b, True)}  # else by machine


def test_a_run_is_never_compared_with_itself(tmp_path: Path, capsys) -> None:
    """The same file, or a copy with the same run_id, is left out before the fallback that
    pairs one run with one run from another machine; runs without a run_id are told apart
    by their file."""
    path = write(tmp_path / "run.json", make_run(run_id="same"))
    run, again = report.load_run(path), report.load_run(path)
    copy = report.load_run(write(tmp_path / "copy.json", make_run("box-b", run_id="same")))
    assert previous_runs.pair_previous([run], [again]) == {}
    assert previous_runs.pair_previous([run], [copy]) == {}
    old, new = (
        report.load_run(write(tmp_path / f"{name}.json", make_run(run_id=None, when=when)))
        for name, when in (("old", "2026-01-01T00:00:00"), ("new", "2026-01-02T00:00:00"))
    )
    assert previous_runs.pair_previous([new], [old]) == {0: (old, True)}
    assert report.find_previous(new, [old, new]) is old
    out = tmp_path / "out"
    assert report.main([str(path), "--previous", str(path), "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    assert "from another machine" not in text and "Δ vs previous" not in text


def test_previous_runs_are_paired_once(tmp_path: Path, monkeypatch) -> None:
    """The report pairs each run with its previous run once, and the frame uses that."""
    before = write(tmp_path / "before.json", make_run(run_id="old"))
    after = write(tmp_path / "after.json", make_run(run_id="new", when="2026-01-05T10:00:00"))
    calls = []
    real = previous_runs.pair_previous

    def counted(runs, previous):
        calls.append(len(runs))
        return real(runs, previous)

    monkeypatch.setattr(results_frame, "pair_previous", counted)
    monkeypatch.setattr(report_text, "pair_previous", counted)
    markdown = report.build_report([after], tmp_path / "out", previous=before).read_text()
    assert calls == [1] and "Δ vs previous" in markdown


def _storage(tmp_path: Path) -> Path:
    storage = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit"
    write(storage / "0001_old.json", make_run(run_id="r1", when="2026-01-01T00:00:00+00:00"))
    write(storage / "0002_mid.json", make_run(run_id="r2", when="2026-01-02T00:00:00+00:00"))
    write(storage / "0003_cur.json", make_run(run_id="r3", when="2026-01-03T00:00:00+00:00"))
    write(storage / "0004_other.json", make_run("box-z", run_id="r4", when="2026-01-02T12:00:00"))
    write(storage / "0005_broken.json", "{")
    quick = make_run(run_id="r5", when="2026-01-02T18:00:00+00:00")
    quick["fmbench"]["settings"]["quick"] = True  # a smoke run is not compared with a real one
    write(storage / "0006_quick.json", quick)
    return tmp_path / ".benchmarks"


def test_find_previous_in_storage(tmp_path: Path) -> None:
    saved = report.load_saved(_storage(tmp_path))
    assert len(saved) == 5  # the broken file is passed over
    current = report.load_run(
        write(tmp_path / "last-run.json", make_run(run_id="r3", when="2026-01-03T00:00:01+00:00"))
    )
    assert report.find_previous(current, saved).path.name == "0002_mid.json"
    assert report.newest(saved).path.name == "0003_cur.json"


def _count_reads(monkeypatch) -> list[Path]:
    """Every file the report parses from now on, in order."""
    read: list[Path] = []
    real = run_loading.read_json

    def counting(path: Path):
        read.append(path.resolve())
        return real(path)

    monkeypatch.setattr(run_loading, "read_json", counting)
    return read


def test_each_file_is_parsed_once(tmp_path: Path, monkeypatch) -> None:
    """Two runs reported, previous runs searched in storage: every file read once."""
    storage = _storage(tmp_path)
    current = [
        write(storage / "Linux-CPython-3.11-64bit" / "0007_new.json",
              make_run(run_id="r7", when="2026-01-04T00:00:00+00:00")),
        write(tmp_path / "elsewhere.json",
              make_run("box-z", run_id="r8", when="2026-01-04T00:00:00+00:00")),
    ]  # fmt: skip
    read = _count_reads(monkeypatch)
    args = [*map(str, current), "--out", str(tmp_path / "out"), "--storage", str(storage)]
    assert report.main(args) == 0
    assert sorted(read) == sorted({*read}) and len(read) == 8  # 7 saved files + elsewhere.json
    text = (tmp_path / "out" / "README.md").read_text()
    assert "0003_cur.json" in text and "0004_other.json" in text  # each machine's previous run


# ----------------------------------------------------------------------- CLI


def test_main_writes_the_report(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "run.json", make_run())
    out = tmp_path / "out"
    code = report.main([str(path), "--out", str(out), "--storage", str(tmp_path / "none")])
    assert code == 0
    assert (out / "README.md").is_file()
    assert "torch-nn: boom" in capsys.readouterr().err
    code = report.main([str(path), "--out", str(out), "--previous", "none", "--fail-on-failures"])
    assert code == 1  # the report lists torch-nn as failed


def test_main_without_files_reports_the_newest_saved_run(tmp_path: Path, monkeypatch) -> None:
    storage = _storage(tmp_path)
    read = _count_reads(monkeypatch)
    assert report.main(["--out", str(tmp_path / "out"), "--storage", str(storage)]) == 0
    assert len(read) == len(set(read)) == 6
    text = (tmp_path / "out" / "README.md").read_text()
    assert "`0003_cur.json`" in text and "0002_mid.json" in text  # compared with the previous


def test_main_reports_errors_clearly(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "broken.json", "")
    code = report.main([str(path), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "broken.json" in err and "empty file" in err
    assert not (tmp_path / "out").exists()


def test_main_without_files_and_nothing_saved(tmp_path: Path, capsys) -> None:
    code = report.main(["--out", str(tmp_path / "out"), "--storage", str(tmp_path / "nothing")])
    assert code == 2
    assert str(tmp_path / "nothing") in capsys.readouterr().err


# ------------------------------------------------- the committed schema-1 runs

# Three runs written before the result format (schema 1), once the reference report's:
# what a user's old saved runs look like, kept so that they keep loading.
SCHEMA1 = Path(__file__).resolve().parent / "data" / "schema1"
REFERENCE_RUNS = sorted(SCHEMA1.glob("run-*.json"))


@pytest.mark.parametrize("path", REFERENCE_RUNS, ids=lambda p: p.name)
def test_committed_runs_recompute_their_stored_numbers(path: Path) -> None:
    """Schema 1 stored derived numbers; recomputed from the raw fields they are the same."""
    document = json.loads(path.read_text())
    assert document["fmbench"]["schema"] == 1
    frame = report.results_frame(report.load_runs([path]))
    stored = {"examples_per_s": "examples_per_second", "gigabytes_per_s": "gigabytes_per_second",
              "floor_s": "floor_seconds", "final_test_accuracy": "final_test_accuracy",
              "first_epoch_s": "first_epoch_seconds",
              "time_to_accuracy_s": "time_to_accuracy_seconds"}  # fmt: skip
    for benchmark, (_, row) in zip(document["benchmarks"], frame.iterrows(), strict=True):
        assert row["name"] == benchmark["name"]
        for column, value in expected(benchmark).items():
            assert_close(row[column], value, (benchmark["name"], column))
            sweep = benchmark["extra_info"]["kind"] in ("batch", "threads")
            if column == "first_epoch_s" and sweep:
                continue  # schema 1 timed a sweep's warm-up from the pytest process
            if stored.get(column) in benchmark["extra_info"]:
                assert_close(benchmark["extra_info"][stored[column]], value, column)


def test_stored_derived_numbers_are_ignored(tmp_path: Path) -> None:
    document = json.loads(REFERENCE_RUNS[0].read_text())
    for benchmark in document["benchmarks"]:
        info = benchmark["extra_info"]
        if info["kind"] in results.TRAINING_KINDS:
            for key in ("examples_per_second", "final_test_accuracy", "first_epoch_seconds"):
                info[key] = 0.5
    changed = report.results_frame(report.load_runs([write(tmp_path / "r.json", document)]))
    original = report.results_frame(report.load_runs(REFERENCE_RUNS[:1]))
    for column in ("examples_per_s", "final_test_accuracy", "first_epoch_s"):
        assert changed[column].equals(original[column]), column


def hypot(spread: float, stats: dict) -> float:
    """A ratio's relative spread: ``spread`` and the other median's, added in quadrature."""
    return math.hypot(spread, stats["iqr"] / stats["median"])


def test_committed_runs_build_with_their_numbers(tmp_path: Path) -> None:
    """The committed runs build into a report whose main table shows, for every
    implementation of every run, the numbers computed from the JSON."""
    assert len(REFERENCE_RUNS) >= 1
    text = report.build_report(REFERENCE_RUNS, tmp_path / "ref", previous=None).read_text()
    assert len(list((tmp_path / "ref" / "figures").glob("*.png"))) == 4
    for path in REFERENCE_RUNS:
        document = json.loads(path.read_text())
        limit = find(document, "limit")["stats"]
        epochs = [b for b in document["benchmarks"] if b["extra_info"]["kind"] == "epoch"]
        baseline = find(document, "epoch", "d2l-reference")["stats"]
        for benchmark in epochs:
            stats, numbers = benchmark["stats"], expected(benchmark)
            spread = stats["iqr"] / stats["median"]
            cell = f"{rounded(stats['median'], spread)} ({number(stats['iqr'], 2)})"
            impl = benchmark["extra_info"]["implementation"]
            (line,) = [row for row in text.splitlines() if f"| {impl} " in row and cell in row]
            for value in (
                rounded(numbers["examples_per_s"], spread, grouped=True),
                f"{rounded(baseline['median'] / stats['median'], hypot(spread, baseline))}×",
                f"{rounded(stats['median'] / limit['median'], hypot(spread, limit))}×",
                number(numbers["first_epoch_s"]),
                f"{numbers['final_test_accuracy']:.4f}",  # one seed: no sd
                "not recorded",  # schema 1: no start-up, so no time to result
                number(benchmark["extra_info"]["peak_rss_bytes"] / 2**20),
            ):
                assert f" {value} " in line, (path.name, impl, value)
            # The parts it did record are in the time-to-result table: import, build, training.
            info = benchmark["extra_info"]
            (parts,) = [row for row in text.splitlines() if f"| {impl} " in row
                        and "| as run " in row and f"| {number(info['build_seconds'])} " in row
                        and f"| {number(info['import_seconds'])} " in row]  # fmt: skip
            tta = numbers["time_to_accuracy_s"]
            assert f"| {number(tta) if tta is not None else 'not reached'} " in parts
            assert parts.count("| not recorded ") == 2  # the start, and so the total
        gigabytes = expected(find(document, "limit"))["gigabytes_per_s"]
        spread = limit["iqr"] / limit["median"]
        read = f"{rounded(1000 * limit['median'], spread)} ms ({rounded(gigabytes, spread)} GB/s"
        assert read in text
        floor = expected(find(document, "compute"))["floor_s"]
        assert f"take {number(1000 * floor)} ms" in text


@pytest.mark.parametrize(
    ("schema", "worker_history", "worker_rounds"),
    [(4, True, True), (3, True, False), (2, True, False), (1, False, False)],
)
def test_method_names_the_clocks(tmp_path, out_dir, schema, worker_history, worker_rounds) -> None:
    """Histories are timed by the worker from schema 2, timed rounds from schema 4; before,
    by the request from the pytest process, which the Method says when runs mix them."""
    document = make_run()
    document["fmbench"]["schema"] = schema
    markdown = report.build_report([write(tmp_path / "run.json", document)], out_dir).read_text()
    assert ("*First epoch*, *time to accuracy*" in markdown) is worker_history
    assert ("compare such runs with care" not in markdown) is worker_rounds


# ------------------------------------------------- the committed reference report

REFERENCE = Path(__file__).resolve().parent.parent / "reports" / "reference"


def test_the_reference_report_builds_from_its_committed_runs(tmp_path: Path) -> None:
    """The runs behind reports/reference/ load with this format and build every section,
    as the README's command builds them (the newer against the older)."""
    older, newer = sorted(REFERENCE.glob("run-*.json"))[-2:]
    for path in (older, newer):
        assert json.loads(path.read_text())["fmbench"]["schema"] == results.SCHEMA
    out = tmp_path / "reference"
    code = report.main(
        [str(newer), "--previous", str(older), "--history", str(REFERENCE), "--out", str(out)]
    )
    assert code == 0
    text = (out / "README.md").read_text()
    for section in ("## Epoch time and accuracy", "### Rounds in a spell", "## Input size",
                    "## Baseline breakdown", "### Compared with the previous run", "History",
                    "Time to result", "Accuracy over seeds", "## Run time"):  # fmt: skip
        assert section in text, section
    assert (out / "results.csv").is_file()
