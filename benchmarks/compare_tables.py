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
the comparison of pruned runs is against the same baseline.

    python benchmarks/compare_tables.py docs/no-loss/paper docs/no-loss/paper-steps --method lm \\
        --labels epochs,steps --out docs/no-loss/steps-vs-epochs.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ffcv_dp4tl.bench.stats import (REFERENCE, after_holm, direction, format_interval, format_p,
                                    holm, paired_test)
from ffcv_dp4tl.errors import DP4TLError


def load_table(path: Path) -> dict[str, Any]:
    """A cost table's ``results.json`` (the file, or the ``--out`` folder holding it)."""
    f = path / "results.json" if path.is_dir() else path
    try:
        t = json.loads(f.read_text())
    except OSError as e:
        raise DP4TLError(f"{f}: cannot read it ({e.strerror or e}); pass a `dp4tl bench "
                         "cost-table` --out folder or its results.json") from None
    except json.JSONDecodeError as e:
        raise DP4TLError(f"{f}: not JSON ({e.msg}, line {e.lineno}); rerun `dp4tl bench "
                         "cost-table` or restore the file") from None
    if not isinstance(t, dict) or t.get("bench") != "cost-table" or not isinstance(t.get("rows"), list):
        raise DP4TLError(f"{f}: not the results.json of a `dp4tl bench cost-table` run")
    return t


def _accuracy(row: dict[str, Any], mode: str, criterion: str) -> float | None:
    v = row.get(f"{mode}_best_top1" if criterion == "best" else f"{mode}_top1")
    return float(v) if isinstance(v, (int, float)) else None


def _by_seed(t: dict[str, Any], method: str, ratio: float, mode: str) -> dict[int, float]:
    crit = t.get("criterion", "final")
    out = {}
    for r in t["rows"]:
        if r.get("method") == method and round(float(r.get("ratio", -1)), 6) == round(ratio, 6):
            acc = _accuracy(r, mode, crit)
            if acc is not None:
                out[int(r["seed"])] = acc
    return out


def compare(a: dict[str, Any], b: dict[str, Any], method: str) -> dict[str, Any]:
    """Paired B − A per (mode, ratio) of ``method``'s runs, seeds in both tables; the 0 %
    reference rows as well (``reference``). Holm over the pruned cells."""
    ca, cb = a.get("criterion", "final"), b.get("criterion", "final")
    if ca != cb:
        raise DP4TLError(f"the tables judge different epochs (criterion {ca} vs {cb}); render "
                         "one again with `dp4tl bench render OUT --criterion` to match")
    modes = [m for m in a.get("finetune", []) if m in b.get("finetune", [])]
    ratios = sorted({float(r["ratio"]) for t in (a, b) for r in t["rows"]
                     if r.get("method") == method and float(r["ratio"]) > 0})
    if not modes or not ratios:
        raise DP4TLError(f"no finetuning mode or pruned ratio of method {method!r} in both tables "
                         f"(A: methods {a.get('methods')}, modes {a.get('finetune')}; B: methods "
                         f"{b.get('methods')}, modes {b.get('finetune')})")
    cells, reference = [], []
    for mode in modes:
        ra, rb = _by_seed(a, REFERENCE, 0.0, mode), _by_seed(b, REFERENCE, 0.0, mode)
        seeds = sorted(set(ra) & set(rb))
        reference.append({"mode": mode, "seeds": seeds,
                          "max_abs_diff": max((abs(rb[s] - ra[s]) for s in seeds), default=None)})
        for ratio in ratios:
            xa, xb = _by_seed(a, method, ratio, mode), _by_seed(b, method, ratio, mode)
            seeds = sorted(set(xa) & set(xb))
            test = paired_test([xb[s] - xa[s] for s in seeds])
            cells.append({"mode": mode, "ratio": ratio, "seeds": seeds, "test": test,
                          "a_mean": sum(xa[s] for s in seeds) / len(seeds) if seeds else None,
                          "b_mean": sum(xb[s] for s in seeds) / len(seeds) if seeds else None})
    for c, p in zip(cells, holm([c["test"].get("p") for c in cells])):
        c["p_holm"] = p
        word = direction(c["test"])
        c["verdict"] = after_holm(word, p) if word else "no difference shown"
    return {"method": method, "criterion": ca, "cells": cells, "reference": reference}


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
        lines.append(f"| {c['mode'].upper()} | {round(100 * c['ratio'])} % | {a_m} | {b_m} | "
                     f"{format_interval(t.get('mean'), t.get('lo'), t.get('hi'))} | "
                     f"{t['wins']} / {t['losses']} of {t['n']} | {format_p(t.get('p'))} | "
                     f"{format_p(c['p_holm'])} | {c['verdict']} |")
    lines.append("")
    for r in res["reference"]:
        d = r["max_abs_diff"]
        lines.append(f"- 0 % reference, {r['mode'].upper()}: " + (
            "no seed in both tables" if d is None else
            f"the same runs in both tables ({len(r['seeds'])} seeds, identical accuracies)"
            if d == 0 else
            f"**differs** between the tables (up to {d:.2f} points over {len(r['seeds'])} seeds): "
            "the pruned runs are compared against different baselines"))
    return "\n".join(lines) + "\n"


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
