#!/usr/bin/env python
"""The user's paths in ``scripts/gpu_check.sh``: the pipeline, the cost table, the decode race.

    python benchmarks/bench_gpu_user.py pipeline --data SOURCE --md OUT.md [--method lm,fm]
    python benchmarks/bench_gpu_user.py costtable --data DIR/source --target DIR/TARGET --md OUT.md
    python benchmarks/bench_gpu_user.py race --data DIR/source --md OUT.md

* ``pipeline`` runs ``dp4tl pipeline`` (the CLI, as a user types it) once per method on one
  runs root, so the surrogate is trained once and reused; each run's report.md is appended.
* ``costtable`` is paper Tab. 3 at reduced scale: RN-18 surrogate training, LM selection, then
  one epoch of the source model (paper RN-101, bf16, channels_last) at every pruning ratio, each
  timed on its own; reductions beside the paper's, plus an extrapolation to ImageNet-1K x 16
  epochs from the measured img/s, labelled as such.
* ``race`` probes nvJPEG's stream race (docs/gpu.md, "nvJPEG and the training stream"): blocks
  that queued kernels will still write are freed, then JPEGs are decoded, and every decoded
  image is compared with an isolated reference decode. Decoding on the training stream should
  corrupt images (> 0: the race is real here), the loader's side stream never (the control).

Every subcommand runs on a CPU too (``--device cpu``, tiny settings: tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ffcv_dp4tl.data import load_manifest  # noqa: E402
from ffcv_dp4tl.bench.stats import paper_reduction  # noqa: E402
from ffcv_dp4tl.training.distributed import resolve_device  # noqa: E402

#: ImageNet-1K train images and the paper's pretraining epochs (Tab. 3's setting).
IMAGENET_TRAIN = 1_281_167
PAPER_EPOCHS = 16
RATIOS = "0,0.2,0.4,0.6,0.8"


def _write(md: Path | None, text: str) -> None:
    """(Re)write this stage's Markdown file: called after every finished part, so a stage cut by
    its time limit still reports the parts that ran."""
    if md is not None:
        md.write_text(text.rstrip() + "\n\n")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ------------------------------------------------------------------------------- pipeline
def pipeline(args) -> str:
    """``dp4tl pipeline`` per method, same runs root: the user's path, timed whole."""
    from ffcv_dp4tl.scoring.registry import get_scorer

    rows, reports, failed = [], [], False
    for method in args.method.split(","):
        # --k only for a method that clusters: `dp4tl pipeline` refuses a --k it would ignore
        k = ["--k", str(args.k)] if args.k is not None and get_scorer(method).uses_k else []
        cmd = [sys.executable, "-m", "ffcv_dp4tl", "pipeline", "--data", args.data, "--device", args.device,
               "--method", method, "--ratio", str(args.ratio), "--data-root", str(args.workdir / "data"),
               "--runs-root", str(args.workdir / "runs"), *k, *args.extra]
        t0 = time.perf_counter()
        print(f"[pipeline] {' '.join(shlex.quote(a) for a in cmd)}", flush=True)
        rc, tail = _stream(cmd)
        dt = time.perf_counter() - t0
        report = _last_report(args.workdir / "runs", t0_wall=time.time() - dt)
        what = "ok" if rc == 0 else f"**failed (rc {rc})**: {_last_line(tail)}"
        failed |= rc != 0
        rows.append(f"| {method} | {what} | {dt:.0f} | {report.relative_to(args.workdir) if report else '–'} |")
        if report is not None:
            reports.append((method, report.read_text()))
        _write(args.md, _pipeline_md(args, rows, reports) + "\n\n_(partial: more runs follow)_")
    if not failed:
        row, ok = _recheck_clean(args)
        if row:
            rows.append(row)
            failed |= not ok
    if failed:
        args.exit_code = 1
    return _pipeline_md(args, rows, reports)


def _recheck_clean(args) -> tuple[str | None, bool]:
    """The newest finetuned run (FF first) re-evaluated on the device by `dp4tl evaluate
    corruptions`, at the run's recorded test precision (bf16 autocast for FF on CUDA) and batch
    size: the row says whether its clean top-1 equals the top-1 the run reported (a difference
    is a finding, e.g. cuDNN choosing other kernels, not a failure of the stage). One mild
    corruption keeps it to seconds."""
    runs = args.workdir / "runs"
    found = [p for mode in ("ff", "lp") for p in sorted(runs.rglob(f"finetune-{mode}-*/result.json"),
                                                       key=lambda p: p.stat().st_mtime)[-1:]]
    if not found:
        return None, True
    run, out = found[0].parent, args.workdir / "recheck"
    cmd = [sys.executable, "-m", "ffcv_dp4tl", "evaluate", "corruptions", f"run={run}",
           "--corrupt", "gaussian_noise:1", "-o", str(out), "--device", args.device, "--no-progress"]
    t0 = time.perf_counter()
    print(f"[pipeline] {' '.join(shlex.quote(a) for a in cmd)}", flush=True)
    rc, tail = _stream(cmd)
    dt = time.perf_counter() - t0
    what = f"`dp4tl evaluate corruptions` of {run.name}"
    if rc != 0:
        return f"| {what} | **failed (rc {rc})**: {_last_line(tail)} | {dt:.0f} | – |", False
    r = json.loads((out / "corruptions.json").read_text())["run"]
    # (a difference is this row's finding, not a failure of the pipeline stage)
    verdict = "**equal**" if r["clean_top1"] == r["reported_test_top1"] else "**differs**"
    return (f"| {what} | clean top-1 {r['clean_top1']:.4f} vs the run's {r['reported_test_top1']:.4f} "
            f"({r['precision']}, {r['device']}, batch {r['batch_size']}): {verdict} | {dt:.0f} | "
            f"{out.relative_to(args.workdir)} |", True)


def _pipeline_md(args, rows: list[str], reports: list[tuple[str, str]]) -> str:
    lines = ["### The user's path: `dp4tl pipeline`", "",
             f"Source `{args.data}`, ratio {args.ratio}, device `{args.device}`; extra options "
             f"`{' '.join(shlex.quote(a) for a in args.extra) or '-'}`. One runs root: the surrogate is trained "
             "by the first run and reused (stage cache) by the next. FM's assignment method: "
             + (f"`{os.environ['DP4TL_FM_METHOD']}`, fixed by `DP4TL_FM_METHOD`."
                if os.environ.get("DP4TL_FM_METHOD") else "measured (`auto`)."), "",
             "| method | result | seconds | report |", "| --- | --- | ---: | --- |", *rows]
    for method, text in reports:
        body = [("###" + ln) if ln.startswith("#") else ln for ln in text.strip().splitlines()]
        lines += ["", f"<details><summary>report of the {method} run</summary>", "", *body, "", "</details>"]
    return "\n".join(lines)


def _stream(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd``, echoing its output as it comes (the stage log shows progress even when the
    stage's time limit cuts it), and return its exit code and last lines."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        tail = (tail + [line])[-50:]
    return proc.wait(), "".join(tail)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _last_report(runs: Path, t0_wall: float) -> Path | None:
    found = [p for p in runs.rglob("report.md") if p.stat().st_mtime >= t0_wall - 1] if runs.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


# ------------------------------------------------------------------------------- costtable
def costtable(args) -> str:
    """Tab. 3 at reduced scale, every part timed on its own in one process on one device."""
    from ffcv_dp4tl.data import mask_from_classes
    from ffcv_dp4tl.pipeline.prune import prune
    from ffcv_dp4tl.pipeline.score import score
    from ffcv_dp4tl.training.checkpoint import CHECKPOINT_NAME
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import train

    dev = resolve_device(args.device)
    data, work = Path(args.data), args.workdir
    split = load_manifest(data).split("train")
    once = ["train.keep_epochs=[]", "eval.every=1000"]

    def run_train(recipe_name: str, overrides: list[str], out: Path, mask: Path | None,
                  epochs: int) -> dict[str, Any]:
        rec = load_recipe(recipe_name, [f"train.epochs={epochs}", *once, *overrides])
        t0 = time.perf_counter()
        train(rec, data, mask=mask, out_dir=out, device=dev, progress=False)
        wall = time.perf_counter() - t0
        rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln]
        timings = json.loads((out / "timings.json").read_text()).get("stages", {})
        epoch_s = [r["train_seconds"] for r in rows]
        epoch_samples = [r["samples"] for r in rows]
        train_s, samples = sum(epoch_s), sum(epoch_samples)
        # Steady state: a fresh loader's first epoch still pays set-up (ffcv's pipeline compile for
        # this loader, buffer allocation, cuDNN autotuning at new shapes) even after the warm-up
        # run, so the rate the extrapolation uses is over the epochs after the first when there are
        # two or more (else over the only epoch, marked not steady).
        steady = len(rows) >= 2
        later = slice(1, None) if steady else slice(None)
        return {"wall": wall, "train_s": train_s, "samples": samples, "epochs": len(rows),
                "epoch_s": epoch_s, "epoch_samples": epoch_samples,
                "img_per_s": samples / max(train_s, 1e-9),
                "steady_img_per_s": sum(epoch_samples[later]) / max(sum(epoch_s[later]), 1e-9),
                "steady": steady, "arch": rec.model.arch,
                "res": rows[0]["resolution"], "precision": rec.train.precision, "cl": rec.train.channels_last,
                "data_s": timings.get("data", 0.0), "top1": rows[-1].get("top1_val")}

    # Warm-up (untimed): one short run of each recipe on a few classes, so ffcv's pipeline JIT
    # and cuDNN autotuning are not charged to whichever timed run happens to come first.
    labels = np.asarray(split.load_labels())
    batch = max(load_recipe(n, o).train.batch_size for n, o in ((args.surrogate_recipe, args.set_surrogate),
                                                                (args.recipe, args.set)))
    counts = np.bincount(labels)
    enough = int(np.searchsorted(np.cumsum(counts), batch + 1)) + 1  # classes for a full batch
    few = mask_from_classes(split, list(range(min(enough, len(counts)))), method="warmup")
    t0 = time.perf_counter()
    for name, over in ((args.surrogate_recipe, args.set_surrogate), (args.recipe, args.set)):
        train(load_recipe(name, ["train.epochs=1", *once, *over]), data, mask=few,
              out_dir=work / f"warmup-{name.replace('/', '-')}", device=dev, progress=False)
    print(f"[costtable] warm-up {time.perf_counter() - t0:.1f} s on {len(few.indices)} images", flush=True)
    sur = run_train(args.surrogate_recipe, args.set_surrogate, work / "surrogate", None, args.surrogate_epochs)
    print(f"[costtable] surrogate {sur}", flush=True)
    t0 = time.perf_counter()
    score("lm", source_dir=data, out_dir=work / "scores-lm", checkpoint=work / "surrogate" / CHECKPOINT_NAME,
          target_dir=args.target, device=str(dev), num_workers=args.workers, progress=False)
    t_score = time.perf_counter() - t0
    print(f"[costtable] LM selection {t_score:.1f} s", flush=True)
    runs = []
    for ratio in [float(r) for r in args.ratios.split(",")]:
        mask, t_prune, kept = None, 0.0, 1.0
        if ratio > 0:
            t0 = time.perf_counter()
            info = prune(work / "scores-lm", data, ratio, work / f"mask-{ratio:g}")
            t_prune = time.perf_counter() - t0
            mask, kept = work / f"mask-{ratio:g}" / "train.npy", float(info["kept_sample_fraction"])
        r = run_train(args.recipe, args.set, work / f"pretrain-{ratio:g}", mask, args.epochs)
        r.update(ratio=ratio, kept=kept, prune_s=t_prune)
        print(f"[costtable] ratio {ratio:g}: {r}", flush=True)
        runs.append(r)
        _write(args.md, _costtable_md(args, dev, split.num_samples, sur, t_score, runs)
               + "\n\n_(partial: more ratios follow)_")
    return _costtable_md(args, dev, split.num_samples, sur, t_score, runs)


def _costtable_md(args, dev, n_train: int, sur: dict, t_score: float, runs: list[dict]) -> str:
    base = runs[0]
    # measured table: the surrogate counted over as many epochs as the source model ran, both from a
    # fresh loader (so both carry a first epoch's set-up), as Tab. 3 trains both for 16 epochs
    n_src = base.get("epochs", args.epochs)
    n_sur = min(n_src, len(sur["epoch_s"]))
    sur_sel = sum(sur["epoch_s"][:n_sur]) * n_src / n_sur
    # extrapolation: steady-state rates (epochs after the first) where a run had >= 2 epochs
    ext_sur = IMAGENET_TRAIN * PAPER_EPOCHS / sur["steady_img_per_s"]
    ext_ref = IMAGENET_TRAIN * PAPER_EPOCHS / base["steady_img_per_s"]
    rows, ext_rows = [], []
    for r in runs:
        red = 1 - r["train_s"] / base["train_s"] if r is not base else None
        paper = paper_reduction(r["ratio"])
        sel = 0.0 if r["ratio"] == 0 else sur_sel + t_score + r["prune_s"]
        total = sel + r["train_s"]
        red_total = 1 - total / base["train_s"] if r is not base else None
        rows.append(f"| {r['ratio']:.0%} | {r['kept']:.3f} | {r['samples']:,} | {r['train_s']:.1f} | {r['img_per_s']:,.0f} | "
                    f"{_pct(red)} | {sel:.1f} | {_pct(red_total)} | {_pct(paper)} |")
        # extrapolation: the kept share of ImageNet-1K x 16 epochs at this run's steady img/s
        ext_pre = IMAGENET_TRAIN * r["kept"] * PAPER_EPOCHS / r["steady_img_per_s"]
        pruned = r["ratio"] != 0
        ext_trained = ext_pre + (ext_sur + t_score if pruned else 0.0)  # Tab. 3: surrogate included
        ext_reused = ext_pre + (t_score if pruned else 0.0)  # surrogate already trained for this source
        ext_rows.append(f"| {r['ratio']:.0%} | {r['steady_img_per_s']:,.0f} | {ext_pre / 3600:.2f} | "
                        f"{ext_trained / 3600:.2f} | {_pct(None if r is base else 1 - ext_trained / ext_ref)} | "
                        f"{ext_reused / 3600:.2f} | {_pct(None if r is base else 1 - ext_reused / ext_ref)} | "
                        f"{_pct(paper)} |")
    sur_first = sur["epoch_samples"][0] / max(sur["epoch_s"][0], 1e-9)
    scaled = f" (scaled from its {n_sur})" if n_sur != n_src else ""
    return "\n".join([
        "### Cost table (Tab. 3) at reduced scale, measured", "",
        f"Source `{args.data}`: {n_train:,} train images. Surrogate `{args.surrogate_recipe}` ({sur['arch']}, "
        f"{sur['res']} px, {sur['precision']}): {len(sur['epoch_s'])} epoch(s) in {sur['train_s']:.1f} s of "
        f"training steps ({sur_first:,.0f} img/s in the first epoch, {_rate(sur)}); LM selection (target "
        f"`{args.target}`) {t_score:.1f} s. Source model "
        f"`{args.recipe}` ({base['arch']}, {base['res']} px, {base['precision']}, channels_last={base['cl']}), "
        f"{n_src} epoch(s) per ratio; seconds = the trainer's training-loop time (data waits included; no "
        f"eval, no set-up), after an untimed warm-up run of each recipe (ffcv JIT, cuDNN autotuning); "
        f"selection = surrogate + LM + prune, the surrogate's seconds those of its first {n_src} epoch(s) as "
        f"measured{scaled}: as many surrogate epochs as source epochs, both from a fresh loader so both pay "
        f"the same first-epoch set-up, as Tab. 3 trains both for {PAPER_EPOCHS} epochs. Device {dev.type}.", "",
        "| pruned | kept fraction | images | pretrain s | img/s | pretrain reduction | selection s | "
        "total reduction | paper (Tab. 3) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", *rows, "",
        "At this scale the selection cost is that of surrogate epochs against as many source epochs on a small "
        "source; in the paper it is small beside 16 epochs of RN-101 on ImageNet-1K. Hence the extrapolation "
        "below.", "",
        f"**Extrapolation, not a measurement:** ImageNet-1K ({IMAGENET_TRAIN:,} images) x {PAPER_EPOCHS} epochs "
        f"of the source model at each run's img/s in the table ({_rate(base, '--epochs', number=False)}; all epochs at "
        f"this run's resolution, the paper ramps 160 -> 192 px), plus LM selection as measured ({t_score:.0f} s; "
        "LM reads the target, not the source) for the pruned runs. Two totals: *surrogate trained* counts "
        f"{PAPER_EPOCHS} epochs of the surrogate at {_rate(sur)} = {ext_sur / 3600:.2f} h, as Tab. 3 does; "
        "*surrogate reused* leaves it out: the surrogate is trained once per source and reused for every "
        "target (stage cache), so this is each further target's cost.", "",
        "| pruned | img/s used | pretrain h | total h, surrogate trained (Tab. 3) | reduction (surrogate trained) | "
        "total h, surrogate reused | reduction (surrogate reused) | paper (Tab. 3) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", *ext_rows])


def _rate(run: dict, option: str = "--surrogate-epochs", number: bool = True) -> str:
    """Which rate the extrapolation uses for ``run``: steady (epochs after the first) or not."""
    rate, n = f"{run['steady_img_per_s']:,.0f} img/s " if number else "", len(run["epoch_s"])
    if run["steady"]:
        return f"{rate}steady state, over {'epoch 2' if n == 2 else f'epochs 2-{n}'}"
    return (f"{rate}over the only epoch, not steady state: a fresh loader's first epoch includes set-up, "
            f"so the hours are overstated ({option} 2 measures the steady rate)")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


# ------------------------------------------------------------------------------- race
def race(args) -> str:
    """Decode the same JPEGs ``--rounds`` times while queued kernels write freed blocks of the
    decoded images' sizes; count decoded images that differ from an isolated reference."""
    from torchvision.io import ImageReadMode, decode_jpeg

    dev = resolve_device(args.device)
    jpegs = _sample_jpegs(Path(args.data), args.images)
    ref = [img.clone() for img in decode_jpeg(jpegs, device=dev, mode=ImageReadMode.RGB)]
    _sync(dev)
    side = torch.cuda.Stream(device=dev) if dev.type == "cuda" else None

    loader_side, side_what = _loader_side_decode(dev)

    def decode(mode: str) -> list[torch.Tensor]:
        if mode == "training stream" or side is None:
            return decode_jpeg(jpegs, device=dev, mode=ImageReadMode.RGB)
        if loader_side is not None:
            return loader_side(jpegs)
        main = torch.cuda.current_stream(dev)  # the loader's documented protocol
        with torch.cuda.stream(side):
            images = decode_jpeg(jpegs, device=dev, mode=ImageReadMode.RGB)
        main.wait_stream(side)
        for img in images:
            img.record_stream(main)
        return images

    big = torch.randn(args.matmul, args.matmul, device=dev)
    rows, counts = [], {}
    for mode in ("training stream", "side stream"):
        bad = 0
        t0 = time.perf_counter()
        for _ in range(args.rounds):
            bufs = [torch.empty_like(r) for r in ref]  # same sizes: the allocator's next blocks
            y = big
            for _ in range(args.busy):  # keep the stream busy, then write every freed block late
                y = torch.tanh(y @ big)
            fill = (y[0, 0] > 2).to(torch.uint8) + 7  # data-dependent: runs after the matmuls
            for b in bufs:
                b.fill_(0).add_(fill)
            del bufs
            images = decode(mode)
            _sync(dev)
            bad += sum(not torch.equal(a, b) for a, b in zip(images, ref))
        counts[mode] = bad
        rows.append(f"| {mode} | {args.rounds * len(ref):,} | {bad:,} | {time.perf_counter() - t0:.1f} |")
        print(rows[-1], flush=True)
    race_seen, control_clean = counts["training stream"] > 0, counts["side stream"] == 0
    verdict = ("CPU rehearsal: decoding on the CPU has no stream to race (plumbing only)" if dev.type == "cpu"
               else "the race is real here and the side stream avoids it: **fix shown**" if race_seen and control_clean
               else "**the side stream corrupted images: fix NOT shown**" if not control_clean
               else "no corruption on the training stream either: the race was **not reproduced** (fix not shown "
                    "by this probe)")
    if not control_clean:
        args.exit_code = 1
    return "\n".join([
        f"### GPU decode: stream race probe ({dev.type})", "",
        f"{len(ref)} JPEGs from `{args.data}` decoded {args.rounds} times per mode; before each decode, blocks of the "
        f"decoded images' sizes are freed while {args.busy} queued {args.matmul}x{args.matmul} matmuls and then fills "
        "that write them are still pending. `corrupted` = decoded images not bit-equal to an isolated reference decode. "
        f"Side stream: {side_what}.",
        "", "| decode on | images | corrupted | seconds |", "| --- | ---: | ---: | ---: |", *rows, "", f"Verdict: {verdict}."])


def _loader_side_decode(dev: torch.device):
    """The GPU-decode loader's own side-stream decode (``DeviceDecodeLoader._decode_on_side_stream``),
    so the control runs the loader's code, not a copy; a replica of its documented protocol when
    that method is not there (the loader was restructured)."""
    if dev.type != "cuda":
        return None, "n/a on the CPU"
    from ffcv_dp4tl.data.gpu_decode import DeviceDecodeLoader

    if getattr(DeviceDecodeLoader, "_decode_on_side_stream", None) is None:
        return None, "a replica of the loader's protocol (own stream, wait_stream, record_stream)"
    return side_decoder(dev), "the loader's own `DeviceDecodeLoader._decode_on_side_stream`"


def side_decoder(dev: torch.device):
    """JPEG tensors -> decoded images, through the loader's side-stream decode and its handover
    to the training stream (``_device_batch``: wait on the ready event, ``record_stream``), then
    cut out of the padded canvas. The loader shell has only what the decode reads: ``device``."""
    from types import SimpleNamespace

    from ffcv_dp4tl.data.gpu_decode import DeviceDecodeLoader, jpeg_hw, with_index

    loader = object.__new__(DeviceDecodeLoader)
    loader.device = with_index(dev)

    def decode(jpegs: list[torch.Tensor]) -> list[torch.Tensor]:
        hw = np.array([jpeg_hw(memoryview(j.numpy())) for j in jpegs], np.int64).reshape(-1, 2)
        host = SimpleNamespace(data=jpegs, hw=hw, indices=np.arange(len(jpegs)),
                               canvas=(int(hw[:, 0].max()), int(hw[:, 1].max())))
        canvas, ready = loader._decode_on_side_stream(host)
        main = torch.cuda.current_stream(loader.device)
        main.wait_event(ready)
        canvas.record_stream(main)
        return [canvas[i, :, :h, :w] for i, (h, w) in enumerate(hw.tolist())]

    return decode


def _sample_jpegs(data: Path, count: int) -> list[torch.Tensor]:
    """The first ``count`` JPEGs of the train shards, as uint8 tensors (no loader involved)."""
    import tarfile

    out: list[torch.Tensor] = []
    for shard in sorted(data.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith((".jpg", ".jpeg")):
                    out.append(torch.frombuffer(bytearray(tar.extractfile(m).read()), dtype=torch.uint8))
                    if len(out) >= count:
                        return out
    if not out:
        raise SystemExit(f"race: no JPEG shards under {data}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn) -> argparse.ArgumentParser:
        sp = sub.add_parser(name)
        sp.set_defaults(fn=fn)
        sp.add_argument("--md", type=Path, default=None, help="append the Markdown section here")
        sp.add_argument("--device", default="auto")
        sp.add_argument("--data", required=True)
        sp.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "gpu-user")
        return sp

    sp = add("pipeline", pipeline)
    sp.add_argument("--method", default="lm,fm")
    sp.add_argument("--ratio", type=float, default=0.6)
    sp.add_argument("--k", type=int, default=None, help="FM's K, passed to the methods that cluster")
    sp.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `dp4tl pipeline` options")
    sp = add("costtable", costtable)
    sp.add_argument("--target", required=True, help="built target dir (LM scores for it)")
    sp.add_argument("--surrogate-recipe", default="paper/resnet18_surrogate")
    sp.add_argument("--recipe", default="paper/resnet101_16ep")
    sp.add_argument("--epochs", type=int, default=1, help="source-model epochs per ratio")
    sp.add_argument("--surrogate-epochs", type=int, default=2,
                    help="surrogate epochs timed (>= 2: the extrapolation uses the rate after the first)")
    sp.add_argument("--ratios", default=RATIOS)
    sp.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    sp.add_argument("--set", action="append", default=[], help="source-model recipe override")
    sp.add_argument("--set-surrogate", action="append", default=[], help="surrogate recipe override")
    sp = add("race", race)
    sp.add_argument("--images", type=int, default=256)
    sp.add_argument("--rounds", type=int, default=20)
    sp.add_argument("--busy", type=int, default=8, help="queued matmuls before the late writes")
    sp.add_argument("--matmul", type=int, default=4096)
    args = p.parse_args(argv)
    if getattr(args, "extra", None) and args.extra[0] == "--":
        args.extra = args.extra[1:]
    args.exit_code = 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = args.fn(args)
    text = f"{body}\n\n_{stamp}; `python benchmarks/bench_gpu_user.py {' '.join(sys.argv[1:] if argv is None else argv)}`_"
    print(text, flush=True)
    _write(args.md, text)
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
