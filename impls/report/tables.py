"""The report's tables, each built from the results frame or the runs as a DataFrame.

Cells are formatted here (:mod:`.text`); the numbers come from the frame
(:mod:`.frame`). pandas is imported inside the functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from impls.report.comparison import p_text
from impls.report.frame import BASELINE
from impls.report.result_time import time_to_result_text
from impls.report.runs import Run
from impls.report.seeds import mean_sd_text
from impls.report.text import number, plural, present, rounded
from impls.run_info import LoadAverage, OtherCpuUse, RegistryEntry

NOISY_IQR_FRACTION = 0.10  # IQR/median above this: the row is marked noisy


def noisy_mark(spread) -> str:
    """' *noisy*' after a cell whose IQR / median is above :data:`NOISY_IQR_FRACTION`."""
    return " *noisy*" if present(spread) and spread > NOISY_IQR_FRACTION else ""


def median_text(row) -> str:
    """'median (IQR)' of a row, the median rounded to what its IQR allows, marked noisy."""
    spread = row["iqr_fraction"]
    return f"{rounded(row['median_s'], spread)} ({number(row['iqr_s'], 2)})" + noisy_mark(spread)


def _rate_text(row) -> str:
    """The examples/s of a row, rounded to what its IQR allows, or '—'."""
    return rounded(row["examples_per_s"], row["iqr_fraction"], grouped=True)


def _delta_text(row) -> str:
    """The *Δ vs previous* cell of a results row."""
    if not present(row.get("verdict")):
        return "—"
    text = f"{row['delta_pct']:+.1f} %"
    p_value = row.get("p_value")
    p = p_text(p_value) if present(p_value) else ""  # the U test's, where it ran
    if row["verdict"] == "regression":
        return f"**{text} ▲ slower**" + (f" ({p})" if p else "")
    if row["verdict"] == "improvement":
        return f"{text} ▼ faster" + (f" ({p})" if p else "")
    return f"{text} (noise" + (f", {p})" if p else ")")


def _speedup_text(row) -> str:
    """The *speed-up* cell of an epoch row, marked when the baseline ran on another device."""
    speedup = row["speedup_vs_baseline"]
    if not present(speedup):
        return "—"
    text = f"{rounded(speedup, row['speedup_spread'])}×"
    if row["implementation"] == BASELINE:
        return text + " (baseline)"
    if other_baseline_device(row):
        text += f" (vs {row['speedup_baseline_device']} baseline)"
    return text


def other_baseline_device(row) -> bool:
    """Whether a row's speed-up is against the baseline on another device (the CPU's)."""
    device = row.get("speedup_baseline_device")
    return present(device) and device != row["device"]


# ---------------------------------------------------------------- the tables


def _memory_text(row) -> str:
    """The worker's own peak RSS, and with its children's where it had any."""
    own = number(row["peak_rss_mib"], 3)
    tree = row.get("peak_tree_pss_mib")
    return f"{own} ({number(tree, 3)} with workers)" if present(tree) else own


def main_table(frame, *, with_machine: bool, with_delta: bool, target: float | None):
    """The headline table: one row per implementation (and device, machine) plus the limit."""
    import pandas as pd

    rows = frame[frame["kind"].isin(["epoch", "limit"])].copy()
    rows["_limit"] = rows["kind"] == "limit"
    rows = rows.sort_values(["run", "_limit", "median_s"])
    target_text = number(target, 2) if target is not None else "target"
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
        record["strategy"] = row["strategy"] if present(row["strategy"]) else "—"
        record["epoch [s] median (IQR)"] = median_text(row)
        record["examples/s"] = "—" if is_limit else _rate_text(row)
        record[f"speed-up vs {BASELINE}"] = _speedup_text(row)
        record["× limit"] = (
            "—"
            if not present(row["limit_multiple"])
            else f"{rounded(row['limit_multiple'], row['limit_spread'])}×"
        )
        record["first epoch [s]"] = "—" if is_limit else number(row["first_epoch_s"])
        record["test accuracy (mean ± sd)"] = (
            "—" if is_limit else mean_sd_text(row, "final_test_accuracy")
        )
        record[f"time to {target_text} [s] from a fresh process"] = (
            "—" if is_limit else time_to_result_text(row)
        )
        record["peak RSS [MiB]"] = "—" if is_limit else _memory_text(row)
        if with_delta:
            record["Δ vs previous"] = _delta_text(row)
        table.append(record)
    return pd.DataFrame(table)


def sweep_table(frame, kind: str, *, with_machine: bool):
    """One row per implementation, one column per sweep value: 'median (IQR) · examples/s ·
    final test accuracy', marked noisy where the IQR is."""
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
        medians, spreads = {}, {}
        for value in values:
            cell = group[group[axis] == value]
            label = f"batch {value}" if kind == "batch" else plural(value, "thread")
            if cell.empty:
                record[label] = "—"
                continue
            point = cell.iloc[0]
            medians[value] = point["median_s"]
            spreads[value] = point["iqr_fraction"]
            accuracy = point["final_test_accuracy"]
            record[label] = (
                f"{rounded(point['median_s'], point['iqr_fraction'])} s "
                f"({number(point['iqr_s'], 2)}) · {_rate_text(point)}/s"
                + (f" · acc {accuracy:.4f}" if present(accuracy) else "")
                + noisy_mark(point["iqr_fraction"])
            )
        if kind == "threads" and len(medians) >= 2:
            low, high = min(medians), max(medians)
            spread = math.hypot(*(spreads[value] for value in (low, high)))
            ratio = rounded(medians[low] / medians[high], spread)
            record[f"speed-up {low}→{high} threads"] = f"{ratio}×"
        table.append(record)
    result = pd.DataFrame(table)
    order = index_cols + [c for c in result.columns if c not in index_cols]
    return result[order]


STARTUP_ORDER = ("load-cache", "cli-train", "compile-cold", "compile-warm")


def startup_table(frame, *, with_machine: bool, with_delta: bool):
    """One row per start-up measurement: what was timed, its median and its parts."""
    import pandas as pd

    rows = frame[frame["kind"] == "startup"].copy()
    if rows.empty:
        return None
    rank = {name: index for index, name in enumerate(STARTUP_ORDER)}
    rows["_rank"] = [rank.get(name, len(rank)) for name in rows["startup"]]
    rows = rows.sort_values(["run", "_rank", "implementation", "device"])
    table = []
    for _, row in rows.iterrows():
        record = {"machine": row["machine"]} if with_machine else {}
        parts = []
        if present(row["build_s"]):
            build = f"build {number(row['build_s'])} s"
            if present(row["compile_s"]):
                build += f" (of which compile {number(row['compile_s'])} s)"
            parts.append(build)
        if present(row["first_epoch_s"]):
            parts.append(f"first epoch {number(row['first_epoch_s'])} s")
        record.update(
            {
                "measurement": row["startup"],
                "implementation": row["implementation"],
                "device": row["device"] or "—",
                "median [s] (IQR)": median_text(row),
                "rounds": int(row["rounds"]),
                "medians of the parts": " + ".join(parts) or "—",
            }
        )
        if with_delta:
            record["Δ vs previous"] = _delta_text(row)
        table.append(record)
    return pd.DataFrame(table)


def noise_table(frame, *, with_machine: bool):
    """Rounds and spread of every main-table row and start-up measurement."""
    import pandas as pd

    rows = frame[frame["kind"].isin(["epoch", "limit", "compute", "startup"])].copy()
    rows["_startup"] = rows["kind"] == "startup"
    rows = rows.sort_values(["run", "_startup", "median_s"])
    table = []
    for _, row in rows.iterrows():
        spread = row["iqr_fraction"]
        record = {"machine": row["machine"]} if with_machine else {}
        name = row["implementation"]
        if row["kind"] == "compute":
            name = "compute floor (one large matrix product)"
        elif row["kind"] == "startup":
            name = f"start-up: {row['startup']}" + (
                "" if row["implementation"] == "data" else f" ({row['implementation']})"
            )
        record.update(
            {
                "benchmark": name,
                "rounds": int(row["rounds"]),
                "IQR / median": f"{100 * spread:.1f} %"
                + (" (noisy)" if spread > NOISY_IQR_FRACTION else ""),
                "min [s]": number(row["min_s"]),
                "max [s]": number(row["max_s"]),
                "max / min": f"{number(row['max_s'] / row['min_s'])}×",
            }
        )
        table.append(record)
    return pd.DataFrame(table)


# ------------------------------------------------------------------ machines


def _gib(value: int | None) -> str:
    """Bytes as 'N.N GiB', or '—'."""
    return "—" if value is None else f"{value / 2**30:.1f} GiB"


def machine_table(runs: Sequence[Run]):
    """Key facts of each run's machine, one column per run."""
    import pandas as pd

    columns = {}
    for run in runs:
        extra = run.extra_machine
        versions = extra.versions or {}
        blas = ", ".join(
            f"{b.internal_api} {b.version} "
            f"({b.architecture or '?'}, {b.num_threads or '?'} threads)"
            for b in extra.numpy_blas or []
        )
        cpus = f"{_or_dash(extra.logical_cpus)} ({extra.physical_cores or '—'})"
        torch = f"{versions.get('torch') or '—'} / {versions.get('torchvision') or '—'}"
        frameworks = extra.frameworks or {}
        devices = sorted({f.device_name for f in frameworks.values() if f.device_name})
        columns[run.label] = {
            "run": f"{run.short_date} UTC, commit {run.commit}",
            "CPU": extra.cpu_model or "—",
            "logical CPUs (physical cores)": cpus,
            "memory": _gib(extra.memory_bytes),
            "OS": extra.os or run.machine_info.system or "—",
            "Python": extra.python or run.machine_info.python_version or "—",
            "numpy (BLAS)": f"{versions.get('numpy') or '—'} ({blas or 'BLAS unknown'})",
            "torch / torchvision": torch,
            "jax / jaxlib / optax": " / ".join(
                versions.get(name) or "—" for name in ("jax", "jaxlib", "optax")
            ),
            "threads requested": _or_dash(extra.threads),
            "devices used": ", ".join(devices) or "—",
            "load average (1 min) start → end": _load_text(extra.load_average),
            "other processes' CPU use during the run": _other_text(extra.other_cpu_use),
        }
    frame = pd.DataFrame(columns)
    frame.insert(0, "", frame.index)
    return frame


def _or_dash(value: object) -> str:
    """``value`` as text, or '—' when unknown."""
    return "—" if value is None else str(value)


def _other_text(other: OtherCpuUse | None) -> str:
    """Other processes' average CPU use during the run, or '—'."""
    if other is None:
        return "—"
    return f"{other.other_cpus:.2f} CPUs on average over {other.wall_seconds:.0f} s"


def _load_text(load: LoadAverage | None) -> str:
    """The 1-minute load average at the start and end of the run, or '—'."""
    if load is None or not load.start or not load.end:
        return "—"
    return f"{load.start[0]} → {load.end[0]}"


def settings_table(runs: Sequence[Run], *, with_machine: bool):
    """What each implementation actually ran with (from its ``runtime_info``)."""
    import pandas as pd

    registry: dict[str, RegistryEntry] = {}
    table = []
    for run in runs:
        registry.update(run.fmbench.registry or {})
        for entry, case in run.trained("epoch"):
            runtime = case.runtime
            shared = registry.get(entry.implementation, RegistryEntry()).follows_shared_order
            record = {"machine": run.label} if with_machine else {}
            record.update(
                {
                    "implementation": entry.implementation,
                    "device": str(
                        runtime.get("device_name") or runtime.get("device") or case.device
                    ),
                    "threads applied": str(runtime.get("threads", "—")),
                    "minibatch order": "shared MinibatchOrder"
                    if shared
                    else "own DataLoader shuffle",
                    "build [s]": number(case.build_seconds),
                    "other settings": _runtime_text(runtime),
                }
            )
            table.append(record)
    return pd.DataFrame(table) if table else None


# Shown elsewhere (columns, the machine table) or bookkeeping that says nothing about speed.
_RUNTIME_SKIP = {
    "device", "device_name", "threads", "platform", "torch", "torchvision", "jax", "jaxlib",
    "optax", "x64_enabled", "xla_flags", "strategy",
}  # fmt: skip


def _runtime_text(runtime: dict) -> str:
    """The runtime settings not shown elsewhere, as 'key=value; ...'."""
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
