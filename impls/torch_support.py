"""Helpers shared by the PyTorch implementations: devices, threads, data, counting, the model,
and torch-compile's compiler check, compilation cache and compile times.

Not an implementation itself (it is not in the registry); only PyTorch modules
import it, so importing it without torch installed is never attempted.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from impls import registry
from impls.compile_cache import CompileLog, choose_directory
from impls.config import TrainConfig
from impls.data import (
    EVAL_BATCH,
    NUM_CLASSES,
    FashionMNIST,
    batch_bounds,
    default_cache_dir,
    pixels_per_image,
    to_float32,
)
from impls.protocol import DeviceUnavailableError, Evaluation, Params

COMPILE_CACHE_ENV = registry.get("torch-compile").compile_cache_env
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # inductor's own, read when it compiles


def torch_devices() -> list[str]:
    """The PyTorch devices present on this machine (each PyTorch module's ``available_devices``)."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str) -> torch.device:
    """``name`` as a torch device, or a DeviceUnavailableError naming the devices present."""
    present = torch_devices()
    if name not in present:
        raise DeviceUnavailableError(
            f"device {name!r} is not available to PyTorch here; available: {', '.join(present)}"
        )
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """A readable name for reports: the GPU's model, or the device type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def apply_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op thread count (``None`` keeps its default); return what applies."""
    # The setting is process-wide, so trainers re-apply it before their own work
    # in case another trainer in the same process changed it in between.
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a timer stopped after this measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def flat_images(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 images (N, H, W) as a float32 (N, H * W) tensor on ``device``, ToTensor-scaled."""
    # Not -1: the shape of no images, (0, H * W), is then known too.
    flat = to_float32(images).reshape(len(images), pixels_per_image(images))
    return torch.from_numpy(flat).to(device)


def runtime_info(device: torch.device, threads: int) -> dict[str, object]:
    """What a PyTorch trainer ran with, for reports."""
    return {
        "device": device.type,
        "device_name": device_name(device),
        "threads": threads,
        "torch": torch.__version__,
    }


class DeviceData(NamedTuple):
    """The dataset moved to the device once: flat float32 images, int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def to_device(data: FashionMNIST, device: torch.device) -> DeviceData:
    """Convert ``data`` at the framework boundary, once."""
    return DeviceData(
        flat_images(data.train_images, device),
        torch.from_numpy(data.train_labels).to(device),
        flat_images(data.test_images, device),
        torch.from_numpy(data.test_labels).to(device),
    )


def place(data: FashionMNIST, config: TrainConfig) -> tuple[torch.device, int, DeviceData]:
    """What a PyTorch trainer does first: resolve the device, apply its threads (a replica's
    share of the run's), move the data."""
    device = resolve_device(config.device)
    return device, apply_threads(config.threads_per_replica), to_device(data, device)


def count_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions (the book's ``accuracy``), a tensor left on the device."""
    return (logits.argmax(dim=1) == labels).sum()


class Accumulator:
    """Per-batch loss sums and correct counts, kept on the device (the book's ``Accumulator``).

    One transfer when the means are asked for, instead of a sync per batch; the
    loss sums are added in float64 on the host, since MPS has no float64.
    """

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._loss_sums: list[torch.Tensor] = []
        self._correct = torch.zeros((), dtype=torch.int64, device=device)
        self._count = 0

    def add(self, loss_sum: torch.Tensor, correct: torch.Tensor, count: int) -> None:
        """Add one batch: its summed loss, its number of correct predictions, its size."""
        self._loss_sums.append(loss_sum)
        self._correct += correct
        self._count += count

    def totals(self) -> tuple[float, int, int]:
        """The summed loss, correct count and examples added (waits for the device)."""
        synchronize(self._device)
        loss = float(torch.stack(self._loss_sums).cpu().double().sum())
        return loss, int(self._correct), self._count

    def means(self) -> tuple[float, float]:
        """Mean per-example loss and accuracy over everything added (waits for the device)."""
        loss, correct, count = self.totals()
        return loss / count, correct / count


def share_bounds(start: int, stop: int, rank: int, replicas: int) -> tuple[int, int]:
    """Replica ``rank``'s consecutive part of the minibatch ``[start, stop)``, one of
    ``replicas`` near-equal parts (sizes differ by one at most; empty when the minibatch
    has fewer examples than there are replicas)."""
    size = stop - start
    return start + size * rank // replicas, start + size * (rank + 1) // replicas


def shuffled_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    order: np.ndarray,
    batch_size: int,
    share: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """An epoch's minibatches in ``order``, gathered from tensors already on their device, with
    each minibatch's length; ``share`` (rank, replicas): replica ``rank``'s part of each."""
    index = torch.as_tensor(order, dtype=torch.int64).to(images.device)
    for start, stop in batch_bounds(len(index), batch_size):
        batch = index[slice(*share_bounds(start, stop, *share))]
        # index_select: the same rows as images[batch], without the generic
        # advanced-indexing path (see PERFORMANCE.md).
        yield images.index_select(0, batch), labels.index_select(0, batch), stop - start


def tensor_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int = EVAL_BATCH
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive (images, labels) slices of tensors already on their device."""
    for start, stop in batch_bounds(len(labels), batch_size):
        yield images[start:stop], labels[start:stop]


def evaluate_batches(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
) -> Evaluation:
    """Mean loss and accuracy over ``batches``, without gradients (the book's evaluate_accuracy).

    ``logits_of(images)`` gives a batch's logits and ``loss_sum(logits, labels)`` its
    summed loss; batches not yet on ``device`` are moved there.
    """
    sums = Accumulator(device)
    with torch.no_grad():
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            logits = logits_of(images)
            sums.add(loss_sum(logits, labels), count_correct(logits, labels), len(labels))
    return Evaluation(*sums.means())


def build_net(params: Params, device: torch.device) -> nn.Sequential:
    """The book's model, its linear layer loaded from ``params``."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(params.weights.shape[0], NUM_CLASSES)).to(device)
    load_params(net[1], params)
    return net


def load_params(linear: nn.Linear, params: Params) -> None:
    """Copy ``params`` into ``linear`` (whose weight is W transposed)."""
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(params.weights.T)))
        linear.bias.copy_(torch.from_numpy(params.bias))


def linear_params(linear: nn.Linear) -> Params:
    """``linear``'s weights as shared-layout NumPy parameters, W (784, 10)."""
    weights = linear.weight.detach().to("cpu", copy=True).numpy().T
    return Params(np.ascontiguousarray(weights), linear.bias.detach().to("cpu", copy=True).numpy())


# ------------------------------------------------ compilation (the torch-compile entry)


_inductor_cache: dict[str, object] | None = None  # decided once per process


def configure_inductor_cache() -> dict[str, object]:
    """Point inductor's on-disk caches (FX graphs, AOTAutograd, kernels) at fmbench's directory.

    Decided once per process, before the first compile: ``$FMBENCH_TORCH_CACHE_DIR``
    (empty: no persistent cache), else ``$TORCHINDUCTOR_CACHE_DIR``, else
    ``torch-inductor-cache`` under :func:`impls.data.default_cache_dir`.
    """
    global _inductor_cache
    if _inductor_cache is None:
        _inductor_cache = _choose_inductor_cache()
    return dict(_inductor_cache)


def _choose_inductor_cache() -> dict[str, object]:
    user = _users_inductor_cache()
    default, default_by = (
        (Path(user), f"${INDUCTOR_CACHE_ENV}")
        if user
        else (default_cache_dir() / "torch-inductor-cache", "fmbench default")
    )
    path, set_by = choose_directory(COMPILE_CACHE_ENV, default, default_by)
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            path, set_by = None, f"off: {error}"
    # Inductor always writes its kernels somewhere; without a cache, to a directory of
    # this process alone, so nothing compiled by another run is found there.
    os.environ[INDUCTOR_CACHE_ENV] = str(path or _private_directory())
    shown = None if path is None else str(path)
    return {"compilation_cache_dir": shown, "compilation_cache_set_by": set_by}


def _users_inductor_cache() -> str | None:
    """``$TORCHINDUCTOR_CACHE_DIR`` as the user set it: inductor, once imported, writes its
    own default there when the variable is unset, which is not a choice of the user's."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as inductor_default

    value = os.environ.get(INDUCTOR_CACHE_ENV)
    if not value or os.path.abspath(value) == os.path.abspath(inductor_default()):
        return None
    return value


def _private_directory() -> Path:
    """A new temporary directory, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="fmbench-inductor-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def inductor_cache_entries(directory: str | None) -> int | None:
    """The number of compiled graphs in inductor's cache ``directory`` (None: no cache)."""
    if not directory:
        return None
    return sum(len(files) for _, _, files in os.walk(Path(directory) / "fxgraph"))


def check_cpp_compiler(device: torch.device) -> None:
    """A MissingFrameworkError naming what to install when inductor, which compiles its CPU
    kernels as C++, finds no working compiler (instead of a long traceback mid-compile)."""
    if device.type != "cpu":
        return
    from torch._inductor import config, cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        tried = ", ".join(name for name in config.cpp.cxx if name)
        raise registry.MissingFrameworkError(
            f"torch.compile on cpu needs a C++ compiler for inductor's kernels, and none works "
            f"here (tried {tried}): install one (Debian/Ubuntu: apt-get install g++) or set "
            "$CXX to one"
        ) from None


def _cache_lookups() -> tuple[int, int]:
    """Inductor's FX graph cache hits and misses so far in this process."""
    from torch._dynamo.utils import counters  # private: inductor's own counters

    # Indexed afresh each time: dynamo replaces the inner counters now and then.
    inductor = counters["inductor"]
    return inductor["fxgraph_cache_hit"], inductor["fxgraph_cache_miss"]


class InductorCompiler:
    """One trainer's compilations by ``torch.compile``: their times and the cache they used."""

    def __init__(self) -> None:
        cache = configure_inductor_cache()
        cache["compilation_cache_entries_before"] = inductor_cache_entries(
            cache["compilation_cache_dir"]
        )
        self._log = CompileLog(cache)

    def run(self, name: str, first_call: Callable[[], None]) -> None:
        """Run ``first_call``, which compiles (or loads from the cache), timed as ``name``."""
        self._log.run(name, first_call, _cache_lookups)

    def info(self) -> dict[str, object]:
        """The cache and the compile times, for the trainer's ``runtime_info``."""
        return self._log.info()
