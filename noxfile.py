"""Developer and benchmark sessions: ``nox -s tests``, ``nox -s bench``, ``nox -s lint``.

Sessions use nox's default virtualenv/pip backend on purpose: pip honours the
machine's torch cap and local wheels; uv would download several GB of CUDA wheels.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
# Environments with torch and JAX are large (several GB): build them once, reuse after.
nox.options.reuse_venv = "yes"

ALL_BACKENDS = "numpy,cli,torch,jax"


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
