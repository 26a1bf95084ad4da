"""The benchmarks' side of a worker process: start it, send requests, drive its epochs.

Each implementation trains in its own ``bench_worker.py`` process (see its
docstring for why); the tests talk to it one request at a time over a pipe.
:class:`EpochRequests` is what pytest-benchmark times: the ``train`` request,
one epoch in the worker plus a pipe round trip well under a millisecond.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from impls import registry
from impls.fetch import CACHE_DIR_ENV, DATA_DIR_ENV
from impls.results import EpochRecord

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
WORKER_SCRIPT = HERE / "bench_worker.py"
DEFAULT_TIMEOUT = 300.0  # any request before an epoch was measured (start, import, build)

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


class WorkerError(RuntimeError):
    """The worker reported an error or died; the message says which and why."""


class WorkerTimeout(WorkerError):
    """The worker did not answer in time and was killed."""


class WorkerBroken(WorkerError):
    """The implementation hung earlier in this run: its later cases are not tried again."""


class WorkerSkip(Exception):
    """The implementation cannot run here (framework, module or device missing)."""


# Directories fmbench reads from the environment: made absolute for processes that
# run from the repository root rather than from where the suite was started.
PATH_ENV_VARS = (DATA_DIR_ENV, CACHE_DIR_ENV)


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a process the benchmarks start: threads pinned, the repo importable."""
    env = dict(os.environ, **thread_env(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    for name in PATH_ENV_VARS:
        if env.get(name):
            env[name] = str(Path(env[name]).expanduser().resolve())
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
        timeout: float = DEFAULT_TIMEOUT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.impl, self.device, self.threads, self.timeout = impl, device, threads, timeout
        self.timed_out: str | None = None  # why the worker was killed for not answering
        env = dict(worker_env(threads), **(env or {}))
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, str(WORKER_SCRIPT), "--impl", impl]
        if data_dir:
            command += ["--data-dir", str(data_dir)]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (closed in close())
        started = time.perf_counter()
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
        try:
            self.hello = self._receive("start-up (loading the dataset)", timeout)
        except WorkerError:
            self.close()  # no process, pipe or file left behind
            raise
        # From starting the process to its first reply: Python, its imports, the dataset.
        self.start_seconds = time.perf_counter() - started

    def _read(self) -> None:
        for line in self._process.stdout:
            self._replies.put(line)
        self._replies.put(None)  # end of stream: the process exited

    def stderr_tail(self, chars: int = 3000) -> str:
        if self._stderr.closed:  # closed by close(), which kept the end
            return self._closing_tail[-chars:]
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace")
        return text[-chars:].strip()

    def _receive(self, what: str, timeout: float) -> dict:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            self.timed_out = f"no answer to {what} within {timeout:g} s"
            raise WorkerTimeout(
                f"{self.impl} worker: {self.timed_out} (killed).\n{self.stderr_tail()}"
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
        self._closing_tail = self.stderr_tail()  # what a later request's error can still quote
        for stream in (self._process.stdin, self._process.stdout, self._stderr):
            with contextlib.suppress(OSError):
                stream.close()


def missing_reason(impl: str) -> str | None:
    """Why ``impl`` cannot be started here (without importing it), or None."""
    import importlib.util

    entry = registry.get(impl)
    missing = entry.missing()
    if missing:
        return f"framework missing: needs {', '.join(missing)} ({entry.install_command})"
    if importlib.util.find_spec(entry.module) is None:
        return f"implementation missing: module {entry.module} does not exist"
    return None


def request_build(worker: Worker, config: dict) -> dict:
    """Build ``worker``'s trainer; a device its framework lacks, or more replicas than its
    engine can place here (its ConfigError: GPUs, say), raises :class:`WorkerSkip`."""
    try:
        return worker.request("build", config=config)
    except WorkerError as error:
        replicas = config.get("replicas", 1)
        if replicas != 1 and getattr(error, "error_type", None) == "ConfigError":
            raise WorkerSkip(f"{replicas} replicas cannot run here: {error}") from error
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


def epoch_timeout(warmup_seconds: float, factor: float, minimum: float) -> float:
    """How long a timed epoch's request may take: ``factor`` x the warm-up, at least ``minimum``."""
    return max(minimum, factor * warmup_seconds)


@dataclass
class WorkerPool:
    """Keeps workers alive for reuse, one per (implementation, device, threads).

    The main run keeps every implementation's worker alive at once
    (``keep_others=True``: its rounds are interleaved); otherwise asking for a
    worker stops the others, and the tests are ordered so that every case of one
    worker runs in a row. An implementation whose worker had to be killed for not
    answering is marked broken on that device: its later cases fail at once
    (:class:`WorkerBroken`) instead of hanging again, each for the whole timeout.
    """

    data_dir: str | None
    timeout: float
    on_info: Callable[[str, dict], None] = lambda impl, info: None
    _workers: dict[tuple, Worker] = field(default_factory=dict)
    broken: dict[tuple[str, str], str] = field(default_factory=dict)

    @staticmethod
    def key_of(case) -> tuple:
        """The worker a case runs in: its implementation, device, threads and replicas (a
        process whose framework was started for R replicas serves no other R)."""
        return (case.impl, case.device, case.threads, case.replicas)

    def get(self, case, *, keep_others: bool = False) -> Worker:
        """The worker of ``case``'s implementation, device and threads (started if needed)."""
        key = self.key_of(case)
        for other, worker in list(self._workers.items()):
            # A dead worker of another case is left to that case, which reports its death.
            if (other != key and not keep_others) or (other == key and not worker.alive()):
                self._close(other)
        why = self.broken.get((case.impl, case.device))
        if why is not None:
            raise WorkerBroken(
                f"{case.impl} on {case.device} not tried again: it hung earlier in this run ({why})"
            )
        if key not in self._workers:
            reason = missing_reason(case.impl)
            if reason:
                raise WorkerSkip(reason)
            worker = None
            try:
                worker = Worker(
                    case.impl,
                    case.device,
                    case.threads,
                    data_dir=self.data_dir,
                    timeout=self.timeout,
                    env=registry.environment_for(case.impl, case.train_config()),
                )
                self._workers[key] = worker
                worker.request("load")
            except WorkerTimeout as error:
                self.broken[(case.impl, case.device)] = str(error).splitlines()[0]
                self._close(key)
                raise
            except WorkerError:
                self._close(key)
                raise
        return self._workers[key]

    def build(self, case, *, keep_others: bool = False, **config: object) -> dict:
        """Build ``case``'s trainer in its worker; a device the framework lacks is a skip."""
        worker = self.get(case, keep_others=keep_others)
        reply = request_build(
            worker,
            {
                "device": case.device,
                "threads": case.threads,
                "batch_size": case.batch_size,
                **case.build_settings,
                **config,
            },
        )
        reply["data_load_seconds"] = worker.hello["load_seconds"]
        reply["process_start_seconds"] = worker.start_seconds
        self.on_info(case.impl, {"device": case.device, "threads": case.threads, **reply})
        return reply

    def keep_only(self, cases) -> None:
        """Stop every worker but those of ``cases`` (before a schedule keeps them all alive)."""
        keep = {self.key_of(case) for case in cases}
        for key in [key for key in self._workers if key not in keep]:
            self._close(key)

    def discard(self, case) -> None:
        """Stop ``case``'s worker, if it has one (after it failed)."""
        self._close(self.key_of(case))

    def _close(self, key: tuple) -> None:
        """Stop one worker; remember its implementation as broken if it hung."""
        worker = self._workers.pop(key, None)
        if worker is not None:
            if worker.timed_out:
                self.broken[(worker.impl, worker.device)] = worker.timed_out
            worker.close()

    def close(self) -> None:
        """Stop every worker."""
        for key in list(self._workers):
            self._close(key)


@dataclass
class EpochRequests:
    """A worker's epochs: an untimed ``setup``, then ``train`` timed by the worker's own clock.

    ``setup`` evaluates the epoch just trained (when ``evaluate_each_epoch``) and
    draws the next epoch's order; ``train`` is one ``train`` request. The records
    themselves are the worker's (:class:`impls.training.EpochRunner`). The
    warm-up epochs may take as long as the worker's own timeout (start-up work,
    lazy compilation); every later request is bounded by :func:`epoch_timeout`
    of the slowest warm-up epoch, so a hang is caught in proportion to the epoch.
    """

    worker: Worker
    evaluate_each_epoch: bool = True
    timeout_factor: float = 20.0
    timeout_min: float = 30.0
    _unevaluated: bool = False
    _timeout: float | None = None  # None until the warm-up has been measured

    def setup(self) -> None:
        if self._unevaluated and self.evaluate_each_epoch:
            self.request("evaluate")
            self._unevaluated = False
        self.request("prepare")

    def train(self) -> float:
        """Train one epoch; return its seconds by the worker's own clock around ``train_epoch``."""
        seconds = self.request("train")["record"]["train_seconds"]
        self._unevaluated = True
        return seconds

    def time_rounds(self, rounds: int) -> list[float]:
        """``rounds`` epochs, each after its untimed ``setup``; their worker-clock seconds."""
        seconds = []
        for _ in range(rounds):
            self.setup()
            seconds.append(self.train())
        return seconds

    def warm_up(self, epochs: int) -> None:
        """``epochs`` epochs outside pytest-benchmark's timing; they set the epoch timeout."""
        slowest = 0.0
        for _ in range(epochs):
            self.setup()
            start = time.perf_counter()
            self.train()
            slowest = max(slowest, time.perf_counter() - start)
        self._timeout = epoch_timeout(slowest, self.timeout_factor, self.timeout_min)

    def request(self, cmd: str, **fields: object) -> dict:
        """Any other request to the worker, under the epoch timeout once it is known."""
        return self.worker.request(cmd, timeout=self._timeout, **fields)

    def memory(self) -> dict:
        """The worker's peak memory so far, as :class:`impls.results.TrainingResult` fields."""
        info = self.request("info")
        return {
            "peak_rss_bytes": info["peak_rss_bytes"],
            "peak_rss_children_bytes": info["peak_rss_children_bytes"],
            "peak_tree_pss_bytes": info["peak_tree_pss_bytes"],
        }

    def finish(self) -> list[EpochRecord]:
        """Evaluate the last epoch; return every epoch's record."""
        if self._unevaluated:
            self.request("evaluate")
            self._unevaluated = False
        history = self.request("history")["history"]
        return [EpochRecord.from_dict(record, f"history[{i}]") for i, record in enumerate(history)]
