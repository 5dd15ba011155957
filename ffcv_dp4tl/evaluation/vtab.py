"""Tab. A5: VTAB-1k style few-shot splits of any target, as index masks.

VTAB-1k (Zhai et al. 2019, the paper's [119]) gives every task 1000 training examples drawn
from its train split: ``train800`` to train on, ``val200`` to select hyper-parameters on, and
``train800val200`` (the union, 1000) for the final run, which is then evaluated on the task's
full test split. The paper's Tab. A5 ("800 training and 200 testing samples") follows that
protocol on the seven NATURAL tasks.

Here the three subsets are **index masks over the target's own train split** (never copies):
``train800.npy`` / ``val200.npy`` / ``train800val200.npy`` with their ``MaskMeta`` sidecars
(provenance ``method = "vtab1k"``, the seed and the sizes). They are drawn uniformly without
replacement by ``numpy.random.default_rng(seed)`` (VTAB's own split is a fixed random one;
it is not class-stratified either): one permutation of the split, its first ``train_size``
samples are train, the next ``val_size`` val. The same dataset, seed and sizes give the same
bytes; a folder holds one draw (another is refused there: :func:`save_vtab_masks`). Finetune on them with ``dp4tl finetune --train-mask`` and ``--test-split train
--test-mask val200.npy`` (docs/evaluations.md has the full protocol).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from ..contracts import check_seeds
from ..data import IndexMask, load_manifest, load_mask, make_mask, save_mask
from ..errors import DataError, DP4TLError

TRAIN_SIZE, VAL_SIZE = 800, 200
NAMES = ("train", "val", "trainval")


def mask_names(train_size: int = TRAIN_SIZE, val_size: int = VAL_SIZE) -> dict[str, str]:
    """File stems of the three masks: ``train800``, ``val200``, ``train800val200``."""
    return {"train": f"train{train_size}", "val": f"val{val_size}",
            "trainval": f"train{train_size}val{val_size}"}


def vtab_masks(dataset_dir: str | Path, *, split: str = "train", seed: int = 0,
               train_size: int = TRAIN_SIZE, val_size: int = VAL_SIZE) -> dict[str, IndexMask]:
    """``{"train", "val", "trainval"}`` masks over ``split`` of the built dataset."""
    seed = check_seeds([seed], "--seed", DataError)[0]
    if train_size < 1 or val_size < 1:
        raise DataError(f"VTAB split sizes must be >= 1 (got train {train_size}, val {val_size})")
    info = load_manifest(dataset_dir).split(split)
    need = train_size + val_size
    if info.num_samples < need:
        raise DataError(f"{dataset_dir} split {split!r} has {info.num_samples} samples, fewer "
                        f"than the {train_size} + {val_size} a VTAB-1k split draws; pass smaller "
                        "--train-size/--val-size (e.g. 4/5 and 1/5 of it)")
    order = np.random.default_rng(seed).permutation(info.num_samples)
    parts = {"train": order[:train_size], "val": order[train_size:need], "trainval": order[:need]}
    prov = {"method": "vtab1k", "seed": seed, "train_size": train_size, "val_size": val_size,
            "source_split": split}
    return {k: make_mask(idx.astype(np.int64), info, part=k, **prov) for k, idx in parts.items()}


def write_vtab_masks(dataset_dir: str | Path, out_dir: str | Path, **kw) -> dict[str, Path]:
    """Draw the three masks (:func:`vtab_masks`) and save them (:func:`save_vtab_masks`)."""
    from ..outputs import claim_out_dir

    claim_out_dir(out_dir, "vtab-splits")
    return save_vtab_masks(vtab_masks(dataset_dir, **kw), out_dir,
                           kw.get("train_size", TRAIN_SIZE), kw.get("val_size", VAL_SIZE))


def save_vtab_masks(masks: dict[str, IndexMask], out_dir: str | Path, train_size: int,
                    val_size: int) -> dict[str, Path]:
    """Write the three masks (atomic, .npy + .json) into ``out_dir``; returns their paths. A
    mask already there with the same samples of the same data is kept as it is (a resumed
    protocol leaves its files, ``created`` stamp included, untouched). A folder holding masks of
    another draw is refused before any file is written (:func:`_check_draw`)."""
    names = mask_names(train_size, val_size)
    out = Path(out_dir)
    _check_draw(out, masks)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, m in masks.items():
        path = out / f"{names[k]}.npy"
        paths[k] = path if _same_mask(path, m) else save_mask(path, m)
    return paths


#: the settings a VTAB mask's sidecar records of its draw → how the message names them
_DRAW = {"fingerprint": "--data", "source_split": "--split", "seed": "--seed",
         "train_size": "--train-size", "val_size": "--val-size"}


def _check_draw(out: Path, masks: dict[str, IndexMask]) -> None:
    """Refuse a folder that holds VTAB masks of another draw (other seed, sizes, split or
    data). The masks are named by their sizes only, so a second draw would replace some of the
    first's files and keep others: ``val20`` of a 60/20 draw next to ``train80`` of an 80/20
    one overlap, and finetuning on them scores the model on its own training images."""
    from ..fsutil import read_json

    new = masks["trainval"].meta
    for sidecar in sorted(out.glob("*.json")) if out.is_dir() else ():
        try:
            old = read_json(sidecar, "mask metadata")
        except DP4TLError:  # damaged: not a draw anyone can use (rewritten if it is one of ours)
            continue
        if not isinstance(old, dict) or old.get("method") != "vtab1k":
            continue
        # (the fingerprint is the split's: another split differs in it too, say it once)
        same_split = old.get("source_split") == new.get("source_split")
        diffs = _diffs({k: v for k, v in old.items() if k in _DRAW
                        and (same_split or k != "fingerprint")}, new, _DRAW)
        if diffs:
            raise DataError(f"{out} holds VTAB masks drawn with other settings "
                            f"({'; '.join(diffs)}, as {sidecar.name} records): a new draw next "
                            f"to them would mix the two; use another --out, or delete {out} if "
                            "its masks are not needed (or rerun with the settings they were "
                            "drawn with)")


def _same_mask(path: Path, mask: IndexMask) -> bool:
    """Whether ``path`` already holds ``mask``: the same indices over the same split content."""
    try:
        old = load_mask(path)
    except DP4TLError:  # missing or damaged: write it
        return False
    return (old.info.fingerprint == mask.info.fingerprint and old.info.split == mask.info.split
            and np.array_equal(old.indices, mask.indices))


def split_override(split: str) -> str:
    """The recipe override ``data.test_split=<split>`` with the name as a TOML string: an
    override's value is parsed as TOML, so a bare split named like another value (``true``,
    ``1``, ``2024-01-01``) would become a bool, a number or a date."""
    # a JSON string is a TOML basic string, except that TOML wants DEL escaped too
    quoted = json.dumps(split, ensure_ascii=False).replace("\x7f", "\\u007f")
    return f"data.test_split={quoted}"


#: the settings a VTAB protocol folder was made with (written before its first run)
SETTINGS_NAME = "vtab_settings.json"
#: how a refusal names a differing recipe fingerprint: the recipe file, a --set, or the rule
#: that hashes them (CHANGELOG) changed; "(--set)" alone blamed the user for a rule change
_RECIPE_SETTINGS = "recipe settings (its file, --set, or how they are hashed: CHANGELOG.md)"
#: the settings every run of a protocol folder shares: key → how the message names it
_SAME = {"recipe": "recipe", "recipe_fingerprint": _RECIPE_SETTINGS,
         "checkpoint_identity": "--checkpoint", "target_fingerprint": "--data", "mode": "mode",
         "format": "--format", "seed": "--seed", "train_size": "--train-size",
         "val_size": "--val-size", "source_weights": "--checkpoint's weights"}
#: settings a folder's ``vtab_settings.json`` lacks when written before them: compared when
#: present, and recorded by the next run
_ADDED = ("source_weights",)


#: settings recorded as digests: a message says that they differ, not their values
_DIGESTS = ("recipe_fingerprint", "checkpoint_identity", "target_fingerprint", "source_weights",
            "fingerprint")


def _diffs(old: dict, new: dict, labels: dict[str, str]) -> list[str]:
    """How the settings ``old`` (those it records of ``labels``) differ from ``new``:
    ``--train-size 80 -> 60`` per setting (a digest: ``--data differs``). The one wording of
    every "made with other settings" refusal of a VTAB folder."""
    return [f"{labels[k]} differs" if k in _DIGESTS else f"{labels[k]} {old[k]!r} -> {new.get(k)!r}"
            for k in labels if k in old and old[k] != new.get(k)]


def _lr_names(lrs: list[float]) -> list[str]:
    """The run-directory names of the learning rates (``select-lr{name}``); refuses what is not
    a positive finite number and two lrs that would share a directory."""
    names = []
    for lr in lrs:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) \
                or lr <= 0:
            raise DataError(f"--lr: every learning rate must be a positive number, got {lr!r}")
        name = f"{lr:g}"
        if name in names:
            first = lrs[names.index(name)]
            if lr == first:
                raise DataError(f"--lr lists {name} twice; give each learning rate once")
            raise DataError(f"--lr: {lr!r} and {first!r} both name the run "
                            f"folder select-lr{name} (6 significant digits); give learning rates "
                            "that differ in those digits")
        names.append(name)
    return names


#: identity fields of a run's ``finetune_state.pt`` → the setting the message names
_IDENTITY = {"mode": "mode", "format": "--format", "target_fingerprint": "--data",
             "source_arch": "--checkpoint", "source_identity": "--checkpoint",
             "source_epoch": "--checkpoint", "source_weights": "--checkpoint",
             "recipe_fingerprint": _RECIPE_SETTINGS,
             "train_mask": "--seed/--train-size/--val-size",
             "test_mask": "--seed/--train-size/--val-size"}


def _legacy_diffs(out: Path, expected: Callable[[str], dict | None]) -> list[str]:
    """A folder from before ``SETTINGS_NAME``: what its runs' recorded identities (each
    ``finetune_state.pt``) say differs from ``expected(run name)``."""
    from ..training.checkpoint import FinetuneState
    from ..training.finetune import STATE_NAME

    diffs: list[str] = []
    for d in sorted(out.glob("*-lr*")):
        want = expected(d.name) if (d / STATE_NAME).is_file() else None
        if want is None:
            continue
        have = FinetuneState.load(d / STATE_NAME).identity
        have = have if isinstance(have, dict) else {}
        for k, label in _IDENTITY.items():
            if k in have and k in want and have[k] != want[k] and f"{label} differs" not in diffs:
                diffs.append(f"{label} differs")
    return diffs


def _check_settings(out: Path, settings: dict,
                    expected: Callable[[str], dict | None] = lambda name: None) -> None:
    """Refuse a protocol folder made with other settings (its finished runs would be reused
    under the new ones); write ``SETTINGS_NAME`` when there is none yet. A folder from before
    that file: the settings its ``vtab.json`` names and its runs' identities
    (``expected(run name)``: the identity that run would have now) are compared instead."""
    from ..fsutil import atomic_write_json, check_out_dir, read_json

    check_out_dir(out, "--out")
    path = out / SETTINGS_NAME
    fix = (f"use another --out, or delete {out} if its runs are not needed (or rerun with the "
           "settings it was made with)")
    if path.exists():
        old = read_json(path, "VTAB settings", fix)  # (invalid JSON: this folder's fix too)
        if not isinstance(old, dict):
            raise DataError(f"{path} is damaged (not a JSON object); {fix}")
        lacks = [k for k in _SAME if k not in old and k not in _ADDED]
        if lacks:  # (`{}` was read as nine settings that differ; audit)
            raise DataError(f"{path} is damaged (it lacks {', '.join(lacks)}, which every "
                            f"protocol folder records); {fix}")
        keys = [k for k in _SAME if k in old or k not in _ADDED]
    elif (out / "vtab.json").exists():
        # a folder from before SETTINGS_NAME: vtab.json names some of the settings
        old = read_json(out / "vtab.json", "VTAB result")
        if not isinstance(old, dict):
            raise DataError(f"{out / 'vtab.json'} is damaged (not a JSON object); {fix}")
        keys = [k for k in ("recipe", "mode", "seed", "train_size", "val_size") if k in old]
    else:
        old, keys = {}, []
    if not path.exists() or keys:
        diffs = _diffs({k: old.get(k) for k in keys}, settings, _SAME)
        if not path.exists() and out.is_dir():
            diffs += [d for d in _legacy_diffs(out, expected) if d not in diffs]
        if diffs:
            raise DataError(f"--out {out} holds VTAB runs made with other settings "
                            f"({'; '.join(diffs)}); {fix}")
    if not path.exists() or any(k not in old for k in _ADDED):
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, settings)


def vtab_protocol(recipe: str | Path, checkpoint: str | Path, target_dir: str | Path,
                  out_dir: str | Path, *, lrs: list[float], seed: int = 0,
                  train_size: int = TRAIN_SIZE, val_size: int = VAL_SIZE,
                  overrides: list[str] | tuple[str, ...] = (), mode: str | None = None,
                  fmt: str = "ffcv", device: str = "auto", progress: bool = True) -> dict:
    """VTAB-1k on one target: masks (seed), one finetuning per learning rate on ``train`` scored
    on ``val`` (final-epoch top-1), then the chosen lr on ``train ∪ val`` scored on the test
    split. Every finetuning is its own resumable run directory under ``out_dir``; rerunning
    with the same settings skips finished ones. The settings every run shares (recipe and
    ``overrides``, checkpoint, target, mode, format, seed, sizes) are recorded in
    ``out_dir/vtab_settings.json`` before the first run, and a rerun with other ones is refused
    (its finished runs would otherwise be reported under the new settings); other lrs may be
    added. Everything is checked before any mask is written or model trained. Writes and
    returns ``out_dir/vtab.json``."""
    from ..contracts import FinetuneMode
    from ..contracts.fields import typed
    from ..fsutil import atomic_write_json, read_json
    from ..outputs import claim_out_dir
    from ..training.checkpoint import Checkpoint
    from ..training.finetune import RESULT_NAME, finetune, run_identity, weights_digest
    from ..training.recipe import load_recipe

    if not lrs:
        raise DataError("give at least one learning rate to select from (--lr)")
    names = _lr_names(lrs)
    out = Path(out_dir)
    claim_out_dir(out, "vtab")
    base = load_recipe(recipe, overrides)  # validates before any work
    split = base.data.train_split
    for lr in lrs:  # each run's recipe too (an impossible lr is refused now, not after the others)
        load_recipe(recipe, list(overrides) + [f"lr.lr={lr}", split_override(split)])
    mode = FinetuneMode.check(mode or base.finetune.mode, "finetune mode")
    in_memory = vtab_masks(target_dir, seed=seed, train_size=train_size, val_size=val_size,
                           split=split)
    # the final run reads the recipe's test split; the selection runs read only `split`, so a
    # target without it failed after every selection run had trained
    load_manifest(target_dir).split(base.data.test_split)
    source = Checkpoint.load(checkpoint)
    ident = json.dumps({**source.identity, "epoch": source.epoch}, sort_keys=True, default=str)
    settings = {"recipe": base.name, "recipe_fingerprint": base.fingerprint(),
                "overrides": list(overrides), "checkpoint": str(checkpoint),
                "checkpoint_identity": hashlib.sha256(ident.encode()).hexdigest()[:16],
                "target": str(target_dir),
                "target_fingerprint": load_manifest(target_dir).fingerprint, "mode": mode,
                "format": fmt, "seed": seed, "train_size": train_size, "val_size": val_size,
                "source_weights": weights_digest(source.model)}

    def expected(name: str) -> dict | None:
        """The identity (as ``finetune`` records it) the run ``name`` would have now."""
        kind, _, lr = name.partition("-lr")
        # the run folders name lrs with :g (6 digits): take the lr that named it, not the name
        lr_ = next((x for x, n in zip(lrs, names) if n == lr), None)
        if kind not in ("select", "final") or lr_ is None:
            return None
        extra = [f"lr.lr={lr_}"] + ([split_override(split)] if kind == "select" else [])
        try:
            run_recipe = load_recipe(recipe, list(overrides) + extra)
        except DP4TLError:
            return None
        run_masks = ({"train_mask": in_memory["train"], "test_mask": in_memory["val"]}
                     if kind == "select" else {"train_mask": in_memory["trainval"]})
        return run_identity(run_recipe, source, settings["target_fingerprint"], mode, fmt,
                            run_masks)

    _check_settings(out, settings, expected)
    masks = save_vtab_masks(in_memory, out / "masks", train_size, val_size)

    def run(sub: str, extra: list[str], **kw) -> dict:
        d = out / sub
        if (d / RESULT_NAME).exists():
            fix = f"delete {d} to rerun that finetuning"
            res = read_json(d / RESULT_NAME, "finetune result", fix)
            if not isinstance(res, dict):
                raise DataError(f"{d / RESULT_NAME} is not a finetune result (not a JSON "
                                f"object); {fix}")
            typed(res, "test_top1", "number", d / RESULT_NAME, fix)
            return res
        r = load_recipe(recipe, list(overrides) + extra)
        return finetune(r, checkpoint, target_dir, d, mode=mode, fmt=fmt, device=device,
                        progress=progress, **kw)

    sweep = []
    for lr, name in zip(lrs, names):
        res = run(f"select-lr{name}", [f"lr.lr={lr}", split_override(split)],
                  train_mask=masks["train"], test_mask=masks["val"])
        sweep.append({"lr": lr, "val_top1": res["test_top1"]})
    best = max(sweep, key=lambda r: (r["val_top1"], -lrs.index(r["lr"])))  # first of equals
    final = run(f"final-lr{best['lr']:g}", [f"lr.lr={best['lr']}"], train_mask=masks["trainval"])
    summary = {"protocol": "vtab1k", "target": str(target_dir), "checkpoint": str(checkpoint),
               "recipe": base.name, "mode": mode, "seed": seed, "train_size": train_size,
               "val_size": val_size, "masks": {k: str(v) for k, v in masks.items()},
               "sweep": sweep, "selected_lr": best["lr"], "test_top1": final["test_top1"],
               "best_test_top1": final.get("best_test_top1"),
               "test_samples": final.get("test_samples")}
    atomic_write_json(out / "vtab.json", summary)
    return summary
