"""Every seed of every training case as one tidy frame, and what the report says of the seeds.

The main run trains each implementation from every seed of ``--seeds``
(``RunSettings.seeds``, ``TrainingResult.seed_runs``); a sweep point is one seed.
:func:`seed_frame` holds one row per training case and seed: that seed's accuracy, the
epochs and training seconds to the target, and the parts of its time to result from a
fresh process (:meth:`~impls.results.TrainingResult.time_to_result_seconds`), also with
the build timed from an empty and from a filled compilation cache where the run timed
those (the *compile-cold* / *compile-warm* start-up rounds). It is the one source of
every per-seed number: the results frame's seed columns (:func:`seed_summary`), the
*Time to result* table (:mod:`.result_time`), the *Accuracy over seeds* section here
and ``results.csv`` (:mod:`.tidy`) all read it. pandas is imported inside the functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from impls.report.runs import Run
from impls.report.text import markdown_table, plural, present, with_device
from impls.results import (
    StartupResult,
    TrainingResult,
    best_test_accuracy,
    epochs_to_accuracy,
    final_test_accuracy,
    median_of,
    time_to_accuracy,
)
from impls.run_info import RegistryEntry

# The start-up measurements whose median build stands in for the run's own, and the
# frame's column of the time to result with each.
CACHE_BUILDS = {"compile-cold": "empty_cache", "compile-warm": "filled_cache"}
TARGET_STEP = 0.005  # the reached-by-all target is a multiple of this


def _cache_builds(run: Run) -> dict[tuple[str, str, str], float]:
    """(implementation, device, start-up name) -> the median build of those rounds."""
    builds = {}
    for entry in run.of_kind("startup"):
        case = entry.case
        if isinstance(case, StartupResult) and case.startup in CACHE_BUILDS:
            build = median_of(case.build_seconds)
            if build is not None:
                builds[(case.implementation, case.device, case.startup)] = build
    return builds


def seed_frame(runs: Sequence[Run]):
    """One row per training case (main run and sweep points) and seed, in the runs' order.

    Columns: run (the run's index), name, machine, kind, implementation, device,
    strategy, compilation_cache_warm (the runtime's, where it says), threads, batch_size,
    size, loader_workers, replicas, seed, epochs, target_accuracy, final_test_accuracy,
    best_test_accuracy, epochs_to_target, training_to_target_s (training epochs until the
    target, evaluation excluded), process_start_s, data_load_s, import_s, build_s,
    ready_s (start + import + build), time_to_result_s, and per :data:`CACHE_BUILDS`
    value V: build_V_s and time_to_result_V_s (None where the run has no such build).
    """
    import pandas as pd

    rows = []
    for index, run in enumerate(runs):
        builds = _cache_builds(run)
        for entry in run.entries:
            case = entry.case
            if not isinstance(case, TrainingResult):
                continue
            for seed_run in case.seed_runs:
                rows.append(_seed_row(run, index, entry.name, case, seed_run, builds))
    return pd.DataFrame(rows, columns=_COLUMNS)


_COLUMNS = [
    "run", "name", "machine", "kind", "implementation", "device", "strategy",
    "compilation_cache_warm", "threads", "batch_size", "size", "loader_workers", "replicas",
    "seed",
    "epochs", "target_accuracy", "final_test_accuracy", "best_test_accuracy",
    "epochs_to_target", "training_to_target_s", "process_start_s",
    "data_load_s", "import_s", "build_s", "ready_s", "time_to_result_s",
    *(f"{part}_{name}_s" for name in CACHE_BUILDS.values()
      for part in ("build", "time_to_result")),
]  # fmt: skip


def _seed_row(run: Run, index: int, name: str, case: TrainingResult, seed_run, builds) -> dict:
    """One case's numbers for one seed's history."""
    history, target = seed_run.history, case.target_accuracy
    row = {
        "run": index,
        "name": name,
        "machine": run.label,
        "kind": case.kind,
        "implementation": case.implementation,
        "device": case.device,
        "strategy": case.runtime.get("strategy"),
        "compilation_cache_warm": case.runtime.get("compilation_cache_warm"),
        "threads": case.threads,
        "batch_size": case.batch_size,
        "size": case.size,
        "loader_workers": case.loader_workers,
        "replicas": case.replicas,
        "seed": seed_run.seed,
        "epochs": len(history),
        "target_accuracy": target,
        "final_test_accuracy": final_test_accuracy(history),
        "best_test_accuracy": best_test_accuracy(history),
        "epochs_to_target": None if target is None else epochs_to_accuracy(history, target),
        "training_to_target_s": None if target is None else time_to_accuracy(history, target),
        "process_start_s": case.process_start_seconds,
        "data_load_s": case.data_load_seconds,
        "import_s": case.import_seconds,
        "build_s": case.build_seconds,
        "ready_s": case.ready_seconds(),
        "time_to_result_s": case.time_to_result_seconds(history),
    }
    for startup, label in CACHE_BUILDS.items():
        build = builds.get((case.implementation, case.device, startup))
        row[f"build_{label}_s"] = build
        row[f"time_to_result_{label}_s"] = (
            None if build is None else case.time_to_result_seconds(history, build_seconds=build)
        )
    return row


def seed_summary(seeds):
    """Per (run, name): seeds, the mean and sd of final_/best_test_accuracy over them,
    reached (the seeds that reached the target), ready_s, and the median, min and max of
    epochs_to_target, training_to_target_s and each time_to_result column over the seeds
    that reached it (sd None with one seed)."""
    import pandas as pd

    to_result = [c for c in seeds.columns if c.startswith("time_to_result")]
    numeric = ["final_test_accuracy", "best_test_accuracy", "epochs_to_target",
               "training_to_target_s", "ready_s", *to_result]  # fmt: skip
    values = seeds[["run", "name"]].join(seeds[numeric].apply(pd.to_numeric))
    grouped = values.groupby(["run", "name"], sort=False)
    summary = pd.DataFrame(
        {
            "seeds": grouped.size(),
            "reached": grouped["epochs_to_target"].count(),
            "ready_s": grouped["ready_s"].first(),
        }
    )
    for column in ("final_test_accuracy", "best_test_accuracy"):
        summary[f"{column}_mean"] = grouped[column].mean()
        summary[f"{column}_sd"] = grouped[column].std(ddof=1)
    for column in ("epochs_to_target", "training_to_target_s", *to_result):
        for statistic in ("median", "min", "max"):
            summary[f"{column}_{statistic}"] = grouped[column].agg(statistic)
    return summary.reset_index()


# ------------------------------------------------------------------- the report


def mean_sd_text(row, column: str) -> str:
    """'0.8213 ± 0.0040' for the mean and sd over seeds of ``column``; the value alone for
    one seed; '—' when absent."""
    mean, sd = row.get(f"{column}_mean"), row.get(f"{column}_sd")
    if not present(mean):
        return "—"
    return f"{mean:.4f}" + (f" ± {sd:.4f}" if present(sd) else "")


def reached_target(seeds) -> float | None:
    """The highest multiple of :data:`TARGET_STEP` that every seed of every main-run case
    reached (its best test accuracy), or None without one."""
    best = seeds.loc[seeds["kind"] == "epoch", "best_test_accuracy"].dropna()
    if best.empty:
        return None
    return round(math.floor(best.min() / TARGET_STEP + 1e-9) * TARGET_STEP, 3)


def missed_target(seeds) -> list[str]:
    """'impl seed S (best 0.8164)' for every main-run seed that did not reach its target."""
    rows = seeds[(seeds["kind"] == "epoch") & seeds["target_accuracy"].map(present)]
    missed = rows[~rows["epochs_to_target"].map(present)]
    multi = seeds["run"].nunique() > 1
    return [
        with_device(row["implementation"], row["device"])
        + (f" in {row['machine']}" if multi else "")
        + f" seed {seed_text(row['seed'])}"
        + f" (best {row['best_test_accuracy']:.4f})"
        for _, row in missed.iterrows()
    ]


def seed_text(seed) -> str:
    """A seed as written (a frame holds it as a float where a row has none), or '?'."""
    return str(int(seed)) if present(seed) else "?"


def seeds_table(frame, runs: Sequence[Run], *, with_machine: bool, target_text: str):
    """One row per main-run implementation: seeds, accuracy mean ± sd, target reached."""
    import pandas as pd

    rows = frame[frame["kind"] == "epoch"]
    if rows.empty:
        return None
    table = []
    for _, row in rows.sort_values(["run", "final_test_accuracy_mean"]).iterrows():
        registry = runs[int(row["run"])].fmbench.registry or {}
        shared = registry.get(row["implementation"], RegistryEntry()).follows_shared_order
        record = {"machine": row["machine"]} if with_machine else {}
        seeds = int(row["seeds"])
        reached = int(row["reached"])
        epochs = "—"
        if reached:
            low, high = int(row["epochs_to_target_min"]), int(row["epochs_to_target_max"])
            epochs = f"after epoch {low}" if low == high else f"after epochs {low}–{high}"
        record.update(
            {
                "implementation": row["implementation"],
                "device": row["device"] or "—",
                "minibatch order": "shared" if shared else "own DataLoader shuffle",
                "seeds": seeds,
                "final test accuracy (mean ± sd)": mean_sd_text(row, "final_test_accuracy"),
                "best test accuracy (mean ± sd)": mean_sd_text(row, "best_test_accuracy"),
                f"reached {target_text}": f"{reached} of {seeds}"
                + (f", {epochs}" if reached else ""),
            }
        )
        table.append(record)
    return pd.DataFrame(table)


def seed_lines(runs: Sequence[Run], frame, seeds, target: float | None) -> list[str]:
    """The *Accuracy over seeds* section."""
    target_text = f"{target:g}" if target is not None else "the target"
    table = seeds_table(frame, runs, with_machine=len(runs) > 1, target_text=target_text)
    if table is None:
        return []
    counts = sorted({int(n) for n in frame.loc[frame["kind"] == "epoch", "seeds"]})
    lines = ["## Accuracy over seeds", ""]
    lines.append(
        f"Each implementation trained from {' or '.join(map(str, counts))} "
        f"seed{'' if counts == [1] else 's'}: a seed draws the initial weights and the "
        "minibatch order, the same for every implementation that follows the shared order. "
        "Final: the test accuracy after the last epoch; best: the highest after any epoch; "
        "mean ± sample standard deviation over the seeds (the value alone for one seed)."
    )
    if counts == [1]:
        lines[-1] += " One seed says nothing of the spread: run with `--seeds 3` or more."
    lines += ["", markdown_table(table), ""]
    missed = missed_target(seeds)
    common = reached_target(seeds)
    if target is not None:
        lines.append(
            f"The target is the run's, {target_text} (`--target-accuracy`). "
            + (
                f"Not reached within the run's epochs: {', '.join(missed)}. "
                if missed
                else "Every seed of every implementation reached it. "
            )
            + (
                f"The highest multiple of {TARGET_STEP:g} that every seed of every "
                f"implementation reached is {common:g}."
                if common is not None
                else ""
            )
        )
        lines.append("")
    same = _same_accuracy(seeds, runs)
    if same:
        lines += [
            "The same final accuracy, seed by seed (shared initial weights and minibatch "
            f"order): {'; '.join(same)}.",
            "",
        ]
    return lines


def _same_accuracy(seeds, runs: Sequence[Run]) -> list[str]:
    """Groups of main-run implementations that follow the shared order (per run, each group
    said once) whose every seed ended at the same test accuracy to 4 decimals, each as
    'a = b = c (N seeds)'."""
    rows = seeds[seeds["kind"] == "epoch"]
    groups: list[str] = []
    for index, run_rows in rows.groupby("run", sort=False):
        registry = runs[int(index)].fmbench.registry or {}
        by_curve: dict[tuple, list[str]] = {}
        for (impl, device), case in run_rows.groupby(["implementation", "device"], sort=False):
            if not registry.get(impl, RegistryEntry()).follows_shared_order:
                continue
            key = tuple(
                zip(case["seed"], (round(a, 4) for a in case["final_test_accuracy"]), strict=True)
            )
            by_curve.setdefault(key, []).append(impl if device == "cpu" else f"{impl} ({device})")
        groups += [
            text
            for key, names in by_curve.items()
            if len(names) > 1
            and (text := " = ".join(names) + f" ({plural(len(key), 'seed')})") not in groups
        ]
    return groups


def training_settings(run: Run) -> str:
    """What the run's main cases trained with: learning rate, initial weights' std, batch
    size and seeds (the first main case's config; the run's settings for the seeds)."""
    cases = [case for _, case in run.trained("epoch")]
    config = cases[0].config if cases else {}
    seeds = run.settings.seeds or ([config["seed"]] if "seed" in config else [])
    parts = []
    for key, name in (("lr", "learning rate"), ("init_std", "initial weights' std")):
        if key in config:
            parts.append(f"{name} {config[key]:g}")
    batch = config.get("batch_size", run.settings.batch_size)
    if batch:
        parts.append(f"batch size {batch}")
    if seeds:
        parts.append(f"{plural(len(seeds), 'seed')} ({', '.join(map(str, seeds))})")
    return ", ".join(parts)
