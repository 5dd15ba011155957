"""Index masks: a pruned subset as sorted sample indices over the same files, never a copy.

On disk a mask is two files side by side: ``NAME.npy`` (sorted, unique int64 sample indices)
and ``NAME.json`` (which split of which dataset it indexes — by content fingerprint — and how
it was made; the :class:`~ffcv_dp4tl.contracts.MaskMeta` contract). Masks are validated
against the dataset's manifest before any sample is read.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..contracts import MaskMeta
from ..contracts.fields import repeats
from ..errors import DataError, MaskError
from ..fsutil import NpzArchiveError, atomic_save_npy, atomic_write_json, load_npy, read_json
from ..outputs import is_dataset
from .manifest import SplitInfo, npy_error_reason

#: the advice for a mask whose two files (.npy and .json sidecar) do not agree: one rule, said by
#: every check of a mask's sidecar
RECREATE_MASK = "recreate the mask with `dp4tl prune` or `dp4tl mask classes`"


@dataclass(frozen=True, eq=False)
class IndexMask:
    """The samples of one split a loader reads: ``indices``, sorted sample indices of the split,
    and ``meta``, the split it indexes (``split``, ``fingerprint``, ``num_samples``) and how it
    was made. Made by :func:`make_mask`, :func:`full_mask`, :func:`mask_from_classes` or
    ``dp4tl prune``; saved and read with :func:`save_mask` / :func:`load_mask` (a ``.npy`` and
    its JSON sidecar). Two masks are equal when their indices and meta are (``==`` compares the
    arrays' values; a mask is unhashable, as its array is)."""

    indices: np.ndarray
    #: ``split``, ``fingerprint`` and ``num_samples`` of the split it indexes, plus provenance.
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.indices))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(np.array_equal(self.indices, other.indices)) and self.meta == other.meta

    __hash__ = None  # type: ignore[assignment]  # (an array's values: mutable, unhashable)

    @property
    def info(self) -> MaskMeta:
        """The sidecar contract of this mask (``meta`` parsed; no fingerprint required)."""
        return MaskMeta.from_json(dict(self.meta), "mask", require_fingerprint=False)

    @property
    def kept_fraction(self) -> float:
        n = self.meta.get("num_samples")
        return len(self) / n if n else float("nan")


def _json_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _npy_path(path: str | Path) -> Path:
    """The mask's .npy file: ``path`` itself, or ``path`` + ``.npy``. Appended, never swapped:
    ``lm_0.2`` and ``lm_0.8`` are two masks (a swapped suffix made both ``lm_0.npy``). A folder
    is called a built dataset only when it is one (:func:`ffcv_dp4tl.outputs.is_dataset`, the
    rule of every output check), not for any ``manifest.json`` it holds. An existing file of
    another kind (``afile.txt``, no ``afile.txt.npy`` beside) is named as no mask: "mask file
    not found: afile.txt.npy" sent the user looking for a file they never meant."""
    path = Path(path)
    if path.is_dir():
        if is_dataset(path):  # (its .npy files are labels and the index)
            raise MaskError(f"{path} is a built dataset, not a mask; pass a mask's .npy file "
                            "(`dp4tl prune --out DIR` writes DIR/train.npy)")
        found = sorted(p.name for p in path.glob("*.npy") if _json_path(p).is_file())
        raise MaskError(f"{path} is a folder; pass the mask file in it"
                        + (f" (it holds {', '.join(found[:4])})" if found else ""))
    if path.suffix == ".json":  # the sidecar named instead of the mask
        return path.with_suffix(".npy")
    if path.suffix == ".npy":
        return path
    npy = path.with_name(path.name + ".npy")
    if path.is_file() and not npy.exists():  # (was "mask file not found: afile.txt.npy")
        raise MaskError(f"{path} is a file but not a mask (a mask is a .npy file of sample "
                        "indices, its .json beside); name the mask's .npy file")
    return npy


def check_mask_name(path: str | Path, what: str = "--out") -> Path:
    """The name a mask is to be written under: ``NAME.npy``, or ``NAME`` (.npy appended, as in
    ``lm_0.2`` or ``flowers.top10``, which the readers take too). A suffix that names another
    kind of file (:data:`OTHER_FILES`: ``m.txt``, ``m.json``, ``m.pt``) is refused: ``mask
    classes --out m.txt`` wrote ``m.txt.npy`` and ``m.txt.json``, silently."""
    path = Path(path)
    if path.suffix.lower() in OTHER_FILES:
        raise MaskError(f"{what} {path}: a mask is written as a .npy file (its .json beside), "
                        f"not a {path.suffix} file; name it {path.with_suffix('.npy').name} or "
                        f"{path.name}.npy")
    return path


#: suffixes of files that are not masks (a mask's name may hold other dots: ``flowers.top10``)
OTHER_FILES = frozenset({".txt", ".json", ".jsonl", ".csv", ".tsv", ".md", ".toml", ".yaml", ".yml",
                         ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".npz", ".beton", ".tar",
                         ".gz", ".zip", ".jpg", ".jpeg", ".png", ".log"})


def sorted_unique(idx: np.ndarray) -> np.ndarray:
    """``np.unique(idx)`` for int64 ``idx``, fast on the common case of sorted, unique input.

    numpy 2.x's ``np.unique`` takes a hash-based path that costs ~25x a sort check on 1.28M
    already-sorted indices (268 ms vs 11 ms); masks are almost always built sorted. Same result
    as ``np.unique`` (a new sorted array without duplicates) in every case.
    """
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    if idx.size < 2:
        return idx.copy()
    if bool((idx[1:] > idx[:-1]).all()):
        return idx.copy()
    s = np.sort(idx)
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def make_mask(indices: Iterable[int] | np.ndarray, split: SplitInfo, **provenance: Any) -> IndexMask:
    """Build a validated mask over ``split`` from any iterable of sample indices."""
    _check_split(split)
    idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise MaskError(f"mask indices must be integers, got dtype {idx.dtype}")
    idx = sorted_unique(idx)  # sorted + unique
    meta = MaskMeta(split=split.name, fingerprint=split.fingerprint,
                    num_samples=split.num_samples, num_kept=int(idx.size),
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    provenance=provenance)
    mask = IndexMask(idx, meta.to_json())
    validate_mask(mask, split)
    return mask


def _check_split(split: Any) -> None:
    if isinstance(split, (str, bytes, Path)):  # the split's name (or a dataset folder)
        raise MaskError(f"split must be the split's SplitInfo, not {split!r}: pass "
                        "load_manifest(DATASET).split(NAME)")


def full_mask(split: SplitInfo) -> IndexMask:
    """Every sample of ``split`` (a :class:`~.manifest.SplitInfo`,
    ``load_manifest(dir).split(name)``): the mask ``make_loader`` reads when given none."""
    return make_mask(np.arange(split.num_samples), split, method="full")


def mask_from_classes(split: SplitInfo, classes: Iterable[int], **provenance: Any) -> IndexMask:
    """All samples whose label is in ``classes`` — from ``labels.npy`` alone, no image read."""
    _check_split(split)
    if isinstance(classes, (str, bytes)):  # iterated, "13" would keep classes 1 and 3
        raise MaskError(f"classes must be a list of class ids, not the string {classes!r}")
    asked = np.asarray(list(classes))
    if asked.size and not np.issubdtype(asked.dtype, np.integer):
        raise MaskError(f"class ids must be integers, got {asked[:5].tolist()} (dtype {asked.dtype})")
    labels = split.load_labels()
    keep = sorted_unique(asked.astype(np.int64))
    if keep.size and keep[0] < 0:
        raise MaskError(f"class ids must be >= 0, got {keep[keep < 0][:5].tolist()}")
    n = split.num_classes
    if n is not None and keep.size and keep[-1] >= n:  # (kept nothing, in silence: review)
        raise MaskError(f"class ids {keep[keep >= n][:5].tolist()} are outside the {n} classes "
                        f"of {split.root} (ids 0-{n - 1})")
    idx = samples_with_labels(labels, keep)
    return make_mask(idx, split, kept_classes=keep.tolist(), **provenance)


def classes_of(mask: IndexMask, split: SplitInfo) -> np.ndarray:
    """The sorted class ids of the samples ``mask`` keeps (``split``'s labels: the split it
    indexes)."""
    return sorted_unique(np.asarray(split.load_labels())[mask.indices].astype(np.int64))


def val_mask_of(train_mask: IndexMask, train: SplitInfo, val: SplitInfo,
                **provenance: Any) -> IndexMask | None:
    """The val samples of the classes ``train_mask`` keeps: the one val rule for a pruned source,
    whatever its unit (classes, clusters or samples). The trainer validates on it and `dp4tl
    prune` writes it as ``val.npy``. None when those classes have no val sample (a small val
    split): nothing to validate on."""
    _check_split(train)
    _check_split(val)
    kept = classes_of(train_mask, train)
    idx = samples_with_labels(val.load_labels(), kept)
    if idx.size == 0:
        return None
    return make_mask(idx, val, kept_classes=kept.tolist(), **provenance)


def check_recorded_classes(mask: IndexMask, split: SplitInfo, source: str | Path = "mask") -> None:
    """A sidecar's ``kept_classes`` (what a class overlap counts) holds the label of every
    sample the mask keeps: a sidecar edited by hand, or copied from another mask of the same
    size, gave a 15 % class overlap beside a 100 % sample overlap, and `mask check` said OK."""
    recorded = mask.meta.get("kept_classes")
    if not isinstance(recorded, list) or not len(mask):
        return
    missing = np.setdiff1d(classes_of(mask, split), np.asarray(recorded, dtype=np.int64))
    if missing.size:
        raise MaskError(f"{_json_path(Path(source))}: kept_classes leaves out classes "
                        f"{missing[:5].tolist()} whose samples {source} keeps: the two files do not "
                        f"belong together; {RECREATE_MASK}")


def samples_with_labels(labels: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Sorted int64 indices of the samples whose label is in ``kept`` (non-negative ids).

    A boolean lookup table indexed by label: one gather over the labels, ~0.3x the time of
    ``np.isin`` (which sorts or hashes) on 1.28M ImageNet labels. Shared by
    :func:`mask_from_classes` and the scorers' class/cluster selections."""
    labels = np.asarray(labels)
    kept = np.asarray(kept, dtype=np.int64)
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    hi = max(int(labels.max()), int(kept.max()) if kept.size else 0)
    lookup = np.zeros(hi + 1, dtype=bool)
    lookup[kept] = True
    if int(labels.min()) < 0:  # a negative label is in no class (and must not wrap around)
        return np.flatnonzero(lookup[np.maximum(labels, 0)] & (labels >= 0)).astype(np.int64)
    return np.flatnonzero(lookup[labels]).astype(np.int64)


def validate_mask(mask: IndexMask, split: SplitInfo, source: str | Path = "mask",
                  split_option: bool = False) -> None:
    """Raise :class:`MaskError` unless ``mask`` is a sorted, unique, in-range mask for ``split``.
    ``split_option``: the command has a ``--split`` option, which a mask of a sibling split is
    then advised to use (other commands read the split they read: they advise its mask)."""
    idx = mask.indices
    if idx.ndim != 1:
        raise MaskError(f"{source}: indices must be 1-D, got shape {idx.shape}")
    if idx.dtype != np.int64:
        raise MaskError(f"{source}: indices must be int64, got {idx.dtype}")
    fp = mask.meta.get("fingerprint")
    if fp is not None and fp != split.fingerprint:
        other = _sibling_split(split, fp)
        if other is not None:
            if split_option:
                drop = " (or drop --split)" if other == "train" else ""
                fix = f"pass `--split {other}`{drop} to use it, or make a mask of split {split.name!r}"
            else:  # (train, finetune, overlap: no --split to change; the mask is the thing)
                made = (f"`dp4tl prune` writes {split.name}.npy beside {other}.npy"
                        if {split.name, other} == {"train", "val"} else  # (a source's two masks)
                        f"`dp4tl mask classes --split {split.name}` makes one")
                fix = f"give the mask of split {split.name!r} ({made})"
            raise MaskError(f"{source} indexes split {other!r} of this dataset, not split "
                            f"{split.name!r}, which this reads: {fix}")
        raise MaskError(
            f"{source} was made for another dataset (fingerprint {str(fp)[:12]}…, split "
            f"{mask.meta.get('split')!r}) but is used with split {split.name!r} whose fingerprint "
            f"is {split.fingerprint[:12]}…; recompute the mask for this dataset")
    if idx.size == 0:
        raise MaskError(f"{source} is empty: it keeps no sample of split {split.name!r}")
    if idx[0] < 0 or idx[-1] >= split.num_samples:
        bad = idx[(idx < 0) | (idx >= split.num_samples)]
        raise MaskError(f"{source}: {bad.size} indices out of range [0, {split.num_samples}) for "
                        f"split {split.name!r} (e.g. {bad[:3].tolist()})")
    d = np.diff(idx)
    if (d <= 0).any():
        j = int(np.flatnonzero(d <= 0)[0])
        what = "duplicate" if d[j] == 0 else "unsorted"
        raise MaskError(f"{source}: {what} index {int(idx[j + 1])} at position {j + 1}; masks "
                        "must be sorted and unique: recreate it with `dp4tl prune` or `dp4tl mask "
                        "classes` (in Python, `make_mask` sorts and deduplicates)")


def _sibling_split(split: SplitInfo, fingerprint: str) -> str | None:
    """The other split of ``split``'s dataset whose fingerprint is ``fingerprint`` (a mask made
    for it), or None: a mask used with the wrong ``--split`` is the user's slip, not another
    dataset, and "recompute the mask for this dataset" sent them to redo right work."""
    from .manifest import load_manifest

    if split.dataset_root is None:
        return None
    try:
        splits = load_manifest(split.dataset_root).contract.splits
    except DataError:  # (no readable manifest: nothing to tell)
        return None
    return next((n for n, e in splits.items() if n != split.name and e.fingerprint == fingerprint),
                None)


def save_mask(path: str | Path, mask: IndexMask) -> Path:
    """Write ``path`` (.npy) and its ``.json`` sidecar atomically; returns the .npy path. A mask
    written over another loses the old sidecar first: interrupted between the two files, it is
    a .npy without a sidecar (refused by :func:`load_mask`), never new indices under the old
    mask's description (its ratio, method, count)."""
    npy = _npy_path(path)
    _json_path(npy).unlink(missing_ok=True)
    indices = mask.indices.astype(np.int64)
    atomic_save_npy(npy, indices)
    atomic_write_json(_json_path(npy), {**mask.info.to_json(),
                                        "indices_sha256": indices_digest(indices)})
    return npy


def indices_digest(indices: np.ndarray) -> str:
    """sha256 of a mask's sorted int64 indices: recorded in its sidecar by :func:`save_mask`
    and checked by :func:`load_mask`."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()


def mask_files(path: str | Path) -> tuple[Path, Path]:
    """The two files a mask saved at ``path`` is (:func:`save_mask`): ``NAME.npy``, ``NAME.json``."""
    npy = _npy_path(path)
    return npy, _json_path(npy)


#: sidecar entries that say where or when a mask was written, not what it selects: the scores
#: folder as it was spelled (a rerun from another directory spells it otherwise) and the time
_NOT_INPUTS = frozenset({"created", "scores", "indices_sha256"})  # (the indices: compared as such)


def _inputs(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in _NOT_INPUTS}


def mask_conflict(path: str | Path, mask: IndexMask | None) -> tuple[Path, str] | None:
    """What saving ``mask`` at ``path`` (None: removing the mask there) would destroy — the file
    and a description, e.g. ``(train.npy, "the lm mask at ratio 0.4")`` — or None when nothing:
    no file there, or ``mask`` itself (the same indices of the same split, made from the same
    recorded inputs: method, ratio, budget, classes, ...; not the time, nor how the scores folder
    was spelled). An identical rerun, or the rest of an interrupted one, writes again; anything
    else there is someone's work (the mask a finished training run used, a prune's train.npy
    whose val.npy would stay, a user's own .npy or .json) and is the caller's to refuse. The one
    rule for the commands that write masks by name (``dp4tl prune``, ``dp4tl mask classes``)."""
    npy, side = mask_files(path)
    meta: dict[str, Any] | None = None
    if side.exists():
        try:
            meta = MaskMeta.from_json(read_json(side, "mask metadata"), side).to_json()
        except DataError:
            return side, "a file that is not a mask's sidecar"
    same_indices: bool | None = None  # (None: no .npy there)
    if npy.exists():
        try:
            old = load_npy(npy)
        except (ValueError, OSError, EOFError):
            old = None
        same_indices = (mask is not None and old is not None and old.dtype == np.int64
                        and np.array_equal(old, mask.indices))
    if meta is None:
        if same_indices is False:
            return npy, f"a file that is not this mask (it has no sidecar {side.name})"
        return None
    if mask is not None and _inputs(meta) == _inputs(mask.meta) and same_indices is not False:
        return None
    what = describe_mask(meta, mask)
    if mask is not None and same_indices is False and what == describe_mask(mask.meta):
        what += " selecting other samples"  # (the same words: other scores)
    return (npy if npy.exists() else side), what


def describe_mask(meta: dict[str, Any], other: IndexMask | None = None) -> str:
    """A mask's sidecar in a few words, ``the lm mask at ratio 0.4, budget samples``; beside
    ``other``, also what sets it apart from it that those words leave out (split, dataset)."""
    text = f"the {meta.get('method', 'hand-made')} mask"
    if meta.get("ratio") is not None:
        text += f" at ratio {meta['ratio']}"
    if meta.get("budget") not in (None, "units"):
        text += f", budget {meta['budget']}"
    if meta.get("reverse"):
        text += ", reversed order"
    if meta.get("method") == "classes" and isinstance(meta.get("kept_classes"), list):
        text += f" of classes {_ranges(meta['kept_classes'])}"
    if other is not None and meta.get("split") != other.meta.get("split"):
        text += f" of split {meta.get('split')!r}"
    elif other is not None and meta.get("fingerprint") != other.meta.get("fingerprint"):
        text += " of another dataset"
    return text


def _ranges(ids: list[Any]) -> str:
    """Class ids as compact ranges, ``0-3,7`` (``--classes``'s spelling; the first few)."""
    if not all(type(i) is int for i in ids):  # (a sidecar edited by hand)
        return f"{len(ids)} classes"
    parts: list[list[int]] = []
    for i in sorted(ids):
        if parts and i == parts[-1][1] + 1:
            parts[-1][1] = i
        else:
            parts.append([i, i])
    shown = [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in parts[:6]]
    return ",".join(shown) + (",..." if len(parts) > 6 else "")


def as_mask(mask: "IndexMask | str | Path", split: SplitInfo) -> IndexMask:
    """``mask`` checked against ``split``: an :class:`IndexMask` in memory (validated) or the
    path of a saved one (loaded): what every function that takes a mask accepts."""
    if isinstance(mask, IndexMask):
        validate_mask(mask, split)
        return mask
    return load_mask(mask, split)  # (MaskError if it was made for another dataset)


def load_mask(path: str | Path, split: SplitInfo | None = None,
              split_option: bool = False) -> IndexMask:
    """Load a mask (and validate it against ``split`` if given; ``split_option``:
    :func:`validate_mask`'s)."""
    if not isinstance(path, (str, os.PathLike)):  # e.g. an index array where a path belongs
        name = split.name if split is not None else "train"
        raise MaskError(f"mask must be an IndexMask or the path of a saved mask (.npy), got "
                        f"{type(path).__name__}; make one from sample indices with "
                        f"make_mask(indices, load_manifest(dataset_dir).split({name!r}))")
    npy = _npy_path(path)
    if not npy.exists():
        raise MaskError(f"mask file not found: {npy}")
    fix = "recreate it with `dp4tl prune` or `dp4tl mask classes`"
    try:
        indices = load_npy(npy)
    except NpzArchiveError:  # (np.load opens a .npz archive, whatever its name)
        raise MaskError(f"{npy} is an .npz archive (np.savez), not a .npy mask of sample "
                        f"indices; {fix}") from None
    except (ValueError, OSError, EOFError) as e:  # (what numpy says, in the user's words)
        raise MaskError(f"{npy} is not a readable .npy mask ({npy_error_reason(e, 'sample indices')}); recreate it "
                        "with `dp4tl prune` or `dp4tl mask classes`") from None
    if indices.dtype == np.bool_:  # (numpy's other kind of mask: a flag per sample)
        raise MaskError(f"{npy} holds a boolean array (a keep flag per sample), but a mask holds "
                        "the kept samples' indices (sorted int64): save_mask(PATH, make_mask("
                        "np.flatnonzero(flags), load_manifest(DATASET).split(SPLIT))) writes "
                        "one, or make one with `dp4tl prune` or `dp4tl mask classes`")
    if indices.dtype != np.int64:  # (before the count check: a count of other values misleads)
        raise MaskError(f"{npy}: indices must be int64, got {indices.dtype}; {fix}")
    meta_path = _json_path(npy)
    if not meta_path.exists():
        raise MaskError(f"mask metadata not found: {meta_path} (every mask .npy needs its .json "
                        "sidecar that names the dataset fingerprint)")
    meta = MaskMeta.from_json(read_json(meta_path, "mask metadata"), meta_path)
    kept = meta.provenance.get("kept_classes")  # (what class overlaps and `mask check` read)
    if kept is not None and (not isinstance(kept, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in kept)):
        raise MaskError(f"{meta_path}: field 'kept_classes' must be a list of class ids "
                        f"(integers >= 0), got {str(kept)[:40]}; {RECREATE_MASK}")
    twice = repeats(kept or [])
    if twice:  # (a set: a class twice counted in a class overlap as kept twice)
        raise MaskError(f"{meta_path}: field 'kept_classes' lists class {twice[0]} more than "
                        f"once (a set of class ids); {RECREATE_MASK}")
    if meta.num_kept is not None and indices.ndim == 1 and meta.num_kept != len(indices):
        raise MaskError(f"{meta_path} says {meta.num_kept} samples are kept but {npy} holds "
                        f"{len(indices)}: the two files were not written together (edited, or "
                        f"copied from two masks); {RECREATE_MASK}")
    # the indices the sidecar describes: a .npy replaced by one of the same length (another
    # selection) was trained on under the pruned set's description, in the pipeline and by
    # `dp4tl train --mask`; only `mask check` compared it with kept_classes (audit)
    if meta.indices_sha256 is not None and indices.ndim == 1 and \
            indices_digest(indices) != meta.indices_sha256:
        raise MaskError(f"{npy} holds other indices than the ones {meta_path.name} describes "
                        f"(it records their sha256): the .npy was edited or replaced; "
                        f"{RECREATE_MASK}")
    # (the digest is the file's, checked above: the mask in memory is what make_mask gives)
    mask = IndexMask(indices, dataclasses.replace(meta, indices_sha256=None).to_json())
    if split is not None:
        validate_mask(mask, split, source=npy, split_option=split_option)
        check_recorded_classes(mask, split, npy)  # (masks saved before the digest)
    return mask


def shard_for_rank(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's disjoint part of an epoch's order: every sample on exactly one rank.

    Strided (``order[rank::world]``), so ranks differ by at most one sample and no sample is
    repeated (unlike DistributedSampler's padding). Training plans cut ``order`` to a multiple
    of ``world_size`` first (:class:`~.sampling.EpochPlan` ``even``), so their ranks are equal.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, {world_size})")
    return order[rank::world_size]


def epoch_order(indices: np.ndarray, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """The full (all-rank) visiting order of the mask for ``epoch``: same on every rank."""
    if not shuffle:
        return np.asarray(indices)
    return np.random.default_rng([seed, epoch]).permutation(indices)
