"""Shared input checks and the deterministic "keep the top fraction" rule.

Label mapping, feature mapping and the sample-wise baselines all end in "rank, keep the first
``round(fraction * n)``"; keeping that rule (and its tie-breaking) in one place makes every
method's selection reproducible bit-for-bit across runs and machines.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import DP4TLError


class ScoringError(DP4TLError):
    """Bad input to a scoring / selection function (wrong shape, length, range or ratio)."""


def as_vector(a: Any, name: str, *, kind: str = "f", allow_empty: bool = False) -> np.ndarray:
    """Return ``a`` as a 1-D NumPy array (float64 for ``kind="f"``, int64 for ``"i"``)."""
    if hasattr(a, "get") and type(a).__module__.split(".")[0] == "cupy":
        a = a.get()
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ScoringError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise ScoringError(f"{name} is empty")
    if kind == "i":
        if arr.size and arr.dtype.kind not in "iu":
            raise ScoringError(f"{name} must hold integer ids, got dtype {arr.dtype}")
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind not in "fiub":
        raise ScoringError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ScoringError(f"{name} contains NaN/Inf (first at index {bad}); fix the scores that produced it")
    return arr


def check_ids(ids: np.ndarray, n: int, name: str, what: str) -> None:
    """Every id must lie in ``[0, n)``; ``what`` names ``n`` in the message (e.g. num_classes)."""
    if ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= n:
            raise ScoringError(f"{name} must lie in [0, {n}) ({what}={n}), found values in [{lo}, {hi}]")


def check_positive_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ScoringError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def check_fraction(v: Any, name: str, *, low_open: bool, high_open: bool) -> float:
    """Validate a fraction in [0, 1] with the given open ends (so messages show the interval)."""
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    interval = f"{lo}0, 1{hi}"
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ScoringError(f"{name} must be a number in {interval}, got {v!r}")
    f = float(v)
    ok = math.isfinite(f) and (f > 0 if low_open else f >= 0) and (f < 1 if high_open else f <= 1)
    if not ok:
        raise ScoringError(f"{name} must be in {interval}, got {v!r}")
    return f


def keep_count(n: int, fraction: float, what: str) -> int:
    """``round(fraction * n)`` in floating point, >= 1. The product carries the float error of
    ``fraction`` (``1 - ratio``): a decimal half such as 0.3 * 15 = 4.5 is 4.500000000000001 and
    keeps 5, while 0.1 * 15 is 1.4999999999999996 and keeps 1. The rule is deterministic, so
    masks repeat. Exact decimal rounding would change cached masks under unchanged stage keys,
    so it stays as it is (a scan over N <= 1000 and ratios 0.00-0.99: 377 of 100,000 pairs
    differ from decimal half-to-even by one unit)."""
    m = round(fraction * n)
    if m < 1:
        raise ScoringError(
            f"keeping a fraction {fraction:g} of {n} {what} keeps none of them; "
            "use a smaller pruning ratio / larger keep fraction"
        )
    return min(int(m), n)


def rank(primary: np.ndarray, secondary: np.ndarray | None = None, tertiary: np.ndarray | None = None) -> np.ndarray:
    """Indices ordered by ``primary`` desc, then ``secondary`` desc, then ``tertiary`` asc
    (default: the index itself), i.e. a total, deterministic order."""
    n = primary.shape[0]
    keys = [np.arange(n) if tertiary is None else tertiary]
    if secondary is not None:
        keys.append(-secondary)
    keys.append(-primary)
    return np.lexsort(keys)
