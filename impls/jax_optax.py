"""Softmax regression in JAX: ``jax.value_and_grad``, ``optax.sgd``, compiled two ways.

The maths is four pure functions: :func:`forward` (logits), :func:`cross_entropy`
(per-example losses), :func:`count_correct` and :func:`train_step`, one SGD step
on one batch. Two strategies run them, two registry entries of this one module:

* ``jax`` (:func:`make_trainer`): :func:`epoch_fn` runs a whole epoch as one XLA
  program, ``lax.scan`` of :func:`train_step` over the full minibatches of the
  shared order, then one step for the last partial batch;
* ``jax-step`` (:func:`make_step_trainer`): :func:`gathered_step`, one step, is
  the compiled program, called from a Python loop once per batch, the style of
  JAX's own MNIST example; so the report separates what JAX gains from
  compiling a step and from compiling the epoch.

Each step is on its own batch mean. :class:`JaxTrainer` holds the state on one
device; devices, threads and ahead-of-time compilation come from
:mod:`impls.jax_support`.

Replicas (``config.replicas`` R > 1, both entries): the same programs run over a
``Mesh`` of R devices (:mod:`impls.jax_parallel`); each step's gathered batch is
split by rows with ``NamedSharding`` and XLA all-reduces the gradient sums, so the
step is still the one step on the global batch's mean. The uint8 data are
replicated, one copy per device, rather than split by rows: each replica then
gathers its share of a shuffled batch from its own copy, where row-split data
make XLA gather rows across devices every step (2 CPU host devices: 0.12 s an
epoch against 0.084 s replicated). A copy is 47 MB: on CPU host devices it is
host memory, on GPUs next to nothing. On the CPU, jax-step waits for each step
before the next (see ``_wait_each_step``).

The weights live transposed (:class:`Linear`); the uint8 images go to the device
once, as they are, and each step gathers and converts its rows in the program.
float32 throughout, whatever ``jax_enable_x64`` says (outputs are checked);
``Precision.HIGHEST`` makes GPUs and TPUs compute true float32 products too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

from impls import host_devices, jax_parallel, jax_support
from impls.config import TrainConfig
from impls.data import FashionMNIST, batch_bounds, check_order, pixels_per_image, to_float32
from impls.jax_parallel import split_rows
from impls.protocol import EpochStats, Evaluation, Params

# ---------------------------------------------------------------------- maths


class Linear(NamedTuple):
    """The parameters: W transposed, (10, 784), the layout ``nn.Linear`` uses, and b.

    XLA's CPU dot runs x @ W faster with W laid out (out, in) than (in, out), for
    bit-for-bit the same results; :func:`to_linear` and :func:`to_params` convert.
    """

    weights_t: jax.Array
    bias: jax.Array


def to_linear(params: Params) -> Linear:
    """Shared NumPy parameters as this module's pytree (W transposed)."""
    return Linear(
        jnp.asarray(np.ascontiguousarray(params.weights.T), dtype=jnp.float32),
        jnp.asarray(params.bias, dtype=jnp.float32),
    )


def to_params(linear: Linear) -> Params:
    """This module's pytree back as shared NumPy parameters, W (784, 10)."""
    weights_t, bias = jax.device_get(linear)
    return Params(
        np.ascontiguousarray(np.asarray(weights_t, dtype=np.float32).T),
        np.array(bias, dtype=np.float32),
    )


def to_float(pixels: jax.Array, divisor: jax.Array) -> jax.Array:
    """uint8 pixels as float32 in [0, 1], bit-for-bit ``to_float32``'s x / 255.

    ``divisor`` (255) is a runtime argument: a constant would let XLA multiply by
    1/255 instead, which differs in the last bit for 126 of the 256 pixel values.
    """
    return pixels.astype(jnp.float32) / divisor


def forward(params: Linear, images: jax.Array) -> jax.Array:
    """Logits (N, 10) of flattened float32 images (N, 784), in true float32."""
    return jnp.dot(images, params.weights_t.T, precision=jax.lax.Precision.HIGHEST) + params.bias


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example loss: minus the log-probability of the true class (log-sum-exp)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def count_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Number of correct predictions (int32 even under x64)."""
    return (jnp.argmax(logits, axis=1) == labels).sum(dtype=jnp.int32)


def train_step(
    optimizer: optax.GradientTransformation,
    divisor: jax.Array,
    params: Linear,
    opt_state: optax.OptState,
    pixels: jax.Array,
    labels: jax.Array,
) -> tuple[Linear, optax.OptState, jax.Array, jax.Array]:
    """One SGD step on one batch of uint8 ``pixels`` (n, 784), on the batch's mean loss.

    Returns the new state, the batch's loss sum and its correct count.
    """
    images = to_float(pixels, divisor)

    def mean_loss(params: Linear) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        logits = forward(params, images)
        losses = cross_entropy(logits, labels)
        return losses.mean(), (losses, logits)

    (_, (losses, logits)), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, losses.sum(), count_correct(logits, labels)


# ------------------------------------------------------------------- programs


def gathered_step(
    optimizer: optax.GradientTransformation,
    rows: NamedSharding | None,
    params: Linear,
    opt_state: optax.OptState,
    pixels: jax.Array,
    labels: jax.Array,
    index: jax.Array,
    divisor: jax.Array,
) -> tuple[Linear, optax.OptState, jax.Array, jax.Array]:
    """:func:`train_step` on the rows ``index`` of the training set (in bounds: checked on
    the host), gathered in the program; with replicas, each gathers and steps on its share of
    the rows (``rows``: see :mod:`impls.jax_parallel`)."""
    index = split_rows(index, rows)
    batch_x = split_rows(pixels.at[index].get(mode="promise_in_bounds"), rows)
    batch_y = split_rows(labels.at[index].get(mode="promise_in_bounds"), rows)
    return train_step(optimizer, divisor, params, opt_state, batch_x, batch_y)


def epoch_fn(
    optimizer: optax.GradientTransformation,
    batch_size: int,
    rows: NamedSharding | None,
    params: Linear,
    opt_state: optax.OptState,
    pixels: jax.Array,
    labels: jax.Array,
    order: jax.Array,
    divisor: jax.Array,
) -> tuple[Linear, optax.OptState, jax.Array, jax.Array]:
    """A whole epoch over ``order``: per-batch loss sums and correct counts, in batch order.

    ``lax.scan`` runs the full batches; the remaining examples, if any, make one
    last, shorter batch.
    """

    def step(params: Linear, opt_state: optax.OptState, index: jax.Array) -> tuple:
        return gathered_step(optimizer, rows, params, opt_state, pixels, labels, index, divisor)

    full = order.shape[0] // batch_size
    loss_sums = jnp.zeros((0,), jnp.float32)
    corrects = jnp.zeros((0,), jnp.int32)
    if full:

        def body(carry, index):
            params, opt_state, loss, correct = step(*carry, index)
            return (params, opt_state), (loss, correct)

        batches = order[: full * batch_size].reshape(full, batch_size)
        (params, opt_state), (loss_sums, corrects) = jax.lax.scan(
            body, (params, opt_state), batches
        )
    if order.shape[0] > full * batch_size:
        params, opt_state, loss, correct = step(params, opt_state, order[full * batch_size :])
        loss_sums = jnp.concatenate([loss_sums, loss[None]])
        corrects = jnp.concatenate([corrects, correct[None]])
    return params, opt_state, loss_sums, corrects


def evaluate_fn(
    rows: NamedSharding | None,
    params: Linear,
    pixels: jax.Array,
    labels: jax.Array,
    divisor: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Per-example losses and the correct count over a whole (test) set of uint8 pixels,
    split by rows over the replicas."""
    logits = forward(params, to_float(split_rows(pixels, rows), divisor))
    return cross_entropy(logits, labels), count_correct(logits, labels)


# ---------------------------------------------------------------------- state


class JaxTrainer:
    """The protocol's stateful shell: parameters, data and compiled programs on one device,
    or on ``config.replicas`` devices (:mod:`impls.jax_parallel`).

    ``per_step``: one compiled step per batch from a Python loop, else one compiled epoch.
    """

    def __init__(
        self, data: FashionMNIST, params: Params, config: TrainConfig, *, per_step: bool = False
    ) -> None:
        self._config, self._per_step = config, per_step
        on_cpu = config.device.lower() == "cpu"
        # In a run over several processes (host_devices.jax_processes), each holds an equal
        # share of the replicas and of the threads.
        group = host_devices.jax_processes()
        self._processes = 1 if group is None else group.processes
        local = host_devices.local_replicas(config.replicas, group)
        self._threads = None if config.threads is None else config.threads // self._processes
        self._setup = jax_support.initialise_backends(self._threads, local if on_cpu else 1, group)
        self._placement = jax_parallel.place(
            jax_support.select_devices(config.device, config.replicas)
        )
        self._device = self._placement.devices[0]
        # XLA's CPU host devices can deadlock with several multi-device programs in flight
        # (2 replicas, 2 pool workers, 100 steps queued: XLA aborted the process after 40 s),
        # so on the CPU, one at a time: every step is waited for.
        self._wait_each_step = per_step and on_cpu and config.replicas > 1
        self._compiler = jax_support.Compiler()
        put = partial(jax.device_put, device=self._placement.replicated)
        self._train_x = put(data.train_images.reshape(data.num_train, -1))  # uint8
        self._train_y = put(data.train_labels.astype(np.int32))
        self._test_x = put(data.test_images.reshape(data.num_test, -1))
        self._test_y = put(data.test_labels.astype(np.int32))
        self._divisor = put(np.float32(255))
        self._params = put(to_linear(params))
        self._optimizer = optax.sgd(config.lr)
        self._opt_state = put(self._optimizer.init(self._params))
        rows = self._placement.rows
        self._epoch_jit = jax.jit(partial(epoch_fn, self._optimizer, config.batch_size, rows))
        self._step_jit = jax.jit(partial(gathered_step, self._optimizer, rows))
        self._predict_jit = jax.jit(
            lambda params, x: jnp.argmax(forward(params, split_rows(x, rows)), axis=1),
            out_shardings=self._placement.replicated,  # every process may read it
        )
        self._programs: dict[tuple[str, int], Callable[..., Any]] = {}
        # Compile now, so that the first epoch times training only: the epoch, or the step
        # for each batch length an epoch has (the full batches and the last, shorter one).
        if per_step:
            lengths = {
                stop - start for start, stop in batch_bounds(data.num_train, config.batch_size)
            }
            for length in sorted(lengths, reverse=True):
                self._program("train_step", length)
        else:
            self._program("train_epoch", data.num_train)
        args = (self._params, self._test_x, self._test_y, self._divisor)
        evaluate = jax.jit(partial(evaluate_fn, rows), out_shardings=self._placement.replicated)
        self._evaluate = self._compiler.compile("evaluate", evaluate, *args)
        jax.block_until_ready((self._train_x, self._train_y, self._test_x, self._test_y))

    def _epoch_args(self, order: Any) -> tuple:
        return (self._params, self._opt_state, self._train_x, self._train_y, order, self._divisor)

    def _step_args(self, params: Linear, opt_state: optax.OptState, index: Any) -> tuple:
        return (params, opt_state, self._train_x, self._train_y, index, self._divisor)

    def _program(self, kind: str, length: int) -> Callable[..., Any]:
        """The compiled ``train_epoch`` for orders, or ``train_step`` for batches, of
        ``length`` (compiled once per length)."""
        if (kind, length) not in self._programs:
            sharding = self._placement.replicated
            indices = jax.ShapeDtypeStruct((length,), jnp.int32, sharding=sharding)
            jitted, args = (
                (self._epoch_jit, self._epoch_args(indices))
                if kind == "train_epoch"
                else (self._step_jit, self._step_args(self._params, self._opt_state, indices))
            )
            self._programs[kind, length] = self._compiler.compile(
                f"{kind}[{length}]", jitted, *args
            )
        return self._programs[kind, length]

    def train_epoch(self, order: np.ndarray) -> EpochStats:
        order = check_order(order, self._train_y.shape[0]).astype(np.int32)
        self._params, self._opt_state, loss_sums, corrects = self._run_epoch(order)
        jax.block_until_ready(self._params)
        loss = float(np.asarray(jax.device_get(loss_sums)).sum(dtype=np.float64))
        correct = int(np.asarray(jax.device_get(corrects)).sum(dtype=np.int64))
        return EpochStats(loss / len(order), correct / len(order))

    def _run_epoch(self, order: np.ndarray) -> tuple:
        """An epoch from the current state: the new state and the batches' loss sums and
        correct counts (the trainer's state is left as it is)."""
        if not self._per_step:
            program = self._program("train_epoch", len(order))
            return program(*self._epoch_args(jax.device_put(order, self._placement.replicated)))
        # One compiled step per batch; each batch's indices go to the devices as the step's
        # argument. Dispatch is asynchronous: nothing waits until the end (replicas on the
        # CPU aside).
        params, opt_state, loss_sums, corrects = self._params, self._opt_state, [], []
        for start, stop in batch_bounds(len(order), self._config.batch_size):
            step = self._program("train_step", stop - start)
            params, opt_state, loss, correct = step(
                *self._step_args(params, opt_state, order[start:stop])
            )
            loss_sums.append(loss)
            corrects.append(correct)
            if self._wait_each_step:
                jax.block_until_ready(params)
        return params, opt_state, loss_sums, corrects

    def measure_communication(self, order: np.ndarray) -> dict[str, float | None]:
        """What combining the replicas' gradients costs in an epoch over ``order``, measured
        apart from any timed epoch (the trainer's state is left as it is):

        ``collective_seconds``: per replica, inside the epoch's own programs run once under
        JAX's profiler (CPU devices only; None elsewhere), waiting for the slower replica
        included; ``profiled_epoch_seconds``: that epoch, slowed by the profiler;
        ``all_reduce_alone_seconds``: an estimate, one program doing nothing but the epoch's
        all-reduces of the step's gradient, loss sum and correct count, one per batch.
        """
        if self._placement.rows is None:
            raise ValueError("one replica: there is no communication to measure")
        order = check_order(order, self._train_y.shape[0]).astype(np.int32)
        jax.block_until_ready(self._run_epoch(order))  # a first run, unprofiled, to warm up
        replicas = len(self._placement.devices)
        collective, profiled = (
            jax_parallel.collective_seconds(lambda: self._run_epoch(order), replicas)
            if self._device.platform == "cpu"
            else (None, None)
        )
        steps = len(list(batch_bounds(len(order), self._config.batch_size)))
        shapes = jax_parallel.gradient_shapes(self._params)
        return {
            "collective_seconds": collective,
            "profiled_epoch_seconds": profiled,
            "all_reduce_alone_seconds": jax_parallel.all_reduce_alone(
                self._placement, shapes, steps
            ),
        }

    def evaluate(self) -> Evaluation:
        losses, correct = self._evaluate(self._params, self._test_x, self._test_y, self._divisor)
        total = len(self._test_y)
        loss = float(np.asarray(losses).sum(dtype=np.float64))
        return Evaluation(loss / total, int(correct) / total)

    def predict(self, images: np.ndarray) -> np.ndarray:
        flat = to_float32(images).reshape(len(images), pixels_per_image(images))  # also N = 0
        labels = self._predict_jit(self._params, jax.device_put(flat, self._placement.replicated))
        return np.asarray(labels).astype(np.int64)

    def parameters(self) -> Params:
        return to_params(self._params)

    def runtime_info(self) -> Mapping[str, object]:
        replicas = len(self._placement.devices)
        strategy = (
            "jit of one step, called per batch from Python"
            if self._per_step
            else "whole epoch compiled (lax.scan)"
        )
        on_devices = (
            f"; batch split over {replicas} devices (NamedSharding), uint8 replicated"
            if replicas > 1
            else "; uint8 on device"
        )
        on_cpu = self._device.platform == "cpu"
        return {
            "strategy": strategy + on_devices,
            "device": self._device.platform,
            "device_name": str(self._device),
            "replicas": replicas,
            "devices": [str(device) for device in self._placement.devices],
            # XLA's CPU client runs every host device's program on one shared pool of
            # `threads` workers: a replica's share is an average, not a pinned pool.
            "threads_per_replica": self._config.threads_per_replica if on_cpu else None,
            **jax_support.versions(),
            "optax": optax.__version__,
            "processes": self._processes,
            **jax_support.threads_info(self._device, self._threads, self._setup),
            **self._compiler.info(),
        }


def make_trainer(data: FashionMNIST, params: Params, config: TrainConfig) -> JaxTrainer:
    """The ``jax`` entry: every epoch one compiled program."""
    return JaxTrainer(data, params, config)


def make_step_trainer(data: FashionMNIST, params: Params, config: TrainConfig) -> JaxTrainer:
    """The ``jax-step`` entry: one compiled step per batch, looped over in Python."""
    return JaxTrainer(data, params, config, per_step=True)


def available_devices() -> list[str]:
    """The platforms present here (see :func:`impls.jax_support.available_devices`)."""
    return jax_support.available_devices()
