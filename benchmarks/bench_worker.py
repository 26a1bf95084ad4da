"""One implementation in its own process, driven by the benchmarks over a pipe.

Run as a script by :class:`bench_workers.Worker`, never imported by the benchmarks.
Each worker serves one implementation at one thread count:

* peak resident memory is per process, so each implementation's peak is its own;
* thread settings that a framework fixes when it starts (XLA's pools) are
  applied in a fresh process every time;
* a crash, a hang or a leaked thread pool stays in the worker, and no
  framework's idle threads compete with another one's timing.

Protocol: one JSON object per line. Requests arrive on stdin; replies leave on
a duplicate of the original stdout, and file descriptor 1 is pointed at stderr,
so a library printing to stdout cannot corrupt the protocol. A reply is
``{"ok": true, ...}`` or ``{"ok": false, "error_type", "error", "traceback"}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
import traceback


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", required=True)
    parser.add_argument("--data-dir", default=None)
    return parser.parse_args(argv)


def _protocol_stream():
    """A text stream on the original stdout; fd 1 (and ``sys.stdout``) now go to stderr."""
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(proto_fd, "w", buffering=1, encoding="utf-8")


def _own_peak_rss_linux() -> int | None:
    """This process's peak resident set size since it started its program (VmHWM), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError):
        pass
    return None


def _peak_rss() -> tuple[int | None, int | None]:
    """Peak resident set size in bytes of this process and of its largest child."""
    try:
        import resource
    except ImportError:  # Windows: no peak figure without a platform-specific API
        return None, None
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    # On Linux ru_maxrss survives execve: a worker started from a pytest process
    # holding the 188 MB float32 training set would report that process's size as
    # its own peak. VmHWM belongs to the worker's own program only.
    own = _own_peak_rss_linux() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return int(own), int(children)


def _framework_info() -> dict[str, object]:
    """Versions, threads and devices of whatever frameworks this process has imported."""
    info: dict[str, object] = {}
    from threadpoolctl import threadpool_info

    info["threadpools"] = [
        {
            key: pool.get(key)
            for key in ("user_api", "internal_api", "version", "num_threads", "prefix")
        }
        for pool in threadpool_info()
    ]
    torch = sys.modules.get("torch")
    if torch is not None:
        entry: dict[str, object] = {
            "version": torch.__version__,
            "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "cuda_available": bool(torch.cuda.is_available()),
        }
        if torch.cuda.is_available():
            entry["cuda_devices"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
        info["torch"] = entry
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            info["jax"] = {
                "version": jax.__version__,
                "default_backend": jax.default_backend(),
                "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
            }
        except Exception as error:
            info["jax"] = {"version": getattr(jax, "__version__", "?"), "error": repr(error)}
    return info


class TreeMemory:
    """The peak proportional set size of this process and its children, summed.

    An implementation with worker processes of its own (d2l-reference's DataLoader,
    data-parallel replicas) holds memory a peak RSS of the worker leaves out, and its
    children's RSS counts every page they share with it again; summed PSS counts each
    page once. Reading a process's PSS walks its page tables (tens of milliseconds for
    a framework's), so nothing is read while an epoch runs unless it must be:

    * children alive when :meth:`arm` runs (untimed, before each epoch: persistent
      replicas) are sampled there and then, and never during an epoch;
    * children that came and went since :meth:`mark` (after the build), such as
      DataLoader workers that live for one epoch, can only be seen during one: then a
      thread samples the tree while each request runs.

    A framework's own helper processes before the build (``import torch`` runs one) arm
    nothing: only the CPU time of children reaped after :meth:`mark` counts.
    """

    INTERVAL_S = 0.1

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak: int | None = None
        self.during = False  # sample while requests run (children live within an epoch)
        self._reaped_at_mark = self._reaped_seconds()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def _reaped_seconds() -> float:
        """CPU seconds of this process's children that have exited and been waited for."""
        times = os.times()
        return times.children_user + times.children_system

    def mark(self) -> None:
        """From now on, a child that exits makes the epochs sampled (call after a build)."""
        self._reaped_at_mark = self._reaped_seconds()

    def sample(self) -> None:
        import psutil

        total = 0
        for process in [self._process, *self._process.children(recursive=True)]:
            try:
                total += process.memory_full_info().pss
            except (psutil.Error, AttributeError):  # gone, or no PSS on this platform
                continue
        self.peak = max(self.peak or 0, total)

    def arm(self) -> None:
        """Before an epoch, untimed: sample live children now; else sample during requests
        once children have come and gone since :meth:`mark` (once so, always)."""
        if self._process.children():
            self.sample()
        elif self._reaped_seconds() > self._reaped_at_mark:
            self.during = True

    def __enter__(self) -> TreeMemory:
        if self.during:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            self.sample()

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


class Server:
    """Holds the dataset and at most one trainer; answers requests in order.

    Epochs run through :class:`impls.training.EpochRunner`, the loop ``fmbench
    train`` uses: the same order, divergence check, clock and records.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        from impls.data import load_fashion_mnist

        self.impl = args.impl
        start = time.perf_counter()
        self.data = load_fashion_mnist(args.data_dir, download=False)
        self.load_seconds = time.perf_counter() - start
        self.module = None
        self.import_seconds = None
        self.runner = None
        self.tree_memory = TreeMemory()
        self.built = self.data  # the data the trainer was built on (resized for a size case)

    # Each handler returns the reply's fields.

    def cmd_hello(self) -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "load_seconds": self.load_seconds,
            "num_train": int(self.data.num_train),
            "num_test": int(self.data.num_test),
        }

    def cmd_load(self) -> dict[str, object]:
        """Import the implementation's module (and so its framework)."""
        from impls import registry

        start = time.perf_counter()
        self.module = registry.get(self.impl).load()
        self.import_seconds = time.perf_counter() - start
        return {"import_seconds": self.import_seconds}

    def cmd_devices(self) -> dict[str, object]:
        # Only after a build: JAX fixes its thread pools when this first runs.
        return {"devices": list(self.module.available_devices())}

    def cmd_build(self, config: dict) -> dict[str, object]:
        from impls import registry
        from impls.config import TrainConfig
        from impls.training import EpochRunner

        if self.module is None:
            self.cmd_load()
        self.close()
        gc.collect()
        config = TrainConfig(**config)
        self.built = self.data.at_size(config.resize)  # from the cache: the floors filled it
        start = time.perf_counter()
        trainer, resolved = registry.build_trainer(self.impl, self.built, config)
        seconds = time.perf_counter() - start
        self.tree_memory.mark()
        self.runner = EpochRunner(trainer, resolved, self.data.num_train)
        return {
            "build_seconds": seconds,
            "import_seconds": self.import_seconds,
            "config": resolved.as_dict(),
            "runtime": dict(trainer.runtime_info()),
        }

    def cmd_prepare(self) -> dict[str, object]:
        """Draw the next epoch's shared order now, so that ``train`` times training only."""
        self.runner.prepare()
        self.tree_memory.arm()
        return {}

    def cmd_train(self) -> dict[str, object]:
        with self.tree_memory:
            return {"record": self.runner.train().as_dict()}

    def cmd_load_batches(self) -> dict[str, object]:
        """Iterate the trainer's own DataLoader for an epoch, no training (d2l-reference)."""
        with self.tree_memory:
            start = time.perf_counter()
            examples = self.runner.trainer.load_batches()
            return {"examples": examples, "seconds": time.perf_counter() - start}

    def cmd_evaluate(self) -> dict[str, object]:
        with self.tree_memory:
            return {"record": self.runner.evaluate().as_dict()}

    def cmd_measure_communication(self) -> dict[str, object]:
        """What combining gradients costs, measured apart from any timed epoch by the trainer's
        own ``measure_communication`` over the next epoch's order (None: it has none)."""
        measure = getattr(self.runner.trainer, "measure_communication", None)
        if measure is None:
            return {"communication": None}
        order = self.runner.order.epoch(len(self.runner.history))
        return {"communication": dict(measure(order))}

    def cmd_history(self) -> dict[str, object]:
        return {"history": [record.as_dict() for record in self.runner.history]}

    def cmd_predict(self, count: int) -> dict[str, object]:
        predictions = self.runner.trainer.predict(self.built.test_images[:count])
        return {"predictions": [int(p) for p in predictions]}

    def cmd_info(self) -> dict[str, object]:
        import psutil

        own, children = _peak_rss()
        return {
            "peak_rss_bytes": own,
            "peak_rss_children_bytes": children,
            "peak_tree_pss_bytes": self.tree_memory.peak,
            "rss_bytes": int(psutil.Process().memory_info().rss),
            "frameworks": _framework_info(),
        }

    def close(self) -> None:
        """Stop the trainer's own processes, if it has any (a data-parallel trainer's replicas)."""
        from impls import registry

        if self.runner is not None:
            runner, self.runner = self.runner, None
            registry.close_trainer(runner.trainer)

    def handle(self, request: dict) -> dict[str, object]:
        command = request.pop("cmd")
        handler = getattr(self, f"cmd_{command}", None)
        if handler is None:
            raise ValueError(f"unknown command {command!r}")
        return handler(**request)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # The thread variables (OMP_NUM_THREADS...) arrive set in the environment the
    # harness starts this process with, before numpy or a framework sizes its pools.
    proto = _protocol_stream()

    def send(reply: dict) -> None:
        proto.write(json.dumps(reply, default=str) + "\n")
        proto.flush()

    def failure(error: BaseException) -> dict:
        return {
            "ok": False,
            "error_type": type(error).__name__,
            "error": str(error),
            "traceback": traceback.format_exc(limit=20),
        }

    try:
        server = Server(args)
    except Exception as error:
        send(failure(error))
        return 1
    send({"ok": True, **server.cmd_hello()})
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            request = json.loads(line)
            if request.get("cmd") == "quit":
                server.close()
                send({"ok": True})  # once everything it started is stopped
                break
            try:
                reply = {"ok": True, **server.handle(request)}
            except Exception as error:
                reply = failure(error)
            send(reply)
    finally:  # also when the harness went away: no replica outlives its worker
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
