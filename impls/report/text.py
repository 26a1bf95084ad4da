"""Text shared by the report's modules: numbers, counts and Markdown tables.

Formatting only: every number shown is computed elsewhere (:mod:`impls.results`
for one measurement, :mod:`.frame` for comparisons between measurements).
"""

from __future__ import annotations

import math
from typing import Any


def present(value: Any) -> bool:
    """Whether ``value`` is neither None nor NaN (a frame's empty cell)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def number(value: Any, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, never in exponent notation; '—' if absent."""
    if not present(value):
        return "—"
    value = float(value)
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def plural(count: int, word: str) -> str:
    """'1 thread', '2 threads'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def markdown_table(frame) -> str:
    """``frame`` (a pandas DataFrame) as a Markdown table, cells left as they are."""
    return frame.to_markdown(index=False, disable_numparse=True)
