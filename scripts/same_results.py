#!/usr/bin/env python3
"""Compare two results.json files (a pipeline's report or a bench's) apart from times.

A refactoring must not change behaviour: run the same command before and after it, the second
run on a copy of the first run's runs folder (stages whose keys are unchanged are then reused,
and a changed key shows as a stage that ran again), then:

    python scripts/same_results.py BEFORE/results.json AFTER/results.json

Prints every difference outside wall/CPU times, dates and load (paths under either file's
``config.runs_root`` compare relative to it; fields that only AFTER has are listed as
additions, not differences); exit status 0 when there is none, 1 otherwise, 2 on unreadable
input. ARCHITECTURE.md, "Changing the shape", shows a run.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

#: keys whose values are measurements of time or of the machine, where the run lived, or how it
#: showed itself (``progress``: bars on or off)
IGNORED = re.compile(r"(^|_)(s|seconds|cpu_s|cpu_seconds|time|date|created|finished|started|"
                     r"loadavg_1min|load1|machine|command|runs_root|reduction|cpu_reduction|"
                     r"progress)$")


#: fields holding a file's sha256 (``surrogate_hash``: the checkpoint that was scored)
_FILE_HASH = re.compile(r"_hash$")


def _in_runs(v: Any, roots: tuple[str, ...]) -> Any:
    """A path under either file's runs root, written relative to it: the AFTER run works on a
    copy of BEFORE's runs folder, and stages it reused still name files under BEFORE's root.
    Anything else unchanged."""
    for root in roots:
        root = root.rstrip("/")
        if root and isinstance(v, str) and v.startswith(root + "/"):
            return "RUNS/" + v[len(root) + 1:]
    return v


def diff(a: Any, b: Any, path: str, out: dict[str, list[str]], roots: tuple[str, ...] = ()
         ) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            p = f"{path}/{k}"
            if IGNORED.search(str(k)):
                continue
            if k not in a:
                out["added"].append(f"{p} = {json.dumps(b[k])[:120]}")
            elif k not in b:
                out["removed"].append(f"{p} (was {json.dumps(a[k])[:120]})")
            else:
                diff(a[k], b[k], p, out, roots)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (u, v) in enumerate(zip(a, b)):
            diff(u, v, f"{path}[{i}]", out, roots)
    elif _in_runs(a, roots) != _in_runs(b, roots):
        out["changed"].append(f"{path}: {json.dumps(a)[:120]} -> {json.dumps(b)[:120]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args(argv)
    try:
        a, b = (json.loads(p.read_text()) for p in (args.before, args.after))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out: dict[str, list[str]] = {"changed": [], "removed": [], "added": []}
    roots = tuple(str((d.get("config") or {}).get("runs_root", "")) if isinstance(d, dict) else ""
                  for d in (a, b))
    diff(a, b, "", out, roots)
    for kind in ("changed", "removed", "added"):
        for line in out[kind]:
            print(f"{kind}: {line}")
    same = not out["changed"] and not out["removed"]
    if out["changed"] and all(_FILE_HASH.search(line.split(":")[0]) for line in out["changed"]):
        print("(only file hashes differ: a checkpoint records its own wall times, so two runs "
              "that each trained theirs never hash alike, even with equal weights; rerun AFTER "
              "on a copy of BEFORE's runs folder to reuse them, or compare the weights)")
    print("same apart from times" + (" (plus the additions above)" if out["added"] else "")
          if same else f"DIFFERENT: {len(out['changed'])} changed, {len(out['removed'])} removed")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
