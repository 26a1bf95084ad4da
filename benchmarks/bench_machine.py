"""What the run's JSON says about the machine: CPU, memory, load, versions, BLAS, threads.

Stored as ``machine_info["fmbench"]`` (pytest-benchmark's ``machine_info``
hook); the commit is pytest-benchmark's own ``commit_info``.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import time

import psutil
from threadpoolctl import threadpool_info

from impls.config import usable_cores

VERSIONED = (
    "numpy", "torch", "torchvision", "jax", "jaxlib", "optax", "numba", "pytest-benchmark",
    "fmbench",
)  # fmt: skip


def cpu_counters() -> dict[str, float]:
    """Busy CPU seconds of the whole machine and of this process tree, and a clock."""
    times = psutil.cpu_times()
    busy = sum(
        getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal")
    )
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):  # workers, once reaped
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    return {"busy": busy, "own": own, "clock": time.monotonic()}


def other_cpu_use(start: dict[str, float]) -> dict[str, float] | None:
    """How many CPUs, on average, other processes kept busy since ``start``."""
    end = cpu_counters()
    wall = end["clock"] - start["clock"]
    if wall <= 0:
        return None
    other = (end["busy"] - start["busy"]) - (end["own"] - start["own"])
    return {"wall_seconds": wall, "other_cpu_seconds": other, "other_cpus": max(other, 0) / wall}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def numpy_blas() -> list[dict]:
    """NumPy's BLAS libraries, their versions, kernels and thread counts."""
    return [
        {key: pool.get(key) for key in ("internal_api", "version", "num_threads", "architecture")}
        for pool in threadpool_info()
        if pool.get("user_api") == "blas"
    ]


def framework_table(reported: dict[str, dict]) -> dict[str, dict]:
    """Per implementation: the device and threads asked for, and what its trainer applied."""
    table = {}
    for impl, info in reported.items():
        runtime = info.get("runtime", {})
        table[impl] = {
            "device": info.get("device"),
            "device_name": runtime.get("device_name") or runtime.get("device"),
            "threads_requested": info.get("threads"),
            "threads": runtime.get("threads"),
            "runtime": runtime,
        }
    return table


def machine_facts(
    *,
    cpu_info: dict,
    threads: int,
    thread_env: dict[str, str],
    load_start: list[float] | None,
    cpu_start: dict[str, float],
    frameworks: dict[str, dict],
) -> dict[str, object]:
    """``machine_info["fmbench"]`` at the end of a run."""
    return {
        "cpu_model": cpu_info.get("brand_raw") or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cpus": usable_cores(),
        "memory_bytes": int(psutil.virtual_memory().total),
        "os": f"{platform.system()} {platform.release()}",
        "threads": threads,
        "thread_env": thread_env,  # what each worker is started with
        "load_average": {"start": load_start, "end": load_average()},
        # Busy CPU time of the machine minus this run's own (pytest and its reaped workers).
        "other_cpu_use": other_cpu_use(cpu_start),
        "versions": {name: _version(name) for name in VERSIONED},
        "python": platform.python_version(),
        "numpy_blas": numpy_blas(),
        "frameworks": framework_table(frameworks),
    }
