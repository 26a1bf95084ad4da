"""Comparison reports from the benchmark suite's pytest-benchmark JSON.

``nox -s bench`` runs ``benchmarks/`` and then this module; ``nox -s report --
FILES`` (or ``python -m impls.report FILES``) rebuilds a report from saved
runs, merging several machines into one table with the machine as a column.

The report is Markdown (tables by pandas' ``to_markdown``) plus PNG figures
(matplotlib, Agg) referenced by relative path::

    OUT/README.md
    OUT/figures/epoch_time.png, accuracy_by_epoch.png, accuracy_by_time.png, predictions.png

Every input is validated before anything is written; the report is built in
a temporary directory beside ``OUT`` and moved into place at the end, so a bad
input (malformed, empty or partial JSON) gives a :class:`ReportError` naming
the file and the problem, and leaves ``OUT`` as it was.

pandas, tabulate and matplotlib are imported inside the functions: the core
package needs only NumPy (``pip install 'fmbench[bench]'`` brings them).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPORT_NAME = "README.md"  # so a report folder renders when browsed
FIGURES_DIR = "figures"
BASELINE = "d2l-reference"
DEFAULT_STORAGE = ".benchmarks"
# A run is flagged slower (or faster) than the previous one when its median moved
# by more than the larger of both runs' IQRs and by more than this fraction.
RELATIVE_NOISE_FLOOR = 0.10
NOISY_IQR_FRACTION = 0.10  # IQR/median above this: the row is marked noisy
BUSY_OTHER_CPUS = 0.2  # other processes' average CPU use above this: the run was not alone
MIN_ROUNDS = 5

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
}
HISTORY_KEYS = ("epoch", "test_accuracy", "train_seconds")
GROUP_KINDS = {"epoch": "epoch", "batch": "sweep: batch size", "threads": "sweep: threads"}


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


def _fail(path: Path, problem: str) -> ReportError:
    return ReportError(f"{path}: {problem}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(path: Path) -> Any:
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
    if kind != "limit":
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


def compare(current: Entry, previous: Entry) -> dict[str, Any]:
    """The change from ``previous`` to ``current`` and whether it is beyond the noise.

    Rule: the median moved by more than max(IQR of both runs, 10 % of the
    previous median). Slower is a regression, faster an improvement. The
    floor is there because back-to-back runs of the same code on a shared VM
    differ by more than either run's IQR.
    """
    delta = current.median - previous.median
    noise = max(current.stats["iqr"], previous.stats["iqr"], RELATIVE_NOISE_FLOOR * previous.median)
    verdict = "within noise"
    if delta > noise:
        verdict = "regression"
    elif -delta > noise:
        verdict = "improvement"
    return {
        "previous_median_s": previous.median,
        "delta_s": delta,
        "delta_pct": 100.0 * delta / previous.median,
        "noise_s": noise,
        "verdict": verdict,
    }


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


# ---------------------------------------------------------------- the tables


def results_frame(runs: Sequence[Run], previous: Sequence[Run] = ()):
    """Every measurement of every run as one numeric DataFrame (one row per benchmark).

    Columns: machine, run, kind, group, implementation, device, threads,
    batch_size, median_s, q1_s, q3_s, iqr_s, rounds, min_s, max_s,
    examples_per_s, first_epoch_s, final_test_accuracy, time_to_accuracy_s,
    peak_rss_mib, speedup_vs_baseline, limit_multiple, and, when a previous run
    matches, previous_median_s, delta_s, delta_pct, noise_s, verdict.
    """
    import pandas as pd

    pairs = _pair_previous(runs, previous)
    rows = []
    for index, run in enumerate(runs):
        limit = run.limit
        baselines = {
            e.info["device"]: e.median for e in run.of_kind("epoch") if e.implementation == BASELINE
        }
        previous_entries = {}
        if index in pairs:
            previous_entries = {e.key(): e for e in pairs[index][0].entries}
        for entry in run.entries:
            info, stats = entry.info, entry.stats
            row: dict[str, Any] = {
                "machine": run.label,
                "run": index,
                "kind": entry.kind,
                "group": entry.group,
                "name": entry.name,
                "implementation": entry.implementation,
                "device": info.get("device"),
                "threads": info.get("threads"),
                "batch_size": info.get("batch_size"),
                "median_s": stats["median"],
                "q1_s": stats["q1"],
                "q3_s": stats["q3"],
                "iqr_s": stats["iqr"],
                "rounds": int(stats["rounds"]),
                "min_s": stats["min"],
                "max_s": stats["max"],
                "examples_per_s": (info["num_train"] / stats["median"])
                if "num_train" in info
                else None,
                "first_epoch_s": info.get("first_epoch_seconds"),
                "final_test_accuracy": info.get("final_test_accuracy"),
                "time_to_accuracy_s": info.get("time_to_accuracy_seconds"),
                "peak_rss_mib": _mib(info.get("peak_rss_bytes")),
                "peak_rss_children_mib": _mib(info.get("peak_rss_children_bytes")),
                "speedup_vs_baseline": None,
                "limit_multiple": None,
            }
            if entry.kind == "epoch":
                baseline = baselines.get(info["device"], baselines.get("cpu"))
                if baseline is not None:
                    row["speedup_vs_baseline"] = baseline / stats["median"]
            if entry.kind in ("epoch", "limit") and limit is not None:
                row["limit_multiple"] = stats["median"] / limit.median
            before = previous_entries.get(entry.key())
            if before is not None:
                row.update(compare(entry, before))
            rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ("previous_median_s", "delta_s", "delta_pct", "noise_s", "verdict"):
        if column not in frame:
            frame[column] = None
    return frame


def _mib(value: Any) -> float | None:
    return value / 2**20 if _number(value) else None


def _num(value: Any, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, never in exponent notation."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    value = float(value)
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _delta_text(row) -> str:
    if not _present(row.get("verdict")):
        return "—"
    text = f"{row['delta_pct']:+.1f} %"
    if row["verdict"] == "regression":
        return f"**{text} ▲ slower**"
    if row["verdict"] == "improvement":
        return f"{text} ▼ faster"
    return f"{text} (noise)"


def main_table(frame, *, with_machine: bool, with_delta: bool, target: float | None):
    """The headline table: one row per implementation (and device, machine) plus the limit."""
    import pandas as pd

    rows = frame[frame["kind"].isin(["epoch", "limit"])].copy()
    rows["_limit"] = rows["kind"] == "limit"
    rows = rows.sort_values(["run", "_limit", "median_s"])
    target_text = _num(target, 2) if target is not None else "target"
    table = []
    for _, row in rows.iterrows():
        is_limit = row["kind"] == "limit"
        record: dict[str, str] = {}
        if with_machine:
            record["machine"] = row["machine"]
        record["implementation"] = (
            "*limit: read float32 train set once*" if is_limit else row["implementation"]
        )
        record["device"] = row["device"] or "—"
        record["epoch [s] median (IQR)"] = f"{_num(row['median_s'])} ({_num(row['iqr_s'], 2)})"
        record["examples/s"] = (
            "—"
            if is_limit or not _present(row["examples_per_s"])
            else f"{row['examples_per_s']:,.0f}"
        )
        speedup = row["speedup_vs_baseline"]
        record[f"speed-up vs {BASELINE}"] = (
            "—"
            if not _present(speedup)
            else f"{_num(speedup)}×" + (" (baseline)" if row["implementation"] == BASELINE else "")
        )
        record["× limit"] = (
            "—" if not _present(row["limit_multiple"]) else f"{_num(row['limit_multiple'])}×"
        )
        record["first epoch [s]"] = "—" if is_limit else _num(row["first_epoch_s"])
        record["test accuracy"] = "—" if is_limit else f"{row['final_test_accuracy']:.4f}"
        tta = row["time_to_accuracy_s"]
        record[f"time to {target_text} [s]"] = (
            "—" if is_limit else (_num(tta) if _present(tta) else "not reached")
        )
        record["peak RSS [MiB]"] = "—" if is_limit else _num(row["peak_rss_mib"], 3)
        if with_delta:
            record["Δ vs previous"] = _delta_text(row)
        table.append(record)
    return pd.DataFrame(table)


def sweep_table(frame, kind: str, *, with_machine: bool):
    """One row per implementation, one column per sweep value: 'median (IQR) · examples/s'."""
    import pandas as pd

    rows = frame[frame["kind"] == kind]
    if rows.empty:
        return None
    axis = "batch_size" if kind == "batch" else "threads"
    values = sorted({int(v) for v in rows[axis]})
    index_cols = (["machine"] if with_machine else []) + ["implementation", "device"]
    table = []
    for keys, group in rows.groupby(["run", "implementation", "device"], sort=False):
        record = {"machine": group["machine"].iloc[0]} if with_machine else {}
        record.update(implementation=keys[1], device=keys[2])
        medians = {}
        for value in values:
            cell = group[group[axis] == value]
            label = (
                f"batch {value}" if kind == "batch" else f"{value} thread{'s' if value > 1 else ''}"
            )
            if cell.empty:
                record[label] = "—"
                continue
            point = cell.iloc[0]
            medians[value] = point["median_s"]
            record[label] = (
                f"{_num(point['median_s'])} s ({_num(point['iqr_s'], 2)}) · "
                f"{point['examples_per_s']:,.0f}/s"
            )
        if kind == "threads" and len(medians) >= 2:
            low, high = min(medians), max(medians)
            record[f"speed-up {low}→{high} threads"] = f"{_num(medians[low] / medians[high])}×"
        table.append(record)
    result = pd.DataFrame(table)
    order = index_cols + [c for c in result.columns if c not in index_cols]
    return result[order]


def noise_table(frame, *, with_machine: bool):
    """Rounds and spread of every main-table row."""
    import pandas as pd

    rows = frame[frame["kind"].isin(["epoch", "limit"])].sort_values(["run", "median_s"])
    table = []
    for _, row in rows.iterrows():
        spread = row["iqr_s"] / row["median_s"]
        record = {"machine": row["machine"]} if with_machine else {}
        record.update(
            {
                "benchmark": row["implementation"],
                "rounds": int(row["rounds"]),
                "IQR / median": f"{100 * spread:.1f} %"
                + (" (noisy)" if spread > NOISY_IQR_FRACTION else ""),
                "min [s]": _num(row["min_s"]),
                "max [s]": _num(row["max_s"]),
                "max / min": f"{_num(row['max_s'] / row['min_s'])}×",
            }
        )
        table.append(record)
    return pd.DataFrame(table)


def _md(frame) -> str:
    return frame.to_markdown(index=False, disable_numparse=True)


# ---------------------------------------------------------------- machines


def _gib(value: Any) -> str:
    return f"{value / 2**30:.1f} GiB" if _number(value) else "—"


def machine_table(runs: Sequence[Run]):
    """Key facts of each run's machine, one column per run."""
    import pandas as pd

    columns = {}
    for run in runs:
        extra = run.extra_machine
        versions = extra.get("versions") or {}
        blas = ", ".join(
            f"{b.get('internal_api')} {b.get('version')} "
            f"({b.get('architecture') or '?'}, {b.get('num_threads') or '?'} threads)"
            for b in extra.get("numpy_blas") or []
        )
        cpus = f"{extra.get('logical_cpus', '—')} ({extra.get('physical_cores') or '—'})"
        torch = f"{versions.get('torch') or '—'} / {versions.get('torchvision') or '—'}"
        load = extra.get("load_average") or {}
        frameworks = extra.get("frameworks") or {}
        devices = sorted(
            {str(f.get("device_name")) for f in frameworks.values() if f.get("device_name")}
        )
        columns[run.label] = {
            "run": f"{_short_date(run)} UTC, commit {run.commit}",
            "CPU": extra.get("cpu_model") or "—",
            "logical CPUs (physical cores)": cpus,
            "memory": _gib(extra.get("memory_bytes")),
            "OS": extra.get("os") or run.machine_info.get("system") or "—",
            "Python": extra.get("python") or run.machine_info.get("python_version") or "—",
            "numpy (BLAS)": f"{versions.get('numpy') or '—'} ({blas or 'BLAS unknown'})",
            "torch / torchvision": torch,
            "jax / jaxlib / optax": " / ".join(
                str(versions.get(name) or "—") for name in ("jax", "jaxlib", "optax")
            ),
            "threads requested": str(extra.get("threads", "—")),
            "devices used": ", ".join(devices) or "—",
            "load average (1 min) start → end": _load_text(load),
            "other processes' CPU use during the run": _other_text(extra.get("other_cpu_use")),
        }
    frame = pd.DataFrame(columns)
    frame.insert(0, "", frame.index)
    return frame


def _other_text(other: dict | None) -> str:
    if not other or not _number(other.get("other_cpus")):
        return "—"
    return f"{other['other_cpus']:.2f} CPUs on average over {other['wall_seconds']:.0f} s"


def _load_text(load: dict) -> str:
    start, end = load.get("start"), load.get("end")
    if not start or not end:
        return "—"
    return f"{start[0]} → {end[0]}"


def settings_table(runs: Sequence[Run], *, with_machine: bool):
    """What each implementation actually ran with (from its ``runtime_info``)."""
    import pandas as pd

    registry = {}
    table = []
    for run in runs:
        registry.update(run.fmbench.get("registry") or {})
        for entry in run.of_kind("epoch"):
            runtime = entry.info.get("runtime") or {}
            shared = (registry.get(entry.implementation) or {}).get("follows_shared_order", True)
            record = {"machine": run.label} if with_machine else {}
            record.update(
                {
                    "implementation": entry.implementation,
                    "device": str(
                        runtime.get("device_name") or runtime.get("device") or entry.info["device"]
                    ),
                    "threads applied": str(runtime.get("threads", "—")),
                    "minibatch order": "shared MinibatchOrder"
                    if shared
                    else "own DataLoader shuffle",
                    "build [s]": _num(entry.info.get("build_seconds")),
                    "other settings": _runtime_text(runtime),
                }
            )
            table.append(record)
    return pd.DataFrame(table) if table else None


# Shown elsewhere (columns, the machine table) or bookkeeping that says nothing about speed.
_RUNTIME_SKIP = {
    "device", "device_name", "threads", "platform", "torch", "torchvision", "jax", "jaxlib",
    "optax", "x64_enabled", "xla_flags",
}  # fmt: skip


def _runtime_text(runtime: dict) -> str:
    parts = []
    for key, value in runtime.items():
        if key in _RUNTIME_SKIP or isinstance(value, (dict, list)) or value in (None, ""):
            continue
        if key.startswith("compilation_cache") and key != "compilation_cache_warm":
            continue
        text = str(value)
        if "/" in text and len(text) > 30:  # paths: not useful in a comparison
            continue
        parts.append(f"{key}={text}")
    return "; ".join(parts) or "—"


# ------------------------------------------------------------------ figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _impl_label(impl: str, device: str | None) -> str:
    return impl if device in (None, "cpu") else f"{impl} ({device})"


def _joined_label(members: list[tuple[str, str]], multi: bool) -> str:
    """'a = b' for identical curves; with several machines, grouped per machine; wrapped."""
    import textwrap

    by_machine: dict[str, list[str]] = {}
    for name, machine in members:
        by_machine.setdefault(machine, []).append(name)
    parts = [
        " = ".join(names) + (f" ({machine})" if multi else "")
        for machine, names in by_machine.items()
    ]
    return textwrap.fill("; ".join(parts), width=60)


def plot_epoch_times(frame, path: Path, *, multi: bool) -> Path:
    """Horizontal log-scale bars of the median epoch time, IQR as error bars."""
    plt = _pyplot()
    rows = frame[frame["kind"].isin(["epoch", "limit"])].sort_values(["median_s"], ascending=False)
    labels = []
    for _, row in rows.iterrows():
        name = "limit (read once)" if row["kind"] == "limit" else row["implementation"]
        if row["device"] not in (None, "cpu"):
            name += f" ({row['device']})"
        labels.append(f"{name} — {row['machine']}" if multi else name)
    medians = rows["median_s"].to_numpy(dtype=float)
    lower = medians - rows["q1_s"].to_numpy(dtype=float)
    upper = rows["q3_s"].to_numpy(dtype=float) - medians
    colors = ["#999999" if kind == "limit" else "#4472c4" for kind in rows["kind"]]
    colors = [
        "#c0504d" if impl == BASELINE else color
        for impl, color in zip(rows["implementation"], colors, strict=True)
    ]
    width = 10.5 if multi else 7.5  # room for the machine in each label
    fig, ax = plt.subplots(figsize=(width, 0.45 * len(rows) + 1.4), layout="constrained")
    positions = range(len(rows))
    ax.barh(positions, medians, xerr=[lower.clip(0), upper.clip(0)], color=colors, capsize=3)
    ax.set_yticks(list(positions), labels)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per epoch (median; whiskers: interquartile range; log scale)")
    for position, median, q3 in zip(positions, medians, rows["q3_s"], strict=True):
        ax.annotate(
            f"{_num(median)} s",
            (max(median, q3), position),
            va="center",
            fontsize=8,
            xytext=(4, 0),
            textcoords="offset points",
        )
    ax.set_xlim(right=max(rows["q3_s"].max(), medians.max()) * 4)
    _plain_log_ticks(ax.xaxis)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.set_title("Steady-state epoch time (epoch 1 excluded)")
    return _save(fig, plt, path)


def plot_accuracy(runs: Sequence[Run], path: Path, *, by: str, target: float | None) -> Path:
    """Test accuracy after each epoch against the epoch number or cumulative training time."""
    plt = _pyplot()
    multi = len(runs) > 1
    fig, ax = plt.subplots(figsize=(10, 4.6) if multi else (7, 4.2), layout="constrained")
    series: dict[tuple, list[tuple[str, str]]] = {}  # identical curves: drawn once, labels joined
    styles: dict[tuple, str] = {}
    for run in runs:
        for entry in run.of_kind("epoch"):
            history = entry.info["history"]
            accuracy = tuple(record["test_accuracy"] for record in history)
            if by == "epoch":
                x: tuple = tuple(record["epoch"] for record in history)
            else:
                x, total = (), 0.0
                for record in history:
                    total += record["train_seconds"]
                    x += (total,)
            name = _impl_label(entry.implementation, entry.info["device"])
            series.setdefault((x, accuracy), []).append((name, run.label))
            styles.setdefault((x, accuracy), "--" if entry.implementation == BASELINE else "-")
    for (x, accuracy), members in series.items():
        label = _joined_label(members, multi)
        ax.plot(x, accuracy, styles[(x, accuracy)], marker="o", markersize=3, label=label)
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            f"target {target:g}",
            (0.01, target),
            xycoords=("axes fraction", "data"),
            va="bottom",
            fontsize=8,
            color="grey",
        )
    if by == "epoch":
        ax.set_xlabel("epoch")
        ax.set_title("Test accuracy after each epoch")
    else:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        ax.set_xlabel("cumulative training wall time [s] (evaluation excluded; log scale)")
        ax.set_title("Test accuracy against training time")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    if multi:  # long labels: beside the plot, not over it
        fig.legend(loc="outside right upper", fontsize=7)
    else:
        ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _plain_log_ticks(axis) -> None:
    """Ticks at 1, 2, 5 × 10^k, labelled as plain numbers, on a log-scaled axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _predictions_figure(run: Run, entry: Entry, path: Path) -> str | None:
    """Draw the fastest implementation's predictions grid; return why not, or None."""
    import numpy as np

    sample = run.fmbench.get("sample") or {}
    predictions = entry.info.get("predictions")
    if not sample.get("images_uint8_base64") or not predictions:
        return "the run stored no sample images or predictions"
    from impls.figures import plot_predictions

    shape = tuple(sample["shape"])
    images = np.frombuffer(base64.b64decode(sample["images_uint8_base64"]), dtype=np.uint8)
    if images.size != math.prod(shape):
        return "the stored sample images are damaged"
    count = min(len(predictions), shape[0], len(sample["labels"]))
    plot_predictions(
        images.reshape(shape)[:count],
        np.asarray(sample["labels"][:count]),
        np.asarray(predictions[:count]),
        path,
        count=count,
    )
    return None


# ------------------------------------------------------------------ markdown


def _run_line(run: Run) -> str:
    settings = run.settings
    epochs = settings.get("epochs")
    parts = [
        f"`{run.path.name}`",
        f"{_short_date(run)} UTC",
        f"commit `{run.commit}`",
        f"machine **{run.label}**",
    ]
    if epochs:
        parts.append(f"{epochs} epochs per implementation (1 warm-up + {epochs - 1} timed)")
    if settings.get("threads"):
        parts.append(f"{settings['threads']} threads")
    return "- " + ", ".join(parts)


def _not_measured(runs: Sequence[Run], with_machine: bool) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    seen = set()
    for run in runs:
        for test in run.tests():
            outcome = test["outcome"]
            if outcome == "passed":
                continue
            impl = test.get("impl") or test.get("implementation") or test.get("kind", "?")
            reason = str(test.get("reason") or "").strip() or "(no reason given)"
            key = (run.label, impl, test.get("device"), outcome, reason)
            if key in seen:
                continue  # the same reason for each of an implementation's sweep points
            seen.add(key)
            row = {"machine": run.label} if with_machine else {}
            row.update(
                implementation=impl,
                device=str(test.get("device") or "—"),
                status=outcome,
                benchmark=test["nodeid"].split("::")[-1],
                reason=reason,
            )
            rows.append(row)
    return rows


def _notes(runs: Sequence[Run], frame, previous_lines: list[str]) -> list[str]:
    first = runs[0]
    settings = first.settings
    epochs = settings.get("epochs")
    timed = f"{epochs - 1}" if isinstance(epochs, int) else "the remaining"
    lines = ["## Method and caveats", ""]
    if any(run.settings.get("quick") for run in runs):
        lines += [
            "> **Smoke run (`--quick`)**: too few rounds to be a measurement; "
            "use it to check the pipeline, not to compare speed.",
            "",
        ]
    rounds = frame[frame["kind"] == "epoch"]["rounds"]
    few = rounds[rounds < MIN_ROUNDS]
    lines.append(
        "- **Timing.** Each implementation trains in its own worker process, started fresh. "
        f"Of its {epochs or '?'} epochs the first is warm-up (framework start-up, lazy "
        "initialisation, compilation: reported as *first epoch*) and the other "
        f"{timed} are the timed rounds (pytest-benchmark pedantic mode, one epoch per round, "
        "timed from the pytest process: the request to the worker adds well under a "
        "millisecond). The test set is evaluated between rounds, outside the timing. *Epoch* "
        "is the median round, *IQR* the interquartile range of the rounds; *examples/s* = "
        "training examples / median."
        + (f" {len(few)} row(s) have fewer than {MIN_ROUNDS} rounds." if len(few) else "")
    )
    lines.append(
        "- **The limit** is one read of the float32 training set (60000 × 784 × 4 B = 188 MB): "
        "`np.sum` over it, one contiguous block of rows per thread, nothing written, with the "
        "same thread count as the implementations. Every epoch must read every training pixel "
        "at least once, so *× limit* says how far an implementation is from that floor (one "
        "that kept the data as uint8 could in principle go below it)."
    )
    lines.append(
        "- **Time to accuracy**: cumulative training wall time, first epoch included and "
        "evaluation excluded, until the test accuracy measured after an epoch first reaches "
        f"the target; *not reached* within the {epochs or '?'} epochs otherwise."
    )
    lines.append(
        "- **Memory**: peak resident set size (`ru_maxrss`) of the implementation's own "
        "worker process, which runs nothing else: Python, the framework, the uint8 dataset "
        "(55 MB) and the implementation's copies of it. Child processes (DataLoader workers, "
        "forked from the worker and sharing most of its pages) are not added."
    )
    lines.append(
        f"- **Threads**: every framework was asked for {settings.get('threads', '?')} threads "
        "(`TrainConfig.threads`, and `OMP_NUM_THREADS`, `MKL_NUM_THREADS`, "
        "`OPENBLAS_NUM_THREADS`… set to the same in each worker's environment); what each "
        "applied is in the table *What each implementation ran with*."
    )
    registry: dict[str, dict] = {}
    for run in runs:
        registry.update(run.fmbench.get("registry") or {})
    present = {test.get("impl") for run in runs for test in run.tests()}
    own_order = sorted(
        name
        for name, entry in registry.items()
        if name in present and not entry.get("follows_shared_order", True)
    )
    if own_order:
        text = (
            f"- **Minibatch order**: {', '.join(own_order)} shuffles with its own seeded "
            "DataLoader sampler instead of the shared `MinibatchOrder(...).epoch(e)` that "
            "every other implementation follows, so its loss and accuracy differ slightly for "
            "that reason alone."
        )
        if BASELINE in own_order:
            text += (
                f" {BASELINE} also converts every image on the fly (`ToTensor`) and loads "
                "batches through DataLoader worker processes, as the book does: that is the "
                "cost it exists to show."
            )
        lines.append(text)
    if not frame[frame["kind"].isin(["batch", "threads"])].empty:
        sweep_rounds = settings.get("sweep_rounds", "?")
        lines.append(
            f"- **Sweep points**: one warm-up epoch, then {sweep_rounds} timed round(s), no "
            "evaluation in between. Each thread count runs in a fresh worker process, so "
            "settings a framework fixes at start-up (XLA's thread pools) are honoured."
        )
        excluded = first.fmbench.get("sweep_excluded") or {}
        excluded = {name: why for name, why in excluded.items() if name in present}
        if excluded:
            reasons = "; ".join(f"{name}: {why}" for name, why in excluded.items())
            lines.append(f"- **Left out of the sweeps**: {reasons}.")
    busy = []
    for run in runs:
        other = run.extra_machine.get("other_cpu_use") or {}
        cpus = run.extra_machine.get("logical_cpus")
        if _number(other.get("other_cpus")) and other["other_cpus"] > BUSY_OTHER_CPUS:
            busy.append(
                f"{run.label}: other processes kept {other['other_cpus']:.2f} of "
                f"{cpus or '?'} CPUs busy on average"
            )
    noisy = frame[
        frame["kind"].isin(["epoch", "limit"])
        & (frame["iqr_s"] > NOISY_IQR_FRACTION * frame["median_s"])
    ]
    noise_line = (
        f"- **Noise**: rows whose IQR exceeds {int(100 * NOISY_IQR_FRACTION)} % of the median "
        "are marked *noisy* in the Noise table"
    )
    if len(noisy):
        noise_line += f" (here: {', '.join(sorted(set(noisy['implementation'])))})"
    if busy:
        noise_line += (
            ". Other work was competing for the CPUs during the run ("
            + "; ".join(busy)
            + "): treat the timings as indicative"
        )
    lines.append(noise_line + ".")
    lines += previous_lines
    return lines


def render(runs: Sequence[Run], figures: Path, previous: Sequence[Run] = ()) -> str:
    """Write the figures into ``figures`` and return the Markdown text."""
    frame = results_frame(runs, previous)
    multi = len(runs) > 1
    pairs = _pair_previous(runs, previous)
    with_delta = bool(pairs)
    targets = {e.info.get("target_accuracy") for run in runs for e in run.of_kind("epoch")} or {
        run.settings.get("target_accuracy") for run in runs
    }
    target = next(iter(targets)) if len(targets) == 1 else None

    lines = ["# fmbench: softmax regression on Fashion-MNIST, side by side", ""]
    lines.append(
        f"Report generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from "
        f"{len(runs)} run{'s' if multi else ''}:"
    )
    lines += [_run_line(run) for run in runs]
    lines.append("")

    lines += ["## Epoch time and accuracy", ""]
    if frame[frame["kind"] == "epoch"].empty:
        lines += ["No implementation was measured (see below).", ""]
    else:
        table = main_table(frame, with_machine=multi, with_delta=with_delta, target=target)
        lines += [_md(table), ""]
        limit_rows = frame[frame["kind"] == "limit"]
        for _, row in limit_rows.iterrows():
            run = runs[int(row["run"])]
            limit = run.limit
            speed = (
                limit.info.get("gigabytes_per_second") or limit.info["bytes"] / limit.median / 1e9
            )
            lines.append(
                f"Limit{f' ({row.machine})' if multi else ''}: reading the float32 training set "
                f"once takes {_num(1000 * row['median_s'])} ms ({_num(speed)} GB/s, "
                f"{limit.info['threads']} thread{'s' if limit.info['threads'] != 1 else ''})."
            )
        lines.append("")
        lines.append(
            "Epoch: median seconds per training epoch (IQR in brackets). Speed-up: "
            f"{BASELINE}'s median / this median, same machine and device. × limit: this "
            "median / the time to read the float32 training set once."
        )
        lines.append("")

    failed = _not_measured(runs, multi)
    if failed:
        import pandas as pd

        lines += ["### Not measured", "", _md(pd.DataFrame(failed)), ""]

    previous_lines: list[str] = []
    if pairs:
        lines += ["### Compared with the previous run", ""]
        for index, (before, same_machine) in sorted(pairs.items()):
            lines.append(
                f"- {runs[index].label}: previous run `{before.path}` ({_short_date(before)} UTC, "
                f"commit `{before.commit}`)"
                + ("" if same_machine else " — **from another machine**: deltas mix hardware")
            )
        flagged = frame[frame["verdict"].isin(["regression", "improvement"])]
        lines.append("")
        if flagged.empty:
            lines.append("No change beyond the noise rule.")
        else:
            for _, row in flagged.sort_values("delta_pct", ascending=False).iterrows():
                what = "slower" if row["verdict"] == "regression" else "faster"
                point = f"{row['group']}: {row['implementation']} {row['device']}"
                if row["kind"] == "batch":
                    point += f", batch {int(row['batch_size'])}"
                elif row["kind"] == "threads":
                    threads = int(row["threads"])
                    point += f", {threads} thread{'s' if threads != 1 else ''}"
                lines.append(
                    f"- {'**regression**' if what == 'slower' else 'improvement'} — {point}: "
                    f"{_num(row['previous_median_s'])} s → {_num(row['median_s'])} s "
                    f"({row['delta_pct']:+.1f} %, {what} by more than the noise "
                    f"{_num(row['noise_s'], 2)} s)"
                )
        lines.append("")
        previous_lines.append(
            "- **Δ vs previous**: change of the median epoch time from the previous saved run "
            "of the same machine. Beyond the noise (▲ slower / ▼ faster) means it moved by more "
            f"than the larger of both runs' IQRs and more than {int(100 * RELATIVE_NOISE_FLOOR)} % "
            "of the previous median; otherwise *(noise)*. Runs differ by more than their own "
            "IQRs suggest (other load, clock, memory placement): re-run to confirm a flagged "
            "change."
        )
    elif previous:
        lines += ["*No previous run of the same machine to compare with.*", ""]

    lines += ["## Figures", ""]
    figure_lines = _figures(runs, frame, figures, multi=multi, target=target)
    lines += figure_lines

    for kind, title in (("batch", "Sweep: batch size"), ("threads", "Sweep: threads")):
        table = sweep_table(frame, kind, with_machine=multi)
        if table is None:
            continue
        lines += [f"## {title}", ""]
        lines.append(
            "Median seconds per epoch (IQR in brackets) · training examples per second."
            + (
                f" At {runs[0].settings.get('threads', '?')} threads."
                if kind == "batch"
                else f" At batch size {runs[0].settings.get('batch_size', 256)}."
            )
        )
        lines += ["", _md(table), ""]

    settings = settings_table(runs, with_machine=multi)
    if settings is not None:
        lines += ["## What each implementation ran with", "", _md(settings), ""]

    lines += ["## Noise", "", _md(noise_table(frame, with_machine=multi)), ""]
    lines += ["## Machine", "", _md(machine_table(runs)), ""]
    lines += _notes(runs, frame, previous_lines)
    lines.append("")
    return "\n".join(lines)


def _figures(runs: Sequence[Run], frame, figures: Path, *, multi: bool, target) -> list[str]:
    lines: list[str] = []
    rel = FIGURES_DIR
    if not frame[frame["kind"].isin(["epoch", "limit"])].empty:
        plot_epoch_times(frame, figures / "epoch_time.png", multi=multi)
        lines += [f"![Epoch time per implementation]({rel}/epoch_time.png)", ""]
    if any(run.of_kind("epoch") for run in runs):
        plot_accuracy(runs, figures / "accuracy_by_epoch.png", by="epoch", target=target)
        plot_accuracy(runs, figures / "accuracy_by_time.png", by="time", target=target)
        lines += [
            f"![Test accuracy per epoch]({rel}/accuracy_by_epoch.png)",
            f"![Test accuracy against training time]({rel}/accuracy_by_time.png)",
            "",
        ]
        fastest = min(
            ((run, e) for run in runs for e in run.of_kind("epoch")),
            key=lambda pair: pair[1].median,
        )
        why_not = _predictions_figure(*fastest, figures / "predictions.png")
        name = fastest[1].implementation
        if why_not is None:
            lines += [
                f"Predictions of the fastest implementation ({name}) on the first test images "
                "(true / predicted; wrong in red):",
                "",
                f"![Predictions of {name}]({rel}/predictions.png)",
                "",
            ]
        else:
            lines += [f"*No predictions grid: {why_not}.*", ""]
    return lines


# ----------------------------------------------------------- atomic output


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


# ---------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
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
        "--fail-on-failures",
        action="store_true",
        help="exit with status 1 (after writing the report) when a benchmark failed",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``fmbench report``; returns 0, 1 (--fail-on-failures and a benchmark failed) or 2 (error)."""
    args = _parser().parse_args(argv)
    try:
        files = list(args.files)
        if not files:
            newest = newest_saved(args.storage)
            if newest is None:
                raise ReportError(
                    f"no benchmark JSON given and none saved under {args.storage}: run "
                    "'nox -s bench' first, or pass files"
                )
            files = [newest]
        runs = load_runs(files)
        if args.previous == "none":
            previous: list[Path] = []
        elif args.previous == "auto":
            found = [find_previous(run, args.storage) for run in runs]
            previous = [run.path for run in found if run is not None]
        else:
            previous = [Path(args.previous)]
        report = build_report(files, args.out, previous or None)
    except ReportError as error:
        print(f"fmbench report: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {report}")
    failed = [
        f"{test['nodeid']}: {test.get('reason', '')}"
        for run in runs
        for test in run.tests()
        if test["outcome"] in ("failed", "error")
    ]
    if failed:
        print(f"{len(failed)} benchmark(s) failed (listed in the report):", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        if args.fail_on_failures:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
