"""JAX data parallelism for :mod:`impls.jax_optax`: the mesh, and timing its communication.

Not an implementation (not in the registry); only the JAX module imports it.

Placement. One replica keeps everything on one device. R replicas make a
``Mesh`` of R devices with one axis, ``batch``: parameters, data and the
epoch's order are replicated (``NamedSharding(mesh, P())``), and the
programs split each step's gathered batch by rows (``rows``, ``P("batch")``)
with ``with_sharding_constraint``. XLA's SPMD partitioner then computes each
replica's share and all-reduces the gradient sums, so the step is the one
global step on the batch's mean, and a batch R does not divide is padded by XLA.

Communication. :func:`collective_seconds` profiles a run of a compiled program
(``jax.profiler``) and adds up the time its collective operations took per
replica, waiting for the slower replica included; :func:`all_reduce_alone`
times a program that only all-reduces arrays of given shapes, step after step.
"""

from __future__ import annotations

import gzip
import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

BATCH_AXIS = "batch"
# XLA's collective operations: the names of their instructions, hence of the profiler's events.
_COLLECTIVE = re.compile(
    r"(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(-start|-done)?(\.\d+)?"
)


class Placement(NamedTuple):
    """Where a trainer's arrays live: one device, or a mesh of replicas."""

    devices: tuple[jax.Device, ...]
    replicated: jax.sharding.Sharding  # parameters, data, orders: whole on every device
    rows: NamedSharding | None  # a batch split by rows over the replicas; None: one device


def place(devices: Sequence[jax.Device]) -> Placement:
    """The placement over ``devices``: a single device, or a one-axis mesh of all of them."""
    if len(devices) == 1:
        return Placement(tuple(devices), SingleDeviceSharding(devices[0]), None)
    mesh = Mesh(np.array(devices), (BATCH_AXIS,))
    return Placement(
        tuple(devices),
        NamedSharding(mesh, PartitionSpec()),
        NamedSharding(mesh, PartitionSpec(BATCH_AXIS)),
    )


def split_rows(array: jax.Array, rows: NamedSharding | None) -> jax.Array:
    """``array`` split by rows over the replicas, inside a program (``rows`` None: as it is)."""
    return array if rows is None else jax.lax.with_sharding_constraint(array, rows)


def collective_seconds(run: Callable[[], Any], replicas: int) -> tuple[float, float]:
    """Seconds each replica spent in collective operations during ``run()`` (the mean over
    replicas, from the profiler's trace), and ``run``'s seconds under the profiler.

    CPU only: there every XLA operation is one event of its host thread (a GPU's
    collectives run as kernels on the device, which this does not look for).
    """
    with tempfile.TemporaryDirectory(prefix="fmbench-trace-") as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            start = time.perf_counter()
            jax.block_until_ready(run())
            seconds = time.perf_counter() - start
        (trace,) = Path(folder).rglob("*.trace.json.gz")
        with gzip.open(trace, "rt", encoding="utf-8") as file:
            events = json.load(file)
    events = events["traceEvents"] if isinstance(events, dict) else events
    micros = sum(
        event.get("dur", 0)
        for event in events
        if event.get("ph") == "X" and _COLLECTIVE.fullmatch(str(event.get("name", "")))
    )
    return micros / 1e6 / replicas, seconds


def all_reduce_alone(placement: Placement, shapes: Sequence[Any], steps: int) -> float:
    """Median seconds (of 5 runs) of one program doing ``steps`` all-reduces, one after the
    other, of arrays shaped like ``shapes`` (``jax.ShapeDtypeStruct``s) across the replicas."""
    if placement.rows is None:
        raise ValueError("one device: there is nothing to all-reduce")
    replicas = len(placement.devices)
    parts = [
        jax.device_put(np.ones((replicas, *shape.shape), shape.dtype), placement.rows)
        for shape in shapes
    ]

    def program(parts: list[jax.Array]) -> list[jax.Array]:
        def step(parts: list[jax.Array], _: None) -> tuple[list[jax.Array], None]:
            # Each replica holds one row; the sum over rows is the all-reduce, and every
            # next step depends on it, so XLA can neither hoist nor merge the steps.
            sums = [
                jax.lax.with_sharding_constraint(part.sum(axis=0), placement.replicated)
                for part in parts
            ]
            pairs = zip(parts, sums, strict=True)
            return [jnp.minimum(part, total[None]) for part, total in pairs], None

        return jax.lax.scan(step, parts, None, length=steps)[0]

    compiled = jax.jit(program).lower(parts).compile()
    jax.block_until_ready(compiled(parts))  # the first run allocates
    times = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(compiled(parts))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gradient_shapes(params: Any) -> list[jax.ShapeDtypeStruct]:
    """What a step all-reduces: a gradient like ``params``, its loss sum and correct count."""
    leaves = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(params)]
    return [*leaves, jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32)]
