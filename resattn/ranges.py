"""Declared ranges: what values a setting may take, written once beside the setting's definition
(``MODEL_SETTINGS`` and ``DATA_SETTINGS`` in :mod:`resattn.config`, ``TRAINER_SETTINGS`` in
:mod:`resattn.study.settings`), and checked from there by the classes, the single-run CLI and the
study runner alike. A :class:`Setting` is one or more *forms* (an integer range, a number range,
a list of choices, a list of values, ...); a value is allowed when one form takes it. A refused
value raises :class:`SettingError`, one line naming the setting, the value and what is allowed.

No torch here (nor anywhere it imports): the runner checks every value before torch is loaded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

PLAIN = (str, int, float, bool, list, tuple, type(None))  # what a YAML file or command line can give


class SettingError(ValueError):
    """A value outside its setting's declared range: ``name=value: allowed: ...``."""


def _bound(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}" if high is not None else ""


@dataclass(frozen=True)
class Number:
    """An integer (``integer=True``: not a bool, not a float) or a finite number (an int or a float,
    not a bool), within the bounds given: ``ge``/``gt`` below, ``le``/``lt`` above."""

    integer: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def takes(self, value) -> bool:
        kinds = (int,) if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            return False
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def text(self) -> str:
        low = self.gt if self.gt is not None else self.ge
        high = self.lt if self.lt is not None else self.le
        bound = _bound(low, high, self.gt is not None, self.lt is not None)
        return f"{'an integer' if self.integer else 'a number'}{' ' + bound if bound else ''}"

    def outside(self):
        """A value of the right type just outside the range (for the fuzz test), or None."""
        step = 1 if self.integer else 1e-3
        for edge, sign in ((self.gt, 0), (self.ge, -step), (self.lt, 0), (self.le, step)):
            if edge is not None:
                value = (int(edge) if self.integer else float(edge)) + sign
                if not self.takes(value):
                    return value
        return None


@dataclass(frozen=True)
class Choice:
    """One of the listed values (compared with their types: ``56`` is not ``"56"``)."""

    values: tuple

    def takes(self, value) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)

    def text(self) -> str:
        return "one of " + ", ".join(map(repr, self.values)) if len(self.values) > 1 else repr(self.values[0])

    def outside(self):
        strings = [v for v in self.values if isinstance(v, str)]
        return strings[0].upper() + "X" if strings else None


@dataclass(frozen=True)
class Text:
    """A string; with ``pattern``, one matching it (``re.fullmatch``)."""

    what: str = "a string"
    pattern: str | None = None

    def takes(self, value) -> bool:
        return isinstance(value, str) and (self.pattern is None or re.fullmatch(self.pattern, value) is not None)

    def text(self) -> str:
        return self.what

    def outside(self):
        return "x" if self.pattern else None


@dataclass(frozen=True)
class Items:
    """A list (or tuple) of values each taken by ``item``: ``length`` of them if given, else at
    least ``min_length``; ``increasing``: strictly increasing."""

    item: Number
    length: int | None = None
    increasing: bool = False
    min_length: int = 1

    def takes(self, value) -> bool:
        if not isinstance(value, (list, tuple)) or not all(self.item.takes(v) for v in value):
            return False
        if len(value) != self.length if self.length else len(value) < self.min_length:
            return False
        return not self.increasing or all(a < b for a, b in zip(value, value[1:]))

    def text(self) -> str:
        count = f"{self.length}" if self.length else ("any number of" if self.min_length == 0 else "one or more")
        order = ", increasing" if self.increasing else ""
        return f"a list of {count} values{order}, each {self.item.text()}"

    def outside(self):
        bad = self.item.outside()
        return None if bad is None else [bad] * (self.length or 1)


@dataclass(frozen=True)
class ClassPath:
    """A class given as ``{class_path: ..., init_args: ...}`` (or a list of them), as LightningCLI
    config files give callbacks, loggers and plugins, or objects given from Python (a study worker's
    callbacks); what the class accepts is the full parse's."""

    what: str

    def takes(self, value) -> bool:
        values = value if isinstance(value, list) else [value]
        return bool(values) and all(
            isinstance(v.get("class_path"), str) if isinstance(v, Mapping) else not isinstance(v, PLAIN) for v in values
        )

    def text(self) -> str:
        return f"{self.what} given as {{class_path: ..., init_args: ...}} (or a list of them)"

    def outside(self):
        return None


NONE = Choice((None,))
BOOL = Choice((True, False))
Form = Number | Choice | Text | Items | ClassPath


@dataclass(frozen=True)
class Setting:
    """A setting's declared range: the forms its values may take (one of them must take a value)."""

    forms: tuple[Form, ...]

    def takes(self, value) -> bool:
        return any(f.takes(value) for f in self.forms)

    def text(self) -> str:
        return " or ".join(f.text() for f in self.forms)

    def check(self, name: str, value) -> None:
        """Raises :class:`SettingError` naming ``name``, ``value`` and the range when no form takes it."""
        if not self.takes(value):
            raise SettingError(f"{name}={value!r} is not allowed; allowed: {self.text()}.")

    def outside(self) -> list:
        """Values of the right type just outside the range, one per form that has one (fuzz test)."""
        return [v for v in (f.outside() for f in self.forms) if v is not None and not self.takes(v)]


def setting(*forms: Form) -> Setting:
    """``setting(Number(integer=True, ge=1), NONE)``: a declaration, read as its forms joined by "or"."""
    return Setting(tuple(forms))


def check_values(table: Mapping[str, Setting], values: Mapping, prefix: str = "") -> None:
    """Check each of ``values`` that ``table`` declares against its range (``prefix`` names the
    section in the message: ``model.``).

    Raises:
        SettingError: the first value outside its range.
    """
    for name, value in values.items():
        if name in table:
            table[name].check(prefix + name, value)


def markdown(tables: Mapping[str, Mapping[str, Setting]]) -> str:
    """The declared ranges as a markdown table, one row per setting (the docs page's listing)."""
    rows = ["| setting | allowed |", "|---|---|"]
    for section, table in tables.items():
        rows += [f"| `{section}.{name}` | {s.text()} |" for name, s in table.items()]
    return "\n".join(rows) + "\n"
