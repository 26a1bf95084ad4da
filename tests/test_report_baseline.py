"""The report's Baseline breakdown: d2l-reference's epoch beside its DataLoader alone."""

from __future__ import annotations

from pathlib import Path

from test_report import _entry, _stats, _training, bench_nodeid, make_run, write

from impls import report
from impls.report.baseline import baseline_section
from impls.report.runs import load_run
from impls.report.text import number
from impls.results import LoaderResult

EPOCH = {0: 3.0, 2: 4.0, 4: 5.0}  # the training epoch with N workers
ALONE = {0: 1.5, 2: 3.0}  # the loader alone (none measured at 4)


def _loader_entries() -> list[dict]:
    entries = []
    for workers, median in EPOCH.items():
        case = _training("loader", "d2l-reference", median)
        case = type(case)(**{**case.__dict__, "loader_workers": workers})
        node = bench_nodeid("test_loader_workers", f"d2l-reference-cpu-workers{workers}")
        entries.append(_entry(node, case, _stats(median, median / 100, rounds=2)))
    for workers, median in ALONE.items():
        case = LoaderResult(
            implementation="d2l-reference", device="cpu", threads=2, batch_size=256,
            loader_workers=workers, num_train=60000,
        )  # fmt: skip
        node = bench_nodeid("test_loader_alone", f"d2l-reference-cpu-workers{workers}-data-only")
        entries.append(_entry(node, case, _stats(median, median / 2, rounds=2)))
    return entries


def test_the_breakdown_sets_the_loader_alone_against_the_epoch(tmp_path: Path) -> None:
    document = make_run(skipped=False)
    document["benchmarks"] += _loader_entries()
    for entry in document["benchmarks"][-5:]:
        document["fmbench"]["tests"].append(
            {"nodeid": entry["fullname"], "kind": entry["extra_info"]["kind"],
             "outcome": "passed", "impl": "d2l-reference", "device": "cpu", "reason": ""}
        )  # fmt: skip
    run = load_run(write(tmp_path / "run.json", document))
    lines = baseline_section([run], multi=False)
    assert lines[0] == "## Baseline breakdown"
    rows = [line for line in "\n".join(lines).splitlines() if line.startswith("| d2l-reference")]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    assert [row[2] for row in cells] == ["0", "2", "4"]
    assert cells[0][3:] == ["3.00 (0.030)", "1.50 (0.75) *noisy*", "50%", "1.50"]
    assert cells[1][5:] == ["75%", "1.00"]
    assert cells[2][4:] == ["—", "—", "—"]  # no loader-alone point at 4 workers
    text = report.build_report([tmp_path / "run.json"], tmp_path / "out").read_text()
    assert "## Baseline breakdown" in text


def test_the_main_run_stands_for_the_books_workers(tmp_path: Path) -> None:
    """With no loader point at the book's 4 workers, the main run's d2l-reference epochs,
    the same configuration, fill its row, and the row says so."""
    document = make_run(skipped=False)
    document["benchmarks"] += [
        entry
        for entry in _loader_entries()
        if not entry["fullname"].endswith("workers4]")  # not trained again
    ]
    main = next(b for b in document["benchmarks"] if b["name"] == "test_epoch[d2l-reference-cpu]")
    main["extra_info"]["runtime"]["num_workers"] = 4
    run = load_run(write(tmp_path / "run.json", document))
    lines = "\n".join(baseline_section([run], multi=False)).splitlines()
    rows = [line for line in lines if line.startswith("| d2l-reference")]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    assert [row[2] for row in cells] == ["0", "2", "4"]
    assert cells[2][3] == f"{_seconds_of(main)} (main run)"
    assert "(main run)" not in cells[0][3] + cells[1][3]


def _seconds_of(entry: dict) -> str:
    """An entry's median (IQR) as the breakdown writes it."""
    stats = entry["stats"]
    return f"{number(stats['median'])} ({number(stats['iqr'], 2)})"


def test_runs_without_the_breakdown_have_no_section(tmp_path: Path) -> None:
    run = load_run(write(tmp_path / "run.json", make_run()))
    assert baseline_section([run], multi=False) == []


def test_the_baselines_memory_counts_its_workers(tmp_path: Path) -> None:
    document = make_run(skipped=False)
    for entry in document["benchmarks"]:
        if entry["extra_info"]["kind"] == "epoch":
            workers = entry["extra_info"]["implementation"] == "d2l-reference"
            entry["extra_info"]["peak_tree_pss_bytes"] = 700 * 2**20 if workers else None
    text = report.build_report([write(tmp_path / "run.json", document)], tmp_path / "out")
    rows = text.read_text().splitlines()
    (d2l,) = [row for row in rows if row.startswith("| d2l-reference") and "with workers" in row]
    assert "300 (700 with workers)" in d2l
    assert not any(row.startswith("| numpy") and "with workers" in row for row in rows)
