"""The result format's replicas and communication seconds, and the report's Data parallel section.

The documents are the synthetic runs of ``test_report`` with a replicas sweep added, its
cases built with :mod:`impls.results` as ``benchmarks/test_replicas_bench.py`` builds them;
expected numbers are computed here from the raw fields, apart from the code under test.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("tabulate")
pytest.importorskip("matplotlib")

from test_report import (
    REFERENCE_RUNS,
    _entry,
    _stats,
    _training,
    bench_nodeid,
    make_run,
    write,
)

from impls import report
from impls.report.replicas import NO_CLOCK, UNSAID_CLOCK, replicas_section
from impls.report.runs import load_run
from impls.report.text import number, rounded
from impls.results import EpochRecord, TrainingResult, from_extra_info, to_extra_info
from impls.stored import ResultError

EPOCHS = 7  # the sweep's: a warm-up, then two visits of one untimed and two timed epochs
TIMED = [3, 4, 6, 7]
CLOCK = "DDP's all-reduce futures, waited on after backward"


def _replicas_case(
    impl: str, replicas: int, median: float, communication: list[float] | None, accuracy: float
) -> TrainingResult:
    """A sweep point: ``communication`` seconds per epoch (None: not measured)."""
    base = _training("replicas", impl, median)
    history = [
        EpochRecord(
            epoch=epoch, train_loss=0.5, train_accuracy=0.8, test_loss=0.5,
            test_accuracy=accuracy if epoch == EPOCHS else 0.7, train_seconds=median,
            eval_seconds=0.01,
            communication_seconds=None if communication is None else communication[epoch - 1],
        )
        for epoch in range(1, EPOCHS + 1)
    ]  # fmt: skip
    runtime = {**base.runtime, "communication_clock": CLOCK} if communication else base.runtime
    return dataclasses.replace(
        base, history=history, replicas=replicas, runtime=runtime,
        config={"replicas": replicas, "seed": 0}, peak_rss_bytes=200 * 2**20,
        # torch's import starts a child that comes and goes: one replica has a tree too.
        peak_tree_pss_bytes=(500 * 2**20 if impl == "torch-nn" else None),
    )  # fmt: skip


# Communication per epoch of torch-nn at 2 replicas: the timed epochs' differ from the others'.
TORCH_COMMUNICATION = [0.5, 0.4, 0.02, 0.04, 0.3, 0.03, 0.05]
POINTS = {  # (implementation, replicas): (median, IQR, communication, final accuracy)
    ("torch-nn", 1): (0.20, 0.004, None, 0.8123),
    ("torch-nn", 2): (0.16, 0.032, TORCH_COMMUNICATION, 0.8123),
    ("jax", 1): (0.05, 0.001, None, 0.8120),
    ("jax", 2): (0.08, 0.002, None, 0.8121),
}


def with_sweep(document: dict, points=POINTS) -> dict:
    """``document`` with the replicas sweep's points, each test passed."""
    for (impl, replicas), (median, iqr, communication, accuracy) in points.items():
        case = _replicas_case(impl, replicas, median, communication, accuracy)
        node = bench_nodeid("test_replicas", f"{impl}-cpu-replicas{replicas}").replace(
            "test_softmax_bench", "test_replicas_bench"
        )
        document["benchmarks"].append(_entry(node, case, _stats(median, iqr, rounds=4)))
        document["fmbench"]["tests"].append(
            {"nodeid": node, "kind": "replicas", "outcome": "passed", "impl": impl,
             "device": "cpu", "reason": ""}
        )  # fmt: skip
    document["fmbench"]["settings"]["schedule"] = "round-robin"
    document["fmbench"]["registry"]["torch-nn"] = {"data_parallel": "DistributedDataParallel"}
    return document


def table_rows(lines: list[str]) -> dict[tuple[str, int], dict[str, str]]:
    """The section's table as {(implementation, replicas): {column: cell}}."""
    header, _, *rows = [line for line in "\n".join(lines).splitlines() if line.startswith("|")]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    table = {}
    for line in rows:
        row = dict(zip(columns, (c.strip() for c in line.strip("|").split("|")), strict=True))
        table[(row["implementation"], int(row["replicas"]))] = row
    return table


# ------------------------------------------------------------- the format


def test_replicas_and_communication_seconds_survive_the_round_trip() -> None:
    case = _replicas_case("torch-nn", 2, 0.16, TORCH_COMMUNICATION, 0.8123)
    read = from_extra_info(to_extra_info(case))
    assert read == case and read.replicas == 2 and read.threads_per_replica == 1
    assert [r.communication_seconds for r in read.history] == TORCH_COMMUNICATION
    record = EpochRecord.from_dict(case.history[0].as_dict())
    assert record.communication_seconds == TORCH_COMMUNICATION[0]


def test_older_records_and_cases_read_as_one_replica_not_measured() -> None:
    info = to_extra_info(_training("epoch", "numpy", 0.5))
    del info["replicas"]
    for record in info["history"]:
        del record["communication_seconds"]
    case = from_extra_info(info)
    assert case.replicas == 1 and case.threads_per_replica == 2
    assert all(record.communication_seconds is None for record in case.history)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("replicas", 0, "replicas is 0"), ("replicas", 3, "replicas is 3, not between 1 and the 2")],
)
def test_a_bad_replicas_count_is_refused(field: str, value: int, message: str) -> None:
    info = {**to_extra_info(_training("replicas", "jax", 0.1)), field: value}
    with pytest.raises(ResultError, match=message):
        from_extra_info(info)


def test_negative_communication_seconds_are_refused() -> None:
    record = {**_training("replicas", "jax", 0.1).history[0].as_dict()}
    record["communication_seconds"] = -0.1
    with pytest.raises(ResultError, match=r"communication_seconds is -0\.1, negative"):
        EpochRecord.from_dict(record, "history[0]")


def test_runs_from_before_the_sweep_load_as_one_replica() -> None:
    for path in REFERENCE_RUNS:  # schema 1
        run = load_run(path)
        trained = [entry.case for entry in run.entries if isinstance(entry.case, TrainingResult)]
        assert trained and all(case.replicas == 1 for case in trained)
        assert all(r.communication_seconds is None for c in trained for r in c.history)
        assert replicas_section([run], multi=False) == []


# ------------------------------------------------------------- the section


def test_the_section_sets_each_point_against_one_replica(tmp_path: Path) -> None:
    run = load_run(write(tmp_path / "run.json", with_sweep(make_run())))
    lines = replicas_section([run], multi=False)
    assert lines[0] == "## Data parallel"
    table = table_rows(lines)
    assert sorted(table) == [("jax", 1), ("jax", 2), ("torch-nn", 1), ("torch-nn", 2)]

    one, two = table[("torch-nn", 1)], table[("torch-nn", 2)]
    assert two["engine"] == "DistributedDataParallel"
    assert [one["threads per replica"], two["threads per replica"]] == ["2", "1"]
    assert one["epoch [s] median (IQR)"] == "0.200 (0.0040)"
    assert two["epoch [s] median (IQR)"] == "0.16 (0.032) *noisy*"  # IQR 20 % of the median
    spread = math.hypot(0.004 / 0.2, 0.032 / 0.16)
    assert two["speed-up vs 1"] == f"{rounded(0.2 / 0.16, spread)}×"
    assert two["efficiency"] == rounded(0.2 / 0.16 / 2, spread)
    # The timed epochs' communication (3, 4, 6, 7), not the warm-up's or the untimed ones'.
    timed = sorted(TORCH_COMMUNICATION[epoch - 1] for epoch in TIMED)
    median = (timed[1] + timed[2]) / 2
    assert two["communication [s/epoch]"] == number(median, 2)
    assert two["of the epoch"] == f"{median / 0.16:.1%}"
    assert one["communication [s/epoch]"] == "— (one replica)"
    assert [one["Δ acc. vs 1"], two["Δ acc. vs 1"]] == ["+0.0000", "+0.0000"]
    assert two["test acc. (epoch 7)"] == "0.8123"
    assert two["peak RSS [MiB]"] == "200 (500 with its processes)"
    # R=1 runs in the main run's worker, whose peak holds its earlier measurements.
    assert one["peak RSS [MiB]"] == "main table"
    assert one["speed-up vs 1"] == one["efficiency"] == "reference"

    jax = table[("jax", 2)]
    assert jax["speed-up vs 1"] == f"{rounded(0.05 / 0.08, math.hypot(0.02, 0.025))}×"
    assert jax["communication [s/epoch]"] == "not measured"
    assert jax["Δ acc. vs 1"] == "+0.0001"
    text = "\n".join(lines)
    assert f"- *torch-nn*: {CLOCK}." in lines and f"- *jax*: {NO_CLOCK}." in lines
    assert "the run's 2 threads shared as threads/R per replica" in text


def test_a_measurement_apart_from_the_epochs_is_given_below_the_table(tmp_path: Path) -> None:
    document = with_sweep(make_run())
    (jax,) = [b for b in document["benchmarks"] if b["name"] == "test_replicas[jax-cpu-replicas2]"]
    jax["extra_info"]["communication_apart"] = {
        "collective_seconds": 0.012, "profiled_epoch_seconds": 0.09, "on_a_gpu_seconds": None,
    }  # fmt: skip
    jax["extra_info"]["runtime"]["communication_clock"] = "XLA's all-reduce inside the epoch"
    lines = replicas_section([load_run(write(tmp_path / "run.json", document))], multi=False)
    assert table_rows(lines)[("jax", 2)]["communication [s/epoch]"] == "measured apart (below)"
    assert (
        "- *jax*: XLA's all-reduce inside the epoch; measured apart from the timed epochs, "
        "untimed: collective 0.012 s, profiled epoch 0.090 s, on a gpu — at 2 replicas."
    ) in lines


def test_a_clock_the_trainer_does_not_describe_is_said_to_be_its_own(tmp_path: Path) -> None:
    document = with_sweep(make_run())
    for benchmark in document["benchmarks"]:
        benchmark["extra_info"].get("runtime", {}).pop("communication_clock", None)
    lines = replicas_section([load_run(write(tmp_path / "run.json", document))], multi=False)
    assert f"- *torch-nn*: {UNSAID_CLOCK}." in lines and f"- *jax*: {NO_CLOCK}." in lines


def test_a_point_without_its_reference_has_no_speed_up(tmp_path: Path) -> None:
    points = {key: value for key, value in POINTS.items() if key != ("jax", 1)}
    run = load_run(write(tmp_path / "run.json", with_sweep(make_run(), points)))
    row = table_rows(replicas_section([run], multi=False))[("jax", 2)]
    assert row["speed-up vs 1"] == row["efficiency"] == row["Δ acc. vs 1"] == "—"


def test_runs_without_the_sweep_have_no_section(tmp_path: Path) -> None:
    run = load_run(write(tmp_path / "run.json", make_run()))
    assert replicas_section([run], multi=False) == []


def test_the_report_and_results_csv_keep_the_replicas_apart(tmp_path: Path) -> None:
    path = write(tmp_path / "run.json", with_sweep(make_run()))
    text = report.build_report([path], tmp_path / "out").read_text()
    assert "## Data parallel" in text
    csv = __import__("pandas").read_csv(tmp_path / "out" / "results.csv")
    sweep = csv[csv["kind"] == "replicas"]
    assert sorted(zip(sweep["implementation"], sweep["replicas"], strict=True)) == [
        ("jax", 1), ("jax", 2), ("torch-nn", 1), ("torch-nn", 2)
    ]  # fmt: skip
    assert set(csv[csv["kind"] != "replicas"]["replicas"]) == {1}


def test_a_previous_run_is_matched_point_by_point(tmp_path: Path) -> None:
    """Two replicas points of one implementation are two measurements in a comparison: R=2 is
    judged against the previous R=2, never against R=1."""
    before = write(tmp_path / "before.json", with_sweep(make_run(run_id="a")))
    faster = {**POINTS, ("torch-nn", 2): (0.10, 0.001, TORCH_COMMUNICATION, 0.8123)}
    after = with_sweep(make_run(run_id="b", when="2026-01-03T10:00:00+00:00"), faster)
    frame = report.results_frame(
        report.load_runs([write(tmp_path / "after.json", after)]), report.load_runs([before])
    )
    sweep = frame[frame["kind"] == "replicas"].set_index(["implementation", "replicas"])
    assert sweep.loc[("torch-nn", 2), "previous_median_s"] == 0.16
    assert sweep.loc[("torch-nn", 1), "previous_median_s"] == 0.20
    assert sweep.loc[("torch-nn", 2), "verdict"] == "improvement"
    text = report.build_report(
        [tmp_path / "after.json"], tmp_path / "out", previous=[before]
    ).read_text()
    assert "sweep: replicas: torch-nn cpu, 2 replicas" in text
