"""The report generator on synthetic pytest-benchmark JSON: validation, merging, comparison."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("tabulate")
pytest.importorskip("matplotlib")

from impls import report

NUM_TRAIN = 60000


def _stats(median: float, iqr: float = 0.0, rounds: int = 9) -> dict:
    return {
        "min": median - iqr,
        "max": median + iqr,
        "mean": median,
        "stddev": iqr / 1.35,
        "rounds": rounds,
        "median": median,
        "iqr": iqr,
        "q1": median - iqr / 2,
        "q3": median + iqr / 2,
        "iqr_outliers": 0,
        "stddev_outliers": 0,
        "outliers": "0;0",
        "ld15iqr": median - iqr,
        "hd15iqr": median + iqr,
        "ops": 1 / median,
        "total": median * rounds,
        "iterations": 1,
    }


def _history(epoch_seconds: float, epochs: int = 10) -> list[dict]:
    return [
        {
            "epoch": epoch,
            "train_loss": 1 / epoch,
            "train_accuracy": 0.7 + 0.01 * epoch,
            "test_loss": 1 / epoch,
            "test_accuracy": 0.75 + 0.01 * epoch,
            "train_seconds": epoch_seconds,
            "worker_seconds": epoch_seconds,
            "eval_seconds": 0.01,
        }
        for epoch in range(1, epochs + 1)
    ]


def _nodeid(test: str, param: str) -> str:
    return f"benchmarks/test_softmax_bench.py::{test}[{param}]"


def _entry(nodeid: str, group: str, stats: dict, **info: object) -> dict:
    """One benchmark as pytest-benchmark writes it, with fmbench's extra_info."""
    return {
        "group": group,
        "name": nodeid.split("::")[1],
        "fullname": nodeid,
        "stats": stats,
        "extra_info": {"device": "cpu", "threads": 2, **info},
    }


def _epoch_entry(impl: str, median: float, iqr: float = 0.0) -> dict:
    entry = _entry(
        _nodeid("test_epoch", f"{impl}-cpu"),
        "epoch",
        _stats(median, iqr),
        kind="epoch",
        implementation=impl,
        batch_size=256,
        runtime={"device": "cpu", "threads": 2},
        build_seconds=0.1,
        epochs=10,
        timed_rounds=9,
        first_epoch_seconds=2 * median,
        num_train=NUM_TRAIN,
        examples_per_second=NUM_TRAIN / median,
        final_test_accuracy=0.84,
        target_accuracy=0.82,
        time_to_accuracy_seconds=8 * median,
        history=_history(median),
        predictions=[0] * 18,
        peak_rss_bytes=300 * 2**20,
        peak_rss_children_bytes=0,
    )
    return {**entry, "params": None, "param": f"{impl}-cpu", "options": {}}


def _sweep_entry(impl: str, kind: str, value: int, median: float) -> dict:
    param = f"{impl}-cpu-{'batch' if kind == 'batch' else 'threads'}{value}"
    test = "test_sweep_batch_size" if kind == "batch" else "test_sweep_threads"
    return _entry(
        _nodeid(test, param),
        report.GROUP_KINDS[kind],
        _stats(median, median / 50, rounds=5),
        kind=kind,
        implementation=impl,
        threads=value if kind == "threads" else 2,
        batch_size=value if kind == "batch" else 256,
        num_train=NUM_TRAIN,
        first_epoch_seconds=median,
        final_test_accuracy=0.8,
    )


def _limit_entry(median: float = 0.012) -> dict:
    return _entry(
        "benchmarks/test_softmax_bench.py::test_read_limit",
        "epoch",
        _stats(median, median / 20, rounds=30),
        kind="limit",
        implementation="limit",
        bytes=NUM_TRAIN * 784 * 4,
        batch_size=None,
    )


def _compute_entry(median: float = 0.08) -> dict:
    return _entry(
        "benchmarks/test_softmax_bench.py::test_compute_floor",
        "compute floor",
        _stats(median, median / 100, rounds=30),
        kind="compute",
        implementation="compute",
        batch_size=None,
        flops_per_call=2 * 2048**3,
        epoch_flops=4 * NUM_TRAIN * 784 * 10,
    )


STARTUP_TESTS = {"load-cache": "test_load_from_cache", "cli-train": "test_cli_train"}


def _startup_entry(name: str, impl: str, median: float, **details: object) -> dict:
    test = STARTUP_TESTS.get(name, "test_compile")
    return _entry(
        f"benchmarks/test_startup_bench.py::{test}[{impl}-cpu-{name}]",
        "start-up",
        _stats(median, median / 50, rounds=5),
        kind="startup",
        startup=name,
        implementation=impl,
        batch_size=None,
        what=f"timed: {name}",
        **details,
    )


def _startup_entries(compile_warm_median: float) -> list[dict]:
    compile_parts = {"build_seconds": [0.8, 0.9, 1.0], "compile_seconds": [0.7, 0.8, 0.9]}
    return [
        _startup_entry("compile-warm", "jax", compile_warm_median, build_seconds=[0.2] * 3,
                       compile_seconds=[0.15] * 3, first_epoch_seconds=[0.1] * 3),
        _startup_entry("cli-train", "numpy", 2.0),
        _startup_entry("compile-cold", "jax", 1.0, first_epoch_seconds=[0.1] * 3,
                       **compile_parts),
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
    benchmarks = [
        _limit_entry(),
        _epoch_entry("numpy", numpy_median, numpy_iqr),
        _epoch_entry("d2l-reference", 9.0, 0.2),
    ]
    benchmarks += [_sweep_entry("numpy", "batch", size, numpy_median) for size in (64, 256, 1024)]
    benchmarks += [_sweep_entry("numpy", "threads", n, numpy_median * 2 / n) for n in (1, 2)]
    benchmarks += _startup_entries(compile_warm_median)
    benchmarks.append(_compute_entry())
    tests = [
        {"nodeid": b["fullname"], "kind": b["extra_info"]["kind"], "outcome": "passed",
         "impl": b["extra_info"]["implementation"], "device": "cpu", "reason": ""}
        for b in benchmarks
    ]  # fmt: skip
    if skipped:
        tests.append(
            {"nodeid": _nodeid("test_epoch", "jax-cpu"), "kind": "epoch", "impl": "jax",
             "device": "cpu", "outcome": "skipped", "reason": "jax: framework missing: needs jax"}
        )  # fmt: skip
        tests.append(
            {"nodeid": _nodeid("test_epoch", "torch-nn-cpu"), "kind": "epoch", "impl": "torch-nn",
             "device": "cpu", "outcome": "failed", "reason": "WorkerError: torch-nn: boom"}
        )  # fmt: skip
    return {
        "machine_info": {
            "node": node,
            "python_version": "3.11.7",
            "system": "Linux",
            "cpu": {"brand_raw": "Test CPU"},
            "fmbench": {
                "cpu_model": "Test CPU",
                "logical_cpus": 2,
                "physical_cores": 2,
                "memory_bytes": 8 * 2**30,
                "threads": 2,
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
            "schema": 1,
            "run_id": run_id,
            "settings": {"epochs": 10, "threads": 2, "sweep_rounds": 5, "quick": False,
                         "target_accuracy": 0.82, "batch_size": 256},
            "sweep_excluded": {"d2l-reference": "too slow"},
            "registry": {
                "numpy": {"summary": "", "follows_shared_order": True},
                "d2l-reference": {"summary": "", "follows_shared_order": False},
            },
            "tests": tests,
            "sample": None,
        },
    }  # fmt: skip


def write(path: Path, document: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An output directory holding an earlier report, which bad input must leave alone."""
    out = tmp_path / "reports"
    (out / "figures").mkdir(parents=True)
    (out / "README.md").write_text("earlier report\n")
    (out / "figures" / "epoch_time.png").write_bytes(b"earlier figure")
    return out


# ----------------------------------------------------------- a valid report


def test_report_from_a_valid_run(tmp_path: Path, out_dir: Path) -> None:
    path = write(tmp_path / "run.json", make_run())
    markdown = report.build_report([path], out_dir).read_text()
    for column in (
        "implementation", "epoch [s] median (IQR)", "examples/s", "speed-up vs d2l-reference",
        "× limit", "first epoch [s]", "test accuracy", "time to 0.82 [s]", "peak RSS [MiB]",
    ):  # fmt: skip
        assert column in markdown
    assert "machine" not in markdown.split("## Epoch time")[1].split("\n\n")[1].splitlines()[0]
    assert "Δ vs previous" not in markdown
    assert "## Sweep: batch size" in markdown and "## Sweep: threads" in markdown
    assert "18.0×" in markdown  # numpy: 9.0 s / 0.5 s over the baseline
    # Skipped and failed implementations are listed with their reasons.
    assert "framework missing: needs jax" in markdown
    assert "WorkerError: torch-nn: boom" in markdown
    for name in ("epoch_time.png", "accuracy_by_epoch.png", "accuracy_by_time.png"):
        assert (out_dir / "figures" / name).stat().st_size > 1000
        assert f"figures/{name}" in markdown
    assert not list(tmp_path.glob(".reports.tmp-*")), "the staging directory is removed"


def test_compute_floor_sentence(tmp_path: Path) -> None:
    markdown = report.build_report([write(tmp_path / "r.json", make_run())], tmp_path / "out")
    text = markdown.read_text()
    # 2 * 2048**3 flop in 0.08 s = 215 GFLOP/s; 1.88 GFLOP at that rate = 8.76 ms.
    assert "(x @ W and the weight gradient, 1.88 GFLOP) take 8.76 ms" in text
    assert "(215 GFLOP/s: one 2048 × 2048 product, 2 threads), 0.730× the limit" in text
    assert "the fastest implementation (numpy) takes 57.1× the floor" in text
    assert "| compute floor (one large matrix product) | 30 " in text
    frame = report.results_frame(report.load_runs([tmp_path / "r.json"]))
    numpy_row = frame[(frame["kind"] == "epoch") & (frame["implementation"] == "numpy")].iloc[0]
    floor = 4 * NUM_TRAIN * 784 * 10 / (2 * 2048**3 / 0.08)
    assert numpy_row["floor_multiple"] == pytest.approx(0.5 / floor)


def test_startup_section(tmp_path: Path) -> None:
    path = write(tmp_path / "run.json", make_run())
    markdown = report.build_report([path], tmp_path / "out").read_text()
    table = markdown.split("## Start-up\n\n")[1].split("\n\n")[0]
    rows = [line for line in table.splitlines() if "---" not in line]
    assert [row.split("|")[1].strip() for row in rows[1:]] == [
        "load-cache", "cli-train", "compile-cold", "compile-warm",
    ]  # fmt: skip
    assert "build 0.900 s (of which compile 0.800 s) + first epoch 0.100 s" in rows[3]
    assert "| 0.0700 (0.0014) " in rows[1]
    noise = markdown.split("## Noise")[1]
    assert "start-up: compile-cold (jax)" in noise and "start-up: load-cache" in noise


def test_startup_entry_needs_what_not_accuracy(tmp_path: Path, out_dir: Path) -> None:
    document = make_run()
    load_cache = document["benchmarks"][-2]["extra_info"]
    assert load_cache["startup"] == "load-cache" and "final_test_accuracy" not in load_cache
    del load_cache["what"]
    entry = "test_load_from_cache[data-cpu-load-cache]"
    _assert_rejected(tmp_path, out_dir, document, entry, "what")


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
    assert "start-up: jax cpu, compile-warm: 0.300 s → 0.600 s" in markdown


def test_competing_load_is_reported(tmp_path: Path) -> None:
    quiet = report.build_report([write(tmp_path / "q.json", make_run())], tmp_path / "q")
    assert "other processes kept" not in quiet.read_text()
    document = make_run()
    document["machine_info"]["fmbench"]["other_cpu_use"]["other_cpus"] = 1.2
    busy = report.build_report([write(tmp_path / "b.json", document)], tmp_path / "b")
    assert "other processes kept 1.20 of 2 CPUs busy" in busy.read_text()


def test_results_frame_numbers(tmp_path: Path) -> None:
    runs = report.load_runs([write(tmp_path / "run.json", make_run())])
    frame = report.results_frame(runs)
    numpy_row = frame[(frame["kind"] == "epoch") & (frame["implementation"] == "numpy")].iloc[0]
    assert numpy_row["speedup_vs_baseline"] == pytest.approx(18.0)
    assert numpy_row["limit_multiple"] == pytest.approx(0.5 / 0.012)
    assert numpy_row["examples_per_s"] == pytest.approx(NUM_TRAIN / 0.5)
    assert numpy_row["peak_rss_mib"] == pytest.approx(300)


# ------------------------------------------------------------- bad inputs


def _assert_rejected(tmp_path: Path, out_dir: Path, document, *needles: str) -> None:
    before = snapshot(out_dir)
    path = write(tmp_path / "bad.json", document)
    with pytest.raises(report.ReportError) as caught:
        report.build_report([path], out_dir)
    message = str(caught.value)
    assert "bad.json" in message
    for needle in needles:
        assert needle in message
    assert snapshot(out_dir) == before, "a rejected input must leave the report untouched"
    assert not list(tmp_path.glob(".reports.tmp-*"))


def test_empty_file(tmp_path: Path, out_dir: Path) -> None:
    _assert_rejected(tmp_path, out_dir, "", "empty file")


def test_truncated_json(tmp_path: Path, out_dir: Path) -> None:
    text = json.dumps(make_run())
    _assert_rejected(tmp_path, out_dir, text[: len(text) // 2], "not valid JSON", "line 1")


def test_not_an_object(tmp_path: Path, out_dir: Path) -> None:
    _assert_rejected(tmp_path, out_dir, "[1, 2]", "not an object")


@pytest.mark.parametrize("key", ["benchmarks", "machine_info", "datetime", "fmbench"])
def test_missing_top_level_key(tmp_path: Path, out_dir: Path, key: str) -> None:
    document = make_run()
    del document[key]
    _assert_rejected(tmp_path, out_dir, document, repr(key))


def test_no_benchmarks(tmp_path: Path, out_dir: Path) -> None:
    document = make_run()
    document["benchmarks"] = []
    _assert_rejected(tmp_path, out_dir, document, "measured nothing")


def test_missing_extra_info(tmp_path: Path, out_dir: Path) -> None:
    document = make_run()
    del document["benchmarks"][1]["extra_info"]
    _assert_rejected(tmp_path, out_dir, document, "test_epoch[numpy-cpu]", "'extra_info'")


def test_empty_extra_info(tmp_path: Path, out_dir: Path) -> None:
    document = make_run()
    document["benchmarks"][1]["extra_info"] = {}
    _assert_rejected(tmp_path, out_dir, document, "extra_info is empty")


@pytest.mark.parametrize(
    ("where", "key"),
    [("stats", "median"), ("stats", "q3"), ("extra_info", "history"), ("extra_info", "kind")],
)
def test_missing_nested_key(tmp_path: Path, out_dir: Path, where: str, key: str) -> None:
    document = make_run()
    del document["benchmarks"][1][where][key]
    _assert_rejected(tmp_path, out_dir, document, "test_epoch[numpy-cpu]", key)


def test_bad_number(tmp_path: Path, out_dir: Path) -> None:
    document = make_run()
    document["benchmarks"][1]["extra_info"]["final_test_accuracy"] = 1.7
    _assert_rejected(tmp_path, out_dir, document, "final_test_accuracy", "not in [0, 1]")


def test_missing_benchmark_entry(tmp_path: Path, out_dir: Path) -> None:
    """A test that passed without its entry in the file: the file is partial."""
    document = make_run()
    del document["benchmarks"][2]  # d2l-reference's entry
    _assert_rejected(tmp_path, out_dir, document, "test_epoch[d2l-reference-cpu]", "partial")


def test_failed_test_with_timing_is_not_reported_as_measured(tmp_path: Path) -> None:
    """pytest-benchmark keeps an entry whose test failed after timing: list it as failed."""
    document = make_run()
    nodeid = _nodeid("test_epoch", "numpy-cpu")
    for test in document["fmbench"]["tests"]:
        if test["nodeid"] == nodeid:
            test.update(outcome="failed", reason="AssertionError: accuracy out of range")
    out = tmp_path / "out"
    markdown = report.build_report([write(tmp_path / "run.json", document)], out).read_text()
    main = markdown.split("## Epoch time and accuracy")[1].split("### Not measured")
    assert "| numpy " not in main[0]
    assert "AssertionError: accuracy out of range" in main[1]


def test_interrupted_run(tmp_path: Path, out_dir: Path) -> None:
    document = make_run()
    document["fmbench"]["tests"][-1]["outcome"] = "not run"
    _assert_rejected(tmp_path, out_dir, document, "partial run", "never ran")


def test_one_bad_file_among_good_ones(tmp_path: Path, out_dir: Path) -> None:
    good = write(tmp_path / "good.json", make_run())
    bad = write(tmp_path / "bad.json", "{")
    before = snapshot(out_dir)
    with pytest.raises(report.ReportError, match=r"bad\.json"):
        report.build_report([good, bad], out_dir)
    assert snapshot(out_dir) == before


def test_missing_file(tmp_path: Path, out_dir: Path) -> None:
    with pytest.raises(report.ReportError, match=r"nope\.json: no such file"):
        report.build_report([tmp_path / "nope.json"], out_dir)


# ---------------------------------------------------- merging and comparing


def test_merging_two_machines(tmp_path: Path, out_dir: Path) -> None:
    a = write(tmp_path / "a.json", make_run("box-a", run_id="a"))
    b = write(tmp_path / "b.json", make_run("box-b", numpy_median=0.25, run_id="b"))
    markdown = report.build_report([a, b], out_dir).read_text()
    header = markdown.split("## Epoch time and accuracy")[1].strip().splitlines()[0]
    assert header.startswith("| machine")
    assert "box-a (Test CPU, 2 CPUs)" in markdown and "box-b (Test CPU, 2 CPUs)" in markdown
    frame = report.results_frame(report.load_runs([a, b]))
    speedups = frame[(frame["kind"] == "epoch") & (frame["implementation"] == "numpy")]
    assert sorted(speedups["speedup_vs_baseline"]) == pytest.approx([18.0, 36.0])


def test_same_machine_twice_is_told_apart_by_date(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", make_run(run_id="a"))
    b = write(tmp_path / "b.json", make_run(run_id="b", when="2026-01-03T10:00:00+00:00"))
    labels = [run.label for run in report.load_runs([a, b])]
    assert len(set(labels)) == 2


def test_comparison_marks_a_clear_regression(tmp_path: Path, out_dir: Path) -> None:
    before = write(tmp_path / "before.json", make_run(numpy_median=0.5, run_id="old"))
    after = write(
        tmp_path / "after.json",
        make_run(numpy_median=0.8, run_id="new", when="2026-01-05T10:00:00+00:00"),
    )
    markdown = report.build_report([after], out_dir, previous=before).read_text()
    assert "Δ vs previous" in markdown
    assert "+60.0 % ▲ slower" in markdown
    assert "**regression**" in markdown
    frame = report.results_frame(report.load_runs([after]), report.load_runs([before]))
    verdicts = dict(zip(frame["name"] + "/" + frame["kind"], frame["verdict"], strict=True))
    assert verdicts["test_epoch[numpy-cpu]/epoch"] == "regression"
    assert verdicts["test_epoch[d2l-reference-cpu]/epoch"] == "within noise"


def test_change_within_noise_is_not_flagged(tmp_path: Path) -> None:
    before = report.load_runs([write(tmp_path / "b.json", make_run(numpy_iqr=0.2, run_id="x"))])
    after = report.load_runs(
        [write(tmp_path / "a.json", make_run(numpy_median=0.6, numpy_iqr=0.2, run_id="y"))]
    )
    frame = report.results_frame(after, before)
    row = frame[(frame["kind"] == "epoch") & (frame["implementation"] == "numpy")].iloc[0]
    assert row["delta_pct"] == pytest.approx(20.0)
    assert row["verdict"] == "within noise"  # 0.1 s slower, but the IQR is 0.2 s


def test_compare_rule() -> None:
    def entry(median: float, iqr: float) -> report.Entry:
        return report.Entry("x", "x", "epoch", "epoch", _stats(median, iqr), {})

    assert report.compare(entry(1.15, 0.01), entry(1.0, 0.01))["verdict"] == "regression"
    assert report.compare(entry(1.08, 0.01), entry(1.0, 0.01))["verdict"] == "within noise"
    assert report.compare(entry(1.04, 0.0), entry(1.0, 0.0))["verdict"] == "within noise"
    assert report.compare(entry(0.80, 0.05), entry(1.0, 0.05))["verdict"] == "improvement"


def test_find_previous_in_storage(tmp_path: Path) -> None:
    storage = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit"
    write(storage / "0001_old.json", make_run(run_id="r1", when="2026-01-01T00:00:00+00:00"))
    write(storage / "0002_mid.json", make_run(run_id="r2", when="2026-01-02T00:00:00+00:00"))
    write(storage / "0003_cur.json", make_run(run_id="r3", when="2026-01-03T00:00:00+00:00"))
    write(storage / "0004_other.json", make_run("box-z", run_id="r4", when="2026-01-02T12:00:00"))
    write(storage / "0005_broken.json", "{")
    quick = make_run(run_id="r5", when="2026-01-02T18:00:00+00:00")
    quick["fmbench"]["settings"]["quick"] = True  # a smoke run is not compared with a real one
    write(storage / "0006_quick.json", quick)
    current = report.load_run(
        write(tmp_path / "last-run.json", make_run(run_id="r3", when="2026-01-03T00:00:01+00:00"))
    )
    found = report.find_previous(current, tmp_path / ".benchmarks")
    assert found is not None and found.path.name == "0002_mid.json"
    assert report.newest_saved(tmp_path / ".benchmarks").name == "0003_cur.json"


# ----------------------------------------------------------------------- CLI


def test_main_writes_the_report(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "run.json", make_run())
    out = tmp_path / "out"
    code = report.main([str(path), "--out", str(out), "--storage", str(tmp_path / "none")])
    assert code == 0
    assert (out / "README.md").is_file()
    assert "1 benchmark(s) failed" in capsys.readouterr().err
    code = report.main([str(path), "--out", str(out), "--previous", "none", "--fail-on-failures"])
    assert code == 1  # the report lists torch-nn as failed


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
    assert "none saved under" in capsys.readouterr().err


def test_inputs_are_not_modified(tmp_path: Path, out_dir: Path) -> None:
    document = make_run()
    path = write(tmp_path / "run.json", document)
    report.build_report([path], out_dir)
    assert json.loads(path.read_text()) == copy.deepcopy(document)


REFERENCE = Path(__file__).resolve().parent.parent / "reports" / "reference"


def test_committed_reference_runs_still_build(tmp_path: Path) -> None:
    """The committed reference runs stay readable by the current report code, and the
    committed report is what it builds from them (regenerated after any report change)."""
    runs = sorted(REFERENCE.glob("run-*.json"))
    assert len(runs) >= 1
    path = report.build_report(runs, tmp_path / "reference", previous=None)
    text = path.read_text()
    for implementation in ("numpy", "torch-scratch", "torch-nn", "jax", "d2l-reference"):
        assert f"| {implementation} " in text
    for column in ("epoch [s] median (IQR)", "speed-up vs d2l-reference", "× limit"):
        assert column in text
    assert "## Start-up" in text and "Compute floor" in text
    assert len(list((tmp_path / "reference" / "figures").glob("*.png"))) == 4

    def content(markdown: str) -> list[str]:
        """The lines without the generation date, table padding and alignment rows."""
        return [
            re.sub(r"\s+", " ", line)
            for line in markdown.splitlines()
            if not line.startswith("Report generated") and not re.fullmatch(r"[|:\- ]+", line)
        ]

    assert content(text) == content((REFERENCE / "README.md").read_text())
