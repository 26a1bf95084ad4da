"""``fmbench``: a thin command line over the functions the tests call directly.

    fmbench train IMPL [--epochs --lr --batch-size --seed --threads --device --resize
                        --loader-workers --replicas --data-dir --out]
    fmbench list
    fmbench data [--data-dir DIR] [--no-download]
    fmbench report FILES... (see ``impls.report``)

Bad arguments exit with status 2 and one line on stderr, before any data is
loaded (``--out`` included: it must be a folder we can write into). One
exception: a device that is not available here (status 2 as well) is found when
the trainer is built, after the data is loaded, since JAX's device list cannot
be asked for earlier without fixing its thread pools before ``--threads`` sizes
them. Other failures (dataset, framework, divergence, memory, any other error
raised while training, a write after training) exit with status 1 and one line.
The history of a finished run is never lost: when ``--out`` cannot take it
after all, it goes to the system's temporary folder, or to stdout, and the line
says where.

Started by torchrun, ``fmbench train`` is one replica of a data-parallel run
(``--replicas`` must be torchrun's world size): every rank trains its share, rank 0
alone prints and writes (see README.md, *Data parallel*).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from impls import registry
from impls.config import LR_RULE, ConfigError, TrainConfig, lr_at_size, usable_cores
from impls.data import DataDirError, DataError, fetch, load_fashion_mnist
from impls.files import write_atomically
from impls.protocol import DeviceUnavailableError
from impls.torchrun_env import LaunchedRank, launched_rank

USAGE_ERROR = 2
RUN_ERROR = 1


class UsageError(Exception):
    """A command-line argument is wrong (exit status 2)."""


class RunFailure(RuntimeError):
    """The run failed, said in one line (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage dump) and exit with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``fmbench`` argument parser."""
    parser = _Parser(prog="fmbench", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    defaults = TrainConfig()

    train = commands.add_parser("train", help="train one implementation and draw its figures")
    train.add_argument("impl", help=f"one of: {', '.join(registry.REGISTRY)}")
    train.add_argument("--epochs", type=_positive_int, default=defaults.epochs)
    train.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help=f"default {defaults.lr}; with --resize, by the rule {LR_RULE}",
    )
    train.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size)
    train.add_argument("--seed", type=_non_negative_int, default=defaults.seed)
    train.add_argument("--threads", type=_positive_int, default=None, help="default: all cores")
    train.add_argument("--device", default=defaults.device, help="cpu, cuda, mps, gpu, tpu")
    train.add_argument(
        "--resize",
        type=_positive_int,
        default=None,
        metavar="N",
        help="train on N x N images, resized as torchvision's Resize(N) does (cached once "
        "resized; d2l-reference resizes each image every epoch, as the book does)",
    )
    train.add_argument(
        "--loader-workers",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="DataLoader worker processes of an implementation with its own loader "
        "(d2l-reference; default: the book's 4)",
    )
    train.add_argument(
        "--replicas",
        type=_positive_int,
        default=defaults.replicas,
        metavar="R",
        help="data-parallel replicas of one run, each with threads/R threads (implementations "
        "with a data-parallel engine: see fmbench list)",
    )
    train.add_argument("--data-dir", type=Path, default=None, help="a directory with the 4 files")
    train.add_argument("--out", type=Path, default=None, help="figures and history (runs/IMPL)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    commands.add_parser("list", help="registered implementations, installed or not")

    data = commands.add_parser("data", help="fetch and verify the dataset, say where it came from")
    data.add_argument("--data-dir", type=Path, default=None)
    data.add_argument("--no-download", action="store_true")

    # Listed for --help; main() hands everything after "report" to impls.report's own parser.
    commands.add_parser("report", help="build a markdown report from benchmark JSON (see --help)")
    return parser


def _train_config(args: argparse.Namespace, launched: LaunchedRank | None) -> TrainConfig:
    """The run's settings from the arguments, or a UsageError; ``launched``: this process's
    place when torchrun started it."""
    cores = usable_cores()
    # Under torchrun --replicas and --threads count every machine's; this machine's cores
    # are shared by the replicas torchrun started on it.
    local_replicas = args.replicas
    threads = args.threads
    if launched is not None:
        if args.replicas != launched.world_size:
            raise UsageError(
                f"--replicas {args.replicas} must equal the {launched.world_size} processes "
                "torchrun started (its WORLD_SIZE): each of them is one replica"
            )
        local_replicas = launched.local_world_size
        if threads is None:
            threads = max(1, cores // local_replicas) * args.replicas
    if threads is not None and threads // args.replicas * local_replicas > cores:
        # Not a TrainConfig rule: configs are built for other machines too (the bench's sweep).
        raise UsageError(f"--threads {threads} is more than the {cores} usable cores here")
    if args.device == "cpu" and local_replicas > cores:
        raise UsageError(
            f"--replicas {args.replicas} is more than the {cores} usable cores here "
            "(a CPU replica needs a core of its own)"
        )
    try:
        return TrainConfig(
            lr=lr_at_size(TrainConfig.lr, args.resize) if args.lr is None else args.lr,
            resize=args.resize,
            loader_workers=args.loader_workers,
            batch_size=args.batch_size,
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            threads=threads,
            replicas=args.replicas,
        )
    except ConfigError as error:
        raise UsageError(str(error)) from None


def _prepare_out(out: Path) -> list[Path]:
    """Make ``out`` a folder we can write into, or a UsageError; return the folders made."""
    made: list[Path] = []
    try:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file, not a directory")
        made = [folder for folder in (out, *out.parents) if not folder.exists()]
        out.mkdir(parents=True, exist_ok=True)
        # Write a file, rather than ask os.access: root passes access checks of
        # read-only folders, and the rules of network filesystems are their own.
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        _remove_empty(made)
        reason = error.strerror or error
        raise UsageError(f"--out {out} is not a directory we can write into ({reason})") from None
    return made


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first) where they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _rescue(text: str) -> str:
    """Save ``text``, the history, where it still fits: the temporary folder, else stdout."""
    try:
        handle, name = tempfile.mkstemp(prefix="fmbench-history-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(text)
        except OSError:
            Path(name).unlink(missing_ok=True)
            raise
    except OSError:
        print(text)
        return "the history is printed on stdout instead"
    return f"the history is saved in {name} instead"


def _write_outputs(history, trainer, data, out: Path) -> None:
    """history.json first (the results), then the figures; each file whole or not at all."""
    from impls.figures import PREDICTION_COUNT, plot_predictions, plot_training_curves

    text = json.dumps(history.as_dict(), indent=2)
    path = out / "history.json"
    try:
        write_atomically(path, lambda file: file.write(text.encode()))
    except OSError as error:
        reason = error.strerror or error
        raise RunFailure(f"could not write {path} ({reason}); {_rescue(text)}") from None
    predictions = trainer.predict(data.test_images[:PREDICTION_COUNT])
    try:
        curves = plot_training_curves(history, out / "curves.png")
        grid = plot_predictions(
            data.test_images, data.test_labels, predictions, out / "predictions.png"
        )
    except (OSError, ImportError) as error:
        reason = getattr(error, "strerror", None) or error
        raise RunFailure(f"history saved in {path}, but not the figures ({reason})") from None
    print(f"wrote {path}, {curves} and {grid}")


def run_train(args: argparse.Namespace) -> int:
    """Train, print one line per epoch, write the history and the figures."""
    implementation = registry.get(args.impl)
    if args.loader_workers is not None and not implementation.own_loader:
        loaders = [impl.name for impl in registry.REGISTRY.values() if impl.own_loader]
        raise UsageError(
            f"--loader-workers: {args.impl} has no DataLoader of its own (it applies to "
            f"{', '.join(loaders)})"
        )
    launched = launched_rank()
    config = _train_config(args, launched)
    try:
        registry.check_replicas(args.impl, config.replicas)
        # Set before the framework starts (JAX's host devices for CPU replicas): later is late.
        os.environ.update(registry.environment_for(args.impl, config))
    except ConfigError as error:
        raise UsageError(str(error)) from None
    implementation.load()  # fail early, before loading data, if the framework is missing
    out = args.out or Path("runs") / args.impl
    writes = launched is None or launched.is_first  # torchrun's other ranks only train
    made = _prepare_out(out) if writes else []
    try:
        return _train_and_write(args, config, out, writes)
    except BaseException:
        _remove_empty(made)  # a failed run leaves no empty folder behind
        raise


def _train_and_write(args: argparse.Namespace, config: TrainConfig, out: Path, writes: bool) -> int:
    """Train; with ``writes``, print the epochs and the result and write the outputs."""
    data = load_fashion_mnist(args.data_dir, resize=config.resize)

    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI).
    bar = tqdm(
        total=config.epochs,
        unit="epoch",
        disable=True if args.quiet or not writes else None,
        leave=False,
        file=sys.stderr,
    )

    def report_epoch(record) -> None:
        bar.update()
        communication = record.communication_seconds
        tqdm.write(
            f"epoch {record.epoch:3d}  train loss {record.train_loss:.4f}  "
            f"train acc {record.train_accuracy:.4f}  test acc {record.test_accuracy:.4f}  "
            f"{record.train_seconds:.3f} s"
            + ("" if communication is None else f" ({communication:.3f} s all-reduce)")
        )

    try:
        callbacks = [report_epoch] if writes else []
        history, trainer = registry.train(args.impl, data, config, callbacks=callbacks)
    except (DeviceUnavailableError, ConfigError) as error:
        raise UsageError(str(error)) from None
    except ValueError as error:  # a framework's or a check's, raised while training
        raise RunFailure(f"{args.impl} failed: {' '.join(str(error).split())}") from None
    except MemoryError:
        raise RunFailure(
            f"out of memory training {args.impl} with batch size {config.batch_size}: "
            "reduce --batch-size (or free memory)"
        ) from None
    finally:
        bar.close()
    try:
        if writes:
            _report_and_write(args, history, trainer, data, out)
    finally:
        registry.close_trainer(trainer)
    return 0


def _report_and_write(args: argparse.Namespace, history, trainer, data, out: Path) -> None:
    """The run's result in one line, then its history and figures in ``out``."""
    median = statistics.median(history.column("train_seconds"))
    config = history.config  # resolved: the threads actually asked for
    size = f" at {data.side}x{data.side} (lr {config.lr:.4g})" if config.resize else ""
    replicas = f" over {config.replicas} replicas" if config.replicas > 1 else ""
    print(
        f"{args.impl}: final test accuracy {history.final.test_accuracy:.4f} "
        f"after {config.epochs} epochs{size}; median epoch {median:.3f} s on {config.device} "
        f"with {config.threads} thread{'s' if config.threads != 1 else ''}{replicas}"
    )
    _write_outputs(history, trainer, data, out)


def run_list(_: argparse.Namespace) -> int:
    """A few lines per registered implementation: installed or not, its devices, whether it
    takes replicas, and why the benchmark leaves it out unless named (opt-in)."""
    for impl in registry.REGISTRY.values():
        if impl.is_installed():
            try:
                devices = ", ".join(registry.available_devices(impl.name))
            except Exception as error:  # a broken install must not hide the others
                devices = f"unusable: {error}"
            status = f"installed   devices: {devices}"
        else:
            missing = ", ".join(impl.missing())
            status = f"missing {missing} ({impl.install_command})"
        parallel = f"replicas: {impl.data_parallel}" if impl.data_parallel else "one device only"
        print(f"{impl.name:14s} {status}\n{'':14s} {impl.summary}\n{'':14s} {parallel}")
        if impl.opt_in:
            print(f"{'':14s} opt-in for the benchmark (--impl {impl.name}): {impl.opt_in}")
    return 0


def run_data(args: argparse.Namespace) -> int:
    """Fetch and verify the four files; print where each came from."""
    files = fetch(args.data_dir, download=not args.no_download)
    for fetched in files.values():
        print(
            f"{fetched.spec.name:24s} verified sha256 {fetched.spec.sha256[:12]}…  "
            f"from {fetched.origin}"
        )
    print(f"{len(files)} files verified")
    return 0


def run_report(argv: Sequence[str]) -> int:
    """``fmbench report ...``: impls.report's command line, arguments passed through."""
    from impls import report

    return report.main(list(argv))


COMMANDS = {"train": run_train, "list": run_list, "data": run_data}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fmbench`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return run_report(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # inside the try: a broken pipe shows up here, not at exit
        return status
    except (UsageError, DataDirError, registry.UnknownImplementationError) as error:
        print(f"fmbench: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except (DataError, registry.MissingFrameworkError, RuntimeError, ImportError) as error:
        print(f"fmbench: error: {error}", file=sys.stderr)
        return RUN_ERROR
    except KeyboardInterrupt:
        print("fmbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (fmbench list | head): not an error. Point stdout at
        # devnull so the interpreter's final flush does not raise again (Python docs' recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
