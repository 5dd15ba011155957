"""Oxford Flowers-102 layout.

Expected (``root`` = the folder that contains ``jpg/``, or a ``flowers-102``/``flowers102``
folder inside it)::

    jpg/image_00001.jpg ...
    imagelabels.mat     # 'labels': 1..102 per image id
    setid.mat           # 'trnid', 'valid', 'tstid': 1-based image ids
    cat_to_name.json    # optional {"1": "pink primrose", ...}; else names "class_001".."class_102"

Splits: ``train``, ``val``, ``test``. With ``split_json`` paths are relative to ``jpg/``.
"""
from __future__ import annotations

from pathlib import Path

from ffcv_dp4tl.fsutil import read_json

from ..spec import DatasetSpec, Sample
from . import coop
from ._common import bad, dataset_dir, finish
from ._mat import load_mat, mat_list

NAME = "flowers102"
#: folders below ``root`` that may hold the dataset (``root`` itself first); CoOp keeps its
#: split JSON in that folder (:func:`.coop.find_split_json` looks there too)
SUBDIRS = ("flowers-102", "flowers102")
HINT = "expected Oxford Flowers-102 layout: jpg/image_00001.jpg, imagelabels.mat, setid.mat"
SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}


def read(root: Path, split_json: Path | None = None) -> DatasetSpec:
    """Enumerate Flowers-102 (see module docstring for the layout)."""
    root = dataset_dir(Path(root), "jpg", SUBDIRS, HINT)
    if split_json is not None:
        return coop.read_split_json(NAME, Path(split_json), root / "jpg", {"layout": NAME})
    lab_file = root / "imagelabels.mat"
    labels = [int(x) for x in mat_list(load_mat(lab_file, ["labels"], HINT)["labels"])]
    if not labels or min(labels) < 1:
        raise bad(lab_file, "field 'labels' must hold 1-based class ids", hint="re-download imagelabels.mat")
    n_classes = max(labels)

    names_file = root / "cat_to_name.json"
    if names_file.is_file():
        mapping = read_json(names_file, what="class-name file")
        try:
            classes = [str(mapping[str(i)]) for i in range(1, n_classes + 1)]
        except (KeyError, TypeError) as e:
            raise bad(names_file, f"missing class id {e}", hint="expected {\"1\": name, ...} for every class") from None
    else:
        classes = [f"class_{i:03d}" for i in range(1, n_classes + 1)]

    set_file = root / "setid.mat"
    sets = load_mat(set_file, list(SPLIT_KEYS.values()), HINT)
    splits: dict[str, list[Sample]] = {}
    for split, key in SPLIT_KEYS.items():
        samples = []
        for image_id in (int(x) for x in mat_list(sets[key])):
            if not 1 <= image_id <= len(labels):
                raise bad(set_file, f"field '{key}': image id {image_id} outside 1..{len(labels)} of {lab_file}",
                          hint="use matching imagelabels.mat and setid.mat")
            samples.append(Sample(root / "jpg" / f"image_{image_id:05d}.jpg", labels[image_id - 1] - 1))
        splits[split] = samples
    return finish(NAME, classes, splits, set_file, {"layout": NAME})
