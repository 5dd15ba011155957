"""How much two selections agree: the "source class selection overlap" of paper Tab. A6.

The paper compares the classes LM keeps with a small surrogate to those it keeps with the
default ResNet-18 surrogate (50 % pruning) and reports the share of the reference's kept classes
that the other selection keeps too:

    overlap(A, B) = |A ∩ B| / |B|,   B = the reference selection.

It is not symmetric (|B| is the denominator); with equal-size selections, as two LM runs at the
same ratio are, it equals |A ∩ B| / |A| as well. The same formula applies to kept *samples*
(mask indices). A class mask records its kept classes (``kept_classes`` in its sidecar); for
cluster- or sample-wise masks the kept classes are those with at least one kept sample, read
from the split's labels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..data.manifest import SplitInfo
from ..data.masks import (RECREATE_MASK, IndexMask, _npy_path, check_recorded_classes, classes_of,
                          load_mask, sorted_unique, validate_mask)
from ..errors import DP4TLError, MaskError, class_ids, count


@dataclass(frozen=True)
class Overlap:
    """``common`` of the reference's ``kept_ref`` units are kept by the other selection too."""
    kept: int       # |A|
    kept_ref: int   # |B|
    common: int     # |A ∩ B|

    @property
    def share(self) -> float:
        """|A ∩ B| / |B| (the paper's overlap), in [0, 1]."""
        return self.common / self.kept_ref

    @property
    def jaccard(self) -> float:
        """|A ∩ B| / |A ∪ B| (symmetric; beside the paper's number when sizes differ)."""
        union = self.kept + self.kept_ref - self.common
        return self.common / union if union else 1.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "share": self.share, "jaccard": self.jaccard}


def _ids(x: Iterable[int] | np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(list(x) if not isinstance(x, np.ndarray) else x)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise DP4TLError(f"{what}: ids must be integers, got dtype {a.dtype}")
    return sorted_unique(a.astype(np.int64, copy=False))


def overlap(selected: Iterable[int] | np.ndarray, reference: Iterable[int] | np.ndarray
            ) -> Overlap:
    """Overlap of two selections given as ids (classes, clusters or sample indices; duplicates
    count once). The reference must keep something."""
    a, b = _ids(selected, "selection"), _ids(reference, "reference selection")
    if b.size == 0:
        raise DP4TLError("the reference selection keeps nothing: the overlap |A ∩ B| / |B| is "
                         "undefined; pass a non-empty reference")
    return Overlap(int(a.size), int(b.size), int(np.intersect1d(a, b, assume_unique=True).size))


def kept_classes(mask: IndexMask, split: SplitInfo | None = None) -> np.ndarray:
    """The classes a mask keeps: its sidecar's ``kept_classes`` (class masks), else the labels
    of its samples (needs ``split``, the split it indexes)."""
    recorded = mask.meta.get("kept_classes")
    if recorded is not None:
        return _ids(recorded, "kept_classes")
    if split is None:
        method = mask.meta.get("method", "?")
        raise MaskError(f"this mask (method {method}) does not record its kept classes; pass "
                        "--data DIR (the dataset it indexes) to read them from its labels")
    return classes_of(mask, split)


def compare_masks(mask: IndexMask, reference: IndexMask, split: SplitInfo | None = None
                  ) -> dict[str, Overlap]:
    """``{"classes": ..., "samples": ...}`` overlaps of ``mask`` with ``reference``. Both must
    index the same split (same fingerprint and size): sample indices of different datasets are
    not comparable."""
    fa, fb = mask.meta.get("fingerprint"), reference.meta.get("fingerprint")
    if fa and fb and fa != fb:
        raise MaskError(f"the masks index different datasets (fingerprints {str(fa)[:12]}… and "
                        f"{str(fb)[:12]}…); compare masks of the same split")
    na, nb = mask.meta.get("num_samples"), reference.meta.get("num_samples")
    if na is not None and nb is not None and na != nb:
        raise MaskError(f"the masks index splits of different sizes ({na} and {nb} samples); "
                        "compare masks of the same split")
    return {"classes": overlap(kept_classes(mask, split), kept_classes(reference, split)),
            "samples": overlap(mask.indices, reference.indices)}


def compare_mask_files(path: str | Path, reference: str | Path, data: str | Path | None = None
                       ) -> dict[str, Overlap]:
    """:func:`compare_masks` of two mask files (``data``: the dataset dir they index, needed
    only when a mask does not record its classes; checked against the masks' fingerprint)."""
    a, b = load_mask(path), load_mask(reference)
    split, num_classes = None, None
    if data is not None:
        from ..data.manifest import load_manifest

        manifest = load_manifest(data)
        split, num_classes = manifest.split(str(b.meta.get("split", "train"))), manifest.num_classes
    for m, p in ((a, _npy_path(path)), (b, _npy_path(reference))):
        validate_mask(m, split if split is not None else _own_split(m, p), p)
        _check_kept_classes(m, p, num_classes)
        if split is not None:  # the labels are there: the sidecar's classes are checked on them
            check_recorded_classes(m, split, p)
    return compare_masks(a, b, split)


def _own_split(mask: IndexMask, npy: Path) -> SplitInfo:
    """The split a mask's sidecar describes (its name, size and fingerprint; no files): without
    ``--data`` a mask is still checked, against its own sidecar, before it is counted (an index
    past the split, a duplicate counted twice, an empty mask gave a number and exit 0)."""
    n = mask.meta.get("num_samples")
    if n is None:
        raise MaskError(f"{npy.with_suffix('.json')} records no num_samples, so {npy} "
                        "cannot be checked alone; pass --data DIR (the dataset it indexes)")
    return SplitInfo(name=str(mask.meta.get("split", "train")), num_samples=int(n),
                     fingerprint=str(mask.meta.get("fingerprint")), beton=Path(),
                     labels=Path(), index=Path(), shards=[])


def _check_kept_classes(mask: IndexMask, npy: Path, num_classes: int | None) -> None:
    """A sidecar's ``kept_classes`` is what the class overlap counts: class ids below the
    dataset's class count when known, and some class when the mask keeps a sample."""
    recorded = mask.meta.get("kept_classes")
    if recorded is None:
        return
    sidecar = npy.with_suffix(".json")
    fix = RECREATE_MASK
    # (a list of class ids: load_mask checked its type, for every reader of a mask)
    limit = num_classes if num_classes is not None else mask.meta.get("num_classes")
    if isinstance(limit, int) and any(c >= limit for c in recorded):
        raise MaskError(f"{sidecar}: kept_classes holds class {max(recorded)} but the dataset "
                        f"has {count(limit, 'class')} ({class_ids(limit)}); {fix}")
    if not recorded and len(mask):
        raise MaskError(f"{sidecar} keeps no class but {npy} keeps {len(mask)} samples: the two "
                        f"files do not belong together; {fix}")
