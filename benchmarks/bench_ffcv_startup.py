#!/usr/bin/env python
"""ffcv loader start-up: time to the first batch, with and without the shared compiled code.

Each measurement runs in a fresh Python process (so "cold" really is cold), once with
``DP4TL_FFCV_CODE_CACHE=0`` (ffcv's behaviour: every Loader JIT-compiles its pipeline) and once
with the table of compiled operations on (``ffcv_dp4tl.data.ffcv_compile``). In each process,
loaders are built in this order on the train split of a synth:tiny build:

1. train (random-resized crop + flip), the first loader of the process;
2. train again (same shape);
3. eval (center crop: a different shape);
4. eval again;
5. train, two deterministic views (seeded decoder: another shape);
6. the same with another data seed (the seeded decoder reads its seed at run time: same shape).

For each: construction seconds, seconds to the first batch, how much of it numba spent
compiling (outermost ``numba:compile`` events), and one steady batch for reference.
Writes the ``## ffcv loader start-up (CPU)`` section of BENCHMARKS.md.

    python benchmarks/bench_ffcv_startup.py [--data DIR] [--repeats 1] [--no-report]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._report import write_section  # noqa: E402

SECTION = "ffcv loader start-up (CPU)"
ROWS = ["train (first loader in the process)", "train again (same shape)",
        "eval (different shape)", "eval again (same shape)", "train, 2 seeded views (different shape)",
        "train, 2 seeded views, another data seed (same shape)"]


def child(data: str, batch_size: int, workers: int, resolution: int) -> dict:
    """Run in a fresh process: import, then the six loaders; returns the timings."""
    t0 = time.perf_counter()
    from numba.core import event as ev

    from ffcv_dp4tl.data import AugSpec, make_loader
    from ffcv_dp4tl.data import ffcv_compile
    import ffcv.loader  # noqa: F401 - part of the import cost
    import_s = time.perf_counter() - t0

    class Outermost(ev.Listener):
        def __init__(self):
            self.depth, self.start, self.total = 0, 0.0, 0.0

        def on_start(self, event):
            if self.depth == 0:
                self.start = time.perf_counter()
            self.depth += 1

        def on_end(self, event):
            self.depth -= 1
            if self.depth == 0:
                self.total += time.perf_counter() - self.start

    specs = [(AugSpec.for_train(), False, 0), (AugSpec.for_train(), False, 0),
             (AugSpec.for_eval(), False, 0), (AugSpec.for_eval(), False, 0),
             (AugSpec.for_train(views=2), True, 0), (AugSpec.for_train(views=2), True, 1)]
    rows = []
    for aug, det, seed in specs:
        lis = Outermost()
        with ev.install_listener("numba:compile", lis):
            t = time.perf_counter()
            ld = make_loader(data, "train", aug=aug, deterministic=det, batch_size=batch_size,
                             resolution=resolution, num_workers=workers, seed=seed)
            t1 = time.perf_counter()
            it = iter(ld)
            next(it)
            t2 = time.perf_counter()
            next(it)
            t3 = time.perf_counter()
            for _ in it:
                pass
        rows.append({"construct": t1 - t, "first": t2 - t1, "compile": lis.total, "steady": t3 - t2})
    return {"import": import_s, "rows": rows, "stats": dict(ffcv_compile.STATS)}


def run_child(args, data: Path, cache: bool) -> dict:
    env = {**os.environ, "DP4TL_FFCV_CODE_CACHE": "1" if cache else "0",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, __file__, "--child", str(data), "--batch-size", str(args.batch_size),
           "--workers", str(args.workers), "--resolution", str(args.resolution)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def markdown(args, res: dict[bool, list[dict]], meta: dict) -> str:
    def best(cache: bool, i: int, key: str) -> float:
        return min(r["rows"][i][key] for r in res[cache])

    mi, ver = meta["machine"], meta["versions"]
    lines = [
        f"**CPU** run, {meta['date']}. Machine: {mi['cpu']}, os.cpu_count()={mi['cpu_count']} "
        f"(affinity {mi['affinity']}); 1-min load average "
        f"{meta['load_start']:.2f} at start, {meta['load_end']:.2f} at end"
        + (f", niceness {os.nice(0)}" if os.nice(0) else "")
        + (" (the machine is shared: absolute seconds move with the other jobs; compare the "
           "columns of one run)." if meta["load_end"] > 1.5 or os.nice(0) else
           " (a quiet machine)."),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()) + ".",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Dataset: synth:tiny train split ({meta['num_train']} images), resolution "
        f"{args.resolution}, batch {args.batch_size}, {args.workers} decode thread(s). Every "
        f"process is fresh; best of {args.repeats} process(es) per column. `before` = "
        "`DP4TL_FFCV_CODE_CACHE=0` (ffcv 1.0.2's behaviour: each Loader JIT-compiles its "
        "pipeline on its first batch); `after` = compiled operations shared between Loaders "
        "of the same shape (`ffcv_dp4tl/data/ffcv_compile.py`). `compile` = seconds numba spent "
        "compiling during construction + first batch (outermost `numba:compile` events; "
        "construction compiles ffcv's memory reader eagerly: `before` in every Loader, `after` "
        "in the first only); what the first batch spends "
        "beyond compiling is ffcv's thread start, the file's first read and one batch of "
        "decoding (≈ `steady`).",
        "",
        f"Import of `ffcv_dp4tl.data` + ffcv (numba, torch): before {min(r['import'] for r in res[False]):.2f} s, "
        f"after {min(r['import'] for r in res[True]):.2f} s.",
        "",
        "| loader, in process order | construct s before / after | first batch s before / after "
        "| numba compile s before / after | steady batch s (after) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for i, name in enumerate(ROWS):
        lines.append(
            f"| {name} | {best(False, i, 'construct'):.2f} / {best(True, i, 'construct'):.2f} "
            f"| {best(False, i, 'first'):.2f} / **{best(True, i, 'first'):.2f}** "
            f"| {best(False, i, 'compile'):.2f} / {best(True, i, 'compile'):.2f} "
            f"| {best(True, i, 'steady'):.3f} |")
    stats = res[True][-1]["stats"]
    lines += [
        "",
        f"Table of compiled operations in the `after` process: {stats['misses']} compiled, "
        f"{stats['hits']} reused, {stats['unkeyed']} not keyable (compiled as before). The first "
        "loader of each shape still compiles: ffcv's Compiler has no on-disk cache (no numba "
        "`cache=True`; its stage functions are `exec`'d source), and the first loader of a "
        "process also pays numba's one-time typing of its own helpers. Construction is ffcv's "
        "Reader + page table (+ the memory reader, compiled by every Loader `before`, by the "
        "first `after`).",
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None,
                   help="an existing synth:tiny build's source folder (default: build one in a temp dir)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1, help="fresh processes per column (best is reported)")
    p.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--no-report", action="store_true", help="only print the table")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.batch_size, args.workers, args.resolution)))
        return 0
    from benchmarks.bench_data import load1, machine_info, versions

    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/bench_ffcv_startup.py", *sys.argv[1:]])
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = load1()
    with tempfile.TemporaryDirectory(prefix="dp4tl-startup-") as tmp:
        data = args.data
        if data is None:
            subprocess.run([sys.executable, "-m", "ffcv_dp4tl", "build", "synth:tiny", "--out", tmp],
                           check=True, cwd=REPO, capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
            data = Path(tmp) / "source"
        from ffcv_dp4tl.data.manifest import load_manifest

        num_train = load_manifest(data).split("train").num_samples
        res: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(args.repeats):  # interleaved, so both columns see the same load
            for cache in (False, True):
                res[cache].append(run_child(args, data, cache))
                print(f"[bench] cache={'on' if cache else 'off'}: "
                      + ", ".join(f"{r['first']:.2f}" for r in res[cache][-1]["rows"]),
                      file=sys.stderr, flush=True)
    meta = {"date": date, "command": command, "machine": machine_info(), "versions": versions(),
            "load_start": load_start, "load_end": load1(), "num_train": num_train}
    body = markdown(args, res, meta)
    print(f"## {SECTION}\n\n{body}")
    if not args.no_report:
        write_section(args.report, SECTION, body)
        print(f"updated section '## {SECTION}' of {args.report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
