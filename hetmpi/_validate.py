"""Checks for raw config values that collect one-line problems with their key paths.

Every field parser takes a raw value as ``yaml.safe_load`` gives it, the value's key path and a
:class:`Problems` list. It returns the checked, converted value, or :data:`INVALID` after
recording one line ``"key.path: problem, got X; fix"``. Reading the YAML is
:mod:`hetmpi.yamlfile`'s; a ``model.parameters`` entry is checked by :mod:`hetmpi.paramentry`.
"""

from __future__ import annotations

import copy
import difflib
import math
import numbers
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

from hetmpi.paths import path_problem


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


INVALID: Final = _Invalid()
"""Returned by a parser whose value was rejected (the reason is already recorded)."""


class Problems:
    """One-line problems in the order they were found."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, text: str) -> None:
        self.lines.append(f"{path or 'config'}: {text}")


def join(path: str, key: object) -> str:
    """The key path of ``key`` inside ``path``."""
    return f"{path}.{key}" if path else str(key)


def fmt_num(x: float) -> str:
    """A number as a person writes it: 0.5, 100, 2e4, -1e-6."""
    if isinstance(x, numbers.Integral):
        return str(int(x))
    x = float(x)
    if not math.isfinite(x) or x == 0 or 1e-3 <= abs(x) < 1e4:
        return f"{x:.12g}"
    mantissa, exponent = f"{x:.12e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def show(value: Any) -> str:
    """A raw value for the 'got X' part of a message, in YAML spelling, at most 60 characters."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, numbers.Real):
        text = fmt_num(value)
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(show(v) for v in value) + "]"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word`` ignoring case, or None when nothing is close."""
    lowered = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(word.lower(), list(lowered), n=1)
    return lowered[found[0]] if found else None


def unknown_key(key: str, allowed: Sequence[str], hints: Mapping[str, str]) -> str:
    """The message for a key not in ``allowed``; ``hints`` maps keys of other sections to
    where they belong ("under sampler")."""
    if key in hints:
        return f"unknown key; {key} belongs {hints[key]}"
    match = suggest(key, allowed)
    if match is not None:
        return f"unknown key; did you mean '{match}'?"
    return f"unknown key; allowed keys are {', '.join(allowed)}"


def placement_hints(
    tables: Mapping[str, Mapping[str, Field]], extra: Mapping[str, str]
) -> dict[str, str]:
    """For unknown_key: each key of each section's table -> "under <section>", plus ``extra``."""
    places: dict[str, list[str]] = {}
    for section, table in tables.items():
        for key in table:
            places.setdefault(key, []).append(section)
    return {**{k: "under " + " or ".join(where) for k, where in places.items()}, **extra}


def as_float(value: Any) -> float | None:
    """A number from a real or a numeric string ("1e4"); None for anything else, bool included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real | str):
        try:
            return float(value)
        except (ValueError, OverflowError):
            return None
    return None


def as_int(value: Any) -> int | None:
    """An integer from an int, an integral float or a numeric string ("2e5"); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    number = as_float(value)
    return int(number) if number is not None and number.is_integer() else None


INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def int64_problem(number: int) -> str | None:
    """Why ``number`` does not fit a 64-bit integer (what numpy and JAX store), or None."""
    if number > INT64_MAX:
        return f"must be at most {INT64_MAX} (the largest 64-bit integer), got {number}"
    if number < INT64_MIN:
        return f"must be at least {INT64_MIN} (the smallest 64-bit integer), got {number}"
    return None


def range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """'must be >= 1', 'must be between 0 and 1 (exclusive)', 'must be > 0 and <= 1', ..."""
    low_op, high_op = (">" if low_open else ">="), ("<" if high_open else "<=")
    if low is not None and high is not None:
        if low_open == high_open:
            kind = "exclusive" if low_open else "inclusive"
            return f"must be between {fmt_num(low)} and {fmt_num(high)} ({kind})"
        return f"must be {low_op} {fmt_num(low)} and {high_op} {fmt_num(high)}"
    if low is not None:
        return f"must be {low_op} {fmt_num(low)}"
    return f"must be {high_op} {fmt_num(high)}" if high is not None else ""


def as_mapping(value: Any, path: str, problems: Problems) -> Mapping[Any, Any] | None:
    """``value`` as a mapping (null counts as empty), or None after recording a problem."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.add(path, f"must be a mapping of keys to values, got {show(value)}")
        return None
    return value


def valid(values: Mapping[str, Any]) -> dict[str, Any]:
    """The parsed values without the rejected ones."""
    return {k: v for k, v in values.items() if v is not INVALID}


class Field(ABC):
    """Checks and converts one raw value."""

    @abstractmethod
    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        """The converted value, or INVALID after recording why."""


def parse_keys(
    raw: Mapping[Any, Any],
    path: str,
    table: Mapping[str, Field],
    problems: Problems,
    hints: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Parse each key of ``raw`` in document order; rejected values map to INVALID."""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        sub = join(path, key)
        if not isinstance(key, str) or key not in table:
            problems.add(sub, unknown_key(str(key), list(table), hints or {}))
            continue
        values[key] = table[key].parse(value, sub, problems)
    return values


@dataclass(frozen=True)
class _Number(Field):
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    auto: bool = False  # the string "auto", or null, means None
    nullable: bool = False  # null means None
    noun: ClassVar[str] = "a number"

    @abstractmethod
    def _convert(self, value: Any) -> float | int | None: ...

    def _alternatives(self) -> str:
        return " or auto" if self.auto else " or null" if self.nullable else ""

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if value is None and (self.auto or self.nullable):
            return None
        if self.auto and value == "auto":
            return None
        number = self._convert(value)
        if number is None:
            problems.add(path, f"must be {self.noun}{self._alternatives()}, got {show(value)}")
            return INVALID
        if isinstance(number, float) and not math.isfinite(number):
            problems.add(path, f"must be a finite number, got {show(value)}")
            return INVALID
        if isinstance(number, int) and int64_problem(number) is not None:
            problems.add(path, f"{int64_problem(number)}{self._alternatives()}")
            return INVALID
        too_low = self.low is not None and (
            number <= self.low if self.low_open else number < self.low
        )
        too_high = self.high is not None and (
            number >= self.high if self.high_open else number > self.high
        )
        if too_low or too_high:
            limits = range_text(self.low, self.high, self.low_open, self.high_open)
            problems.add(path, f"{limits}{self._alternatives()}, got {fmt_num(number)}")
            return INVALID
        return number


@dataclass(frozen=True)
class Int(_Number):
    """An integer; integral floats and numeric strings ("2e5") are accepted."""

    noun: ClassVar[str] = "an integer"

    def _convert(self, value: Any) -> int | None:
        return as_int(value)


@dataclass(frozen=True)
class Float(_Number):
    """A finite float; ints and numeric strings ("1e4", which YAML leaves a string) are accepted."""

    noun: ClassVar[str] = "a number"

    def _convert(self, value: Any) -> float | None:
        return as_float(value)


class Bool(Field):
    """true or false (YAML 1.1 also spells them yes/no, on/off)."""

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if isinstance(value, bool):
            return value
        problems.add(path, f"must be true or false, got {show(value)}")
        return INVALID


@dataclass(frozen=True)
class Choice(Field):
    """One string out of ``choices``."""

    choices: tuple[str, ...]

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if isinstance(value, str) and value in self.choices:
            return value
        allowed = ", ".join(f"'{c}'" for c in self.choices)
        text = f"must be one of {allowed}, got {show(value)}"
        match = suggest(value, self.choices) if isinstance(value, str) else None
        problems.add(path, text + (f"; did you mean '{match}'?" if match else ""))
        return INVALID


@dataclass(frozen=True)
class PathValue(Field):
    """A file system path (a leading ~ is expanded); resolving relative paths is the caller's."""

    nullable: bool = False  # null means None

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if value is None and self.nullable:
            return None
        if isinstance(value, str | os.PathLike) and str(value).strip():
            problem = path_problem(str(value))
            if problem is not None:
                problems.add(path, problem)
                return INVALID
            return Path(value).expanduser()
        alternative = " or null" if self.nullable else ""
        problems.add(path, f"must be a non-empty path string{alternative}, got {show(value)}")
        return INVALID


def _int_list(value: Any, path: str, problems: Problems, what: str) -> list[int] | None:
    if not isinstance(value, list | tuple):
        problems.add(path, f"must be {what}, got {show(value)}")
        return None
    items = [as_int(v) for v in value]
    for i, (raw, item) in enumerate(zip(value, items, strict=True)):
        if item is None:
            problems.add(f"{path}[{i}]", f"must be an integer, got {show(raw)}")
        elif item < 0:
            problems.add(f"{path}[{i}]", f"must be >= 0, got {item}")
        elif int64_problem(item) is not None:
            problems.add(f"{path}[{i}]", str(int64_problem(item)))
            items[i] = None
    ints = [i for i in items if i is not None]
    return ints if len(ints) == len(items) and all(i >= 0 for i in ints) else None


class IndexList(Field):
    """null, or a non-empty list of distinct indices >= 0, kept as a tuple."""

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if value is None:
            return None
        ints = _int_list(value, path, problems, "a list of indices or null")
        if ints is None:
            return INVALID
        if not ints:
            problems.add(path, "must not be empty; list at least one index or write null for all")
            return INVALID
        repeated = sorted({i for i in ints if ints.count(i) > 1})
        if repeated:
            problems.add(path, f"lists index {repeated[0]} more than once; list each index once")
            return INVALID
        return tuple(ints)


class IndexRange(Field):
    """null, or [start, stop] with 0 <= start < stop, kept as a tuple."""

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if value is None:
            return None
        ints = _int_list(value, path, problems, "[start, stop] or null")
        if ints is None:
            return INVALID
        if len(ints) != 2:
            problems.add(path, f"must be [start, stop] (two indices), got {show(value)}")
            return INVALID
        if ints[0] >= ints[1]:
            problems.add(path, f"start must be below stop, got {show(ints)}; stop is exclusive")
            return INVALID
        return (ints[0], ints[1])


class Bounds(Field):
    """[lower, upper], two finite numbers with lower < upper, kept as a tuple of floats."""

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        parsed = [as_float(v) for v in value] if isinstance(value, list | tuple) else []
        limits = [n for n in parsed if n is not None and math.isfinite(n)]
        if len(parsed) != 2 or len(limits) != 2:
            problems.add(path, f"must be [lower, upper], two finite numbers, got {show(value)}")
            return INVALID
        low, high = limits
        if low >= high:
            problems.add(
                path,
                f"lower bound must be below upper bound, got [{fmt_num(low)}, {fmt_num(high)}]; "
                "give them as [lower, upper]",
            )
            return INVALID
        return (low, high)


class AnyMapping(Field):
    """null, or a mapping kept as an unchecked deep copy (checked by its own module)."""

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        raw = as_mapping(value, path, problems)
        if raw is None:
            return INVALID
        return None if value is None else copy.deepcopy(dict(raw))


@dataclass(frozen=True)
class Section(Field):
    """A nested mapping: each key is checked by its field, then ``build`` makes the object.

    ``build(values, path, problems)`` gets the parsed values (rejected ones as INVALID) and
    returns the object or INVALID. Keys absent from the raw mapping whose field is a Section
    are parsed as empty mappings, so their defaults and required keys apply.
    """

    table: Mapping[str, Field]
    build: Callable[[dict[str, Any], str, Problems], Any]
    required: Mapping[str, str] = field(default_factory=dict)  # key -> how to fix it when missing
    hints: Mapping[str, str] = field(default_factory=dict)  # see unknown_key

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        raw = as_mapping(value, path, problems)
        if raw is None:
            return INVALID
        values = parse_keys(raw, path, self.table, problems, self.hints)
        for key, fix in self.required.items():
            if key not in raw:
                problems.add(join(path, key), f"required; {fix}")
        for key, sub in self.table.items():
            if key not in raw and isinstance(sub, Section):
                values[key] = sub.parse(None, join(path, key), problems)
        return self.build(values, path, problems)
