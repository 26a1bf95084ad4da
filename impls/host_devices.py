"""The process environment a run needs before its framework starts, framework-free.

JAX fixes its CPU devices when it starts: R data-parallel replicas on the CPU
need ``--xla_force_host_platform_device_count=R`` in ``XLA_FLAGS`` before
``import jax``. Whoever starts a process for a run (``fmbench train``, the
benchmark's workers) asks :func:`impls.registry.environment_for` first; this
module imports no framework, so asking never starts one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from impls.config import ConfigError

if TYPE_CHECKING:
    from impls.config import TrainConfig

HOST_DEVICE_FLAG = "--xla_force_host_platform_device_count"
_FLAG_PATTERN = re.compile(rf"{HOST_DEVICE_FLAG}=\S*")
_COUNT_PATTERN = re.compile(rf"{HOST_DEVICE_FLAG}=(\d+)")


def xla_host_devices(
    config: TrainConfig, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """``XLA_FLAGS`` giving JAX ``config.replicas`` CPU devices, this process's share of them in
    a multi-process run (nothing for one, or off the CPU).

    Other flags already in ``environ`` are kept; an earlier device count is replaced.
    """
    local = local_replicas(config.replicas, jax_processes(environ))
    if config.device != "cpu" or local == 1:
        return {}
    others = _FLAG_PATTERN.sub("", environ.get("XLA_FLAGS", "")).split()
    return {"XLA_FLAGS": " ".join([*others, f"{HOST_DEVICE_FLAG}={local}"])}


def flagged_host_devices(environ: Mapping[str, str] = os.environ) -> int:
    """The CPU device count ``XLA_FLAGS`` in ``environ`` gives JAX (1 without the flag)."""
    counts = _COUNT_PATTERN.findall(environ.get("XLA_FLAGS", ""))
    return int(counts[-1]) if counts else 1


# One run over several processes (one per machine, say), named as torchrun's variables name
# a PyTorch run's: process 0's address, the number of processes, this one's rank.
COORDINATOR_ENV = "FMBENCH_JAX_COORDINATOR"
PROCESSES_ENV = "FMBENCH_JAX_PROCESSES"
PROCESS_ID_ENV = "FMBENCH_JAX_PROCESS_ID"


class ProcessGroup(NamedTuple):
    """This process's place in a JAX run spread over several processes."""

    coordinator: str  # host:port of process 0, reachable from every process
    processes: int
    process_id: int


def jax_processes(environ: Mapping[str, str] = os.environ) -> ProcessGroup | None:
    """The multi-process run ``environ`` describes (None: this process alone), or a
    ConfigError naming what is missing or wrong."""
    names = (COORDINATOR_ENV, PROCESSES_ENV, PROCESS_ID_ENV)
    given = [name for name in names if environ.get(name)]
    if not given:
        return None
    if len(given) < len(names):
        missing = ", ".join(name for name in names if name not in given)
        raise ConfigError(f"a multi-process JAX run needs {', '.join(names)}; {missing} unset")
    try:
        group = ProcessGroup(
            environ[COORDINATOR_ENV], int(environ[PROCESSES_ENV]), int(environ[PROCESS_ID_ENV])
        )
    except ValueError:
        raise ConfigError(f"{PROCESSES_ENV} and {PROCESS_ID_ENV} must be integers") from None
    if not 0 <= group.process_id < group.processes:
        raise ConfigError(
            f"{PROCESS_ID_ENV} must be in 0..{group.processes - 1}, got {group.process_id}"
        )
    return group


def local_replicas(replicas: int, group: ProcessGroup | None) -> int:
    """The replicas each process of ``group`` holds (all of them without a group), or a
    ConfigError when the processes cannot hold equal shares."""
    if group is None:
        return replicas
    if replicas % group.processes:
        raise ConfigError(
            f"{replicas} replicas cannot be shared equally by {group.processes} processes: "
            f"make --replicas a multiple of {PROCESSES_ENV}"
        )
    return replicas // group.processes
