"""Dataset layout readers: enumerate samples (paths + labels per split) of published layouts.

Each module exposes ``read(root, split_json=None) -> DatasetSpec`` and documents the layout
it expects. Readers never decode images; the writer does (and rejects unreadable files).

``split_json`` is a CoOp/CoCoOp ``split_zhou_<Name>.json`` that replaces the official splits
(see :mod:`.coop`). These readers use only a JSON they are given; choosing one found beside the
data (the default of ``dp4tl build`` and the pipeline, ``--split official`` to opt out) is
:func:`beton_builders.sources.resolve_source`'s job.

Splits per layout: imagenet train/val; folder train[/val/test]; flowers102 train/val/test;
dtd train/val/test; ucf101 train/test; food101 train/test; oxfordpets train/test;
stanfordcars train/test; sun397 train/test; cifar10 train/test.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..spec import DatasetSpec
from . import cifar10, dtd, flowers102, folder, food101, imagenet, oxfordpets, stanfordcars, sun397, ucf101
from ._common import bad

LAYOUTS: dict[str, Callable[[Path, Path | None], DatasetSpec]] = {
    "imagenet": imagenet.read,
    "folder": folder.read,
    "flowers102": flowers102.read,
    "dtd": dtd.read,
    "ucf101": ucf101.read,
    "food101": food101.read,
    "oxfordpets": oxfordpets.read,
    "stanfordcars": stanfordcars.read,
    "sun397": sun397.read,
    "cifar10": cifar10.read,
}


def read_layout(name: str, root: str | Path, split_json: str | Path | None = None) -> DatasetSpec:
    """Enumerate the dataset at ``root`` with the reader registered as ``name``."""
    if name not in LAYOUTS:
        raise bad(None, f"unknown layout '{name}'", hint=f"choose one of: {', '.join(sorted(LAYOUTS))}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise bad(root, "dataset folder not found" if not root.exists() else "not a folder",
                  hint=f"pass the folder that holds the {name} dataset")
    sj = None
    if split_json is not None:
        sj = Path(split_json).expanduser()
        if not sj.is_file():
            raise bad(sj, "split JSON not found", hint="check the --split-json path")
    return LAYOUTS[name](root, sj)


__all__ = ["LAYOUTS", "read_layout"]
