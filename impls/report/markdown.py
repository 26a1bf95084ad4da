"""The report's Markdown text: tables, comparison with the previous run, figures, notes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from impls.config import TrainConfig
from impls.report.baseline import baseline_section
from impls.report.comparison import comparison_lines
from impls.report.comparison import method_line as comparison_method_line
from impls.report.frame import BASELINE, results_frame
from impls.report.history import history_lines, machine_histories
from impls.report.plots import (
    from_fresh_process,
    plot_accuracy,
    plot_epoch_times,
    predictions_figure,
)
from impls.report.previous import pair_previous
from impls.report.replicas import replicas_section
from impls.report.result_time import method_line as result_time_method_line
from impls.report.result_time import time_to_result_lines
from impls.report.run_time import run_time_section
from impls.report.runs import Run
from impls.report.seeds import seed_frame, seed_lines, training_settings
from impls.report.sizes import size_section
from impls.report.spells import method_lines as spell_method_lines
from impls.report.spells import pause_caveat, spell_lines
from impls.report.tables import (
    NOISY_IQR_FRACTION,
    machine_table,
    main_table,
    noise_table,
    other_baseline_device,
    settings_table,
    startup_table,
    sweep_table,
)
from impls.report.text import markdown_table, number, plural, present, rounded
from impls.run_info import VISIT_TIMED, RegistryEntry, timed_epochs

FIGURES_DIR = "figures"
RESULTS_CSV = "results.csv"  # written beside the report by .build
BUSY_OTHER_CPUS = 0.2  # other processes' average CPU use above this: the run was not alone
MIN_ROUNDS = 5


def _run_line(run: Run) -> str:
    """One bullet naming a run: file, date, commit, machine and settings."""
    settings = run.settings
    epochs = settings.epochs
    parts = [
        f"`{run.path.name}`",
        f"{run.short_date} UTC",
        f"commit `{run.commit}`",
        f"machine **{run.label}**",
    ]
    per = " and seed" if len(settings.seeds or ()) > 1 else ""
    if epochs:
        timed = timed_epochs(epochs, settings.schedule)
        if settings.schedule == "blocks":
            how = f"1 warm-up + {timed} timed"
        else:
            how = f"1 warm-up, then visits of 1 untimed + {VISIT_TIMED} timed: {timed} timed"
        parts.append(f"{epochs} epochs per implementation{per} ({how})")
    if settings.threads:
        parts.append(f"{settings.threads} threads")
    training = training_settings(run)
    return "- " + ", ".join(parts) + (f"; training: {training}" if training else "")


def _not_measured(runs: Sequence[Run], with_machine: bool) -> list[dict[str, str]]:
    """One row per benchmark that failed, errored or was skipped, with its reason."""
    rows: list[dict[str, str]] = []
    seen = set()
    for run in runs:
        for test in run.tests():
            outcome = test.outcome
            if outcome == "passed":
                continue
            impl = test.name
            reason = (test.reason or "").strip() or "(no reason given)"
            key = (run.label, impl, test.device, outcome, reason)
            if key in seen:
                continue  # the same reason for each of an implementation's sweep points
            seen.add(key)
            row = {"machine": run.label} if with_machine else {}
            row.update(
                implementation=impl,
                device=test.device or "—",
                status=outcome,
                benchmark=test.nodeid.split("::")[-1],
                reason=reason,
            )
            rows.append(row)
    return rows


def _round_clock_text(runs: Sequence[Run]) -> str:
    """Which clock the timed rounds come from, for the runs' schema."""
    worker = "the worker's own clock around `train_epoch`, stored in pytest-benchmark's record"
    if all(run.fmbench.schema >= 4 for run in runs):
        return worker
    return (
        f"from schema 4 {worker}; before, the pytest process's clock around the request, "
        "which added its round trip (1 to 30 ms): *compare such runs with care*"
    )


def _clocks_text(runs: Sequence[Run]) -> str:
    """Which clock the history's seconds come from, for the runs' schema."""
    if all(run.fmbench.schema >= 2 for run in runs):
        return (
            " *First epoch*, *time to accuracy* and the accuracy-against-time figure come from "
            "the worker's own clock around `train_epoch` (the clock `fmbench train` prints), "
            "not from the request's round trip."
        )
    return ""


def _notes(runs: Sequence[Run], frame, previous_lines: list[str]) -> list[str]:
    """The *Method and caveats* section, ending with ``previous_lines``."""
    first = runs[0]
    settings = first.settings
    epochs = settings.epochs
    timed = f"{epochs - 1}" if epochs is not None else "the remaining"
    lines = ["## Method and caveats", ""]
    if any(run.settings.quick for run in runs):
        lines += [
            "> **Smoke run (`--quick`)**: too few rounds to be a measurement; "
            "use it to check the pipeline, not to compare speed.",
            "",
        ]
    rounds = frame[frame["kind"] == "epoch"]["rounds"]
    few = rounds[rounds < MIN_ROUNDS]
    lines.append(
        "- **Timing.** Each implementation trains in its own worker process, started fresh. "
        f"Of its {epochs or '?'} epochs (per seed) the first is warm-up (lazy "
        "initialisation, and compilation where a framework compiles on first call: reported "
        "as *first epoch*; JAX compiles ahead of time, while the trainer is built, which "
        "*Time to result* counts) and the other "
        f"{timed} are the timed rounds (one epoch per round, "
        + _round_clock_text(runs)
        + "); with several seeds every seed's timed rounds are pooled. The test "
        "set is evaluated between rounds, outside the timing. *Epoch* "
        "is the median round, *IQR* the interquartile range of the rounds; *examples/s* = "
        "training examples / median."
        + (f" {len(few)} row(s) have fewer than {MIN_ROUNDS} rounds." if len(few) else "")
        + _clocks_text(runs)
        + pause_caveat(runs)
    )
    lines += spell_method_lines(runs)
    lines.append(
        "- **The limit** is one read of the float32 training set (60000 × 784 × 4 B = 188 MB): "
        "`np.sum` over it, one contiguous block of rows per thread, nothing written, with the "
        "same thread count as the implementations. Every epoch must read every training pixel "
        "at least once, so *× limit* says how far an implementation is from that floor. An "
        "implementation that keeps the pixels as uint8 (its strategy says so) reads a quarter "
        "of those bytes, 47 MB: for it the float32 read is not a floor, and the sentence "
        "under the main table gives the uint8 read, derived from the same rate (not "
        "measured)."
    )
    if any(run.compute is not None for run in runs):
        lines.append(
            "- **The compute floor** is the other bound: every epoch computes x @ W and the "
            "weight gradient for each example (2 × 2 × 784 × 10 floating-point operations), and "
            "the floor is their time at the rate of one large float32 matrix product (NumPy's "
            "BLAS, same threads), the best rate this machine's BLAS reaches. The batches' "
            "products are small and skinny (256 × 784 by 784 × 10), which run far below that "
            "rate, so an epoch takes several times the floor even with nothing else in it."
        )
    target = settings.target_accuracy
    lines.append(
        result_time_method_line(f"{target:g}" if target is not None else "target")
        + f" *Not reached*: not within the {epochs or '?'} epochs."
    )
    lines.append(
        "- **Memory**: peak resident set size (`VmHWM` on Linux, else `ru_maxrss`) of the "
        "implementation's own "
        "worker process, which runs nothing else: Python, the framework, the uint8 dataset "
        "(55 MB) and the implementation's copies of it. For an implementation that starts "
        "processes of its own (d2l-reference's DataLoader workers, forked from the worker and "
        "sharing most of its pages), *with workers* is the peak of the worker's and its "
        "children's proportional set sizes summed (each shared page counted once): sampled "
        "every 0.1 s during epochs for children that live within one, before each epoch "
        "for children that live across epochs (data-parallel replicas), never during an "
        "epoch of an implementation without children; files before it do not have it."
    )
    lines.append(
        f"- **Threads**: every framework was asked for {settings.threads or '?'} threads "
        "(`TrainConfig.threads`, and `OMP_NUM_THREADS`, `MKL_NUM_THREADS`, "
        "`OPENBLAS_NUM_THREADS`… set to the same in each worker's environment); what each "
        "applied is in the table *What each implementation ran with*."
    )
    registry: dict[str, RegistryEntry] = {}
    for run in runs:
        registry.update(run.fmbench.registry or {})
    benchmarked = {test.name for run in runs for test in run.tests()}
    own_order = sorted(
        name
        for name, entry in registry.items()
        if name in benchmarked and not entry.follows_shared_order
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
        sweep_rounds = settings.sweep_rounds or "?"
        lines.append(
            f"- **Sweep points**: one warm-up epoch, then {sweep_rounds} timed round(s), no "
            "evaluation in between; *acc* is the test accuracy after the last of them (the "
            "run's first seed). The learning rate is the same at every batch size, so a larger "
            "batch takes fewer steps per epoch and reaches less in the same epochs. Each "
            "thread count runs in a fresh worker process, so "
            "settings a framework fixes at start-up (XLA's thread pools) are honoured."
        )
        excluded = first.fmbench.sweep_excluded or {}
        excluded = {name: why for name, why in excluded.items() if name in benchmarked}
        if excluded:
            reasons = "; ".join(f"{name}: {why}" for name, why in excluded.items())
            lines.append(f"- **Left out of the sweeps**: {reasons}.")
    busy = []
    for run in runs:
        other = run.extra_machine.other_cpu_use
        cpus = run.extra_machine.logical_cpus
        if other is not None and other.other_cpus > BUSY_OTHER_CPUS:
            busy.append(
                f"{run.label}: other processes kept {other.other_cpus:.2f} of "
                f"{cpus or '?'} CPUs busy on average"
            )
    noisy = frame[
        frame["kind"].isin(["epoch", "limit"]) & (frame["iqr_fraction"] > NOISY_IQR_FRACTION)
    ]
    noise_line = (
        f"- **Noise**: medians whose IQR exceeds {int(100 * NOISY_IQR_FRACTION)} % of the "
        "median are marked *noisy* in every table that gives one (main, sweeps, start-up) and "
        "in the Noise table; a median, rate or ratio is rounded to the place of its IQR's "
        "leading digit (a ratio's: both IQRs added in quadrature), 2 significant digits at "
        "least and 3 at most"
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


def render(
    runs: Sequence[Run],
    figures: Path,
    previous: Sequence[Run] = (),
    history: Sequence[Run] | None = None,
) -> str:
    """Write the figures into ``figures`` and return the Markdown text. ``history``: the
    saved runs each machine's history is drawn from (:mod:`.history`; None: no history)."""
    pairs = pair_previous(runs, previous)
    frame = results_frame(runs, previous, pairs)
    multi = len(runs) > 1
    with_delta = bool(pairs)
    targets = {case.target_accuracy for run in runs for _, case in run.trained("epoch")} or {
        run.settings.target_accuracy for run in runs
    }
    target = next(iter(targets)) if len(targets) == 1 else None

    lines = ["# fmbench: softmax regression on Fashion-MNIST, side by side", ""]
    lines.append(
        f"Report generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from "
        f"{plural(len(runs), 'run')}:"
    )
    lines += [_run_line(run) for run in runs]
    lines += [
        "",
        f"Every number per implementation, device, sweep point and seed: [`{RESULTS_CSV}`]"
        f"({RESULTS_CSV}) (one row each; the timing columns are the case's, its seeds' "
        "rounds pooled).",
        "",
    ]

    lines += ["## Epoch time and accuracy", ""]
    if frame[frame["kind"] == "epoch"].empty:
        lines += ["No implementation was measured (see below).", ""]
    else:
        table = main_table(frame, with_machine=multi, with_delta=with_delta, target=target)
        lines += [markdown_table(table), ""]
        limit_rows = frame[frame["kind"] == "limit"]
        for _, row in limit_rows.iterrows():
            threads = int(row["threads"])
            lines.append(
                f"{'- ' if multi else ''}Limit{f' ({row.machine})' if multi else ''}: "
                "reading the float32 training set "
                f"once takes {rounded(1000 * row['median_s'], row['iqr_fraction'])} ms "
                f"({rounded(row['gigabytes_per_s'], row['iqr_fraction'])} GB/s, "
                f"{plural(threads, 'thread')})." + _uint8_text(runs, frame, row)
            )
        lines += _floor_lines(runs, frame, multi)
        lines.append("")
        lines.append(
            "Epoch: median seconds per training epoch (IQR in brackets; *noisy* where the IQR "
            f"is over {int(100 * NOISY_IQR_FRACTION)} % of the median), every seed's timed "
            "rounds pooled. Strategy: what the implementation runs per epoch, in its own words "
            "(its `runtime_info`). Speed-up: "
            f"{BASELINE}'s median / this median, same machine and device"
            + _other_device_text(frame)
            + ". × limit: this median / the time to read the float32 training set once (for "
            "an implementation that reads uint8, a quarter of those bytes: see above). "
            "Medians, rates and ratios are rounded to the digits their IQR leaves meaningful "
            "(2 or 3). Test accuracy: after the last epoch, mean ± sd over the seeds. "
            f"Time to {number(target, 2) if target is not None else 'target'}: from starting "
            "a fresh process (start-up, import, build and compile included) to the epoch that "
            "first reaches the target, evaluation excluded; the median over the seeds (see "
            "*Time to result*)."
        )
        lines.append("")

    lines += spell_lines(runs, frame)
    failed = _not_measured(runs, multi)
    if failed:
        import pandas as pd

        lines += ["### Not measured", "", markdown_table(pd.DataFrame(failed)), ""]

    previous_lines: list[str] = []
    if pairs:
        lines += comparison_lines(runs, pairs, frame)
        previous_lines.append(comparison_method_line(frame["rule"].dropna()))
    elif previous:
        lines += ["*No previous run of the same machine to compare with.*", ""]
    else:
        lines += [
            "*No previous run on this machine was found or given (`--previous none`, or a first "
            "run here): nothing is compared, so no change is flagged.*",
            "",
        ]

    seeds = seed_frame(runs)
    lines += time_to_result_lines(frame, seeds, multi=multi, target=target)
    lines += seed_lines(runs, frame, seeds, target)

    startup = startup_table(frame, with_machine=multi, with_delta=with_delta)
    if startup is not None:
        lines += ["## Start-up", "", markdown_table(startup), ""]
        lines.append(
            "Each round of *cli-train* and *compile-…* runs in a fresh process. *load-cache*: "
            "the four files read from the suite's cache and verified (SHA-256), in the "
            "benchmark process. *cli-train*: the whole command as a user types it, after one "
            "untimed round that fills the OS page cache. *compile-cold* / *compile-warm*: "
            "building the trainer (tracing and compiling its programs) plus its first epoch, "
            "with an empty or an already filled persistent compilation cache; the worker's "
            "own report of a cache hit or miss is checked against the intended state."
        )
        lines.append("")

    lines += ["## Figures", ""]
    figure_lines = _figures(runs, frame, figures, multi=multi, target=target)
    lines += figure_lines
    if history is not None:
        lines += history_lines(machine_histories(runs, history), figures, FIGURES_DIR)

    for kind, title in (("batch", "Sweep: batch size"), ("threads", "Sweep: threads")):
        table = sweep_table(frame, kind, with_machine=multi)
        if table is None:
            continue
        lines += [f"## {title}", ""]
        lines.append(
            "Median seconds per epoch (IQR in brackets) · training examples per second · "
            "*acc*: test accuracy after the point's last epoch (*noisy* where the IQR is over "
            f"{int(100 * NOISY_IQR_FRACTION)} % of the median). " + _held_fixed(runs, frame, kind)
        )
        lines += ["", markdown_table(table), ""]
    lines += size_section(runs, figures, FIGURES_DIR, multi=multi)
    lines += baseline_section(runs, multi=multi)
    lines += replicas_section(runs, multi=multi)

    settings = settings_table(runs, with_machine=multi)
    if settings is not None:
        lines += ["## What each implementation ran with", "", markdown_table(settings), ""]

    lines += ["## Noise", "", markdown_table(noise_table(frame, with_machine=multi)), ""]
    lines += run_time_section(runs, multi=multi)
    lines += ["## Machine", "", markdown_table(machine_table(runs)), ""]
    lines += _notes(runs, frame, previous_lines)
    lines.append("")
    return "\n".join(lines)


def _uint8_text(runs: Sequence[Run], frame, row) -> str:
    """The read floor of uint8 pixels, derived from the float32 read ``row`` (a quarter of its
    bytes at its rate), and who reads uint8 (their strategy says so)."""
    limit = runs[int(row["run"])].limit.case
    epochs = frame[(frame["kind"] == "epoch") & (frame["run"] == row["run"])]
    readers = sorted(
        {r["implementation"] for _, r in epochs.iterrows() if "uint8" in str(r["strategy"])}
    )
    who = (
        f"what {', '.join(readers)} read"
        if readers
        else "what an implementation that keeps them as uint8 reads"
    )
    return (
        f" The same pixels as uint8 are a quarter of the bytes ({number(limit.bytes / 4e6)} MB, "
        f"{who}): about {rounded(250 * row['median_s'], row['iqr_fraction'])} ms at that rate "
        "(derived from the float32 read, not measured)."
    )


def _other_device_text(frame) -> str:
    """The speed-up's exception, where a row has one: a device the baseline did not run on
    (the frame then takes the baseline's CPU median)."""
    epochs = frame[frame["kind"] == "epoch"]
    if not any(other_baseline_device(row) for _, row in epochs.iterrows()):
        return ""
    return (
        f"; where {BASELINE} did not run on a row's device, against its CPU median instead, "
        "marked *(vs cpu baseline)*"
    )


def _held_fixed(runs: Sequence[Run], frame, kind: str) -> str:
    """What a sweep holds fixed, as its rows ran: the thread count of the batch sweep, the
    batch size of the thread sweep (else the run's settings, else TrainConfig's default)."""
    column = "threads" if kind == "batch" else "batch_size"
    ran = sorted({int(value) for value in frame[frame["kind"] == kind][column] if present(value)})
    if kind == "threads":
        sizes = ran or [runs[0].settings.batch_size or TrainConfig.batch_size]
        return f"At batch size {' / '.join(map(str, sizes))}."
    threads = ran or [runs[0].settings.threads]
    if len(threads) == 1 and threads[0]:
        return f"At {plural(threads[0], 'thread')}."
    return f"At {' / '.join(str(value or '?') for value in threads)} threads."


def _floor_lines(runs: Sequence[Run], frame, multi: bool) -> list[str]:
    """One sentence per run with a compute-floor measurement: the floor, and how far the
    fastest implementation is from it."""
    lines = []
    for _, row in frame[frame["kind"] == "compute"].iterrows():
        compute = runs[int(row["run"])].compute.case
        size = round((compute.flops_per_call / 2) ** (1 / 3))  # an n × n product: 2 n³ flop
        text = (
            f"{'- ' if multi else ''}Compute floor{f' ({row.machine})' if multi else ''}: "
            "an epoch's matrix products "
            f"(x @ W and the weight gradient, {number(compute.epoch_flops / 1e9)} GFLOP) "
            f"take {number(1000 * row['floor_s'])} ms at this machine's best float32 rate "
            f"({number(row['flops_per_s'] / 1e9)} GFLOP/s: one {size} × {size} product, "
            f"{plural(compute.threads, 'thread')})"
        )
        if present(row["floor_limit_multiple"]):
            text += f", {number(row['floor_limit_multiple'])}× the limit"
        epochs = frame[(frame["kind"] == "epoch") & (frame["run"] == row["run"])]
        if not epochs.empty:
            fastest = epochs.sort_values("median_s").iloc[0]
            text += (
                f"; the fastest implementation ({fastest['implementation']}) takes "
                f"{number(fastest['floor_multiple'])}× the floor"
            )
        lines.append(text + ".")
    return lines


def _figures(runs: Sequence[Run], frame, figures: Path, *, multi: bool, target) -> list[str]:
    """Draw the figures into ``figures``; return the Markdown lines that show them."""
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
            "Both figures draw each implementation's first seed. "
            + (
                "The time axis is the time to result's: each curve starts when its trainer "
                "was built in a fresh process (start-up, import, build) and adds the training "
                "epochs, evaluation excluded."
                if from_fresh_process(runs)
                else "The time axis is cumulative training time alone (evaluation excluded): "
                "these runs did not record the start-up before it (schema 3 does)."
            ),
            "",
        ]
        run, entry, case = min(
            ((run, entry, case) for run in runs for entry, case in run.trained("epoch")),
            key=lambda found: found[1].median,
        )
        why_not = predictions_figure(run, case, figures / "predictions.png")
        name = entry.implementation
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
