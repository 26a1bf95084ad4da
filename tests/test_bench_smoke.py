"""Smoke run of the benchmark suite (numpy only, --quick) and a report built from its JSON."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark")
pd = pytest.importorskip("pandas")
pytest.importorskip("tabulate")
pytest.importorskip("matplotlib")

from impls import registry, report  # noqa: E402
from impls.results import SCHEMA, TrainingResult, from_extra_info  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MISSING_DEVICE = "no-such-device"
SWEPT_SIZE = 40  # the input-size sweep's one point besides 28: small, so the smoke run stays quick


def run_bench(out: Path, *args: str, timeout: float = 300, env=None) -> Path:
    """Run ``benchmarks/`` with ``args`` in a subprocess, as ``nox -s bench`` does; it must
    pass. Return its JSON."""
    run_json = out / "run.json"
    command = [
        sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "-q", *args,
        f"--benchmark-json={run_json}", f"--benchmark-storage={out / 'storage'}",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert run_json.is_file(), result.stdout[-4000:]
    return run_json


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, real_data) -> Path:
    """The numpy smoke run's JSON (every test of the suite, the quickest settings)."""
    return run_bench(
        tmp_path_factory.mktemp("bench"),
        "--impl", "numpy", "--device", "cpu", "--device", MISSING_DEVICE, "--quick",
        "--sizes", f"28,{SWEPT_SIZE}",
    )  # fmt: skip


def test_smoke_json(smoke_run: Path) -> None:
    document = json.loads(smoke_run.read_text())
    kinds = sorted(b["extra_info"]["kind"] for b in document["benchmarks"])
    assert kinds == [
        "batch", "batch", "batch", "compute", "epoch", "limit", "size", "size-compute",
        "size-limit", "startup", "startup", "threads", "threads",
    ]  # fmt: skip
    for bench in document["benchmarks"]:
        assert bench["stats"]["median"] > 0
        assert bench["stats"]["rounds"] >= 1
    assert document["fmbench"]["schema"] == SCHEMA
    cases = [from_extra_info(b["extra_info"]) for b in document["benchmarks"]]  # all valid
    epoch = next(case for case in cases if case.kind == "epoch")
    assert isinstance(epoch, TrainingResult) and epoch.warmup_epochs == 1
    assert [record.epoch for record in epoch.history] == [1, 2]
    assert all(0 < record.test_accuracy <= 1 for record in epoch.history)
    assert epoch.first_epoch_seconds > 0 and epoch.peak_rss_bytes > 50 * 2**20
    assert len(epoch.predictions) == 18
    timed = next(b for b in document["benchmarks"] if b["extra_info"]["kind"] == "epoch")
    # The main run's rounds, timed by its schedule, are stored one by one with a spell mark
    # each, and the canary beside them: one at the start of each visit, one after the last.
    assert document["fmbench"]["settings"]["schedule"] == "round-robin"
    assert len(timed["stats"]["data"]) == timed["stats"]["rounds"] == 1
    assert timed["stats"]["median"] == timed["stats"]["data"][0]
    assert len(epoch.spell_rounds) == 1
    canary = document["fmbench"]["canary"]
    assert len(canary["seconds"]) == 2 and canary["threshold"] > 1
    # One clock: the round is the worker's own around train_epoch, the record's.
    assert timed["stats"]["median"] == pytest.approx(epoch.history[1].train_seconds)
    (size,) = [case for case in cases if case.kind == "size"]
    assert size.size == SWEPT_SIZE and size.config["resize"] == SWEPT_SIZE
    assert size.learning_rate == pytest.approx(0.1 * 784 / SWEPT_SIZE**2)  # the lr rule
    floors = [case for case in cases if case.kind in ("size-limit", "size-compute")]
    assert [floor.size for floor in floors] == [SWEPT_SIZE] * 2
    limit = next(case for case in cases if case.kind == "limit")
    size_limit = next(case for case in floors if case.kind == "size-limit")
    assert size_limit.bytes == limit.bytes * SWEPT_SIZE**2 // 784
    for sweep in (case for case in cases if case.kind in ("batch", "threads", "size")):
        assert sweep.history[-1].test_accuracy is not None  # evaluated once, at the end
        assert all(record.test_accuracy is None for record in sweep.history[:-1])
    machine = document["machine_info"]["fmbench"]
    assert machine["threads"] >= 1 and machine["versions"]["numpy"]
    assert machine["frameworks"]["numpy"]["threads"] == machine["threads"]
    tests = document["fmbench"]["tests"]
    skipped = [t for t in tests if t["outcome"] == "skipped"]
    assert skipped and all(t["device"] == MISSING_DEVICE for t in skipped)
    assert all("not available to numpy" in t["reason"] for t in skipped)
    assert all(t["outcome"] == "passed" for t in tests if t.get("device") != MISSING_DEVICE)
    # Each test's wall time, for the report's Run time: every one ran, within the session.
    assert all(t["seconds"] >= 0 for t in tests)
    main_run = next(t for t in tests if t["kind"] == "epoch" and t["outcome"] == "passed")
    # The schedule runs inside the main run's test: its every epoch and evaluation count there.
    spent = sum(record.train_seconds + record.eval_seconds for record in epoch.history)
    assert main_run["seconds"] >= spent
    # The session's time is stored to 0.1 s, the tests' to 1 ms.
    assert 0 < sum(t["seconds"] for t in tests) <= document["fmbench"]["run_seconds"] + 0.05
    startup = {
        b["extra_info"]["startup"]: b for b in document["benchmarks"]
        if b["extra_info"]["kind"] == "startup"
    }  # fmt: skip
    assert sorted(startup) == ["cli-train", "load-cache"]
    assert startup["cli-train"]["extra_info"]["implementation"] == "numpy"
    assert startup["cli-train"]["extra_info"]["summary"].startswith("numpy: final test accuracy")
    assert len(startup["load-cache"]["extra_info"]["sources"]) == 4


def test_smoke_report(smoke_run: Path, tmp_path: Path) -> None:
    markdown = report.build_report([smoke_run], tmp_path / "reports").read_text()
    table = markdown.split("## Epoch time and accuracy")[1].strip().splitlines()
    header = table[0]
    for column in (
        "implementation", "device", "epoch [s] median (IQR)", "examples/s",
        "speed-up vs d2l-reference", "× limit", "first epoch [s]", "test accuracy",
        "time to 0.82 [s]", "peak RSS [MiB]",
    ):  # fmt: skip
        assert column in header
    assert any(line.startswith("| numpy") for line in table)
    assert "limit: read float32 train set once" in markdown
    assert "not available to numpy" in markdown  # the skipped device is listed
    assert "Smoke run" in markdown
    assert "## Start-up" in markdown and "| cli-train " in markdown
    assert "## Run time" in markdown and "| main run " in markdown and "| whole run " in markdown
    assert "Compute floor: an epoch's matrix products" in markdown
    sizes = markdown.split("## Input size")[1].split("\n## ")[0]
    assert "### 28 × 28" in sizes and f"### {SWEPT_SIZE} × {SWEPT_SIZE}" in sizes
    assert "numpy" in sizes and "Fitted exponents" in sizes and "limit (read once)" in sizes
    figures = tmp_path / "reports" / "figures"
    for name in (
        "epoch_time.png",
        "accuracy_by_epoch.png",
        "accuracy_by_time.png",
        "predictions.png",
        "input_size.png",
    ):
        assert (figures / name).stat().st_size > 1000

    frame = report.results_frame(report.load_runs([smoke_run]))
    assert (frame["median_s"] > 0).all()
    numpy_row = frame[frame["kind"] == "epoch"].iloc[0]
    assert 0 < numpy_row["final_test_accuracy"] <= 1
    assert numpy_row["first_epoch_s"] > 0
    assert numpy_row["examples_per_s"] > 0
    assert numpy_row["limit_multiple"] > 1  # an epoch reads the data more than once
    assert numpy_row["peak_rss_mib"] > 50
    assert pd.isna(numpy_row["speedup_vs_baseline"])  # no d2l-reference in this run


def test_compile_cache_cold_then_warm(tmp_path: Path, real_data) -> None:
    """JAX's compile measurements: a fresh empty cache misses, a filled one hits."""
    pytest.importorskip("jax")
    run_json = run_bench(
        tmp_path, "--impl", "jax", "--device", "cpu", "--device", MISSING_DEVICE, "--quick",
        "-k", "test_compile",
    )  # fmt: skip
    document = json.loads(run_json.read_text())
    entries = {b["extra_info"]["startup"]: b["extra_info"] for b in document["benchmarks"]}
    assert sorted(entries) == ["compile-cold", "compile-warm"]
    assert entries["compile-cold"]["compilation_cache_warm"] == [False]
    assert entries["compile-warm"]["compilation_cache_warm"] == [True]
    for info in entries.values():
        assert info["build_seconds"][0] >= info["compile_seconds"][0] > 0
        assert info["first_epoch_seconds"][0] > 0
    skipped = [t for t in document["fmbench"]["tests"] if t["outcome"] == "skipped"]
    assert [t["name"] for t in skipped] == ["compile-cold", "compile-warm"]
    assert all(f"device {MISSING_DEVICE!r} not available to jax" in t["reason"] for t in skipped)


def test_the_baseline_breakdown_times_the_epoch_and_the_loader_alone(tmp_path, real_data) -> None:
    """d2l-reference with 0 DataLoader workers: its epoch, and its loader with no training."""
    pytest.importorskip("torchvision")
    run_json = run_bench(
        tmp_path, "--impl", "d2l-reference", "--quick", "--loader-workers", "0", "-k", "loader",
        timeout=600,
    )  # fmt: skip
    document = json.loads(run_json.read_text())
    cases = {
        b["extra_info"]["kind"]: from_extra_info(b["extra_info"]) for b in document["benchmarks"]
    }
    assert sorted(cases) == ["loader", "loader-only"]
    assert cases["loader"].loader_workers == cases["loader-only"].loader_workers == 0
    assert cases["loader-only"].num_train == real_data.num_train
    assert cases["loader"].runtime["num_workers"] == 0


# A stand-in data-parallel engine: numpy's trainer, which says what the process it runs in
# was started with (registry.environment_for) and times a made-up "combining" per epoch.
STAND_IN_ENGINE = """
import os
import time

from impls import numpy_softmax
from impls.protocol import EpochStats

COMBINE_SECONDS = 0.002


def environment(config):
    return {"FMBENCH_STAND_IN_REPLICAS": str(config.replicas)}


class StandInTrainer:
    def __init__(self, inner, replicas):
        self.inner, self.replicas = inner, replicas

    def train_epoch(self, order):
        stats = self.inner.train_epoch(order)
        if self.replicas == 1:
            return stats
        time.sleep(COMBINE_SECONDS)
        return EpochStats(stats.loss, stats.accuracy, communication_seconds=COMBINE_SECONDS)

    def measure_communication(self, order):
        assert sorted(order) == list(range(len(order))), "not an epoch's order"
        return {"sleep_seconds": COMBINE_SECONDS, "unmeasurable_seconds": None}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def runtime_info(self):
        return {
            **self.inner.runtime_info(),
            "started_for_replicas": os.environ.get("FMBENCH_STAND_IN_REPLICAS"),
            "communication_clock": "a sleep of 2 ms after each epoch, timed by the stand-in",
        }


def make_trainer(data, params, config):
    inner = numpy_softmax.make_trainer(data, params, config.replace(replicas=1))
    return StandInTrainer(inner, config.replicas)


def available_devices():
    return ["cpu"]
"""

REGISTER_STAND_IN = """
from impls import registry

registry.REGISTRY["stand-in"] = registry.Implementation(
    "stand-in", "fmbench_stand_in", (), "numpy", "numpy behind a stand-in engine",
    data_parallel="stand-in engine (numpy)", environment="fmbench_stand_in:environment",
)
"""


def test_the_replicas_sweep_alternates_its_points_and_skips_what_cannot_fit(
    tmp_path: Path, real_data
) -> None:
    """Each point in a worker started for it, the points' visits alternating, a point beyond
    the cores skipped with its reason; the report's Data parallel section from the run."""
    import os
    import textwrap

    from impls.config import usable_cores

    (tmp_path / "fmbench_stand_in.py").write_text(textwrap.dedent(STAND_IN_ENGINE))
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(REGISTER_STAND_IN))
    too_many = usable_cores() + 1
    run_json = run_bench(
        tmp_path, "--impl", "stand-in", "--impl", "numpy", "--quick", "--no-startup",
        "--threads", "2", "--replicas", f"2,{too_many}", "-k", "test_replicas",
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))},
    )  # fmt: skip
    document = json.loads(run_json.read_text())
    cases = {case.replicas: case for case in map(from_extra_info, (
        b["extra_info"] for b in document["benchmarks"]))}  # fmt: skip
    assert sorted(cases) == [1, 2]  # 1 always swept; numpy has no engine: not swept
    for replicas, case in cases.items():
        assert case.kind == "replicas" and case.implementation == "stand-in"
        assert case.runtime["started_for_replicas"] == str(replicas)
        assert case.config["replicas"] == replicas and case.threads_per_replica == 2 // replicas
        assert len(case.history) == 4 and len(case.spell_rounds) == 2  # --quick: one visit
        assert all(record.test_accuracy is not None for record in case.history)
    assert all(r.communication_seconds is None for r in cases[1].history)
    assert all(r.communication_seconds == 0.002 for r in cases[2].history)
    assert cases[1].communication_apart is None  # asked of R > 1 only, after its epochs
    assert cases[2].communication_apart == {"sleep_seconds": 0.002, "unmeasurable_seconds": None}
    # Both points trained the same epochs from the same seed: the same accuracy.
    assert cases[1].final_test_accuracy == cases[2].final_test_accuracy
    (skipped,) = [t for t in document["fmbench"]["tests"] if t["outcome"] == "skipped"]
    assert skipped["nodeid"].endswith(f"[stand-in-cpu-replicas{too_many}]")
    assert f"{too_many} replicas on the CPU need a core each" in skipped["reason"]

    markdown = report.build_report([run_json], tmp_path / "report").read_text()
    section = markdown.split("## Data parallel")[1].split("\n## ")[0]
    header, _, *lines = [line for line in section.splitlines() if line.startswith("|")]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    rows = {}
    for line in lines:
        row = dict(zip(columns, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        rows[int(row["replicas"])] = row
    assert sorted(rows) == [1, 2] and rows[2]["engine"] == "stand-in engine (numpy)"
    assert [rows[1]["threads per replica"], rows[2]["threads per replica"]] == ["2", "1"]
    assert rows[1]["communication [s/epoch]"] == "— (one replica)"
    assert rows[1]["speed-up vs 1"] == rows[1]["efficiency"] == "reference"
    assert re.fullmatch(r"\d+\.?\d*×", rows[2]["speed-up vs 1"])
    assert rows[2]["communication [s/epoch]"] == "0.0020" and rows[2]["Δ acc. vs 1"] == "+0.0000"
    assert "a sleep of 2 ms after each epoch" in section
    csv = pd.read_csv(tmp_path / "report" / "results.csv")
    assert sorted(csv["replicas"]) == [1, 2]


def _replicas_left(cwd: Path) -> list[str]:
    """The command lines of spawned processes still running in ``cwd`` (torch's replicas)."""
    import psutil

    left = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        command = " ".join(process.info["cmdline"] or [])
        if "multiprocessing" in command and process.info["cwd"] == str(cwd):
            left.append(command)
    return left


def test_the_replicas_sweep_of_a_real_engine(tmp_path: Path, real_data) -> None:
    """torch-nn on DistributedDataParallel at 1 and 2 replicas of one thread each: the same
    accuracy, the communication timed, the replica processes' memory counted."""
    pytest.importorskip("torch")
    from impls import registry

    assert registry.get("torch-nn").data_parallel, "torch-nn has no data-parallel engine"
    run_json = run_bench(
        tmp_path, "--impl", "torch-nn", "--quick", "--no-startup", "--threads", "2",
        "--replicas", "2", "-k", "test_replicas",
    )  # fmt: skip
    document = json.loads(run_json.read_text())
    cases = {
        case.replicas: case
        for case in (from_extra_info(b["extra_info"]) for b in document["benchmarks"])
    }
    assert sorted(cases) == [1, 2]
    one, two = cases[1], cases[2]
    assert two.threads_per_replica == 1 and two.runtime["threads_per_replica"] == 1
    assert two.final_test_accuracy == pytest.approx(one.final_test_accuracy, abs=1e-3)
    assert all(r.communication_seconds is None for r in one.history)
    assert all(r.communication_seconds > 0 for r in two.history)
    # DDP's replicas are processes the worker started: counted in its tree's memory, and
    # stopped with it.
    assert two.peak_tree_pss_bytes > two.peak_rss_bytes
    assert _replicas_left(REPO) == []
    markdown = report.build_report([run_json], tmp_path / "report").read_text()
    assert "## Data parallel" in markdown


def collected(*args: str) -> str:
    """The node ids ``pytest benchmarks --collect-only`` selects with ``args``."""
    command = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider",
               "--collect-only", "-q", *args]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def test_the_main_run_stands_for_the_baselines_point_of_the_books_workers() -> None:
    """d2l-reference's training epoch with the book's 4 DataLoader workers is its main run's
    configuration: not trained again when the main run is selected, trained when it is not."""
    point = "test_loader_workers[d2l-reference-cpu-workers4]"
    full = collected("--impl", "d2l-reference")
    assert "test_epoch[d2l-reference-cpu]" in full and point not in full
    assert "test_loader_workers[d2l-reference-cpu-workers0]" in full
    assert point in collected("--impl", "d2l-reference", "-k", "loader")


def test_opt_in_implementations_are_benchmarked_only_when_named() -> None:
    """By default the benchmark leaves out the opt-in implementations (torch-compile: its build
    would break the run's time budget); ``--impl NAME`` brings one in, start-up rows too."""
    opt_in = [name for name, impl in registry.REGISTRY.items() if impl.opt_in]
    default = collected()
    assert "test_epoch[numpy-cpu]" in default
    assert opt_in and not any(f"[{name}-cpu" in default for name in opt_in)
    for name in opt_in:
        named = collected("--impl", name)
        assert f"test_epoch[{name}-cpu]" in named
        if registry.REGISTRY[name].compile_cache_env:
            assert f"test_compile[{name}-cpu-compile-cold]" in named
