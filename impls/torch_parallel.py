"""Data-parallel PyTorch training on ``torch.distributed``: one run spread over replicas.

Synchronous SGD on the shared global minibatches. Each of R replicas takes its
consecutive share of every minibatch of the shared order
(:func:`~impls.torch_support.share_bounds`), and the gradients of the shares' summed
losses are *summed* over the replicas, not averaged, before the step divides by the
whole minibatch's length: the step is exactly one device's, the shorter last minibatch
and an empty share included. torch-nn sums them with ``DistributedDataParallel`` (a
communication hook in place of its averaging allreduce), torch-scratch, which has no
module to wrap, with one ``all_reduce`` of its two gradients; gloo on the CPU, nccl on
CUDA.

:class:`Replicas` is what a trainer sees of this: its share, its module wrapped, the
collectives, the epoch's totals; one replica is a single device. :func:`make_replicated`
gives an implementation's trainer for a config: itself on one device; under torchrun,
this process's replica; else a :class:`ParallelTrainer`, which starts R replica
processes (``torch.multiprocessing``, spawn) and drives them over pipes, every wait
bounded, every replica stopped on any failure, on ``close()`` and when collected.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from impls.config import ConfigError, TrainConfig
from impls.data import FashionMNIST, check_order
from impls.protocol import EpochStats, Evaluation, Params, Trainer
from impls.torch_support import Accumulator, resolve_device
from impls.torchrun_env import LaunchedRank, launched_rank

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}
# An epoch of softmax regression takes under a second at 28 x 28 and seconds at 112 x 112;
# five minutes pass only when a replica hangs. A collective waits as long for its peers.
REQUEST_TIMEOUT_S = 300.0
COLLECTIVE_TIMEOUT = timedelta(seconds=REQUEST_TIMEOUT_S)
# Starting a replica is a Python process importing torch: seconds, a minute on a cold disk.
START_TIMEOUT_S = 300.0
STOP_GRACE_S = 5.0  # a replica asked to leave has this long before it is killed
LOOPBACK = "127.0.0.1"


class Replicas:
    """A trainer's place among its run's replicas, and the collectives it calls.

    The default, one replica, is a single device: nothing to share or combine.
    """

    def __init__(
        self, rank: int = 0, count: int = 1, device_type: str = "cpu", launcher: str = ""
    ) -> None:
        self.rank = rank
        self.count = count
        self.backend = BACKENDS[device_type] if count > 1 else None
        self._device = torch.device(device_type)
        self._launcher = launcher
        # A host clock sees gloo's collectives end; nccl's run on a GPU stream, unseen.
        self._timed = device_type == "cpu"
        self._communication_s = 0.0

    @property
    def share(self) -> tuple[int, int]:
        """(rank, replicas), for :func:`~impls.torch_support.shuffled_batches`."""
        return self.rank, self.count

    def wrap(self, net: nn.Module) -> nn.Module:
        """``net`` in DDP, its gradients summed over the replicas (one replica: ``net``)."""
        if self.count == 1:
            return net
        model = DistributedDataParallel(net)
        model.register_comm_hook(self, Replicas._sum_bucket)
        return model

    def _sum_bucket(self, bucket):
        """DDP's allreduce without its division by the replicas, timed to its completion."""
        # No annotations: DDP compares them with its own types, and this module's are strings.
        start = time.perf_counter()
        future = dist.all_reduce(bucket.buffer(), async_op=True).get_future()

        def summed(done: torch.futures.Future) -> torch.Tensor:
            self._communication_s += time.perf_counter() - start
            return done.value()[0]

        return future.then(summed)

    def sum_gradients(self, grads: Sequence[torch.Tensor]) -> None:
        """Replace ``grads`` by their sums over the replicas, in one all-reduce."""
        if self.count == 1:
            return
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        start = time.perf_counter()
        dist.all_reduce(flat)
        self._communication_s += time.perf_counter() - start
        for grad, summed in zip(grads, flat.split([grad.numel() for grad in grads]), strict=True):
            grad.copy_(summed.view_as(grad))

    def epoch_stats(self, sums: Accumulator) -> EpochStats:
        """The epoch's mean loss and accuracy over every replica's shares, and the seconds a
        replica spent combining gradients (their mean over the replicas; None on one device,
        or on a GPU, where the host does not see a collective end)."""
        loss, correct, count = sums.totals()
        if self.count == 1:
            return EpochStats(loss / count, correct / count)
        totals = [loss, correct, count, self._communication_s]
        summed = torch.tensor(totals, dtype=torch.float64, device=self._device)
        dist.all_reduce(summed)
        loss, correct, count, seconds = summed.tolist()
        self._communication_s = 0.0
        mean_seconds = seconds / self.count if self._timed else None
        return EpochStats(loss / count, correct / count, mean_seconds)

    def runtime_info(
        self, strategy: str, info: Mapping[str, object], engine: str
    ) -> dict[str, object]:
        """A trainer's runtime info, ``engine`` (what combines its gradients) named on replicas;
        ``threads`` becomes the run's total."""
        if self.count == 1:
            return {"strategy": strategy, **info}
        return {
            "strategy": f"{engine} over {self.count} processes ({self.backend}), {strategy}",
            **info,
            "threads": int(info["threads"]) * self.count,  # type: ignore[call-overload]
            "threads_per_replica": info["threads"],
            "replicas": self.count,
            "backend": self.backend,
            "launcher": self._launcher,
            "communication_clock": (
                "each step's gradient all-reduce, from its start to its completion, on the "
                "host's clock, averaged over the replicas (waiting for the slower one "
                "included)"
                if self._timed
                else f"not measured: {self.backend}'s collectives end on the device, unseen "
                "by a host clock"
            ),
        }


def check_devices(device_type: str, local_replicas: int) -> None:
    """A ConfigError unless ``local_replicas`` replicas can run on this machine's devices."""
    if device_type not in BACKENDS:
        raise ConfigError(
            f"torch.distributed runs replicas on cpu (gloo) or cuda (nccl), not {device_type}: "
            "use --device cpu or cuda, or --replicas 1"
        )
    if device_type == "cuda" and local_replicas > torch.cuda.device_count():
        raise ConfigError(
            f"{local_replicas} replicas need a GPU each, but this machine has "
            f"{torch.cuda.device_count()}: use fewer replicas"
        )


def _join(rank: int, count: int, local_rank: int, device_type: str, **rendezvous) -> None:
    """Join the run's process group: the backend for the device, replica r on GPU r."""
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)  # "cuda" means this replica's GPU from here on
    dist.init_process_group(
        BACKENDS[device_type], rank=rank, world_size=count, timeout=COLLECTIVE_TIMEOUT, **rendezvous
    )


def join_launched(launched: LaunchedRank, device_type: str) -> Replicas:
    """This process as the replica torchrun started it as (its environment: ``env://``)."""
    _join(
        launched.rank, launched.world_size, launched.local_rank, device_type, init_method="env://"
    )
    atexit.register(dist.destroy_process_group)  # the group lives as long as the process
    return Replicas(launched.rank, launched.world_size, device_type, "torchrun")


def make_replicated(
    trainer_class: type, data: FashionMNIST, params: Params, config: TrainConfig
) -> Trainer:
    """``trainer_class``'s trainer for ``config``: itself on one device; under torchrun, this
    process's replica; else a :class:`ParallelTrainer` of ``config.replicas`` processes."""
    if config.replicas == 1:
        return trainer_class(data, params, config)
    launched = launched_rank()
    if launched is None:
        return ParallelTrainer(trainer_class, data, params, config)
    if launched.world_size != config.replicas:
        raise ConfigError(
            f"replicas {config.replicas} must equal the {launched.world_size} processes torchrun "
            "started (WORLD_SIZE), each of them one replica"
        )
    device_type = resolve_device(config.device).type
    check_devices(device_type, launched.local_world_size)
    return trainer_class(data, params, config, join_launched(launched, device_type))


# ------------------------------------------------------- replicas as processes


class ParallelTrainer:
    """The Trainer of ``config.replicas`` spawned processes, each running ``trainer_class``
    on its shares with a :class:`Replicas`; replica 0 answers for the model.

    Each request waits at most ``timeout_s`` (starting, ``start_timeout_s``); a replica that
    fails, dies or does not answer in time is a RuntimeError naming it, after every replica
    has been stopped. ``close()`` (or losing the last reference) stops them too.
    """

    def __init__(
        self,
        trainer_class: type,
        data: FashionMNIST,
        params: Params,
        config: TrainConfig,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        check_devices(resolve_device(config.device).type, config.replicas)
        self._num_train = data.num_train
        self._timeout_s = timeout_s
        self._stopped: str | None = None
        # The rendezvous store lives here; port 0: the system picks a free one, no race.
        self._store = dist.TCPStore(
            LOOPBACK, 0, is_master=True, wait_for_workers=False, timeout=COLLECTIVE_TIMEOUT
        )
        context = mp.get_context("spawn")
        pipes = [context.Pipe() for _ in range(config.replicas)]
        self._connections: list[Connection] = [mine for mine, _ in pipes]
        self._processes: list[BaseProcess] = [
            context.Process(
                target=_serve,
                args=(rank, config.replicas, self._store.port, theirs, trainer_class),
                name=f"fmbench-replica-{rank}",
                daemon=True,
            )
            for rank, (_, theirs) in enumerate(pipes)
        ]
        self._finalizer = weakref.finalize(
            self, _stop_replicas, self._processes, self._connections, STOP_GRACE_S
        )
        try:
            for process in self._processes:
                process.start()
            for _, theirs in pipes:
                theirs.close()  # the replica holds its end: its death is our EOF
            # A replica reads its copy once it has imported torch; a thread each, so that they
            # import at once and one that never reads blocks nobody.
            payload = pickle.dumps(
                (dataclasses.replace(data, original=None), params, config), protocol=5
            )
            for connection in self._connections:
                sender = threading.Thread(target=_send_quietly, args=(connection, payload))
                sender.daemon = True
                sender.start()
            self._collect(range(config.replicas), "start-up", start_timeout_s)
        except BaseException:
            self._halt("its start-up failed")
            raise

    # ------------------------------------------------------------ the protocol

    def train_epoch(self, order: np.ndarray) -> EpochStats:
        order = check_order(order, self._num_train)
        # Every replica returns the epoch's totals over all of them: replica 0's will do.
        return self._ask(range(len(self._processes)), "train_epoch", order)[0]

    def evaluate(self) -> Evaluation:
        return self._ask([0], "evaluate")[0]

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._ask([0], "predict", images)[0]

    def parameters(self) -> Params:
        return self._ask([0], "parameters")[0]

    def runtime_info(self) -> Mapping[str, object]:
        return self._ask([0], "runtime_info")[0]

    def close(self) -> None:
        """Ask every replica to leave, and stop the ones that do not within a grace period."""
        if self._stopped is None:
            self._stopped = "the trainer was closed"
        self._finalizer()

    @property
    def pids(self) -> list[int | None]:
        """The replicas' process ids."""
        return [process.pid for process in self._processes]

    # ------------------------------------------------------------- the requests

    def _ask(self, ranks: Iterable[int], method: str, *args: object) -> list[object]:
        """``method(*args)`` on each of ``ranks``, their answers in order."""
        if self._stopped is not None:
            raise RuntimeError(
                f"this data-parallel trainer's replicas are stopped ({self._stopped}): "
                "build a new trainer"
            )
        ranks = list(ranks)
        try:
            for rank in ranks:
                with contextlib.suppress(OSError):  # a replica that is gone: _collect says how
                    self._connections[rank].send((method, args))
            replies = self._collect(ranks, method, self._timeout_s)
        except BaseException:  # Ctrl-C included: no replica outlives a failed request
            self._halt(f"{method} failed or was interrupted")
            raise
        return [replies[rank] for rank in ranks]

    def _collect(self, ranks: Iterable[int], method: str, timeout_s: float) -> dict[int, object]:
        """The answers of ``ranks``, or a RuntimeError when one fails, ends or is late."""
        deadline = time.monotonic() + timeout_s
        waiting = {self._connections[rank]: rank for rank in ranks}
        sentinels = [process.sentinel for process in self._processes]
        replies: dict[int, object] = {}
        errors: dict[int, str] = {}
        while waiting:
            ready = wait([*waiting, *sentinels], max(0.0, deadline - time.monotonic()))
            if not ready:
                late = sorted(waiting.values())
                named = f"replica{'s' if len(late) > 1 else ''} {', '.join(map(str, late))}"
                self._fail(f"{named} did not answer {method} within {timeout_s:g} s (hung)")
            ended = any(item in sentinels for item in ready)
            for connection in [item for item in ready if item in waiting]:
                rank = waiting.pop(connection)
                try:
                    status, value = connection.recv()
                except (EOFError, OSError):  # it died; its process says how
                    ended = True
                    continue
                if status == "ok":
                    replies[rank] = value
                else:
                    errors[rank] = str(value)
            if errors or ended:
                self._fail(self._what_went_wrong(method, errors))
        return replies

    def _what_went_wrong(self, method: str, errors: Mapping[int, str]) -> str:
        """The replicas that ended, first (the others' errors follow from theirs), then errors."""
        problems = []
        for rank, process in enumerate(self._processes):
            if rank in errors:
                continue
            if wait([process.sentinel], 0):
                process.join(STOP_GRACE_S)  # ended: collect its exit status
            if not process.is_alive():
                problems.append(f"replica {rank} (pid {process.pid}) {_ending(process)}")
        problems += [f"replica {rank} failed: {error}" for rank, error in sorted(errors.items())]
        return f"during {method}, " + "; ".join(problems)

    def _fail(self, problem: str) -> None:
        self._halt(problem)
        raise RuntimeError(f"data-parallel training: {problem}; stopped all replicas")

    def _halt(self, reason: str) -> None:
        """Kill every replica now (a failure: no grace) and wait for them."""
        if self._stopped is None:
            self._stopped = reason
        if self._finalizer.detach() is not None:
            _stop_replicas(self._processes, self._connections, grace_s=0.0)


def _ending(process: BaseProcess) -> str:
    """How a replica's process ended, in words."""
    code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _send_quietly(connection: Connection, payload: bytes) -> None:
    """Send ``payload``; a replica gone meanwhile is reported by whoever waits for it."""
    with contextlib.suppress(OSError, ValueError):
        connection.send_bytes(payload)


def _stop_replicas(
    processes: Sequence[BaseProcess], connections: Sequence[Connection], grace_s: float
) -> None:
    """Ask every replica to leave (with ``grace_s`` > 0), kill what is left after it, reap all."""
    if grace_s > 0:
        for connection in connections:
            with contextlib.suppress(OSError, ValueError):
                connection.send(None)
    deadline = time.monotonic() + grace_s
    started = [process for process in processes if process.pid is not None]
    for process in started:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in started:
        if process.is_alive():
            process.kill()
            process.join()
    for connection in connections:
        connection.close()


def _serve(
    rank: int, count: int, store_port: int, connection: Connection, trainer_class: type
) -> None:
    """A spawned replica's life: take the run's data, join the group, build its trainer, then
    answer the caller's requests until it says stop (None) or is gone."""
    # Ctrl-C reaches every process of the terminal's group: the caller stops the replicas.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        data, params, config = pickle.loads(connection.recv_bytes())
        device_type = torch.device(config.device).type
        store = dist.TCPStore(LOOPBACK, store_port, is_master=False, timeout=COLLECTIVE_TIMEOUT)
        _join(rank, count, rank, device_type, store=store)
        replicas = Replicas(rank, count, device_type, "torch.multiprocessing (spawn)")
        trainer = trainer_class(data, params, config, replicas)
        connection.send(("ok", None))
        for method, args in iter(connection.recv, None):
            connection.send(("ok", getattr(trainer, method)(*args)))
    except EOFError:  # the caller is gone: nobody to answer
        return
    except BaseException as error:  # the caller stops every replica on hearing it
        with contextlib.suppress(OSError):
            connection.send(("error", f"{type(error).__name__}: {' '.join(str(error).split())}"))
        return
    dist.destroy_process_group()
    # The caller waits for this exit: skip the interpreter's teardown of torch (about a second).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
