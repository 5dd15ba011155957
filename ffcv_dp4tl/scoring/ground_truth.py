"""Selection quality measured against a known answer (the ``synth`` generator's ground truth).

The embedded data (``beton_builders/synth.py``) draws every target class from one known source
class, and each target relates to a known set of source superclasses. Its manifests record both
(``extra.targets.<t>.source_classes_of_class`` / ``related_superclasses`` in the source's,
the same keys in each target's). So how well a method *selected* can be measured directly,
before any pretraining noise:

* **mapped-class recall** (class units, e.g. LM): the share of the target's mapped source
  classes among the ``k`` best-scored classes, ``k`` = the number of mapped classes (so an
  oracle gets 1.0 and a random ranking ``k / C`` in expectation);
* for **any** selection (a mask over the source train split, whatever the unit): the share of
  kept *samples* and of kept *classes* (classes with at least one kept sample) that belong to
  the target's related superclasses, and the recall of the mapped classes among the kept ones.

A RANDOM selection keeps related samples at the related share of the source (``chance``); a
method that "finds the answer" keeps far more. Every function returns plain floats so reports
can tabulate them; :func:`load_ground_truth` returns ``None`` for data without ground truth
(real datasets), and reports then leave the columns out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import DataError
from .ranking import as_vector, rank

__all__ = ["GroundTruth", "load_ground_truth", "ground_truth_from_extra", "topk_recall",
           "selection_quality", "mask_quality", "random_topk_recall"]


@dataclass(frozen=True)
class GroundTruth:
    """What the right selection is for one target (or the union over several targets)."""

    targets: tuple[str, ...]
    superclass_of_class: tuple[int, ...]  # superclass of every source class
    related_superclasses: tuple[int, ...]
    mapped_classes: tuple[int, ...]      # source classes the target classes were drawn from
    class_names: tuple[str, ...] = ()    # source class names (for galleries and tables)

    @property
    def num_classes(self) -> int:
        return len(self.superclass_of_class)

    @property
    def related(self) -> np.ndarray:
        """(C,) bool: the source class belongs to a related superclass."""
        return np.isin(np.asarray(self.superclass_of_class, dtype=np.int64),
                       np.asarray(self.related_superclasses, dtype=np.int64))

    @property
    def related_classes(self) -> np.ndarray:
        return np.flatnonzero(self.related)

    def chance(self, labels: np.ndarray | None = None) -> float:
        """Share of related samples in ``labels`` (the source train labels): what a random
        selection keeps in expectation; without labels, the share of related classes."""
        rel = self.related
        if labels is None:
            return float(rel.mean())
        labels = np.asarray(labels)
        return float(rel[labels].mean()) if labels.size else 0.0


def ground_truth_from_extra(source_extra: dict[str, Any], targets: Sequence[str],
                            class_names: Sequence[str] = ()) -> GroundTruth | None:
    """Ground truth of ``targets`` from a source manifest's ``extra`` (``None`` if it has none,
    or if a target is not among the data's targets)."""
    sup = source_extra.get("superclass_of_class")
    known = source_extra.get("targets") or {}
    if sup is None or not targets or any(t not in known for t in targets):
        return None
    related: set[int] = set()
    mapped: set[int] = set()
    for t in targets:
        info = known[t]
        related.update(int(s) for s in info.get("related_superclasses", ()))
        for group in info.get("source_classes_of_class", ()):
            mapped.update(int(k) for k in group)
    return GroundTruth(targets=tuple(targets), superclass_of_class=tuple(int(s) for s in sup),
                       related_superclasses=tuple(sorted(related)),
                       mapped_classes=tuple(sorted(mapped)), class_names=tuple(class_names))


def _target_name(target: str | Path, source_extra: dict[str, Any]) -> str | None:
    """The name under which the source's manifest records ``target``'s ground truth, or None.

    A built directory: its manifest's ``extra.target``, and only when the target records the
    synth build the source records (same ``synth_config`` where both have one) and the class
    mapping the source records for that name — a target from another synth build (synth:bench's
    ``warm`` beside a synth:tiny source) shares the name, not the answer. Any other string is a
    synth target's name (``warm``), looked up in the source's own record."""
    p = Path(target)
    if not (p / "manifest.json").exists():
        return p.name
    from ..data.manifest import load_manifest

    extra = load_manifest(p).contract.extra
    name = extra.get("target")
    known = (source_extra.get("targets") or {}).get(name) if name else None
    if not known:
        return None
    src_cfg, tgt_cfg = source_extra.get("synth_config"), extra.get("synth_config")
    if src_cfg is not None and tgt_cfg is not None and src_cfg != tgt_cfg:
        return None
    if any(extra.get(k) != known.get(k) for k in ("source_classes_of_class",
                                                  "related_superclasses")):
        return None
    return str(name)


def load_ground_truth(source_dir: str | Path, targets: str | Path | Iterable[str | Path]
                      ) -> GroundTruth | None:
    """Ground truth for the built ``source_dir`` and one or several targets (built target
    directories or synth target names); ``None`` when the data carries none (real data) or a
    target is not the one the source's record describes (:func:`_target_name`)."""
    from ..data.manifest import load_manifest

    if isinstance(targets, (str, Path)):
        targets = [targets]
    try:
        m = load_manifest(source_dir)
    except DataError:
        return None
    extra = m.contract.extra
    names = [_target_name(t, extra) for t in targets]
    if any(n is None for n in names):
        return None
    return ground_truth_from_extra(extra, names, m.classes)


# ------------------------------------------------------------------ measures
def topk_recall(scores: Any, gt: GroundTruth, tiebreak: Any = None, k: int | None = None) -> float:
    """Share of the mapped classes among the ``k`` best-scored classes (class units; ranking =
    the pruner's: score, then tie-break). ``k`` defaults to the number of mapped classes, so
    1.0 means the top of the ranking *is* the answer.

    Classes the scores leave equal (same score and tie-break) across the k-th place count at
    their expectation under a random order of the tie, not by the pruner's lower-id rule: the
    synth ``paper`` target's answer is source classes 0..19, so lower ids gave a scorer that
    learned nothing (all scores equal) a recall of 1.0 (review). It now reads k / C, chance."""
    s = as_vector(scores, "scores")
    if s.shape[0] != gt.num_classes:
        raise DataError(f"ground truth: {s.shape[0]} class scores but the source has "
                        f"{gt.num_classes} classes (class-unit scores expected)")
    t = None if tiebreak is None else as_vector(tiebreak, "tiebreak")
    k = len(gt.mapped_classes) if k is None else int(k)
    if not gt.mapped_classes or k <= 0:
        return 0.0
    order = rank(s, t)
    k = min(k, order.size)
    mapped = np.zeros(order.size, dtype=bool)
    mapped[np.asarray(gt.mapped_classes, dtype=np.int64)] = True
    last = order[k - 1]  # the tie that straddles the cut: members above and below it
    tied = (s == s[last]) & ((t == t[last]) if t is not None else True)
    tied[last] = True  # (a NaN equals nothing, itself included)
    top = np.zeros(order.size, dtype=bool)
    top[order[:k]] = True
    above = top & ~tied
    slots = k - int(above.sum())  # places of the top k that the tie fills
    hits = mapped[above].sum() + slots * mapped[tied].sum() / tied.sum()
    return float(hits / len(gt.mapped_classes))


def random_topk_recall(gt: GroundTruth, k: int | None = None) -> float:
    """Expectation of :func:`topk_recall` for a uniformly random ranking: ``k / C``."""
    k = len(gt.mapped_classes) if k is None else int(k)
    return min(1.0, k / gt.num_classes)


def selection_quality(gt: GroundTruth, kept_labels: Any) -> dict[str, float]:
    """Quality of a selection given the source-class labels of its kept train samples:
    ``related_samples`` (share of kept samples from related superclasses), ``related_classes``
    (share of kept classes, i.e. with >= 1 kept sample, that are related), ``mapped_recall``
    (share of the mapped classes that kept >= 1 sample), ``kept_classes`` (their number)."""
    labels = np.asarray(kept_labels, dtype=np.int64).ravel()
    rel = gt.related
    if labels.size == 0:
        return {"related_samples": 0.0, "related_classes": 0.0, "mapped_recall": 0.0,
                "kept_classes": 0}
    if labels.min() < 0 or labels.max() >= gt.num_classes:
        raise DataError(f"ground truth: kept labels outside 0..{gt.num_classes - 1}")
    classes = np.unique(labels)
    mapped = np.asarray(gt.mapped_classes, dtype=np.int64)
    return {"related_samples": float(rel[labels].mean()),
            "related_classes": float(rel[classes].mean()),
            "mapped_recall": float(np.isin(mapped, classes).mean()) if mapped.size else 0.0,
            "kept_classes": int(classes.size)}


def mask_quality(gt: GroundTruth, source_dir: str | Path, mask: str | Path | None) -> dict[str, float]:
    """:func:`selection_quality` of a train mask (``None`` = the whole train split), plus
    ``chance`` (the related share of the whole train split: RANDOM's expectation)."""
    from ..data.manifest import load_manifest
    from ..data.masks import load_mask

    split = load_manifest(source_dir).split("train")
    labels = np.asarray(split.load_labels(), dtype=np.int64)
    kept = labels if mask is None else labels[load_mask(mask, split).indices]
    return {**selection_quality(gt, kept), "chance": gt.chance(labels)}
