"""Loading and validating benchmark JSON into :class:`Run` objects.

:func:`load_run` reads one pytest-benchmark JSON file written by ``benchmarks/``:
each item of its ``benchmarks`` becomes an :class:`impls.results.Measurement`
(``stats`` read as a :class:`~impls.results.Timing`, ``extra_info`` with
:func:`~impls.results.from_extra_info`), and the run-level sections are read with
:mod:`impls.run_info` (``machine_info``, ``commit_info``, the ``fmbench`` section), so
the report checks every field it uses against the definitions the benchmarks write
with. Any problem is a :class:`ReportError`: one line naming the file and the field.
The previous-run search over the autosave folder is in :mod:`.previous`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from impls import results
from impls.results import (
    ComputeFloor,
    Measurement,
    ReadLimit,
    Timing,
    TrainingResult,
)
from impls.run_info import (
    CommitInfo,
    MachineFacts,
    MachineInfo,
    Outcome,
    RunSection,
    RunSettings,
)
from impls.stored import ResultError


class ReportError(Exception):
    """An input cannot be used; the message names the file and the problem."""


@dataclass
class Run:
    """One validated pytest-benchmark JSON file written by ``benchmarks/``."""

    path: Path
    datetime: str
    machine_info: MachineInfo
    commit_info: CommitInfo
    fmbench: RunSection
    entries: list[Measurement]
    label: str = ""  # the machine (and date, when a machine appears twice): set by label_runs

    @property
    def run_id(self) -> str | None:
        return self.fmbench.run_id

    @property
    def settings(self) -> RunSettings:
        return self.fmbench.settings or RunSettings()

    @property
    def extra_machine(self) -> MachineFacts:
        """fmbench's own facts about the machine (``machine_info["fmbench"]``)."""
        return self.machine_info.facts

    @property
    def machine_key(self) -> tuple:
        info = self.machine_info
        return (info.node, info.cpu_name, info.cpu_family_model, self.extra_machine.logical_cpus)

    @property
    def commit(self) -> str:
        """pytest-benchmark's ``commit_info``: the commit, and whether the tree was dirty."""
        commit = (self.commit_info.id or "unknown")[:12]
        return commit + (" (uncommitted changes)" if self.commit_info.dirty else "")

    @property
    def when(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self.datetime)
        except (TypeError, ValueError):
            return None

    @property
    def short_date(self) -> str:
        """The run's date as 'YYYY-MM-DD HH:MM', or as recorded if unparsable."""
        when = self.when
        return when.strftime("%Y-%m-%d %H:%M") if when else self.datetime

    def recorded_before(self, other: Run) -> bool:
        """Whether this run was recorded before ``other`` (naive dates taken as UTC)."""
        mine, theirs = self.when, other.when
        if mine is None or theirs is None:
            return self.datetime < other.datetime
        if mine.tzinfo is None:
            mine = mine.replace(tzinfo=timezone.utc)
        if theirs.tzinfo is None:
            theirs = theirs.replace(tzinfo=timezone.utc)
        return mine < theirs

    def tests(self, outcome: str | None = None) -> list[Outcome]:
        """The run's benchmark tests (those that ended with ``outcome``, if given)."""
        return [t for t in self.fmbench.tests if outcome is None or t.outcome == outcome]

    def of_kind(self, kind: str) -> list[Measurement]:
        return [entry for entry in self.entries if entry.kind == kind]

    def trained(self, kind: str = "epoch") -> list[tuple[Measurement, TrainingResult]]:
        """The measurements of a training ``kind`` (epoch, batch, threads), each with its case."""
        return [
            (entry, entry.case)
            for entry in self.entries
            if entry.kind == kind and isinstance(entry.case, TrainingResult)
        ]

    @property
    def limit(self) -> Measurement | None:
        """The read limit (one pass over the float32 training set), if run."""
        limits = [e for e in self.entries if isinstance(e.case, ReadLimit) and e.kind == "limit"]
        return limits[0] if limits else None

    @property
    def compute(self) -> Measurement | None:
        """The compute-floor measurement (one large float32 matrix product), if run."""
        floors = [
            e for e in self.entries if isinstance(e.case, ComputeFloor) and e.kind == "compute"
        ]
        return floors[0] if floors else None


# ------------------------------------------------------------------- loading


def _fail(path: Path, problem: str) -> ReportError:
    """A :class:`ReportError` naming ``path`` and the problem."""
    return ReportError(f"{path}: {problem}")


def read_json(path: Path) -> Any:
    """The parsed content of ``path``; a :class:`ReportError` says why it cannot be."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise _fail(path, f"cannot be read ({error})") from None
    if not text.strip():
        raise _fail(path, "empty file: the benchmark run wrote nothing (did it crash?)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise _fail(
            path,
            f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}): "
            "the file is malformed or was cut short",
        ) from None


def _measurement(path: Path, index: int, raw: Any) -> Measurement:
    """One item of ``benchmarks`` as a :class:`Measurement`, every field checked."""
    if not isinstance(raw, dict):
        raise _fail(path, f"benchmarks[{index}] is {type(raw).__name__}, not an object")
    name = raw.get("fullname") or raw.get("name") or f"#{index}"
    where = f"benchmark {name!r}"
    for key in ("name", "group", "stats", "extra_info"):
        if key not in raw:
            raise _fail(path, f"{where} has no {key!r}: a partial or foreign pytest-benchmark file")
    for key in ("name", "fullname", "group"):
        if key in raw and not isinstance(raw[key], str):
            raise _fail(path, f"{where}: {key} is {raw[key]!r}, not a string")
    try:
        timing = Timing.from_dict(raw["stats"], f"{where}: stats")
        case = results.from_extra_info(raw["extra_info"], f"{where}: extra_info")
        group = results.GROUPS[case.kind]
        if raw["group"] != group:
            raise _fail(
                path,
                f"{where}: group is {raw['group']!r}, expected {group!r} for kind {case.kind!r}",
            )
        return Measurement(raw["name"], raw.get("fullname") or raw["name"], group, timing, case)
    except ResultError as error:  # the checks across stats and extra_info, too
        raise _fail(path, str(error)) from None


def _check_schema(path: Path, fmbench: dict[str, Any]) -> None:
    """The ``fmbench`` section's schema is one this report reads (1: before impls.results)."""
    schema = fmbench.get("schema", 1)
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise _fail(path, f"fmbench.schema is {schema!r}, not a schema number")
    if schema > results.SCHEMA:
        raise _fail(
            path,
            f"fmbench.schema is {schema}: written by a newer fmbench (this one reads "
            f"schemas 1 to {results.SCHEMA})",
        )


def _sections(path: Path, data: dict[str, Any]) -> tuple[MachineInfo, CommitInfo, RunSection]:
    """The run-level sections, every field the report uses checked (:mod:`impls.run_info`)."""
    if not isinstance(data["fmbench"].get("tests"), list):
        raise _fail(path, "fmbench.tests is missing: cannot tell which benchmarks ran")
    try:
        return (
            MachineInfo.from_dict(data["machine_info"], "machine_info"),
            CommitInfo.from_dict(data["commit_info"], "commit_info"),
            RunSection.from_dict(data["fmbench"], "fmbench"),
        )
    except ResultError as error:
        raise _fail(path, str(error)) from None


def _check_tests(path: Path, tests: Sequence[Outcome], entries: Sequence[Measurement]) -> None:
    """``fmbench.tests`` lists every benchmark with its outcome, and matches the entries."""
    never = [t.nodeid for t in tests if t.outcome == "not run"]
    if never:
        raise _fail(
            path,
            f"partial run: {len(never)} benchmark(s) never ran (interrupted?), first {never[0]!r}",
        )
    measured = {entry.fullname for entry in entries}
    for test in tests:
        if test.outcome == "passed" and test.nodeid not in measured:
            raise _fail(
                path,
                f"benchmark entry for {test.nodeid!r} is missing although the test passed: "
                "the file is partial",
            )


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read and validate one JSON file; raise :class:`ReportError` on any problem."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise _fail(path, f"top level is a JSON {type(data).__name__}, not an object")
    for key in ("machine_info", "commit_info", "benchmarks", "datetime"):
        if key not in data:
            raise _fail(path, f"no {key!r}: not a pytest-benchmark JSON file, or a partial one")
    if "fmbench" not in data:
        raise _fail(
            path,
            "no 'fmbench' section: not written by fmbench's benchmarks/ suite (run "
            "'python -m pytest benchmarks --benchmark-json=FILE'), or cut short",
        )
    for key in ("machine_info", "commit_info", "fmbench"):
        if not isinstance(data[key], dict):
            raise _fail(path, f"{key} is {type(data[key]).__name__}, not an object")
    _check_schema(path, data["fmbench"])
    machine, commit, section = _sections(path, data)
    if not isinstance(data["benchmarks"], list) or not data["benchmarks"]:
        raise _fail(path, "'benchmarks' is empty: the run measured nothing")
    entries = [_measurement(path, i, raw) for i, raw in enumerate(data["benchmarks"])]
    _check_tests(path, section.tests, entries)
    # A test that failed after pytest-benchmark recorded its timing: its numbers are not
    # trusted; it is listed with the other failures instead.
    failed = {t.nodeid for t in section.tests if t.failed}
    return Run(
        path,
        str(data["datetime"]),
        machine,
        commit,
        section,
        [entry for entry in entries if entry.fullname not in failed],
    )


def load_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Run]:
    """Load every file (each parsed once); label each run with its machine."""
    runs = [load_run(path) for path in paths]
    if not runs:
        raise ReportError("no benchmark JSON files given")
    return label_runs(runs)


def machine_label(run: Run) -> str:
    """The run's machine (its :attr:`Run.machine_key`): 'host (CPU, family F model M, N
    CPUs)', with the parts it recorded."""
    node, cpu, family_model, cpus = run.machine_key
    described = [
        cpu or "unknown CPU",
        "family {} model {}".format(*family_model) if family_model else None,
        f"{cpus} CPUs" if cpus else None,
    ]
    return f"{node or 'unknown host'} ({', '.join(text for text in described if text)})"


def label_runs(runs: Sequence[Run]) -> list[Run]:
    """Label each run with its machine; the same machine twice gets the date too."""
    for run in runs:
        run.label = machine_label(run)
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.label] = counts.get(run.label, 0) + 1
    for run in runs:  # the same machine twice: tell the runs apart by date
        if counts[run.label] > 1:
            run.label += f" {run.short_date}"
    return list(runs)
