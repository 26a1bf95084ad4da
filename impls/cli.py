"""``fmbench``: a thin command line over the functions the tests call directly.

    fmbench train IMPL [--epochs --lr --batch-size --seed --threads --device --data-dir --out]
    fmbench list
    fmbench data [--data-dir DIR] [--no-download]
    fmbench report FILES... (see ``impls.report``)

Bad arguments exit with status 2 and one line on stderr; other failures
(dataset, framework, divergence) exit with status 1 and one line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from impls import registry
from impls.config import ConfigError, TrainConfig
from impls.data import DataError, fetch, load_fashion_mnist

USAGE_ERROR = 2
RUN_ERROR = 1


class UsageError(Exception):
    """A command-line argument is wrong (exit status 2)."""


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
    train.add_argument("--lr", type=_positive_float, default=defaults.lr)
    train.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size)
    train.add_argument("--seed", type=_non_negative_int, default=defaults.seed)
    train.add_argument("--threads", type=_positive_int, default=None, help="default: all cores")
    train.add_argument("--device", default=defaults.device, help="cpu, cuda, mps, gpu, tpu")
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


def _check_data_dir(data_dir: Path | None) -> None:
    if data_dir is not None and not (data_dir.is_dir() and os.access(data_dir, os.R_OK | os.X_OK)):
        raise UsageError(f"--data-dir {data_dir} is not a readable directory")


def run_train(args: argparse.Namespace) -> int:
    """Train, print one line per epoch, write the figures and the history."""
    from impls.figures import plot_predictions, plot_training_curves

    implementation = registry.get(args.impl)
    implementation.load()  # fail early, before loading data, if the framework is missing
    _check_data_dir(args.data_dir)
    try:
        config = TrainConfig(
            lr=args.lr,
            batch_size=args.batch_size,
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
        )
    except ConfigError as error:
        raise UsageError(str(error)) from None
    data = load_fashion_mnist(args.data_dir)
    out = args.out or Path("runs") / args.impl

    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI).
    bar = tqdm(
        total=config.epochs,
        unit="epoch",
        disable=True if args.quiet else None,
        leave=False,
        file=sys.stderr,
    )

    def report_epoch(record) -> None:
        bar.update()
        tqdm.write(
            f"epoch {record.epoch:3d}  train loss {record.train_loss:.4f}  "
            f"train acc {record.train_accuracy:.4f}  test acc {record.test_accuracy:.4f}  "
            f"{record.train_seconds:.3f} s"
        )

    try:
        history, trainer = registry.train(args.impl, data, config, callbacks=[report_epoch])
    except ValueError as error:  # e.g. a device that is not present
        raise UsageError(str(error)) from None
    finally:
        bar.close()
    median = statistics.median(history.column("train_seconds"))
    config = history.config  # resolved: the threads actually asked for
    print(
        f"{implementation.name}: final test accuracy {history.final.test_accuracy:.4f} after "
        f"{config.epochs} epochs; median epoch {median:.3f} s on {config.device} "
        f"with {config.threads} thread{'s' if config.threads != 1 else ''}"
    )
    count = 18
    predictions = trainer.predict(data.test_images[:count])
    curves = plot_training_curves(history, out / "curves.png")
    grid = plot_predictions(
        data.test_images, data.test_labels, predictions, out / "predictions.png"
    )
    (out / "history.json").write_text(json.dumps(history.as_dict(), indent=2))
    print(f"wrote {curves}, {grid} and {out / 'history.json'}")
    return 0


def run_list(_: argparse.Namespace) -> int:
    """One line per registered implementation: installed or not, and its devices."""
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
        print(f"{impl.name:14s} {status}\n{'':14s} {impl.summary}")
    return 0


def run_data(args: argparse.Namespace) -> int:
    """Fetch and verify the four files; print where each came from."""
    _check_data_dir(args.data_dir)
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
    except (UsageError, registry.UnknownImplementationError) as error:
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
