"""Checked dataclasses for stored results: written with ``as_dict``, read back field by field.

A result file is JSON written by one version of fmbench and read by another, or
edited, truncated or corrupted on the way: :meth:`Stored.from_dict` checks every
field against its type annotation (numbers finite, lists of the item type,
nested dataclasses in turn), ignores keys it does not know (a newer file's) and
lets a field with a default be absent (an older file's), then runs the class's
own :meth:`Stored.validate` for ranges across fields. Any problem is a
:class:`ResultError` naming the field. :mod:`impls.results` and
:mod:`impls.run_info` define the format with it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any


class ResultError(ValueError):
    """A stored result does not match its definition; the message names the field."""


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked against a field's type annotation; a :class:`ResultError` if not."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(value, option, where)
            except ResultError as error:
                errors.append(str(error))
        raise ResultError(errors[0] if len(errors) == 1 else f"{where} is {value!r}: unexpected")
    if origin is list:
        if not isinstance(value, list):
            raise ResultError(f"{where} is {type(value).__name__}, not a list")
        (item,) = typing.get_args(annotation)
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ResultError(f"{where} is {type(value).__name__}, not an object")
        *_, item = typing.get_args(annotation) or (None,)  # dict[str, X]: each value checked
        if item is None:
            return value
        return {key: _check(v, item, f"{where}[{key!r}]") for key, v in value.items()}
    if annotation is Any:
        return value
    if annotation is float:
        if not is_number(value):
            raise ResultError(f"{where} is {value!r}, not a finite number")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ResultError(f"{where} is {value!r}, not an integer")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ResultError(f"{where} is {value!r}, not true or false")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ResultError(f"{where} is {value!r}, not a string")
        return value
    if dataclasses.is_dataclass(annotation):
        return _from_dict(annotation, value, where)
    raise TypeError(f"no check for {annotation!r}")  # a definition error, not bad data


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """An instance of dataclass ``cls`` from ``data``, every field checked; unknown keys ignored."""
    if not isinstance(data, Mapping):
        raise ResultError(f"{where} is {type(data).__name__}, not an object")
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.name not in data:
            if field.default is not dataclasses.MISSING:
                continue
            raise ResultError(f"{where} has no {field.name!r}")
        values[field.name] = _check(data[field.name], hints[field.name], f"{where}.{field.name}")
    instance = cls(**values)
    instance.validate(where)
    return instance


class Stored:
    """Mixin: ``as_dict`` for storing, ``from_dict`` for reading back with every field checked."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Any, where: str = "result") -> Any:
        return _from_dict(cls, data, where)

    def validate(self, where: str) -> None:
        """Checks across fields (ranges), beyond each field's type."""


def check_fraction(value: float | None, where: str) -> None:
    if value is not None and not 0 <= value <= 1:
        raise ResultError(f"{where} is {value!r}, not in [0, 1]")


def check_non_negative(value: float | None, where: str) -> None:
    if value is not None and value < 0:
        raise ResultError(f"{where} is {value!r}, negative")


def check_positive(value: float | None, where: str) -> None:
    if value is not None and not value > 0:
        raise ResultError(f"{where} is {value!r}, not positive")
