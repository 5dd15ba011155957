"""Oxford-IIIT Pets layout.

Expected (``root`` = the folder that contains ``images/`` and ``annotations/``, or an
``oxford-iiit-pet`` folder inside it)::

    images/<Name>_<n>.jpg
    annotations/trainval.txt   annotations/test.txt   # "Abyssinian_100 1 1 1" ('#' = comment)

Columns: image name, class id (1..37), species, breed id. Class name = image name without
the trailing ``_<n>`` (``Abyssinian``, ``american_bulldog``), ordered by class id.
Splits: ``train`` (= trainval), ``test``. With ``split_json`` paths are relative to ``images/``.
"""
from __future__ import annotations

from pathlib import Path

from ..spec import DatasetSpec, Sample
from . import coop
from ._common import bad, dataset_dir, finish, image_under, iter_lines, parse_int, rank_map

NAME = "oxfordpets"
#: folders below ``root`` that may hold the dataset (``root`` itself first); CoOp keeps its
#: split JSON in that folder (:func:`.coop.find_split_json` looks there too)
SUBDIRS = ("oxford-iiit-pet", "oxford_pets", "oxfordpets")
HINT = "expected Oxford-IIIT Pets layout: images/<Name>_<n>.jpg and annotations/{trainval,test}.txt"
FILES = {"train": "trainval.txt", "test": "test.txt"}


def read(root: Path, split_json: Path | None = None) -> DatasetSpec:
    """Enumerate Oxford-IIIT Pets (see module docstring for the layout)."""
    root = dataset_dir(Path(root), "images", SUBDIRS, HINT)
    images = root / "images"
    if split_json is not None:
        return coop.read_split_json(NAME, Path(split_json), images, {"layout": NAME})
    names: dict[int, str] = {}
    rows: dict[str, list[tuple[str, int]]] = {}
    for split, fname in FILES.items():
        path = root / "annotations" / fname
        rows[split] = []
        for ln, line in iter_lines(path, HINT):
            parts = line.split()
            if len(parts) < 2 or "_" not in parts[0]:
                raise bad(path, f"malformed line '{line}'", line=ln,
                          hint="expected '<Name>_<n> <class id> <species> <breed id>'")
            image_under(images, parts[0], path, "entry", line=ln)
            cid = parse_int(parts[1], path, ln, "class id")
            cname = parts[0].rsplit("_", 1)[0]
            if names.setdefault(cid, cname) != cname:
                raise bad(path, f"class id {cid} is '{cname}' here but '{names[cid]}' elsewhere", line=ln,
                          hint="use the original annotation files")
            rows[split].append((parts[0], cid))
        if not rows[split]:
            raise bad(path, "lists no images", hint=HINT)
    ranks = rank_map(names)
    classes = [names[c] for c in sorted(names)]
    splits = {s: [Sample(images / f"{n}.jpg", ranks[c]) for n, c in r] for s, r in rows.items()}
    return finish(NAME, classes, splits, root / "annotations", {"layout": NAME})
