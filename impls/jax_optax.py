"""Softmax regression in JAX: ``jax.value_and_grad``, ``optax.sgd``, whole epochs compiled.

Pure functions of ``(params, batch)`` do the maths (:func:`forward`,
:func:`batch_loss`, :func:`train_step`); :func:`epoch_fn` runs a whole epoch as
one XLA program: ``lax.scan`` over the full minibatches of the shared order,
then one more step for the last partial batch, each step on its own batch mean
(the same minibatches as every other implementation, none dropped or padded).
:class:`JaxTrainer` holds the state on one device: the first device of
``config.device``'s platform, one of :data:`PLATFORMS` or ``gpu`` for any GPU.

Data. The uint8 images go to the device once, as they are; each step gathers
its batch's rows and converts them inside the compiled program (:func:`to_float`,
bit-for-bit the other implementations' float32 ``x / 255``), so an epoch reads
47 MB of pixels instead of 188 MB. Each epoch only transfers its order (int32,
240 KB) and returns per-batch loss sums and correct counts, summed in float64 on
the host.

float32 throughout: dtypes are explicit everywhere, so ``jax_enable_x64`` cannot
widen anything (the trainer checks the compiled outputs and raises if it
would). Matrix products use ``Precision.HIGHEST`` so GPUs (TF32) and TPUs (bf16
passes) compute real float32 products like the CPU does.

Compilation is kept apart from training: the trainer compiles the epoch and
evaluation programs ahead of time (``jit(...).lower(...).compile()``) when it
is built, and reports the time in :meth:`JaxTrainer.runtime_info`. JAX's
persistent compilation cache is pointed at ``$FMBENCH_JAX_CACHE_DIR`` (empty:
off), else ``jax-cache`` under :func:`impls.data.default_cache_dir`, unless the
user configured a cache directory already; ``runtime_info`` says whether the
compilation was served from it (warm).

Threads (CPU). XLA has no option for the size of its CPU thread pools: the
``XLA_FLAGS`` recipe ``--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=N`` has no measurable effect in current jaxlib
(the thunk runtime still runs a large matmul on several threads; the second
token is not even an XLA flag). The pools are sized once, when the backends
initialise, from the cores the initialising thread may run on. So, on Linux,
when ``config.threads`` is below that count and JAX's backends are not yet
initialised, the trainer narrows the calling thread's CPU affinity to
``threads`` cores while the backends start, then restores it and un-pins the
threads created meanwhile: the pools get ``threads`` workers that may run on
any core. Limits: it works only once per process, before anything else
initialises JAX (including :func:`available_devices`); a later trainer asking
for another count runs with the first count and says so (``threads_applied``
false); without ``os.sched_setaffinity`` (macOS, Windows) nothing is applied;
XLA may still use a few helper threads besides the compute pools.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from impls.config import TrainConfig
from impls.data import FashionMNIST, check_order, default_cache_dir, to_float32
from impls.protocol import EpochStats, Evaluation, Params

CACHE_DIR_ENV = "FMBENCH_JAX_CACHE_DIR"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what available_devices() reports, when present
GPU_PLATFORMS = ("cuda", "rocm")  # what config.device "gpu" means: the first of these present
HIGHEST = jax.lax.Precision.HIGHEST
_CACHE_EVENTS = ("/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses")


# ------------------------------------------------------------------- the maths


class Linear(NamedTuple):
    """The parameters as this module keeps them: W transposed, (10, 784), and b.

    XLA's CPU dot runs x @ W about twice as fast with W laid out (out, in), as
    nn.Linear keeps it, as with (in, out): a whole epoch 0.061 s -> 0.034 s here,
    bit-for-bit the same results. :func:`to_linear` and :func:`to_params` convert
    at the module's boundary.
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

    ``divisor`` (255) arrives as a runtime argument on purpose: a constant lets
    XLA rewrite the division as a multiplication by 1/255, which differs in the
    last bit for 126 of the 256 pixel values.
    """
    return pixels.astype(jnp.float32) / divisor


def forward(params: Linear, images: jax.Array) -> jax.Array:
    """Logits (N, 10) of flattened float32 images (N, 784), in true float32."""
    return jnp.dot(images, params.weights_t.T, precision=HIGHEST) + params.bias


def batch_loss(
    params: Linear, images: jax.Array, labels: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """The batch's mean cross-entropy, with the per-example losses and logits as aux."""
    logits = forward(params, images)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return losses.mean(), (losses, logits)


def count_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Number of correct predictions (int32 even under x64)."""
    return (jnp.argmax(logits, axis=1) == labels).sum(dtype=jnp.int32)


def train_step(
    optimizer: optax.GradientTransformation,
    params: Linear,
    opt_state: optax.OptState,
    images: jax.Array,
    labels: jax.Array,
) -> tuple[Linear, optax.OptState, jax.Array, jax.Array]:
    """One SGD step on one batch: new state, the batch's loss sum and correct count."""
    grad_fn = jax.value_and_grad(batch_loss, has_aux=True)
    (_, (losses, logits)), grads = grad_fn(params, images, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, losses.sum(), count_correct(logits, labels)


def gather_step(
    optimizer: optax.GradientTransformation,
    divisor: jax.Array,
    params: Linear,
    opt_state: optax.OptState,
    pixels: jax.Array,
    labels: jax.Array,
    index: jax.Array,
) -> tuple[Linear, optax.OptState, jax.Array, jax.Array]:
    """:func:`train_step` on the examples at ``index`` (in bounds: checked on the host).

    Gathers uint8 rows and converts them: a quarter of the bytes of float32 rows.
    """
    batch_x = to_float(pixels.at[index].get(mode="promise_in_bounds"), divisor)
    batch_y = labels.at[index].get(mode="promise_in_bounds")
    return train_step(optimizer, params, opt_state, batch_x, batch_y)


def epoch_fn(
    optimizer: optax.GradientTransformation,
    batch_size: int,
    params: Linear,
    opt_state: optax.OptState,
    pixels: jax.Array,
    labels: jax.Array,
    order: jax.Array,
    divisor: jax.Array,
) -> tuple[Linear, optax.OptState, jax.Array, jax.Array]:
    """A whole epoch over ``order``: per-batch loss sums and correct counts, in batch order.

    ``lax.scan`` runs the ``len(order) // batch_size`` full batches; the remaining
    examples, if any, make one last, shorter batch (any N and batch size).
    """
    full = order.shape[0] // batch_size
    step = partial(gather_step, optimizer, divisor)
    loss_sums = jnp.zeros((0,), jnp.float32)
    corrects = jnp.zeros((0,), jnp.int32)
    if full:

        def body(carry, index):
            params, opt_state, loss, correct = step(*carry, pixels, labels, index)
            return (params, opt_state), (loss, correct)

        batches = order[: full * batch_size].reshape(full, batch_size)
        (params, opt_state), (loss_sums, corrects) = jax.lax.scan(
            body, (params, opt_state), batches
        )
    if order.shape[0] > full * batch_size:
        params, opt_state, loss, correct = step(
            params, opt_state, pixels, labels, order[full * batch_size :]
        )
        loss_sums = jnp.concatenate([loss_sums, loss[None]])
        corrects = jnp.concatenate([corrects, correct[None]])
    return params, opt_state, loss_sums, corrects


def evaluate_fn(
    params: Linear, pixels: jax.Array, labels: jax.Array, divisor: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-example losses and the correct count over a whole (test) set of uint8 pixels."""
    logits = forward(params, to_float(pixels, divisor))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return losses, count_correct(logits, labels)


def predict_fn(params: Linear, images: jax.Array) -> jax.Array:
    return jnp.argmax(forward(params, images), axis=1)


# --------------------------------------------------------------------- devices


def _backends_initialized() -> bool:
    from jax._src import xla_bridge  # private: no public way to ask without initialising

    probe = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(probe()) if probe is not None else bool(getattr(xla_bridge, "_backends", {}))


def _present_platforms() -> list[str]:
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
    _initialise_backends(None)
    return _present_platforms()


def select_device(name: str) -> jax.Device:
    """The first device of platform ``name``, or a ``ValueError`` naming those present.

    ``name`` is a platform of :data:`PLATFORMS`, or ``gpu`` for whichever GPU
    platform is present (so ``cuda`` and ``gpu`` both pick an NVIDIA GPU).
    """
    wanted = name.lower()
    present = _present_platforms()
    candidates = GPU_PLATFORMS if wanted == "gpu" else (wanted,)
    for platform in candidates:
        if platform in present:
            return jax.devices(platform)[0]
    raise ValueError(
        f"JAX has no {name!r} device here; platforms present: {', '.join(present) or 'none'} "
        f"(known: {', '.join(PLATFORMS)}, and gpu for any GPU)"
    )


# --------------------------------------------------------------------- threads

_backend_lock = threading.Lock()
_backend_setup: dict[str, Any] | None = None  # what happened when the backends started


def _initialise_backends(threads: int | None) -> dict[str, Any]:
    """Start JAX's backends once, with CPU pools of ``threads`` workers where possible.

    Returns (and remembers) what was done: ``pool_threads`` is the number of
    cores the pools were sized from (None when unknown).
    """
    global _backend_setup
    with _backend_lock:
        if _backend_setup is not None:
            return _backend_setup
        if _backends_initialized():
            _backend_setup = {
                "pool_threads": None,
                "how": "JAX's backends were initialised before fmbench's jax trainer: "
                "XLA's CPU pools kept the size they got then (by default, one worker per "
                "schedulable core)",
            }
            return _backend_setup
        if not hasattr(os, "sched_setaffinity"):
            jax.devices()
            _backend_setup = {
                "pool_threads": None,
                "how": "no os.sched_setaffinity on this platform: XLA sized its CPU pools itself",
            }
            return _backend_setup
        cores = os.sched_getaffinity(0)
        if threads is None or threads >= len(cores):
            jax.devices()
            _backend_setup = {
                "pool_threads": len(cores),
                "how": f"default: XLA sized its CPU pools from the {len(cores)} schedulable cores",
            }
            return _backend_setup
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
        _backend_setup = {
            "pool_threads": threads,
            "how": f"CPU affinity narrowed to {threads} of {len(cores)} cores while JAX's "
            f"backends initialised, so XLA sized its CPU pools to {threads}; affinity then "
            f"restored and {unpinned} new threads un-pinned",
        }
        return _backend_setup


# ----------------------------------------------------------- compilation cache


_cache_setup: dict[str, Any] | None = None  # decided once per process


def _configure_cache() -> dict[str, Any]:
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
    env = os.environ.get(CACHE_DIR_ENV)
    if env is not None and not env.strip():
        return {"compilation_cache_dir": None, "compilation_cache_set_by": f"${CACHE_DIR_ENV}"}
    path = Path(env).expanduser() if env else default_cache_dir() / "jax-cache"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return {"compilation_cache_dir": None, "compilation_cache_set_by": f"off: {error}"}
    jax.config.update("jax_compilation_cache_dir", str(path))
    # this program compiles in about a second: cache it whatever its compile time and size
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return {
        "compilation_cache_dir": str(path),
        "compilation_cache_set_by": f"${CACHE_DIR_ENV}" if env else "fmbench default",
    }


def _cache_entries(directory: str | None) -> int | None:
    if not directory or not os.path.isdir(directory):
        return None
    return sum(1 for entry in os.scandir(directory) if entry.name.endswith("-cache"))


class _Compiled(NamedTuple):
    executable: Any
    lower_seconds: float  # tracing and lowering to StableHLO (never cached across processes)
    compile_seconds: float  # XLA compilation, or loading it from the persistent cache
    cache_hits: int
    cache_misses: int


def _compile(jitted: Any, *args: Any) -> _Compiled:
    """Lower and compile ``jitted`` ahead of time for ``args``, timed, counting cache use."""
    counts = dict.fromkeys(_CACHE_EVENTS, 0)

    def listen(event: str, **_: object) -> None:
        if event in counts:
            counts[event] += 1

    jax.monitoring.register_event_listener(listen)
    try:
        start = time.perf_counter()
        lowered = jitted.lower(*args)
        _check_float32(lowered.out_info)
        lowered_at = time.perf_counter()
        executable = lowered.compile()
        done = time.perf_counter()
    finally:
        jax.monitoring.unregister_event_listener(listen)
    return _Compiled(executable, lowered_at - start, done - lowered_at, *counts.values())


def _check_float32(out_info: Any) -> None:
    """Refuse a program whose outputs are not float32/int32 (x64 leaking in)."""
    allowed = {np.dtype(np.float32), np.dtype(np.int32)}
    for leaf in jax.tree.leaves(out_info):
        dtype = np.dtype(leaf.dtype)
        if dtype not in allowed:
            raise TypeError(f"the JAX program computes in {dtype}, expected float32 throughout")


# --------------------------------------------------------------------- trainer


class JaxTrainer:
    """The protocol's stateful shell: parameters, data and compiled programs on one device."""

    def __init__(self, data: FashionMNIST, params: Params, config: TrainConfig) -> None:
        self._config = config
        self._setup = _initialise_backends(config.threads)
        self._device = select_device(config.device)
        self._cache = _configure_cache()
        self._cache["compilation_cache_entries_before"] = _cache_entries(
            self._cache["compilation_cache_dir"]
        )
        put = partial(jax.device_put, device=self._device)
        self._num_train = data.num_train
        # uint8 on the device; the compiled programs convert (see to_float).
        self._train_x = put(data.train_images.reshape(data.num_train, -1))
        self._train_y = put(data.train_labels.astype(np.int32))
        self._test_x = put(data.test_images.reshape(data.num_test, -1))
        self._test_y = put(data.test_labels.astype(np.int32))
        self._divisor = put(np.float32(255))
        self._params = put(to_linear(params))
        self._optimizer = optax.sgd(config.lr)
        self._opt_state = put(self._optimizer.init(self._params))
        self._epoch_jit = jax.jit(partial(epoch_fn, self._optimizer, config.batch_size))
        self._predict_jit = jax.jit(predict_fn)
        self._epochs: dict[int, Callable[..., Any]] = {}
        self._compiled: dict[str, _Compiled] = {}
        self._epoch_program(data.num_train)  # compile now: the first epoch times training only
        self._evaluate = self._compile(
            "evaluate", jax.jit(evaluate_fn), self._test_x, self._test_y, self._divisor
        )
        jax.block_until_ready((self._train_x, self._train_y, self._test_x, self._test_y))

    def _compile(self, name: str, jitted: Any, *data: Any) -> Callable[..., Any]:
        compiled = _compile(jitted, self._params, *data)
        self._compiled[name] = compiled
        return compiled.executable

    def _epoch_program(self, length: int) -> Callable[..., Any]:
        """The compiled epoch for orders of ``length`` (compiled once per length)."""
        if length not in self._epochs:
            order = jax.ShapeDtypeStruct(
                (length,), jnp.int32, sharding=jax.sharding.SingleDeviceSharding(self._device)
            )
            compiled = _compile(
                self._epoch_jit,
                self._params,
                self._opt_state,
                self._train_x,
                self._train_y,
                order,
                self._divisor,
            )
            self._compiled[f"train_epoch[{length}]"] = compiled
            self._epochs[length] = compiled.executable
        return self._epochs[length]

    def train_epoch(self, order: np.ndarray) -> EpochStats:
        order = check_order(order, self._num_train)
        program = self._epoch_program(len(order))
        order_on_device = jax.device_put(order.astype(np.int32), self._device)
        self._params, self._opt_state, loss_sums, corrects = program(
            self._params,
            self._opt_state,
            self._train_x,
            self._train_y,
            order_on_device,
            self._divisor,
        )
        jax.block_until_ready(self._params)
        loss = float(np.asarray(loss_sums).sum(dtype=np.float64))
        correct = int(np.asarray(corrects).sum(dtype=np.int64))
        return EpochStats(loss / len(order), correct / len(order))

    def evaluate(self) -> Evaluation:
        losses, correct = self._evaluate(self._params, self._test_x, self._test_y, self._divisor)
        total = len(self._test_y)
        loss = float(np.asarray(losses).sum(dtype=np.float64))
        return Evaluation(loss / total, int(correct) / total)

    def predict(self, images: np.ndarray) -> np.ndarray:
        flat = to_float32(images).reshape(len(images), -1)
        labels = self._predict_jit(self._params, jax.device_put(flat, self._device))
        return np.asarray(labels).astype(np.int64)

    def parameters(self) -> Params:
        return to_params(self._params)

    def runtime_info(self) -> Mapping[str, object]:
        on_cpu = self._device.platform == "cpu"
        pool = self._setup["pool_threads"]
        asked = self._config.threads
        applied = on_cpu and (asked is None or (pool is not None and pool == asked))
        how = self._setup["how"] if on_cpu else "not a CPU device: threads do not apply"
        if on_cpu and not applied:
            how += (
                f"; {asked} threads could not be applied: only possible before "
                "JAX's backends initialise, i.e. for the first trainer of a fresh process"
            )
        hits = sum(c.cache_hits for c in self._compiled.values())
        misses = sum(c.cache_misses for c in self._compiled.values())
        if self._cache["compilation_cache_dir"] is None:
            warm = None
        elif hits + misses == 0:
            warm = None  # served from this process's in-memory caches
        else:
            warm = misses == 0
        return {
            "device": self._device.platform,
            "device_name": str(self._device),
            "jax": jax.__version__,
            "jaxlib": _version("jaxlib"),
            "optax": optax.__version__,
            "threads": self._config.threads if on_cpu else None,  # as asked
            "threads_effective": pool if on_cpu else None,  # XLA's CPU pool size (None: unknown)
            "threads_applied": applied,
            "threads_how": how,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "x64_enabled": bool(jax.config.jax_enable_x64),
            **self._cache,
            "compilation_cache_hits": hits,
            "compilation_cache_misses": misses,
            "compilation_cache_warm": warm,
            "compile_seconds": round(
                sum(c.lower_seconds + c.compile_seconds for c in self._compiled.values()), 4
            ),
            "compile_seconds_by_program": {
                name: {"lower": round(c.lower_seconds, 4), "compile": round(c.compile_seconds, 4)}
                for name, c in self._compiled.items()
            },
        }


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except (ImportError, AttributeError):
        return "unknown"


def make_trainer(data: FashionMNIST, params: Params, config: TrainConfig) -> JaxTrainer:
    return JaxTrainer(data, params, config)
