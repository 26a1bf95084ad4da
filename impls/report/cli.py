"""``fmbench report`` / ``python -m impls.report``: the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from impls.report.build import build_report, check_out_dir
from impls.report.previous import DEFAULT_STORAGE, find_previous, load_saved, newest
from impls.report.runs import ReportError, Run, label_runs, load_run, load_runs

# Imported when the report is rendered, not at import time: the core package needs only NumPy.
REPORT_MODULES = ("pandas", "tabulate", "matplotlib", "scipy")
INSTALL_HINT = "pip install 'fmbench[bench]'"


def _parser() -> argparse.ArgumentParser:
    """The argument parser of ``fmbench report``."""
    parser = argparse.ArgumentParser(
        prog="fmbench report",
        description="Build the Markdown comparison report from benchmark JSON files "
        "(written by 'python -m pytest benchmarks --benchmark-json=FILE' or saved by "
        "--benchmark-autosave). Several files from several machines are merged into one "
        "table with the machine as a column.",
    )
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="benchmark JSON files (default: the newest run saved under --storage)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reports/latest"),
        help="output directory (default: reports/latest)",
    )
    parser.add_argument(
        "--previous",
        default="auto",
        metavar="FILE|auto|none",
        help="run to compare with: a JSON file, 'auto' (the previous saved run of the same "
        "machine under --storage; the default) or 'none'",
    )
    parser.add_argument(
        "--storage",
        type=Path,
        default=Path(DEFAULT_STORAGE),
        help="pytest-benchmark's autosave folder (default: .benchmarks)",
    )
    parser.add_argument(
        "--history",
        metavar="FOLDER|none",
        help="saved runs to draw each machine's history from (default: the --storage "
        "folder; several files of one machine given: those alone) or 'none' (no history)",
    )
    parser.add_argument(
        "--fail-on-failures",
        action="store_true",
        help="exit with status 1 (after writing the report) when a benchmark failed",
    )
    return parser


def _inputs(args: argparse.Namespace) -> tuple[list[Run], list[Run], list[Run] | None]:
    """The runs to report, the runs to compare them with and the saved runs their history
    is drawn from (None: no history), each file parsed once."""
    saved: list[Run] | None = None
    if args.files:
        runs = load_runs(args.files)
    else:
        saved = load_saved(args.storage)
        latest = newest(saved)
        if latest is None:
            raise ReportError(
                f"no benchmark JSON given and none saved under {args.storage}: run "
                "'nox -s bench' first, or pass files"
            )
        runs = label_runs([latest])
    history: list[Run] | None = None
    if args.history != "none":
        if args.history is None or Path(args.history).resolve() == args.storage.resolve():
            saved = history = saved if saved is not None else load_saved(args.storage, runs)
        elif not Path(args.history).is_dir():
            raise ReportError(f"--history {args.history}: no such folder (or 'none')")
        else:
            history = load_saved(args.history, loaded=runs)
    if args.previous == "none":
        return runs, [], history
    if args.previous != "auto":
        return runs, [load_run(args.previous)], history
    if saved is None:
        saved = load_saved(args.storage, loaded=runs)
    previous: list[Run] = []
    for run in runs:
        found = find_previous(run, saved)
        if found is not None and all(found is not p for p in previous):
            previous.append(found)
    return runs, previous, history


def _missing(error: ImportError) -> str:
    """The module ``error`` is about: its name, else the first of :data:`REPORT_MODULES` its
    message (or its cause's) names (pandas says 'Import tabulate failed' without a name)."""
    cause = error.__cause__
    name = error.name or (cause.name if isinstance(cause, ImportError) else None)
    if name:
        return name.partition(".")[0]
    text = f"{error} {cause or ''}"
    first_line = (str(error) or type(error).__name__).splitlines()[0]
    return next((module for module in REPORT_MODULES if module in text), f"a module ({first_line})")


def main(argv: Sequence[str] | None = None) -> int:
    """``fmbench report``; returns 0, 1 (--fail-on-failures and a benchmark failed) or 2 (error)."""
    args = _parser().parse_args(argv)
    try:
        check_out_dir(args.out)  # before any input is read
        runs, previous, history = _inputs(args)
        report = build_report(runs, args.out, previous, history)
    except ReportError as error:
        print(f"fmbench report: error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:  # nothing written: the report is staged, then moved in
        print(
            f"fmbench report: error: the report needs {_missing(error)}, which cannot be "
            f"imported: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    print(f"wrote {report}")
    failed = [
        f"{test.nodeid}: {test.reason or ''}" for run in runs for test in run.tests() if test.failed
    ]
    if failed:
        print(f"{len(failed)} benchmark(s) failed (listed in the report):", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        if args.fail_on_failures:
            return 1
    return 0
