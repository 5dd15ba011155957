#!/usr/bin/env python
"""Scale (CPU): the data and selection paths at ImageNet's record count, on the CPU.

1. **Build** ``synth:imagenet`` (1000 classes; ``--train-per-class`` x 1000 train +
   ``--val-per-class`` x 1000 val records; the full 1280 + 50 is ImageNet's 1.33M) at a small
   ``--image-size`` (default 16 px): wall time, peak memory of the builder and its workers
   (``getrusage`` max RSS) and the size of every kind of file.
2. **Masks**: a class mask (half the classes), the full mask, save + load (validated).
3. **Epoch plans**: one epoch's shuffled order of the full and the class mask, one rank of 8.
4. **LM selection**: prediction histogram + softmax tie-break over ``--targets`` target images
   x 1000 classes, class selection, then the sample mask from ``labels.npy``.
5. **FM selection**: ``--targets`` target features vote for the nearest of ``--k`` centroids,
   the reciprocal-rank tie-break FM uses, cluster selection, then the sample mask from
   per-sample cluster ids.
6. **k-means**: one assignment pass (nearest of ``--k`` centroids, CPU backend) over
   ``--kmeans-n`` x ``--dim`` float32 features (default 1,281,167 x 512, K=2000).

Steps 2-6 report wall time and the peak of memory allocated during the step (``tracemalloc``:
numpy's buffers are traced). It prints a table and replaces ``## Scale (CPU)`` in BENCHMARKS.md
(``--report``; ``--no-report`` to skip).

    python benchmarks/bench_scale.py                       # full size (1.33M records; long)
    python benchmarks/bench_scale.py --train-per-class 40 --val-per-class 10 --kmeans-n 128000
    python benchmarks/bench_scale.py --smoke --no-report   # seconds (tests)
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import os
import resource
import shlex
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._report import write_section  # noqa: E402

SECTION = "Scale (CPU)"
FULL_KMEANS_N = 1_281_167


def log(msg: str) -> None:
    print(f"[bench_scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


class Step:
    """Time a step and the peak of what it allocates (tracemalloc)."""

    def __init__(self, rows: list, name: str, size: str):
        self.rows, self.name, self.size = rows, name, size

    def __enter__(self):
        gc.collect()
        tracemalloc.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if exc[0] is None:
            self.rows.append((self.name, self.size, dt, peak))
            log(f"{self.name}: {dt:.3f}s, peak {mib(peak)}")
        return False


def max_rss(who: int) -> int:
    return resource.getrusage(who).ru_maxrss * 1024  # KiB on Linux


def build(args, out: Path) -> dict:
    from beton_builders import BuildOptions, build_dataset
    from beton_builders.sources import resolve_source

    source = (f"synth:imagenet,train_per_class={args.train_per_class},"
              f"val_per_class={args.val_per_class},image_size={args.image_size},num_targets=0")
    specs = resolve_source(source)
    spec = specs.get("source") or next(iter(specs.values()))
    t0 = time.perf_counter()
    build_dataset(spec, out, BuildOptions(max_side=args.image_size, shard_size=args.shard_size,
                                          workers=args.workers, progress=False), source=source)
    seconds = time.perf_counter() - t0
    sizes: dict[str, int] = {}
    for p in out.rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            kind = ("beton" if p.suffix == ".beton" else "shards" if p.suffix == ".tar" else
                    "index/labels (.npy)" if p.suffix == ".npy" else "other (manifest, build metadata)")
            sizes[kind] = sizes.get(kind, 0) + p.stat().st_size
    return {"source": source, "seconds": seconds, "sizes": sizes,
            "rss_self": max_rss(resource.RUSAGE_SELF), "rss_children": max_rss(resource.RUSAGE_CHILDREN)}


def steps(args, ddir: Path) -> list:
    from ffcv_dp4tl.data import load_manifest
    from ffcv_dp4tl.data.masks import full_mask, load_mask, mask_from_classes, save_mask
    from ffcv_dp4tl.data.sampling import EpochPlan
    from ffcv_dp4tl.kernels import assign_nearest
    from ffcv_dp4tl.scoring import feature_mapping_scores
    from ffcv_dp4tl.scoring.feature_mapping import reciprocal_rank_votes
    from ffcv_dp4tl.scoring.label_mapping import (kept_sample_indices, label_mapping_scores,
                                                  select_classes, softmax_mass)

    info = load_manifest(ddir).split("train")
    n = info.num_samples
    labels = np.asarray(info.load_labels())
    rng = np.random.default_rng(0)
    rows: list = []
    half = list(range(0, 1000, 2))
    with Step(rows, "class mask (500 of 1000 classes)", f"{n:,} samples"):
        cmask = mask_from_classes(info, half, method="bench_scale")
    with Step(rows, "  reference: plain numpy `flatnonzero(isin(labels, classes))`", f"{n:,} samples"):
        ref = np.flatnonzero(np.isin(labels, half))
    assert np.array_equal(ref, cmask.indices), "class mask differs from the numpy reference"
    with Step(rows, "full mask", f"{n:,} samples"):
        fmask = full_mask(info)
    with Step(rows, "save + load mask (validated)", f"{len(cmask):,} indices"):
        save_mask(ddir / "bench_mask.npy", cmask)
        load_mask(ddir / "bench_mask.npy", info)
    with Step(rows, "epoch plan: shuffled order, full mask", f"{n:,} samples"):
        EpochPlan(fmask.indices, shuffle=True, seed=0).order(1)
    with Step(rows, "epoch plan: class mask, rank 3 of 8", f"{len(cmask):,} samples"):
        EpochPlan(cmask.indices, shuffle=True, seed=0, rank=3, world_size=8).order(1)

    t = args.targets
    preds = rng.integers(0, 1000, t)
    logits = rng.standard_normal((t, 1000), dtype=np.float32)
    with Step(rows, "LM selection (histogram, softmax tie-break, 50% classes, sample mask)",
              f"{t:,} targets, {n:,} samples"):
        scores = label_mapping_scores(preds, 1000)
        tb = softmax_mass(logits)
        kept = select_classes(scores, 0.5, tb)
        kept_sample_indices(labels, kept)
    del logits

    k, d = args.k, args.dim
    # compile the numba kernels outside the timed steps (a process pays it once)
    feature_mapping_scores(rng.standard_normal((64, d), dtype=np.float32),
                           rng.standard_normal((8, d), dtype=np.float32), backend="cpu")
    centroids = rng.standard_normal((k, d), dtype=np.float32)
    targets = rng.standard_normal((t, d), dtype=np.float32)
    clusters = rng.integers(0, k, n)
    with Step(rows, f"FM selection (votes over K={k:,}, 50% clusters, sample mask)",
              f"{t:,} targets x {d}, {n:,} samples"):
        votes = feature_mapping_scores(targets, centroids, backend="cpu")
        kept = select_classes(votes, 0.5, reciprocal_rank_votes(targets, centroids))
        kept_sample_indices(clusters, kept)
    del targets, clusters

    x = np.empty((args.kmeans_n, d), np.float32)
    for s in range(0, args.kmeans_n, 65536):  # filled in blocks: no float64 temporary
        x[s:s + 65536] = rng.standard_normal((min(65536, args.kmeans_n - s), d), dtype=np.float32)
    with Step(rows, f"k-means assignment pass (K={k:,}, CPU backend)",
              f"{args.kmeans_n:,} x {d}"):
        assign_nearest(x, centroids, backend="cpu")
    return rows


def machine() -> str:
    model, nproc = "?", 0
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            nproc += line.startswith("processor")
    except OSError:
        pass
    aff = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{model}, {aff} usable cores of {nproc}, {mem / 2**30:.0f} GiB RAM"


def versions() -> str:
    import platform

    import numba
    import torch

    try:
        import importlib.metadata as md
        ffcv_v = md.version("ffcv")
    except Exception:  # noqa: BLE001
        ffcv_v = "?"
    return (f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
            f"torch {torch.__version__}, ffcv {ffcv_v}")


def markdown(args, b: dict, rows: list, total: float) -> str:
    n_train, n_val = 1000 * args.train_per_class, 1000 * args.val_per_class
    full = args.train_per_class == 1280 and args.val_per_class == 50 and args.kmeans_n == FULL_KMEANS_N
    size = "full size" if full else (
        f"**reduced size**: {n_train + n_val:,} records instead of 1,330,000"
        + ("" if args.kmeans_n == FULL_KMEANS_N else
           f", k-means over {args.kmeans_n:,} instead of {FULL_KMEANS_N:,} rows"))
    cmd = "python benchmarks/bench_scale.py " + " ".join(shlex.quote(a) for a in args.argv)
    lines = [
        f"Measured {_dt.date.today().isoformat()} on {machine()} ({os.getloadavg()[0]:.1f} load "
        f"at the end: the machine is shared); {versions()}.",
        "",
        f"Command: `{cmd}` ({size}; {total / 60:.1f} min in all). Full size: "
        "`python benchmarks/bench_scale.py` (1,280,000 + 50,000 records at "
        f"{args.image_size} px, k-means over 1,281,167 x 512, K=2000).",
        "",
        f"Build of `{b['source']}` ({n_train:,} train + {n_val:,} val records, "
        f"{args.workers} workers): **{b['seconds']:.1f} s** "
        f"({(n_train + n_val) / b['seconds']:,.0f} records/s); peak RSS {mib(b['rss_self'])} "
        f"(builder), {mib(b['rss_children'])} (largest worker).",
        "",
        "| files | size | per record |", "|---|---:|---:|",
    ]
    for kind, sz in sorted(b["sizes"].items()):
        lines.append(f"| {kind} | {mib(sz)} | {sz / (n_train + n_val):,.0f} B |")
    lines += ["", "| step | size | time | peak allocated |", "|---|---|---:|---:|"]
    for name, sz, dt, peak in rows:
        lines.append(f"| {name} | {sz} | {dt * 1e3:,.1f} ms | {mib(peak)} |")
    lines += ["", "Peak allocated: `tracemalloc` peak during the step (numpy buffers included). "
              "Numba kernels are compiled before the timed steps (once per process)."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-per-class", type=int, default=1280)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--image-size", type=int, default=16, help="px (16-32 keeps the build short)")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--targets", type=int, default=50_000, help="target images for LM/FM")
    p.add_argument("--k", type=int, default=2000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--kmeans-n", type=int, default=FULL_KMEANS_N)
    p.add_argument("--out", type=Path, default=None, help="build here (kept); default: a temp dir")
    p.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for tests")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.train_per_class, args.val_per_class, args.image_size = 1, 1, 16
        args.targets, args.k, args.dim, args.kmeans_n, args.workers = 300, 16, 8, 2000, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dp4tl-scale-") as tmp:
        out = args.out or Path(tmp) / "ds"
        log(f"building {1000 * (args.train_per_class + args.val_per_class):,} records in {out}")
        b = build(args, out)
        log(f"build: {b['seconds']:.1f}s")
        rows = steps(args, out)
    total = time.perf_counter() - t0
    body = markdown(args, b, rows, total)
    print(body)
    if not args.no_report:
        write_section(args.report, SECTION, body)
        log(f"wrote ## {SECTION} of {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
