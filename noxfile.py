"""Developer and benchmark sessions: ``nox -s tests``, ``nox -s bench``, ``nox -s lint``.

``nox -s spells`` checks that an injected slow spell leaves the main ratios in place.

``nox -s bench`` benchmarks every implementation and writes ``reports/latest/``;
``nox -s report -- FILES`` rebuilds the report from saved runs.

Sessions use nox's default virtualenv/pip backend on purpose: pip honours the
machine's torch cap and local wheels; uv would download several GB of CUDA wheels.
"""

from __future__ import annotations

import time
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
# Environments with torch and JAX are large (several GB): build them once, reuse after.
nox.options.reuse_venv = "yes"

ALL_BACKENDS = "numpy,cli,torch,jax,numba"

# The benchmark run's JSON (pytest-benchmark also autosaves a copy under .benchmarks/).
BENCH_JSON = Path(".benchmarks") / "last-run.json"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (every backend installed); extra arguments go to pytest."""
    session.install("-e", f".[{ALL_BACKENDS},test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and common bugs with ruff; extra arguments go to ruff check."""
    session.install("ruff")
    session.run("ruff", "check", *(session.posargs or ["."]))
    session.run("ruff", "format", "--check", "--diff", ".")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmark every implementation, then write the report into reports/latest/.

    Extra arguments go to pytest, e.g. ``nox -s bench -- --impl numpy --impl jax --quick``
    or ``-- --threads 1``; ``python -m pytest benchmarks --help`` lists the options.
    """
    session.install("-e", ".[all]")
    BENCH_JSON.parent.mkdir(exist_ok=True)
    started = time.time()
    ran = session.run(
        "python", "-m", "pytest", "benchmarks",
        "--benchmark-autosave", f"--benchmark-json={BENCH_JSON}",
        *session.posargs,  # --threads N (default: all cores) sets every framework's threads
        success_codes=[0, 1],  # a failing implementation is listed in the report
    )  # fmt: skip
    if ran is None:  # nox --install-only: nothing was run, so there is nothing to report
        return
    # Never report a stale run: the file must be this run's (the last one's stays if none).
    if not BENCH_JSON.is_file() or BENCH_JSON.stat().st_mtime < started:
        session.error(f"the benchmark run wrote no {BENCH_JSON}: nothing was measured")
    # Exits 1 after writing the report when a benchmark failed, so the session fails too.
    session.run(
        "python", "-m", "impls.report", str(BENCH_JSON),
        "--out", "reports/latest", "--previous", "auto", "--fail-on-failures",
    )  # fmt: skip


@nox.session
def spells(session: nox.Session) -> None:
    """Inject slow spells into the benchmark and check the main ratios hold (a quiet host).

    Extra arguments go to benchmarks/spell_check.py, e.g. ``-- --schedule blocks
    --schedule round-robin`` to see both schedules side by side.
    """
    session.install("-e", ".[numpy,jax,bench]")
    session.run("python", "benchmarks/spell_check.py", *session.posargs)


@nox.session
def report(session: nox.Session) -> None:
    """Rebuild reports/ from saved benchmark JSON: ``nox -s report -- FILES...``.

    Several files (several machines) are merged with the machine as a column. Without
    files, the newest run saved under .benchmarks/. ``--previous FILE|auto|none`` picks
    the run to compare with (default: the previous saved run of the same machine);
    ``--history FOLDER|none`` the saved runs each machine's history is drawn from
    (default: .benchmarks/; several files of one machine given: those alone).
    """
    session.install("-e", ".[bench]")
    session.run("python", "-m", "impls.report", "--out", "reports/latest", *session.posargs)
