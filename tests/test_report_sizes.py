"""The report's Input size section: the fitted exponent, and runs from before the sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from impls.report.runs import load_runs
from impls.report.sizes import fitted_exponent, size_sweep
from impls.results import IMAGE_SIZE, ComputeFloor, ReadLimit, TrainingResult

REFERENCE = Path(__file__).resolve().parent / "data" / "schema1"  # runs from before the sweep


@pytest.mark.parametrize("exponent", [1.0, 0.5, 1.3])
def test_fitted_exponent_recovers_a_power_law(exponent):
    sizes = [28, 64, 112]
    seconds = [0.02 * (size * size) ** exponent for size in sizes]
    assert fitted_exponent(sizes, seconds) == pytest.approx(exponent)


def test_fitted_exponent_needs_two_sizes():
    assert fitted_exponent([64], [1.0]) is None
    assert fitted_exponent([28, 112], [1.0, 16.0]) == pytest.approx(1.0)


def test_runs_from_before_the_sweep_load_at_28_without_a_section():
    runs = load_runs(sorted(REFERENCE.glob("run-*.json")))
    assert runs
    for run in runs:
        cases = [entry.case for entry in run.entries]
        sized = [c for c in cases if isinstance(c, TrainingResult | ReadLimit | ComputeFloor)]
        assert sized and all(case.size == IMAGE_SIZE for case in sized)
        assert size_sweep(run) is None
