#!/usr/bin/env python
"""Where a CPU loader's time goes, per core, and what storing raw pixels buys.

The H200 check (BENCHMARKS.md "GPU check (NVIDIA H200)") fed ResNet-18 at 46 % of its ceiling:
ffcv with CPU decode gave ~600 img/s per worker on ImageNet-like JPEGs (256 px, q90), so 16
cores give ~9.8k img/s where the model takes 24.7k. This measures, on one core and side by
side in one run (interleaved rounds, best of ``--rounds``), on the same images:

* the JPEG decode alone (OpenCV's libjpeg-turbo, full size, and at 1/2 scale in the DCT);
* ffcv's train loader with one thread (random-resized crop to ``--resolution`` + flip, batch
  ``--batch-size``) over a beton of JPEGs only, and over betons that store a fraction of the
  images as raw pixels (``dp4tl build --beton-mode proportion --raw-fraction F``, ffcv's own
  proportion mode: no decode for those, more disk);
* the same loader with every core of this machine, for the scaling.

So a reader sees how much of the loader's time per image is the decode (the rest is reading,
crop, resize, flip, collation) and what each raw fraction costs on disk and saves in time.
Ratios carry over to another CPU; absolute img/s are this machine's. It prints a Markdown
section and replaces ``## Decode cost per core (CPU)`` in ``BENCHMARKS.md`` (``--report``;
``--no-report`` to skip).

    python benchmarks/bench_decode.py                    # ~4 min on 2 cores (3 builds of 2,000)
    python benchmarks/bench_decode.py --out /tmp/dec     # keep (and reuse) the built data
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._report import write_section  # noqa: E402
from benchmarks.bench_data import build, machine_info, run_epoch, versions  # noqa: E402
from ffcv_dp4tl.cpus import available_cores  # noqa: E402

#: ImageNet-like JPEGs as the GPU check's cost table builds them (256 px, q90), fewer of them.
DEFAULT_SYNTH = "synth:costtable,num_superclasses=4,classes_per_superclass=5,train_per_class=100,val_per_class=2"
SECTION = "Decode cost per core (CPU)"
#: What the H200 check measured per CPU-decode worker (9,781 img/s / 16 workers, 2026-12-04).
H200_PER_WORKER = 9781 / 16


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def jpeg_bytes(ddir: Path) -> list[bytes]:
    from ffcv_dp4tl.data.manifest import load_manifest
    from ffcv_dp4tl.data.wds_loader import ShardReader

    reader = ShardReader(load_manifest(ddir).split("train"))
    return [reader.read(i)[0] for i in range(len(reader.index))]


def decode_all(blobs: list[bytes], flag: int) -> float:
    import cv2

    t0 = time.perf_counter()
    for b in blobs:
        cv2.imdecode(np.frombuffer(b, np.uint8), flag)
    return time.perf_counter() - t0


def beton_bytes_per_image(ddir: Path) -> float:
    from ffcv_dp4tl.data.manifest import load_manifest

    info = load_manifest(ddir).split("train")
    beton = next(ddir.glob("train*.beton"))
    return beton.stat().st_size / info.num_samples


def measure(args, out: Path) -> dict:
    import cv2
    import torch

    from ffcv_dp4tl.data import AugSpec, make_loader

    torch.set_num_threads(1)
    fractions = [0.0, *args.raw_fractions]
    dirs = {f: build(args.synth, out / f"raw{f:g}", f)[0] for f in fractions}
    blobs = jpeg_bytes(dirs[0.0])
    cores = available_cores()
    kw = dict(aug=AugSpec.for_train(), batch_size=args.batch_size, resolution=args.resolution, seed=0)

    def workers_part(ld):
        # On a GPU host the batch goes to the device as uint8 and is normalised there; on the CPU
        # the loader normalises on the consuming thread, which would be timed instead of the
        # workers (it is the slower of the two here). So the rows time the workers' output.
        ld.normalize = lambda images: images
        return ld

    loaders = {("loader", f, 1): workers_part(make_loader(d, "train", num_workers=1, **kw)) for f, d in dirs.items()}
    loaders[("normalised", 0.0, 1)] = make_loader(dirs[0.0], "train", num_workers=1, **kw)
    if cores > 1:
        loaders[("loader", 0.0, cores)] = workers_part(make_loader(dirs[0.0], "train", num_workers=cores, **kw))
    best: dict = {}
    images: dict = {}
    for rnd in range(1 + args.rounds):  # round 0 warms up (pipeline compile, page cache)
        for key, flag in ((("decode", "full"), cv2.IMREAD_COLOR), (("decode", "half"), cv2.IMREAD_REDUCED_COLOR_2)):
            dt = decode_all(blobs, flag)
            images[key] = len(blobs)
            if rnd:
                best[key] = min(best.get(key, float("inf")), dt)
        for key, ld in loaders.items():
            dt, n = run_epoch(ld, rnd)
            images[key] = n
            if rnd:
                best[key] = min(best.get(key, float("inf")), dt)
        log(f"round {rnd}: " + ", ".join(f"{k[1]}/{k[2] if len(k) > 2 else ''}: {best.get(k, 0):.2f}s"
                                          for k in best))
    sizes = {f: beton_bytes_per_image(d) for f, d in dirs.items()}
    h, w = cv2.imdecode(np.frombuffer(blobs[0], np.uint8), cv2.IMREAD_COLOR).shape[:2]
    return {"best": best, "images": images, "sizes": sizes, "cores": cores, "fractions": fractions,
            "jpeg_bytes": float(np.mean([len(b) for b in blobs])), "px": (h, w),
            "machine": machine_info(), "versions": versions()}


def markdown(args, r: dict) -> str:
    ips = {k: r["images"][k] / r["best"][k] for k in r["best"]}
    jpg = ips[("loader", 0.0, 1)]
    full = ips[("decode", "full")]
    rows = [f"| JPEG decode alone, full size (OpenCV) | 1 | {full:,.0f} | – | {1e3 / full:.2f} | – | – |",
            f"| JPEG decode alone, 1/2 scale in the DCT | 1 | {ips[('decode', 'half')]:,.0f} | – | "
            f"{1e3 / ips[('decode', 'half')]:.2f} | – | – |"]
    for f in r["fractions"]:
        v = ips[("loader", f, 1)]
        what = "ffcv loader, JPEG only" if f == 0 else f"ffcv loader, {f:.0%} stored raw"
        pred = H200_PER_WORKER * v / jpg
        rows.append(f"| {what} | 1 | {v:,.0f} | {v / jpg:.2f}× | {1e3 / v:.2f} | {r['sizes'][f] / 1024:,.0f} | "
                    f"{pred * 16:,.0f} |")
    v = ips[("normalised", 0.0, 1)]
    rows.append(f"| ffcv loader, JPEG only, normalised to float32 on this CPU (consumer thread) | 1 | {v:,.0f} | "
                f"{v / jpg:.2f}× | {1e3 / v:.2f} | {r['sizes'][0.0] / 1024:,.0f} | – |")
    if ("loader", 0.0, r["cores"]) in ips:
        v = ips[("loader", 0.0, r["cores"])]
        rows.append(f"| ffcv loader, JPEG only | {r['cores']} | {v:,.0f} | {v / jpg:.2f}× | {1e3 * r['cores'] / v:.2f} "
                    f"(per core) | {r['sizes'][0.0] / 1024:,.0f} | – |")
    share = (1e3 / full) / (1e3 / jpg)
    h, w = r["px"]
    lines = [
        f"## {SECTION}", "",
        f"**CPU** run, {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}. Machine: {r['machine']['cpu']}, "
        f"{r['cores']} cores; load average {os.getloadavg()[0]:.2f} at the end.", "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".", "",
        f"Command: `python benchmarks/bench_decode.py {shlex.join(sys.argv[1:])}`", "",
        f"Data: `{args.synth}` train split ({r['images'][('decode', 'full')]:,} JPEGs of {w}x{h} px, q90, "
        f"{r['jpeg_bytes'] / 1024:.1f} KiB each on average), ffcv's train pipeline (random-resized crop to "
        f"{args.resolution} px + flip, batch {args.batch_size}). Interleaved rounds after a warm-up round, best "
        f"of {args.rounds}; `threads` = the loader's workers (torch on 1 thread). The loader rows time what the "
        "workers deliver (uint8 batches), as on a GPU host, where the batch is normalised on the device; one "
        "row adds the normalisation on this CPU for comparison.", "",
        "| what | threads | img/s | vs JPEG-only loader | ms per image | beton KiB per image | "
        "predicted H200 host, 16 workers (img/s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |", *rows, "",
        f"- The decode alone is {share:.0%} of the JPEG-only loader's time per image on one core; the rest is "
        "reading, crop, resize, flip and collation.",
        f"- **Prediction, not a measurement:** the last column scales the H200 host's measured "
        f"{H200_PER_WORKER:,.0f} img/s per CPU-decode worker (JPEG only) by this machine's ratio, times 16 "
        "workers, against ResNet-18's 24.7k img/s ceiling at 160 px there. The next device run's loaders stage "
        "can measure it (build with `--beton-mode proportion --raw-fraction F`).",
        "- Raw pixels cost disk: a beton's size per image is in its column (ffcv stores raw images at their "
        "stored size, uncompressed).",
    ]
    return "\n".join(lines)


def raw_fractions(text: str) -> list[float]:
    """``--raw-fractions``: comma-separated fractions, each in (0, 1) (ffcv's proportion mode)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.5,0.9, got {text!r}") from None
    if not values or any(not 0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"each fraction must be in (0, 1), got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--synth", default=DEFAULT_SYNTH)
    p.add_argument("--raw-fractions", type=raw_fractions, default=[0.5, 0.9],
                   help="fractions stored raw, each in (0, 1) (default 0.5,0.9)")
    p.add_argument("--resolution", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="keep (and reuse) the built data here")
    p.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--no-report", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        out = args.out or Path(tmp)
        r = measure(args, out)
    text = markdown(args, r)
    print(text)
    if not args.no_report:
        write_section(args.report, SECTION, text.split("\n", 2)[2])
        log(f"wrote '## {SECTION}' to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
