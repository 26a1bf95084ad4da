"""Every implementation, by name, imported only when asked for.

Adding an implementation is one module (defining ``make_trainer`` and
``available_devices``, see :mod:`impls.protocol`) plus one line in ``REGISTRY``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from impls.config import ConfigError
from impls.training import Callback, History, fit, init_params

if TYPE_CHECKING:
    from impls.config import TrainConfig
    from impls.data import FashionMNIST
    from impls.protocol import Params, Trainer


class UnknownImplementationError(KeyError):
    """No implementation of that name is registered."""

    def __str__(self) -> str:
        return str(self.args[0])


class MissingFrameworkError(ImportError):
    """The implementation's framework is not installed."""


@dataclass(frozen=True)
class Implementation:
    """One registry entry: where the module is and what it needs installed."""

    name: str
    module: str
    requires: tuple[str, ...]  # import names that must be present
    extra: str  # the pip extra that installs them
    summary: str
    follows_shared_order: bool = True
    # The environment variable naming its persistent compilation cache, if it keeps one.
    compile_cache_env: str | None = None
    # The module's function that builds the trainer (a module may hold several strategies).
    factory: str = "make_trainer"
    # Streams its batches through a DataLoader of its own: TrainConfig.loader_workers
    # applies, and its trainer has load_batches() (the input pipeline alone).
    own_loader: bool = False
    # The framework engine that spreads one run over TrainConfig.replicas devices
    # (None: single device only, --replicas 1).
    data_parallel: str | None = None
    # "module:function" (framework-free) giving the environment variables a process needs
    # before it imports this framework, for a config (JAX's host devices for replicas).
    environment: str | None = None
    # Why the benchmark leaves it out unless named with --impl (None: benchmarked by
    # default): the bench must fit its time budget, and a slow build would break it.
    opt_in: str | None = None

    def missing(self) -> list[str]:
        """The required top-level modules that cannot be found (without importing them)."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    @property
    def install_command(self) -> str:
        """The pip command that installs what this implementation needs."""
        return f"pip install 'fmbench[{self.extra}]'"

    def is_installed(self) -> bool:
        return not self.missing()

    def load(self) -> ModuleType:
        """Import the implementation module, or say exactly what to install."""
        missing = self.missing()
        if missing:
            raise MissingFrameworkError(
                f"implementation {self.name!r} needs {', '.join(missing)}, which is not "
                f"installed: {self.install_command}"
            )
        return importlib.import_module(self.module)


JAX_DATA_PARALLEL = "jax.sharding Mesh + NamedSharding, XLA all-reduce"

REGISTRY: dict[str, Implementation] = {
    impl.name: impl
    for impl in (
        Implementation(
            "numpy",
            "impls.numpy_softmax",
            ("threadpoolctl",),
            "numpy",
            "NumPy, hand-written gradients",
        ),
        Implementation(
            "torch-scratch",
            "impls.torch_scratch",
            ("torch",),
            "torch",
            "PyTorch from scratch: autograd, own softmax, loss and SGD",
            data_parallel="torch.distributed all_reduce of gradients (gloo on CPU, nccl on CUDA)",
        ),
        Implementation(
            "torch-nn",
            "impls.torch_nn",
            ("torch",),
            "torch",
            "PyTorch nn.Sequential, CrossEntropyLoss, optim.SGD",
            data_parallel="torch.distributed DDP (gloo on CPU, nccl on CUDA)",
        ),
        Implementation(
            "torch-compile",
            "impls.torch_nn",
            ("torch",),
            "torch",
            "PyTorch nn + torch.compile (inductor) of forward and loss, one call per batch",
            compile_cache_env="FMBENCH_TORCH_CACHE_DIR",
            factory="make_compiled_trainer",
            opt_in="its build compiles for 20-25 s from an empty cache (the bench's start-up "
            "rows do it once a run), for epochs slower than torch-nn's: see PERFORMANCE.md",
        ),
        Implementation(
            "jax",
            "impls.jax_optax",
            ("jax", "optax"),
            "jax",
            "JAX jit + optax, whole epochs compiled with lax.scan",
            compile_cache_env="FMBENCH_JAX_CACHE_DIR",
            data_parallel=JAX_DATA_PARALLEL,
            environment="impls.host_devices:xla_host_devices",
        ),
        Implementation(
            "jax-step",
            "impls.jax_optax",
            ("jax", "optax"),
            "jax",
            "JAX jit + optax, one compiled step per batch from a Python loop",
            compile_cache_env="FMBENCH_JAX_CACHE_DIR",
            factory="make_step_trainer",
            data_parallel=JAX_DATA_PARALLEL,
            environment="impls.host_devices:xla_host_devices",
        ),
        Implementation(
            "numba",
            "impls.numba_fused",
            ("numba",),
            "numba",
            "Numba, one fused multi-threaded kernel per batch, register-blocked, in cache",
            compile_cache_env="FMBENCH_NUMBA_CACHE_DIR",
        ),
        Implementation(
            "d2l-reference",
            "impls.d2l_reference",
            ("torch", "torchvision"),
            "torch",
            "the book's pipeline: torchvision FashionMNIST + ToTensor + DataLoader (baseline)",
            follows_shared_order=False,
            own_loader=True,
        ),
    )
}


def benchmarked_by_default() -> tuple[str, ...]:
    """The implementations the benchmark runs when none is named: all but the opt-in ones."""
    return tuple(name for name, impl in REGISTRY.items() if impl.opt_in is None)


def get(name: str) -> Implementation:
    """The registry entry for ``name``, or an error listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(REGISTRY)
        raise UnknownImplementationError(
            f"unknown implementation {name!r}; known implementations: {known}"
        ) from None


def make_trainer(name: str, data: FashionMNIST, params: Params, config: TrainConfig) -> Trainer:
    """Build implementation ``name``'s trainer on ``data`` from the shared ``params``."""
    impl = get(name)
    return getattr(impl.load(), impl.factory)(data, params, config)


def available_devices(name: str) -> list[str]:
    """The devices implementation ``name`` can use on this machine."""
    return list(get(name).load().available_devices())


def build_trainer(
    name: str, data: FashionMNIST, config: TrainConfig
) -> tuple[Trainer, TrainConfig]:
    """Implementation ``name`` built from the shared initial parameters, and its settings.

    ``config`` is resolved here, once (``threads=None`` becomes the usable cores):
    ``fmbench train`` and the benchmark worker both build through this. ``data``
    must be at ``config.resize`` (:meth:`~impls.data.FashionMNIST.at_size`); the
    model's inputs are its pixels per image.
    """
    config = config.resolved()
    check_size(data, config)
    check_replicas(name, config.replicas)
    params = init_params(config, data.num_inputs)
    return make_trainer(name, data, params, config), config


def environment_for(name: str, config: TrainConfig) -> dict[str, str]:
    """The environment variables a process must have, before it imports implementation
    ``name``'s framework, to run ``config`` (empty for most)."""
    hook = get(name).environment
    if hook is None:
        return {}
    module, function = hook.split(":")
    return dict(getattr(importlib.import_module(module), function)(config))


def check_replicas(name: str, replicas: int) -> None:
    """A ConfigError when implementation ``name`` cannot run ``replicas`` data-parallel replicas."""
    if replicas == 1 or get(name).data_parallel:
        return
    takers = ", ".join(impl.name for impl in REGISTRY.values() if impl.data_parallel)
    raise ConfigError(
        f"{name} runs on one device only (it has no data-parallel engine), so replicas must "
        f"be 1, got {replicas}; implementations that take replicas: {takers or 'none'}"
    )


def check_size(data: FashionMNIST, config: TrainConfig) -> None:
    """A ConfigError unless ``data``'s images have the side ``config.resize`` asks for."""
    wanted = config.resize or (data.side if data.original is None else data.original.side)
    if data.side != wanted:
        raise ConfigError(
            f"the images are {data.side}x{data.side} but the config asks for "
            f"{wanted}x{wanted}: resize them with data.at_size({config.resize})"
        )


def train(
    name: str, data: FashionMNIST, config: TrainConfig, *, callbacks: Sequence[Callback] = ()
) -> tuple[History, Trainer]:
    """Build implementation ``name`` (:func:`build_trainer`) and ``fit`` it."""
    trainer, config = build_trainer(name, data, config)
    try:
        return fit(trainer, data, config, implementation=name, callbacks=callbacks), trainer
    except BaseException:
        close_trainer(trainer)  # a failed run leaves no replica process running
        raise


def close_trainer(trainer: Trainer) -> None:
    """Stop what ``trainer`` runs besides this process (a data-parallel trainer's replicas)."""
    close = getattr(trainer, "close", None)
    if close is not None:
        close()
