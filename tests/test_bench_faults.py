"""The benchmark suite under injected faults: every other result is kept, nothing hangs long.

Each test runs ``benchmarks/`` in a subprocess, as ``nox -s bench`` does, with
one fault injected from outside the suite's code: a ``-p`` plugin that makes
``fmbench train`` fail inside a timed round, a relative ``--data-dir`` given
from another directory, or an implementation that hangs (registered by a
``sitecustomize`` module on ``PYTHONPATH``, so the benchmark process and its
workers all see it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark")
pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parent.parent


def run_bench(tmp_path: Path, *args: str, cwd: Path = REPO, env=None, timeout: float = 240):
    """``python -m pytest benchmarks ARGS`` in a subprocess: (result, JSON document or None)."""
    run_json = tmp_path / "run.json"
    command = [
        sys.executable, "-m", "pytest", str(REPO / "benchmarks"), "-p", "no:cacheprovider",
        "-q", f"--benchmark-json={run_json}", f"--benchmark-storage={tmp_path / 'storage'}",
        "--sizes", "28",  # no input-size sweep (the smoke run has one): these cases are faults'
        *args,
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    document = json.loads(run_json.read_text()) if run_json.is_file() else None
    return result, document


def outcomes(document: dict) -> dict[str, dict]:
    """Each test of the run by the last part of its node id."""
    return {test["nodeid"].split("::")[-1]: test for test in document["fmbench"]["tests"]}


def measured(document: dict) -> set[str]:
    return {bench["name"] for bench in document["benchmarks"]}


def with_pythonpath(directory: Path, **extra: str) -> dict[str, str]:
    paths = [str(directory), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)), **extra)


FAILING_CLI = """
import subprocess
import sys
import types


def pytest_collection_finish(session):
    module = sys.modules["test_startup_bench"]
    real_run = subprocess.run

    def run(command, **kwargs):
        if "impls.cli" in command:
            return subprocess.CompletedProcess(command, 3, "", "injected failure of fmbench")
        return real_run(command, **kwargs)

    module.subprocess = types.SimpleNamespace(run=run)
"""


def test_a_failing_timed_command_keeps_every_other_result(tmp_path, real_data) -> None:
    """``fmbench train`` failing inside a timed round: listed as failed, nothing else lost."""
    (tmp_path / "fmbench_failing_cli.py").write_text(FAILING_CLI)
    result, document = run_bench(
        tmp_path,
        "--impl", "numpy", "--quick", "--no-sweeps", "-p", "fmbench_failing_cli",
        "-k", "read_limit or test_epoch or cli_train",
        env=with_pythonpath(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert document is not None, "the run wrote no JSON: every result was lost"
    tests = outcomes(document)
    assert tests["test_cli_train[numpy-cpu-cli-train]"]["outcome"] == "failed"
    assert "injected failure of fmbench" in tests["test_cli_train[numpy-cpu-cli-train]"]["reason"]
    assert {"test_read_limit", "test_epoch[numpy-cpu]"} <= measured(document)
    assert "test_cli_train[numpy-cpu-cli-train]" not in measured(document)


@pytest.mark.parametrize("given_as", ["option", "variable"])
def test_a_relative_data_dir_from_another_directory(tmp_path, real_data, given_as) -> None:
    """A relative data directory given from elsewhere reaches the workers and the commands."""
    data = tmp_path / "fashion-files"  # a name the repository root does not have
    data.mkdir()
    for source in real_data.sources:
        (data / Path(source).name).symlink_to(source)
    where = ["--data-dir", data.name] if given_as == "option" else []
    env = dict(os.environ, FMBENCH_DATA_DIR=data.name) if given_as == "variable" else None
    result, document = run_bench(
        tmp_path, "--impl", "numpy", "--quick", "--no-sweeps", *where,
        "-k", "test_epoch or cli_train", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert {"test_epoch[numpy-cpu]", "test_cli_train[numpy-cpu-cli-train]"} <= measured(document)
    if given_as == "option":
        assert document["fmbench"]["settings"]["data_dir"] == str(data.resolve())


HANGING_IMPLEMENTATION = """
import time

import numpy as np

from impls.protocol import EpochStats, Evaluation


class HangingTrainer:
    def __init__(self, params):
        self.params, self.epochs = params, 0

    def train_epoch(self, order):
        self.epochs += 1
        if self.epochs > 1:  # the warm-up epoch answers; the first timed one never does
            time.sleep(3600)
        return EpochStats(1.0, 0.5)

    def evaluate(self):
        return Evaluation(1.0, 0.5)

    def predict(self, images):
        return np.zeros(len(images), dtype=np.int64)

    def parameters(self):
        return self.params

    def runtime_info(self):
        return {"device": "cpu", "threads": 1}


def make_trainer(data, params, config):
    return HangingTrainer(params)


def available_devices():
    return ["cpu"]
"""

REGISTER_HANGING = """
import os

if os.environ.get("FMBENCH_TEST_HANGING"):
    from impls import registry

    registry.REGISTRY["hang"] = registry.Implementation(
        "hang", "fmbench_hang", (), "numpy", "hangs in its first timed epoch",
        compile_cache_env="FMBENCH_HANG_CACHE",  # so that it has compile start-up cases too
    )
    registry.REGISTRY["stall"] = registry.Implementation(
        "stall", "fmbench_stall", (), "numpy", "never finishes importing"
    )
"""

STALLING_IMPORT = """
import time

time.sleep(3600)
"""


def _inject_hanging(directory: Path) -> None:
    """Put the hanging implementations and the module registering them in ``directory``."""
    (directory / "fmbench_hang.py").write_text(textwrap.dedent(HANGING_IMPLEMENTATION))
    (directory / "fmbench_stall.py").write_text(textwrap.dedent(STALLING_IMPORT))
    (directory / "sitecustomize.py").write_text(textwrap.dedent(REGISTER_HANGING))


def _worker_processes(marker: str) -> list[str]:
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if "bench_worker.py" in command and marker in command:
            found.append(command)
    return found


def test_a_hung_implementation_fails_fast_and_is_not_tried_again(tmp_path, real_data) -> None:
    """A hang costs one epoch timeout, not the worker timeout for every case of the run."""
    _inject_hanging(tmp_path)
    start = time.monotonic()
    result, document = run_bench(
        tmp_path,
        "--impl", "numpy", "--impl", "hang", "--quick",
        "--batch-sizes", "64,256", "--sweep-threads", "1,2",
        "--epoch-timeout-min", "2", "--epoch-timeout-factor", "5",
        env=with_pythonpath(tmp_path, FMBENCH_TEST_HANGING="1"),
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    tests = outcomes(document)
    hang = {name: test for name, test in tests.items() if "[hang-" in name}
    # The main run, 2 batch sizes, 2 thread counts, and the cold and warm compile start-ups.
    assert len(hang) == 7 and all(test["outcome"] == "failed" for test in hang.values())
    assert "no answer to 'train' within 2 s" in hang["test_epoch[hang-cpu]"]["reason"]
    later = [test for name, test in hang.items() if name != "test_epoch[hang-cpu]"]
    assert all("not tried again: it hung earlier" in test["reason"] for test in later)
    numpy = {name for name in tests if "[numpy-" in name}
    assert len(numpy) == 6 and numpy <= measured(document)  # with its cli-train start-up
    # One 2 s epoch timeout in all, not one per case: well under the worker timeout.
    assert elapsed < 120
    assert _worker_processes("--impl hang") == [], "a hung worker was left running"


def test_a_worker_that_hangs_while_starting_is_not_started_again(tmp_path, real_data) -> None:
    """A hang before any epoch (here: the import) is bounded by --worker-timeout, once."""
    _inject_hanging(tmp_path)
    start = time.monotonic()
    result, document = run_bench(
        tmp_path, "--impl", "stall", "--quick", "--no-startup", "--worker-timeout", "3",
        env=with_pythonpath(tmp_path, FMBENCH_TEST_HANGING="1"),
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    tests = {name: test for name, test in outcomes(document).items() if "[stall-" in name}
    assert len(tests) == 6 and all(test["outcome"] == "failed" for test in tests.values())
    assert "no answer to 'load' within 3 s" in tests["test_epoch[stall-cpu]"]["reason"]
    later = [test for name, test in tests.items() if name != "test_epoch[stall-cpu]"]
    assert all("not tried again: it hung earlier" in test["reason"] for test in later)
    assert elapsed < 60  # one 3 s timeout, not one per case
    assert _worker_processes("--impl stall") == [], "a hung worker was left running"


def test_an_injected_spell_is_recorded_and_leaves_no_process(tmp_path, real_data) -> None:
    """A spell made on purpose burns during the run, is stored with it, and ends with it."""
    import psutil

    result, document = run_bench(
        tmp_path, "--impl", "numpy", "--quick", "--no-sweeps", "--no-startup", "--threads", "1",
        "--inject-spell", "0:600",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (spell,) = document["fmbench"]["injected_spells"]
    assert (spell["start_seconds"], spell["seconds"], spell["processes"]) == (0.0, 600.0, 1)
    assert len(spell["pids"]) == 1, "the spell did not start during the main run"
    assert not psutil.pid_exists(spell["pids"][0]), "a 600 s spell outlived the run"


SLOW_BUILD_IMPLEMENTATION = """
import time

import numpy as np

from impls.protocol import EpochStats, Evaluation

BUILD_SECONDS = 1.5


class SlowBuildTrainer:
    def __init__(self, params):
        self.params = params
        time.sleep(BUILD_SECONDS)  # what compiling costs a framework that compiles

    def train_epoch(self, order):
        return EpochStats(0.5, 0.9)

    def evaluate(self):
        return Evaluation(0.5, 0.9)  # past the target from the first epoch

    def predict(self, images):
        return np.zeros(len(images), dtype=np.int64)

    def parameters(self):
        return self.params

    def runtime_info(self):
        return {"device": "cpu", "threads": 1, "strategy": "sleeps while it builds"}


def make_trainer(data, params, config):
    return SlowBuildTrainer(params)


def available_devices():
    return ["cpu"]
"""

REGISTER_SLOW_BUILD = """
from impls import registry

registry.REGISTRY["slowbuild"] = registry.Implementation(
    "slowbuild", "fmbench_slowbuild", (), "numpy", "takes 1.5 s to build"
)
"""


def test_a_slow_build_counts_in_the_time_to_result(tmp_path, real_data) -> None:
    """Time to result starts with the process: a 1.5 s build shows in it, epochs after."""
    from impls.results import TrainingResult, from_extra_info

    (tmp_path / "fmbench_slowbuild.py").write_text(textwrap.dedent(SLOW_BUILD_IMPLEMENTATION))
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(REGISTER_SLOW_BUILD))
    result, document = run_bench(
        tmp_path, "--impl", "slowbuild", "--quick", "--no-sweeps", "--no-startup",
        env=with_pythonpath(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (case,) = [from_extra_info(b["extra_info"]) for b in document["benchmarks"]
               if b["extra_info"]["kind"] == "epoch"]  # fmt: skip
    assert isinstance(case, TrainingResult)
    assert case.build_seconds >= 1.5
    assert 0 < case.data_load_seconds < case.process_start_seconds
    first_epoch = case.history[0].train_seconds
    ready = case.process_start_seconds + case.import_seconds + case.build_seconds
    assert case.time_to_result_seconds() == pytest.approx(ready + first_epoch)
    assert case.time_to_result_seconds(build_seconds=0.25) == pytest.approx(
        ready - case.build_seconds + 0.25 + first_epoch
    )
