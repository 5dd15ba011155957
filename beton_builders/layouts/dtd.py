"""Describable Textures Dataset (DTD) layout.

Expected (``root`` = the folder that contains ``images/``, or a ``dtd`` folder inside it)::

    images/<class>/<class>_0001.jpg ...
    labels/train1.txt  labels/val1.txt  labels/test1.txt   # lines "banded/banded_0002.jpg"

Classes are the sorted folder names of ``images/``. Splits: ``train``, ``val``, ``test``
(official fold 1). With ``split_json`` paths are relative to ``images/``.
"""
from __future__ import annotations

from pathlib import Path

from ..spec import DatasetSpec
from . import coop
from ._common import bad, dataset_dir, finish, read_class_path_list, subdirs

NAME = "dtd"
#: folders below ``root`` that may hold the dataset (``root`` itself first); CoOp keeps its
#: split JSON in that folder (:func:`.coop.find_split_json` looks there too)
SUBDIRS = ("dtd",)
HINT = "expected DTD layout: images/<class>/*.jpg and labels/{train,val,test}1.txt"


def read(root: Path, split_json: Path | None = None) -> DatasetSpec:
    """Enumerate DTD fold 1 (see module docstring for the layout)."""
    root = dataset_dir(Path(root), "images", SUBDIRS, HINT)
    images = root / "images"
    if split_json is not None:
        return coop.read_split_json(NAME, Path(split_json), images, {"layout": NAME})
    classes = [d.name for d in subdirs(images)]
    if not classes:
        raise bad(images, "no class folders", hint=HINT)
    label_of = {c: i for i, c in enumerate(classes)}
    splits = {
        split: read_class_path_list(root / "labels" / f"{split}1.txt", label_of,
                                    lambda c, n: images / c / n, HINT)
        for split in ("train", "val", "test")
    }
    return finish(NAME, classes, splits, root / "labels", {"layout": NAME})
