"""``manifest.json``: what a built dataset directory contains.

The manifest is written last (atomically) by the builder, so a directory with a manifest is a
complete build. It records class names, per-split counts, the image settings and a content
fingerprint. Masks store the fingerprint of the split they index, so a mask can never be
silently applied to a different (or rebuilt) dataset.

The file's shape is the :class:`~ffcv_dp4tl.contracts.DatasetManifest` contract, shared with
the builder (``beton_builders``); this module resolves its relative paths against the dataset
directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..contracts import (FORMAT, INDEX_DTYPE, MANIFEST_NAME, ORIGINS_SUFFIX, DatasetManifest,
                         SplitEntry, split_fingerprint)
from ..errors import DataError, count
from ..fsutil import absent_why, load_npy, os_error_line, read_json
from ..outputs import KINDS, folder_kind, is_dataset

__all__ = ["FORMAT", "INDEX_DTYPE", "MANIFEST_NAME", "Manifest", "SplitInfo", "load_manifest", "manifest_path",
           "split_fingerprint"]


def read_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """A build's ``.npy`` file (labels, index), or one :class:`DataError` line naming it when it
    is truncated (or declares more than it holds: :func:`~..fsutil.load_npy`), not an array file or holds pickled objects (never loaded: a damaged file must
    not run code), or is no regular file (a FIFO's read would wait forever)."""
    if why := absent_why(path):
        raise DataError(f"{path}: {why}; rebuild the dataset")
    try:
        return load_npy(path, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise DataError(f"{path}: missing; rebuild the dataset") from None
    except PermissionError as e:  # the file is fine: rebuilding would not help
        raise DataError(os_error_line(e, reading=True)) from None
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: unreadable ({npy_error_reason(e)}); rebuild the dataset") from None


def npy_error_reason(e: BaseException, wanted: str = "plain numbers") -> str:
    """What a ``np.load(..., allow_pickle=False)`` error says about the file, in the user's words
    (the one rule for build files and masks): numpy's own words point at ``allow_pickle``, a
    switch the user must not flip (a damaged file must not run code), and it says "pickled" for
    any file without the ``.npy`` magic, a text file included."""
    why = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "Object arrays" in why:  # a real .npy of Python objects
        return f"it holds Python objects (pickled data), not {wanted}"
    if "pickled" in why:  # numpy's guess for any file without the .npy magic
        return "not a .npy array file"
    return why


def read_labels(path: Path, root: Path | None = None) -> np.ndarray:
    """A split's labels file (memory-mapped), refused in one :class:`DataError` line when it is
    no 1-D array of integer class ids (:func:`beton_builders.integrity.labels_dtype_problem`):
    float labels crash every reader that indexes or counts with them."""
    from beton_builders.integrity import labels_dtype_problem

    labels = read_npy(path, mmap=True)
    problem = labels_dtype_problem(path, labels)
    if problem is not None:  # (the build's repair finds it too: beton_builders.repair)
        raise DataError(f"{problem}; rerun the `dp4tl build` that made {root or path.parent} "
                        "(it writes the labels again from its inputs)")
    return labels


@dataclass(frozen=True)
class SplitInfo:
    name: str
    num_samples: int
    fingerprint: str
    beton: Path
    labels: Path
    index: Path
    shards: list[Path]
    #: cheap per-file checksums recorded by the build (None: built before they existed)
    checksums: dict[str, Any] | None = None
    #: content fingerprint of the beton (None: built before it existed)
    beton_fingerprint: str | None = None
    #: the dataset directory (None for hand-made SplitInfos: the labels file's folder)
    dataset_root: Path | None = None
    #: the dataset's number of classes (None for hand-made SplitInfos: labels not range-checked)
    num_classes: int | None = None
    #: the build's ``image.max_side`` (None: hand-made SplitInfos, builds that did not record it;
    #: the beton's sides are then held to the builder's largest, 4096: ``contracts.side_limit``)
    max_side: int | None = None

    @property
    def root(self) -> Path:
        return self.dataset_root if self.dataset_root is not None else self.labels.parent

    def check_files(self, fmt: str) -> None:
        """Refuse (one-line DataError) files of this split that do not match the build: the
        beton (``fmt="ffcv"``, its recorded image sides within ``max_side`` too) or the shards
        and their index (``"wds"``); cheap, no image bytes are read (:func:`beton_builders.integrity.check_split_files`). Each format's sample
        count (the beton's header, the index's length) must equal ``num_samples``: loaders draw
        their samples from it, so a hand-edited ``manifest.json`` would silently change them."""
        from beton_builders.integrity import check_count, check_split_files

        check_split_files(self.root, self.name, self.beton if fmt == "ffcv" else None,
                          self.shards if fmt == "wds" else None, self.checksums, self.num_samples,
                          self.max_side)
        if fmt == "wds":
            index = read_npy(self.index, mmap=True)  # the length only: its header is read
            check_count(self.root, self.name, self.index, len(index) if index.ndim else 0,
                        self.num_samples)

    def load_labels(self) -> np.ndarray:
        """The split's labels, refused (one line) when they differ from the ones the build
        recorded in ``manifest.json`` (a permuted file has the right size and class counts), or
        when their number is not the manifest's ``num_samples`` (an edited manifest: masks and
        class scores would index past, or short of, the labels), or when a label is no class of
        the manifest's ``classes`` (the models' outputs: an edited list failed in the loss)."""
        from beton_builders.integrity import check_count, check_labels

        labels = read_labels(self.labels, self.root)
        check_labels(self.labels, labels, self.checksums, self.root, self.name)
        check_count(self.root, self.name, self.labels, len(labels) if labels.ndim else 0,
                    self.num_samples)
        if self.num_classes is not None and len(labels):
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                raise DataError(f"{self.labels}: label {bad} is no class of the "
                                f"{self.num_classes} that {self.root / MANIFEST_NAME} lists "
                                "(classes edited, or labels replaced, since the build); restore "
                                f"them or rerun the `dp4tl build` that made {self.root}")
        return labels

    def load_index(self) -> np.ndarray:
        return read_npy(self.index)

    @property
    def origins(self) -> Path:
        """``S.files.txt``: where each sample came from (:data:`~..contracts.ORIGINS_SUFFIX`)."""
        return self.root / f"{self.name}{ORIGINS_SUFFIX}"

    def load_origins(self) -> list[str]:
        """Sample ``i``'s origin (its input file) at position ``i``, or one DataError line: a
        build made before the file existed gets it from the command that built it (a finished
        build then writes only this file)."""
        path = self.origins
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{path}: missing (built before per-sample origins were recorded); "
                            "run the command that built the dataset again (`dp4tl build` with "
                            "the same SOURCE and --out, or the pipeline for synth data): a "
                            "finished build writes only this file") from None
        except PermissionError as e:
            raise DataError(os_error_line(e, reading=True)) from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: unreadable ({str(e).splitlines()[0]}); delete it and run "
                            "the command that built the dataset again") from None
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        if len(lines) != self.num_samples:
            raise DataError(f"{path}: {len(lines)} line(s) for the {self.num_samples} samples of "
                            f"split {self.name!r}; delete it and run the command that built the "
                            "dataset again")
        return lines


@dataclass(frozen=True)
class Manifest:
    """A loaded manifest: the typed :attr:`contract` plus the directory it describes."""

    root: Path
    contract: DatasetManifest

    @property
    def name(self) -> str:
        return self.contract.name

    @property
    def extra(self) -> dict[str, Any]:
        """What the builder recorded about the data (e.g. the synth generator's ground truth)."""
        return self.contract.extra

    @property
    def classes(self) -> list[str]:
        return list(self.contract.classes)

    @property
    def num_classes(self) -> int:
        return self.contract.num_classes

    @property
    def fingerprint(self) -> str:
        return self.contract.fingerprint

    @property
    def split_names(self) -> list[str]:
        return list(self.contract.splits)

    def class_counts(self, name: str) -> list[int] | None:
        """Samples per class of split ``name`` as the build counted them (None: older builds)."""
        return self.split_entry(name).class_counts

    def split_entry(self, name: str, setting: str = "") -> SplitEntry:
        """Split ``name``'s entry. ``setting``: the recipe key that named it (``data.val_split``);
        a missing split's error then says how to name another (a flat image folder builds a
        ``train`` split only, and the bare "no split 'val'" left the user to find the key)."""
        splits = self.contract.splits
        if name not in splits:
            if not splits:  # (emptied by hand: "available: " ended mid-sentence)
                raise DataError(self.contract.fingerprint_problem(self.root / MANIFEST_NAME))
            fix = (f"; build it with that split, or name another (--set {setting}=NAME)"
                   if setting else "")
            raise DataError(f"{self.root / MANIFEST_NAME} has no split {name!r} (available: "
                            f"{', '.join(splits)}){fix}")
        return splits[name]

    def split(self, name: str, setting: str = "") -> SplitInfo:
        s = self.split_entry(name, setting)
        return SplitInfo(
            name=name,
            num_samples=s.num_samples,
            fingerprint=s.fingerprint,
            beton=self.root / s.beton,
            labels=self.root / s.labels,
            index=self.root / s.index,
            shards=[self.root / p for p in s.shards],
            checksums=s.checksums,
            beton_fingerprint=s.beton_fingerprint,
            dataset_root=self.root,
            num_classes=self.num_classes,
            max_side=self.contract.image.max_side if self.contract.image is not None else None,
        )


def manifest_path(root: str | Path) -> Path:
    """The manifest file of the dataset at ``root`` (``root`` may also be that file itself)."""
    root = Path(root)
    return root if root.name == MANIFEST_NAME else root / MANIFEST_NAME


def load_manifest(root: str | Path, *, check: bool = True) -> Manifest:
    """Load ``root/manifest.json`` (``root`` may also be the manifest file itself).

    The dataset fingerprint is what masks, scores and every pipeline stage are keyed on, so it
    is checked against the splits' own fingerprints here, where every command reads it (a few
    hashes of hashes: no data is read). A manifest with a split deleted, or a fingerprint
    pasted from another build, was accepted by every command but ``verify``, and a stage of
    the other dataset could be reused for this one. ``check=False`` is for ``verify``, which
    reports that problem beside the others it finds."""
    path = manifest_path(root)
    root = path.parent
    if not path.exists():
        _not_a_dataset(root)
        if not root.exists():  # (a typo, most often: not only "build it")
            raise DataError(f"{root} is not a built dataset (it does not exist); pass the folder "
                            f"`dp4tl build --out` wrote, or build one there with `dp4tl build "
                            f"SOURCE --out {root}`")
        raise DataError(
            f"{root} is not a built dataset (no {MANIFEST_NAME}); build it with "
            f"`dp4tl build SOURCE --out {root}` or finish an interrupted build by rerunning it"
        )
    if why := absent_why(path):
        raise DataError(f"{path} is {why}; move it away and rebuild the dataset")
    contract = DatasetManifest.from_json(read_json(path, "manifest"), path)
    problem = contract.fingerprint_problem(path) if check else None
    if problem is not None:
        raise DataError(problem)
    return Manifest(root=root, contract=contract)


def _not_a_dataset(root: Path) -> None:
    """Refuse, in words that fit, a ``root`` that is no built dataset but is not to be built
    either: a file (a built dataset is a folder), the root of a ``synth`` build, whose datasets
    are ``source/`` and ``targets/NAME`` below it, or a folder of builds, one per sub-folder
    (``DIR/targets`` of a synth build, a ``--data-root``): building over it again would not
    help; or another command's output folder (a training run given as --data was told to
    build a dataset there). Returns for anything else (the caller says how to build it)."""
    if root.is_file():
        raise DataError(f"{root} is a file, but a built dataset is a directory (holding "
                        f"{MANIFEST_NAME}); pass the directory `dp4tl build` wrote")
    if (root.parent / MANIFEST_NAME).is_file():  # (DATASET/wds, DATASET/ffcv: advised to build there)
        raise DataError(f"{root} is a folder inside the built dataset {root.parent}: pass "
                        f"{root.parent}")
    kind = folder_kind(root)
    if kind is not None and kind != "dataset":
        raise DataError(f"{root} holds {KINDS[kind].what} (written by `{KINDS[kind].command}`), "
                        "not a built dataset: pass the folder `dp4tl build --out` wrote")
    targets = _builds_in(root / "targets")
    parts = [str(root / "source")] if is_dataset(root / "source") else []
    if targets:
        parts.append(f"{root / 'targets'}/NAME ({_first(targets, 4)})")
    if parts:
        raise DataError(f"{root} holds several built datasets, not one: pass "
                        f"{' or '.join(parts)}")
    names = _builds_in(root)
    if len(names) == 1:
        raise DataError(f"{root} is not a built dataset but holds one: pass {root / names[0]}")
    if names:
        raise DataError(f"{root} holds several built datasets, not one: pass {root}/NAME "
                        f"(NAME: {_first(names, 6)})")
    problem = _input_folder_problem(root)
    if problem:
        raise DataError(problem)


def _input_folder_problem(root: Path) -> str | None:
    """The refusal of a ``root`` that is no build but the images a build reads, else None.
    Without it the advice was ``dp4tl build SOURCE --out ROOT``, which ``dp4tl build`` refuses
    (an --out inside its input folder). Class folders of images (two or more, none named
    train/val/test) are the ``folder`` layout's; images one level deeper (ImageNet's
    ``train/<wnid>/``, Flowers' ``jpg/``) may be another layout's, so the layout is left to
    the user. One level of folders is looked at, two under train/val/test, each only until its
    first image."""
    from beton_builders.out_dir import is_build

    if not root.is_dir() or is_build(root):
        return None
    subs = _subfolders(root)
    splits = [d for d in subs if d.name in ("train", "val", "test")]
    with_images = [d for d in subs if d not in splits and _has_image(d)]
    if len(with_images) >= 2 and not splits:
        return (f"{root} is not a built dataset but an input folder (class folders of images; "
                f"no {MANIFEST_NAME}): build a dataset from it into another folder with `dp4tl "
                f"build folder:{root} --out OTHER_DIR` (OTHER_DIR outside {root}), then pass "
                "OTHER_DIR")
    if with_images or any(_has_image(d) or any(_has_image(c) for c in _subfolders(d))
                          for d in splits):
        return (f"{root} is not a built dataset but a folder of input images (no "
                f"{MANIFEST_NAME}): build a dataset from it into another folder with `dp4tl "
                f"build LAYOUT:{root} --out OTHER_DIR` (OTHER_DIR outside {root}; LAYOUT "
                "`folder` for one folder per class, optionally under train/ val/ test/, else the "
                "dataset's own, e.g. imagenet, flowers102: README, SOURCE), then pass OTHER_DIR")
    if _has_image(root):
        return (f"{root} is not a built dataset but a folder of images (no {MANIFEST_NAME}): "
                "build a dataset from images into another folder with `dp4tl build folder:DIR "
                "--out OTHER_DIR`, DIR holding one folder per class (DIR/CLASS/*.jpg) and "
                "OTHER_DIR outside DIR, then pass OTHER_DIR")
    return None


def _has_image(folder: Path) -> bool:
    """``folder`` directly holds a file the ``folder`` layout would read as an image (its own
    rule, ``list_images``); a folder it cannot list holds none, for this message's purpose."""
    from beton_builders.layouts._common import list_images

    try:
        return bool(list_images(folder, recursive=False))
    except DataError:
        return False


def _subfolders(folder: Path) -> list[Path]:
    """``folder``'s sub-folders that the ``folder`` layout would read (its own rule,
    ``subdirs``); none where it cannot list them."""
    from beton_builders.layouts._common import subdirs

    try:
        return subdirs(folder)
    except DataError:
        return []


def _builds_in(folder: Path) -> list[str]:
    """The sub-folders of ``folder`` that are built datasets, sorted (none if no folder), by
    the rule every output check uses (:func:`ffcv_dp4tl.outputs.is_dataset`: a dp4tl build's
    manifest): any ``manifest.json`` made a training run beside it, or another program's
    folder, "a built dataset" that the message told the user to pass."""
    return sorted(p.name for p in folder.glob("*") if is_dataset(p))


def _first(names: list[str], most: int) -> str:
    return ", ".join(names[:most]) + (" …" if len(names) > most else "")


def check_target_classes(manifest: Manifest) -> None:
    """A target to finetune on has at least two classes: with one, every prediction is right
    and top-1 reads 100 % whatever the source model (it was reported so, without a word).
    Here, beside the manifest, so that the pipeline's checks before any work need no
    training module (torchvision and the loaders: about a second; performance audit)."""
    if manifest.num_classes < 2:
        raise DataError(f"the target {manifest.root} has {count(manifest.num_classes, 'class')}: "
                        "finetuning needs at least 2 (with one, top-1 is 100 % whatever the "
                        "model); build the target with two classes or more")
