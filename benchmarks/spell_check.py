"""Does a slow spell of the host move the main table's ratios? Inject spells and see.

Runs the benchmark (two implementations, main run only) quietly and then with a
spell injected at each chosen time (``--inject-spell``: as many CPU-burning
processes as threads), for each schedule asked, and prints the ratio of the two
implementations' median epochs in each run and its shift from the quiet run::

    nox -s spells                      # numpy/jax, 40 epochs, one seed, three 4 s spells
    python benchmarks/spell_check.py --schedule blocks --schedule round-robin

Spells count from the main run's first timed epoch. It exits 1 when a
round-robin run's ratio moved by more than ``--tolerance``, or when the canary
marked no round of a run with a spell (the spell missed the timed epochs, or the
canary missed the spell). The timing is the machine's: run it on an idle host.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from impls.report.runs import load_run  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--impl", action="append", default=[], help="two implementations (default numpy, jax)")
    add("--schedule", action="append", choices=("round-robin", "blocks"), default=[])
    add("--epochs", type=int, default=40, help="epochs of the main run (default 40)")
    add(
        "--at",
        default="1.5,4.5,7.5",
        help="seconds after the first timed epoch each spell starts, one run each (default "
        "1.5,4.5,7.5: about 6, 9 and 12 s after the session starts, its first 4.5 s start-up)",
    )
    add("--seconds", type=float, default=4.0, help="length of each spell (default 4)")
    add("--tolerance", type=float, default=0.10, help="largest shift allowed (default 0.10)")
    add("--threads", type=int, default=None, help="threads (default: the usable cores)")
    return parser


def bench_ratio(impls: Sequence[str], schedule: str, epochs: int, extra: Sequence[str]) -> dict:
    """One benchmark run in a subprocess: the two medians, their ratio, rounds in spells."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run.json"
        command = [
            sys.executable, "-m", "pytest", str(REPO_ROOT / "benchmarks"), "-q",
            "-p", "no:cacheprovider", "--no-sweeps", "--no-startup",
            f"--epochs={epochs}", "--seeds=1", f"--schedule={schedule}",
            f"--benchmark-json={out}",
            f"--benchmark-storage={Path(folder) / 'storage'}",
            *(f"--impl={name}" for name in impls), *extra,
        ]  # fmt: skip
        start = time.monotonic()
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        wall = time.monotonic() - start
        if done.returncode != 0 or not out.is_file():
            sys.exit(f"spell_check: the benchmark failed:\n{done.stdout[-3000:]}{done.stderr}")
        run = load_run(out)
    found = {m.implementation: m for m in run.of_kind("epoch")}
    for name in impls:
        if name not in found:
            reasons = [
                t.reason for t in run.tests() if name in (t.impl, t.implementation) and t.reason
            ]
            sys.exit(f"spell_check: {name} was not measured: {reasons[0] if reasons else '?'}")
    first, second = (found[name] for name in impls)
    spells = sum(sum(m.spell_rounds or ()) for m in (first, second))
    return {
        "medians": (first.median, second.median),
        "ratio": first.median / second.median,
        "marked": spells,
        "rounds": first.timing.rounds + second.timing.rounds,
        "wall": wall,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    impls = args.impl or ["numpy", "jax"]
    if len(impls) != 2:
        sys.exit("spell_check: give exactly two --impl (their ratio is what is checked)")
    schedules = args.schedule or ["round-robin"]
    try:
        starts = [float(part) for part in args.at.split(",") if part.strip()]
    except ValueError:
        sys.exit(f"spell_check: --at {args.at!r}: expected seconds separated by commas, e.g. 6,9")
    extra = [f"--threads={args.threads}"] if args.threads else []
    print(f"| schedule | spell | {impls[0]} | {impls[1]} | ratio | shift | in spells | run |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    moved_too_far = missed = False
    for schedule in schedules:
        quiet = None
        for at in [None, *starts]:
            spell = [] if at is None else [f"--inject-spell={at:g}:{args.seconds:g}"]
            result = bench_ratio(impls, schedule, args.epochs, extra + spell)
            quiet = quiet or result
            shift = result["ratio"] / quiet["ratio"] - 1
            if schedule == "round-robin" and abs(shift) > args.tolerance:
                moved_too_far = True
            if at is not None and result["marked"] == 0:
                missed = True
            label = "none" if at is None else f"{args.seconds:g} s at {at:g} s"
            first, second = result["medians"]
            print(
                f"| {schedule} | {label} | {first * 1e3:.1f} ms | {second * 1e3:.1f} ms "
                f"| {result['ratio']:.3f} | {shift:+.1%} | {result['marked']}/{result['rounds']} "
                f"| {result['wall']:.0f} s |",
                flush=True,
            )
    if moved_too_far:
        print(f"spell_check: a round-robin ratio moved by more than {args.tolerance:.0%}")
    if missed:
        print("spell_check: a run with a spell marked no round: the spell missed the epochs")
    return 1 if moved_too_far or missed else 0


if __name__ == "__main__":
    sys.exit(main())
