"""Generic ImageFolder layout.

Expected, either with split folders (each present one becomes a split)::

    train/<class>/**/*.jpg   val/<class>/**/*.jpg   test/<class>/**/*.jpg

or without (``root`` itself is the class tree; one split ``train``)::

    <class>/**/*.jpg

A ``train``/``val``/``test`` folder beside other folders is a class when it holds images and
no sub-folders (CIFAR-100's class "train"); otherwise such a mixed tree is refused.

Classes are the sorted union of class folders over all splits, so labels agree across
splits. Files are selected by (case-insensitive) extension only (``_common.IMAGE_EXTS``; the
others in class folders are named in one warning); unreadable images are left for the writer
to reject. Hidden files/folders and loose files next to class folders are
ignored; loose *images* there are named in one warning (an image meant for a class, put one
level too high, was dropped without a trace), and so are class folders whose names differ only
in their Unicode form (``café`` typed on two systems: two classes that print the same). With
``split_json`` (CoOp format) paths are relative to ``root``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from ..spec import DatasetSpec, Sample
from . import coop
from ._common import IMAGE_EXTS, bad, finish, list_images, subdirs

NAME = "folder"
SPLITS = ("train", "val", "test")
HINT = "expected <class>/*.jpg folders, or train/ val/ test/ folders each holding <class>/*.jpg"


def _split_dirs(root: Path) -> dict[str, Path]:
    """The split folders of ``root``, or ``{"train": root}`` for a flat class tree. A folder
    named train/val/test beside other folders is a *class* when it holds images and no
    sub-folders (CIFAR-100 has a class "train"); it used to make the whole tree a split layout,
    refused as "no class folders" or, worse, with the other classes dropped."""
    found = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if not found:
        return {"train": root}
    others = [d.name for d in subdirs(root) if d.name not in SPLITS]
    if not others:
        return found

    def is_class(d: Path) -> bool:
        return not subdirs(d) and bool(list_images(d, recursive=False))

    if all(is_class(d) for d in found.values()):
        return {"train": root}
    raise bad(root, f"holds split folders ({', '.join(found)}) beside other folders "
              f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}), so it is neither "
              "layout", hint="put every class folder inside train/ (val/, test/), or, if "
              f"{'/'.join(found)} are classes, give them their images directly")


def _warn_lookalike_classes(root: Path, names: list[str]) -> None:
    """One warning naming class folders whose names are equal once Unicode-normalised (NFC):
    ``café`` written precomposed on one system and decomposed on another (macOS) are two
    folders, so two classes, that print the same. They stay two classes (they are two
    folders); the user decides whether to merge them."""
    import unicodedata

    by_form: dict[str, list[str]] = {}
    for n in names:
        by_form.setdefault(unicodedata.normalize("NFC", n), []).append(n)
    same = [group for group in by_form.values() if len(group) > 1]
    if same:
        shown = "; ".join(" and ".join(ascii(n) for n in g) for g in same[:3])
        warnings.warn(f"{root}: {len(same)} group(s) of class folders whose names differ only in "
                      f"their Unicode form become separate classes that print the same: {shown}; "
                      "merge each group into one folder if they are one class", UserWarning,
                      stacklevel=3)


def read(root: Path, split_json: Path | None = None) -> DatasetSpec:
    """Enumerate an ImageFolder tree (see module docstring for the layout)."""
    root = Path(root)
    if split_json is not None:
        return coop.read_split_json(NAME, Path(split_json), root, {"layout": NAME})
    split_dirs = _split_dirs(root)
    skipped: list[Path] = []
    per_split = {s: {d.name: list_images(d, skipped=skipped) for d in subdirs(p)}
                 for s, p in split_dirs.items()}
    if skipped:  # (they were dropped without a trace: not built, not in rejects.txt)
        kinds = sorted({f.suffix.lower() or "(no extension)" for f in skipped})
        warnings.warn(f"{root}: {len(skipped)} file(s) in the class folders not read: no image "
                      f"extension ({', '.join(kinds[:6])}), e.g. {skipped[0]}; give images an image "
                      "extension", UserWarning, stacklevel=2)
    for s, classes in per_split.items():
        if not classes:
            raise bad(split_dirs[s], "no class folders", hint=HINT)
    loose = [f for d in split_dirs.values() for f in list_images(d, recursive=False)]
    if loose:
        warnings.warn(f"{root}: {len(loose)} image(s) beside the class folders not read (an image "
                      f"belongs inside its class folder), e.g. {loose[0]}; move them into their "
                      "class folders to build them", UserWarning, stacklevel=2)
    names = sorted({c for classes in per_split.values() for c in classes})
    _warn_lookalike_classes(root, names)
    for c in names:
        if not any(classes.get(c) for classes in per_split.values()):
            where = [split_dirs[s] / c for s, classes in per_split.items() if c in classes]
            raise bad(where[0], "class folder has no image files "
                      f"({', '.join(sorted(IMAGE_EXTS))})", hint="add images or remove the folder")
    label_of = {c: i for i, c in enumerate(names)}
    splits = {
        s: [Sample(f, label_of[c]) for c in sorted(classes) for f in classes[c]]
        for s, classes in per_split.items()
    }
    return finish(NAME, names, splits, root, {"layout": NAME})
