"""SUN397 layout.

Expected (``root`` = the ``SUN397`` folder, or a folder containing it)::

    SUN397/<letter>/<class...>/sun_*.jpg        # e.g. SUN397/a/apartment_building/outdoor/...
    ClassName.txt                               # "/a/abbey" per line, defines the label order
    Training_01.txt  Testing_01.txt             # "/a/abbey/sun_aqswjsnjlrfzzhiz.jpg" per line

The three text files are searched in the SUN397 folder, the folder containing it and a
``Partitions/`` sub-folder of either. Class names drop the leading ``/<letter>/``
(``abbey``, ``apartment_building/outdoor``). Splits: ``train``, ``test`` (partition 01).
With ``split_json`` paths are relative to the SUN397 folder.
"""
from __future__ import annotations

from pathlib import Path

from ..spec import DatasetSpec, Sample
from . import coop
from ._common import bad, find_first, finish, image_under, iter_lines

NAME = "sun397"
HINT = "expected SUN397 layout: SUN397/<letter>/<class>/*.jpg with ClassName.txt, Training_01.txt, Testing_01.txt"
FILES = {"train": "Training_01.txt", "test": "Testing_01.txt"}


def _class_of(entry: str) -> str | None:
    """'/a/abbey' -> 'abbey'; None if the entry is not '/<letter>/<name>'."""
    parts = entry.strip("/").split("/")
    return "/".join(parts[1:]) if len(parts) >= 2 and len(parts[0]) == 1 else None


def read(root: Path, split_json: Path | None = None) -> DatasetSpec:
    """Enumerate SUN397, partition 01 (see module docstring for the layout)."""
    root = Path(root)
    sun = root / "SUN397" if (root / "SUN397").is_dir() else root
    if split_json is not None:
        return coop.read_split_json(NAME, Path(split_json), sun, {"layout": NAME})
    dirs = [sun, sun / "Partitions", root, root / "Partitions", sun.parent, sun.parent / "Partitions"]

    def locate(name: str) -> Path:
        found = find_first(dirs, [name])
        if found is None:
            raise bad(sun / name, "file not found (also looked in Partitions/ and the parent folder)",
                      hint="download Partitions.zip from the SUN397 site and unpack it next to SUN397/")
        return found

    class_file = locate("ClassName.txt")
    classes = []
    for ln, line in iter_lines(class_file, HINT):
        name = _class_of(line)
        if name is None:
            raise bad(class_file, f"malformed line '{line}'", line=ln, hint="expected '/a/abbey'")
        classes.append(name)
    label_of = {c: i for i, c in enumerate(classes)}

    splits = {}
    for split, fname in FILES.items():
        path = locate(fname)
        samples = []
        for ln, line in iter_lines(path, HINT):
            image = image_under(sun, line.strip("/"), path, "entry", line=ln)
            rel, _, _ = line.strip("/").rpartition("/")
            cls = _class_of(rel)
            if cls is None:
                raise bad(path, f"malformed line '{line}'", line=ln, hint="expected '/a/abbey/sun_xxx.jpg'")
            if cls not in label_of:
                raise bad(path, f"unknown class '{cls}' (not in {class_file})", line=ln,
                          hint="use the partition files that match ClassName.txt")
            samples.append(Sample(image, label_of[cls]))
        if not samples:
            raise bad(path, "lists no images", hint=HINT)
        splits[split] = samples
    return finish(NAME, classes, splits, class_file, {"layout": NAME})
