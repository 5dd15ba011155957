"""Stanford Cars layout.

Expected (``root`` = the folder that contains ``cars_train/``, or a ``stanford_cars``
folder inside it)::

    cars_train/00001.jpg ...        cars_test/00001.jpg ...
    devkit/cars_meta.mat            # 'class_names' (196 names)
    devkit/cars_train_annos.mat     # 'annotations': struct array, fields bbox_*, class (1-based), fname
    cars_test_annos_withlabels.mat  # same fields, in root or devkit/

Splits: ``train``, ``test``. With ``split_json`` paths are relative to ``root``
(e.g. ``cars_train/00001.jpg``).
"""
from __future__ import annotations

from pathlib import Path

from ..spec import DatasetSpec, Sample
from . import coop
from ._common import bad, dataset_dir, find_first, finish, image_under
from ._mat import load_mat, mat_list, mat_scalar

NAME = "stanfordcars"
#: folders below ``root`` that may hold the dataset (``root`` itself first); CoOp keeps its
#: split JSON in that folder (:func:`.coop.find_split_json` looks there too)
SUBDIRS = ("stanford_cars", "stanfordcars")
HINT = ("expected Stanford Cars layout: cars_train/, cars_test/, devkit/cars_meta.mat, "
        "devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat")
TEST_ANNOS = "cars_test_annos_withlabels.mat"


def _annotations(path: Path, image_dir: Path, n_classes: int) -> list[Sample]:
    samples = []
    for i, rec in enumerate(mat_list(load_mat(path, ["annotations"], HINT)["annotations"])):
        try:
            label = int(mat_scalar(getattr(rec, "class")))
            fname = str(mat_scalar(rec.fname))
        except (AttributeError, ValueError, TypeError) as e:
            raise bad(path, f"annotations[{i}] lacks a usable 'class'/'fname' field ({e})",
                      hint="use the annotation file with labels (…_withlabels.mat for test)") from None
        if not 1 <= label <= n_classes:
            raise bad(path, f"annotations[{i}].class = {label} outside 1..{n_classes}",
                      hint="use annotation files matching devkit/cars_meta.mat")
        samples.append(Sample(image_under(image_dir, fname, path, f"annotations[{i}].fname"), label - 1))
    return samples


def read(root: Path, split_json: Path | None = None) -> DatasetSpec:
    """Enumerate Stanford Cars (see module docstring for the layout)."""
    root = dataset_dir(Path(root), "cars_train", SUBDIRS, HINT)
    if split_json is not None:
        return coop.read_split_json(NAME, Path(split_json), root, {"layout": NAME})
    meta = root / "devkit" / "cars_meta.mat"
    classes = [str(x) for x in mat_list(load_mat(meta, ["class_names"], HINT)["class_names"])]
    test_annos = find_first([root, root / "devkit"], [TEST_ANNOS])
    if test_annos is None:
        raise bad(root / TEST_ANNOS, f"file not found (also looked in {root / 'devkit'})",
                  hint="download cars_test_annos_withlabels.mat (test labels) into the dataset folder")
    splits = {
        "train": _annotations(root / "devkit" / "cars_train_annos.mat", root / "cars_train", len(classes)),
        "test": _annotations(test_annos, root / "cars_test", len(classes)),
    }
    return finish(NAME, classes, splits, root, {"layout": NAME})
