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
from impls.report.runs import Run, load_runs

REPORT_NAME = "README.md"  # so a report folder renders when browsed


def build_report(
    json_paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    previous: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
) -> Path:
    """Build ``out_dir/README.md`` and ``out_dir/figures/`` from benchmark JSON files.

    ``previous``: saved run(s) to compare with (matched by machine), or None.
    Every file is validated first; the report is assembled in a temporary
    directory beside ``out_dir`` and moved in last, so on any error
    (:class:`ReportError` for bad input) ``out_dir`` is left as it was.
    Returns the Markdown file's path.
    """
    runs = load_runs(json_paths)
    if previous is None:
        previous_runs: list[Run] = []
    elif isinstance(previous, (str, os.PathLike)):
        previous_runs = load_runs([previous])
    else:
        previous_runs = load_runs(previous) if previous else []
    out_dir = Path(out_dir)
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    try:
        text = render(runs, staging / FIGURES_DIR, previous_runs)
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
