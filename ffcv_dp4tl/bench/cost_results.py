"""The record of a cost table, ``results.json``, checked where it is read back (``dp4tl bench
render``, ``benchmarks/compare_tables.py``): its rows are the record of the runs, and a reader
cannot tell a hand-edited number from a measured one, so every reader checks them by the rules
here, before anything is summarized or compared. (What writes the file, and renders it, is
:mod:`.cost_table`.)"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..contracts import Criterion, FinetuneMode, check_items, check_tol
from ..contracts.fields import typed
from ..errors import DataError, DP4TLError
from .stats import COST_STAGES, REFERENCE


#: what to do about a results.json that breaks :func:`check_results` (its rows are the record of
#: the runs: a render cannot tell a hand-edited number from a measured one)
RESULTS_FIX = ("restore the file, or rerun the cost table into a new --out (its stages are "
               "cached)")

#: the fields of a row (:func:`cost_row`), each a kind of :data:`~ffcv_dp4tl.contracts.fields.KINDS`:
#: accuracies are percentages, times seconds >= 0; ``null`` (a mode or a CPU time not measured)
#: passes where the field is optional
ROW_FIELDS: dict[str, str] = {
    "method": "str", "ratio": "number", "seed": "count", "target": "str",
    **{f"{k}_s": "nonneg" for k in (*COST_STAGES, "total", "selection", "lp", "ff")},
    **{f"{k}_cpu_s": "nonneg" for k in (*COST_STAGES, "total")},
    **{f"{m}_{k}": "percent" for m in FinetuneMode.values() for k in ("top1", "best_top1")},
    "train_kept": "count", "kept_sample_fraction": "fraction", "loadavg_1min": "nonneg",
    "surrogate_brought": "bool", "truth": "object", "estimated_s": "object",
}
#: the fields the summary reads of every row (:func:`~.stats.summarize`)
ROW_REQUIRED = ("method", "ratio", "seed", "surrogate_s", "score_s", "pretrain_s", "total_s",
                "selection_s")


def check_results(t: dict[str, Any], path: Path, own_criterion: bool = True) -> None:
    """A cost-table ``results.json`` read back for rendering, checked in one place before
    anything is summarized: its lists (methods, ratios, seeds, finetune: each item once),
    ``tol`` (:func:`~ffcv_dp4tl.contracts.check_tol`, the CLI's rule), and every row of
    ``rows`` / ``target_rows`` typed (:data:`ROW_FIELDS`), of one of the table's methods,
    ratios and seeds, not repeated, with the 0 % reference of every seed, a finetune mode
    listed only where rows hold its accuracies, and the ``warmup`` record (when there is one:
    results from before 2026-12-08 have none) typed. The summary trusts its rows: a hand-edited
    top-1 of 250, a negative time, a second copy of a row or a seed the header does not count
    became a table of results, and a ratio given as a string dropped a method silently.
    Each refusal is one :class:`DataError` line naming the file, the row and the field.
    ``own_criterion``: the file's ``criterion`` is the one rendered (none given instead)."""
    fix = RESULTS_FIX
    for key, kind in (("rows", "objects"), ("methods", "strs"), ("ratios", "numbers"),
                      ("seeds", "counts"), ("finetune", "strs")):
        typed(t, key, kind, path, fix)
        if key != "rows":
            try:
                check_items(f"{path}: field {key!r}", t[key])
            except DP4TLError as e:
                raise DataError(f"{e}; {fix}") from None
    bad = [r for r in t["ratios"] if not 0 <= r < 1]
    if bad:
        raise DataError(f"{path}: field 'ratios' holds {bad[0]!r}; ratios lie in [0, 1); {fix}")
    try:
        for mode in t["finetune"]:
            FinetuneMode.check(mode, f"{path}: field 'finetune' item")
        check_tol(typed(t, "tol", "number", path, fix, default=0.0), f"{path}: field 'tol'")
        if own_criterion:
            Criterion.check(typed(t, "criterion", "str", path, fix, default="final"),
                            f"{path}: field 'criterion'")
    except DataError:
        raise
    except DP4TLError as e:
        raise DataError(f"{e}; {fix}") from None
    warmup = typed(t, "warmup", "object", path, fix, default=None)
    if warmup is not None:  # (the untimed warm-up before the first stage run: its report line)
        where = f"{path} warmup"
        if typed(warmup, "ran", "bool", where, fix):
            typed(warmup, "seconds", "nonneg", where, fix)
            typed(warmup, "what", "str", where, fix)
        else:
            typed(warmup, "why", "str", where, fix, default="")
    _check_rows(t, "rows", path, fix)
    if t.get("target_rows") is not None:
        typed(t, "target_rows", "objects", path, fix)
        _check_rows(t, "target_rows", path, fix)


def _check_rows(t: dict[str, Any], key: str, path: Path, fix: str) -> None:
    """The rows of ``t[key]`` (see :func:`check_results`)."""
    methods, ratios, seeds = t["methods"], t["ratios"], t["seeds"]
    several = key == "target_rows"
    seen: dict[tuple[Any, ...], int] = {}
    for i, row in enumerate(t[key]):
        where = f"{path} {key}[{i}]"
        for name, kind in ROW_FIELDS.items():
            required = name in ROW_REQUIRED or (several and name == "target")
            typed(row, name, kind, where, fix, **({} if required else {"default": None}))
        method, ratio, seed = row["method"], row["ratio"], row["seed"]
        if method != REFERENCE and method not in methods:
            raise DataError(f"{where}: field 'method' is {method!r}, neither one of the table's "
                            f"methods ({', '.join(methods)}) nor the reference {REFERENCE!r}; {fix}")
        if method == REFERENCE and ratio != 0:
            raise DataError(f"{where}: field 'ratio' of the {REFERENCE} reference is {ratio!r}, "
                            f"not 0; {fix}")
        if method != REFERENCE and (ratio not in ratios or ratio == 0):
            raise DataError(f"{where}: field 'ratio' is {ratio!r}, not one of the table's pruned "
                            f"ratios ({', '.join(f'{r:g}' for r in ratios if r > 0)}); {fix}")
        if seed not in seeds:
            raise DataError(f"{where}: field 'seed' is {seed!r}, not one of the table's seeds "
                            f"({', '.join(map(str, seeds))}); {fix}")
        estimated = typed(row, "estimated_s", "object", where, fix, default={})
        for stage in estimated:
            if stage not in COST_STAGES:
                raise DataError(f"{where}: field 'estimated_s' names {stage!r}, not a stage of "
                                f"the cost ({', '.join(COST_STAGES)}); {fix}")
            typed(estimated, stage, "nonneg", f"{where} estimated_s", fix)
        check_row_once(seen, row, i, lambda k: f"{key}[{k}]", fix, f"{path} ", several)
    targets = list(dict.fromkeys(row.get("target") for row in t[key]))
    for target in targets:
        for seed in seeds:
            if (target, REFERENCE, 0, seed) not in seen:
                raise DataError(f"{path}: {key} holds no {REFERENCE} reference row for seed {seed}"
                                + (f" of target {target!r}" if several else "")
                                + f" (every seed's pruned runs are compared with it); {fix}")
    if not targets:
        raise DataError(f"{path}: {key} is empty: no {REFERENCE} reference row and no run; {fix}")
    if not any(m != REFERENCE for _, m, _, _ in seen):
        raise DataError(f"{path}: {key} holds no row of the table's methods "
                        f"({', '.join(methods)}), only the {REFERENCE} reference; {fix}")
    for mode in t["finetune"]:
        if not any(row.get(f"{mode}_top1") is not None for row in t[key]):
            raise DataError(f"{path}: field 'finetune' lists {mode!r}, but no row of {key} holds "
                            f"a {mode}_top1; {fix}")


def check_row_once(seen: dict[tuple[Any, ...], int], row: dict[str, Any], i: int,
                   name: Callable[[int], str], fix: str, at: str = "",
                   several: bool = False) -> None:
    """Row ``i`` is the first of its (target, method, ratio, seed), recorded in ``seen`` (an
    identity to the index of its row); a second is a :class:`DataError` naming both rows
    (``name``: how a row index is written, ``at``: the file before it). The one rule for every
    reader of a cost table's rows: a summary averaged a copy in, a comparison let the last win."""
    method, ratio, seed = row["method"], row["ratio"], row["seed"]
    ident = (row.get("target"), method, ratio, seed)
    if ident in seen:
        raise DataError(f"{at}{name(i)}: a second row of {method!r} at ratio {ratio:g}, seed {seed}"
                        + (f", target {row['target']!r}" if several else "")
                        + f" (the first: {name(seen[ident])}); {fix}")
    seen[ident] = i
