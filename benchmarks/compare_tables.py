#!/usr/bin/env python
"""Compare one method's target accuracy between two ``dp4tl bench cost-table`` runs, seed by seed.

Two tables that differ in one setting (``--pretrain-length epochs`` vs ``steps``, another
recipe, another ``--budget``) and ran the same seeds pair up: for every finetuning mode and
pruned ratio the method's run of seed *s* in table B is compared with its run of seed *s* in
table A. Each cell is a paired test over seeds (mean of B − A with its 95 % interval, wins and
losses, two-sided p), Holm-adjusted over the whole table, in the wording of the bench tables
(``ffcv_dp4tl.bench.stats``). The accuracy is the epoch each table's criterion names (``final``
or ``best``); tables judged by different criteria are refused.

The unpruned (0 %) runs are compared too: when the two tables share them (one runs folder, as
``--pretrain-length steps`` does, whose reference needs no stretch), every difference is 0 and
the comparison of pruned runs is against the same baseline. Only the ratios both tables ran are
compared, and only seeds with a finite accuracy in both (a diverged run's NaN is counted apart).
A table of several targets is compared on its first target (its ``rows``), as the output says.

    python benchmarks/compare_tables.py docs/no-loss/paper docs/no-loss/paper-steps --method lm \\
        --labels epochs,steps --out docs/no-loss/steps-vs-epochs.md
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ffcv_dp4tl.bench.cost_results import check_results
from ffcv_dp4tl.bench.stats import (REFERENCE, after_holm, direction, format_interval, format_p,
                                    holm, paired_test)
from ffcv_dp4tl.contracts.fields import KINDS
from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.fsutil import check_out_file, read_json

_is_number = KINDS["number"][1]  # (the contracts' own type rule)


def load_table(path: Path) -> dict[str, Any]:
    """A cost table's ``results.json`` (the file, or the ``--out`` folder holding it), checked
    by the rules ``dp4tl bench render`` reads it with (:func:`check_results`: every row typed,
    of the table's methods, ratios and seeds, none twice, each seed's reference present), so
    that a hand-edited or damaged table is refused here as it is there: this script typed the
    rows by a looser rule of its own."""
    f = path / "results.json" if path.is_dir() else path
    t = read_json(f, "cost-table results", fix="rerun `dp4tl bench cost-table` or restore the file",
                  missing="pass a `dp4tl bench cost-table` --out folder or its results.json")
    if not isinstance(t, dict) or t.get("bench") != "cost-table":
        raise DP4TLError(f"{f}: not the results.json of a `dp4tl bench cost-table` run")
    check_results(t, f)
    return t


def check_out(out: Path, tables: list[Path]) -> None:
    """Refuse, before any work, an ``--out`` that is a folder or lies in an input table's folder
    (its results.json, report.md or any file beside them): the Markdown replaced a table's
    results.json whole, and a folder died in ``os.replace`` (audit)."""
    check_out_file(out, "--out")
    for table in tables:
        folder = (table if table.is_dir() else table.parent).resolve()
        if out.resolve().is_relative_to(folder):
            raise DP4TLError(f"--out {out} lies in the folder of table {table} ({folder}), whose "
                             "files are a cost table's record: write the comparison elsewhere, "
                             "e.g. docs/no-loss/compare.md")


def _ratio(r: dict[str, Any]) -> float:
    return round(float(r["ratio"]), 6)


def _by_seed(t: dict[str, Any], method: str, ratio: float, mode: str) -> dict[int, float]:
    """``method``'s accuracy per seed at ``ratio`` (the epoch the table's criterion names);
    NaN for a run whose value is missing or not finite (a diverged run)."""
    key = f"{mode}_best_top1" if t.get("criterion", "final") == "best" else f"{mode}_top1"
    out = {}
    for r in t["rows"]:
        if r["method"] == method and _ratio(r) == ratio:
            v = r.get(key)
            out[r["seed"]] = float(v) if _is_number(v) and math.isfinite(v) else math.nan
    return out


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def compare(a: dict[str, Any], b: dict[str, Any], method: str) -> dict[str, Any]:
    """Paired B − A per (mode, ratio) of ``method``'s runs, seeds in both tables; the 0 %
    reference rows as well (``reference``). Holm over the pruned cells. ``a``, ``b``: tables as
    :func:`load_table` returns them (checked)."""
    ca, cb = a.get("criterion", "final"), b.get("criterion", "final")
    if ca != cb:
        raise DP4TLError(f"the tables judge different epochs (criterion {ca} vs {cb}); render "
                         "one again with `dp4tl bench render OUT --criterion` to match")
    modes = [m for m in a["finetune"] if m in b["finetune"]]  # (lists of strings: load_table)

    def ratios_of(t: dict[str, Any]) -> set[float]:
        return {_ratio(r) for r in t["rows"] if r["method"] == method and r["ratio"] > 0}
    only = ratios_of(a) ^ ratios_of(b)
    ratios = sorted(ratios_of(a) & ratios_of(b))
    if not modes:
        raise DP4TLError(f"no finetuning mode in both tables (A: {', '.join(a['finetune'])}; B: "
                         f"{', '.join(b['finetune'])}): compare tables that ran a common mode")
    if not ratios:
        def has(t: dict[str, Any]) -> str:
            return (", ".join(_percent(r) for r in sorted(ratios_of(t))) or
                    f"none (methods: {', '.join(map(str, t.get('methods') or [])) or 'none'})")
        raise DP4TLError(f"no pruned ratio of method {method!r} in both tables (A: {has(a)}; B: "
                         f"{has(b)}): compare tables that ran a common ratio of {method!r}")
    cells, reference = [], []
    for mode in modes:
        ra, rb = _by_seed(a, REFERENCE, 0.0, mode), _by_seed(b, REFERENCE, 0.0, mode)
        seeds = sorted(set(ra) & set(rb))
        # (the same diverged run in both tables is the same run: NaN against NaN is no difference)
        differs = [abs(rb[s] - ra[s]) if not (math.isnan(ra[s]) and math.isnan(rb[s])) else 0.0
                   for s in seeds]
        reference.append({"mode": mode, "seeds": seeds,
                          "max_abs_diff": max(differs, default=None)})
        for ratio in ratios:
            xa, xb = _by_seed(a, method, ratio, mode), _by_seed(b, method, ratio, mode)
            both = sorted(set(xa) & set(xb))
            seeds = [s for s in both if math.isfinite(xa[s]) and math.isfinite(xb[s])]
            test = paired_test([xb[s] - xa[s] for s in seeds])
            cells.append({"mode": mode, "ratio": ratio, "seeds": seeds, "test": test,
                          "not_finite": len(both) - len(seeds),
                          "a_mean": _mean([xa[s] for s in seeds]),
                          "b_mean": _mean([xb[s] for s in seeds])})
    for c, p in zip(cells, holm([c["test"].get("p") for c in cells])):
        c["p_holm"] = p
        word = direction(c["test"])
        c["verdict"] = (after_holm(word, p) if word else "no difference shown" if c["seeds"]
                        else "no seed in both tables")
    targets = [len(t.get("targets") or {}) > 1 for t in (a, b)]
    return {"method": method, "criterion": ca, "cells": cells, "reference": reference,
            "only_one_table": sorted(only), "first_target_only": any(targets)}


def markdown(res: dict[str, Any], labels: tuple[str, str], paths: tuple[str, str]) -> str:
    la, lb = labels
    lines = [f"Target test top-1 % of `{res['method']}`, {lb} (B, `{paths[1]}`) against {la} (A, "
             f"`{paths[0]}`), paired by seed ({res['criterion']} epoch). B − A: mean with its 95 % "
             "interval; wins / losses of B over seeds; p two-sided (Student t over seeds), Holm "
             "over the table's cells; *better* / *worse* = B's.", "",
             f"| mode | ratio | {la} (A) | {lb} (B) | B − A | wins / losses | p | p (Holm) | verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in res["cells"]:
        t = c["test"]
        a_m = "–" if c["a_mean"] is None else f"{c['a_mean']:.1f}"
        b_m = "–" if c["b_mean"] is None else f"{c['b_mean']:.1f}"
        nan = f" ({c['not_finite']} not finite)" if c["not_finite"] else ""
        lines.append(f"| {c['mode'].upper()} | {_percent(c['ratio'])} | {a_m} | {b_m} | "
                     f"{format_interval(t.get('mean'), t.get('lo'), t.get('hi'))} | "
                     f"{t['wins']} / {t['losses']} of {t['n']}{nan} | {format_p(t.get('p'))} | "
                     f"{format_p(c['p_holm'])} | {c['verdict']} |")
    lines.append("")
    if res["only_one_table"]:
        lines.append("- ratios in one table only, not compared: "
                     + ", ".join(_percent(r) for r in res["only_one_table"]))
    if res["first_target_only"]:
        lines.append("- a table of several targets: compared on its first target's rows only")
    for r in res["reference"]:
        d = r["max_abs_diff"]
        lines.append(f"- 0 % reference, {r['mode'].upper()}: " + (
            "no seed in both tables" if d is None else
            f"the same runs in both tables ({len(r['seeds'])} seeds, identical accuracies)"
            if d == 0 else
            f"**differs** between the tables (up to {d:.2f} points over {len(r['seeds'])} seeds): "
            "the pruned runs are compared against different baselines"))
    return "\n".join(lines) + "\n"


def _percent(ratio: float) -> str:
    return f"{100 * ratio:g} %"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="table A: a cost-table --out folder or its results.json")
    ap.add_argument("b", type=Path, help="table B, compared against A (B − A)")
    ap.add_argument("--method", default="lm", help="the method to compare (default lm)")
    ap.add_argument("--labels", default="A,B", help="names of A and B in the table, e.g. epochs,steps")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args(argv)
    labels = tuple(args.labels.split(","))
    if len(labels) != 2 or not all(labels):
        print(f"error: --labels needs two names, A,B (got {args.labels!r})", file=sys.stderr)
        return 2
    try:
        if args.out:
            check_out(args.out, [args.a, args.b])
    except DP4TLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        res = compare(load_table(args.a), load_table(args.b), args.method)
    except DP4TLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = markdown(res, labels, (str(args.a), str(args.b)))
    print(text, end="")
    if args.out:
        from ffcv_dp4tl.fsutil import atomic_write_text

        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
