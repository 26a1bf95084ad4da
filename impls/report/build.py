"""Building a report folder atomically, safe when two builds write to one folder at once.

``OUT`` is checked first (:func:`check_out_dir`: a file in the way, or a folder that
cannot be written, is refused before any input is read). Every input is then validated
before anything is written; the report is built in a staging directory of its own
beside ``OUT`` and moved in at the end: a bad input (malformed, empty or partial JSON),
or a folder that turns out unwritable, gives a :class:`ReportError` naming the file and
the problem, and leaves ``OUT`` as it was.

The move (:func:`_swap`) renames the staged ``figures/`` over ``OUT/figures``, the staged
``results.csv`` (:mod:`.tidy`) over ``OUT/results.csv`` and then the staged ``README.md``
over ``OUT/README.md``, undoing the earlier renames if a later one fails.
It holds an exclusive ``flock`` on the ``OUT`` directory meanwhile, so when two builds
write to one ``OUT`` (two reports at once, from two runs) their moves never interleave:
the last one in leaves its README with its own figures. Other files in ``OUT`` (the
reference runs' JSON beside their report) are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from impls.report.markdown import FIGURES_DIR, RESULTS_CSV, render
from impls.report.runs import ReportError, Run, label_runs, load_run
from impls.report.tidy import write_results_csv

REPORT_NAME = "README.md"  # so a report folder renders when browsed
OLD_FIGURES = "old-figures"  # in the staging directory: the figures replaced
OLD_RESULTS = "old-results.csv"  # in the staging directory: the results table replaced

# A run already loaded (the command line loads each file once and passes it on), or a file.
RunSource = Run | str | os.PathLike[str]


def _runs(sources: Sequence[RunSource]) -> list[Run]:
    """``sources`` as runs: a :class:`Run` as it is, a path loaded (once) and validated."""
    return [source if isinstance(source, Run) else load_run(source) for source in sources]


def check_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """``out_dir`` as a path, if a report can be written there; else a :class:`ReportError`.

    Refused: a file at ``out_dir``, a file where one of its parent folders would be,
    a folder that cannot be written (the report is staged beside ``out_dir``).
    """
    out_dir = Path(out_dir)
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise ReportError(f"{out_dir}: the output folder is a file, not a folder")
        target = existing = out_dir.resolve()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent  # the nearest part of the path that exists
    except OSError as error:  # a parent folder that cannot be searched, a symlink loop
        raise ReportError(f"{out_dir}: the output folder cannot be used: {_why(error)}") from None
    if not existing.is_dir():
        raise ReportError(f"{out_dir}: the output folder cannot be created: {existing} is a file")
    # Staged beside OUT, then moved into it: both folders are written (or the one to create
    # them in).
    for folder in [target.parent, target] if existing == target else [existing]:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ReportError(f"{out_dir}: the output folder cannot be written: {folder}")
    return out_dir


def build_report(
    runs: Sequence[RunSource],
    out_dir: str | os.PathLike[str],
    previous: RunSource | Sequence[RunSource] | None = None,
    history: Sequence[RunSource] | None = None,
) -> Path:
    """Build ``out_dir/README.md``, ``out_dir/figures/`` and ``out_dir/results.csv`` from
    benchmark runs.

    ``runs`` and ``previous`` are :class:`Run` objects or JSON files (loaded
    here); ``previous``: run(s) to compare with (matched by machine), or None;
    ``history``: the saved runs each machine's history is drawn from (:mod:`.history`;
    ``[]``: the given runs alone; None: no history section).
    ``out_dir`` and every file are checked first; the report is assembled in a
    staging directory beside ``out_dir`` and moved in last, so on any error
    (:class:`ReportError`, naming the file or folder) ``out_dir`` is left as it was.
    Returns the Markdown file's path.
    """
    out_dir = check_out_dir(out_dir)
    current = label_runs(_runs(runs))
    if not current:
        raise ReportError("no benchmark JSON files given")
    if previous is None:
        previous = []
    elif isinstance(previous, (Run, str, os.PathLike)):
        previous = [previous]
    previous_runs = _runs(previous)
    history_runs = None if history is None else _runs(history)
    try:
        return _write(current, previous_runs, history_runs, out_dir)
    except OSError as error:
        raise ReportError(f"{out_dir}: the report cannot be written: {_why(error)}") from None


def _why(error: OSError) -> str:
    """The operating system's reason, and the file it concerns."""
    return (error.strerror or str(error)) + (f" ({error.filename})" if error.filename else "")


def _write(
    current: Sequence[Run], previous: Sequence[Run], history: Sequence[Run] | None, out_dir: Path
) -> Path:
    """Render into a staging directory beside ``out_dir``, then swap it in (one build's
    README with that build's figures, whatever another build does meanwhile)."""
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.resolve().name}.tmp-", dir=parent))
    swapped = False
    try:
        text = render(current, staging / FIGURES_DIR, previous, history)
        (staging / FIGURES_DIR).mkdir(exist_ok=True)
        write_results_csv(current, staging / RESULTS_CSV)
        (staging / REPORT_NAME).write_text(text, encoding="utf-8")
        out_dir.mkdir(exist_ok=True)
        with _exclusive(out_dir):
            _swap(staging, out_dir)
        swapped = True
        return out_dir / REPORT_NAME
    finally:  # kept only if it holds the earlier files, which could not be put back
        if swapped or not any((staging / name).exists() for name in (OLD_FIGURES, OLD_RESULTS)):
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``flock`` on the directory itself: nothing to
    create or clean up; released when the descriptor closes, even if the process dies).
    Where the platform or file system has no such lock, the swap runs unlocked."""
    try:
        import fcntl

        descriptor = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):  # ENOLCK and the like: no lock to be had
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _swap(staging: Path, out_dir: Path) -> None:
    """Move the staged figures, the staged results table, then the staged Markdown, into
    ``out_dir`` (one rename each); on a failure, put back what was moved and raise."""
    figures, staged_figures, old_figures = (
        out_dir / FIGURES_DIR, staging / FIGURES_DIR, staging / OLD_FIGURES
    )  # fmt: skip
    done: list[tuple[Path, Path]] = []  # (from, to) of each rename made
    try:
        if figures.exists() or figures.is_symlink():
            os.rename(figures, old_figures)
            done.append((figures, old_figures))
        os.rename(staged_figures, figures)
        done.append((staged_figures, figures))
        csv, old_csv = out_dir / RESULTS_CSV, staging / OLD_RESULTS
        if csv.exists() or csv.is_symlink():
            os.rename(csv, old_csv)
            done.append((csv, old_csv))
        os.rename(staging / RESULTS_CSV, csv)
        done.append((staging / RESULTS_CSV, csv))
        os.replace(staging / REPORT_NAME, out_dir / REPORT_NAME)
    except OSError as error:
        undone = True
        for source, target in reversed(done):
            try:
                os.rename(target, source)
            except OSError:
                undone = False
        for kept, what in ((old_figures, "figures"), (staging / OLD_RESULTS, RESULTS_CSV)):
            if not undone and kept.exists():
                raise ReportError(
                    f"{out_dir}: the report cannot be written: {_why(error)}; the earlier "
                    f"{what} could not be put back either: they are in {kept}"
                ) from None
        raise
