"""UCF101 mid-frames layout (one middle frame per video, as used by CoOp).

Expected (``root`` = the mid-frames folder itself, or a folder containing it)::

    UCF-101-midframes/<ClassName>/<video_stem>.jpg     # ClassName as in classInd.txt, or
                                                       # CoOp's renamed "Apply_Eye_Makeup"
    ucfTrainTestlist/classInd.txt      # "1 ApplyEyeMakeup"
    ucfTrainTestlist/trainlist01.txt   # "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    ucfTrainTestlist/testlist01.txt    # "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

``ucfTrainTestlist/`` is searched in ``root``, the mid-frames folder and its parent. Each
``.avi`` maps to ``<ClassName>/<video_stem>.jpg``. Classes are the classInd names in index
order. Splits: ``train`` (split 1), ``test``. With ``split_json`` paths are relative to the
mid-frames folder.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..spec import DatasetSpec
from . import coop
from ._common import bad, finish, iter_lines, parse_int, rank_map, read_class_path_list, require_dir

NAME = "ucf101"
MIDFRAMES = "UCF-101-midframes"
HINT = ("expected UCF101 mid-frames layout: UCF-101-midframes/<Class>/<video>.jpg and "
        "ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt")


def _renamed(action: str) -> str:
    """CoOp's folder naming: 'ApplyEyeMakeup' -> 'Apply_Eye_Makeup'."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action)) or action


def read(root: Path, split_json: Path | None = None) -> DatasetSpec:
    """Enumerate UCF101 mid-frames, split 1 (see module docstring for the layout)."""
    root = Path(root)
    mid = root / MIDFRAMES if (root / MIDFRAMES).is_dir() else root
    if split_json is not None:
        return coop.read_split_json(NAME, Path(split_json), mid, {"layout": NAME})
    lists = next((d / "ucfTrainTestlist" for d in (root, mid, mid.parent)
                  if (d / "ucfTrainTestlist" / "classInd.txt").is_file()), root / "ucfTrainTestlist")
    class_ind = lists / "classInd.txt"
    index: dict[str, int] = {}
    for ln, line in iter_lines(class_ind, HINT):
        parts = line.split()
        if len(parts) != 2:
            raise bad(class_ind, f"malformed line '{line}'", line=ln, hint="expected '<index> <ClassName>'")
        if parts[1] in index:
            raise bad(class_ind, f"duplicate class '{parts[1]}'", line=ln)
        index[parts[1]] = parse_int(parts[0], class_ind, ln, "class index")
    if not index:
        raise bad(class_ind, "lists no classes", hint=HINT)
    ranks = rank_map(index.values())
    if len(ranks) != len(index):
        raise bad(class_ind, "duplicate class indices", hint="re-download ucfTrainTestlist")
    classes = sorted(index, key=index.__getitem__)
    label_of = {c: ranks[index[c]] for c in classes}

    require_dir(mid, HINT)
    coop_names = any((mid / _renamed(c)).is_dir() and _renamed(c) != c for c in classes)
    folder = {}
    for c in classes:
        if (mid / c).is_dir():
            folder[c] = c
        elif (mid / _renamed(c)).is_dir() or coop_names:
            folder[c] = _renamed(c)
        else:
            folder[c] = c

    def image(cls: str, name: str) -> Path:
        return mid / folder[cls] / Path(name).with_suffix(".jpg").name

    train_file = lists / "trainlist01.txt"
    for ln, line in iter_lines(train_file, HINT):
        parts = line.split()
        cls = parts[0].partition("/")[0]
        if len(parts) > 1 and cls in index and parse_int(parts[1], train_file, ln, "label") != index[cls]:
            raise bad(train_file, f"label {parts[1]} does not match {class_ind} ({cls} = {index[cls]})",
                      line=ln, hint="use the classInd.txt that belongs to this split")
    splits = {
        "train": read_class_path_list(train_file, label_of, image, HINT),
        "test": read_class_path_list(lists / "testlist01.txt", label_of, image, HINT),
    }
    return finish(NAME, classes, splits, lists, {"layout": NAME})
