#!/usr/bin/env python3
"""Compare two results.json files (a pipeline's report or a bench's) apart from times.

A refactoring must not change behaviour: run the same command before and after it, then:

    python scripts/same_results.py BEFORE/results.json AFTER/results.json

The second run may work on a copy of the first run's runs folder (stages whose keys are
unchanged are then reused, and a changed key shows as a stage that ran again) or on a fresh one
of its own (every stage runs again, and deterministic recipes give the same results).

Prints every difference outside wall/CPU times, dates and load (paths under either file's
``config.runs_root`` compare relative to it; fields that only AFTER has are listed as
additions, not differences); exit status 0 when there is none, 1 otherwise, 2 on unreadable
input. Digests of checkpoints (a training stage's ``result_sha256``, a score stage's
``surrogate_hash``) hash files that record their own wall times (``Checkpoint.timings``), so two
fresh runs that trained equal weights never hash alike: where such digests differ, the files they
name are compared instead, everything in them but those times (weights, optimiser and RNG
states, recipe, identity), when both runs folders still hold the very files the digests were
taken of; otherwise the digests are a difference. ARCHITECTURE.md, "Changing the shape", shows
a run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

#: keys whose values are measurements of time or of the machine, where the run lived, or how it
#: showed itself (``progress``: bars on or off)
IGNORED = re.compile(r"(^|_)(s|seconds|cpu_s|cpu_seconds|time|date|created|finished|started|"
                     r"loadavg_1min|load1|machine|command|runs_root|reduction|cpu_reduction|"
                     r"progress)$")


#: fields holding a file's sha256 (``surrogate_hash``: the checkpoint that was scored;
#: ``result_sha256``: a stage's result files, ``pipeline.stages.RESULT_FILES``)
_FILE_HASH = re.compile(r"(_hash|_sha256)$")

#: the entries of a training checkpoint that are measurements of time
#: (``training.checkpoint.Checkpoint.timings``: seconds per trainer stage); the only entries two
#: fresh runs of one deterministic recipe write differently (found by comparing two such runs'
#: checkpoints entry by entry: weights, optimiser, RNG states and the rest were equal)
CHECKPOINT_TIMES = ("timings",)


def _in_runs(v: Any, roots: tuple[str, ...]) -> Any:
    """A path under either file's runs root, written relative to it: the AFTER run works on a
    copy of BEFORE's runs folder, and stages it reused still name files under BEFORE's root.
    Results written before 2026-12-07 hold paths as typed (``runs/pretrain-…``), relative to
    the folder their run started in: those are read against the working directory (run the
    script from that folder). Anything else unchanged."""
    if not isinstance(v, str):
        return v
    forms = (v,) if os.path.isabs(v) or "/" not in v else (v, os.path.abspath(v))
    for root in roots:
        root = os.path.abspath(root).rstrip("/") if root else ""
        for form in forms:
            if root and form.startswith(root + "/"):
                return "RUNS/" + form[len(root) + 1:]
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


def _timed_files(doc: Any, path: str) -> dict[str, Path] | None:
    """The checkpoint files behind the digest at ``path`` in the results ``doc`` (by name), when
    that digest is one of a file recording its own times and the files are still those the digest
    was taken of: ``/stages/NAME/result_sha256`` of a training stage (its folder's
    ``pipeline.stages.RESULT_FILES``, digested again by ``result_digest``) or
    ``/stages/NAME/surrogate_hash`` (the ``surrogate`` file it names). None otherwise: another
    field, files gone or replaced since."""
    parts = path.strip("/").split("/")
    if len(parts) != 3 or parts[0] != "stages" or not isinstance(doc, dict):
        return None
    name, field = parts[1], parts[2]
    stage = (doc.get("stages") or {}).get(name)
    if not isinstance(stage, dict) or not isinstance(stage.get(field), str):
        return None
    from ffcv_dp4tl.contracts.stage import RESULT_DIGEST
    from ffcv_dp4tl.fsutil import file_sha256
    from ffcv_dp4tl.pipeline.stages import RESULT_FILES, result_digest

    try:
        if field == RESULT_DIGEST and stage.get("kind") == "train":
            folder = Path(str((doc.get("stage_dirs") or {}).get(name, "")))
            if not folder.is_dir() or result_digest(folder, "train") != stage[field]:
                return None
            return {p.name: p for pat in RESULT_FILES["train"] for p in folder.glob(pat)
                    if p.is_file()}
        if field == "surrogate_hash" and isinstance(stage.get("surrogate"), str):
            f = Path(stage["surrogate"])
            return {"surrogate": f} if f.is_file() and file_sha256(f) == stage[field] else None
    except OSError:
        return None
    return None


def _equal(a: Any, b: Any) -> bool:
    """``a`` and ``b`` (what ``torch.load`` read) hold the same values: tensors and arrays of one
    dtype, shape and content (NaN equal to NaN), containers of equal members."""
    import numpy as np
    import torch

    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and (torch.equal(a, b) or (
                    a.is_floating_point() and bool(torch.isclose(a, b, 0, 0, True).all()))))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # (NaN)
    return type(a) is type(b) and bool(a == b)


def _same_apart_from_times(a: dict[str, Path], b: dict[str, Path]) -> bool:
    """The checkpoint files ``a`` and ``b`` (by name) are the same names holding the same values
    apart from :data:`CHECKPOINT_TIMES`; False too when one cannot be read."""
    if a.keys() != b.keys() or not a:
        return False
    from ffcv_dp4tl.training.checkpoint import torch_load_safe

    for name in a:
        try:
            u, v = torch_load_safe(a[name]), torch_load_safe(b[name])
        except Exception:  # noqa: BLE001 - unreadable: not shown equal, the digests stay a difference
            return False
        if not (isinstance(u, dict) and isinstance(v, dict)):
            return False
        if not _equal({k: x for k, x in u.items() if k not in CHECKPOINT_TIMES},
                      {k: x for k, x in v.items() if k not in CHECKPOINT_TIMES}):
            return False
    return True


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
    timed = []  # digests of checkpoints whose files hold the same apart from their times
    for line in out["changed"]:
        path = line.split(":")[0]
        fa, fb = _timed_files(a, path), _timed_files(b, path)
        if fa is not None and fb is not None and _same_apart_from_times(fa, fb):
            timed.append(line)
    out["changed"] = [line for line in out["changed"] if line not in timed]
    for line in timed:
        print(f"same apart from times: {line.split(':')[0]} (the checkpoints it digests differ "
              f"only in their recorded {', '.join(CHECKPOINT_TIMES)})")
    for kind in ("changed", "removed", "added"):
        for line in out[kind]:
            print(f"{kind}: {line}")
    same = not out["changed"] and not out["removed"]
    if out["changed"] and all(_FILE_HASH.search(line.split(":")[0]) for line in out["changed"]):
        print("(only file hashes differ: a checkpoint records its own wall times, so two runs "
              "that each trained theirs never hash alike, even with equal weights, and the "
              "files these name could not be compared apart from those times (gone, or "
              "replaced since); keep both runs folders as the runs left them, or rerun AFTER "
              "on a copy of BEFORE's runs folder to reuse them)")
    print("same apart from times" + (" (plus the additions above)" if out["added"] else "")
          if same else f"DIFFERENT: {len(out['changed'])} changed, {len(out['removed'])} removed")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
