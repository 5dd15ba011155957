"""ImageNet-1k (ILSVRC2012) layout.

Expected (``root`` = the folder that contains ``train/``)::

    train/<wnid>/*.JPEG
    val/<wnid>/*.JPEG                      # foldered val, or
    val/*.JPEG + one ground-truth file:    # flat val
        LOC_val_solution.csv               #   Kaggle: ImageId,PredictionString (first token = wnid)
        val_labels.txt                     #   "<filename> <wnid>" per line
        ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt + .../data/meta.mat

Ground-truth and description files are searched in ``root`` and its parents (up to three
levels, which covers Kaggle's ``ILSVRC/Data/CLS-LOC``). Classes are the sorted wnids of
``train/``; ``LOC_synset_mapping.txt`` / ``words.txt`` (or the devkit's ``meta.mat``) give
``extra["class_descriptions"]`` (a list aligned with ``classes``). Splits: ``train``, ``val``.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..spec import DatasetSpec, Sample
from . import coop
from ._common import (bad, find_first, finish, iter_lines, list_images, parse_int, require_dir,
                      subdirs)
from ._mat import load_mat, mat_list, mat_scalar

NAME = "imagenet"
HINT = "expected ILSVRC layout: train/<wnid>/*.JPEG; pass the folder that contains train/"
DEVKIT_GT = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "ILSVRC2012_devkit_t12/data/meta.mat"
LABEL_FILES = ("LOC_val_solution.csv", "val_labels.txt", DEVKIT_GT)
_VAL_ID = re.compile(r"_(\d+)$")


def _search_dirs(root: Path) -> list[Path]:
    return [root, *list(root.resolve().parents)[:3]]


def _flat_val_labels(root: Path, files: list[Path], wnids: set[str]) -> tuple[dict[str, str], Path]:
    """Map val image stem -> wnid from the first ground-truth file found."""
    gt = find_first(_search_dirs(root), LABEL_FILES)
    if gt is None:
        raise bad(root / "val", "flat val/ folder but no ground-truth file found",
                  hint=f"put one of {', '.join(LABEL_FILES)} in {root} or its parent, "
                  "or sort val/ into val/<wnid>/ folders")
    labels: dict[str, str] = {}
    if gt.name == "LOC_val_solution.csv":
        for ln, line in iter_lines(gt):
            if ln == 1 and line.lower().startswith("imageid"):
                continue
            image_id, _, pred = line.partition(",")
            if not pred.split():
                raise bad(gt, f"malformed row '{line}'", line=ln, hint="expected ImageId,PredictionString")
            labels[image_id.strip()] = pred.split()[0]
    elif gt.name == "val_labels.txt":
        for ln, line in iter_lines(gt):
            parts = line.split()
            if len(parts) != 2:
                raise bad(gt, f"malformed line '{line}'", line=ln, hint="expected '<filename> <wnid>'")
            labels[Path(parts[0]).stem] = parts[1]
    else:
        meta = load_mat(gt.parent / "meta.mat", ["synsets"], hint="the devkit's data/meta.mat is needed")
        id_to_wnid = {int(mat_scalar(s.ILSVRC2012_ID)): str(mat_scalar(s.WNID)) for s in mat_list(meta["synsets"])}
        by_index = {}
        for i, (ln, line) in enumerate(iter_lines(gt), 1):
            if ln != i:  # line i is image i's label: a skipped line would shift every later one
                raise bad(gt, f"line {i} is blank or a comment, but line i holds the label of "
                              f"ILSVRC2012_val_{i:08d} (every later label would shift)",
                          hint="restore the devkit's ILSVRC2012_validation_ground_truth.txt")
            ilsvrc_id = parse_int(line, gt, ln, "ILSVRC2012_ID")
            if ilsvrc_id not in id_to_wnid:
                raise bad(gt, f"ILSVRC2012_ID {ilsvrc_id} not in {gt.parent / 'meta.mat'}", line=ln)
            by_index[ln] = id_to_wnid[ilsvrc_id]
        for f in files:
            m = _VAL_ID.search(f.stem)
            if m and int(m.group(1)) in by_index:
                labels[f.stem] = by_index[int(m.group(1))]
    for stem, wnid in labels.items():
        if wnid not in wnids:
            raise bad(gt, f"class '{wnid}' (for {stem}) is not a folder of train/",
                      hint="use the ground truth that matches this train/ folder")
    return labels, gt


def _descriptions(root: Path, wnids: list[str], gt: Path | None) -> list[str] | None:
    f = find_first(_search_dirs(root), ("LOC_synset_mapping.txt", "words.txt"))
    desc: dict[str, str] = {}
    if f is not None:
        for _, line in iter_lines(f):
            wnid, _, text = line.replace("\t", " ").partition(" ")
            desc[wnid] = text.strip()
    elif gt is not None and gt.name.endswith("ground_truth.txt"):
        meta = load_mat(gt.parent / "meta.mat", ["synsets"])
        desc = {str(mat_scalar(s.WNID)): str(mat_scalar(s.words)) for s in mat_list(meta["synsets"])}
    if not desc:
        return None
    return [desc.get(w, w) for w in wnids]


def read(root: Path, split_json: Path | None = None) -> DatasetSpec:
    """Enumerate ImageNet train/val (see module docstring for the layout)."""
    root = Path(root)
    if split_json is not None:
        return coop.read_split_json(NAME, Path(split_json), root, {"layout": NAME})
    train_dir = require_dir(root / "train", HINT)
    wnids = [d.name for d in subdirs(train_dir)]
    if not wnids:
        raise bad(train_dir, "no class folders", hint=HINT)
    label_of = {w: i for i, w in enumerate(wnids)}
    train = [Sample(f, label_of[w]) for w in wnids for f in list_images(train_dir / w)]

    val_dir = require_dir(root / "val", "expected val/<wnid>/*.JPEG or a flat val/*.JPEG with a ground-truth file")
    val_classes = subdirs(val_dir)
    flat = list_images(val_dir, recursive=False)
    gt: Path | None = None
    if val_classes and flat:
        raise bad(val_dir, "contains both class folders and loose images",
                  hint="use either val/<wnid>/*.JPEG or a flat val/*.JPEG")
    if val_classes:
        for d in val_classes:
            if d.name not in label_of:
                raise bad(d, f"val class '{d.name}' is not a folder of train/", hint="remove it or add it to train/")
        val = [Sample(f, label_of[d.name]) for d in val_classes for f in list_images(d)]
    else:
        labels, gt = _flat_val_labels(root, flat, set(wnids))
        val = []
        for f in flat:
            if f.stem not in labels:
                raise bad(gt, f"no label for {f}", hint="use the ground truth that matches val/ or remove the image")
            val.append(Sample(f, label_of[labels[f.stem]]))

    extra: dict = {"layout": NAME}
    if gt is not None:
        extra["val_ground_truth"] = str(gt)
    desc = _descriptions(root, wnids, gt)
    if desc is not None:
        extra["class_descriptions"] = desc
    return finish(NAME, wnids, {"train": train, "val": val}, root, extra)
