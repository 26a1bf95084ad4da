"""Building a report folder atomically.

Every input is validated before anything is written; the report is built in
a temporary directory beside ``OUT`` and moved into place at the end, so a bad
input (malformed, empty or partial JSON) gives a :class:`ReportError` naming
the file and the problem, and leaves ``OUT`` as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from impls.report.markdown import FIGURES_DIR, render
from impls.report.runs import ReportError, Run, label_runs, load_run

REPORT_NAME = "README.md"  # so a report folder renders when browsed

# A run already loaded (the command line loads each file once and passes it on), or a file.
RunSource = Run | str | os.PathLike[str]


def _runs(sources: Sequence[RunSource]) -> list[Run]:
    """``sources`` as runs: a :class:`Run` as it is, a path loaded (once) and validated."""
    return [source if isinstance(source, Run) else load_run(source) for source in sources]


def build_report(
    runs: Sequence[RunSource],
    out_dir: str | os.PathLike[str],
    previous: RunSource | Sequence[RunSource] | None = None,
) -> Path:
    """Build ``out_dir/README.md`` and ``out_dir/figures/`` from benchmark runs.

    ``runs`` and ``previous`` are :class:`Run` objects or JSON files (loaded
    here); ``previous``: run(s) to compare with (matched by machine), or None.
    Every file is validated first; the report is assembled in a temporary
    directory beside ``out_dir`` and moved in last, so on any error
    (:class:`ReportError` for bad input) ``out_dir`` is left as it was.
    Returns the Markdown file's path.
    """
    current = label_runs(_runs(runs))
    if not current:
        raise ReportError("no benchmark JSON files given")
    if previous is None:
        previous = []
    elif isinstance(previous, (Run, str, os.PathLike)):
        previous = [previous]
    previous_runs = _runs(previous)
    out_dir = Path(out_dir)
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    try:
        text = render(current, staging / FIGURES_DIR, previous_runs)
        (staging / REPORT_NAME).write_text(text, encoding="utf-8")
        return _move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, out_dir: Path) -> Path:
    """Swap the staged figures directory in, then the Markdown (one rename each)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    new_figures = staging / FIGURES_DIR
    new_figures.mkdir(exist_ok=True)
    target = out_dir / FIGURES_DIR
    if target.exists():
        target.rename(staging / "old-figures")
    new_figures.rename(target)
    report = out_dir / REPORT_NAME
    os.replace(staging / REPORT_NAME, report)
    return report
