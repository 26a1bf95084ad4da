"""Loading and validating benchmark JSON, and finding the runs to compare with.

:func:`load_run` reads one pytest-benchmark JSON file written by ``benchmarks/``
into a :class:`Run` of :class:`Entry` objects, or raises :class:`ReportError`
naming the file and the problem. :func:`find_previous` and :func:`newest_saved`
search pytest-benchmark's autosave folder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DEFAULT_STORAGE = ".benchmarks"

STAT_KEYS = ("median", "q1", "q3", "iqr", "min", "max", "rounds")
CASE_KEYS = (
    "implementation",
    "device",
    "threads",
    "batch_size",
    "num_train",
    "first_epoch_seconds",
)
EXTRA_KEYS = {
    "limit": ("bytes", "threads"),
    "compute": ("threads", "flops_per_call", "epoch_flops"),
    "epoch": (
        *CASE_KEYS,
        "final_test_accuracy",
        "target_accuracy",
        "time_to_accuracy_seconds",
        "history",
        "peak_rss_bytes",
    ),
    "batch": (*CASE_KEYS, "final_test_accuracy"),
    "threads": (*CASE_KEYS, "final_test_accuracy"),
    "startup": ("startup", "implementation", "device", "what"),
}
TRAINING_KINDS = ("epoch", "batch", "threads")  # the kinds that train and report accuracy
HISTORY_KEYS = ("epoch", "test_accuracy", "train_seconds")
GROUP_KINDS = {
    "epoch": "epoch",
    "batch": "sweep: batch size",
    "threads": "sweep: threads",
    "startup": "start-up",
    "compute": "compute floor",
}


class ReportError(Exception):
    """An input cannot be used; the message names the file and the problem."""


# ------------------------------------------------------------------- loading


@dataclass
class Entry:
    """One benchmark of a run: its timing statistics and fmbench's extra_info."""

    name: str
    fullname: str
    group: str
    kind: str
    stats: dict[str, float]
    info: dict[str, Any]

    @property
    def implementation(self) -> str:
        return self.info.get("implementation", "limit")

    @property
    def median(self) -> float:
        return self.stats["median"]

    def key(self) -> tuple:
        """What identifies the same measurement in another run."""
        return (
            self.kind,
            self.implementation,
            self.info.get("device"),
            self.info.get("threads"),
            self.info.get("batch_size"),
            self.info.get("startup"),
        )


@dataclass
class Run:
    """One validated pytest-benchmark JSON file written by ``benchmarks/``."""

    path: Path
    datetime: str
    machine_info: dict[str, Any]
    commit_info: dict[str, Any]
    fmbench: dict[str, Any]
    entries: list[Entry]
    label: str = ""

    @property
    def run_id(self) -> str | None:
        return self.fmbench.get("run_id")

    @property
    def settings(self) -> dict[str, Any]:
        return self.fmbench.get("settings") or {}

    @property
    def extra_machine(self) -> dict[str, Any]:
        return self.machine_info.get("fmbench") or {}

    @property
    def machine_key(self) -> tuple:
        extra = self.extra_machine
        return (
            self.machine_info.get("node"),
            extra.get("cpu_model") or (self.machine_info.get("cpu") or {}).get("brand_raw"),
            extra.get("logical_cpus"),
        )

    @property
    def commit(self) -> str:
        commit = str(self.commit_info.get("id") or "unknown")[:12]
        return commit + (" (uncommitted changes)" if self.commit_info.get("dirty") else "")

    @property
    def when(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self.datetime)
        except (TypeError, ValueError):
            return None

    def tests(self, outcome: str | None = None) -> list[dict[str, Any]]:
        tests = self.fmbench.get("tests") or []
        return [t for t in tests if outcome is None or t.get("outcome") == outcome]

    def of_kind(self, kind: str) -> list[Entry]:
        return [entry for entry in self.entries if entry.kind == kind]

    @property
    def limit(self) -> Entry | None:
        limits = self.of_kind("limit")
        return limits[0] if limits else None

    @property
    def compute(self) -> Entry | None:
        """The compute-floor measurement (one large float32 matrix product), if run."""
        entries = self.of_kind("compute")
        return entries[0] if entries else None


def _fail(path: Path, problem: str) -> ReportError:
    """A :class:`ReportError` naming ``path`` and the problem."""
    return ReportError(f"{path}: {problem}")


def _number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(path: Path) -> Any:
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


def _check_entry(path: Path, index: int, raw: Any) -> Entry:
    """Validate one item of ``benchmarks`` as an :class:`Entry`."""
    if not isinstance(raw, dict):
        raise _fail(path, f"benchmark #{index} is not an object")
    name = raw.get("fullname") or raw.get("name") or f"#{index}"
    where = f"benchmark {name!r}"
    for key in ("name", "group", "stats", "extra_info"):
        if key not in raw:
            raise _fail(path, f"{where} has no {key!r}: a partial or foreign pytest-benchmark file")
    stats, info = raw["stats"], raw["extra_info"]
    if not isinstance(stats, dict):
        raise _fail(path, f"{where}: 'stats' is not an object")
    for key in STAT_KEYS:
        if key not in stats:
            raise _fail(path, f"{where}: stats has no {key!r}")
        if not _number(stats[key]) or stats[key] < 0:
            raise _fail(path, f"{where}: stats[{key!r}] is {stats[key]!r}, not a number >= 0")
    if stats["median"] <= 0:
        raise _fail(path, f"{where}: median time is {stats['median']}, not positive")
    if not isinstance(info, dict) or not info:
        raise _fail(
            path, f"{where}: extra_info is empty: not written by fmbench's benchmarks/ suite"
        )
    kind = info.get("kind")
    if kind not in EXTRA_KEYS:
        raise _fail(
            path, f"{where}: extra_info['kind'] is {kind!r}, expected one of {list(EXTRA_KEYS)}"
        )
    for key in EXTRA_KEYS[kind]:
        if key not in info:
            raise _fail(path, f"{where}: extra_info has no {key!r}")
    if kind in TRAINING_KINDS:
        accuracy = info["final_test_accuracy"]
        if not _number(accuracy) or not 0 <= accuracy <= 1:
            raise _fail(path, f"{where}: final_test_accuracy is {accuracy!r}, not in [0, 1]")
    if kind == "epoch":
        history = info["history"]
        if not isinstance(history, list) or not history:
            raise _fail(path, f"{where}: extra_info['history'] is empty or not a list")
        for record in history:
            missing = [key for key in HISTORY_KEYS if key not in (record or {})]
            if missing:
                raise _fail(path, f"{where}: a history record has no {', '.join(missing)}")
    return Entry(
        str(raw["name"]),
        str(raw.get("fullname") or raw["name"]),
        str(raw["group"]),
        kind,
        stats,
        info,
    )


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read and validate one JSON file; raise :class:`ReportError` on any problem."""
    path = Path(path)
    data = _read_json(path)
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
    if not isinstance(data["benchmarks"], list) or not data["benchmarks"]:
        raise _fail(path, "'benchmarks' is empty: the run measured nothing")
    for key in ("machine_info", "commit_info", "fmbench"):
        if not isinstance(data[key], dict):
            raise _fail(path, f"{key!r} is not an object")
    entries = [_check_entry(path, i, raw) for i, raw in enumerate(data["benchmarks"])]
    run = Run(
        path,
        str(data["datetime"]),
        data["machine_info"],
        data["commit_info"],
        data["fmbench"],
        entries,
    )
    tests = data["fmbench"].get("tests")
    if not isinstance(tests, list):
        raise _fail(path, "fmbench['tests'] is missing: cannot tell which benchmarks ran")
    measured = {entry.fullname for entry in entries}
    for test in tests:
        if not isinstance(test, dict) or "nodeid" not in test or "outcome" not in test:
            raise _fail(path, f"fmbench['tests'] has a malformed item: {test!r}")
    never = [t["nodeid"] for t in tests if t["outcome"] == "not run"]
    if never:
        raise _fail(
            path,
            f"partial run: {len(never)} benchmark(s) never ran (interrupted?), first {never[0]!r}",
        )
    for test in tests:
        if test["outcome"] == "passed" and test["nodeid"] not in measured:
            raise _fail(
                path,
                f"benchmark entry for {test['nodeid']!r} is missing although the test passed: "
                "the file is partial",
            )
    # A test that failed after pytest-benchmark recorded its timing: its numbers are not
    # trusted; it is listed with the other failures instead.
    failed = {t["nodeid"] for t in tests if t["outcome"] in ("failed", "error")}
    run.entries = [entry for entry in entries if entry.fullname not in failed]
    return run


def load_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Run]:
    """Load every file; give each run a machine label (unique among them)."""
    runs = [load_run(path) for path in paths]
    if not runs:
        raise ReportError("no benchmark JSON files given")
    _label_runs(runs)
    return runs


def _label_runs(runs: Sequence[Run]) -> None:
    """Label each run with its machine; the same machine twice gets the date too."""
    for run in runs:
        extra = run.extra_machine
        cpu = extra.get("cpu_model") or "unknown CPU"
        cpus = extra.get("logical_cpus")
        node = run.machine_info.get("node") or "unknown host"
        run.label = f"{node} ({cpu}{f', {cpus} CPUs' if cpus else ''})"
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.label] = counts.get(run.label, 0) + 1
    for run in runs:  # the same machine twice: tell the runs apart by date
        if counts[run.label] > 1:
            run.label += f" {_short_date(run)}"


def _short_date(run: Run) -> str:
    """The run's date as 'YYYY-MM-DD HH:MM', or as recorded if unparsable."""
    when = run.when
    return when.strftime("%Y-%m-%d %H:%M") if when else run.datetime


# ------------------------------------------------------------------ previous


def find_previous(run: Run, storage: str | os.PathLike[str] = DEFAULT_STORAGE) -> Run | None:
    """The newest saved run in ``storage`` older than ``run``, from the same machine.

    ``storage`` is pytest-benchmark's ``--benchmark-autosave`` folder; files that
    are not fmbench runs, or are unreadable, are passed over. The copy of
    ``run`` itself (same ``run_id``) is never chosen, and a ``--quick`` smoke
    run is only compared with another smoke run.
    """
    storage = Path(storage)
    if not storage.is_dir():
        return None
    best: Run | None = None
    for path in sorted(storage.rglob("*.json")):
        try:
            candidate = load_run(path)
        except ReportError:
            continue
        if candidate.machine_key != run.machine_key:
            continue
        if bool(candidate.settings.get("quick")) != bool(run.settings.get("quick")):
            continue  # a smoke run and a measurement are not compared
        if run.run_id is not None and candidate.run_id == run.run_id:
            continue
        if candidate.path.resolve() == run.path.resolve():
            continue
        if not _older(candidate, run):
            continue
        if best is None or _older(best, candidate):
            best = candidate
    return best


def _older(a: Run, b: Run) -> bool:
    """Whether ``a`` was recorded before ``b`` (naive dates taken as UTC)."""
    a_when, b_when = a.when, b.when
    if a_when is None or b_when is None:
        return a.datetime < b.datetime
    if a_when.tzinfo is None:
        a_when = a_when.replace(tzinfo=timezone.utc)
    if b_when.tzinfo is None:
        b_when = b_when.replace(tzinfo=timezone.utc)
    return a_when < b_when


def newest_saved(storage: str | os.PathLike[str] = DEFAULT_STORAGE) -> Path | None:
    """The most recent fmbench run saved in ``storage`` (by its recorded date)."""
    storage = Path(storage)
    runs = []
    for path in sorted(storage.rglob("*.json")) if storage.is_dir() else []:
        try:
            runs.append(load_run(path))
        except ReportError:
            continue
    if not runs:
        return None
    newest = runs[0]
    for run in runs[1:]:
        if _older(newest, run):
            newest = run
    return newest.path


def _pair_previous(runs: Sequence[Run], previous: Sequence[Run]) -> dict[int, tuple[Run, bool]]:
    """For each current run (by index), the previous run to compare with, and whether
    its machine matches."""
    pairs: dict[int, tuple[Run, bool]] = {}
    for index, run in enumerate(runs):
        same = [p for p in previous if p.machine_key == run.machine_key and p.run_id != run.run_id]
        if same:
            newest = same[0]
            for candidate in same[1:]:
                if _older(newest, candidate):
                    newest = candidate
            pairs[index] = (newest, True)
        elif len(runs) == 1 and len(previous) == 1:
            pairs[index] = (previous[0], False)
    return pairs
