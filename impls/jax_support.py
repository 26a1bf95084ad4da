"""JAX plumbing for :mod:`impls.jax_optax`: backends and threads, devices, compilation.

Not an implementation itself (it is not in the registry); only the JAX module
imports it, so importing it without JAX installed is never attempted.

Threads (CPU). XLA has no option for the size of its CPU thread pools (nor
does the ``XLA_FLAGS`` recipe people pass around work, see PERFORMANCE.md).
The pools are sized once, when the backends initialise, from the cores the
initialising thread may run on. So, on Linux, when ``threads`` is below that
count and JAX's backends are not yet initialised, :func:`initialise_backends`
narrows the calling thread's CPU affinity to ``threads`` cores while the
backends start, then restores it and un-pins the threads created meanwhile:
the pools get ``threads`` workers that may run on any core. Limits: it works
only once per process, before anything else initialises JAX (including
:func:`available_devices`); a later trainer asking for another count runs with
the first count and says so (``threads_applied`` false); without
``os.sched_setaffinity`` (macOS, Windows) nothing is applied; XLA may still use
a few helper threads besides the compute pools. (``PJRT_NPROC``, read by XLA's
CPU client when it starts, does size the pools with jaxlib 0.10.2, but it is
undocumented.) Replicas: R CPU host devices share these pools (XLA has no pool
per device), so ``threads`` stays the run's total and a replica's
``threads_per_replica`` is its share on average, not a pool of its own.

Devices. :func:`select_devices` picks the first devices of a platform, one of
:data:`PLATFORMS` or ``gpu`` for whichever GPU platform is present; for CPU
replicas, :func:`initialise_backends` asks JAX for as many host devices
(``jax_num_cpu_devices``) when ``XLA_FLAGS`` has not given them and JAX has
not started yet.

Compilation. :class:`Compiler` compiles programs ahead of time
(``jit(...).lower(...).compile()``), so training epochs time training only,
and records the time and whether JAX's persistent compilation cache served
them (warm). The cache is pointed at ``$FMBENCH_JAX_CACHE_DIR`` (empty: off),
else ``jax-cache`` under :func:`impls.data.default_cache_dir`, unless the user
configured a cache directory already. Every program's outputs are checked to be
float32/int32, so ``jax_enable_x64`` cannot widen anything unnoticed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from impls import host_devices, registry
from impls.compile_cache import cache_use, choose_directory
from impls.config import ConfigError, usable_cores
from impls.data import default_cache_dir
from impls.protocol import DeviceUnavailableError

CACHE_DIR_ENV = registry.get("jax").compile_cache_env
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what available_devices() reports, when present
GPU_PLATFORMS = ("cuda", "rocm")  # what device "gpu" means: the first of these present
_CACHE_EVENTS = ("/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses")

# ----------------------------------------------------------- backends, threads

_backend_lock = threading.Lock()
_backend_setup: dict[str, Any] | None = None  # what happened when the backends started


def backends_initialized() -> bool:
    """Whether JAX's backends have started (asked without starting them)."""
    from jax._src import xla_bridge  # private: no public way to ask without initialising

    probe = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(probe()) if probe is not None else bool(getattr(xla_bridge, "_backends", {}))


def initialise_backends(
    threads: int | None, cpu_devices: int = 1, group: host_devices.ProcessGroup | None = None
) -> dict[str, Any]:
    """Start JAX's backends once, with CPU pools of ``threads`` workers where possible, at
    least ``cpu_devices`` CPU devices where ``XLA_FLAGS`` does not already give them, and
    joined to the other processes of ``group`` (this process's share in each count).

    Returns (and remembers) what was done: ``pool_threads`` is the number of
    cores the pools were sized from (None when unknown), ``how`` says why.
    """
    global _backend_setup
    with _backend_lock:
        if _backend_setup is None:
            _backend_setup = _start_backends(threads, cpu_devices, group)
        return _backend_setup


def _start_backends(
    threads: int | None, cpu_devices: int, group: host_devices.ProcessGroup | None
) -> dict[str, Any]:
    if backends_initialized():
        return {
            "pool_threads": None,
            "how": "JAX's backends were initialised before fmbench's jax trainer: "
            "XLA's CPU pools kept the size they got then (by default, one worker per "
            "schedulable core)",
        }
    if group is not None:
        _join_processes(group)
    _request_host_devices(cpu_devices)
    if not hasattr(os, "sched_setaffinity"):
        jax.devices()
        return {
            "pool_threads": None,
            "how": "no os.sched_setaffinity on this platform: XLA sized its CPU pools itself",
        }
    count = usable_cores()
    if threads is None or threads >= count:
        jax.devices()
        return {
            "pool_threads": count,
            "how": f"default: XLA sized its CPU pools from the {count} schedulable cores",
        }
    cores = os.sched_getaffinity(0)
    before = set(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else set()
    os.sched_setaffinity(0, sorted(cores)[:threads])
    try:
        jax.devices()
    finally:
        os.sched_setaffinity(0, cores)
        unpinned = 0
        for task in sorted(set(os.listdir("/proc/self/task")) - before) if before else ():
            try:
                os.sched_setaffinity(int(task), cores)
                unpinned += 1
            except OSError:  # the thread has exited meanwhile
                pass
    return {
        "pool_threads": threads,
        "how": f"CPU affinity narrowed to {threads} of {count} cores while JAX's "
        f"backends initialised, so XLA sized its CPU pools to {threads}; affinity then "
        f"restored and {unpinned} new threads un-pinned",
    }


def _join_processes(group: host_devices.ProcessGroup) -> None:
    """Join a run spread over ``group``'s processes (``jax.distributed``; CPU collectives by
    gloo over TCP); a process missing after 5 minutes is JAX's error."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(group.coordinator, group.processes, group.process_id)


def _request_host_devices(count: int) -> None:
    """Give JAX ``count`` CPU devices when it would start with fewer (backends not started).

    ``jax_num_cpu_devices`` overrides the ``XLA_FLAGS`` count, so it is only set
    when neither gives enough: a larger count someone asked for is kept.
    """
    configured = jax.config.jax_num_cpu_devices
    present = configured if configured >= 0 else host_devices.flagged_host_devices()
    if count > present:
        jax.config.update("jax_num_cpu_devices", count)


def threads_info(device: jax.Device, asked: int | None, setup: Mapping[str, Any]) -> dict:
    """What the trainer's ``runtime_info`` says about threads and JAX's settings."""
    on_cpu = device.platform == "cpu"
    pool = setup["pool_threads"]
    applied = on_cpu and (asked is None or (pool is not None and pool == asked))
    how = setup["how"] if on_cpu else "not a CPU device: threads do not apply"
    if on_cpu and not applied:
        how += (
            f"; {asked} threads could not be applied: only possible before "
            "JAX's backends initialise, i.e. for the first trainer of a fresh process"
        )
    return {
        "threads": asked if on_cpu else None,  # as asked
        "threads_effective": pool if on_cpu else None,  # XLA's CPU pool size (None: unknown)
        "threads_applied": applied,
        "threads_how": how,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "x64_enabled": bool(jax.config.jax_enable_x64),
    }


def versions() -> dict[str, str]:
    """JAX's and jaxlib's versions, for reports."""
    try:
        jaxlib = __import__("jaxlib").__version__
    except (ImportError, AttributeError):
        jaxlib = "unknown"
    return {"jax": jax.__version__, "jaxlib": jaxlib}


# -------------------------------------------------------------------- devices


def present_platforms() -> list[str]:
    """The platforms of :data:`PLATFORMS` that have a device here."""
    present = []
    for platform in PLATFORMS:
        try:
            if jax.devices(platform):
                present.append(platform)
        except RuntimeError:  # "Unknown backend" / "failed to initialize"
            pass
    return present


def available_devices() -> list[str]:
    """The platforms present here: cpu, and cuda, rocm or tpu where there is one.

    Calling this initialises JAX's backends, which fixes XLA's CPU thread pools:
    build a trainer first when ``threads`` should apply.
    """
    initialise_backends(None)
    return present_platforms()


def select_device(name: str) -> jax.Device:
    """The first device of platform ``name`` (or ``gpu``), else a DeviceUnavailableError
    naming the platforms present."""
    return select_devices(name, 1)[0]


def select_devices(name: str, count: int) -> list[jax.Device]:
    """The first ``count`` devices of platform ``name`` (or ``gpu``), an equal share from each
    process of a multi-process run: a DeviceUnavailableError when the platform is absent, a
    ConfigError when it has fewer devices."""
    wanted = name.lower()
    present = present_platforms()
    candidates = GPU_PLATFORMS if wanted == "gpu" else (wanted,)
    platform = next((platform for platform in candidates if platform in present), None)
    if platform is None:
        raise DeviceUnavailableError(
            f"JAX has no {name!r} device here; platforms present: {', '.join(present) or 'none'} "
            f"(known: {', '.join(PLATFORMS)}, and gpu for any GPU)"
        )
    processes = jax.process_count()
    local = count // processes
    if count % processes:
        raise ConfigError(f"{count} replicas cannot be shared equally by {processes} processes")
    by_process = [
        [device for device in jax.devices(platform) if device.process_index == process][:local]
        for process in range(processes)
    ]
    fewest = min(len(devices) for devices in by_process)
    if fewest == local:
        return [device for devices in by_process for device in devices]
    if platform == "cpu":
        raise ConfigError(
            f"{local} replicas need {local} JAX CPU devices, but JAX started with "
            f"{fewest} in this process: start the process with "
            f"XLA_FLAGS={host_devices.HOST_DEVICE_FLAG}={local} (fmbench train sets it)"
        )
    raise ConfigError(
        f"{local} replicas need {local} {platform} devices a process; JAX sees {fewest}"
    )


# ---------------------------------------------------------------- compilation

_cache_setup: dict[str, Any] | None = None  # decided once per process


def configure_cache() -> dict[str, Any]:
    """Point JAX's persistent compilation cache at fmbench's directory unless already set.

    Decided once per process: the directory then stays as it is.
    """
    global _cache_setup
    if _cache_setup is None:
        _cache_setup = _choose_cache()
    return dict(_cache_setup)


def _choose_cache() -> dict[str, Any]:
    user_dir = jax.config.jax_compilation_cache_dir
    if user_dir:
        return {"compilation_cache_dir": str(user_dir), "compilation_cache_set_by": "user"}
    path, set_by = choose_directory(CACHE_DIR_ENV, default_cache_dir() / "jax-cache")
    if path is None:
        return {"compilation_cache_dir": None, "compilation_cache_set_by": set_by}
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return {"compilation_cache_dir": None, "compilation_cache_set_by": f"off: {error}"}
    jax.config.update("jax_compilation_cache_dir", str(path))
    # JAX's defaults cache only programs above a compile time and a size, which a small
    # program can fall under: a warm start must find every program, so cache them all.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return {"compilation_cache_dir": str(path), "compilation_cache_set_by": set_by}


def cache_entries(directory: str | None) -> int | None:
    """The number of programs in the persistent cache ``directory`` (None: no cache)."""
    if not directory or not os.path.isdir(directory):
        return None
    return sum(1 for entry in os.scandir(directory) if entry.name.endswith("-cache"))


class Compiled(NamedTuple):
    executable: Any
    lower_seconds: float  # tracing and lowering to StableHLO (never cached across processes)
    compile_seconds: float  # XLA compilation, or loading it from the persistent cache
    cache_hits: int
    cache_misses: int


def compile_ahead(jitted: Any, *args: Any) -> Compiled:
    """Lower and compile ``jitted`` ahead of time for ``args``, timed, counting cache use."""
    counts = dict.fromkeys(_CACHE_EVENTS, 0)

    def listen(event: str, **_: object) -> None:
        if event in counts:
            counts[event] += 1

    jax.monitoring.register_event_listener(listen)
    try:
        start = time.perf_counter()
        lowered = jitted.lower(*args)
        check_float32(lowered.out_info)
        lowered_at = time.perf_counter()
        executable = lowered.compile()
        done = time.perf_counter()
    finally:
        jax.monitoring.unregister_event_listener(listen)
    return Compiled(executable, lowered_at - start, done - lowered_at, *counts.values())


def check_float32(out_info: Any) -> None:
    """Refuse a program whose outputs are not float32/int32 (x64 leaking in)."""
    allowed = {np.dtype(np.float32), np.dtype(np.int32)}
    for leaf in jax.tree.leaves(out_info):
        dtype = np.dtype(leaf.dtype)
        if dtype not in allowed:
            raise TypeError(f"the JAX program computes in {dtype}, expected float32 throughout")


class Compiler:
    """One trainer's ahead-of-time compilations, with the cache state they started from."""

    def __init__(self) -> None:
        self._cache = configure_cache()
        self._cache["compilation_cache_entries_before"] = cache_entries(
            self._cache["compilation_cache_dir"]
        )
        self._compiled: dict[str, Compiled] = {}

    def compile(self, name: str, jitted: Any, *args: Any) -> Callable[..., Any]:
        """``jitted`` compiled for ``args``, recorded as ``name``."""
        compiled = compile_ahead(jitted, *args)
        self._compiled[name] = compiled
        return compiled.executable

    def info(self) -> dict[str, Any]:
        """The cache and the compile times, for the trainer's ``runtime_info``."""
        hits = sum(c.cache_hits for c in self._compiled.values())
        misses = sum(c.cache_misses for c in self._compiled.values())
        return {
            **self._cache,
            **cache_use(self._cache["compilation_cache_dir"], hits, misses),
            "compile_seconds": round(
                sum(c.lower_seconds + c.compile_seconds for c in self._compiled.values()), 4
            ),
            "compile_seconds_by_program": {
                name: {"lower": round(c.lower_seconds, 4), "compile": round(c.compile_seconds, 4)}
                for name, c in self._compiled.items()
            },
        }
