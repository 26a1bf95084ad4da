"""The runs to compare with: pytest-benchmark's autosave folder, searched once.

:func:`load_saved` parses every JSON file under the folder once (files already
loaded as current runs are reused, not parsed again); :func:`newest` and
:func:`find_previous` then choose among those :class:`Run` objects, and
:func:`pair_previous` matches each current run with the one it is compared with.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from impls.report.runs import ReportError, Run, load_run

DEFAULT_STORAGE = ".benchmarks"  # pytest-benchmark's --benchmark-autosave folder


def load_saved(storage: str | os.PathLike[str], loaded: Iterable[Run] = ()) -> list[Run]:
    """Every fmbench run saved under ``storage``, each file parsed once.

    Files that are not fmbench runs, or are unreadable, are passed over, and so are
    folders that cannot be listed. A file already loaded (a run in ``loaded``, by
    resolved path) is taken as it is.
    """
    storage = Path(storage)
    if not storage.is_dir():
        return []
    known = {run.path.resolve(): run for run in loaded}
    saved = []
    for path in _json_files(storage):
        run = known.get(path.resolve())
        if run is None:
            try:
                run = load_run(path)
            except ReportError:
                continue
        saved.append(run)
    return saved


def _json_files(storage: Path) -> list[Path]:
    """Every ``*.json`` file under ``storage``, sorted. A folder that cannot be listed
    (no permission, an I/O error) is passed over: ``os.walk`` ignores it, where
    ``Path.rglob`` raises for any error but a missing permission."""
    found = []
    for folder, _, files in os.walk(storage):
        found += [Path(folder, name) for name in files if name.endswith(".json")]
    return sorted(found)


def same_run(one: Run, other: Run) -> bool:
    """Whether ``one`` and ``other`` are one run: the same ``run_id`` (when both have one)
    or the same file. A run is never compared with itself."""
    if one.run_id is not None and one.run_id == other.run_id:
        return True
    return one.path.resolve() == other.path.resolve()


def newest(runs: Iterable[Run]) -> Run | None:
    """The most recently recorded of ``runs`` (the first of equals), or None."""
    best: Run | None = None
    for run in runs:
        if best is None or best.recorded_before(run):
            best = run
    return best


def find_previous(run: Run, saved: Iterable[Run]) -> Run | None:
    """The newest of ``saved`` recorded before ``run`` on the same machine, or None.

    ``saved`` comes from :func:`load_saved`. The copy of ``run`` itself
    (:func:`same_run`) is never chosen, and a ``--quick`` smoke run is only
    compared with another smoke run.
    """
    return newest(
        candidate
        for candidate in saved
        if comparable(candidate, run)
        and not same_run(candidate, run)
        and candidate.recorded_before(run)
    )


def comparable(one: Run, other: Run) -> bool:
    """Whether two runs measure alike: the same machine, and both smoke runs (``--quick``,
    not measurements) or neither."""
    return one.machine_key == other.machine_key and one.settings.quick == other.settings.quick


def pair_previous(runs: Sequence[Run], previous: Sequence[Run]) -> dict[int, tuple[Run, bool]]:
    """For each current run (by index), the previous run to compare with, and whether
    its machine matches: the newest previous run of the same machine; with one run on
    each side, the previous run even from another machine. A previous run that is the
    current run itself (:func:`same_run`) is left out first, so it is never paired."""
    pairs: dict[int, tuple[Run, bool]] = {}
    for index, run in enumerate(runs):
        others = [p for p in previous if not same_run(p, run)]
        same = newest(p for p in others if p.machine_key == run.machine_key)
        if same is not None:
            pairs[index] = (same, True)
        elif len(runs) == 1 and len(others) == 1:
            pairs[index] = (others[0], False)
    return pairs
