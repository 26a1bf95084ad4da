"""The report's Run time: each test's wall time summed by part of the run, the rest, the whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report import make_run, write

from impls import report
from impls.report.run_time import REST, main_run_shares, parts, run_time_section
from impls.report.runs import ReportError, load_run

# Seconds per test kind in the fake run (several tests of a kind share its seconds evenly).
SPENT = {"limit": 6.0, "compute": 6.0, "epoch": 120.0, "batch": 30.0, "threads": 12.0,
         "startup": 24.0}  # fmt: skip
RUN_SECONDS = 240.0


def _timed_run(tmp_path: Path) -> Path:
    document = make_run()  # a skipped and a failed test besides the measured ones
    tests = document["fmbench"]["tests"]
    for kind, seconds in SPENT.items():
        of_kind = [test for test in tests if test["kind"] == kind]
        for test in of_kind:
            test["seconds"] = seconds / len(of_kind)
    document["fmbench"]["run_seconds"] = RUN_SECONDS
    return write(tmp_path / "run.json", document)


def _rows(lines: list[str]) -> dict[str, list[str]]:
    cells = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in "\n".join(lines).splitlines()
        if line.startswith("| ") and not line.startswith("| part")
    ]
    return {row[0]: row[1:] for row in cells}


def test_the_parts_add_up_to_the_whole_run(tmp_path: Path) -> None:
    run = load_run(_timed_run(tmp_path))
    seconds = parts(run)
    assert seconds == pytest.approx(
        {"main run": 120.0, "floors": 12.0, "batch-size sweep": 30.0, "thread sweep": 12.0,
         "start-up": 24.0, REST: RUN_SECONDS - 198.0}
    )  # fmt: skip
    assert list(seconds) == [
        "main run",
        "floors",
        "batch-size sweep",
        "thread sweep",
        "start-up",
        REST,
    ]  # fmt: skip  (the run's order, the rest last)
    rows = _rows(run_time_section([run], multi=False))
    assert rows["main run"] == ["2.0"] and rows["floors"] == ["0.20"]
    assert rows[REST] == ["0.70"] and rows["whole run"] == ["4.0"]
    assert "input-size sweep" not in rows  # no such test ran


def test_the_main_run_names_each_implementations_share(tmp_path: Path) -> None:
    run = load_run(_timed_run(tmp_path))
    expected = {
        case.implementation: sum(
            r.train_seconds + (r.eval_seconds or 0) for s in case.seed_runs for r in s.history
        )
        for _, case in run.trained("epoch")
    }
    shares = main_run_shares(run)
    assert shares == pytest.approx(expected)
    assert list(shares) == sorted(expected, key=lambda impl: -expected[impl])  # largest first
    assert next(iter(shares)) == "d2l-reference"
    text = "\n".join(run_time_section([run], multi=False))
    assert "In the main run, each implementation's epochs and evaluations (1 seed)" in text


def test_older_runs_have_no_section(tmp_path: Path) -> None:
    """Files from before the times were recorded: no section, not a table of zeros."""
    old = load_run(write(tmp_path / "old.json", make_run()))
    assert parts(old) is None and run_time_section([old], multi=False) == []
    text = report.build_report([tmp_path / "old.json"], tmp_path / "out").read_text()
    assert "## Run time" not in text
    timed = _timed_run(tmp_path)
    text = report.build_report([timed], tmp_path / "out").read_text()
    assert "## Run time" in text.split("## Machine")[0]


def test_several_runs_get_a_column_each(tmp_path: Path) -> None:
    first = load_run(_timed_run(tmp_path / "a"))
    document = make_run("box-b", run_id="run-2")
    document["fmbench"]["run_seconds"] = 60.0
    for test in document["fmbench"]["tests"]:
        test["seconds"] = 1.0
    second = load_run(write(tmp_path / "b.json", document))
    first.label, second.label = "box-a", "box-b"
    lines = run_time_section([first, second], multi=True)
    header = [cell.strip() for cell in lines[2].splitlines()[0].strip("|").split("|")]
    assert header == ["part of the run", "minutes (box-a)", "minutes (box-b)"]
    rows = _rows(lines)
    assert rows["whole run"] == ["4.0", "1.0"]
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
