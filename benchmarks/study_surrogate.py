"""What limits the embedded surrogate's selection? (issue 18, item 2; docs/synth.md)

Trains the embedded surrogate (ResNet-18 width 8, the recipe's SGD + triangular lr + label
smoothing, random-resized crop + flip) on the synth source **in memory** (images rendered by
``beton_builders.synth`` and JPEG round-tripped at the builder's quality 90, so no build is
needed), then measures against the generator's ground truth
(:mod:`ffcv_dp4tl.scoring.ground_truth`):

* LM: the recall of the mapped source classes among the top-k voted classes (k = the target's
  number of classes), with the target images read as the fast protocol reads them (224/256
  centre crop) and whole (``scoring.target_crop = "none"``);
* FM: the share of related samples among the source samples of the kept clusters (ratio 0.6,
  K = 64 as the embedded pipeline).

Factors: photometric jitter during surrogate training (``train.color_jitter``), the scoring crop,
the number of epochs, across generator seeds and both presets (``tiny``, ``bench``). Prints one
JSON line per (preset, seed, config) and a Markdown table at the end.

    nice -n 10 python benchmarks/study_surrogate.py --presets tiny,bench --seeds 0,1,2 \
        --out docs/embedded-benchmark/surrogate-study.jsonl
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from beton_builders.synth import parse_synth, synth_all
from ffcv_dp4tl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ffcv_dp4tl.scoring.feature_mapping import feature_mapping_scores, kmeans
from ffcv_dp4tl.scoring.ground_truth import ground_truth_from_extra, selection_quality, topk_recall
from ffcv_dp4tl.scoring.label_mapping import kept_sample_indices, select_classes
from ffcv_dp4tl.training.models import create_model
from ffcv_dp4tl.training.ssl_augment import MoCoAugment

JIT = [0.4, 0.4, 0.4, 0.0]
#: configurations: epochs multiplier, colour jitter [b, c, s, h] or None, random-resized-crop
#: area range, batch size (lr per 256 images as the recipe)
CONFIGS = {
    "recipe": dict(mult=1, jitter=None),
    "jitter": dict(mult=1, jitter=JIT),
    "jitter-strong": dict(mult=1, jitter=[0.6, 0.6, 0.4, 0.0]),
    "jitter-2x-epochs": dict(mult=2, jitter=JIT),
    "scale35": dict(mult=1, jitter=None, scale=(0.35, 1.0)),
    "scale35-bs32": dict(mult=1, jitter=None, scale=(0.35, 1.0), bs=32),
    "scale35-jitter": dict(mult=1, jitter=JIT, scale=(0.35, 1.0)),
    "scale35-jitter-bs32": dict(mult=1, jitter=JIT, scale=(0.35, 1.0), bs=32),
    "scale35-jitter-2x-bs32": dict(mult=2, jitter=JIT, scale=(0.35, 1.0), bs=32),
    "3x": dict(mult=3, jitter=None),
    "3x-lr0.25": dict(mult=3, jitter=None, lr=0.25),
    "3x-scale35": dict(mult=3, jitter=None, scale=(0.35, 1.0)),
    "3x-scale35-lr0.25": dict(mult=3, jitter=None, scale=(0.35, 1.0), lr=0.25),
    "3x-jitter-lr0.25": dict(mult=3, jitter=JIT, lr=0.25),
    "3x-scale35-lr0.25-jitter": dict(mult=3, jitter=JIT, scale=(0.35, 1.0), lr=0.25),
    "5x-scale35-lr0.25": dict(mult=5, jitter=None, scale=(0.35, 1.0), lr=0.25),
    # + white-balance jitter: each image's R, G, B scaled by exp(U(-0.2, 0.2)) each (a colour
    # temperature such as the `warm` target's R x1.15, B x0.8 lies inside that range)
    "3x-scale35-lr0.25-bs64-wb": dict(mult=3, jitter=None, scale=(0.35, 1.0), lr=0.25, bs=64,
                                      wb=0.2),
    "3x-scale35-lr0.1": dict(mult=3, jitter=None, scale=(0.35, 1.0), lr=0.1),
    "3x-scale35-lr0.25-bs64": dict(mult=3, jitter=None, scale=(0.35, 1.0), lr=0.25, bs=64),
}
EPOCHS = {"tiny": 10, "bench": 6}  # resnet18_tiny_cpu / resnet18_bench_surrogate_cpu


def render(specs, key: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    samples = specs[key].splits[split]
    out = np.empty((len(samples), samples[0].ref.size, samples[0].ref.size, 3), np.uint8)
    for i, s in enumerate(samples):
        buf = io.BytesIO()
        s.ref().save(buf, format="JPEG", quality=90)
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out, np.asarray([s.label for s in samples], np.int64)


def to_tensor(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (t - mean) / std


def rrc_flip(x: torch.Tensor, g: torch.Generator, scale=(0.08, 1.0)) -> torch.Tensor:
    """Batched random-resized crop (area ``scale``, aspect 3/4-4/3) + flip via affine grids."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=g)
    logr = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
    r = torch.exp(logr)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", align_corners=False)


def white_balance(x: torch.Tensor, amount: float, g: torch.Generator) -> torch.Tensor:
    """Per-image, per-channel gains exp(U(-amount, amount)) in pixel space (normalised in/out)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    gains = torch.exp(torch.empty(x.shape[0], 3, 1, 1).uniform_(-amount, amount, generator=g))
    return (((x * std + mean) * gains).clamp(0, 255) - mean) / std


def centre_crop(x: torch.Tensor, ratio: float = 224 / 256) -> torch.Tensor:
    n = x.shape[-1]
    c = int(ratio * n)
    o = (n - c) // 2
    return F.interpolate(x[:, :, o:o + c, o:o + c], size=(n, n), mode="bilinear",
                         align_corners=False, antialias=True)


def train(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int, jitter, seed: int,
          scale=(0.08, 1.0), bs: int = 128, lr: float = 1.0, wb: float = 0.0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = create_model("resnet18", num_classes, small_input=True, stem_stride=2, width=8,
                         blurpool=False)
    decay = [p for n_, p in model.named_parameters() if p.ndim > 1]
    rest = [p for n_, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-5},
                           {"params": rest, "weight_decay": 5e-5}], lr=0.5, momentum=0.9)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    aug = MoCoAugment(jitter, p_jitter=0.8, p_gray=0.0, p_blur=0.0) if jitter else None
    n = x.shape[0]
    steps = n // bs
    peak = lr * bs / 256
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        for it in range(steps):
            e = ep + it / steps
            lr = peak * (e / 2 if e < 2 else max(0.0, (epochs - e) / (epochs - 2)))
            for grp in opt.param_groups:
                grp["lr"] = lr
            idx = perm[it * bs:(it + 1) * bs]
            xb = rrc_flip(x[idx], g, scale)
            if aug is not None:
                xb = aug(xb)
            if wb:
                xb = white_balance(xb, wb, g)
            loss = crit(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def infer(model, x: torch.Tensor, bs: int = 512) -> tuple[np.ndarray, np.ndarray]:
    logits, feats = [], []
    for i in range(0, x.shape[0], bs):
        f = model.forward_features(x[i:i + bs])
        feats.append(f)
        logits.append(model.forward_head(f) if hasattr(model, "forward_head") else model.fc(f))
    return torch.cat(logits).numpy(), torch.cat(feats).numpy()


#: one factor of a target's domain shift set back to the source's value (``--ablate TARGET``)
ABLATIONS = {"scale": ("scale",), "temperature": ("temperature",), "gradient": ("gradient",),
             "softness": ("softness",), "ground": ("bg_lo", "bg_hi"), "noise": ("noise",),
             "waves": ("waves",), "value": ("value",), "all": ()}


def ablate(model, cfg, gt, target: str) -> dict[str, float]:
    """LM top-k recall on ``target`` rendered with each factor of its domain shift set back to
    the source's value (``all``: every factor: the source's own domain), the surrogate fixed."""
    import dataclasses

    from beton_builders import synth

    idx = cfg.target_names().index(target)
    shifted = synth.TARGET_DOMAINS[idx % len(synth.TARGET_DOMAINS)]
    out = {}
    saved = synth.TARGET_DOMAINS
    try:
        for name, fields in ABLATIONS.items():
            keep = {f.name: getattr(synth.SOURCE_DOMAIN, f.name) for f in dataclasses.fields(shifted)
                    if f.name != "name" and (not fields or f.name in fields)}
            if fields and all(getattr(shifted, k) == v for k, v in keep.items()):
                continue  # this shift does not change that factor
            doms = list(saved)
            doms[idx % len(saved)] = dataclasses.replace(shifted, **keep)
            synth.TARGET_DOMAINS = tuple(doms)
            specs = {f"targets/{k}": v for k, v in synth.synth_targets(cfg).items()}
            tx = to_tensor(render(specs, f"targets/{target}", "train")[0])
            tlog, _ = infer(model, centre_crop(tx))
            votes = np.bincount(tlog.argmax(1), minlength=cfg.num_classes)
            soft = torch.softmax(torch.from_numpy(tlog).double(), 1).sum(0).numpy()
            out[name] = {"recall": topk_recall(votes, gt, soft),
                         "vote_share": float(gt.related[tlog.argmax(1)].mean())}
    finally:
        synth.TARGET_DOMAINS = saved
    return out


def study(preset: str, seed: int, configs: list[str], log, data_extra: str = "",
          ablate_target: str = "") -> None:
    cfg = parse_synth(f"synth:{preset},seed={seed}" + (f",{data_extra}" if data_extra else ""))
    specs = synth_all(cfg)
    src = specs["source"]
    t0 = time.perf_counter()
    xs, ys = render(specs, "source", "train")
    xv, yv = render(specs, "source", "val")
    targets = {name: render(specs, f"targets/{name}", "train")[0] for name in cfg.target_names()}
    render_s = time.perf_counter() - t0
    X, Y, XV = to_tensor(xs), torch.from_numpy(ys), to_tensor(xv)
    T = {n: to_tensor(v) for n, v in targets.items()}
    for name in configs:
        c = CONFIGS[name]
        jitter, epochs = c["jitter"], EPOCHS[preset] * c["mult"]
        t1 = time.perf_counter()
        model = train(X, Y, cfg.num_classes, epochs, jitter, seed,
                      scale=c.get("scale", (0.08, 1.0)), bs=c.get("bs", 128),
                      lr=c.get("lr", 1.0), wb=c.get("wb", 0.0))
        train_s = time.perf_counter() - t1
        vlog, _ = infer(model, XV)
        _, sfeat = infer(model, X)
        km = kmeans(sfeat.astype(np.float32), 64, iters=20, seed=0, backend="cpu")
        row = {"preset": preset, "data": data_extra, "seed": seed, "config": name, "epochs": epochs,
               "jitter": jitter, "scale": list(c.get("scale", (0.08, 1.0))),
               "batch": c.get("bs", 128), "lr": c.get("lr", 1.0), "val_top1": float((vlog.argmax(1) == yv).mean()),
               "train_s": round(train_s, 1), "render_s": round(render_s, 1), "targets": {}}
        for tname, tx in T.items():
            gt = ground_truth_from_extra(src.extra, [tname])
            res = {}
            for crop, view in (("center", centre_crop(tx)), ("none", tx)):
                tlog, tfeat = infer(model, view)
                votes = np.bincount(tlog.argmax(1), minlength=cfg.num_classes)
                soft = torch.softmax(torch.from_numpy(tlog).double(), 1).sum(0).numpy()
                kept = select_classes(votes, 0.6, soft)
                fm_votes = feature_mapping_scores(tfeat.astype(np.float32), km.centroids,
                                                  backend="cpu")
                kept_c = select_classes(fm_votes, 0.6, np.bincount(km.labels, minlength=64))
                fm_idx = kept_sample_indices(np.asarray(km.labels), kept_c)
                res[crop] = {
                    "lm_recall": topk_recall(votes, gt, soft),
                    "lm_vote_share": float(gt.related[tlog.argmax(1)].mean()),
                    "lm_kept_related_samples": selection_quality(gt, ys[np.isin(ys, kept)])["related_samples"],
                    "fm_related_samples": selection_quality(gt, ys[fm_idx])["related_samples"],
                    "chance": gt.chance(ys),
                }
            row["targets"][tname] = res
        if ablate_target:
            row["ablation"] = {ablate_target: ablate(model, cfg, ground_truth_from_extra(
                src.extra, [ablate_target]), ablate_target)}
        log(json.dumps(row))


def latest_per_seed(rows: list[dict]) -> list[dict]:
    """One row per (preset, data, config, generator seed): the file's last, since a later run of
    the same seed reruns it (a control rerun under newer code) rather than adding a seed. Counted
    twice, it showed as "4 (1,0,2,0)" runs and moved the means (audit)."""
    last = {(r["preset"], r.get("data", ""), r["config"], r["seed"]): r for r in rows}
    return list(last.values())


def table(rows: list[dict]) -> str:
    rows = latest_per_seed(rows)
    lines = ["| preset | config | crop | val top-1 | " + " | ".join(
        f"LM recall {t} (min–mean)" for t in ("paper", "warm", "blur")) + " | FM related (mean) | runs (generator seeds) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    def pname(r):
        return r["preset"] + (f",{r['data']}" if r.get("data") else "")
    keys = sorted({(pname(r), r["config"]) for r in rows}, key=lambda k: (k[0], list(CONFIGS).index(k[1])))
    for preset, config in keys:
        rs = [r for r in rows if pname(r) == preset and r["config"] == config]
        for crop in ("center", "none"):
            cells = []
            for t in ("paper", "warm", "blur"):
                v = [r["targets"][t][crop]["lm_recall"] for r in rs]
                cells.append(f"{min(v):.2f}–{np.mean(v):.2f}")
            fm = np.mean([r["targets"][t][crop]["fm_related_samples"] for r in rs for t in r["targets"]])
            lines.append(f"| {preset} | {config} | {crop} | {np.mean([r['val_top1'] for r in rs]):.2f} | "
                         + " | ".join(cells) + f" | {fm:.2f} | {len(rs)} ({','.join(str(r['seed']) for r in rs)}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,bench")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", type=Path, default=Path("surrogate-study.jsonl"))
    ap.add_argument("--data-extra", default="", help="extra synth keys, e.g. light_background=30")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a loaded machine)")
    ap.add_argument("--ablate", default="", help="a target: also its LM recall with each factor "
                    "of its domain shift set back to the source's (the surrogate fixed)")
    ap.add_argument("--table", action="store_true", help="only print the table of --out")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not a.table:
        with a.out.open("a") as f:
            def log(line: str) -> None:
                print(line, flush=True)
                f.write(line + "\n")
                f.flush()
            for seed in [int(s) for s in a.seeds.split(",")]:
                for preset in a.presets.split(","):
                    study(preset, seed, a.configs.split(","), log, a.data_extra, a.ablate)
    rows = [json.loads(l) for l in a.out.read_text().splitlines() if l.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
