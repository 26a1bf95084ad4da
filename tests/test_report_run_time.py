"""The report's Run time: each test's wall time summed by part of the run, the rest, the whole."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from test_report import make_run, write

from impls import report, results
from impls.report.run_time import (
    ORDER,
    OTHER,
    OUTSIDE,
    PARTS,
    main_run_seconds,
    run_time_section,
    seconds_by_part,
)
from impls.report.runs import ReportError, load_run

# Seconds per test kind in the fake run (several tests of a kind share its seconds evenly).
SPENT = {"limit": 6.0, "compute": 6.0, "epoch": 120.0, "batch": 30.0, "threads": 12.0,
         "startup": 24.0}  # fmt: skip
RUN_SECONDS = 240.0


def _timed(document: dict, spent: dict[str, float], run_seconds: float) -> dict:
    """``document`` with ``spent`` seconds per test kind and the session's ``run_seconds``."""
    tests = document["fmbench"]["tests"]
    for kind, seconds in spent.items():
        of_kind = [test for test in tests if test["kind"] == kind]
        for test in of_kind:
            test["seconds"] = seconds / len(of_kind)
    document["fmbench"]["run_seconds"] = run_seconds
    return document


def _timed_run(tmp_path: Path, name: str = "run.json") -> Path:
    return write(tmp_path / name, _timed(make_run(), SPENT, RUN_SECONDS))


def _rows(lines: list[str]) -> dict[str, list[str]]:
    """The section's table as {part: [cell per run]}."""
    cells = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in "\n".join(lines).splitlines()
        if line.startswith("| ") and not line.startswith("| part")
    ]
    return {row[0]: row[1:] for row in cells}


def test_every_kind_of_result_has_its_part() -> None:
    assert set(PARTS) == set(results.KINDS)


def test_the_parts_add_up_to_the_whole_run(tmp_path: Path) -> None:
    run = load_run(_timed_run(tmp_path))
    seconds = seconds_by_part(run)
    floors = "floors at 28 × 28"
    assert seconds == pytest.approx(
        {"main run": 120.0, floors: 12.0, "batch-size sweep": 30.0, "thread sweep": 12.0,
         "start-up": 24.0, OUTSIDE: RUN_SECONDS - 198.0}
    )  # fmt: skip
    assert list(seconds) == [
        "main run",
        floors,
        "batch-size sweep",
        "thread sweep",
        "start-up",
        OUTSIDE,
    ]  # fmt: skip  (the table's order, outside any test last)
    rows = _rows(run_time_section([run], multi=False))
    assert rows["main run"] == ["2.00"] and rows[floors] == ["0.20"]
    assert rows[OUTSIDE] == ["0.70"] and rows["whole run"] == ["4.00"]
    assert "input-size sweep (its floors included)" not in rows  # no such test ran


def test_a_kind_it_does_not_know_is_shown_not_lost(tmp_path: Path) -> None:
    document = _timed(make_run(), SPENT, RUN_SECONDS)
    document["fmbench"]["tests"].append(
        {"nodeid": "benchmarks/test_new.py::test_new", "kind": "new-kind",
         "outcome": "skipped", "reason": "not here", "seconds": 30.0}
    )  # fmt: skip
    seconds = seconds_by_part(load_run(write(tmp_path / "run.json", document)))
    assert seconds[OTHER] == 30.0 and seconds[OUTSIDE] == pytest.approx(RUN_SECONDS - 228.0)
    assert sum(seconds.values()) == pytest.approx(RUN_SECONDS)


def test_tests_longer_than_the_session_are_said(tmp_path: Path) -> None:
    """Times that overlap (tests in parallel) or a wrong session time: a negative rest and a
    note, not a rest of 0 that hides it; a hair below 0 is the stored times' rounding."""
    overlapping = load_run(write(tmp_path / "a.json", _timed(make_run(), SPENT, 150.0)))
    assert seconds_by_part(overlapping)[OUTSIDE] == pytest.approx(-48.0)
    text = "\n".join(run_time_section([overlapping], multi=False))
    assert "the tests' times add up to 48 s more than the session's" in text
    rounding = load_run(write(tmp_path / "b.json", _timed(make_run(), SPENT, 197.95)))
    assert seconds_by_part(rounding)[OUTSIDE] == 0.0
    assert "more than the session's" not in "\n".join(run_time_section([rounding], multi=False))


def test_the_main_run_gives_each_implementations_minutes_over_every_seed(tmp_path: Path) -> None:
    run = load_run(_timed_run(tmp_path))
    (numpy,) = [case for _, case in run.trained("epoch") if case.implementation == "numpy"]
    # numpy's history (tests/test_report.py): a 1.0 s warm-up, nine 0.5 s epochs, each
    # evaluated in 0.01 s: 5.6 s a seed. Two more seeds with the same history: 16.8 s.
    seeds = [results.SeedRun(seed, numpy.history) for seed in (1, 2)]
    index = next(i for i, e in enumerate(run.entries) if e.case is numpy)
    run.entries[index] = dataclasses.replace(
        run.entries[index], case=dataclasses.replace(numpy, more_seeds=seeds)
    )
    spent = main_run_seconds(run)
    assert spent["numpy"] == pytest.approx(16.8)
    assert list(spent) == ["d2l-reference", "numpy"]  # the largest first
    text = "\n".join(run_time_section([run], multi=False))
    assert "by its worker's clock (minutes): d2l-reference " in text and "numpy 0.28" in text


def test_another_device_is_its_own_entry(tmp_path: Path) -> None:
    run = load_run(_timed_run(tmp_path))
    entry = next(e for e in run.entries if e.kind == "epoch" and e.implementation == "numpy")
    twin = dataclasses.replace(entry, case=dataclasses.replace(entry.case, device="cuda"))
    run.entries.append(twin)
    assert set(main_run_seconds(run)) == {"d2l-reference", "numpy", "numpy (cuda)"}


def test_older_runs_have_no_column(tmp_path: Path) -> None:
    """Files from before the times were recorded: no section, not a table of zeros; beside
    a run that has them, named as not recorded."""
    old = load_run(write(tmp_path / "old.json", make_run()))
    assert seconds_by_part(old) is None and run_time_section([old], multi=False) == []
    text = report.build_report([tmp_path / "old.json"], tmp_path / "out").read_text()
    assert "## Run time" not in text
    timed = _timed_run(tmp_path)
    text = report.build_report([timed], tmp_path / "out").read_text()
    assert "## Run time" in text.split("## Machine")[0]
    old.label, new = "box-old", load_run(timed)
    new.label = "box-new"
    lines = run_time_section([old, new], multi=True)
    assert "Not recorded by the older run(s): box-old." in lines


def test_several_runs_get_a_column_each_in_one_order(tmp_path: Path) -> None:
    first = load_run(_timed_run(tmp_path / "a"))
    document = make_run("box-b", run_id="run-2")
    document["fmbench"]["run_seconds"] = 60.0
    for test in document["fmbench"]["tests"]:
        test["seconds"] = 1.0 if test["kind"] == "epoch" else None  # the main run only
    second = load_run(write(tmp_path / "b.json", document))
    first.label, second.label = "box-a", "box-b"
    lines = run_time_section([second, first], multi=True)  # the sparser run first
    header = [cell.strip() for cell in lines[2].splitlines()[0].strip("|").split("|")]
    assert header == ["part of the run", "minutes (box-b)", "minutes (box-a)"]
    rows = _rows(lines)
    assert list(rows) == [part for part in ORDER if part in rows] + ["whole run"]
    assert rows["whole run"] == ["1.00", "4.00"]
    assert rows["batch-size sweep"] == ["—", "0.50"]  # not run by box-b: no time, not 0
    assert sum(line.startswith("- box-") for line in lines) == 2


@pytest.mark.parametrize(
    ("where", "value"), [("test", -1.0), ("test", "soon"), ("run", 0.0), ("run", -5.0)]
)
def test_a_bad_time_is_refused_by_name(tmp_path: Path, where: str, value: object) -> None:
    document = make_run()
    if where == "test":
        document["fmbench"]["tests"][0]["seconds"] = value
    else:
        document["fmbench"]["run_seconds"] = value
    with pytest.raises(ReportError, match="seconds"):
        load_run(write(tmp_path / "bad.json", document))
