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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from impls.config import TrainConfig

HOST_DEVICE_FLAG = "--xla_force_host_platform_device_count"
_FLAG_PATTERN = re.compile(rf"{HOST_DEVICE_FLAG}=\S*")
_COUNT_PATTERN = re.compile(rf"{HOST_DEVICE_FLAG}=(\d+)")


def xla_host_devices(
    config: TrainConfig, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """``XLA_FLAGS`` giving JAX ``config.replicas`` CPU devices (nothing for one, or off the CPU).

    Other flags already in ``environ`` are kept; an earlier device count is replaced.
    """
    if config.device != "cpu" or config.replicas == 1:
        return {}
    others = _FLAG_PATTERN.sub("", environ.get("XLA_FLAGS", "")).split()
    return {"XLA_FLAGS": " ".join([*others, f"{HOST_DEVICE_FLAG}={config.replicas}"])}


def flagged_host_devices(environ: Mapping[str, str] = os.environ) -> int:
    """The CPU device count ``XLA_FLAGS`` in ``environ`` gives JAX (1 without the flag)."""
    counts = _COUNT_PATTERN.findall(environ.get("XLA_FLAGS", ""))
    return int(counts[-1]) if counts else 1
