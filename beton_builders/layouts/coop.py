"""CoOp/CoCoOp split JSON (``split_zhou_<Name>.json``) support shared by all readers.

Format::

    {"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}

``relpath`` is relative to the dataset's image folder (flowers102: ``jpg/``, dtd: ``images/``,
ucf101: the mid-frames folder, food101/oxfordpets: ``images/``, stanfordcars: the dataset root,
sun397: the ``SUN397`` folder). Classes are the JSON class names ordered by label; labels are
made contiguous 0-based (identity for the published files, which are already 0-based).

Tab. A1 of the DP4TL paper (train/test sizes) is the CoOp splits, so ``dp4tl build`` (and the
pipeline's builds) use the layout's CoOp JSON by default when it lies beside the data
(:func:`find_split_json`: in the dataset folder or its parent, under CoOp's file name) and say so;
``--split official`` keeps the official splits, ``--split-json PATH`` names a file. The layout
readers themselves (``read_layout(name, root)``) only use a JSON they are given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ffcv_dp4tl.fsutil import read_json

from ..spec import DatasetSpec, Sample
from ._common import bad, finish, image_under, rank_map

_HINT = "expected CoOp format {\"train\": [[relpath, label, classname], ...], \"val\": [...], \"test\": [...]}"


#: CoOp's file name per layout (Zhou et al., github.com/KaiyangZhou/CoOp DATASETS.md)
COOP_FILES = {
    "flowers102": "split_zhou_OxfordFlowers.json",
    "dtd": "split_zhou_DescribableTextures.json",
    "ucf101": "split_zhou_UCF101.json",
    "food101": "split_zhou_Food101.json",
    "oxfordpets": "split_zhou_OxfordPets.json",
    "stanfordcars": "split_zhou_StanfordCars.json",
    "sun397": "split_zhou_SUN397.json",
}


def find_split_json(layout: str, root: Path) -> Path | None:
    """The layout's CoOp split JSON beside the data (``root``, its parent, or the dataset folder
    below ``root`` that the layout's reader accepts: CoOp keeps ``split_zhou_Food101.json`` in
    ``food-101/``, so ``food101:$DATA`` built the official splits in silence), or None (also for
    layouts without CoOp splits: imagenet, cifar10, folder)."""
    import importlib

    name = COOP_FILES.get(layout)
    if name is None:
        return None
    root = Path(root).expanduser()
    subdirs = getattr(importlib.import_module(f"{__package__}.{layout}"), "SUBDIRS", ())
    for folder in (root, root.parent, *(root / d for d in subdirs)):
        if (folder / name).is_file():
            return folder / name
    return None


def read_split_json(name: str, split_json: Path, image_dir: Path,
                    extra: dict[str, Any] | None = None) -> DatasetSpec:
    """Build a :class:`DatasetSpec` from a CoOp split JSON with paths under ``image_dir``."""
    split_json = Path(split_json)
    if not image_dir.is_dir():
        raise bad(image_dir, f"image folder for {name} not found (needed by {split_json})",
                  hint="pass the dataset folder as root")
    data = read_json(split_json, what="split JSON")
    if not isinstance(data, dict) or not data:
        raise bad(split_json, "top level must be a non-empty object of splits", hint=_HINT)

    raw: dict[str, list[tuple[Path, int]]] = {}
    names: dict[int, str] = {}
    for split, entries in data.items():
        if not isinstance(entries, list):
            raise bad(split_json, f"field '{split}' must be a list", hint=_HINT)
        rows = raw.setdefault(str(split), [])
        for i, e in enumerate(entries):
            where = f"entry {split}[{i}]"
            if (not isinstance(e, (list, tuple)) or len(e) != 3 or not isinstance(e[0], str)
                    or isinstance(e[1], bool) or not isinstance(e[1], int) or not isinstance(e[2], str)):
                raise bad(split_json, f"{where} = {e!r} is not [relpath, int label, classname]", hint=_HINT)
            relpath, label, cname = e
            if names.setdefault(label, cname) != cname:
                raise bad(split_json, f"{where}: label {label} is named '{cname}' but earlier "
                          f"'{names[label]}'", hint="fix the JSON so each label has one class name")
            rows.append((image_under(image_dir, relpath, split_json, where), label))

    remap = rank_map(names)
    classes = [names[k] for k in sorted(names)]
    if len(set(classes)) != len(classes):
        raise bad(split_json, "the same class name is used for several labels",
                  hint="fix the JSON so each class name has one label")
    splits = {
        split: [Sample(ref=path, label=remap[lab]) for path, lab in rows]
        for split, rows in raw.items()
    }
    extra = dict(extra or {})
    extra["split_source"] = str(split_json)
    return finish(name, classes, splits, split_json, extra)
