"""Time to result: what a user waits from a cold process to a model at the target accuracy.

Each part is a clock the run recorded (:class:`impls.results.TrainingResult`):
*start* is the worker process's start to its first reply (Python, the worker's imports,
the dataset loaded from the cache: *data*), *import* the framework's import, *build*
the trainer's build (converting the data, tracing, compiling), then every training epoch
until the test accuracy first reaches the target (evaluation excluded). The numbers per
seed are :func:`impls.report.seeds.seed_frame`'s; this module lays them out.
"""

from __future__ import annotations

from impls.report.text import markdown_table, number, present

# The build each row of an implementation takes: the run's own, or the median build of
# the compile-cold / compile-warm start-up rounds (an empty / a filled compilation cache).
BUILDS = {
    None: "as run",
    "empty_cache": "from an empty compilation cache",
    "filled_cache": "from a filled compilation cache",
}
NOT_RECORDED = "not recorded"


def method_line(target_text: str) -> str:
    """The Method's bullet on what each clock of the time to result covers."""
    return (
        f"- **Time to result** (*time to {target_text}* in the main table, the *Time to "
        "result* table, the accuracy-against-time figure): from starting a fresh worker "
        "process to the end of the training epoch after which the test accuracy first "
        "reaches the target. *Start*: from launching the worker to its first reply, timed "
        "from the pytest process (the Python interpreter, the worker's own imports, NumPy, "
        "and loading and verifying the dataset from the cache, *data*, timed by the worker); "
        "*import*: importing the implementation's module and its framework; *build*: "
        "building the trainer, which draws nothing new (the initial weights come with the "
        "request) but converts the data to the framework's arrays and, for JAX, traces and "
        "compiles every program ahead of time; then the training epochs until the target, "
        "the first epoch included (lazy initialisation, and compilation for frameworks that "
        "compile on first call) and evaluation excluded. Every part but *start* is the "
        "worker's `time.perf_counter`. The few pipe round trips between the parts (each "
        "far below a millisecond) are left out. Where the run timed the build with an "
        "empty and with a filled persistent compilation cache (*compile-cold* / "
        "*compile-warm*), those medians stand in for the run's own build in rows of their "
        "own. Files written before schema 3 did not record *start*: their time to result "
        "is *not recorded*."
    )


def _seconds(value) -> str:
    return number(value) if present(value) else "—"


def _whole(value) -> str:
    """An epoch count (a median of two may be a half)."""
    return f"{value:g}"


def _over_seeds(row, column: str, shown=number) -> str:
    """The median of ``column`` over the seeds that reached the target and its range when
    they differ, or 'not reached'."""
    if not int(row["reached"]):
        return "not reached"
    median, low, high = (row[f"{column}_{s}"] for s in ("median", "min", "max"))
    text = shown(median)
    if low != high:
        text += f" ({shown(low)}–{shown(high)})"
    return text


def time_to_result_text(row) -> str:
    """The main table's *time to target* cell: the time to result (as run) over the seeds,
    how many reached it when not all did, or why there is none."""
    if not present(row.get("seeds")):
        return "—"
    if not present(row.get("ready_s")):
        return NOT_RECORDED
    reached, seeds = int(row["reached"]), int(row["seeds"])
    text = _over_seeds(row, "time_to_result_s")
    return text + (f"; {reached} of {seeds} seeds" if 0 < reached < seeds else "")


def time_to_result_table(frame, seeds, *, with_machine: bool, target_text: str):
    """One row per main-run implementation and build (as run; from an empty or a filled
    compilation cache where timed): the parts of its time to result, and the total."""
    import pandas as pd

    rows = frame[frame["kind"] == "epoch"]
    if rows.empty:
        return None
    first = seeds.groupby(["run", "name"], sort=False).first()  # parts shared by the seeds
    table = []
    rows = rows.assign(_total=rows["time_to_result_s_median"]).sort_values(["run", "_total"])
    for _, row in rows.iterrows():
        parts = first.loc[(row["run"], row["name"])]
        for label, build_text in BUILDS.items():
            build = parts["build_s"] if label is None else parts[f"build_{label}_s"]
            if label is not None and not present(build):
                continue
            record = {"machine": row["machine"]} if with_machine else {}
            start = parts["process_start_s"]
            total_column = "time_to_result" + (f"_{label}" if label else "") + "_s"
            record.update(
                {
                    "implementation": row["implementation"],
                    "device": row["device"] or "—",
                    "build": build_text + _cache_state(parts, label),
                    "start [s] (data)": (
                        f"{number(start)} ({_seconds(parts['data_load_s'])})"
                        if present(start)
                        else NOT_RECORDED
                    ),
                    "import [s]": _seconds(parts["import_s"]),
                    "build [s]": _seconds(build),
                    "seeds reached": f"{int(row['reached'])} of {int(row['seeds'])}",
                    f"epochs to {target_text}": _over_seeds(row, "epochs_to_target", _whole),
                    "training [s]": _over_seeds(row, "training_to_target_s"),
                    "time to result [s]": _over_seeds(row, total_column)
                    if present(start)
                    else NOT_RECORDED,
                }
            )
            table.append(record)
    return pd.DataFrame(table)


def _cache_state(parts, label: str | None) -> str:
    """For the run's own build: whether its compilation cache was warm, where it says."""
    warm = parts.get("compilation_cache_warm")
    if label is not None or not present(warm):
        return ""
    return " (cache filled)" if warm else " (cache empty)"


def time_to_result_lines(frame, seeds, *, multi: bool, target: float | None) -> list[str]:
    """The *Time to result* section: the table and how to read it."""
    target_text = f"{target:g}" if target is not None else "target"
    table = time_to_result_table(frame, seeds, with_machine=multi, target_text=target_text)
    if table is None:
        return []
    lines = ["## Time to result", ""]
    lines.append(
        f"From a cold process to the target test accuracy ({target_text}): *start* (Python, "
        "imports and the dataset from the cache, of which *data* is the dataset), the "
        "framework's *import*, the trainer's *build* (converting the data; tracing and "
        "compiling, for JAX), then the training epochs until the target (evaluation "
        "excluded). Epochs, training and the total are the median over the seeds that "
        "reached the target, with their range in brackets; the other parts were timed once, "
        "in the worker every seed trained in. Where the run timed JAX's (or Numba's) build with "
        "an empty and with a filled compilation cache, each gets a row of its own: the "
        "first is a first run on a machine, the second every later one. See Method."
    )
    lines += ["", markdown_table(table), ""]
    return lines
