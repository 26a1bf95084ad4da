"""The one frozen configuration every run is built from."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Any


class ConfigError(ValueError):
    """A configuration value is out of range."""


NATIVE_PIXELS = 28 * 28  # pixels of a Fashion-MNIST image as stored
BOOK_LOADER_WORKERS = 4  # the book's DataLoader workers (d2l's get_dataloader_workers())
LR_RULE = "lr × pixels per image held constant: lr = 0.1 × 784 / pixels (0.1 at 28 × 28)"


def lr_at_size(lr: float, side: int | None) -> float:
    """The learning rate for square images of ``side`` (None: the native 28) by :data:`LR_RULE`,
    ``lr`` being the rate at 28 × 28.

    The gradient of the logits' loss with respect to W is the input times the
    error, so one step moves an example's logits by about lr × its squared norm,
    which grows with the pixels an upsampled image spreads its ink over: held
    constant, each step does at every size what it does at 28 × 28 and training
    stays as stable (at 112 × 112, lr 0.1 alone makes the loss jump: see README.md).
    """
    return lr if side is None else lr * NATIVE_PIXELS / (side * side)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one, else all.

    The one rule for "all cores" (``threads=None``, the bench's default): a
    container or ``taskset`` that narrows the affinity narrows it here too.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters and run settings; the defaults are the seed's (d2l ch. 3).

    ``threads`` of ``None`` means "all usable cores" (:func:`usable_cores`) and is
    resolved by :meth:`resolved` once, before a run, so every record states the
    number actually used.
    """

    lr: float = 0.1
    batch_size: int = 256
    epochs: int = 10
    seed: int = 0
    init_std: float = 0.01
    device: str = "cpu"
    threads: int | None = None
    resize: int | None = None  # the images' side after torchvision's Resize; None: 28, as stored
    # DataLoader worker processes of an implementation that streams its batches through
    # one (d2l-reference); None: the book's BOOK_LOADER_WORKERS. Others have no loader.
    loader_workers: int | None = None
    # Data-parallel replicas of one training run (synchronous SGD on the shared global
    # minibatches); only implementations with a framework engine for it take more than 1.
    # ``threads`` stays the run's total: each replica gets threads // replicas.
    replicas: int = 1

    def __post_init__(self) -> None:
        # math.isfinite as well: lr or init_std of inf would run an epoch of NaNs.
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be positive, got {self.batch_size}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be positive, got {self.epochs}")
        if not (self.init_std >= 0 and math.isfinite(self.init_std)):
            raise ConfigError(f"init std must be a non-negative finite number, got {self.init_std}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be positive, got {self.threads}")
        if self.seed < 0:
            raise ConfigError(f"seed must be non-negative, got {self.seed}")
        if self.loader_workers is not None and self.loader_workers < 0:
            raise ConfigError(f"loader workers must be 0 or more, got {self.loader_workers}")
        if isinstance(self.replicas, bool) or self.replicas < 1:
            raise ConfigError(f"replicas must be a positive integer, got {self.replicas}")
        if self.threads is not None and self.threads < self.replicas:
            raise ConfigError(
                f"{self.replicas} replicas need at least one thread each, "
                f"got threads {self.threads}"
            )
        if self.resize is not None and (isinstance(self.resize, bool) or self.resize < 1):
            raise ConfigError(f"resize must be a positive side length, got {self.resize}")

    def resolved(self) -> TrainConfig:
        """This config with ``threads`` made explicit."""
        if self.threads is not None:
            return self
        return replace(self, threads=usable_cores())

    @property
    def threads_per_replica(self) -> int | None:
        """Each replica's share of ``threads`` (None while threads is unresolved)."""
        return None if self.threads is None else self.threads // self.replicas

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for reports and JSON."""
        return asdict(self)
