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


def significant_digits(value: Any, spread: Any) -> int:
    """The significant digits of ``value`` that its relative ``spread`` (IQR / median) leaves
    meaningful: down to the place of the spread's leading digit, at least 2 and at most 3
    (3 when the spread is unknown or zero)."""
    if not present(value) or not present(spread) or spread <= 0 or value == 0:
        return 3
    lead = math.floor(math.log10(abs(float(value))))
    noise = math.floor(math.log10(abs(float(value)) * float(spread)))
    return min(3, max(2, lead - noise + 1))


def rounded(value: Any, spread: Any, *, grouped: bool = False) -> str:
    """``value`` rounded to what its relative ``spread`` allows (:func:`significant_digits`),
    never in exponent notation, thousands separated when ``grouped``; '—' if absent.
    67.2 with a 4.5 % spread is '67', 1,313,951 is '1,310,000'."""
    if not present(value):
        return "—"
    value = float(value)
    if value == 0:
        return "0"
    digits = significant_digits(value, spread)
    places = digits - 1 - math.floor(math.log10(abs(value)))
    value = round(value, places)
    if value and math.floor(math.log10(abs(value))) + places >= digits:  # 99.96 -> 100
        places -= 1
        value = round(value, places)
    separator = "," if grouped else ""
    return f"{value:{separator}.{max(places, 0)}f}"


def with_device(name: str, device: str | None) -> str:
    """'jax (cuda)'; the name alone on the CPU (or no device recorded)."""
    return name if device in (None, "cpu") else f"{name} ({device})"


def plural(count: int, word: str) -> str:
    """'1 thread', '2 threads'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def markdown_table(frame) -> str:
    """``frame`` (a pandas DataFrame) as a Markdown table, cells left as they are."""
    return frame.to_markdown(index=False, disable_numparse=True)
