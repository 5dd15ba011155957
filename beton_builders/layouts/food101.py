"""Food-101 layout.

Expected (``root`` = the folder that contains ``images/`` and ``meta/``, or a ``food-101``
folder inside it)::

    images/<class>/<id>.jpg
    meta/classes.txt                    # one class per line, defines the label order
    meta/train.txt  meta/test.txt       # lines "apple_pie/1005649" (no extension)

Splits: ``train``, ``test``. With ``split_json`` paths are relative to ``images/``.
"""
from __future__ import annotations

from pathlib import Path

from ..spec import DatasetSpec
from . import coop
from ._common import bad, dataset_dir, finish, iter_lines, read_class_path_list

NAME = "food101"
#: folders below ``root`` that may hold the dataset (``root`` itself first); CoOp keeps its
#: split JSON in that folder (:func:`.coop.find_split_json` looks there too)
SUBDIRS = ("food-101", "food101")
HINT = "expected Food-101 layout: images/<class>/<id>.jpg and meta/{classes,train,test}.txt"


def read(root: Path, split_json: Path | None = None) -> DatasetSpec:
    """Enumerate Food-101 (see module docstring for the layout)."""
    root = dataset_dir(Path(root), "images", SUBDIRS, HINT)
    images = root / "images"
    if split_json is not None:
        return coop.read_split_json(NAME, Path(split_json), images, {"layout": NAME})
    classes_file = root / "meta" / "classes.txt"
    classes = [line for _, line in iter_lines(classes_file, HINT)]
    if not classes:
        raise bad(classes_file, "lists no classes", hint=HINT)
    if len(set(classes)) != len(classes):
        raise bad(classes_file, "duplicate class names", hint="re-download meta/classes.txt")
    label_of = {c: i for i, c in enumerate(classes)}
    splits = {
        split: read_class_path_list(root / "meta" / f"{split}.txt", label_of,
                                    lambda c, n: images / c / f"{n}.jpg", HINT)
        for split in ("train", "test")
    }
    return finish(NAME, classes, splits, root / "meta", {"layout": NAME})
