#!/usr/bin/env python
"""The measuring stages of ``scripts/gpu_check.sh``: environment, loaders, training, big models.

Each subcommand prints a Markdown section and appends it to ``--md`` (the check script gathers
them into ``summary.md``). Everything is measured side by side in one process on one device, so
the ratios (masked vs full epoch, pipeline vs synthetic ceiling) hold whatever the machine.

    python benchmarks/bench_gpu.py env --md OUT.md
    python benchmarks/bench_gpu.py loaders --data DIR --md OUT.md [--loaders ffcv:cpu,ffcv:gpu,wds:cpu,wds:gpu]
    python benchmarks/bench_gpu.py train --data DIR --md OUT.md [--epochs 3]
    python benchmarks/bench_gpu.py models --md OUT.md

Every subcommand also runs on a CPU (``--device cpu`` with tiny settings) so the script is
tested before it meets a GPU (tests/test_bench_gpu.py).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.bench_train import ceiling  # noqa: E402
from ffcv_dp4tl.data import AugSpec, load_manifest, make_loader, mask_from_classes  # noqa: E402
from ffcv_dp4tl.data.resources import loader_cores  # noqa: E402
from ffcv_dp4tl.training.distributed import resolve_device  # noqa: E402
from ffcv_dp4tl.training.models import create_model  # noqa: E402
from ffcv_dp4tl.training.recipe import load_recipe  # noqa: E402
from ffcv_dp4tl.training.trainer import train  # noqa: E402

#: (format, decode) pairs: ffcv CPU decode is stock ffcv, ``gpu`` is batched nvJPEG + device crops.
DEFAULT_LOADERS = "ffcv:cpu,ffcv:gpu,wds:cpu,wds:gpu"
DEFAULT_KEPT = "1.0,0.4,0.2"
#: Issue 20: RN-50/101 at the paper's 192 px and batch 1024, ViT-B/16 at 224 px.
DEFAULT_MODELS = "resnet50:192:1024,resnet101:192:1024,vit_b_16:224:512"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _write_at(md: Path, offset: int, text: str) -> None:
    """Replace what follows ``offset`` in ``md`` (this command's own section) with ``text``."""
    with open(md, "r+" if md.exists() else "w") as f:
        f.seek(offset)
        f.truncate()
        f.write(text.rstrip() + "\n\n")


def _emit(args, text: str) -> None:
    """Print the section and put it in ``--md`` (appended: in place of this command's partial)."""
    print(text, flush=True)
    if args.md is not None:
        _write_at(args.md, args.md_offset, text)


#: The tables' heads, shared by the final section and the partial one written after every row.
LOADER_TABLE = ["| format | decode | classes kept | kept fraction | images timed | warm-up s | epoch setup s | seconds | img/s | ratio |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
TRAIN_TABLE = ["| input | workers | epoch 1 img/s | steady img/s | vs ceiling | data s | setup s | bad | peak GiB | val top-1 |",
               "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
MODEL_TABLE = ["| model | batch | px | ms/step | img/s | peak GiB |", "| --- | ---: | ---: | ---: | ---: | ---: |"]


def _partial(args, title: str, table: list[str], rows: list[str]) -> None:
    """The rows so far in ``--md``: a stage its time limit cuts still leaves them in the summary
    (the first H200 check lost the models and loaders rows that had run to this)."""
    if getattr(args, "md", None) is not None:
        _write_at(args.md, args.md_offset, "\n".join(
            [f"{title} (partial: cut before the end)", "", *table, *rows]))


def _f(x: float | None, fmt: str = ",.0f") -> str:
    return "–" if x is None else format(x, fmt)


def _parse_loaders(text: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        fmt, _, decode = item.strip().partition(":")
        if fmt not in ("ffcv", "wds") or decode not in ("cpu", "gpu"):
            raise SystemExit(f"bad loader {item!r}: expected FORMAT:DECODE with FORMAT ffcv|wds, DECODE cpu|gpu")
        out.append((fmt, decode))
    return out


def kept_classes(num_classes: int, kept: float, seed: int = 0) -> list[int]:
    """A seeded random choice of round(kept * C) classes (>= 1): the class mask of a ratio."""
    n = max(1, round(kept * num_classes))
    return sorted(np.random.default_rng(seed).choice(num_classes, size=n, replace=False).tolist())


# ------------------------------------------------------------------------------- env
def env(args) -> str:
    """Device, driver, versions, glibc, ffcv import, cores and loader workers, and our CUDA
    kernels compiled via NVRTC: ``ffcv_dp4tl.environment`` (what ``dp4tl env`` prints)."""
    from ffcv_dp4tl.environment import as_markdown, report

    return "\n".join(["### Environment", "", as_markdown(report())])


# ------------------------------------------------------------------------------- loaders
def _time_loader(ld, dev: torch.device, max_batches: int | None) -> dict[str, Any]:
    """Epoch 0 warms up (pipeline compile, worker start, page cache); epoch 1 is timed whole,
    from ``iter()`` to its last batch. Timing a whole steady epoch matters: workers prefetch
    while the first batch is awaited (WebDataset: 4 batches per worker), so "after the first
    batch" would hide most of a small masked epoch (the first GPU check did exactly that)."""
    first = [0.0]

    def epoch(e: int) -> tuple[int, float]:
        ld.set_epoch(e)
        n, batches = 0, 0
        t0 = time.perf_counter()
        for batch in ld:
            if batches == 0:  # epoch set-up: iter() (buffers, threads) + the first batch
                _sync(dev)
                first[0] = time.perf_counter() - t0
            n += len(batch.labels)
            batches += 1
            if max_batches and batches >= max_batches:
                break
        _sync(dev)
        return n, time.perf_counter() - t0

    _, warm = epoch(0)
    n, dt = epoch(1)
    return {"warmup_s": warm, "images": n, "seconds": dt, "img_per_s": n / dt if n and dt > 0 else None,
            "first_batch_s": first[0]}


def loaders(args) -> str:
    dev = resolve_device(args.device)
    data = Path(args.data)
    manifest = load_manifest(data)
    split = manifest.split("train")
    kept_list = [float(v) for v in args.kept.split(",")]
    rows = []
    for fmt, decode in _parse_loaders(args.loaders):
        full = None
        for kept in kept_list:
            mask = None if kept >= 1.0 else mask_from_classes(
                split, kept_classes(manifest.num_classes, kept), method="bench")
            frac = 1.0 if mask is None else len(mask.indices) / split.num_samples
            try:
                ld = make_loader(data, "train", fmt=fmt, decode=decode, mask=mask, aug=AugSpec.for_train(),
                                 batch_size=args.batch_size, resolution=args.resolution, device=dev,
                                 num_workers=args.workers, channels_last=dev.type == "cuda")
                r = _time_loader(ld, dev, args.max_batches)
                del ld
            except Exception as e:  # noqa: BLE001 - one broken loader must not hide the others
                rows.append(f"| {fmt} | {decode} | {kept:.0%} | {frac:.3f} | **failed: {type(e).__name__}: {e}** | | | | | |")
                continue
            per_img = r["seconds"] / max(r["images"], 1)
            if kept >= 1.0:
                full = per_img
            ratio = per_img / full if full else None  # masked s/img over full s/img
            rows.append(f"| {fmt} | {decode} | {kept:.0%} | {frac:.3f} | {r['images']:,} | {r['warmup_s']:.1f} | "
                        f"{r['first_batch_s']:.2f} | {r['seconds']:.2f} | {_f(r['img_per_s'])} | {_f(ratio, '.3f')} |")
            print(rows[-1], flush=True)
            _partial(args, "### Loaders alone", LOADER_TABLE, rows)
    from ffcv_dp4tl.data.resources import effective_workers

    nw = effective_workers(args.workers)
    lines = [f"### Loaders alone (no model), {args.resolution} px train crops, batch {args.batch_size}, "
             f"{nw} workers{f' (of {args.workers} asked: the loaders keep cores free)' if nw != args.workers else ''}, "
             f"{dev.type}", "",
             f"Data `{data}`: {split.num_samples:,} train images, {manifest.num_classes} classes. Each row is one "
             "loader built for its mask; `warm-up s` = its first epoch (pipeline compile, workers, page "
             "cache), then the second epoch is timed whole; `epoch setup s` = its iter() to first batch. `ratio` = (s/image masked) / (s/image full): the goal "
             "`masked epoch <= 1.05 x kept fraction x full epoch` is `ratio <= 1.05`.", "",
             *LOADER_TABLE, *rows]
    if args.scaling:  # (its rows join the partial section as they come, the loaders' before them)
        lines += ["", *_scaling(args, dev, data, lambda part: _partial(
            args, "### Loaders alone", LOADER_TABLE, [*rows, "", *part]))]
    return "\n".join(lines)


def _scaling(args, dev: torch.device, data: Path,
             on_row: Callable[[list[str]], None] = lambda part: None) -> list[str]:
    """ffcv CPU decode with 1, 2, 4, ... workers (exactly that many: the rest of the cores are
    kept free), ``--scaling-batches`` batches of ``--scaling-batch`` per timed epoch.

    Why: the H200 host gave ~600 img/s per worker with 16 workers, where one thread of a 2-core
    CPU machine gives ~1,400-1,800 img/s on the same kind of images (benchmarks/bench_decode.py).
    Per-worker rates that fall as workers are added point at the loader's serial part or the
    host (hyperthreads, memory); a flat per-worker rate points at the decode itself."""
    rows, one = [], None
    for nw in [int(v) for v in args.scaling.split(",")]:
        try:
            with _reserve(max(loader_cores() - nw, 0)):
                ld = make_loader(data, "train", fmt="ffcv", decode="cpu", aug=AugSpec.for_train(),
                                 batch_size=args.scaling_batch, resolution=args.resolution, device=dev,
                                 num_workers=nw, channels_last=dev.type == "cuda")
                r = _time_loader(ld, dev, args.scaling_batches)
                del ld
        except Exception as e:  # noqa: BLE001
            rows.append(f"| {nw} | **failed: {type(e).__name__}: {e}** | | | | |")
            continue
        # after the first batch: a short timed epoch would otherwise be mostly its set-up
        after = r["seconds"] - r["first_batch_s"]
        ips = (r["images"] - args.scaling_batch) / after if after > 0 and r["images"] > args.scaling_batch else 0.0
        one = one or (ips / nw if ips else None)
        rows.append(f"| {nw} | {r['images']:,} | {r['first_batch_s']:.2f} | {ips:,.0f} | {ips / nw:,.0f} | "
                    f"{_f(None if not one else ips / nw / one, '.2f')} |")
        print(rows[-1], flush=True)
        on_row(_scaling_lines(args, dev, rows))
    return _scaling_lines(args, dev, rows)


def _scaling_lines(args, dev: torch.device, rows: list[str]) -> list[str]:
    return [f"#### Scaling: ffcv CPU decode by worker count ({args.resolution} px, batch {args.scaling_batch}, "
            f"{args.scaling_batches} batches per timed epoch, {dev.type})", "",
            "img/s counts the batches after the first (`first batch s`: the epoch's set-up and first batch).", "",
            "| workers | images timed | first batch s | img/s | img/s per worker | per worker vs the first row |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |", *rows]


# ------------------------------------------------------------------------------- train
@contextlib.contextmanager
def _reserve(free: int):
    """Keep ``free`` cores free of loader workers while the block runs (``DP4TL_RESERVED_CORES``)."""
    from ffcv_dp4tl.data.resources import RESERVED_ENV

    old = os.environ.get(RESERVED_ENV)
    os.environ[RESERVED_ENV] = str(free)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(RESERVED_ENV, None)
        else:
            os.environ[RESERVED_ENV] = old


def _trained_model(run: Path) -> nn.Module:
    """The model a ``train(...)`` run folder ends with (its ``checkpoint.pt``), on the CPU,
    rebuilt as ``dp4tl`` rebuilds a source model (architecture and knobs from the checkpoint)."""
    from ffcv_dp4tl.training.checkpoint import CHECKPOINT_NAME, Checkpoint

    ckpt = Checkpoint.load(run / CHECKPOINT_NAME)
    model = create_model(ckpt.arch, ckpt.num_classes, **ckpt.model_kwargs)
    model.load_state_dict(ckpt.model)
    return model.eval()


@torch.no_grad()
def _val_predictions(model: nn.Module, recipe, data: Path, fmt: str, decode: str, dev: torch.device,
                     workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample indices, labels, predicted classes) over the whole val split, sorted by sample,
    read through the ``decode`` loader and evaluated as the trainer evaluates: the recipe's
    val split, center crop at ``eval.resolution``, ``eval.batch_size``, flip TTA
    (``eval.flip_tta``), the run's autocast and memory format."""
    from ffcv_dp4tl.training.trainer import autocast_dtype, use_channels_last

    ec = recipe.eval
    amp, cl = autocast_dtype(recipe, dev), use_channels_last(recipe, dev)
    model = model.to(dev, memory_format=torch.channels_last) if cl else model.to(dev)
    model.eval()
    ld = make_loader(data, recipe.data.val_split, fmt=fmt, decode=decode, aug=AugSpec.for_eval(),
                     batch_size=ec.batch_size, resolution=ec.resolution, device=dev, num_workers=workers,
                     channels_last=cl, seed=recipe.data.seed, deterministic=recipe.data.deterministic)
    idx, labels, preds = [], [], []
    try:
        for batch in ld:
            with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                out = model(batch.images)
                if ec.flip_tta:
                    out = out + model(torch.flip(batch.images, dims=[3]))
            idx.append(batch.indices.cpu())
            labels.append(batch.labels.cpu())
            preds.append(out.float().argmax(1).cpu())
    finally:
        close = getattr(ld, "close", None)
        if close is not None:
            close()
        del ld
    model.cpu()
    if not idx:
        raise RuntimeError(f"the {fmt} {decode}-decode val loader gave no batches")
    i, y, p = (torch.cat(t).numpy() for t in (idx, labels, preds))
    order = np.argsort(i, kind="stable")
    return i[order], y[order], p[order]


def _decode_comparison(fmt: str, held: tuple | str | None, data: Path, dev: torch.device) -> str:
    """The verdict line for ``fmt``: ONE trained model (``held`` = (model, recipe, workers,
    run label, that run's own val top-1), or why there is none) evaluated on the val split
    through the CPU-decode and the GPU-decode loader, so only the decoder differs."""
    head = f"{fmt}: val top-1 GPU decode vs CPU decode"
    if not isinstance(held, tuple):
        return f"{head}: **not compared**: {held or f'no {fmt} + cpu decode run trained'}"
    model, recipe, workers, label, run_top1 = held
    try:
        got = {d: _val_predictions(model, recipe, data, fmt, d, dev, workers) for d in ("cpu", "gpu")}
    except Exception as e:  # noqa: BLE001 - a broken decoder is a finding, not a crash
        return f"{head}: **not compared**: evaluating {label}'s model failed: {type(e).__name__}: {e}"
    (ic, yc, pc), (ig, yg, pg) = got["cpu"], got["gpu"]
    if not (np.array_equal(ic, ig) and np.array_equal(yc, yg)):
        return (f"{head}: **not compared**: the two val loaders gave different samples "
                f"({len(ic)} vs {len(ig)} images)")
    a, b = float(np.mean(pc == yc)), float(np.mean(pg == yg))
    gap, differ = 100 * abs(a - b), 100 * float(np.mean(pc != pg))
    own = "" if run_top1 is None else f"; its run's own eval: {100 * run_top1:.2f} %"
    return (f"{fmt}: val top-1 GPU decode {100 * b:.2f} % vs CPU decode {100 * a:.2f} % of one model "
            f"({label}{own}) evaluated through both decoders on the same {len(ic):,} val images: "
            f"{gap:.2f} points apart, {differ:.2f} % of predictions differ; goal <= 2 points: "
            f"**{'met' if gap <= 2 else 'not met'}**")


def train_stage(args) -> str:
    """ResNet-18 from each loader vs the synthetic ceiling (cudnn.benchmark on in both), with
    the trainer's own time split (data wait, step, setup) and the count of batches with
    NaN/Inf images; CPU-decode loaders once per ``--workers-list`` entry (cores left for the
    training thread or not). The decode check isolates the decoder: the model of the first
    CPU-decode run that trained is evaluated on the val split through the CPU-decode and the
    GPU-decode val loader, whose top-1s must be within 2 points (the separately trained runs'
    own val top-1s differ by run-to-run noise, 20 points at 2 epochs on an H200)."""
    dev = resolve_device(args.device)
    data = Path(args.data)
    manifest = load_manifest(data)
    base = [f"train.epochs={args.epochs}", f"train.min_res={args.resolution}", f"train.max_res={args.resolution}",
            "train.keep_epochs=[]", f"eval.every={args.epochs}", f"train.batch_size={args.batch_size}", *args.set]
    workers = [int(w) for w in str(args.workers_list).split(",")] if args.workers_list else [args.workers]
    recipe = load_recipe(args.recipe, base + [f"data.num_workers={workers[0]}"])
    ceil = ceiling(recipe, manifest.num_classes, dev, args.ceiling_steps, args.ceiling_warmup)
    print(f"[train] ceiling {ceil}", flush=True)
    title = f"### {recipe.model.arch} trained from each loader vs the synthetic ceiling ({dev.type})"
    rows = [f"| synthetic input on the device (ceiling) | – | – | {_f(ceil['img_per_s'])} | 100 % | – | – | – | – | – |"]
    goal, top1, bad_total = [], [], 0
    held: dict[str, tuple | str] = {}  # fmt -> its first CPU-decode run's model (or why none)
    asked = _parse_loaders(args.loaders)
    compared: dict[str, str] = {}  # fmt -> its decode comparison's verdict line
    for fmt, decode in asked:
        for nw in (workers if decode == "cpu" else workers[:1]):
            r = load_recipe(args.recipe, base + [f"data.decode={decode}", f"data.num_workers={nw}"])
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            free = max(loader_cores() - nw, 0)
            try:
                # exactly nw workers, the rest of the cores free for the training thread (the
                # loaders' default keeps 2 free on a GPU node, so 16 would silently run as 14)
                with tempfile.TemporaryDirectory(dir=args.workdir) as tmp, _reserve(free):
                    train(r, data, out_dir=Path(tmp) / "run", fmt=fmt, device=dev, progress=False)
                    run = Path(tmp) / "run"
                    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
                    timings = json.loads((run / "timings.json").read_text()).get("stages", {})
                    if decode == "cpu" and not isinstance(held.get(fmt), tuple):
                        try:  # kept for the decode comparison, made right after this run
                            held[fmt] = (_trained_model(run), r, nw, f"the {fmt} + cpu decode run with {nw} worker{'s' * (nw != 1)}",
                                         metrics[-1].get("top1_val"))
                        except Exception as e:  # noqa: BLE001
                            held[fmt] = f"the {fmt} + cpu decode run's checkpoint did not load: {type(e).__name__}: {e}"
            except Exception as e:  # noqa: BLE001
                rows.append(f"| {fmt} + {decode} decode | {nw} ({free} free) | – | **failed: {type(e).__name__}: {e}** | | | | | | |")
                continue
            steady = [m["img_per_s"] for m in metrics if m["epoch"] >= 1] or [metrics[-1]["img_per_s"]]
            ips = float(np.mean(steady))
            peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
            frac = ips / ceil["img_per_s"] if ceil.get("img_per_s") else None
            bad = sum(int(m.get("bad_inputs", 0)) for m in metrics)
            bad_total += bad
            acc = metrics[-1].get("top1_val")
            if acc is not None:
                top1.append(acc)
            goal.append((f"{fmt}+{decode} ({nw} workers)", ips, frac))
            rows.append(f"| {fmt} + {decode} decode | {nw} ({free} free) | {metrics[0]['img_per_s']:,.0f} | {ips:,.0f} | "
                        f"{_f(None if frac is None else 100 * frac, '.0f')} % | {timings.get('data', 0.0):.1f} | "
                        f"{timings.get('setup', 0.0):.1f} | {bad} | {_f(peak, '.1f')} | "
                        f"{'–' if acc is None else format(acc, '.4f')} |")
            print(rows[-1], flush=True)
            if (fmt, "gpu") in asked and fmt not in compared and isinstance(held.get(fmt), tuple):
                # compared as soon as its model is there, before the other loaders train: the
                # stage's limit then cuts a throughput row, never this must-show line
                compared[fmt] = _decode_comparison(fmt, held[fmt], data, dev)
                print(f"[train] {compared[fmt]}", flush=True)
            _partial(args, title, TRAIN_TABLE, rows + [""] + [f"- {v}" for v in compared.values()])
    best = max(goal, key=lambda g: g[1]) if goal else None
    verdict = ["no loader trained" if best is None else
               f"best: {best[0]} at {best[1]:,.0f} img/s = {100 * (best[2] or 0):.0f} % of the ceiling; goal >= 90 %: "
               f"**{'met' if (best[2] or 0) >= 0.9 else 'not met'}**"]
    verdict.append(f"bad input batches, all runs: {bad_total}")
    if len(top1) > 1:
        verdict.append(f"val top-1 of the separately trained runs: {100 * min(top1):.2f} .. {100 * max(top1):.2f} % "
                       f"({100 * (max(top1) - min(top1)):.2f} points apart): run-to-run noise at {args.epochs} "
                       "epochs (even between two runs of the same decoder), not the decode comparison")
    for fmt in ("ffcv", "wds"):
        if (fmt, "cpu") in asked and (fmt, "gpu") in asked:
            if fmt not in compared:  # (no CPU-decode model: the line says why)
                compared[fmt] = _decode_comparison(fmt, held.get(fmt), data, dev)
                print(f"[train] {compared[fmt]}", flush=True)
            verdict.append(compared[fmt])
    held.clear()
    lines = [title, "",
             f"Recipe `{args.recipe}` with {', '.join(f'`{o}`' for o in base)}: {recipe.train.precision}, "
             f"channels_last={recipe.train.channels_last}, compile={recipe.train.compile}, batch {recipe.train.batch_size}, "
             f"{args.resolution} px. Steady state = mean img/s of epochs 2..{args.epochs} (epoch 1 pays pipeline "
             "compile and cudnn autotuning). Ceiling: the same model/step on random tensors already on the device, "
             f"cudnn.benchmark={ceil.get('cudnn_benchmark')} (the trainer's setting). `data s` = the trainer's time "
             "waiting for batches, `setup s` = its setup (loaders, model), both from timings.json over the run; "
             "`bad` = training batches holding NaN/Inf images. `val top-1` = each run's own final eval: runs "
             "trained separately for a few epochs differ by run-to-run noise (on an H200, 2 epochs: 20 points "
             "between two CPU-decode runs), so these are not the decode comparison. That is the decode line "
             "below: the model of the first CPU-decode run, evaluated on the val split through the CPU-decode "
             "and the GPU-decode val loader (the trainer's eval: center crop at eval.resolution, flip TTA), "
             "so only the decoder differs.", "",
             *TRAIN_TABLE, *rows, "",
             *(f"- {v}" for v in verdict)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- models
def parse_model_specs(text: str) -> list[tuple[str, int, int]]:
    """``arch:px:batch,...`` -> [(arch, resolution, batch)]."""
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise SystemExit(f"bad model spec {item!r}: expected ARCH:PX:BATCH, e.g. resnet50:192:1024")
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def models(args) -> str:
    """bf16 channels_last SGD steps per model (cudnn.benchmark on, as the trainer runs):
    warm-up steps, then ``--steps`` timed steps: img/s and peak memory."""
    from ffcv_dp4tl.training.trainer import cudnn_benchmark

    dev = resolve_device(args.device)
    rows = []
    for arch, res, bs in parse_model_specs(args.models):
        try:
            model = create_model(arch, 1000, **({"image_size": res} if arch.startswith("vit") else {})).to(dev)
            x = torch.randn(bs, 3, res, res, device=dev)
            if dev.type == "cuda":
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
                torch.cuda.reset_peak_memory_stats(dev)
            y = torch.randint(0, 1000, (bs,), device=dev)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            crit = nn.CrossEntropyLoss()

            def step() -> None:
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    loss = crit(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            with cudnn_benchmark(dev):
                for _ in range(args.warmup):
                    step()
                _sync(dev)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                _sync(dev)
            dt = (time.perf_counter() - t0) / args.steps
            peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
            rows.append(f"| {arch} | {bs} | {res} | {dt * 1e3:.0f} | {bs / dt:,.0f} | {_f(peak, '.1f')} |")
        except torch.cuda.OutOfMemoryError as e:
            rows.append(f"| {arch} | {bs} | {res} | **out of memory** | | {str(e).splitlines()[0]} |")
        except Exception as e:  # noqa: BLE001 - one broken model must not hide the others
            rows.append(f"| {arch} | {bs} | {res} | **failed: {type(e).__name__}: {str(e).splitlines()[0]}** | | |")
            args.exit_code = 1
        finally:
            # After the except clause has dropped its traceback (which holds step()'s activations):
            # free this model before the next one, also when it ran out of memory.
            model = x = y = opt = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        print(rows[-1], flush=True)
        _partial(args, f"### Training steps per model ({dev.type})", MODEL_TABLE, rows)
    lines = [f"### Training steps per model (bf16 autocast, channels_last, SGD, cudnn.benchmark; {dev.type})", "",
             f"{args.warmup} warm-up steps, then {args.steps} timed steps; peak = torch.cuda.max_memory_allocated.", "",
             *MODEL_TABLE, *rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn: Callable, **defaults: Any) -> argparse.ArgumentParser:
        sp = sub.add_parser(name)
        sp.set_defaults(fn=fn)
        sp.add_argument("--md", type=Path, default=None, help="append the Markdown section here")
        sp.add_argument("--device", default="auto")
        return sp

    add("env", env)
    for name, fn in (("loaders", loaders), ("train", train_stage)):
        sp = add(name, fn)
        sp.add_argument("--data", required=True, help="built source dataset (dp4tl build ... --out DIR: DIR/source)")
        sp.add_argument("--loaders", default=DEFAULT_LOADERS, help=f"FORMAT:DECODE list (default {DEFAULT_LOADERS})")
        sp.add_argument("--batch-size", type=int, default=1024)
        sp.add_argument("--resolution", type=int, default=160)
        sp.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    sp = sub.choices["loaders"]
    sp.add_argument("--kept", default=DEFAULT_KEPT, help="kept class fractions (first must be 1.0)")
    sp.add_argument("--max-batches", type=int, default=None)
    sp.add_argument("--scaling", default=None, metavar="N,N,...",
                    help="also time ffcv CPU decode with each of these worker counts, e.g. 1,2,4,8,16")
    sp.add_argument("--scaling-batch", type=int, default=256)
    sp.add_argument("--scaling-batches", type=int, default=24, help="batches per timed epoch of the scaling rows")
    sp = sub.choices["train"]
    sp.add_argument("--recipe", default="resnet18_surrogate")
    sp.add_argument("--epochs", type=int, default=3)
    sp.add_argument("--workers-list", default=None,
                    help="CPU-decode worker counts to compare, e.g. 16,14 (default: --workers)")
    sp.add_argument("--set", action="append", default=[], help="extra recipe override section.key=value")
    sp.add_argument("--ceiling-steps", type=int, default=40)
    sp.add_argument("--ceiling-warmup", type=int, default=10)
    sp.add_argument("--workdir", default=None)
    sp = add("models", models)
    sp.add_argument("--models", default=DEFAULT_MODELS, help=f"ARCH:PX:BATCH list (default {DEFAULT_MODELS})")
    sp.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning)")
    sp.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    args.exit_code = 0
    args.md_offset = args.md.stat().st_size if args.md is not None and args.md.exists() else 0
    body = args.fn(args)
    _emit(args, f"{body}\n\n_{stamp}; `python benchmarks/bench_gpu.py {' '.join(sys.argv[1:] if argv is None else argv)}`_")
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
