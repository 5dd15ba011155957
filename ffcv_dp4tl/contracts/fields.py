"""Typed fields of the contract files: the one rule for a field that is missing or of the wrong
type. A hand-edited or damaged ``manifest.json`` / ``scores.json`` / mask sidecar must give one
line naming the file, the field, what it must be and what to do, never a ``TypeError`` from deep
inside a reader (``int("abc")``, iterating an ``int``, ``Path / None``)."""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from ..errors import DataError

#: the sentinel for "no default: the field is required"
REQUIRED = object()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and not isinstance(v, bool)


def _is_fraction(v: Any) -> bool:
    return _is_number(v) and 0 <= v <= 1  # (NaN is no fraction: it fails both comparisons)


def _is_nonneg(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v) and v >= 0  # (NaN fails it; Infinity too)


def _is_percent(v: Any) -> bool:
    return _is_number(v) and 0 <= v <= 100


def _is_names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, (str, int)) and not isinstance(x, bool)
                                       for x in v)


def repeats(items: list[Any]) -> list[Any]:
    """The items of ``items`` (hashable) that an earlier item equals, in order: what a list
    that stands for a set must not hold (``[0, 0, 3]`` → ``[0]``)."""
    seen: set[Any] = set()
    out = []
    for x in items:
        if x in seen:
            out.append(x)
        seen.add(x)
    return out


#: kind → (what the message says it must be, the check)
KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "count": ("a non-negative integer", _is_count),
    "int": ("an integer", _is_int),
    "number": ("a number", _is_number),
    "fraction": ("a number in [0, 1]", _is_fraction),  # (a top-1, a kept share)
    "nonneg": ("a finite number >= 0", _is_nonneg),  # (seconds, a load average)
    "percent": ("a percentage in [0, 100]", _is_percent),  # (a top-1 in %, the benches' tables)
    "numbers": ("a list of numbers", lambda v: isinstance(v, list) and all(_is_number(x) for x in v)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "names": ("a list of names", _is_names),
    # a set written as a list (a prune's kept units): a repeat is no unit kept twice, it is a
    # damaged list that counts too few units (an overlap of 0 for 50 %; audit)
    "nameset": ("a list of distinct names", lambda v: _is_names(v) and not repeats(v)),
    "strs": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "counts": ("a list of non-negative integers", lambda v: isinstance(v, list) and all(_is_count(x) for x in v)),
    "object": ("a JSON object", lambda v: isinstance(v, dict)),
    "objects": ("a list of JSON objects", lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v)),
}

#: kinds that are sets written as lists → the kind of list they are (whose items, when that
#: kind's check passes, make a repeat the one thing wrong: the message then names the item)
DISTINCT: dict[str, str] = {"nameset": "names"}


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def typed(data: Mapping[str, Any], key: str, kind: str, where: object, fix: str,
          default: Any = REQUIRED, error: type[DataError] = DataError) -> Any:
    """``data[key]`` checked against ``kind`` (a key of :data:`KINDS`).

    A missing field, or one that is ``null``, gives ``default``; without a default it is an
    error. A value of the wrong type is always an error: ``error`` with one line, e.g.
    ``DATA/manifest.json split 'train': field 'num_samples' must be a non-negative integer,
    got 'abc'; rebuild the dataset``.
    """
    value = data.get(key)
    if value is None:
        if default is REQUIRED:
            raise error(f"{where} lacks field {key!r}; {fix}")
        return default
    what, ok = KINDS[kind]
    if not ok(value):
        if kind in DISTINCT and KINDS[DISTINCT[kind]][1](value):  # right type, an item twice
            raise error(f"{where}: field {key!r} must be {what}, but lists "
                        f"{_show(repeats(value)[0])} more than once; {fix}")
        raise error(f"{where}: field {key!r} must be {what}, got {_show(value)}; {fix}")
    return value
