"""What the benchmark tests share: settings, cases, the worker client and the epoch loops.

The benchmarks run in the pytest process; each implementation trains in a
worker process (``bench_worker.py``) that the tests drive one request at a time.
pytest-benchmark times the round trip of a ``train`` request, which is one
epoch of training plus a pipe round trip of well under a millisecond; the
worker also times the epoch itself, and both are recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
WORKER_SCRIPT = HERE / "bench_worker.py"

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# Implementations left out of the sweeps by default, and why (--sweep-slow includes them).
SWEEP_EXCLUDED = {
    "d2l-reference": (
        "the slowest by far (3 to 9 s per epoch on a 2-core CPU, 20 to 50 times the others): "
        "the two sweeps would add 30 of its epochs, 2 to 5 minutes; --sweep-slow includes it"
    ),
}

GROUP_EPOCH = "epoch"
GROUP_BATCH = "sweep: batch size"
GROUP_THREADS = "sweep: threads"
GROUP_STARTUP = "start-up"
GROUP_COMPUTE = "compute floor"
PREDICTION_COUNT = 18

# Start-up measurements beyond the epoch: which implementations' ``fmbench train``
# is timed end to end, and which keep a persistent compilation cache (and the
# environment variable that points it elsewhere), timed cold and warm.
CLI_STARTUP_IMPLS = ("numpy",)
COMPILE_CACHE_ENV = {"jax": "FMBENCH_JAX_CACHE_DIR"}


@dataclass(frozen=True)
class Settings:
    """The options of one benchmark session, resolved."""

    impls: tuple[str, ...]
    devices: tuple[str, ...]
    threads: int
    quick: bool
    epochs: int  # main run: the first epoch is warm-up, the other epochs - 1 are timed rounds
    sweep_rounds: int  # timed rounds per sweep point, after one warm-up epoch
    limit_rounds: int
    target_accuracy: float
    batch_sizes: tuple[int, ...]
    sweep_threads: tuple[int, ...]
    sweeps: bool
    sweep_slow: bool
    data_dir: str | None
    worker_timeout: float
    startup: bool = True
    startup_rounds: int = 5
    batch_size: int = 256
    sweep_warmup: int = 1

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Case:
    """One benchmark: an implementation on a device at a thread count and batch size."""

    kind: str  # "epoch", "batch" or "threads"
    impl: str
    device: str
    threads: int
    batch_size: int

    @property
    def id(self) -> str:
        suffix = {
            "epoch": "",
            "batch": f"-batch{self.batch_size}",
            "threads": f"-threads{self.threads}",
        }
        return f"{self.impl}-{self.device}{suffix[self.kind]}"

    @property
    def group(self) -> str:
        return {"epoch": GROUP_EPOCH, "batch": GROUP_BATCH, "threads": GROUP_THREADS}[self.kind]


@dataclass(frozen=True)
class StartupCase:
    """One start-up measurement: ``name`` is ``load-cache``, ``cli-train``, ``compile-cold``
    or ``compile-warm``; ``impl`` is ``data`` for the loader."""

    name: str
    impl: str
    device: str
    threads: int
    kind: str = "startup"

    @property
    def id(self) -> str:
        return f"{self.impl}-{self.device}-{self.name}"

    @property
    def group(self) -> str:
        return GROUP_STARTUP


# --------------------------------------------------------------------- workers


class WorkerError(RuntimeError):
    """The worker reported an error or died; the message says which and why."""


class WorkerSkip(Exception):
    """The implementation cannot run here (framework, module or device missing)."""


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a process the benchmarks start: threads pinned, the repo importable."""
    env = dict(os.environ, **thread_env(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def thread_env(threads: int) -> dict[str, str]:
    """The environment that pins every BLAS/OpenMP pool of a worker to ``threads``."""
    return dict.fromkeys(THREAD_ENV_VARS, str(threads))


class Worker:
    """A running ``bench_worker.py`` for one implementation, device and thread count."""

    def __init__(
        self,
        impl: str,
        device: str,
        threads: int,
        *,
        data_dir: str | None = None,
        timeout: float = 900.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.impl, self.device, self.threads, self.timeout = impl, device, threads, timeout
        env = dict(worker_env(threads), **(env or {}))
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, str(WORKER_SCRIPT), "--impl", impl]
        if data_dir:
            command += ["--data-dir", str(data_dir)]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (closed in close())
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=REPO_ROOT,
            env=env,
            text=True,
            encoding="utf-8",
        )
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.hello = self._receive("start-up (loading the dataset)", timeout)

    def _read(self) -> None:
        for line in self._process.stdout:
            self._replies.put(line)
        self._replies.put(None)  # end of stream: the process exited

    def stderr_tail(self, chars: int = 3000) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace")
        return text[-chars:].strip()

    def _receive(self, what: str, timeout: float) -> dict:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise WorkerError(
                f"{self.impl} worker: no answer to {what} within {timeout:g} s (killed)."
                f"\n{self.stderr_tail()}"
            ) from None
        if line is None:
            code = self._process.wait()
            raise WorkerError(
                f"{self.impl} worker died during {what} (exit code {code})."
                f"\nIts stderr ends with:\n{self.stderr_tail()}"
            )
        reply = json.loads(line)
        if not reply.pop("ok", False):
            error = WorkerError(f"{self.impl}: {reply.get('error_type')}: {reply.get('error')}")
            error.error_type = reply.get("error_type")  # type: ignore[attr-defined]
            error.remote_traceback = reply.get("traceback", "")  # type: ignore[attr-defined]
            raise error
        return reply

    def request(self, cmd: str, *, timeout: float | None = None, **fields: object) -> dict:
        """Send one request and wait for its reply (raises :class:`WorkerError`)."""
        if self._process.poll() is not None:
            raise WorkerError(
                f"{self.impl} worker is not running (exit code {self._process.returncode})."
                f"\n{self.stderr_tail()}"
            )
        try:
            self._process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError) as error:
            raise WorkerError(f"{self.impl} worker: cannot send {cmd!r}: {error}") from error
        return self._receive(repr(cmd), self.timeout if timeout is None else timeout)

    def alive(self) -> bool:
        return self._process.poll() is None

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self.request("quit", timeout=30)
                self._process.wait(timeout=30)
            except (WorkerError, subprocess.TimeoutExpired):
                self.kill()
        self._reader.join(timeout=5)
        for stream in (self._process.stdin, self._process.stdout, self._stderr):
            with contextlib.suppress(OSError):
                stream.close()


def missing_reason(impl: str) -> str | None:
    """Why ``impl`` cannot be started here (without importing it), or None."""
    import importlib.util

    from impls import registry

    entry = registry.get(impl)
    missing = entry.missing()
    if missing:
        return f"framework missing: needs {', '.join(missing)} ({entry.install_command})"
    if importlib.util.find_spec(entry.module) is None:
        return f"implementation missing: module {entry.module} does not exist"
    return None


def request_build(worker: Worker, config: dict) -> dict:
    """Build ``worker``'s trainer; a device its framework lacks raises :class:`WorkerSkip`."""
    try:
        return worker.request("build", config=config)
    except WorkerError as error:
        try:
            devices = worker.request("devices")["devices"]
        except WorkerError:
            raise error from None
        if config["device"] not in devices:
            raise WorkerSkip(
                f"device {config['device']!r} not available to {worker.impl} "
                f"(available: {', '.join(devices)})"
            ) from error
        raise


@dataclass
class WorkerPool:
    """Keeps the most recent worker alive for reuse; starts a fresh one for another key.

    The tests are ordered so that every case of one (implementation, device,
    threads) runs in a row: at most one worker exists at any time.
    """

    data_dir: str | None
    timeout: float
    on_info: Callable[[str, dict], None] = lambda impl, info: None
    _key: tuple | None = None
    _worker: Worker | None = None
    started: list[tuple] = field(default_factory=list)

    def get(self, case: Case) -> Worker:
        key = (case.impl, case.device, case.threads)
        if self._worker is not None and (self._key != key or not self._worker.alive()):
            self.close()
        if self._worker is None:
            reason = missing_reason(case.impl)
            if reason:
                raise WorkerSkip(reason)
            self._worker = Worker(
                case.impl, case.device, case.threads, data_dir=self.data_dir, timeout=self.timeout
            )
            self._key = key
            self.started.append(key)
            try:
                self._worker.load = self._worker.request("load")  # type: ignore[attr-defined]
            except WorkerError:
                self.close()
                raise
        return self._worker

    def build(self, case: Case, **config: object) -> dict:
        """Build ``case``'s trainer in its worker; a device the framework lacks is a skip."""
        worker = self.get(case)
        reply = request_build(
            worker,
            {
                "device": case.device,
                "threads": case.threads,
                "batch_size": case.batch_size,
                **config,
            },
        )
        reply["import_seconds"] = worker.load["import_seconds"]  # type: ignore[attr-defined]
        reply["data_load_seconds"] = worker.hello["load_seconds"]
        self.on_info(case.impl, {"device": case.device, "threads": case.threads, **reply})
        return reply

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
        self._worker, self._key = None, None


# ------------------------------------------------------------------ epoch loop


@dataclass
class EpochLoop:
    """Drives a worker's trainer epoch by epoch for ``benchmark.pedantic``.

    ``setup`` (untimed, before each round) evaluates the epoch just trained
    (when ``evaluate_each_epoch``) and prepares the next epoch's shared order;
    ``train`` (timed) trains one epoch. Epochs are counted from 0 here and
    from 1 in the history.
    """

    worker: Worker
    evaluate_each_epoch: bool = True
    history: list[dict] = field(default_factory=list)
    next_epoch: int = 0
    _pending: dict | None = None

    def _finish_pending(self, evaluate: bool) -> None:
        if self._pending is None:
            return
        record, self._pending = self._pending, None
        if evaluate:
            evaluation = self.worker.request("evaluate")
            record.update(
                test_loss=evaluation["loss"],
                test_accuracy=evaluation["accuracy"],
                eval_seconds=evaluation["seconds"],
            )
        self.history.append(record)

    def setup(self) -> None:
        self._finish_pending(self.evaluate_each_epoch)
        self.worker.request("prepare", epoch=self.next_epoch)

    def train(self) -> None:
        start = time.perf_counter()
        reply = self.worker.request("train")
        wall = time.perf_counter() - start
        self._pending = {
            "epoch": self.next_epoch + 1,
            "train_loss": reply["loss"],
            "train_accuracy": reply["accuracy"],
            "test_loss": None,
            "test_accuracy": None,
            "train_seconds": wall,  # as pytest-benchmark times it: request round trip
            "worker_seconds": reply["seconds"],  # train_epoch alone, timed in the worker
            "eval_seconds": None,
        }
        self.next_epoch += 1

    def run_untimed(self) -> float:
        """One epoch outside pytest-benchmark (the warm-up); its wall seconds."""
        self.setup()
        self.train()
        return self._pending["train_seconds"]

    def finish(self) -> dict:
        """Evaluate the last epoch; return its record."""
        self._finish_pending(True)
        return self.history[-1]


def time_to_accuracy(history: Sequence[dict], target: float) -> float | None:
    """Cumulative training seconds until test accuracy first reaches ``target``, or None."""
    total = 0.0
    for record in history:
        total += record["train_seconds"]
        accuracy = record.get("test_accuracy")
        if accuracy is not None and accuracy >= target:
            return total
    return None


# ----------------------------------------------------------------------- limit


class ReadOnce:
    """Reads every element of a float32 array exactly once, with ``threads`` threads.

    Each thread sums one contiguous block of rows (``np.sum``, which streams the
    block through SIMD registers and releases the GIL); the partial sums are
    added. Nothing is written back, so the memory traffic is the array's size.
    """

    def __init__(self, array: np.ndarray, threads: int) -> None:
        if array.dtype != np.float32 or not array.flags.c_contiguous:
            raise ValueError("ReadOnce needs a C-contiguous float32 array")
        self.nbytes = array.nbytes
        self.threads = max(1, min(threads, len(array)))
        self._blocks = np.array_split(array, self.threads)
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def __call__(self) -> float:
        if self._pool is None:
            return float(self._blocks[0].sum(dtype=np.float32))
        return float(sum(self._pool.map(lambda block: block.sum(dtype=np.float32), self._blocks)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


class PeakGemm:
    """One large float32 matrix product (``size`` cubed) with ``threads`` BLAS threads.

    Its rate is the best this machine's BLAS does in float32, the yardstick for
    the compute floor: an epoch's matrix products at that rate.
    """

    def __init__(self, threads: int, size: int = 2048, seed: int = 0) -> None:
        from threadpoolctl import threadpool_limits

        rng = np.random.default_rng(seed)
        self.threads, self.size = threads, size
        self.flops = 2 * size**3
        self._a = rng.random((size, size), dtype=np.float32)
        self._b = rng.random((size, size), dtype=np.float32)
        self._out = np.empty((size, size), dtype=np.float32)
        self._limits = threadpool_limits(limits=threads, user_api="blas")

    def __call__(self) -> None:
        np.matmul(self._a, self._b, out=self._out)

    def close(self) -> None:
        self._limits.restore_original_limits()


def epoch_flops(num_train: int, num_inputs: int = 784, num_outputs: int = 10) -> int:
    """Floating-point operations of an epoch's matrix products: x @ W and x.T @ dlogits."""
    return 2 * (2 * num_train * num_inputs * num_outputs)
