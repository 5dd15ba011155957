#!/usr/bin/env python
"""Training throughput: a recipe with its real loader in the loop vs the model's ceiling.

Three numbers, measured side by side in one run on one device:

* **ceiling** — forward + backward + SGD step on random tensors already on the device, at the
  recipe's first-epoch resolution, batch size, precision, channels_last and compile setting:
  what the GPU could do if data were free (ResNet-18 at 160 px in bf16 on an H100 ≈ 22k img/s);
* **loader only** — one epoch of the masked train loader (decode, crop, flip, transfer,
  normalise) with no model: what the input pipeline can deliver;
* **training** — ``dp4tl train`` for ``--epochs`` epochs (checkpointing, metrics, the lot),
  img/s as the trainer reports it, plus its own data-wait vs step split from ``timings.json``.

training / ceiling says how busy the accelerator is; loader-only says whether the input path
is the limit (the guide's measurement: stock ffcv fed ResNet-18 at 4.8k img/s).

    python benchmarks/bench_train.py --data data/synth-imagenet/source              # GPU, BENCHMARKS.md
    python benchmarks/bench_train.py --data DIR --recipe resnet50_16ep --set train.epochs=1
    python benchmarks/bench_train.py --cpu-smoke --data DIR --output /tmp/t.md      # sanity check

``--cpu-smoke`` shrinks everything (tiny recipe, a few ceiling steps) to check the script on a
CPU; it writes its section only to ``--output`` when given, never to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._report import write_section  # noqa: E402
from ffcv_dp4tl.data import AugSpec, load_manifest, make_loader  # noqa: E402
from ffcv_dp4tl.training.distributed import resolve_device  # noqa: E402
from ffcv_dp4tl.training.recipe import Recipe, load_recipe  # noqa: E402
from ffcv_dp4tl.training.schedule import resolution  # noqa: E402
from ffcv_dp4tl.training.trainer import autocast_dtype, build_model, cudnn_benchmark, train  # noqa: E402

GPU_SECTION = "Training throughput (GPU)"
CPU_SECTION = "Training throughput (CPU)"
SMOKE_SECTION = "Training throughput (CPU smoke)"
SMOKE_OVERRIDES = ["train.epochs=1", "data.num_workers=0", "train.batch_size=16",
                   "train.min_res=16", "train.max_res=16", "eval.resolution=16", "model.width=8",
                   "model.stem_stride=1"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def ceiling(recipe: Recipe, num_classes: int, dev: torch.device, steps: int,
            warmup: int) -> dict[str, Any]:
    """img/s of the training step on device-resident random input (no loader).

    Runs under the trainer's own ``cudnn_benchmark`` (on for CUDA, as in ``train``): a ceiling
    measured with cuDNN's heuristic algorithms instead would be biased against the loader runs
    (the first GPU check's "76 % of the ceiling" was measured that way).
    """
    if recipe.ssl.method != "none":
        return {"img_per_s": None, "note": "n/a for self-supervised recipes"}
    with cudnn_benchmark(dev):
        return _ceiling(recipe, num_classes, dev, steps, warmup)


def _ceiling(recipe: Recipe, num_classes: int, dev: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    res, bs = resolution(recipe.train, 0), recipe.train.batch_size
    model = build_model(recipe, num_classes).to(dev)
    channels_last = dev.type == "cuda" and recipe.train.channels_last
    x = torch.randn(bs, 3, res, res, device=dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (bs,), device=dev)
    step_model = torch.compile(model) if recipe.train.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    crit = nn.CrossEntropyLoss(label_smoothing=recipe.optim.label_smoothing)
    amp = autocast_dtype(recipe, dev)
    model.train()

    def step() -> None:
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            loss = crit(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    dt = time.perf_counter() - t0
    return {"img_per_s": steps * bs / dt, "resolution": res, "batch": bs, "steps": steps,
            "seconds": dt, "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


def loader_only(recipe: Recipe, data: Path, fmt: str, dev: torch.device,
                max_batches: int | None) -> dict[str, Any]:
    """One epoch of the train loader, nothing else (the Loader is built and warmed first)."""
    ld = make_loader(data, recipe.data.train_split, fmt=fmt, aug=AugSpec.for_train(), device=dev,
                     batch_size=recipe.train.batch_size, resolution=resolution(recipe.train, 0),
                     num_workers=recipe.data.num_workers, seed=recipe.data.seed,
                     dtype=torch.float32, channels_last=dev.type == "cuda" and recipe.train.channels_last)
    t_build = time.perf_counter()
    it = iter(ld)  # first batch: ffcv compiles its pipeline here
    next(it)
    warm = time.perf_counter() - t_build
    _sync(dev)
    t0, n, batches = time.perf_counter(), 0, 1
    for batch in it:
        n += len(batch.labels)
        batches += 1
        if max_batches and batches >= max_batches:
            break
    _sync(dev)
    dt = time.perf_counter() - t0
    return {"img_per_s": n / dt if n and dt > 0 else None,
            "images_timed": n, "seconds": dt, "first_batch_seconds": warm}


def run(args: argparse.Namespace) -> tuple[str, torch.device]:
    dev = resolve_device("cpu" if args.cpu_smoke else args.device)
    overrides = list(args.set) + (SMOKE_OVERRIDES if args.cpu_smoke else [])
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    recipe = load_recipe(args.recipe, overrides)
    data = Path(args.data)
    manifest = load_manifest(data)
    info = manifest.split(recipe.data.train_split)
    print(f"[bench-train] {recipe.name} on {data} ({info.num_samples} train images, "
          f"{manifest.num_classes} classes), {args.format}, {dev}", flush=True)
    steps = 3 if args.cpu_smoke else args.ceiling_steps
    ceil = ceiling(recipe, manifest.num_classes, dev, steps, 1 if args.cpu_smoke else 10)
    print(f"[bench-train] ceiling: {ceil}", flush=True)
    lo = loader_only(recipe, data, args.format, dev, 4 if args.cpu_smoke else args.loader_batches)
    print(f"[bench-train] loader only: {lo}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        out = Path(tmp) / "run"
        t0 = time.perf_counter()
        row = train(recipe, data, out_dir=out, fmt=args.format, device=dev, progress=not args.cpu_smoke)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
        timings = json.loads((out / "timings.json").read_text())["stages"]
    print(f"[bench-train] training: {row.get('img_per_s'):.0f} img/s", flush=True)

    def pct(x: float | None) -> str:
        c = ceil.get("img_per_s")
        return f"{100 * x / c:.0f} %" if x and c else "–"

    best = max(r["img_per_s"] for r in rows)
    lines = [
        f"- device: **{_device_name(dev)}**; torch {torch.__version__}, Python "
        f"{platform.python_version()}; date {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- command: `{' '.join(shlex.quote(a) for a in sys.argv)}`",
        f"- recipe `{recipe.name}` ({recipe.model.arch}, batch {recipe.train.batch_size}, "
        f"{recipe.train.precision}, channels_last={recipe.train.channels_last}, "
        f"compile={recipe.train.compile}, first-epoch resolution {resolution(recipe.train, 0)} px); "
        f"data `{data}` ({info.num_samples} train images), format `{args.format}`, "
        f"{recipe.data.num_workers} loader workers",
        "",
        "| measurement | img/s | vs ceiling |",
        "|---|---:|---:|",
        f"| ceiling (random input on the device, {ceil.get('steps', '–')} steps) | "
        f"{_f(ceil.get('img_per_s'))} | 100 % |",
        f"| loader only ({lo['images_timed']} images after the first batch, no model) | {_f(lo['img_per_s'])} | {pct(lo['img_per_s'])} |",
    ]
    for r in rows:
        lines.append(f"| training epoch {r['epoch'] + 1} ({r['resolution']} px, "
                     f"{r['samples']} images, {r['epoch_seconds']:.1f} s) | {_f(r['img_per_s'])} | "
                     f"{pct(r['img_per_s'])} |")
    waits = timings.get("data", 0.0)
    steps_s = timings.get("step", 0.0)
    lines += ["", f"Trainer time split over the run (timings.json): waiting for data "
              f"{waits:.1f} s, training steps {steps_s:.1f} s, eval {timings.get('eval', 0.0):.1f} s, "
              f"setup {timings.get('setup', 0.0):.1f} s; wall {wall:.1f} s. First loader batch "
              f"(incl. ffcv's pipeline compile) {lo['first_batch_seconds']:.1f} s. Best epoch: "
              f"{_f(best)} img/s = {pct(best)} of the ceiling."]
    return "\n".join(lines) + "\n", dev


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.processor() or platform.machine()})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="built source dataset dir (dp4tl build ... --out)")
    p.add_argument("--recipe", default="resnet18_surrogate")
    p.add_argument("--format", default="ffcv", choices=["ffcv", "wds"])
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=1, help="training epochs to run (default 1)")
    p.add_argument("--set", action="append", default=[], help="recipe override section.key=value")
    p.add_argument("--ceiling-steps", type=int, default=50)
    p.add_argument("--loader-batches", type=int, default=None,
                   help="stop the loader-only epoch after this many batches")
    p.add_argument("--workdir", default=None, help="where the temporary run dir goes")
    p.add_argument("--output", default=None,
                   help="Markdown file to update (default: BENCHMARKS.md; smoke: none)")
    p.add_argument("--cpu-smoke", action="store_true")
    args = p.parse_args(argv)
    if args.workdir is not None and not Path(args.workdir).is_dir():  # (a traceback, audit)
        p.error(f"--workdir {args.workdir} is not a folder; make it first, or leave --workdir out")
    body, dev = run(args)
    print(body)
    out = args.output or (None if args.cpu_smoke else str(REPO / "BENCHMARKS.md"))
    if out:
        section = SMOKE_SECTION if args.cpu_smoke else (
            GPU_SECTION if dev.type == "cuda" else CPU_SECTION)
        write_section(out, section, body)
        print(f"[bench-train] wrote section to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
