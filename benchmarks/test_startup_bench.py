"""Start-up: what a user waits for before and around the epochs the other file times.

Group ``start-up`` (``extra_info["kind"] == "startup"``, ``extra_info["startup"]``
names the measurement):

* ``load-cache``: :func:`impls.data.load_fashion_mnist` in this process, the four
  files from the suite's cache (or ``--data-dir``), each verified by SHA-256;
* ``cli-train``: ``fmbench train IMPL`` end to end in a fresh process (Python
  start, imports, data from the cache, 10 epochs with evaluation, figures);
* ``compile-cold`` / ``compile-warm``: for an implementation with a persistent
  compilation cache (JAX, Numba), building the trainer (which compiles) plus its first
  epoch, in a fresh worker process whose cache directory is empty (cold) or
  already holds the programs (warm: the cache the last cold round filled, as a
  user's second run finds it). The worker's own ``runtime_info`` must
  agree about the cache state, or the test fails.

Each round that starts a process starts a fresh one; only what the name says
is timed (the worker's Python start, imports and data load are not part of a
compile round).
"""

from __future__ import annotations

import subprocess
import sys

import bench_cases
import bench_workers
import pytest
from bench_options import Settings

from impls.config import TrainConfig
from impls.data import load_fashion_mnist
from impls.results import StartupResult, to_extra_info

pytestmark = pytest.mark.startup


def _startup_info(case: bench_cases.StartupCase, what: str, **details: object) -> dict:
    """The ``extra_info`` of a start-up measurement."""
    result = StartupResult(
        startup=case.name,
        implementation=case.impl,
        device=case.device,
        threads=case.threads,
        what=what,
        **details,
    )
    return to_extra_info(result)


def _start_case(benchmark, case, workers: bench_workers.WorkerPool) -> None:
    """Put ``case`` in its group; skip it when its implementation cannot run here, and fail
    it at once when its implementation hung earlier in the run."""
    benchmark.group = case.group
    reason = bench_workers.missing_reason(case.impl) if case.impl != "data" else None
    if reason:
        pytest.skip(f"{case.impl}: {reason}")
    why = workers.broken.get((case.impl, case.device))
    if why is not None:
        pytest.fail(f"{case.impl} on {case.device} not tried again: it hung earlier ({why})")


def test_load_from_cache(benchmark, settings: Settings, dataset, workers, load_case) -> None:
    """The four files from the cache, verified: what every run pays before training."""
    _start_case(benchmark, load_case, workers)
    data = benchmark.pedantic(
        load_fashion_mnist,
        args=(settings.data_dir,),
        kwargs={"download": False},
        rounds=max(settings.startup_rounds, 3),
        warmup_rounds=1,
        iterations=1,
    )
    benchmark.extra_info.update(
        _startup_info(
            load_case,
            "load the 4 dataset files from the suite's cache, SHA-256 checked",
            sources=list(data.sources),
        )
    )
    assert data.num_train == dataset.num_train


def test_cli_train(benchmark, settings: Settings, dataset, workers, cli_case, tmp_path) -> None:
    """``fmbench train IMPL``, a fresh process each round, as a user runs it."""
    case = cli_case
    _start_case(benchmark, case, workers)
    arguments = ["train", case.impl, "--quiet", "--threads", str(case.threads)]
    if settings.data_dir:
        arguments += ["--data-dir", str(settings.data_dir)]
    command = [sys.executable, "-m", "impls.cli", *arguments, "--out", str(tmp_path / "out")]
    outputs: list[str] = []

    def run_command() -> None:
        done = subprocess.run(
            command,
            env=bench_workers.worker_env(case.threads),
            cwd=bench_workers.REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=settings.worker_timeout,
        )
        if done.returncode != 0:
            pytest.fail(
                f"{' '.join(command[1:])} exited with {done.returncode}:\n{done.stderr[-3000:]}",
                pytrace=False,
            )
        outputs.append(done.stdout)

    # The warm-up round fills the OS page cache with Python's and NumPy's files:
    # "cold" here means a fresh process, not a machine just booted.
    benchmark.pedantic(run_command, rounds=settings.startup_rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(
        _startup_info(
            case,
            f"`fmbench train {case.impl}` end to end in a fresh process: start, imports, data "
            f"from the cache, {TrainConfig().epochs} epochs with evaluation, figures written",
            command=" ".join(["fmbench", *arguments]),
            summary=_summary_line(outputs[-1]),
        )
    )
    assert (tmp_path / "out" / "history.json").is_file()


def _summary_line(stdout: str) -> str:
    """The line of ``fmbench train``'s output that gives the final accuracy and median epoch."""
    lines = stdout.strip().splitlines()
    fallback = lines[-1] if lines else ""
    return next((line for line in lines if "final test accuracy" in line), fallback)


def test_compile(
    benchmark,
    settings: Settings,
    dataset,
    workers,
    compile_case,
    tmp_path_factory,
    filled_compile_caches,
) -> None:
    """Trainer build (compilation) plus the first epoch, with a cold or a warm cache."""
    case = compile_case
    _start_case(benchmark, case, workers)
    cold = case.name == "compile-cold"
    root = tmp_path_factory.mktemp(f"{case.impl}-compile-cache")
    # The cold case runs first; its last round left a filled cache for the warm rounds.
    filled = filled_compile_caches.get((case.impl, case.device))
    config = {"device": case.device, "threads": case.threads, "batch_size": settings.batch_size}
    rounds: list[dict] = []
    current: dict[str, bench_workers.Worker] = {}

    def start_worker(cache_dir) -> bench_workers.Worker:
        worker = bench_workers.Worker(
            case.impl,
            case.device,
            case.threads,
            data_dir=settings.data_dir,
            timeout=settings.worker_timeout,
            env={bench_cases.COMPILE_CACHE_ENV[case.impl]: str(cache_dir)},
        )
        try:
            worker.request("load")  # the framework's import: not what this measures
        except bench_workers.WorkerError:
            worker.close()
            raise
        return worker

    def setup() -> None:
        if "worker" in current:
            current.pop("worker").close()
        cache_dir = root / f"round-{len(rounds)}" if cold else filled
        current["worker"] = start_worker(cache_dir)

    def build_and_first_epoch() -> None:
        worker = current["worker"]
        build = bench_workers.request_build(worker, config)
        epoch = worker.request("train")["record"]
        rounds.append({"build": build, "first_epoch_seconds": epoch["train_seconds"]})

    try:
        if not cold and filled is None:  # no cold round ran (-k): fill a cache, untimed
            filled = root / "shared"
            filler = start_worker(filled)
            try:
                bench_workers.request_build(filler, config)
            finally:
                filler.close()
        benchmark.pedantic(
            build_and_first_epoch,
            setup=setup,
            rounds=settings.cold_rounds if cold else settings.startup_rounds,
            iterations=1,
        )
    except bench_workers.WorkerSkip as reason:
        pytest.skip(f"{case.impl}: {reason}")
    except bench_workers.WorkerError as error:
        pytest.fail(str(error), pytrace=False)
    finally:
        if "worker" in current:
            current.pop("worker").close()
    if cold and rounds:
        filled_compile_caches[(case.impl, case.device)] = root / f"round-{len(rounds) - 1}"
    states = [r["build"]["runtime"].get("compilation_cache_warm") for r in rounds]
    benchmark.extra_info.update(
        _startup_info(
            case,
            f"{case.impl}: trainer build (compiles) + first epoch in a fresh process, "
            f"{'empty' if cold else 'filled'} persistent compilation cache",
            build_seconds=[r["build"]["build_seconds"] for r in rounds],
            compile_seconds=[r["build"]["runtime"].get("compile_seconds") for r in rounds],
            first_epoch_seconds=[r["first_epoch_seconds"] for r in rounds],
            compilation_cache_warm=states,
        )
    )
    assert states == [not cold] * len(rounds), f"the worker reported cache states {states}"
